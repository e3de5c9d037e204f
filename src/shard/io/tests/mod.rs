//! The backend contract (`super`), checked on every backend: epoll and io_uring over
//! loopback sockets, and the simulation's in-memory network, through one `Peer` interface,
//! so that a shard run on the simulated backend meets what it meets in production. Then
//! what only the real backends have (wakers, io_uring's queue, Unix sockets).

mod real;

use super::epoll::Epoll;
use super::sim::SimNet;
use super::uring::{self, Uring};
use super::{Backend, ConnId, Event};
use bytes::Bytes;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(10);

/// The client's end of one connection to the backend under test.
trait Peer {
    fn write(&mut self, bytes: &[u8]);
    /// What has arrived, at most `max` bytes, without waiting.
    fn read_some(&mut self, max: usize) -> Vec<u8>;
    /// The backend closed the connection and everything it sent was read.
    fn at_end(&mut self) -> bool;
}

/// A server the backend under test connects out to (as a bridge connects to its remote).
trait Remote {
    fn addr(&self) -> SocketAddr;
    /// The far end of the backend's oldest connection to it not taken yet, if any came.
    fn accept(&mut self) -> Option<Box<dyn Peer>>;
}

/// A backend under test, how a client connects to it, and how a server it connects to is
/// set up (with an address where none is, to be refused).
struct Rig {
    name: &'static str,
    backend: Box<dyn Backend>,
    dial: Box<dyn FnMut() -> Box<dyn Peer>>,
    serve: Box<dyn FnMut() -> Box<dyn Remote>>,
    nobody: SocketAddr,
}

struct TcpRemote(TcpListener);

impl Remote for TcpRemote {
    fn addr(&self) -> SocketAddr {
        self.0.local_addr().unwrap()
    }

    fn accept(&mut self) -> Option<Box<dyn Peer>> {
        let (stream, _) = self.0.accept().ok()?;
        stream.set_nonblocking(true).unwrap();
        Some(Box::new(TcpPeer {
            stream,
            ended: false,
        }))
    }
}

struct SimRemote {
    net: SimNet,
    addr: SocketAddr,
}

impl Remote for SimRemote {
    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn accept(&mut self) -> Option<Box<dyn Peer>> {
        let conn = self.net.accept(self.addr)?;
        Some(Box::new(SimPeer {
            net: self.net.clone(),
            conn,
            unread: Vec::new(),
        }))
    }
}

struct TcpPeer {
    stream: TcpStream,
    ended: bool,
}

impl Peer for TcpPeer {
    fn write(&mut self, bytes: &[u8]) {
        // A peer writing to a connection the backend closed may be refused: the bytes are
        // lost either way.
        let _ = self.stream.write_all(bytes);
    }

    fn read_some(&mut self, max: usize) -> Vec<u8> {
        let mut buf = vec![0u8; max];
        match self.stream.read(&mut buf) {
            Ok(0) => {
                self.ended = true;
                Vec::new()
            }
            Ok(n) => {
                buf.truncate(n);
                buf
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => Vec::new(),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {
                self.ended = true;
                Vec::new()
            }
            Err(e) => panic!("peer read: {e}"),
        }
    }

    fn at_end(&mut self) -> bool {
        self.ended
    }
}

struct SimPeer {
    net: SimNet,
    conn: ConnId,
    unread: Vec<u8>,
}

impl Peer for SimPeer {
    fn write(&mut self, bytes: &[u8]) {
        self.net.send(self.conn, bytes);
    }

    fn read_some(&mut self, max: usize) -> Vec<u8> {
        self.unread.extend_from_slice(&self.net.take(self.conn));
        let n = max.min(self.unread.len());
        self.unread.drain(..n).collect()
    }

    fn at_end(&mut self) -> bool {
        self.unread.extend_from_slice(&self.net.take(self.conn));
        self.unread.is_empty() && self.net.closed_by_shard(self.conn)
    }
}

impl Drop for SimPeer {
    fn drop(&mut self) {
        self.net.close(self.conn);
    }
}

fn tcp_rig(name: &'static str, backend: impl FnOnce(TcpListener) -> Box<dyn Backend>) -> Rig {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    // A port just free again: nothing listens there.
    let nobody = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    Rig {
        serve: Box::new(|| {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            listener.set_nonblocking(true).unwrap();
            Box::new(TcpRemote(listener))
        }),
        nobody,
        name,
        backend: backend(listener),
        dial: Box::new(move || {
            let stream = TcpStream::connect(addr).unwrap();
            stream.set_nonblocking(true).unwrap();
            Box::new(TcpPeer {
                stream,
                ended: false,
            })
        }),
    }
}

/// Runs `test` on a fresh backend of each kind: epoll, io_uring (where the kernel offers
/// it; skipped with a note otherwise), and the simulated network.
fn each_backend(test: impl Fn(&mut Rig)) {
    test(&mut tcp_rig("epoll", |l| {
        Box::new(Epoll::new(vec![l.into()]).unwrap())
    }));
    match uring::available() {
        Ok(()) => test(&mut tcp_rig("io_uring", |l| {
            Box::new(Uring::new(vec![l.into()], 0).unwrap())
        })),
        Err(why) => eprintln!("io_uring backend not tested here: {why}"),
    }
    let net = SimNet::new();
    let dialing = net.clone();
    let serving = net.clone();
    let mut servers = 0u8;
    test(&mut Rig {
        name: "simulated",
        serve: Box::new(move || {
            servers += 1;
            let addr = SocketAddr::from(([10, 0, 0, servers], 1883));
            serving.listen(addr);
            Box::new(SimRemote {
                net: serving.clone(),
                addr,
            })
        }),
        nobody: SocketAddr::from(([10, 0, 1, 1], 1883)),
        backend: Box::new(net.backend()),
        dial: Box::new(move || {
            let conn = dialing.connect();
            Box::new(SimPeer {
                net: dialing.clone(),
                conn,
                unread: Vec::new(),
            })
        }),
    });
}

impl Rig {
    /// One turn of the backend: what it has to report, waiting at most a few milliseconds.
    fn turn(&mut self, events: &mut Vec<Event>) {
        self.backend
            .wait(Some(Duration::from_millis(2)), events)
            .unwrap();
    }

    fn next_event<T>(&mut self, seen: &mut Vec<Event>, pick: impl FnMut(&Event) -> Option<T>) -> T {
        next_event(self.backend.as_mut(), self.name, seen, pick)
    }

    /// A peer connected to the backend, and the id the backend gave its connection.
    fn connect(&mut self, seen: &mut Vec<Event>) -> (Box<dyn Peer>, ConnId) {
        let peer = (self.dial)();
        (peer, self.next_event(seen, accepted))
    }

    fn receive(&mut self, conn: ConnId, want: usize) -> Vec<u8> {
        receive(self.backend.as_mut(), self.name, conn, want)
    }

    /// Turns the backend, and reads `peer` `max` bytes a turn, until `want` bytes came or
    /// the peer's stream ended; the events of those turns go to `events`.
    fn read_all(
        &mut self,
        peer: &mut dyn Peer,
        want: usize,
        max: usize,
        events: &mut Vec<Event>,
    ) -> Vec<u8> {
        let mut got = Vec::new();
        let until = Instant::now() + DEADLINE;
        while got.len() < want && !peer.at_end() {
            self.turn(events);
            got.extend_from_slice(&peer.read_some(max));
            assert!(
                Instant::now() < until,
                "{}: read {} bytes",
                self.name,
                got.len()
            );
        }
        got
    }
}

fn accepted(event: &Event) -> Option<ConnId> {
    match event {
        Event::Accepted { conn, .. } => Some(*conn),
        _ => None,
    }
}

fn names(events: &[Event], conn: ConnId) -> bool {
    events.iter().any(|e| {
        matches!(e, Event::Received { conn: c, .. } | Event::Closed { conn: c, .. } if *c == conn)
    })
}

#[test]
fn a_closed_connections_id_never_names_a_later_connection() {
    each_backend(|rig| {
        let mut seen = Vec::new();
        let (mut first, old) = rig.connect(&mut seen);
        rig.backend.close(old);
        // The first peer reads the end of the stream, then goes.
        rig.read_all(first.as_mut(), usize::MAX, 4096, &mut seen);
        drop(first);

        let (mut second, new) = rig.connect(&mut seen);
        assert_ne!(new, old, "{}", rig.name);
        // What is done with the old id does not reach the new connection.
        rig.backend.send(old, Bytes::from_static(b"stale"));
        rig.backend.close(old);
        assert_eq!(rig.backend.queued_bytes(old), 0);
        rig.backend.send(new, Bytes::from_static(b"fresh"));
        let got = rig.read_all(second.as_mut(), 5, 4096, &mut seen);
        assert_eq!(got, b"fresh", "{}", rig.name);
    });
}

#[test]
fn bytes_reach_a_slow_reader_whole_and_in_order() {
    each_backend(|rig| {
        let mut seen = Vec::new();
        let (mut peer, conn) = rig.connect(&mut seen);
        // Far more than the socket buffers hold: most of it waits in the backend and goes
        // out in pieces (partial writes) as the reader drains.
        let chunks: Vec<Bytes> = (0..64u32)
            .map(|i| Bytes::from(vec![i as u8; 100_000 + i as usize]))
            .collect();
        let total: usize = chunks.iter().map(|c| c.len()).sum();
        for chunk in &chunks {
            rig.backend.send(conn, chunk.clone());
        }
        assert!(rig.backend.queued_bytes(conn) > 0);
        let all = rig.read_all(peer.as_mut(), total, 64 * 1024 + 7, &mut seen);
        let expected: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
        assert!(all == expected, "{}: bytes reordered or changed", rig.name);
        assert_eq!(rig.backend.queued_bytes(conn), 0, "{}", rig.name);
        assert_eq!(rig.backend.queued_bytes_total(), 0, "{}", rig.name);
    });
}

#[test]
fn bytes_sent_while_paused_arrive_after_resume_in_order() {
    each_backend(|rig| {
        let mut seen = Vec::new();
        let (mut peer, conn) = rig.connect(&mut seen);
        peer.write(b"one,");
        assert_eq!(rig.receive(conn, 4), b"one,");
        rig.backend.pause_reading(conn);
        peer.write(b"two,three");
        // Paused: nothing is delivered, however long the backend turns.
        let mut events = Vec::new();
        for _ in 0..50 {
            rig.turn(&mut events);
        }
        assert!(
            !names(&events, conn),
            "{}: bytes delivered while paused",
            rig.name
        );
        rig.backend.resume_reading(conn);
        peer.write(b",four");
        assert_eq!(rig.receive(conn, 14), b"two,three,four", "{}", rig.name);
    });
}

#[test]
fn a_closed_connection_delivers_its_last_bytes_then_the_end() {
    each_backend(|rig| {
        let mut seen = Vec::new();
        let (mut peer, conn) = rig.connect(&mut seen);
        // Bytes the peer sent before the close, not yet reported: never reported.
        peer.write(b"unread");
        rig.backend.send(conn, Bytes::from_static(b"last words"));
        rig.backend.close(conn);
        // Sent after the close: thrown away, and no event names the connection again.
        rig.backend.send(conn, Bytes::from_static(b"never"));
        peer.write(b"ignored");
        let mut events = Vec::new();
        let got = rig.read_all(peer.as_mut(), usize::MAX, 4096, &mut events);
        assert_eq!(got, b"last words", "{}", rig.name);
        for _ in 0..10 {
            rig.turn(&mut events);
        }
        assert!(
            !names(&events, conn),
            "{}: an event named a closed connection: {events:?}",
            rig.name
        );
    });
}

#[test]
fn a_peer_that_closes_is_reported_once() {
    each_backend(|rig| {
        let mut seen = Vec::new();
        let (peer, conn) = rig.connect(&mut seen);
        drop(peer);
        let error = rig.next_event(&mut seen, |e| match e {
            Event::Closed { conn: c, error } if *c == conn => Some(error.is_some()),
            _ => None,
        });
        assert!(!error, "{}: a clean close is not an error", rig.name);
        let mut events = Vec::new();
        for _ in 0..25 {
            rig.turn(&mut events);
        }
        assert!(events.is_empty(), "{}: more events: {events:?}", rig.name);
    });
}

/// Many connections' bytes arriving at once all arrive whole: on io_uring more than the
/// receive ring's first buffers are needed in one turn (the kernel reports ENOBUFS, the
/// ring grows and the receives are armed again).
#[test]
fn bytes_from_many_connections_at_once_all_arrive_whole() {
    each_backend(|rig| {
        let mut seen = Vec::new();
        let mut peers: Vec<(Box<dyn Peer>, ConnId)> =
            (0..100).map(|_| rig.connect(&mut seen)).collect();
        const EACH: usize = 3 * 4096;
        for (i, (peer, _)) in peers.iter_mut().enumerate() {
            peer.write(&vec![i as u8; EACH]);
        }
        let mut got: std::collections::HashMap<ConnId, Vec<u8>> = Default::default();
        let until = Instant::now() + DEADLINE;
        while got.values().map(Vec::len).sum::<usize>() < peers.len() * EACH {
            for event in seen.drain(..) {
                match event {
                    Event::Received { conn, data } => {
                        got.entry(conn).or_default().extend_from_slice(&data)
                    }
                    Event::Closed { conn, .. } => panic!("{}: {conn} closed", rig.name),
                    _ => {}
                }
            }
            rig.turn(&mut seen);
            assert!(
                Instant::now() < until,
                "{}: not all bytes arrived",
                rig.name
            );
        }
        for (i, (_, conn)) in peers.iter().enumerate() {
            assert_eq!(
                got[conn],
                vec![i as u8; EACH],
                "{}: connection {i}",
                rig.name
            );
        }
    });
}

#[test]
fn an_outgoing_connection_is_reported_connected_and_carries_bytes_both_ways() {
    each_backend(|rig| {
        let mut remote = (rig.serve)();
        let conn = rig.backend.connect(remote.addr(), None).unwrap();
        // Sent before the connection is up: queued, and written first.
        rig.backend.send(conn, Bytes::from_static(b"early,"));
        let mut seen = Vec::new();
        rig.next_event(&mut seen, |e| {
            matches!(e, Event::Connected { conn: c } if *c == conn).then_some(())
        });
        let until = Instant::now() + DEADLINE;
        let mut far = loop {
            if let Some(far) = remote.accept() {
                break far;
            }
            rig.turn(&mut seen);
            assert!(Instant::now() < until, "{}: never accepted", rig.name);
        };
        rig.backend.send(conn, Bytes::from_static(b"late"));
        let got = rig.read_all(far.as_mut(), 10, 4096, &mut seen);
        assert_eq!(got, b"early,late", "{}", rig.name);
        far.write(b"reply");
        assert_eq!(rig.receive(conn, 5), b"reply", "{}", rig.name);
        drop(far);
        let error = rig.next_event(&mut seen, |e| match e {
            Event::Closed { conn: c, error } if *c == conn => Some(error.is_some()),
            _ => None,
        });
        assert!(!error, "{}: a clean close is not an error", rig.name);
    });
}

#[test]
fn an_outgoing_connection_nobody_takes_is_reported_closed_with_its_error() {
    each_backend(|rig| {
        let to = rig.nobody;
        // Refused at once, or (as a connect under way) reported closed with the error.
        let Ok(conn) = rig.backend.connect(to, None) else {
            return;
        };
        let mut seen = Vec::new();
        let error = rig.next_event(&mut seen, |e| match e {
            Event::Closed { conn: c, error } if *c == conn => Some(error.is_some()),
            Event::Connected { conn: c } if *c == conn => Some(false),
            _ => None,
        });
        assert!(error, "{}: a refused connect is an error", rig.name);
    });
}

/// Waits (up to a deadline) for `backend` to report an event `pick` accepts; other events
/// are kept in `seen`.
fn next_event<T>(
    backend: &mut dyn Backend,
    name: &str,
    seen: &mut Vec<Event>,
    mut pick: impl FnMut(&Event) -> Option<T>,
) -> T {
    let until = Instant::now() + DEADLINE;
    loop {
        if let Some(i) = seen.iter().position(|e| pick(e).is_some()) {
            return pick(&seen.remove(i)).unwrap();
        }
        backend.wait(Some(Duration::from_millis(2)), seen).unwrap();
        assert!(Instant::now() < until, "{name}: no such event");
    }
}

/// Everything `backend` received from `conn` until `want` bytes came.
fn receive(backend: &mut dyn Backend, name: &str, conn: ConnId, want: usize) -> Vec<u8> {
    let mut got = Vec::new();
    let mut events = Vec::new();
    let until = Instant::now() + DEADLINE;
    while got.len() < want {
        backend
            .wait(Some(Duration::from_millis(2)), &mut events)
            .unwrap();
        for event in events.drain(..) {
            match event {
                Event::Received { conn: c, data } if c == conn => got.extend_from_slice(&data),
                Event::Closed { conn: c, .. } if c == conn => panic!("closed early"),
                _ => {}
            }
        }
        assert!(
            Instant::now() < until,
            "{name}: got {} of {want} bytes",
            got.len()
        );
    }
    got
}

/// Turns `backend` (so it writes what is queued) until `done` holds.
fn turn_until(backend: &mut dyn Backend, mut done: impl FnMut(&mut dyn Backend) -> bool) {
    let until = Instant::now() + DEADLINE;
    while !done(backend) {
        backend
            .wait(Some(Duration::from_millis(10)), &mut Vec::new())
            .unwrap();
        assert!(Instant::now() < until, "not done by the deadline");
    }
}
