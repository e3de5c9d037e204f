//! The I/O backend contract: what every backend (epoll through mio, io_uring, and the
//! simulation's) must provide.
//!
//! The interface is completion-shaped and passes owned buffers both ways, so that a
//! completion backend (io_uring with provided buffers) fits without copies and the readiness
//! backend (epoll) adapts to it:
//!
//! - `wait` blocks until something happened or `timeout` passed, and appends what happened
//!   to `events`: accepted connections (already registered, with their id), received bytes
//!   as an owned buffer the backend filled, closed connections (with the error, if any).
//!   It reads at most `READ_MAX_PER_TURN` bytes per connection per call, so one busy client
//!   cannot starve the others; what is left is read on the next call, without a new
//!   readiness event.
//! - `send` takes ownership of encoded bytes and writes them in order; what the socket does
//!   not take at once stays queued in the backend (counted by `queued_bytes`) and is written
//!   as the socket drains. The shard calls `send` once per connection per loop turn with
//!   everything that turn produced, so many packets go out in one write.
//! - `pause_reading` / `resume_reading` stop and restart delivery of received bytes from
//!   one connection (back-pressure on publishers whose messages wait).
//! - `close` ends the connection for the shard at once (no event names its id again) and
//!   closes it gracefully: the queue is written, the write side shut, and what the peer
//!   still sends is read and discarded for a bounded time and amount, so that the peer reads
//!   the last packet (a DISCONNECT with its reason) instead of a reset.
//! - Connection ids carry a generation: an id stays invalid once its connection is closed,
//!   even after its slot is reused, and calls naming it do nothing.
//! - `connect` starts an outgoing TCP connection (a bridge) without blocking: it returns
//!   the connection's id at once, and a later `wait` reports `Connected` once the peer
//!   accepted it, or `Closed` with the error if it failed. `send` before then queues.
//! - A `Waker` lets another thread end a `wait` early.

pub mod epoll;
pub mod sim;
pub mod uring;

#[cfg(test)]
mod tests;

use bytes::{Bytes, BytesMut};
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

/// Pause before accepting again after an accept error (out of file descriptors, say).
const ACCEPT_RETRY: Duration = Duration::from_millis(100);
/// Buffers written per `writev`.
const IOVECS_MAX: usize = 64;
/// How long a connection the shard closed lingers to let the peer read what was sent last,
/// and how much it may still send meanwhile (read and discarded).
const LINGER: Duration = Duration::from_secs(2);
const LINGER_DISCARD_MAX: usize = 256 * 1024;

pub use crate::types::ConnId;

/// Drops the first `written` bytes of a connection's write queue (they reached the kernel).
fn consume_written(queue: &mut std::collections::VecDeque<Bytes>, mut written: usize) {
    use bytes::Buf;
    while written > 0 {
        let front = queue.front_mut().expect("written bytes were queued");
        if front.len() <= written {
            written -= front.len();
            queue.pop_front();
        } else {
            front.advance(written);
            written = 0;
        }
    }
}

/// Takes from `closing` (oldest first; every linger is as long) the connections whose
/// linger has run out by `now`.
fn lingers_ended(
    closing: &mut std::collections::VecDeque<(std::time::Instant, ConnId)>,
    now: std::time::Instant,
) -> impl Iterator<Item = ConnId> + '_ {
    std::iter::from_fn(move || {
        let &(deadline, conn) = closing.front()?;
        (deadline <= now).then(|| {
            closing.pop_front();
            conn
        })
    })
}

/// Accept failures (out of file descriptors, say) are logged once per run of failures, not
/// at every retry, and the end of the run says how many attempts failed.
#[derive(Default)]
struct AcceptFailures {
    count: u64,
}

impl AcceptFailures {
    fn failed(&mut self, e: &io::Error) {
        if self.count == 0 {
            log::error!(
                "Error accepting a connection: {e}; retrying every {ACCEPT_RETRY:?} until it works."
            );
        }
        self.count += 1;
    }

    fn succeeded(&mut self) {
        if self.count > 0 {
            log::info!(
                target: "information",
                "Accepting connections again ({} attempts had failed).",
                self.count
            );
            self.count = 0;
        }
    }
}

/// A listening socket handed to a backend: TCP, or a Unix socket (`listener 0 PATH`).
#[derive(Debug)]
pub enum ListenSocket {
    Tcp(std::net::TcpListener),
    Unix(std::os::unix::net::UnixListener),
}

impl From<std::net::TcpListener> for ListenSocket {
    fn from(listener: std::net::TcpListener) -> Self {
        ListenSocket::Tcp(listener)
    }
}

impl ListenSocket {
    fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        match self {
            ListenSocket::Tcp(l) => l.set_nonblocking(nonblocking),
            ListenSocket::Unix(l) => l.set_nonblocking(nonblocking),
        }
    }

    /// Another handle on the same socket, for another shard: the shards' accepts take
    /// turns on one queue (a Unix socket cannot be bound once per shard as TCP's can).
    pub fn try_clone(&self) -> io::Result<Self> {
        Ok(match self {
            ListenSocket::Tcp(l) => ListenSocket::Tcp(l.try_clone()?),
            ListenSocket::Unix(l) => ListenSocket::Unix(l.try_clone()?),
        })
    }
}

impl std::os::fd::AsRawFd for ListenSocket {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        match self {
            ListenSocket::Tcp(l) => l.as_raw_fd(),
            ListenSocket::Unix(l) => l.as_raw_fd(),
        }
    }
}

#[derive(Debug)]
pub enum Event {
    Accepted {
        conn: ConnId,
        /// `None` on a Unix socket (its peers have no address).
        peer: Option<SocketAddr>,
        /// The port it arrived on (0 on a Unix socket, as Mosquitto logs it).
        local_port: u16,
        /// Index of the listening socket it came in on (in the order given to the backend).
        socket: usize,
    },
    Received {
        conn: ConnId,
        data: BytesMut,
    },
    /// An outgoing connection (`Backend::connect`) is established.
    Connected {
        conn: ConnId,
    },
    /// The peer closed the connection (`error` is `None`) or it failed. The id is free.
    Closed {
        conn: ConnId,
        error: Option<io::Error>,
    },
}

pub trait Backend {
    /// On the shard's thread, before its first turn: arms in the kernel what the backend
    /// waits on (its listening sockets above all), so that when shards start together every
    /// one of them is accepting before any serves a client. (Shards sharing one Unix socket
    /// take its connections in turn only if all of them wait on it.)
    fn start(&mut self) -> io::Result<()> {
        Ok(())
    }
    /// The shard went quiet: memory the backend keeps for bursts (io_uring's receive
    /// buffers) goes back to the system until it is needed again. Called between waits.
    fn release_idle_memory(&mut self) {}
    fn wait(&mut self, timeout: Option<Duration>, events: &mut Vec<Event>) -> io::Result<()>;
    fn send(&mut self, conn: ConnId, data: Bytes);
    fn queued_bytes(&self, conn: ConnId) -> usize;
    /// Bytes queued over all of this backend's connections.
    fn queued_bytes_total(&self) -> usize;
    fn pause_reading(&mut self, conn: ConnId);
    fn resume_reading(&mut self, conn: ConnId);
    fn close(&mut self, conn: ConnId);
    /// Starts connecting to `to` (from `bind`, if given); see the contract above.
    fn connect(&mut self, to: SocketAddr, bind: Option<SocketAddr>) -> io::Result<ConnId>;
}

/// A non-blocking TCP socket with a connect to `to` under way (or done).
fn start_connect(to: SocketAddr, bind: Option<SocketAddr>) -> io::Result<socket2::Socket> {
    use socket2::{Domain, Protocol, Socket, Type};
    // (socket2 opens it close-on-exec.)
    let socket = Socket::new(Domain::for_address(to), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_nonblocking(true)?;
    let _ = socket.set_tcp_nodelay(true);
    if let Some(bind) = bind {
        socket.bind(&bind.into())?;
    }
    match socket.connect(&to.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(socket)
}

/// Ends a backend's `wait` from another thread.
pub trait Waker: Send + Sync {
    fn wake(&self);
}

/// The backend a broker's shards run on, chosen at start (`--io`, `io_backend`). One
/// `match` per call: cheaper than a virtual call, and the shard stays generic for the
/// simulation's backend.
// One per shard, made once: the variants' size difference costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum Io {
    Epoll(epoll::Epoll),
    Uring(uring::Uring),
}

impl Io {
    pub fn waker(&self) -> std::sync::Arc<dyn Waker> {
        match self {
            Io::Epoll(b) => b.waker(),
            Io::Uring(b) => b.waker(),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Io::Epoll(_) => "epoll",
            Io::Uring(_) => "io_uring",
        }
    }
}

macro_rules! each_backend {
    ($self:ident, $b:ident => $call:expr) => {
        match $self {
            Io::Epoll($b) => $call,
            Io::Uring($b) => $call,
        }
    };
}

impl Backend for Io {
    fn start(&mut self) -> io::Result<()> {
        each_backend!(self, b => b.start())
    }
    fn release_idle_memory(&mut self) {
        each_backend!(self, b => b.release_idle_memory())
    }
    fn wait(&mut self, timeout: Option<Duration>, events: &mut Vec<Event>) -> io::Result<()> {
        each_backend!(self, b => b.wait(timeout, events))
    }
    fn send(&mut self, conn: ConnId, data: Bytes) {
        each_backend!(self, b => b.send(conn, data))
    }
    fn queued_bytes(&self, conn: ConnId) -> usize {
        each_backend!(self, b => b.queued_bytes(conn))
    }
    fn queued_bytes_total(&self) -> usize {
        each_backend!(self, b => b.queued_bytes_total())
    }
    fn pause_reading(&mut self, conn: ConnId) {
        each_backend!(self, b => b.pause_reading(conn))
    }
    fn resume_reading(&mut self, conn: ConnId) {
        each_backend!(self, b => b.resume_reading(conn))
    }
    fn close(&mut self, conn: ConnId) {
        each_backend!(self, b => b.close(conn))
    }
    fn connect(&mut self, to: SocketAddr, bind: Option<SocketAddr>) -> io::Result<ConnId> {
        each_backend!(self, b => b.connect(to, bind))
    }
}
