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
    /// Closed by the shard: the queue is written, the write side shut, and what the peer
    /// still sends is thrown away until it closes or the linger ends (as in `epoll/`).
    pub(super) closing: bool,
    pub(super) write_shut: bool,
    /// Gone for the shard; kept only until its operations complete.
    pub(super) dead: bool,
    /// What only a socket in a rare state keeps, out of line: one pointer in every socket
    /// instead of three fields (the record is 80 bytes, not 96, in a slab of them).
    aside: Option<Box<Aside>>,
}

/// The states are exclusive: a connect completes before anything is received, and a
/// socket that closes stops holding (and a connecting one is not lingered on).
enum Aside {
    /// An outgoing connect in flight, and the address it points the kernel at (kept until
    /// it completes). Sends wait in the queue until it has.
    Connecting(socket2::SockAddr),
    /// Bytes that arrived while paused (before the cancelled receive stopped).
    Held(BytesMut),
    /// Closing: bytes the peer sent since, read and thrown away.
    Discarded(u32),
}

impl Socket {
    /// A new connection's socket (`connecting`: the address of its connect in flight).
    pub(super) fn new(
        stream: socket2::Socket,
        generation: u32,
        connecting: Option<socket2::SockAddr>,
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
            closing: false,
            write_shut: false,
            dead: false,
            aside: connecting.map(|to| Box::new(Aside::Connecting(to))),
        }
    }

    /// An outgoing connect is in flight.
    pub(super) fn connecting(&self) -> bool {
        matches!(self.aside.as_deref(), Some(Aside::Connecting(_)))
    }

    /// The connect completed: the kernel no longer reads its address.
    pub(super) fn connected(&mut self) {
        if self.connecting() {
            self.aside = None;
        }
    }

    /// The address of the connect in flight (for its operation: stays put until it ends).
    pub(super) fn connect_address(&self) -> Option<&socket2::SockAddr> {
        match self.aside.as_deref() {
            Some(Aside::Connecting(to)) => Some(to),
            _ => None,
        }
    }

    /// Keeps bytes that arrived while paused.
    pub(super) fn hold(&mut self, data: &[u8]) {
        match self.aside.as_deref_mut() {
            Some(Aside::Held(held)) => held.extend_from_slice(data),
            _ => self.aside = Some(Box::new(Aside::Held(BytesMut::from(data)))),
        }
    }

    pub(super) fn holds(&self) -> bool {
        matches!(self.aside.as_deref(), Some(Aside::Held(_)))
    }

    /// The bytes held while paused, if any, held no more.
    pub(super) fn take_held(&mut self) -> Option<BytesMut> {
        if !self.holds() {
            return None;
        }
        match self.aside.take().map(|b| *b) {
            Some(Aside::Held(data)) => Some(data),
            _ => None,
        }
    }

    /// Forgets bytes held while paused (nothing else kept aside).
    pub(super) fn drop_held(&mut self) {
        if self.holds() {
            self.aside = None;
        }
    }

    /// Counts `n` more bytes thrown away while closing; returns the total so far.
    pub(super) fn discard(&mut self, n: u32) -> u32 {
        match self.aside.as_deref_mut() {
            Some(Aside::Discarded(total)) => {
                *total = total.saturating_add(n);
                *total
            }
            _ => {
                self.aside = Some(Box::new(Aside::Discarded(n)));
                n
            }
        }
    }
}

#[cfg(test)]
mod tests {
    /// A slab's entry, as `slab` declares it (its own is private): what each slot takes.
    #[allow(dead_code)]
    enum Entry<T> {
        Vacant(usize),
        Occupied(T),
    }

    #[test]
    fn a_socket_record_is_80_bytes() {
        assert!(std::mem::size_of::<Entry<super::Socket>>() <= 80);
    }
}
