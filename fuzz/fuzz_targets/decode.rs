//! Fuzzes the decoder: any input gives a packet, an error or "incomplete", never a panic;
//! no single allocation is larger than the packet size limit allows; and whatever decodes
//! encodes again and decodes to the same packet.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use midge::codec::{Decoded, Decoder, Packet, ProtocolVersion};
use std::alloc::{GlobalAlloc, Layout, System};

/// The decoder's size limit here; an allocation past a small multiple of it means something
/// was sized from untrusted input before the limit was checked.
const PACKET_SIZE_MAX: usize = 4096;
const ALLOCATION_MAX: usize = 4 * PACKET_SIZE_MAX + 4096;

struct Bounded;

// SAFETY: forwards every call to the system allocator unchanged, after a size check that
// only reads the layout.
unsafe impl GlobalAlloc for Bounded {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // While panicking, the report itself may allocate freely.
        assert!(
            layout.size() <= ALLOCATION_MAX || std::thread::panicking(),
            "allocation of {} bytes",
            layout.size()
        );
        // SAFETY: the caller's contract for `layout` is passed on unchanged.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        assert!(
            new_size <= ALLOCATION_MAX || std::thread::panicking(),
            "reallocation to {new_size} bytes"
        );
        // SAFETY: as for `dealloc`, and `new_size` is passed on unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Bounded = Bounded;

fuzz_target!(|data: &[u8]| {
    let input = Bytes::copy_from_slice(data);
    let decoders = [
        Decoder::server(PACKET_SIZE_MAX),
        Decoder::client(ProtocolVersion::V31, PACKET_SIZE_MAX),
        Decoder::client(ProtocolVersion::V311, PACKET_SIZE_MAX),
        Decoder::client(ProtocolVersion::V5, PACKET_SIZE_MAX),
    ];
    for decoder in decoders {
        let Ok(Decoded::Packet { packet, consumed }) = decoder.decode(&input) else { continue };
        assert!(consumed <= input.len() && consumed <= PACKET_SIZE_MAX);
        let version = match &packet {
            Packet::Connect(c) => c.version,
            _ => decoder.version.expect("only CONNECT decodes without a version"),
        };
        let again = packet.to_bytes(version).expect("a decoded packet encodes");
        match decoder.decode(&again) {
            Ok(Decoded::Packet { packet: second, consumed }) => {
                assert_eq!(consumed, again.len());
                assert_eq!(second, packet);
            }
            other => panic!("re-encoded packet did not decode: {other:?}"),
        }
    }
});
