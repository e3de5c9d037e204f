//! What each io_uring completion means for the connection it names.

use bytes::BytesMut;
use io_uring::cqueue;
use socket2::Socket as Socket2;
use std::collections::VecDeque;
use std::io;
use std::os::fd::FromRawFd;
use std::time::Instant;

use super::{untag, Op, Socket, Uring, SLOTS_MAX};
use crate::shard::io::{consume_written, ConnId, Event, ACCEPT_RETRY, LINGER_DISCARD_MAX};

impl Uring {
    pub(super) fn on_completion(
        &mut self,
        data: u64,
        result: i32,
        flags: u32,
        out: &mut Vec<Event>,
    ) {
        let (op, slot, generation) = untag(data);
        match op {
            x if x == Op::Wake as u8 => self.arm_wake(),
            x if x == Op::Accept as u8 => self.on_accept(slot, result, flags, out),
            x if x == Op::Receive as u8 => self.on_receive(slot, generation, result, flags, out),
            x if x == Op::Send as u8 => self.on_send(slot, generation, result, out),
            x if x == Op::Connect as u8 => self.on_connect(slot, generation, result, out),
            _ => {}
        }
    }

    fn on_accept(&mut self, index: usize, result: i32, flags: u32, out: &mut Vec<Event>) {
        if !cqueue::more(flags) {
            self.accepting[index] = false;
        }
        if result < 0 {
            let e = io::Error::from_raw_os_error(-result);
            if matches!(-result, libc::ECONNABORTED | libc::EINTR | libc::EAGAIN) {
                return;
            }
            // Out of file descriptors and the like: retry after a pause rather than spin.
            if self.accept_retry_at.is_none() {
                self.accept_failures.failed(&e);
            }
            self.accept_retry_at = Some(Instant::now() + ACCEPT_RETRY);
            return;
        }
        self.accept_failures.succeeded();
        // SAFETY: the kernel made this descriptor for us and nothing else owns it.
        let stream = unsafe { Socket2::from_raw_fd(result) };
        let (Ok(peer), Ok(local)) = (stream.peer_addr(), stream.local_addr()) else {
            return; // Gone already.
        };
        // A Unix socket's peers have no address (`None`), and its port is 0.
        let (peer, local_port) = (peer.as_socket(), local.as_socket().map_or(0, |a| a.port()));
        if self.sockets.vacant_key() >= SLOTS_MAX {
            log::error!("Error: shard connection table full; refusing a new connection.");
            return;
        }
        if peer.is_some() {
            let _ = stream.set_tcp_nodelay(true);
        }
        let generation = self.take_generation();
        let slot = self.sockets.insert(Socket::new(stream, generation, None));
        out.push(Event::Accepted {
            conn: ConnId::new(slot, generation),
            peer,
            local_port,
            socket: index,
        });
        self.arm_receive(slot);
    }

    fn on_receive(
        &mut self,
        slot: usize,
        generation: u32,
        result: i32,
        flags: u32,
        out: &mut Vec<Event>,
    ) {
        let buffer = cqueue::buffer_select(flags);
        let more = cqueue::more(flags);
        let Some(socket) = self
            .sockets
            .get_mut(slot)
            .filter(|s| s.generation == generation)
        else {
            if let Some(id) = buffer {
                self.buffers.give_back(id);
            }
            return;
        };
        if !more {
            socket.receiving = false;
        }
        let conn = ConnId::new(slot, generation);
        if result > 0 {
            if !self.on_bytes(slot, conn, buffer, result as usize, more, out) {
                return;
            }
        } else if result == 0 {
            // The peer closed its side.
            if !socket.dead && !socket.closing {
                out.push(Event::Closed { conn, error: None });
            }
            self.remove(slot);
        } else if -result == libc::ENOBUFS || -result == libc::ECANCELED {
            // Out of buffers (they are given back this turn, and the ring grows if it
            // can), or stopped by a pause or a close: armed again on the next `wait`
            // unless paused or gone.
            if -result == libc::ENOBUFS {
                self.buffers.grow();
            }
            self.rearm.push(slot);
        } else {
            if !socket.dead && !socket.closing {
                let error = Some(io::Error::from_raw_os_error(-result));
                out.push(Event::Closed { conn, error });
            }
            self.remove(slot);
        }
        self.free_if_done(slot);
    }

    /// `len` bytes received in `buffer` on the socket in `slot`: passed on as an event,
    /// held while it is paused, or discarded while it closes. False if the caller must not
    /// go on to free the slot.
    fn on_bytes(
        &mut self,
        slot: usize,
        conn: ConnId,
        buffer: Option<u16>,
        len: usize,
        more: bool,
        out: &mut Vec<Event>,
    ) -> bool {
        let socket = &mut self.sockets[slot];
        let Some(id) = buffer else {
            // Not something the kernel does; if it ever did, the connection ends rather
            // than wait for bytes that cannot arrive.
            log::error!("Error: io_uring receive without a buffer on connection {conn}");
            if !socket.dead && !socket.closing {
                let error = Some(io::Error::other("receive without a buffer"));
                out.push(Event::Closed { conn, error });
            }
            self.remove(slot);
            self.free_if_done(slot);
            return false;
        };
        let data = self.buffers.filled(id, len);
        if socket.dead {
        } else if socket.closing {
            if socket.discard(len as u32) as usize > LINGER_DISCARD_MAX {
                self.buffers.give_back(id);
                self.remove(slot);
                return false;
            }
        } else if socket.paused {
            socket.hold(data);
        } else {
            match out.last_mut() {
                Some(Event::Received {
                    conn: last,
                    data: bytes,
                }) if *last == conn => bytes.extend_from_slice(data),
                _ => out.push(Event::Received {
                    conn,
                    data: BytesMut::from(data),
                }),
            }
        }
        self.buffers.give_back(id);
        if !more {
            self.rearm.push(slot);
        }
        true
    }

    fn on_connect(&mut self, slot: usize, generation: u32, result: i32, out: &mut Vec<Event>) {
        let Some(socket) = self.socket_of(slot, generation) else {
            return;
        };
        socket.connected();
        if socket.dead {
            self.free_if_done(slot);
            return;
        }
        let conn = ConnId::new(slot, generation);
        if result < 0 {
            let error = Some(io::Error::from_raw_os_error(-result));
            out.push(Event::Closed { conn, error });
            self.remove(slot);
            return;
        }
        out.push(Event::Connected { conn });
        self.arm_receive(slot);
        self.start_send(slot);
    }

    fn on_send(&mut self, slot: usize, generation: u32, result: i32, out: &mut Vec<Event>) {
        // (Not `socket_of`: `queued_total` is changed below while the socket is held.)
        let Some(socket) = self
            .sockets
            .get_mut(slot)
            .filter(|s| s.generation == generation)
        else {
            return;
        };
        socket.sending = false;
        if socket.queue.len() <= 1 || socket.queued == 0 {
            socket.iov = Box::default();
        }
        if socket.dead {
            self.free_if_done(slot);
            return;
        }
        if result <= 0 {
            let error = if result == 0 {
                io::ErrorKind::WriteZero.into()
            } else {
                io::Error::from_raw_os_error(-result)
            };
            if !socket.closing {
                let conn = ConnId::new(slot, generation);
                out.push(Event::Closed {
                    conn,
                    error: Some(error),
                });
            }
            self.remove(slot);
            return;
        }
        let written = result as usize;
        socket.queued -= written;
        self.queued_total -= written;
        consume_written(&mut socket.queue, written);
        if socket.queue.is_empty() {
            // Its allocation goes too: an idle connection holds none.
            socket.queue = VecDeque::new();
            Self::shut_write_when_flushed(socket);
        } else {
            self.start_send(slot);
        }
    }
}
