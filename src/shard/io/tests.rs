//! The backend contract, checked on each real backend over loopback sockets.

use super::epoll::Epoll;
use super::uring::{self, Uring};
use super::{Backend, ConnId, Event, ListenSocket};
use bytes::Bytes;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(10);

/// Runs `test` on a fresh backend of each kind (io_uring only where the kernel offers it;
/// skipped with a note otherwise).
fn each_backend(test: impl Fn(&mut dyn Backend, SocketAddr)) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    test(&mut Epoll::new(vec![listener.into()]).unwrap(), addr);
    match uring::available() {
        Ok(()) => {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            test(&mut Uring::new(vec![listener.into()], 0).unwrap(), addr);
        }
        Err(why) => eprintln!("io_uring backend not tested here: {why}"),
    }
}

/// Waits (up to a deadline) for the backend to report an event `pick` accepts; other
/// events are kept in `seen`.
fn next_event<T>(
    backend: &mut dyn Backend,
    seen: &mut Vec<Event>,
    mut pick: impl FnMut(&Event) -> Option<T>,
) -> T {
    let until = Instant::now() + DEADLINE;
    loop {
        if let Some(i) = seen.iter().position(|e| pick(e).is_some()) {
            return pick(&seen.remove(i)).unwrap();
        }
        backend.wait(Some(Duration::from_millis(10)), seen).unwrap();
        assert!(Instant::now() < until, "no such event");
    }
}

/// A peer connected to the backend, and the id the backend gave its connection.
fn connect(
    backend: &mut dyn Backend,
    addr: SocketAddr,
    seen: &mut Vec<Event>,
) -> (TcpStream, ConnId) {
    let peer = TcpStream::connect(addr).unwrap();
    (peer, next_event(backend, seen, accepted))
}

fn accepted(event: &Event) -> Option<ConnId> {
    match event {
        Event::Accepted { conn, .. } => Some(*conn),
        _ => None,
    }
}

/// Everything received from `conn` until `want` bytes came.
fn receive(backend: &mut dyn Backend, conn: ConnId, want: usize) -> Vec<u8> {
    let mut got = Vec::new();
    let mut events = Vec::new();
    let until = Instant::now() + DEADLINE;
    while got.len() < want {
        backend
            .wait(Some(Duration::from_millis(10)), &mut events)
            .unwrap();
        for event in events.drain(..) {
            match event {
                Event::Received { conn: c, data } if c == conn => got.extend_from_slice(&data),
                Event::Closed { conn: c, .. } if c == conn => panic!("closed early"),
                _ => {}
            }
        }
        assert!(Instant::now() < until, "got {} of {want} bytes", got.len());
    }
    got
}

/// Turns the backend (so it writes what is queued) until `done` holds.
fn turn_until(backend: &mut dyn Backend, mut done: impl FnMut(&mut dyn Backend) -> bool) {
    let until = Instant::now() + DEADLINE;
    while !done(backend) {
        backend
            .wait(Some(Duration::from_millis(10)), &mut Vec::new())
            .unwrap();
        assert!(Instant::now() < until, "not done by the deadline");
    }
}

#[test]
fn a_closed_connections_id_never_names_a_later_connection() {
    each_backend(|backend, addr| {
        let mut seen = Vec::new();
        let (mut first, old) = connect(backend, addr, &mut seen);
        backend.close(old);
        // The first peer reads the end of the stream, then closes.
        let mut rest = Vec::new();
        first.read_to_end(&mut rest).unwrap();
        drop(first);

        let (mut second, new) = connect(backend, addr, &mut seen);
        assert_ne!(new, old);
        // What is done with the old id does not reach the new connection.
        backend.send(old, Bytes::from_static(b"stale"));
        backend.close(old);
        assert_eq!(backend.queued_bytes(old), 0);
        backend.send(new, Bytes::from_static(b"fresh"));
        turn_until(backend, |b| b.queued_bytes(new) == 0);
        let mut got = [0u8; 5];
        second.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"fresh");
    });
}

#[test]
fn bytes_reach_a_slow_reader_whole_and_in_order() {
    each_backend(|backend, addr| {
        let mut seen = Vec::new();
        let (mut peer, conn) = connect(backend, addr, &mut seen);
        // Far more than the socket buffers hold: most of it waits in the backend and goes
        // out in pieces (partial writes) as the reader drains.
        let chunks: Vec<Bytes> = (0..64u32)
            .map(|i| Bytes::from(vec![i as u8; 100_000 + i as usize]))
            .collect();
        let total: usize = chunks.iter().map(|c| c.len()).sum();
        for chunk in &chunks {
            backend.send(conn, chunk.clone());
        }
        assert!(backend.queued_bytes(conn) > 0);
        let reader = std::thread::spawn(move || {
            let mut all = Vec::new();
            let mut buf = [0u8; 7919];
            while all.len() < total {
                let n = peer.read(&mut buf).unwrap();
                assert!(n > 0, "end of stream after {} bytes", all.len());
                all.extend_from_slice(&buf[..n]);
            }
            all
        });
        turn_until(backend, |b| b.queued_bytes(conn) == 0);
        let all = reader.join().unwrap();
        let expected: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
        assert!(all == expected, "bytes reordered or changed");
        assert_eq!(backend.queued_bytes_total(), 0);
    });
}

#[test]
fn bytes_sent_while_paused_arrive_after_resume_in_order() {
    each_backend(|backend, addr| {
        let mut seen = Vec::new();
        let (mut peer, conn) = connect(backend, addr, &mut seen);
        peer.write_all(b"one,").unwrap();
        assert_eq!(receive(backend, conn, 4), b"one,");
        backend.pause_reading(conn);
        peer.write_all(b"two,three").unwrap();
        // Paused: nothing is delivered, however long the backend turns.
        let until = Instant::now() + Duration::from_millis(200);
        let mut events = Vec::new();
        while Instant::now() < until {
            backend
                .wait(Some(Duration::from_millis(10)), &mut events)
                .unwrap();
            assert!(
                !events
                    .iter()
                    .any(|e| matches!(e, Event::Received { conn: c, .. } if *c == conn)),
                "bytes delivered while paused"
            );
        }
        backend.resume_reading(conn);
        peer.write_all(b",four").unwrap();
        assert_eq!(receive(backend, conn, 14), b"two,three,four");
    });
}

#[test]
fn a_closed_connection_delivers_its_last_bytes_then_the_end() {
    each_backend(|backend, addr| {
        let mut seen = Vec::new();
        let (mut peer, conn) = connect(backend, addr, &mut seen);
        backend.send(conn, Bytes::from_static(b"last words"));
        backend.close(conn);
        // Sent after the close: thrown away, and no event names the connection again.
        backend.send(conn, Bytes::from_static(b"never"));
        peer.write_all(b"ignored").unwrap();
        peer.set_read_timeout(Some(DEADLINE)).unwrap();
        let reader = std::thread::spawn(move || {
            let mut all = Vec::new();
            peer.read_to_end(&mut all).unwrap();
            all
        });
        let mut events = Vec::new();
        turn_until(backend, |b| {
            b.wait(Some(Duration::from_millis(10)), &mut events)
                .unwrap();
            reader.is_finished()
        });
        assert_eq!(reader.join().unwrap(), b"last words");
        assert!(
            !events.iter().any(|e| matches!(e,
                Event::Received { conn: c, .. } | Event::Closed { conn: c, .. } if *c == conn)),
            "an event named a closed connection: {events:?}"
        );
    });
}

#[test]
fn a_peer_that_closes_is_reported_once() {
    each_backend(|backend, addr| {
        let mut seen = Vec::new();
        let (peer, conn) = connect(backend, addr, &mut seen);
        drop(peer);
        let error = next_event(backend, &mut seen, |e| match e {
            Event::Closed { conn: c, error } if *c == conn => Some(error.is_some()),
            _ => None,
        });
        assert!(!error, "a clean close is not an error");
        let mut events = Vec::new();
        backend
            .wait(Some(Duration::from_millis(50)), &mut events)
            .unwrap();
        assert!(events.is_empty(), "more events: {events:?}");
    });
}

#[test]
fn a_waker_ends_a_wait_early() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let epoll = Epoll::new(vec![listener.into()]).unwrap();
    let wakers = [(epoll.waker(), Box::new(epoll) as Box<dyn Backend>)];
    let mut all: Vec<_> = wakers.into_iter().collect();
    if uring::available().is_ok() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let uring = Uring::new(vec![listener.into()], 0).unwrap();
        all.push((uring.waker(), Box::new(uring)));
    }
    for (waker, mut backend) in all {
        // The first wait enables the ring on this thread; the second is the one woken.
        backend.wait(Some(Duration::ZERO), &mut Vec::new()).unwrap();
        let wake = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            waker.wake();
        });
        let started = Instant::now();
        backend
            .wait(Some(Duration::from_secs(30)), &mut Vec::new())
            .unwrap();
        assert!(started.elapsed() < Duration::from_secs(20), "not woken");
        wake.join().unwrap();
    }
}

#[test]
fn io_uring_loses_no_operation_when_its_submission_queue_overflows() {
    if let Err(why) = uring::available() {
        eprintln!("io_uring backend not tested here: {why}");
        return;
    }
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    // Four submission slots for 24 connections: accepting them, arming their receives and
    // one send to each in a single turn overflows the queue many times over.
    let mut backend = Uring::with_submission_entries(vec![listener.into()], 0, 4).unwrap();
    let mut peers: Vec<TcpStream> = (0..24).map(|_| TcpStream::connect(addr).unwrap()).collect();
    let mut seen = Vec::new();
    let conns: Vec<ConnId> = (0..peers.len())
        .map(|_| next_event(&mut backend, &mut seen, accepted))
        .collect();
    for (i, &conn) in conns.iter().enumerate() {
        backend.send(conn, Bytes::from(format!("to {i:02}")));
    }
    turn_until(&mut backend, |b| b.queued_bytes_total() == 0);
    let mut got: Vec<String> = peers
        .iter_mut()
        .map(|peer| {
            peer.set_read_timeout(Some(DEADLINE)).unwrap();
            let mut buf = [0u8; 5];
            peer.read_exact(&mut buf).unwrap();
            String::from_utf8(buf.to_vec()).unwrap()
        })
        .collect();
    got.sort();
    let expected: Vec<String> = (0..24).map(|i| format!("to {i:02}")).collect();
    assert_eq!(got, expected);
    // And every receive was armed: each peer's bytes arrive.
    for (i, peer) in peers.iter_mut().enumerate() {
        peer.write_all(format!("from {i:02}").as_bytes()).unwrap();
    }
    let mut by_conn: std::collections::HashMap<ConnId, Vec<u8>> = Default::default();
    let until = Instant::now() + DEADLINE;
    while by_conn.values().filter(|b| b.len() == 7).count() < conns.len() {
        let mut events = Vec::new();
        backend
            .wait(Some(Duration::from_millis(10)), &mut events)
            .unwrap();
        for event in events {
            if let Event::Received { conn, data } = event {
                by_conn.entry(conn).or_default().extend_from_slice(&data);
            }
        }
        assert!(
            Instant::now() < until,
            "bytes from some peers never arrived"
        );
    }
    let mut from: Vec<String> = (by_conn.into_values())
        .map(|b| String::from_utf8(b).unwrap())
        .collect();
    from.sort();
    let expected: Vec<String> = (0..24).map(|i| format!("from {i:02}")).collect();
    assert_eq!(from, expected);
}

#[test]
fn a_unix_socket_connection_is_accepted_read_and_written_like_a_tcp_one() {
    let dir = std::env::temp_dir().join(format!("midge-io-unix-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut backends: Vec<(Box<dyn Backend>, std::path::PathBuf)> = Vec::new();
    let path = dir.join("epoll.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    backends.push((
        Box::new(Epoll::new(vec![ListenSocket::Unix(listener)]).unwrap()),
        path,
    ));
    if uring::available().is_ok() {
        let path = dir.join("uring.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let uring = Uring::new(vec![ListenSocket::Unix(listener)], 0).unwrap();
        backends.push((Box::new(uring), path));
    }
    for (mut backend, path) in backends {
        let backend = backend.as_mut();
        let mut peer = std::os::unix::net::UnixStream::connect(&path).unwrap();
        let mut seen = Vec::new();
        let (conn, peer_addr, local_port) = next_event(backend, &mut seen, |e| match e {
            Event::Accepted {
                conn,
                peer,
                local_port,
                ..
            } => Some((*conn, *peer, *local_port)),
            _ => None,
        });
        // A Unix socket's peer has no address; its port is 0, as Mosquitto logs it.
        assert_eq!((peer_addr, local_port), (None, 0));
        peer.write_all(b"ping").unwrap();
        assert_eq!(receive(backend, conn, 4), b"ping");
        backend.send(conn, Bytes::from_static(b"pong"));
        turn_until(backend, |b| b.queued_bytes(conn) == 0);
        let mut reply = [0u8; 4];
        peer.read_exact(&mut reply).unwrap();
        assert_eq!(&reply, b"pong");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Many connections' bytes arriving at once all arrive whole: on io_uring more than the
/// receive ring's first buffers are needed in one turn (the kernel reports ENOBUFS, the
/// ring grows and the receives are armed again).
#[test]
fn bytes_from_many_connections_at_once_all_arrive_whole() {
    each_backend(|backend, addr| {
        let mut seen = Vec::new();
        let peers: Vec<(TcpStream, ConnId)> = (0..100)
            .map(|_| connect(backend, addr, &mut seen))
            .collect();
        const EACH: usize = 3 * 4096;
        for (i, (peer, _)) in peers.iter().enumerate() {
            (&*peer).write_all(&vec![i as u8; EACH]).unwrap();
        }
        let mut got: std::collections::HashMap<ConnId, Vec<u8>> = Default::default();
        let until = Instant::now() + DEADLINE;
        while got.values().map(Vec::len).sum::<usize>() < peers.len() * EACH {
            for event in seen.drain(..) {
                match event {
                    Event::Received { conn, data } => {
                        got.entry(conn).or_default().extend_from_slice(&data)
                    }
                    Event::Closed { conn, .. } => panic!("{conn} closed"),
                    _ => {}
                }
            }
            backend
                .wait(Some(Duration::from_millis(10)), &mut seen)
                .unwrap();
            assert!(Instant::now() < until, "not all bytes arrived");
        }
        for (i, (_, conn)) in peers.iter().enumerate() {
            assert_eq!(got[conn], vec![i as u8; EACH], "connection {i}");
        }
    });
}
