//! A simulated backend: connections in memory, stepped by a test on one thread. It keeps the
//! backend contract (`super`) exactly, so that shards run on it as on epoll, and a test can
//! make any interleaving happen on purpose: connects and closes between two turns, a client
//! that stops reading, bytes split anywhere.
//!
//! The test holds a `SimNet` (a handle to the same state as the shard's `SimBackend`): it
//! connects clients, writes their bytes, reads what the shard sent, and closes them. It can
//! also stand for the servers the shard connects out to (a bridge's remote broker):
//! `listen` on an address, then `accept` what the shard's `connect`s to it; a connect to an
//! address nobody listens on is refused.

use bytes::{Bytes, BytesMut};
use hashbrown::HashMap;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use super::{Backend, ConnId, Event, Waker};

#[derive(Default)]
struct Conn {
    /// Sent by the shard, not yet read by the client.
    to_client: BytesMut,
    /// Written by the client while the shard had paused reading.
    held: VecDeque<BytesMut>,
    paused: bool,
    /// The shard closed it (the client may still read what was sent).
    closed_by_shard: bool,
}

#[derive(Default)]
struct State {
    events: VecDeque<Event>,
    conns: HashMap<ConnId, Conn>,
    free_slots: Vec<usize>,
    slots: usize,
    /// The last generation given out (0 before the first).
    last_generation: u32,
    /// Addresses the test listens on, with the shard's connections to each that the test
    /// has not accepted yet.
    listening: HashMap<SocketAddr, VecDeque<ConnId>>,
}

/// The test's side of a simulated backend.
#[derive(Clone, Default)]
pub struct SimNet(Rc<RefCell<State>>);

/// The shard's side of it.
pub struct SimBackend(Rc<RefCell<State>>);

/// The simulation wakes nobody: the test decides which shard turns next.
struct NoWaker;

impl Waker for NoWaker {
    fn wake(&self) {}
}

impl SimNet {
    pub fn new() -> SimNet {
        SimNet::default()
    }

    pub fn backend(&self) -> SimBackend {
        SimBackend(self.0.clone())
    }

    pub fn waker() -> Arc<dyn Waker> {
        Arc::new(NoWaker)
    }

    /// A client connects (to the first listening socket); the shard sees it on its next turn.
    pub fn connect(&self) -> ConnId {
        let mut state = self.0.borrow_mut();
        let conn = state.new_conn();
        let slot = conn.slot();
        let peer = SocketAddr::from(([127, 0, 0, 1], 10_000 + (slot % 50_000) as u16));
        state.events.push_back(Event::Accepted {
            conn,
            peer: Some(peer),
            local_port: 1883,
            socket: 0,
        });
        conn
    }

    /// The client writes `bytes` (ignored once the shard closed the connection).
    pub fn send(&self, conn: ConnId, bytes: &[u8]) {
        let mut state = self.0.borrow_mut();
        let Some(c) = state.conns.get_mut(&conn) else {
            return;
        };
        if c.closed_by_shard {
            return;
        }
        let data = BytesMut::from(bytes);
        if c.paused {
            c.held.push_back(data);
        } else {
            state.events.push_back(Event::Received { conn, data });
        }
    }

    /// Everything the shard sent the client that it has not read yet.
    pub fn take(&self, conn: ConnId) -> Bytes {
        let mut state = self.0.borrow_mut();
        state
            .conns
            .get_mut(&conn)
            .map_or_else(Bytes::new, |c| c.to_client.split().freeze())
    }

    /// Whether the shard closed the connection.
    pub fn closed_by_shard(&self, conn: ConnId) -> bool {
        self.0
            .borrow()
            .conns
            .get(&conn)
            .is_none_or(|c| c.closed_by_shard)
    }

    /// The client goes away: the shard sees the connection close on its next turn (unless
    /// it had closed it itself).
    pub fn close(&self, conn: ConnId) {
        let mut state = self.0.borrow_mut();
        if let Some(c) = state.conns.remove(&conn) {
            state.free_slots.push(conn.slot());
            if !c.closed_by_shard {
                state.events.push_back(Event::Closed { conn, error: None });
            }
        }
    }

    /// Connections the shard paused reading, and has not closed, with the client's bytes
    /// waiting.
    pub fn paused_with_input(&self) -> Vec<ConnId> {
        let state = self.0.borrow();
        let mut conns: Vec<ConnId> = (state.conns.iter())
            .filter(|(_, c)| c.paused && !c.held.is_empty() && !c.closed_by_shard)
            .map(|(id, _)| *id)
            .collect();
        conns.sort_by_key(|c| (c.slot(), c.generation()));
        conns
    }

    /// The test stands for a server at `addr`: the shard's connects to it succeed.
    pub fn listen(&self, addr: SocketAddr) {
        self.0.borrow_mut().listening.entry(addr).or_default();
    }

    /// The oldest connection the shard made to `addr` that the test has not taken yet: the
    /// test is its far end (`send`, `take`, `close`).
    pub fn accept(&self, addr: SocketAddr) -> Option<ConnId> {
        self.0.borrow_mut().listening.get_mut(&addr)?.pop_front()
    }

    /// Whether the shard has something to handle on its next turn.
    pub fn busy(&self) -> bool {
        !self.0.borrow().events.is_empty()
    }
}

impl State {
    fn new_conn(&mut self) -> ConnId {
        let slot = self.free_slots.pop().unwrap_or_else(|| {
            self.slots += 1;
            self.slots - 1
        });
        self.last_generation = ConnId::next_generation(self.last_generation);
        let conn = ConnId::new(slot, self.last_generation);
        self.conns.insert(conn, Conn::default());
        conn
    }
}

impl Backend for SimBackend {
    fn wait(&mut self, _timeout: Option<Duration>, events: &mut Vec<Event>) -> io::Result<()> {
        events.extend(self.0.borrow_mut().events.drain(..));
        Ok(())
    }

    fn send(&mut self, conn: ConnId, data: Bytes) {
        if let Some(c) = self.0.borrow_mut().conns.get_mut(&conn) {
            if !c.closed_by_shard {
                c.to_client.extend_from_slice(&data);
            }
        }
    }

    fn queued_bytes(&self, conn: ConnId) -> usize {
        self.0
            .borrow()
            .conns
            .get(&conn)
            .map_or(0, |c| c.to_client.len())
    }

    fn queued_bytes_total(&self) -> usize {
        self.0
            .borrow()
            .conns
            .values()
            .map(|c| c.to_client.len())
            .sum()
    }

    fn pause_reading(&mut self, conn: ConnId) {
        if let Some(c) = self.0.borrow_mut().conns.get_mut(&conn) {
            c.paused = true;
        }
    }

    fn resume_reading(&mut self, conn: ConnId) {
        let mut state = self.0.borrow_mut();
        let Some(c) = state.conns.get_mut(&conn) else {
            return;
        };
        c.paused = false;
        let held: Vec<BytesMut> = c.held.drain(..).collect();
        for data in held {
            state.events.push_back(Event::Received { conn, data });
        }
    }

    fn close(&mut self, conn: ConnId) {
        let mut state = self.0.borrow_mut();
        if let Some(c) = state.conns.get_mut(&conn) {
            c.closed_by_shard = true;
            c.held.clear();
            // As on a real backend, no event names the connection once the shard closed
            // it: what the client sent and the shard has not been told of is lost.
            state.events.retain(|e| match e {
                Event::Received { conn: c, .. } | Event::Closed { conn: c, .. } => *c != conn,
                _ => true,
            });
        }
    }

    /// Connected at once if the test listens on `to` (the test takes the far end with
    /// `accept`), refused otherwise; the shard hears which on its next turn.
    fn connect(&mut self, to: SocketAddr, _bind: Option<SocketAddr>) -> io::Result<ConnId> {
        let mut state = self.0.borrow_mut();
        let conn = state.new_conn();
        let event = match state.listening.get_mut(&to) {
            Some(waiting) => {
                waiting.push_back(conn);
                Event::Connected { conn }
            }
            None => {
                state.conns.remove(&conn);
                state.free_slots.push(conn.slot());
                let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
                Event::Closed {
                    conn,
                    error: Some(refused),
                }
            }
        };
        state.events.push_back(event);
        Ok(conn)
    }
}
