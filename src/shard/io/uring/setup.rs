//! Making the ring, checking what the kernel offers, and taking it down.

use io_uring::{opcode, types, IoUring};
use std::mem::ManuallyDrop;
use std::time::{Duration, Instant};

use super::buffer_ring::{self, BufferRing};
use super::{tag, untag, Op, Uring, COMPLETION_ENTRIES};

pub(super) fn ring_builder() -> io_uring::Builder {
    let mut builder = IoUring::builder();
    builder
        .setup_cqsize(COMPLETION_ENTRIES)
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_submit_all();
    builder
}

/// Whether this kernel (and its seccomp policy) gives the backend everything it needs: the
/// ring with its flags (Linux 6.1), a provided-buffer ring, the operations used. `Err`
/// says what is missing, for the log line of `io_backend auto`.
pub fn available() -> Result<(), String> {
    let ring = ring_builder()
        .build(8)
        .map_err(|e| format!("io_uring_setup failed: {e}"))?;
    let mut probe = io_uring::Probe::new();
    ring.submitter()
        .register_probe(&mut probe)
        .map_err(|e| format!("io_uring probe failed: {e}"))?;
    for (code, name) in [
        (opcode::AcceptMulti::CODE, "accept"),
        (opcode::RecvMulti::CODE, "recv"),
        (opcode::Send::CODE, "send"),
        (opcode::Writev::CODE, "writev"),
        (opcode::Read::CODE, "read"),
        (opcode::AsyncCancel2::CODE, "async cancel"),
    ] {
        if !probe.is_supported(code) {
            return Err(format!("io_uring lacks the {name} operation"));
        }
    }
    let buffers = BufferRing::new().map_err(|e| e.to_string())?;
    // SAFETY: the entries stay allocated until after they are unregistered below.
    unsafe {
        ring.submitter().register_buf_ring_with_flags(
            buffers.entries_addr(),
            buffer_ring::COUNT,
            buffer_ring::GROUP,
            0,
        )
    }
    .map_err(|e| format!("io_uring provided-buffer rings unavailable: {e}"))?;
    let _ = ring.submitter().unregister_buf_ring(buffer_ring::GROUP);
    Ok(())
}

impl Drop for Uring {
    fn drop(&mut self) {
        // Sends in flight point into queued bytes that are about to be freed, and the
        // kernel must stop picking receive buffers before their memory is freed: cancel
        // everything and wait (bounded) for it to end, then unregister the buffers.
        if self.enabled {
            let cancel = opcode::AsyncCancel2::new(types::CancelBuilder::any())
                .build()
                .user_data(tag(Op::Cancel, 0, 0));
            self.push(cancel);
            let until = Instant::now() + Duration::from_secs(1);
            let timespec = types::Timespec::from(Duration::from_millis(10));
            while self.sockets.iter().any(|(_, s)| s.sending) && Instant::now() < until {
                self.push_unsubmitted();
                let args = types::SubmitArgs::new().timespec(&timespec);
                let _ = self.ring.submitter().submit_with_args(1, &args);
                for cqe in self.ring.completion() {
                    let (op, slot, generation) = untag(cqe.user_data());
                    if op == Op::Send as u8 {
                        if let Some(s) = self.sockets.get_mut(slot) {
                            s.sending &= s.generation != generation;
                        }
                    }
                }
            }
            if self.sockets.iter().any(|(_, s)| s.sending) {
                // Still in flight: keep the bytes rather than free them under the kernel.
                for (_, socket) in std::mem::take(&mut self.sockets) {
                    std::mem::forget((socket.queue, socket.iov));
                }
            }
        }
        if self
            .ring
            .submitter()
            .unregister_buf_ring(buffer_ring::GROUP)
            .is_ok()
        {
            // SAFETY: unregistered: the kernel no longer picks these buffers, and it only
            // writes into one while completing a receive on this thread (DEFER_TASKRUN),
            // which is not happening now. Not used again: this is the backend's drop.
            unsafe { ManuallyDrop::drop(&mut self.buffers) };
        }
        // Otherwise the memory is kept (leaked) rather than risk the kernel using it.
    }
}
