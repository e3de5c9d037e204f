//! A provided-buffer ring for io_uring: one per shard, shared by all its connections. The
//! kernel picks a free buffer when bytes arrive for any connection, so a connection that is
//! idle holds no receive buffer at all. The backend copies what arrived out (the shard keeps
//! slices of received bytes for as long as messages live) and gives the buffer back at once.
//!
//! The ring starts with `INITIAL` buffers and doubles, up to `COUNT`, each time the kernel
//! finds none free. Only buffers ever handed to the kernel are written, so only they are
//! resident: a shard whose receives seldom overlap holds 128 KiB, not 1 MiB (at 2,000 idle
//! connections that was 500 bytes of RSS per connection, `scripts/memory.py`).

use io_uring::types::BufRingEntry;
use std::alloc::{self, Layout};
use std::io;
use std::sync::atomic::{AtomicU16, Ordering};

/// Buffers in the ring (a power of two, at most 32768).
pub const COUNT: u16 = 256;
/// Bytes per buffer: one receive completion carries at most this much.
pub const SIZE: usize = 4 * 1024;
/// The buffer group id the receives name.
pub const GROUP: u16 = 0;
/// Buffers handed to the kernel at first (a power of two, at most `COUNT`).
pub const INITIAL: u16 = 32;

pub struct BufferRing {
    /// `COUNT` entries, page aligned, shared with the kernel (registered by the backend).
    entries: *mut BufRingEntry,
    entries_layout: Layout,
    /// The buffers themselves, `COUNT * SIZE` bytes. A raw allocation, not a `Box`: the
    /// kernel writes into the buffers it holds while the backend reads the ones it holds.
    memory: *mut u8,
    memory_layout: Layout,
    /// The next entry to fill; published to the kernel by `publish`.
    tail: u16,
    /// Buffers `0..provided` have been handed to the kernel; the rest of `memory` is
    /// untouched.
    provided: u16,
}

impl BufferRing {
    pub fn new() -> io::Result<Self> {
        let entries_layout =
            Layout::from_size_align(COUNT as usize * std::mem::size_of::<BufRingEntry>(), 4096)
                .map_err(io::Error::other)?;
        // SAFETY: the layout has a non-zero size.
        let entries = unsafe { alloc::alloc_zeroed(entries_layout) }.cast::<BufRingEntry>();
        if entries.is_null() {
            return Err(io::ErrorKind::OutOfMemory.into());
        }
        let memory_layout =
            Layout::from_size_align(COUNT as usize * SIZE, 4096).map_err(io::Error::other)?;
        // SAFETY: the layout has a non-zero size.
        let memory = unsafe { alloc::alloc(memory_layout) };
        if memory.is_null() {
            // SAFETY: allocated just above with this layout.
            unsafe { alloc::dealloc(entries.cast(), entries_layout) };
            return Err(io::ErrorKind::OutOfMemory.into());
        }
        let mut ring = BufferRing {
            entries,
            entries_layout,
            memory,
            memory_layout,
            tail: 0,
            provided: 0,
        };
        ring.provide(INITIAL);
        ring.publish();
        Ok(ring)
    }

    /// The kernel found no free buffer (ENOBUFS): hands it twice as many, up to `COUNT`
    /// (seen by the kernel at the next `publish`). Whether there were more to give.
    pub fn grow(&mut self) -> bool {
        let more = self.provided.saturating_mul(2).min(COUNT);
        if more == self.provided {
            return false;
        }
        log::debug!("io_uring receive buffers: {more} of {COUNT} in use by the ring.");
        self.provide(more);
        true
    }

    fn provide(&mut self, up_to: u16) {
        for id in self.provided..up_to {
            self.give_back(id);
        }
        self.provided = up_to;
    }

    /// The address the kernel is told the entries are at.
    pub fn entries_addr(&self) -> u64 {
        self.entries as u64
    }

    /// The first `len` bytes of buffer `id`, as the kernel filled them.
    pub fn filled(&self, id: u16, len: usize) -> &[u8] {
        let id = id & (COUNT - 1);
        // SAFETY: the range lies inside buffer `id` of the allocation. The kernel wrote it
        // before posting the completion that named it, and does not touch it again until it
        // is given back (which needs `&mut self`, so not while this borrow lives).
        unsafe { std::slice::from_raw_parts(self.memory.add(id as usize * SIZE), len.min(SIZE)) }
    }

    /// Puts buffer `id` back in the ring; the kernel sees it after `publish`.
    pub fn give_back(&mut self, id: u16) {
        let index = (self.tail & (COUNT - 1)) as usize;
        let id = id & (COUNT - 1);
        // Inside the allocation: `id < COUNT`.
        let addr = self.memory as u64 + (id as usize * SIZE) as u64;
        // SAFETY: `index < COUNT`, inside the allocation. The kernel reads only entries
        // between its head and the published tail; this one is past the tail until
        // `publish`, so the kernel is not reading it now.
        let entry = unsafe { &mut *self.entries.add(index) };
        entry.set_addr(addr);
        entry.set_len(SIZE as u32);
        entry.set_bid(id);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Gives the buffers' memory back to the system, for a shard gone quiet: the kernel
    /// takes the ring's buffers in turn, so after a burst every buffer it was ever given is
    /// resident, however few the shard needs from then on. A buffer reads as zeroes until
    /// it is next filled.
    ///
    /// Only while no buffer's contents matter: on the ring's thread between waits (with
    /// DEFER_TASKRUN the kernel fills buffers only while this thread is in
    /// `io_uring_enter`), and the backend holds none (each is given back as soon as its
    /// bytes are copied out).
    pub fn release_memory(&mut self) {
        let len = self.provided as usize * SIZE;
        // SAFETY: `memory` is page aligned (its layout) and `len` a whole number of pages
        // inside the allocation, which is private anonymous memory no one else maps.
        // MADV_DONTNEED drops the pages' contents, which nothing needs (see above), and the
        // range stays mapped: the next write by the kernel, or read here, finds zero pages.
        let failed = unsafe { libc::madvise(self.memory.cast(), len, libc::MADV_DONTNEED) };
        if failed != 0 {
            log::debug!(
                "io_uring receive buffers kept: madvise failed: {}",
                io::Error::last_os_error()
            );
        }
    }

    /// Makes the buffers given back visible to the kernel.
    pub fn publish(&self) {
        // SAFETY: `entries` is the ring's first entry, allocated and initialised in `new`;
        // the tail field is a u16 the kernel reads with an acquire load, so it is written
        // with a release store through an atomic of the same size and alignment.
        unsafe {
            let tail = BufRingEntry::tail(self.entries).cast_mut();
            AtomicU16::from_ptr(tail).store(self.tail, Ordering::Release);
        }
    }
}

impl Drop for BufferRing {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout. The backend unregisters the ring (or
        // leaks it) before this runs, so the kernel no longer uses it.
        unsafe {
            alloc::dealloc(self.entries.cast(), self.entries_layout);
            alloc::dealloc(self.memory, self.memory_layout);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_starts_small_and_doubles_up_to_its_count() {
        let mut ring = BufferRing::new().unwrap();
        assert_eq!((ring.provided, ring.tail), (INITIAL, INITIAL));
        let mut sizes = vec![ring.provided];
        while ring.grow() {
            sizes.push(ring.provided);
        }
        assert_eq!(sizes, [32, 64, 128, 256]);
        // Every buffer id entered the ring once, each at its own entry.
        assert_eq!(ring.tail, COUNT);
        for index in 0..COUNT as usize {
            // SAFETY: `index < COUNT`, inside the entries this ring allocated; the kernel
            // has no part in this test.
            let entry = unsafe { &*ring.entries.add(index) };
            assert_eq!(entry.bid(), index as u16);
        }
        assert!(!ring.grow());
    }

    #[test]
    fn released_buffers_read_as_zeroes_and_stay_usable() {
        let mut ring = BufferRing::new().unwrap();
        let last = INITIAL - 1;
        for id in [0, last] {
            // SAFETY: buffer `id` lies inside the allocation (`id < provided`), and the
            // kernel has no part in this test.
            unsafe { std::ptr::write_bytes(ring.memory.add(id as usize * SIZE), 0xA5, SIZE) };
            assert_eq!(ring.filled(id, 4), [0xA5; 4]);
        }
        ring.release_memory();
        assert_eq!(ring.filled(0, 4), [0; 4]);
        assert_eq!(ring.filled(last, SIZE), [0; SIZE]);
        // SAFETY: as above.
        unsafe { std::ptr::write_bytes(ring.memory, 7, 2) };
        assert_eq!(ring.filled(0, 3), [7, 7, 0]);
    }
}
