//! The epoll backend, through mio. mio is edge-triggered: a socket reported readable stays
//! readable until a read returns `WouldBlock`, so sockets left with unread data (the
//! per-turn read limit) are kept on a list and read again on the next turn without waiting.

use crate::limits::READ_MAX_PER_TURN;
use bytes::{Buf, Bytes, BytesMut};
use mio::net::{TcpListener, TcpStream, UnixListener};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;
use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{
    consume_written, lingers_ended, AcceptFailures, Backend, ConnId, Event, ListenSocket, Waker,
    ACCEPT_RETRY, IOVECS_MAX, LINGER, LINGER_DISCARD_MAX,
};

const WAKER: Token = Token(usize::MAX);
/// Listeners take the tokens just below the waker's.
const LISTENER_BASE: usize = usize::MAX - 1024;
/// Accepts per listener per turn, so a connection storm cannot starve established clients.
const ACCEPTS_PER_TURN: usize = 256;
/// Readiness events taken per `wait`.
const EVENTS_CAPACITY: usize = 1024;

mod socket;

use socket::{connect_outcome, register, write_now, Listening, Socket, Stream};

pub struct Epoll {
    poll: Poll,
    events: Events,
    listeners: Vec<Listening>,
    /// Listeners whose accept queue may still hold connections.
    accept_pending: Vec<bool>,
    /// After an accept error (out of file descriptors, say): when to try again.
    accept_retry_at: Option<Instant>,
    accept_failures: AcceptFailures,
    sockets: Slab<Socket>,
    /// Sockets to read this turn without waiting for an event.
    read_again: Vec<usize>,
    /// Sockets already in this wait's reading order (kept between waits for its memory).
    read_seen: hashbrown::HashSet<usize>,
    waker: Arc<mio::Waker>,
    /// Bytes queued over all sockets.
    queued_total: usize,
    /// Connections closing (see `Socket::closing`) by the time their linger ends, oldest
    /// first (every linger is as long, so this is also deadline order).
    closing: VecDeque<(Instant, ConnId)>,
    /// The generation the next accepted connection gets: ids of closed connections are
    /// never given out again (until the counter wraps, after 2^32 connections).
    next_generation: u32,
    /// Where reads land before their bytes are copied out (`READ_MAX_PER_TURN` bytes).
    scratch: Box<[u8]>,
}

struct MioWaker(Arc<mio::Waker>);

impl Waker for MioWaker {
    fn wake(&self) {
        // A failed wake means the poll is gone: the shard is stopping anyway.
        let _ = self.0.wake();
    }
}

impl Epoll {
    /// How long the next poll may wait: not at all with reads or accepts left from the last
    /// turn; otherwise at most until the next accept retry or the end of the oldest linger.
    fn poll_timeout(&mut self, timeout: Option<Duration>) -> Option<Duration> {
        if let Some(at) = self.accept_retry_at {
            if Instant::now() >= at {
                self.accept_retry_at = None;
                self.accept_pending.iter_mut().for_each(|p| *p = true);
            }
        }
        let busy = !self.read_again.is_empty() || self.accept_pending.iter().any(|&p| p);
        if busy {
            return Some(Duration::ZERO);
        }
        let wake_at = [self.accept_retry_at, self.closing.front().map(|c| c.0)]
            .into_iter()
            .flatten()
            .min();
        match (timeout, wake_at) {
            (Some(t), Some(at)) => Some(t.min(at.saturating_duration_since(Instant::now()))),
            (None, Some(at)) => Some(at.saturating_duration_since(Instant::now())),
            (t, None) => t,
        }
    }

    /// What the poll reported: listeners to accept on, outgoing connects done, sockets
    /// readable (queued for `read_ready`), queued writes flushed. Returns the connections
    /// that failed.
    fn take_readiness(&mut self, out: &mut Vec<Event>) -> Vec<(ConnId, io::Error)> {
        let mut failed = Vec::new();
        for event in self.events.iter() {
            let token = event.token();
            if token == WAKER {
                continue;
            }
            if token.0 >= LISTENER_BASE {
                self.accept_pending[token.0 - LISTENER_BASE] = true;
                continue;
            }
            let Some(socket) = self.sockets.get_mut(token.0) else {
                continue;
            };
            if socket.connecting {
                let conn = ConnId::new(token.0, socket.generation);
                match connect_outcome(&socket.stream) {
                    Ok(false) => continue,
                    Ok(true) => {
                        socket.connecting = false;
                        out.push(Event::Connected { conn });
                    }
                    Err(e) => {
                        failed.push((conn, e));
                        continue;
                    }
                }
            }
            if event.is_read_closed() || event.is_error() {
                socket.read_closed = true;
            }
            let readable = event.is_readable() || event.is_read_closed() || event.is_error();
            if readable && !socket.readable {
                socket.readable = true;
                self.read_again.push(token.0);
            }
            if event.is_writable() && !socket.queue.is_empty() {
                let before = socket.queued;
                let flushed = Self::flush(socket);
                self.queued_total -= before - socket.queued;
                match flushed {
                    Ok(()) => Self::shut_write_when_flushed(socket),
                    Err(e) => failed.push((ConnId::new(token.0, socket.generation), e)),
                }
            }
        }
        failed
    }

    /// Reads the readable sockets in the order they became readable (epoll reports them
    /// so), and before accepting new connections (read from the next wait on): what a
    /// client sent on its old connection before it opened a new one is handled first, as a
    /// single-threaded broker would (a reconnect right after a PUBLISH and a close).
    fn read_ready(&mut self, out: &mut Vec<Event>) {
        let mut to_read = std::mem::take(&mut self.read_again);
        if to_read.len() > 1 {
            let seen = &mut self.read_seen;
            seen.clear();
            to_read.retain(|id| seen.insert(*id));
        }
        for id in to_read.drain(..) {
            self.read(id, out);
        }
        // Keep the allocation for next turn (read() pushed into the fresh one).
        to_read.append(&mut self.read_again);
        self.read_again = to_read;
    }

    pub fn new(listeners: Vec<ListenSocket>) -> io::Result<Self> {
        let poll = Poll::new()?;
        let waker = Arc::new(mio::Waker::new(poll.registry(), WAKER)?);
        let mut mio_listeners = Vec::with_capacity(listeners.len());
        for (i, listener) in listeners.into_iter().enumerate() {
            listener.set_nonblocking(true)?;
            let mut listener = match listener {
                ListenSocket::Tcp(l) => Listening::Tcp(TcpListener::from_std(l)),
                ListenSocket::Unix(l) => Listening::Unix(UnixListener::from_std(l)),
            };
            poll.registry().register(
                listener.source(),
                Token(LISTENER_BASE + i),
                Interest::READABLE,
            )?;
            mio_listeners.push(listener);
        }
        Ok(Epoll {
            poll,
            events: Events::with_capacity(EVENTS_CAPACITY),
            accept_pending: vec![true; mio_listeners.len()],
            accept_retry_at: None,
            accept_failures: AcceptFailures::default(),
            listeners: mio_listeners,
            sockets: Slab::new(),
            read_again: Vec::new(),
            read_seen: hashbrown::HashSet::new(),
            waker,
            next_generation: 1,
            closing: VecDeque::new(),
            queued_total: 0,
            scratch: vec![0; READ_MAX_PER_TURN].into_boxed_slice(),
        })
    }

    pub fn waker(&self) -> Arc<dyn Waker> {
        Arc::new(MioWaker(self.waker.clone()))
    }

    fn accept(&mut self, index: usize, out: &mut Vec<Event>) {
        for _ in 0..ACCEPTS_PER_TURN {
            match self.listeners[index].accept() {
                Ok((mut stream, peer, local_port)) => {
                    self.accept_failures.succeeded();
                    let generation = self.take_generation();
                    let entry = self.sockets.vacant_entry();
                    let id = entry.key();
                    if let Err(e) = register(self.poll.registry(), stream.source(), Token(id)) {
                        log::error!("Error: cannot register a new connection: {e}");
                        continue;
                    }
                    entry.insert(Socket::new(stream, generation, false));
                    self.read_again.push(id);
                    out.push(Event::Accepted {
                        conn: ConnId::new(id, generation),
                        peer,
                        local_port,
                        socket: index,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.accept_pending[index] = false;
                    return;
                }
                Err(e) => {
                    // Out of file descriptors and the like: retry after a pause rather than
                    // spin.
                    self.accept_pending[index] = false;
                    if self.accept_retry_at.is_none() {
                        self.accept_failures.failed(&e);
                        self.accept_retry_at = Some(Instant::now() + ACCEPT_RETRY);
                    }
                    return;
                }
            }
        }
    }

    /// Reads up to the per-turn limit from one socket.
    fn read(&mut self, id: usize, out: &mut Vec<Event>) {
        let Some(socket) = self.sockets.get_mut(id) else {
            return;
        };
        if socket.paused || !socket.readable {
            return;
        }
        if socket.closing {
            if Self::discard(socket) {
                self.remove(id);
            } else if socket.readable {
                self.read_again.push(id);
            }
            return;
        }
        // Read into the shard's scratch buffer and copy out exactly what came: an idle
        // connection holds no read buffer, and what the shard keeps of these bytes (a
        // retained message, a queued payload) pins no more memory than was read.
        let scratch = &mut self.scratch;
        let mut data = BytesMut::new();
        let mut closed: Option<Option<io::Error>> = None;
        while data.len() < READ_MAX_PER_TURN {
            let room = READ_MAX_PER_TURN - data.len();
            match socket.stream.read(&mut scratch[..room]) {
                Ok(0) => {
                    closed = Some(None);
                    break;
                }
                Ok(n) => {
                    data.extend_from_slice(&scratch[..n]);
                    // A short read drained the socket: the next arrival is a new edge, so
                    // the read that would only say `WouldBlock` is saved.
                    if n < room && !socket.read_closed {
                        socket.readable = false;
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    socket.readable = false;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    closed = Some(Some(e));
                    break;
                }
            }
        }
        if socket.readable && closed.is_none() {
            self.read_again.push(id);
        }
        let conn = ConnId::new(id, socket.generation);
        if !data.is_empty() {
            out.push(Event::Received { conn, data });
        }
        if let Some(error) = closed {
            self.remove(id);
            out.push(Event::Closed { conn, error });
        }
    }

    /// Reads and throws away what a closing connection's peer sends, up to this turn's
    /// share. True once it is to be closed for good: the peer closed, an error, or more
    /// discarded than a linger allows.
    fn discard(socket: &mut Socket) -> bool {
        let mut scratch = [0u8; 4096];
        let mut turn = 0;
        while turn < READ_MAX_PER_TURN {
            match socket.stream.read(&mut scratch) {
                Ok(0) => return true,
                Ok(n) => {
                    turn += n;
                    socket.discarded = socket.discarded.saturating_add(n as u32);
                    if socket.discarded as usize > LINGER_DISCARD_MAX {
                        return true;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    socket.readable = false;
                    return false;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return true,
            }
        }
        false
    }

    /// Once a closing connection's queue is written, shuts its write side: the peer reads
    /// everything, then the end of the stream.
    fn shut_write_when_flushed(socket: &mut Socket) {
        if socket.closing && !socket.write_shut && socket.queue.is_empty() {
            let _ = socket.stream.shutdown(std::net::Shutdown::Write);
            socket.write_shut = true;
        }
    }

    /// Writes queued data until the socket stops taking it. `Err` means the connection failed.
    fn flush(socket: &mut Socket) -> io::Result<()> {
        while !socket.queue.is_empty() {
            let slices: Vec<IoSlice<'_>> = socket
                .queue
                .iter()
                .take(IOVECS_MAX)
                .map(|b| IoSlice::new(b))
                .collect();
            match socket.stream.write_vectored(&slices) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    socket.queued -= n;
                    consume_written(&mut socket.queue, n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        // Drained: the queue's allocation goes too (an idle connection holds none).
        socket.queue = VecDeque::new();
        Ok(())
    }

    /// The generation the next connection gets: ids of closed connections are not given
    /// out again (until the counter wraps, after 2^32 connections).
    fn take_generation(&mut self) -> u32 {
        let generation = self.next_generation;
        self.next_generation = ConnId::next_generation(generation);
        generation
    }

    /// The socket of `conn`, if it is still open (not a later connection in its slot).
    fn socket_mut(&mut self, conn: ConnId) -> Option<&mut Socket> {
        self.sockets
            .get_mut(conn.slot())
            .filter(|s| s.generation == conn.generation())
    }

    fn remove(&mut self, id: usize) {
        if let Some(mut socket) = self.sockets.try_remove(id) {
            self.queued_total -= socket.queued;
            let _ = self.poll.registry().deregister(socket.stream.source());
        }
    }
}

impl Backend for Epoll {
    fn wait(&mut self, timeout: Option<Duration>, out: &mut Vec<Event>) -> io::Result<()> {
        let timeout = self.poll_timeout(timeout);
        match self.poll.poll(&mut self.events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        let failed = self.take_readiness(out);
        for (conn, e) in failed {
            let closing = self.sockets[conn.slot()].closing;
            self.remove(conn.slot());
            if !closing {
                out.push(Event::Closed {
                    conn,
                    error: Some(e),
                });
            }
        }
        // Lingers that ran out: closed now, whatever the peer does.
        let ended: Vec<ConnId> = lingers_ended(&mut self.closing, Instant::now()).collect();
        for conn in ended {
            if self.socket_mut(conn).is_some_and(|s| s.closing) {
                self.remove(conn.slot());
            }
        }
        self.read_ready(out);
        for index in 0..self.listeners.len() {
            if self.accept_pending[index] {
                self.accept(index, out);
            }
        }
        Ok(())
    }

    fn send(&mut self, conn: ConnId, data: Bytes) {
        let Some(socket) = self
            .sockets
            .get_mut(conn.slot())
            .filter(|s| s.generation == conn.generation() && !s.closing)
        else {
            return;
        };
        if data.is_empty() {
            return;
        }
        let mut data = data;
        if socket.queue.is_empty() && !socket.connecting {
            // Written at once where the socket takes it: only what it does not take is
            // queued, so a connection whose writes keep up never allocates a queue.
            match write_now(&mut socket.stream, &data) {
                Ok(n) if n == data.len() => return,
                Ok(n) => data.advance(n),
                Err(e) => {
                    // Reported as a close on the next read: mark readable so it is seen.
                    log::debug!("write to connection {conn} failed: {e}");
                    let _ = socket.stream.shutdown(std::net::Shutdown::Both);
                    socket.readable = true;
                    self.read_again.push(conn.slot());
                    return;
                }
            }
        }
        socket.queued += data.len();
        self.queued_total += data.len();
        socket.queue.push_back(data);
    }

    fn queued_bytes(&self, conn: ConnId) -> usize {
        self.sockets
            .get(conn.slot())
            .filter(|s| s.generation == conn.generation())
            .map_or(0, |s| s.queued)
    }

    fn queued_bytes_total(&self) -> usize {
        self.queued_total
    }

    fn pause_reading(&mut self, conn: ConnId) {
        if let Some(socket) = self.socket_mut(conn) {
            socket.paused = true;
        }
    }

    fn resume_reading(&mut self, conn: ConnId) {
        if let Some(socket) = self.socket_mut(conn) {
            if socket.paused {
                socket.paused = false;
                self.read_again.push(conn.slot());
            }
        }
    }

    fn connect(&mut self, to: SocketAddr, bind: Option<SocketAddr>) -> io::Result<ConnId> {
        let socket = super::start_connect(to, bind)?;
        let mut stream = Stream::Tcp(TcpStream::from_std(socket.into()));
        let generation = self.take_generation();
        let entry = self.sockets.vacant_entry();
        let id = entry.key();
        register(self.poll.registry(), stream.source(), Token(id))?;
        entry.insert(Socket::new(stream, generation, true));
        Ok(ConnId::new(id, generation))
    }

    fn close(&mut self, conn: ConnId) {
        let Some(socket) = self
            .sockets
            .get_mut(conn.slot())
            .filter(|s| s.generation == conn.generation())
        else {
            return;
        };
        if socket.closing {
            return;
        }
        if socket.connecting {
            // Nothing was sent on it: there is nothing to linger for.
            self.remove(conn.slot());
            return;
        }
        socket.closing = true;
        socket.paused = false;
        let before = socket.queued;
        let flushed = Self::flush(socket);
        self.queued_total -= before - socket.queued;
        if flushed.is_err() {
            self.remove(conn.slot());
            return;
        }
        Self::shut_write_when_flushed(socket);
        // Whatever is already in the receive buffer is read (and dropped) at once.
        socket.readable = true;
        self.read_again.push(conn.slot());
        self.closing.push_back((Instant::now() + LINGER, conn));
    }
}
