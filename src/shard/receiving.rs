//! Packets on their way in: decoded and handled a thousand a turn per connection
//! (`PACKETS_PER_TURN`: the rest wait for the next turn, the connection not read
//! meanwhile; all of them when the peer has closed); what a connection holds of a partial
//! packet counted, and bounded, and its buffer sized for it; a large payload said to be
//! UTF-8 checked as it arrives.
//!
//! - Before its CONNECT is accepted, a connection may hold only what a CONNECT needs
//!   (`PRECONNECT_HELD_MAX`), and all such connections together `preconnect_bytes_max`
//!   (`Shared::preconnect_bytes`): past either, it is closed.
//! - After, its partial packet is counted in `memory_limit` as it arrives
//!   (`Shared::receiving_bytes`), and a packet that, whole, would take the broker past
//!   `memory_limit` is refused as soon as that is known, from its header on: the client is
//!   disconnected (5.0: 0x97 Quota exceeded), as Mosquitto disconnects a client whose packet
//!   it cannot allocate within its `memory_limit`.
//! - The buffer is sized for the whole packet once enough of it has arrived, not doubled
//!   again and again as it comes: a 200 MB PUBLISH was copied 128 MB at once (a 60 ms turn)
//!   and held 2.4 times its size.

use bytes::BytesMut;
use std::sync::atomic::Ordering::Relaxed;

use super::close::CloseReason;
use super::conn::{self, Conn};
use super::io::{Backend, ConnId};
use super::{Shard, Shared};
use crate::codec::ReasonCode;
use crate::limits::READ_MAX_PER_TURN;
use crate::limits::{
    self, Limit, PACKET_SIZED_AFTER_PART, PACKET_SIZED_AT_ONCE_BYTES,
    PARTIAL_PACKET_UNCOUNTED_BYTES,
};

/// What a connection holds of a packet is counted in units of this many bytes, rounded up,
/// so that its count fits in two bytes of its record (`Conn::input_held`).
pub(super) const INPUT_UNIT: usize = 8 * 1024;
const _: () = assert!(
    (crate::codec::VARINT_MAX as usize + 5 + READ_MAX_PER_TURN).div_ceil(INPUT_UNIT)
        <= u16::MAX as usize
);

/// The most one connection may hold before its CONNECT is accepted: a CONNECT and a turn's
/// read fit; more comes only from a client that sends on while its CONNECT is judged (an
/// authentication exchange, a session on its way from another shard). A buffer of one
/// unit or less is not counted: a CONNECT in pieces, a connection that sent a few bytes,
/// cost what any connection costs (and their number is bounded elsewhere), so that
/// thousands of them cannot fill the broker-wide bound with a byte each; past it, all of
/// the buffer is.
const PRECONNECT_HELD_MAX: usize = 128 * INPUT_UNIT;
const _: () = assert!(limits::CONNECT_PACKET_BYTES_MAX + READ_MAX_PER_TURN < PRECONNECT_HELD_MAX);

/// Which count a connection's partial packet is in.
enum Counted {
    /// Its CONNECT is not accepted yet: `Shared::preconnect_bytes`.
    Preconnect,
    /// It is connected: `Shared::receiving_bytes`.
    Receiving,
    /// A bridge's own connection before its CONNACK: not counted (the broker started it).
    Not,
}

fn counted_in(c: &Conn) -> Counted {
    if c.session.is_some() {
        Counted::Receiving
    } else if c.link().is_some() {
        Counted::Not
    } else {
        Counted::Preconnect
    }
}

impl<B: Backend> Shard<B> {
    /// Decodes and handles the whole packets received on `conn`, up to
    /// `PACKETS_PER_TURN` (the rest wait for the next turn, `resume_decoding`); what it
    /// still holds is counted (`count_input`).
    pub(super) fn process_input(&mut self, conn: ConnId) {
        if self.decode_input(conn, false) && self.hold_reading(conn, conn::Hold::DECODE) {
            self.stats().limit_hit(Limit::PacketsPerTurn);
            self.receiving.waiting.push(conn);
        }
        self.count_input(conn);
    }

    /// Handles every whole packet left of what `conn` sent, whatever the turn's budget: its
    /// peer has closed, and there is no later turn for them (a DISCONNECT among them means
    /// no will [MQTT-3.1.2-10]). Bounded by what was read.
    pub(super) fn drain_input(&mut self, conn: ConnId) {
        while self.decode_input(conn, true) {}
        self.count_input(conn);
    }

    /// At the start of a turn: goes on with the packets left from the last one.
    pub(super) fn resume_decoding(&mut self) {
        for conn in std::mem::take(&mut self.receiving.waiting) {
            if self.decode_input(conn, false) {
                self.stats().limit_hit(Limit::PacketsPerTurn);
                self.receiving.waiting.push(conn);
            } else {
                self.release_reading(conn, conn::Hold::DECODE);
            }
            self.count_input(conn);
        }
    }

    /// True if whole packets are left for the next turn. `ended`: its peer is gone, and a
    /// client held for the disk has what it sent handled all the same (its DISCONNECT
    /// means no will), the answers dropped with what was held (`close_socket`).
    fn decode_input(&mut self, conn: ConnId, ended: bool) -> bool {
        for _ in 0..limits::PACKETS_PER_TURN {
            let Some(c) = self.conn_mut(conn) else {
                return false;
            };
            if c.awaits_session() || c.held.stops_decoding(ended) {
                return false;
            }
            match c.decoder.decode_from(&mut c.inbuf) {
                Ok(Some(packet)) => {
                    // How far its payload was checked as it came, if it was (`PayloadCheck`).
                    let checked = c.extras.as_mut().and_then(|e| e.payload_check.take());
                    self.receiving.payload_check = checked;
                    self.shared.stats[self.id]
                        .packets_received
                        .fetch_add(1, Relaxed);
                    self.on_packet(conn, packet);
                    self.receiving.payload_check = None;
                }
                Ok(None) => {
                    self.partial_packet(conn);
                    return false;
                }
                Err(error) => {
                    self.decode_failed(conn, error);
                    return false;
                }
            }
        }
        // The budget is spent: whole packets left wait for the next turn; what is left of
        // one is sized for as ever; nothing left keeps nothing (an empty view would keep
        // the allocation of the packet it was split from).
        let Some(c) = self.conn_mut(conn) else {
            return false;
        };
        if c.held.stops_decoding(ended) {
            return false; // Its later packets wait for its SUBSCRIBE, or the disk.
        }
        let whole = (c.decoder.fixed_header(&c.inbuf).ok().flatten())
            .is_some_and(|h| h.packet_len() <= c.inbuf.len());
        if !whole {
            self.partial_packet(conn);
        }
        whole
    }

    /// After the whole packets a receive brought were taken: `conn`'s buffer holds the start
    /// of one more, or nothing. A client's packet that would not fit in `memory_limit` is
    /// refused; the buffer is sized for what is still to come.
    pub(super) fn partial_packet(&mut self, conn: ConnId) {
        let Some(c) = conn::live_mut(&mut self.conns, conn) else {
            return;
        };
        // decode_from found no error, so a complete header is a valid one.
        let header = c.decoder.fixed_header(&c.inbuf).ok().flatten();
        let total = header.as_ref().map(|h| h.packet_len());
        if let Some(total) = total.filter(|&t| t > PARTIAL_PACKET_UNCOUNTED_BYTES) {
            let counted = usize::from(c.input_held) * INPUT_UNIT;
            if c.session.is_some()
                && c.link().is_none()
                && self.memory_held().saturating_sub(counted) + total > self.output.memory.limit
            {
                self.refuse_packet(conn, total);
                return;
            }
        }
        if let Some(c) = conn::live_mut(&mut self.conns, conn) {
            size_for_packet(&mut c.inbuf, total);
            if let Some(header) = header.filter(|h| h.packet_len() > PAYLOAD_CHECKED_AS_IT_COMES) {
                check_payload_so_far(c, &header);
            }
        }
    }

    /// Disconnects a client whose packet of `size` bytes would take the broker past
    /// `memory_limit`.
    fn refuse_packet(&mut self, conn: ConnId, size: usize) {
        let name = self.conn_name(conn);
        let max = self.output.memory.limit;
        self.limit_reached(Limit::ReceivingBytes, || {
            format!(
                "client {name} is sending a packet of {size} bytes, more than memory_limit \
                 ({max} bytes) has room for; disconnecting it."
            )
        });
        self.disconnect_with(conn, ReasonCode::QuotaExceeded, "no room for its packet");
    }

    /// Brings the broker-wide counts up to date with what `conn` holds of a packet now;
    /// before CONNECT, closes it past its bounds. Called after each receive.
    pub(super) fn count_input(&mut self, conn: ConnId) {
        let Some(c) = conn::live_mut(&mut self.conns, conn) else {
            return;
        };
        // What its buffer holds as allocated: sized for its packet, it may be ahead of the
        // bytes that came (at most 16 times them, `size_for_packet`).
        let bytes = c.inbuf.capacity();
        let (total, free) = match counted_in(c) {
            Counted::Preconnect => (&self.shared.preconnect_bytes, INPUT_UNIT),
            Counted::Receiving => (&self.shared.receiving_bytes, PARTIAL_PACKET_UNCOUNTED_BYTES),
            Counted::Not => return,
        };
        let units = if bytes > free {
            bytes.div_ceil(INPUT_UNIT)
        } else {
            0
        };
        let held = u16::try_from(units).unwrap_or(u16::MAX);
        let before = std::mem::replace(&mut c.input_held, held);
        if held <= before {
            total.fetch_sub(usize::from(before - held) * INPUT_UNIT, Relaxed);
            return;
        }
        let added = usize::from(held - before) * INPUT_UNIT;
        let now = total.fetch_add(added, Relaxed) + added;
        if c.session.is_some() {
            return;
        }
        let max = limits::preconnect_bytes_max(self.output.memory.limit);
        if now <= max && bytes <= PRECONNECT_HELD_MAX {
            return;
        }
        let peer = format!("{}:{}", c.peer_host(&self.config), c.peer_port());
        self.limit_reached(Limit::PreconnectBytes, || {
            if now > max {
                format!(
                    "connections that have not sent a whole CONNECT hold more than {max} \
                     bytes; closing the one from {peer} (it held {bytes})."
                )
            } else {
                format!("closing the connection from {peer}: it held {bytes} bytes before its CONNECT was accepted.")
            }
        });
        self.close_conn(conn, CloseReason::ProtocolError);
    }
}

/// What `c` held of a packet leaves its count: when it closes, and when its CONNECT is
/// accepted (what it holds then is counted again as a connected client's).
pub(super) fn forget_input(shared: &Shared, c: &mut Conn) {
    let held = std::mem::take(&mut c.input_held);
    if held == 0 {
        return;
    }
    let bytes = usize::from(held) * INPUT_UNIT;
    match counted_in(c) {
        Counted::Preconnect => shared.preconnect_bytes.fetch_sub(bytes, Relaxed),
        Counted::Receiving => shared.receiving_bytes.fetch_sub(bytes, Relaxed),
        Counted::Not => 0,
    };
}

/// What reading packets carries from one turn to the next.
#[derive(Default)]
pub(super) struct Receiving {
    /// Connections whose whole packets wait for the next turn (`limits::PACKETS_PER_TURN`).
    pub(super) waiting: Vec<ConnId>,
    /// The packet being handled: how far its payload was checked for UTF-8 as it arrived.
    pub(super) payload_check: Option<PayloadCheck>,
}

/// A 5.0 PUBLISH larger than this whose payload is said to be UTF-8 has it checked as it
/// arrives, a read at a time (`PayloadCheck`), not all at once when whole: 200 MB took a
/// shard's turn for 16 ms.
const PAYLOAD_CHECKED_AS_IT_COMES: usize = 1 << 20;

/// How far the payload of the packet arriving on a connection has been checked for the
/// UTF-8 its Payload Format Indicator says it is (MQTT 5.0 §3.3.2.3.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct PayloadCheck {
    /// The packet's length, and where its payload starts in it.
    total: usize,
    start: usize,
    /// Where the check has reached (a character boundary), in the packet.
    checked: usize,
    /// A byte sequence that is not UTF-8 was found.
    invalid: bool,
    /// Its properties say UTF-8 (if not, there is nothing to check: this only remembers
    /// that they were looked into).
    said_utf8: bool,
}

impl PayloadCheck {
    /// Checks what arrived of the packet since the last call (`so_far`: the packet from its
    /// first byte, perhaps not all of it). A character cut by the end of what arrived is
    /// checked when the rest comes.
    fn advance(&mut self, so_far: &[u8]) {
        let upto = so_far.len().min(self.total);
        if !self.said_utf8 || self.invalid || upto <= self.checked {
            return;
        }
        match std::str::from_utf8(&so_far[self.checked..upto]) {
            Ok(_) => self.checked = upto,
            Err(e) if e.error_len().is_none() => self.checked += e.valid_up_to(),
            Err(_) => self.invalid = true,
        }
    }

    /// Whether `payload`, the whole packet's, is UTF-8: what arrived was checked as it came,
    /// the rest is now. `None` if this check is not of that payload.
    pub(super) fn payload_is_utf8(&self, payload: &[u8]) -> Option<bool> {
        if !self.said_utf8 || self.total - self.start != payload.len() {
            return None;
        }
        Some(!self.invalid && std::str::from_utf8(&payload[self.checked - self.start..]).is_ok())
    }
}

/// Checks what arrived of a large 5.0 PUBLISH said to be UTF-8 (`header`'s, at the front of
/// `c`'s input), starting once its properties are in.
fn check_payload_so_far(c: &mut Conn, header: &crate::codec::FixedHeader) {
    use crate::codec::{packet_type, ProtocolVersion, QoS};
    if header.packet_type != packet_type::PUBLISH || c.version() != Some(ProtocolVersion::V5) {
        return;
    }
    let total = header.packet_len();
    let known =
        (c.extras.as_ref().and_then(|e| e.payload_check)).is_some_and(|ch| ch.total == total);
    if !known {
        let qos = QoS::from_u8((header.flags >> 1) & 3).unwrap_or(QoS::AtMostOnce);
        // Not all its properties here yet, or not to be looked into: checked whole when it
        // is (if it says UTF-8).
        let Some((start, said_utf8)) = crate::codec::peek_payload(&c.inbuf, header.header_len, qos)
        else {
            return;
        };
        c.extras().payload_check = Some(PayloadCheck {
            total,
            start,
            checked: start,
            invalid: false,
            said_utf8,
        });
    }
    if let Some(check) = c.extras.as_mut().and_then(|e| e.payload_check.as_mut()) {
        check.advance(&c.inbuf);
    }
}

/// Sizes a connection's input buffer, holding `inbuf.len()` bytes of a packet of `total`
/// bytes (`None`: its header is not all here yet), for the rest of it. Once the packet is
/// small or a sixteenth of it has arrived (`PACKET_SIZED_AFTER_PART`), the buffer is sized
/// for the whole packet, with room for one more read behind it so that the read that ends
/// it does not grow it again; before that it grows as bytes arrive, and keeps at most four
/// times what it holds (a header announcing a large packet reserves nothing for it: what is
/// set aside is never more than 16 times what arrived).
fn size_for_packet(inbuf: &mut BytesMut, total: Option<usize>) {
    let len = inbuf.len();
    if len == 0 {
        *inbuf = BytesMut::new();
        return;
    }
    let need = total.unwrap_or(len).max(len);
    let capacity = inbuf.capacity();
    let whole = need <= PACKET_SIZED_AT_ONCE_BYTES || len >= need / PACKET_SIZED_AFTER_PART;
    let size = if whole {
        let behind = if need > READ_MAX_PER_TURN {
            READ_MAX_PER_TURN
        } else {
            0
        };
        need + behind
    } else {
        len
    };
    let keep = if whole { size } else { 4 * len.max(1024) };
    if capacity < size || capacity > keep.max(4 * 1024) {
        let mut sized = BytesMut::with_capacity(size);
        sized.extend_from_slice(inbuf);
        *inbuf = sized;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// A payload checked as it arrives, in any pieces (characters cut between them),
        /// is judged as a check of it whole would judge it.
        #[test]
        fn a_payload_checked_as_it_arrives_is_judged_as_if_whole(
            text in "[a-zé€😀]{0,200}",
            corrupt in proptest::option::of((any::<prop::sample::Index>(), 0x80u8..=0xFF)),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
        ) {
            let mut payload = text.into_bytes();
            if let Some((at, byte)) = corrupt.filter(|_| !payload.is_empty()) {
                let at = at.index(payload.len());
                payload[at] = byte;
            }
            let head = b"HEADER".to_vec();
            let packet = [head.clone(), payload.clone()].concat();
            let mut check = PayloadCheck {
                total: packet.len(),
                start: head.len(),
                checked: head.len(),
                invalid: false,
                said_utf8: true,
            };
            let mut ends: Vec<usize> = cuts.iter().map(|c| c.index(packet.len() + 1)).collect();
            ends.sort_unstable();
            for end in ends {
                check.advance(&packet[..end]);
            }
            let whole = std::str::from_utf8(&payload).is_ok();
            prop_assert_eq!(check.payload_is_utf8(&payload), Some(whole));
            // Not this payload (another length): no judgement, it is checked whole.
            prop_assert_eq!(check.payload_is_utf8(&[payload.as_slice(), b"x"].concat()), None);
        }
    }

    fn holding(len: usize, capacity: usize) -> BytesMut {
        let mut b = BytesMut::with_capacity(capacity);
        b.resize(len, 7);
        b
    }

    #[test]
    fn a_small_packet_gets_its_whole_buffer_from_its_header() {
        let mut b = holding(5, 8);
        size_for_packet(&mut b, Some(1000));
        assert!(b.capacity() >= 1000 && b.capacity() < 4096);
        assert_eq!(&b[..], &[7; 5]);
    }

    #[test]
    fn a_large_packet_is_sized_once_a_sixteenth_has_arrived() {
        let total = 64 << 20;
        let mut b = holding(1 << 20, 2 << 20);
        size_for_packet(&mut b, Some(total));
        assert_eq!(
            b.capacity(),
            2 << 20,
            "sized ahead of 16 times what arrived"
        );
        let mut b = holding(total / 16, total / 8);
        size_for_packet(&mut b, Some(total));
        assert!(b.capacity() >= total + READ_MAX_PER_TURN);
        assert!(b.capacity() < total + 2 * READ_MAX_PER_TURN);
        assert_eq!(b.len(), total / 16);
    }

    #[test]
    fn a_buffer_grown_for_an_earlier_packet_is_given_back() {
        let mut b = holding(100, 1 << 20);
        size_for_packet(&mut b, Some(200));
        assert!(b.capacity() < 4096);
        let mut b = holding(3, 1 << 20);
        size_for_packet(&mut b, None);
        assert!(b.capacity() < 4096);
        let mut b = holding(0, 1 << 20);
        size_for_packet(&mut b, None);
        assert_eq!(b.capacity(), 0);
    }
}
