//! What the io_uring backend keeps per connection.

use bytes::{Bytes, BytesMut};
use std::collections::VecDeque;

pub(super) struct Socket {
    /// TCP or Unix: the ring reads and writes either alike.
    pub(super) stream: socket2::Socket,
    pub(super) generation: u32,
    pub(super) queue: VecDeque<Bytes>,
    pub(super) queued: usize,
    /// A send is in flight (for the front of `queue`).
    pub(super) sending: bool,
    /// The vector of an in-flight `writev`; untouched until it completes.
    pub(super) iov: Box<[libc::iovec]>,
    /// A multishot receive is armed (until a completion without `MORE`).
    pub(super) receiving: bool,
    pub(super) paused: bool,
    /// Bytes that arrived while paused (before the cancelled receive stopped).
    pub(super) held: Option<Box<BytesMut>>,
    /// Closed by the shard: the queue is written, the write side shut, and what the peer
    /// still sends is thrown away until it closes or the linger ends (as in `epoll/`).
    pub(super) closing: bool,
    pub(super) write_shut: bool,
    pub(super) discarded: u32,
    /// Gone for the shard; kept only until its operations complete.
    pub(super) dead: bool,
    /// An outgoing connect in flight, and the address it points the kernel at (kept
    /// until it completes). Sends wait in the queue until it has.
    pub(super) connecting: Option<Box<socket2::SockAddr>>,
}

impl Socket {
    /// A new connection's socket (`connecting`: the address of its connect in flight).
    pub(super) fn new(
        stream: socket2::Socket,
        generation: u32,
        connecting: Option<Box<socket2::SockAddr>>,
    ) -> Socket {
        Socket {
            stream,
            generation,
            queue: VecDeque::new(),
            queued: 0,
            sending: false,
            iov: Box::default(),
            receiving: false,
            paused: false,
            held: None,
            closing: false,
            write_shut: false,
            discarded: 0,
            dead: false,
            connecting,
        }
    }
}
