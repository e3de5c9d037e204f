//! `Raw`: a client written with the project's codec, for exact control of the bytes.

use super::{connect_packet, read_again, subscribe, DEADLINE};
use bytes::BytesMut;
use midge::codec::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// What waiting for a packet came to.
enum Next {
    Packet(Packet),
    Closed,
    Quiet,
}

/// A client written with the project's codec, for exact control of the bytes.
pub struct Raw {
    pub stream: TcpStream,
    pub version: ProtocolVersion,
    buf: BytesMut,
}

impl Raw {
    /// Opens a TCP connection, nothing sent yet.
    pub fn open(port: u16, version: ProtocolVersion) -> Raw {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to midge");
        stream
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        stream.set_nodelay(true).unwrap();
        Raw {
            stream,
            version,
            buf: BytesMut::new(),
        }
    }

    /// Connects with `connect` and returns the CONNACK.
    pub fn connect_with(port: u16, connect: Connect) -> (Raw, ConnAck) {
        let mut raw = Raw::open(port, connect.version);
        raw.send(&Packet::Connect(Box::new(connect)));
        match raw.recv() {
            Packet::ConnAck(ack) => (raw, ack),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    /// Connects with a clean session and checks the CONNACK is a success.
    pub fn connect(port: u16, client_id: &str) -> Raw {
        let (raw, ack) = Raw::connect_with(
            port,
            connect_packet(ProtocolVersion::V311, client_id, true, 60),
        );
        assert_eq!(ack.reason, ReasonCode::Success);
        raw
    }

    pub fn send(&mut self, packet: &Packet) {
        let bytes = packet.to_bytes(self.version).unwrap();
        self.stream.write_all(&bytes).expect("write to midge");
    }

    pub fn send_bytes(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write to midge");
    }

    /// The next packet within `wait`, or why there is none.
    fn next_within(&mut self, wait: Duration) -> Next {
        let until = Instant::now() + wait;
        let decoder = Decoder::client(self.version, 268_435_460);
        loop {
            if let Some(packet) = decoder
                .decode_from(&mut self.buf)
                .expect("midge sent a valid packet")
            {
                return Next::Packet(packet);
            }
            if Instant::now() >= until {
                return Next::Quiet;
            }
            let mut chunk = [0u8; 16 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Next::Closed,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if read_again(&e) => {}
                Err(_) => return Next::Closed,
            }
        }
    }

    /// The next `n` bytes exactly as midge wrote them (for byte-level checks). Fails if
    /// they do not all come within the deadline.
    pub fn recv_bytes(&mut self, n: usize) -> Vec<u8> {
        let until = Instant::now() + DEADLINE;
        while self.buf.len() < n {
            assert!(
                Instant::now() < until,
                "{n} bytes not sent within {DEADLINE:?}"
            );
            let mut chunk = [0u8; 16 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => panic!("closed after {:02X?}", &self.buf[..]),
                Ok(read) => self.buf.extend_from_slice(&chunk[..read]),
                Err(e) if read_again(&e) => {}
                Err(e) => panic!("read: {e}"),
            }
        }
        self.buf.split_to(n).to_vec()
    }

    /// The next packet, or `None` if the connection closed. Fails after the deadline.
    pub fn try_recv(&mut self) -> Option<Packet> {
        match self.next_within(DEADLINE) {
            Next::Packet(p) => Some(p),
            Next::Closed => None,
            Next::Quiet => panic!("nothing from midge within {DEADLINE:?}"),
        }
    }

    /// The next packet if one arrives within `wait`; `None` otherwise (or if closed).
    pub fn poll_packet(&mut self, wait: Duration) -> Option<Packet> {
        match self.next_within(wait) {
            Next::Packet(p) => Some(p),
            Next::Closed | Next::Quiet => None,
        }
    }

    pub fn recv(&mut self) -> Packet {
        self.try_recv().expect("midge closed the connection")
    }

    /// Expects no packet for `quiet` (used only to check that something does NOT arrive).
    pub fn expect_nothing(&mut self, quiet: Duration) {
        match self.next_within(quiet) {
            Next::Packet(p) => panic!("unexpected packet {p:?}"),
            Next::Closed => panic!("connection closed"),
            Next::Quiet => {}
        }
    }

    /// Waits until midge closes the connection (reading and discarding what comes first).
    pub fn expect_closed(&mut self) -> Vec<Packet> {
        let mut seen = Vec::new();
        while let Some(p) = self.try_recv() {
            seen.push(p);
        }
        seen
    }

    pub fn subscribe(&mut self, filters: &[(&str, QoS)]) -> SubAck {
        self.send(&subscribe(1, filters));
        match self.recv() {
            Packet::SubAck(ack) => ack,
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }

    /// Receives a PUBLISH (answering nothing).
    pub fn recv_publish(&mut self) -> Publish {
        match self.recv() {
            Packet::Publish(p) => p,
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }
}
