//! The epoll backend's sockets: listening ones, connections (TCP or Unix, read and written
//! alike), and what the backend keeps per connection.

use bytes::Bytes;
use mio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use mio::{event::Source, Interest, Registry, Token};
use std::collections::VecDeque;
use std::io::{self, IoSlice, Read, Write};

/// A listening socket, registered with the poll.
pub(super) enum Listening {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl Listening {
    /// A connection, its peer's address (`None` on a Unix socket) and the port it came in on.
    pub(super) fn accept(&self) -> io::Result<(Stream, Option<std::net::SocketAddr>, u16)> {
        match self {
            Listening::Tcp(listener) => {
                let (stream, peer) = listener.accept()?;
                let _ = stream.set_nodelay(true);
                let local = stream.local_addr().map_or(0, |a| a.port());
                Ok((Stream::Tcp(stream), Some(peer), local))
            }
            Listening::Unix(listener) => {
                let (stream, _) = listener.accept()?;
                Ok((Stream::Unix(stream), None, 0))
            }
        }
    }

    pub(super) fn source(&mut self) -> &mut dyn Source {
        match self {
            Listening::Tcp(l) => l,
            Listening::Unix(l) => l,
        }
    }
}

/// A connection's socket: TCP or Unix, read and written alike.
pub(super) enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    pub(super) fn shutdown(&self, how: std::net::Shutdown) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.shutdown(how),
            Stream::Unix(s) => s.shutdown(how),
        }
    }

    pub(super) fn source(&mut self) -> &mut dyn Source {
        match self {
            Stream::Tcp(s) => s,
            Stream::Unix(s) => s,
        }
    }

    pub(super) fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }

    pub(super) fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }

    pub(super) fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write_vectored(bufs),
            Stream::Unix(s) => s.write_vectored(bufs),
        }
    }
}

pub(super) fn register(
    registry: &Registry,
    source: &mut dyn Source,
    token: Token,
) -> io::Result<()> {
    registry.register(source, token, Interest::READABLE | Interest::WRITABLE)
}

pub(super) struct Socket {
    pub(super) stream: Stream,
    /// The generation of the `ConnId` given out for this socket.
    pub(super) generation: u32,
    pub(super) queue: VecDeque<Bytes>,
    pub(super) queued: usize,
    /// Data may be waiting (edge seen, `WouldBlock` not yet).
    pub(super) readable: bool,
    /// The peer's FIN (or an error) was reported: read to the end, do not stop at a short
    /// read, or the close would never be seen (no further edge comes).
    pub(super) read_closed: bool,
    pub(super) paused: bool,
    /// Closed by the shard: what is queued is written, then the write side is shut and
    /// what the peer still sends is read and thrown away until it closes too (or the
    /// linger runs out), so that the peer reads our last packet (a DISCONNECT with its
    /// reason) instead of a reset. No events are reported for it any more.
    pub(super) closing: bool,
    /// Closing: the write side is shut (after the queue was written).
    pub(super) write_shut: bool,
    /// Closing: bytes read and thrown away so far.
    pub(super) discarded: u32,
    /// An outgoing connection not yet established: nothing is read or written until it
    /// is (its first writable event says how it went).
    pub(super) connecting: bool,
}

impl Socket {
    /// A new connection's socket; `connecting`: an outgoing one not yet established.
    pub(super) fn new(stream: Stream, generation: u32, connecting: bool) -> Socket {
        Socket {
            stream,
            generation,
            queue: VecDeque::new(),
            queued: 0,
            // An accepted one is read at once: data may have come before registration.
            readable: !connecting,
            read_closed: false,
            paused: false,
            closing: false,
            write_shut: false,
            discarded: 0,
            connecting,
        }
    }
}

/// How an outgoing connect went, once its socket reports an event: `Ok(true)` connected,
/// `Ok(false)` still under way.
pub(super) fn connect_outcome(stream: &Stream) -> io::Result<bool> {
    let Stream::Tcp(stream) = stream else {
        return Ok(true);
    };
    if let Some(e) = stream.take_error()? {
        return Err(e);
    }
    match stream.peer_addr() {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
        Err(e) => Err(e),
    }
}

/// Writes what the socket takes now; `Ok(n)` with `n` short of the whole when it is full.
pub(super) fn write_now(stream: &mut Stream, data: &[u8]) -> io::Result<usize> {
    let mut written = 0;
    while written < data.len() {
        match stream.write(&data[written..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(written)
}
