//! What only the real backends have: a waker that ends a wait from another thread,
//! io_uring's submission queue overflowing, Unix sockets.

use super::super::epoll::Epoll;
use super::super::uring::{self, Uring};
use super::super::{Backend, ConnId, Event, ListenSocket};
use super::{accepted, next_event, receive, turn_until, DEADLINE};
use bytes::Bytes;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

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
        .map(|_| next_event(&mut backend, "io_uring", &mut seen, accepted))
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
        let (conn, peer_addr, local_port) = next_event(backend, "unix", &mut seen, |e| match e {
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
        assert_eq!(receive(backend, "unix", conn, 4), b"ping");
        backend.send(conn, Bytes::from_static(b"pong"));
        turn_until(backend, |b| b.queued_bytes(conn) == 0);
        let mut reply = [0u8; 4];
        peer.read_exact(&mut reply).unwrap();
        assert_eq!(&reply, b"pong");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
