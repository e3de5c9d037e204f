//! The io_uring backend (Linux 6.1 or later), on the `io-uring` crate.
//!
//! - One multishot accept per listening socket; one multishot receive per connection into
//!   the shard's provided-buffer ring (`buffer_ring`), so an idle connection holds no
//!   receive buffer.
//! - Sends are queued as submissions by `send` and go to the kernel together with the next
//!   `wait`: one `io_uring_enter` both submits a whole turn's writes and waits.
//! - At most one send per connection is in flight, so its bytes never reorder; a partial
//!   send continues from where it stopped.
//! - The ring is `SINGLE_ISSUER | DEFER_TASKRUN` (completions are processed only when the
//!   shard waits, on the shard's thread). It is created disabled and enabled by the first
//!   `wait`, on the shard's thread, which becomes its only submitter.
//! - A connection that ends is cancelled (every operation on its socket) and stays in the
//!   slab, dead to the shard, until its last operation completes: the buffers a send points
//!   at live until the kernel is done with them, and a slot is never reused while a
//!   completion may still name it. Completions carry the connection's generation too.
//! - Another thread wakes a `wait` through an eventfd that the ring always has a read on.

use bytes::Bytes;
use io_uring::{opcode, squeue, types, IoUring};
use slab::Slab;
use std::collections::VecDeque;
use std::io;
use std::mem::ManuallyDrop;
use std::net::{Shutdown, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod buffer_ring;
mod completions;
mod setup;
mod socket;

pub use setup::available;
use setup::ring_builder;

use super::{
    lingers_ended, AcceptFailures, Backend, ConnId, Event, ListenSocket, Waker, IOVECS_MAX, LINGER,
};
use buffer_ring::BufferRing;
use socket::Socket;

const SUBMISSION_ENTRIES: u32 = 1024;
/// Completions the ring holds before the kernel keeps the rest aside (no completion is lost:
/// `IORING_FEAT_NODROP`).
const COMPLETION_ENTRIES: u32 = 8192;
/// Completions handled per `wait`, so one turn stays bounded; the rest wait for the next.
const COMPLETIONS_PER_TURN: usize = 4096;
/// Connections per shard (slot numbers fit in 24 bits of a completion's tag).
const SLOTS_MAX: usize = 1 << 24;

/// What a submission was, kept in its tag with the slot (or listener) and generation.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
enum Op {
    Accept = 1,
    Receive = 2,
    Send = 3,
    Wake = 4,
    Cancel = 5,
    Connect = 6,
}

fn tag(op: Op, slot: usize, generation: u32) -> u64 {
    (op as u64) << 56 | (generation as u64) << 24 | slot as u64
}

fn untag(data: u64) -> (u8, usize, u32) {
    (
        (data >> 56) as u8,
        (data & (SLOTS_MAX as u64 - 1)) as usize,
        (data >> 24) as u32,
    )
}

pub struct Uring {
    // Dropped first: the ring, before the buffers it may write into.
    ring: IoUring,
    /// Freed only once the kernel is known to be done with it (see `Drop`).
    buffers: ManuallyDrop<BufferRing>,
    enabled: bool,
    listeners: Vec<ListenSocket>,
    /// Listeners with a multishot accept armed.
    accepting: Vec<bool>,
    accept_retry_at: Option<Instant>,
    sockets: Slab<Socket>,
    /// Connections whose receive is to be armed again on the next `wait`.
    rearm: Vec<usize>,
    /// Connections resumed with bytes held: delivered at the start of the next `wait`.
    resumed: Vec<usize>,
    wake_fd: Arc<OwnedFd>,
    /// Where the eventfd read lands; boxed so its address stays put.
    wake_buf: Box<u64>,
    queued_total: usize,
    closing: VecDeque<(Instant, ConnId)>,
    next_generation: u32,
    completions: Vec<(u64, i32, u32)>,
    accept_failures: AcceptFailures,
    /// See `new`.
    batch_wait_us: u32,
    /// Submissions the kernel did not take yet (see `push`); at most a few per connection.
    unsubmitted: Vec<squeue::Entry>,
}

// SAFETY: the raw pointers inside (`iovec`s of in-flight sends, the buffer ring, the
// address of a connect) point into memory this value owns (queued `Bytes`, the buffer
// ring's allocations, the boxed address); nothing else
// holds them, so moving the whole backend to the shard's thread moves their owner with them.
unsafe impl Send for Uring {}

struct EventFdWaker(Arc<OwnedFd>);

impl Waker for EventFdWaker {
    fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to an eventfd this value keeps open. A
        // failed write (the counter is full) still leaves the eventfd readable: awake.
        unsafe { libc::write(self.0.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }
}

impl Uring {
    /// `batch_wait_us` (`io_batch_wait_us`): once something has happened, how long a wait
    /// may go on gathering more before the shard handles it (0: at once).
    pub fn new(listeners: Vec<ListenSocket>, batch_wait_us: u32) -> io::Result<Self> {
        Self::with_submission_entries(listeners, batch_wait_us, SUBMISSION_ENTRIES)
    }

    /// As `new`, with a submission queue of `entries` (tests use a small one to make it
    /// overflow).
    pub(super) fn with_submission_entries(
        listeners: Vec<ListenSocket>,
        batch_wait_us: u32,
        entries: u32,
    ) -> io::Result<Self> {
        let ring = ring_builder().setup_r_disabled().build(entries)?;
        let batch_wait_us = if batch_wait_us > 0 && !ring.params().is_feature_min_timeout() {
            log::warn!(
                "Warning: io_batch_wait_us needs Linux 6.12 (io_uring min timeout); ignored."
            );
            0
        } else {
            batch_wait_us
        };
        let buffers = BufferRing::new()?;
        // SAFETY: the entries live in `buffers`, which the backend keeps (and unregisters
        // before dropping, see `Drop`).
        unsafe {
            ring.submitter().register_buf_ring_with_flags(
                buffers.entries_addr(),
                buffer_ring::COUNT,
                buffer_ring::GROUP,
                0,
            )?
        };
        for listener in &listeners {
            // The ring waits for connections itself; a blocking socket is what it expects.
            listener.set_nonblocking(false)?;
        }
        // SAFETY: eventfd has no memory arguments; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and nothing else owns it.
        let wake_fd = Arc::new(unsafe { OwnedFd::from_raw_fd(fd) });
        Ok(Uring {
            ring,
            buffers: ManuallyDrop::new(buffers),
            enabled: false,
            accepting: vec![false; listeners.len()],
            listeners,
            accept_retry_at: None,
            sockets: Slab::new(),
            rearm: Vec::new(),
            resumed: Vec::new(),
            wake_fd,
            wake_buf: Box::new(0),
            queued_total: 0,
            closing: VecDeque::new(),
            next_generation: 1,
            completions: Vec::new(),
            accept_failures: AcceptFailures::default(),
            batch_wait_us,
            unsubmitted: Vec::new(),
        })
    }

    pub fn waker(&self) -> Arc<dyn Waker> {
        Arc::new(EventFdWaker(self.wake_fd.clone()))
    }

    /// Queues a submission, handing the queue to the kernel first when it is full. If the
    /// kernel takes none just now, the entry waits in `unsubmitted` (in order) for the next
    /// `wait`: an operation is never dropped, or its connection would hang.
    fn push(&mut self, entry: squeue::Entry) {
        if !self.unsubmitted.is_empty() || !self.try_push(&entry) {
            self.unsubmitted.push(entry);
        }
    }

    fn try_push(&mut self, entry: &squeue::Entry) -> bool {
        // SAFETY: every entry built here points only at memory that outlives the operation:
        // the eventfd buffer (boxed, owned), a socket's queued `Bytes` and `iov` (kept until
        // the send completes, see `Socket::dead`), a connect's boxed address (kept until it
        // completes, `Socket::aside`), or nothing.
        if unsafe { self.ring.submission().push(entry) }.is_ok() {
            return true;
        }
        match self.ring.submit() {
            // SAFETY: as above.
            Ok(_) => unsafe { self.ring.submission().push(entry) }.is_ok(),
            Err(e) => {
                log::debug!("io_uring submit deferred: {e}");
                false
            }
        }
    }

    /// Moves entries the kernel could not take earlier into the submission queue.
    fn push_unsubmitted(&mut self) {
        let waiting = std::mem::take(&mut self.unsubmitted);
        let mut rest = waiting.into_iter();
        for entry in rest.by_ref() {
            if !self.try_push(&entry) {
                self.unsubmitted.push(entry);
                break;
            }
        }
        self.unsubmitted.extend(rest);
    }

    fn arm_wake(&mut self) {
        let fd = types::Fd(self.wake_fd.as_raw_fd());
        let buf: *mut u64 = &mut *self.wake_buf;
        let entry = opcode::Read::new(fd, buf.cast(), 8)
            .build()
            .user_data(tag(Op::Wake, 0, 0));
        self.push(entry);
    }

    fn arm_accept(&mut self, index: usize) {
        let listener = &self.listeners[index];
        let fd = types::Fd(listener.as_raw_fd());
        let entry = match listener {
            ListenSocket::Tcp(_) => opcode::AcceptMulti::new(fd)
                .flags(libc::SOCK_CLOEXEC)
                .build(),
            // Every shard accepts from the same Unix socket, and the kernel wakes the first
            // accept waiting on it: a multishot accept keeps its place at the front, so one
            // shard would take every connection. A single accept, armed again after each
            // connection, goes to the back, and the shards take turns.
            ListenSocket::Unix(_) => {
                opcode::Accept::new(fd, std::ptr::null_mut(), std::ptr::null_mut())
                    .flags(libc::SOCK_CLOEXEC)
                    .build()
            }
        }
        .user_data(tag(Op::Accept, index, 0));
        self.accepting[index] = true;
        self.push(entry);
    }

    /// Before a wait: bytes held while paused passed on, receives armed again, what the
    /// kernel refused submitted again; how long the wait may be (not at all if `out` has
    /// events already; until the next linger or accept retry at the latest).
    fn prepare_wait(&mut self, timeout: Option<Duration>, out: &mut Vec<Event>) -> Duration {
        // Bytes held while paused go first, before anything newer from the same peer.
        for slot in std::mem::take(&mut self.resumed) {
            if let Some(socket) = self.sockets.get_mut(slot).filter(|s| !s.dead && !s.paused) {
                if let Some(data) = socket.take_held() {
                    let conn = ConnId::new(slot, socket.generation);
                    out.push(Event::Received { conn, data });
                }
            }
        }
        let mut rearm = std::mem::take(&mut self.rearm);
        rearm.sort_unstable();
        rearm.dedup();
        for slot in rearm.drain(..) {
            self.arm_receive(slot);
        }
        self.rearm = rearm;
        let wake_at = [self.accept_retry_at, self.closing.front().map(|c| c.0)]
            .into_iter()
            .flatten()
            .min();
        let mut timeout = if !out.is_empty() {
            Duration::ZERO
        } else {
            match (timeout, wake_at) {
                (Some(t), Some(at)) => t.min(at.saturating_duration_since(Instant::now())),
                (None, Some(at)) => at.saturating_duration_since(Instant::now()),
                (Some(t), None) => t,
                (None, None) => Duration::from_secs(3600),
            }
        };
        if !self.unsubmitted.is_empty() {
            self.push_unsubmitted();
            // What the kernel still refuses is tried again soon, not after a long sleep.
            if !self.unsubmitted.is_empty() {
                timeout = timeout.min(Duration::from_millis(1));
            }
        }
        timeout
    }

    fn arm_receive(&mut self, slot: usize) {
        let Some(socket) = self.sockets.get_mut(slot) else {
            return;
        };
        if socket.receiving || socket.paused || socket.dead {
            return;
        }
        socket.receiving = true;
        let fd = types::Fd(socket.stream.as_raw_fd());
        let entry = opcode::RecvMulti::new(fd, buffer_ring::GROUP)
            .build()
            .user_data(tag(Op::Receive, slot, socket.generation));
        self.push(entry);
    }

    /// Sends the front of the queue, unless a send is in flight already.
    fn start_send(&mut self, slot: usize) {
        let Some(socket) = self.sockets.get_mut(slot) else {
            return;
        };
        if socket.sending || socket.dead || socket.queue.is_empty() || socket.connecting() {
            return;
        }
        let fd = types::Fd(socket.stream.as_raw_fd());
        let user_data = tag(Op::Send, slot, socket.generation);
        let entry = if socket.queue.len() == 1 {
            let bytes = &socket.queue[0];
            let len = bytes.len().min(u32::MAX as usize) as u32;
            opcode::Send::new(fd, bytes.as_ptr(), len)
                .flags(libc::MSG_NOSIGNAL)
                .build()
        } else {
            socket.iov = (socket.queue.iter().take(IOVECS_MAX))
                .map(|b| libc::iovec {
                    iov_base: b.as_ptr().cast_mut().cast(),
                    iov_len: b.len(),
                })
                .collect();
            opcode::Writev::new(fd, socket.iov.as_ptr(), socket.iov.len() as u32).build()
        };
        socket.sending = true;
        self.push(entry.user_data(user_data));
    }

    /// Ends a connection for good: its operations are cancelled and its slot freed once
    /// the last one has completed.
    fn remove(&mut self, slot: usize) {
        let Some(socket) = self.sockets.get_mut(slot) else {
            return;
        };
        if socket.dead {
            return;
        }
        socket.dead = true;
        self.queued_total -= socket.queued;
        socket.queued = 0;
        socket.drop_held();
        if socket.receiving || socket.sending || socket.connecting() {
            let fd = types::Fd(socket.stream.as_raw_fd());
            let entry = opcode::AsyncCancel2::new(types::CancelBuilder::fd(fd).all())
                .build()
                .user_data(tag(Op::Cancel, slot, 0));
            self.push(entry);
        } else {
            self.sockets.remove(slot);
        }
    }

    /// Frees a dead connection's slot once nothing is in flight for it.
    fn free_if_done(&mut self, slot: usize) {
        if self
            .sockets
            .get(slot)
            .is_some_and(|s| s.dead && !s.receiving && !s.sending && !s.connecting())
        {
            self.sockets.remove(slot);
        }
    }

    /// The generation the next connection gets: ids of closed connections are not given
    /// out again (until the counter wraps).
    fn take_generation(&mut self) -> u32 {
        let generation = self.next_generation;
        self.next_generation = ConnId::next_generation(generation);
        generation
    }

    /// The socket a completion names, if its slot still holds that connection.
    fn socket_of(&mut self, slot: usize, generation: u32) -> Option<&mut Socket> {
        (self.sockets.get_mut(slot)).filter(|s| s.generation == generation)
    }

    fn socket_mut(&mut self, conn: ConnId) -> Option<&mut Socket> {
        self.sockets
            .get_mut(conn.slot())
            .filter(|s| s.generation == conn.generation() && !s.dead)
    }

    fn shut_write_when_flushed(socket: &mut Socket) {
        if socket.closing && !socket.write_shut && socket.queue.is_empty() {
            let _ = socket.stream.shutdown(Shutdown::Write);
            socket.write_shut = true;
        }
    }

    /// Enables the ring on this thread, once, and arms what is not armed: the wake-up read,
    /// and an accept on every listening socket unless accepting is held off.
    fn enable_and_arm(&mut self) -> io::Result<()> {
        if !self.enabled {
            // On the shard's thread: it becomes the ring's only submitter.
            self.ring.submitter().register_enable_rings()?;
            self.enabled = true;
            self.arm_wake();
        }
        // The clock is read only while accepting is held off.
        if self.accept_retry_at.is_some_and(|at| Instant::now() >= at) {
            self.accept_retry_at = None;
        }
        if self.accept_retry_at.is_none() {
            for index in 0..self.listeners.len() {
                if !self.accepting[index] {
                    self.arm_accept(index);
                }
            }
        }
        Ok(())
    }
}

impl Backend for Uring {
    fn start(&mut self) -> io::Result<()> {
        self.enable_and_arm()?;
        // Submitted now, without waiting: the accepts wait on their sockets from here on.
        self.push_unsubmitted();
        self.ring.submit()?;
        Ok(())
    }

    fn release_idle_memory(&mut self) {
        // Called by the shard between waits: no receive is filling a buffer now.
        if self.enabled {
            self.buffers.release_memory();
        }
    }

    fn wait(&mut self, timeout: Option<Duration>, out: &mut Vec<Event>) -> io::Result<()> {
        self.enable_and_arm()?;
        let timeout = self.prepare_wait(timeout, out);
        let timespec = types::Timespec::from(timeout);
        let mut args = types::SubmitArgs::new().timespec(&timespec);
        let mut want = 1;
        if self.batch_wait_us > 0 && !timeout.is_zero() {
            want = COMPLETIONS_PER_TURN;
            args = args.min_wait_usec(self.batch_wait_us);
        }
        match self.ring.submitter().submit_with_args(want, &args) {
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY)
                ) => {}
            Err(e) => return Err(e),
        }
        let mut completions = std::mem::take(&mut self.completions);
        completions.extend(
            self.ring
                .completion()
                .take(COMPLETIONS_PER_TURN)
                .map(|c| (c.user_data(), c.result(), c.flags())),
        );
        for (data, result, flags) in completions.drain(..) {
            self.on_completion(data, result, flags, out);
        }
        self.completions = completions;
        self.buffers.publish();
        // Lingers that ran out: closed now, whatever the peer does. (The clock is read
        // only when some connection lingers.)
        if !self.closing.is_empty() {
            let ended: Vec<ConnId> = lingers_ended(&mut self.closing, Instant::now()).collect();
            for conn in ended {
                if self.socket_mut(conn).is_some_and(|s| s.closing) {
                    self.remove(conn.slot());
                }
            }
        }
        Ok(())
    }

    fn send(&mut self, conn: ConnId, data: Bytes) {
        let Some(socket) = self.socket_mut(conn).filter(|s| !s.closing) else {
            return;
        };
        if data.is_empty() {
            return;
        }
        let len = data.len();
        socket.queued += len;
        socket.queue.push_back(data);
        self.queued_total += len;
        self.start_send(conn.slot());
    }

    fn queued_bytes(&self, conn: ConnId) -> usize {
        self.sockets
            .get(conn.slot())
            .filter(|s| s.generation == conn.generation() && !s.dead)
            .map_or(0, |s| s.queued)
    }

    fn queued_bytes_total(&self) -> usize {
        self.queued_total
    }

    fn pause_reading(&mut self, conn: ConnId) {
        let Some(socket) = self.socket_mut(conn) else {
            return;
        };
        if socket.paused || socket.closing {
            return;
        }
        socket.paused = true;
        if socket.receiving {
            let entry = opcode::AsyncCancel2::new(types::CancelBuilder::user_data(tag(
                Op::Receive,
                conn.slot(),
                conn.generation(),
            )))
            .build()
            .user_data(tag(Op::Cancel, conn.slot(), 0));
            self.push(entry);
        }
    }

    fn resume_reading(&mut self, conn: ConnId) {
        let Some(socket) = self.socket_mut(conn) else {
            return;
        };
        if !socket.paused {
            return;
        }
        socket.paused = false;
        if socket.holds() {
            self.resumed.push(conn.slot());
        }
        self.rearm.push(conn.slot());
    }

    fn connect(&mut self, to: SocketAddr, bind: Option<SocketAddr>) -> io::Result<ConnId> {
        use socket2::{Domain, Protocol, SockAddr, Type};
        if self.sockets.vacant_key() >= SLOTS_MAX {
            return Err(io::Error::other("shard connection table full"));
        }
        // Blocking, as the ring expects of its sockets (it waits itself).
        let stream =
            socket2::Socket::new(Domain::for_address(to), Type::STREAM, Some(Protocol::TCP))?;
        let _ = stream.set_tcp_nodelay(true);
        if let Some(bind) = bind {
            stream.bind(&bind.into())?;
        }
        let fd = types::Fd(stream.as_raw_fd());
        let generation = self.take_generation();
        let slot = (self.sockets).insert(Socket::new(stream, generation, Some(SockAddr::from(to))));
        // The address is boxed in the socket (`Socket::aside`), where it stays until the
        // connect completes.
        let address = self.sockets[slot]
            .connect_address()
            .expect("a connecting socket keeps its address");
        let entry = opcode::Connect::new(fd, address.as_ptr().cast(), address.len()).build();
        self.push(entry.user_data(tag(Op::Connect, slot, generation)));
        Ok(ConnId::new(slot, generation))
    }

    fn close(&mut self, conn: ConnId) {
        let Some(socket) = self.socket_mut(conn) else {
            return;
        };
        if socket.closing {
            return;
        }
        if socket.connecting() {
            // Nothing was sent on it: there is nothing to linger for.
            self.remove(conn.slot());
            return;
        }
        socket.closing = true;
        socket.paused = false;
        socket.drop_held();
        Self::shut_write_when_flushed(socket);
        // What the peer still sends is read and thrown away until it closes.
        self.rearm.push(conn.slot());
        self.closing.push_back((Instant::now() + LINGER, conn));
    }
}
