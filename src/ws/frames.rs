//! WebSocket frames (RFC 6455 §5), read as they arrive: a binary frame's payload is unmasked
//! straight into the connection's MQTT input, a slice at a time, never gathered whole (a
//! 100 MB frame was gathered by tungstenite, doubling as it came, then copied: 3 times its
//! size held and a 130 ms turn). Control frames (at most 125 bytes) are answered: ping with
//! pong, close with close.

use bytes::BytesMut;

const FIN: u8 = 0x80;
const RSV: u8 = 0x70;
const MASKED: u8 = 0x80;

const CONTINUATION: u8 = 0x0;
const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// The longest payload of a control frame [RFC 6455 §5.5].
const CONTROL_MAX: usize = 125;
/// The longest frame header: two bytes, eight of length, four of mask.
const HEADER_MAX: usize = 14;

/// Where a reader is in the frames a client sends.
pub(super) struct FrameReader {
    header: [u8; HEADER_MAX],
    header_len: usize,
    state: Reading,
    /// A binary message was begun in a frame without FIN: continuation frames follow.
    in_message: bool,
    /// Why reading stopped, as a close frame's status (§7.4.1): 1002 Protocol error, 1003
    /// a text frame, 1009 a frame too large.
    failed: Option<u16>,
}

enum Reading {
    Header,
    /// A binary (or continuation) frame's payload: bytes still to come, its mask, and where
    /// in the mask the next byte is.
    Data {
        left: u64,
        mask: [u8; 4],
        at: usize,
    },
    /// A control frame's payload, gathered (it is small).
    Control {
        opcode: u8,
        left: usize,
        mask: [u8; 4],
        payload: Vec<u8>,
    },
    /// The peer's close came: what follows is ignored.
    Closed,
}

impl FrameReader {
    pub(super) fn new() -> Self {
        FrameReader {
            header: [0; HEADER_MAX],
            header_len: 0,
            state: Reading::Header,
            in_message: false,
            failed: None,
        }
    }

    /// The status of the close frame that ends a connection whose frames were refused.
    pub(super) fn failed(&self) -> Option<u16> {
        self.failed
    }

    /// Records why reading stops (`failed`) and says it.
    fn fail(&mut self, status: u16, why: impl Into<String>) -> String {
        self.failed = Some(status);
        why.into()
    }

    /// Whether the peer's close came (and was answered): nothing more goes either way.
    pub(super) fn is_closed(&self) -> bool {
        matches!(self.state, Reading::Closed)
    }

    /// Reads `data`: MQTT bytes go to `mqtt`, answers (pong, the close) to `reply`. True once
    /// the peer has closed; an error names what it did wrong (the connection is closed).
    /// `frame_max`: the longest frame payload taken.
    pub(super) fn read(
        &mut self,
        mut data: &[u8],
        mqtt: &mut BytesMut,
        reply: &mut Vec<u8>,
        frame_max: usize,
    ) -> Result<bool, String> {
        while !data.is_empty() {
            match &mut self.state {
                Reading::Closed => return Ok(true),
                Reading::Header => {
                    let used = self.take_header(data, frame_max, reply)?;
                    data = &data[used..];
                }
                Reading::Data { left, mask, at } => {
                    let n = data.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                    let start = mqtt.len();
                    mqtt.extend_from_slice(&data[..n]);
                    unmask(&mut mqtt[start..], *mask, *at);
                    *at = (*at + n) % 4;
                    *left -= n as u64;
                    data = &data[n..];
                    if *left == 0 {
                        self.state = Reading::Header;
                    }
                }
                Reading::Control {
                    opcode,
                    left,
                    mask,
                    payload,
                } => {
                    let n = data.len().min(*left);
                    let start = payload.len();
                    payload.extend_from_slice(&data[..n]);
                    unmask(&mut payload[start..], *mask, start % 4);
                    *left -= n;
                    data = &data[n..];
                    if *left == 0 {
                        let (opcode, payload) = (*opcode, std::mem::take(payload));
                        self.state = Reading::Header;
                        if self.control(opcode, &payload, reply)? {
                            self.state = Reading::Closed;
                            return Ok(true);
                        }
                    }
                }
            }
        }
        Ok(matches!(self.state, Reading::Closed))
    }

    /// Takes header bytes from `data`; once the header is whole, checks it and moves on to
    /// its payload. How many bytes of `data` it took.
    fn take_header(
        &mut self,
        data: &[u8],
        frame_max: usize,
        reply: &mut Vec<u8>,
    ) -> Result<usize, String> {
        let want = |h: &[u8]| -> usize {
            if h.len() < 2 {
                return 2;
            }
            let length_bytes = match h[1] & 0x7F {
                126 => 2,
                127 => 8,
                _ => 0,
            };
            2 + length_bytes + if h[1] & MASKED != 0 { 4 } else { 0 }
        };
        let mut used = 0;
        loop {
            let need = want(&self.header[..self.header_len]);
            if self.header_len >= need {
                break;
            }
            let Some(&byte) = data.get(used) else {
                return Ok(used);
            };
            self.header[self.header_len] = byte;
            self.header_len += 1;
            used += 1;
        }
        let h = &self.header[..self.header_len];
        self.header_len = 0;
        let (fin, opcode) = (h[0] & FIN != 0, h[0] & 0x0F);
        if h[0] & RSV != 0 {
            return Err(self.fail(
                1002,
                "WebSocket: reserved bits set (no extension was agreed)",
            ));
        }
        // [RFC 6455 §5.1] a client masks every frame.
        if h[1] & MASKED == 0 {
            return Err(self.fail(1002, "WebSocket: an unmasked frame from the client"));
        }
        let (len, rest) = match h[1] & 0x7F {
            126 => (u64::from(u16::from_be_bytes([h[2], h[3]])), &h[4..]),
            127 => (
                u64::from_be_bytes(h[2..10].try_into().expect("eight bytes")),
                &h[10..],
            ),
            n => (u64::from(n), &h[2..]),
        };
        let mask: [u8; 4] = rest[..4].try_into().expect("four bytes");
        self.begin_frame(fin, opcode, len, mask, frame_max, reply)?;
        Ok(used)
    }

    /// A frame's header is whole: what follows is its data (a binary message's, in one
    /// frame or continued) or a control frame's payload; any other frame closes.
    fn begin_frame(
        &mut self,
        fin: bool,
        opcode: u8,
        len: u64,
        mask: [u8; 4],
        frame_max: usize,
        reply: &mut Vec<u8>,
    ) -> Result<(), String> {
        match opcode {
            BINARY | CONTINUATION => {
                if opcode == CONTINUATION && !self.in_message {
                    let why = "WebSocket: a continuation frame with no message begun";
                    return Err(self.fail(1002, why));
                }
                if opcode == BINARY && self.in_message {
                    let why = "WebSocket: a new message before the last one ended";
                    return Err(self.fail(1002, why));
                }
                if len > frame_max as u64 {
                    let why = format!("WebSocket: a frame of {len} bytes, more than {frame_max}");
                    return Err(self.fail(1009, why));
                }
                self.in_message = !fin;
                if len > 0 {
                    self.state = Reading::Data {
                        left: len,
                        mask,
                        at: 0,
                    };
                }
            }
            // [MQTT-6.0.0-1] MQTT travels in binary frames; anything else closes.
            TEXT => {
                let why = "a text frame (MQTT over WebSockets is binary only)";
                return Err(self.fail(1003, why));
            }
            CLOSE | PING | PONG => {
                // [RFC 6455 §5.5] control frames are short and not fragmented.
                if !fin || len > CONTROL_MAX as u64 {
                    return Err(self.fail(1002, "WebSocket: a fragmented or long control frame"));
                }
                self.state = Reading::Control {
                    opcode,
                    left: len as usize,
                    mask,
                    payload: Vec::new(),
                };
                if len == 0 {
                    self.state = Reading::Header;
                    if self.control(opcode, &[], reply)? {
                        self.state = Reading::Closed;
                    }
                }
            }
            other => {
                let why = format!("WebSocket: reserved opcode {other:#x}");
                return Err(self.fail(1002, why));
            }
        }
        Ok(())
    }

    /// Answers a whole control frame. True if it was the peer's close (answered with a
    /// close of the same status).
    fn control(&mut self, opcode: u8, payload: &[u8], reply: &mut Vec<u8>) -> Result<bool, String> {
        match opcode {
            PING => {
                put_frame(reply, PONG, payload);
                Ok(false)
            }
            CLOSE => {
                if payload.len() == 1 {
                    return Err(self.fail(1002, "WebSocket: a close frame of one byte"));
                }
                // Its status code, echoed [RFC 6455 §5.5.1] (the reason is not), if it is one
                // a close frame may carry (§7.4); 1002 Protocol error if not.
                let status = payload.get(..2).map(|s| u16::from_be_bytes([s[0], s[1]]));
                match status {
                    None => put_frame(reply, CLOSE, &[]),
                    Some(code) if sendable_status(code) => {
                        put_frame(reply, CLOSE, &code.to_be_bytes())
                    }
                    Some(_) => put_frame(reply, CLOSE, &1002u16.to_be_bytes()),
                }
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}

/// Whether a close frame may carry status `code` [RFC 6455 §7.4]: the defined ones but
/// those reserved for the endpoint's own use (1004, 1005, 1006, 1015), and 3000-4999.
fn sendable_status(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// A binary frame holding `payload`, from the server (unmasked).
pub(super) fn put_binary(out: &mut Vec<u8>, payload: &[u8]) {
    put_frame(out, BINARY, payload);
}

/// A close frame with `status` (1000: normal closure), from the server.
pub(super) fn put_close(out: &mut Vec<u8>, status: u16) {
    put_frame(out, CLOSE, &status.to_be_bytes());
}

fn put_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    out.reserve(10 + payload.len());
    out.push(FIN | opcode);
    match payload.len() {
        n if n < 126 => out.push(n as u8),
        n if n <= usize::from(u16::MAX) => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
}

/// Unmasks `bytes`, the first of which is at position `at` of the mask's cycle.
fn unmask(bytes: &mut [u8], mask: [u8; 4], at: usize) {
    // Byte by byte up to where the mask's cycle starts again, then four bytes at a time.
    let lead = ((4 - at % 4) % 4).min(bytes.len());
    let (head, rest) = bytes.split_at_mut(lead);
    for (i, b) in head.iter_mut().enumerate() {
        *b ^= mask[(at + i) % 4];
    }
    let key = u32::from_ne_bytes(mask);
    let mut words = rest.chunks_exact_mut(4);
    for word in &mut words {
        let unmasked = u32::from_ne_bytes([word[0], word[1], word[2], word[3]]) ^ key;
        word.copy_from_slice(&unmasked.to_ne_bytes());
    }
    for (i, b) in words.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use tungstenite::protocol::{Message, Role, WebSocketContext};

    /// Where tungstenite writes (it reads nothing).
    struct Wire(Vec<u8>);

    impl std::io::Read for Wire {
        fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
            Err(std::io::ErrorKind::WouldBlock.into())
        }
    }

    impl std::io::Write for Wire {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// What a client (tungstenite's, masking with a random key) sends for `messages`.
    fn from_client(messages: &[Message]) -> Vec<u8> {
        let mut context = WebSocketContext::new(Role::Client, None);
        let mut wire = Wire(Vec::new());
        for m in messages {
            context.write(&mut wire, m.clone()).unwrap();
        }
        context.flush(&mut wire).unwrap();
        wire.0
    }

    /// Reads `wire` in pieces of `piece` bytes: the MQTT bytes, the replies, whether closed.
    fn read_in_pieces(wire: &[u8], piece: usize) -> Result<(Vec<u8>, Vec<u8>, bool), String> {
        let mut reader = FrameReader::new();
        let (mut mqtt, mut reply) = (BytesMut::new(), Vec::new());
        let mut closed = false;
        for chunk in wire.chunks(piece.max(1)) {
            closed = reader.read(chunk, &mut mqtt, &mut reply, 1 << 20)?;
        }
        Ok((mqtt.to_vec(), reply, closed))
    }

    fn masked(first: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x37, 0xFA, 0x21, 0x3D];
        let mut out = vec![first, MASKED | payload.len() as u8];
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    proptest! {
        /// Any binary messages, however the bytes arrive, come out as their payloads in
        /// order; pings between them are answered with pongs of the same payload.
        #[test]
        fn binary_frames_read_back_in_any_pieces(
            payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..70_000), 1..4),
            piece in 1usize..5_000,
        ) {
            let mut messages = Vec::new();
            for p in &payloads {
                messages.push(Message::Binary(p.clone().into()));
                messages.push(Message::Ping(vec![1, 2, 3].into()));
            }
            let (mqtt, reply, closed) = read_in_pieces(&from_client(&messages), piece).unwrap();
            prop_assert_eq!(mqtt, payloads.concat());
            prop_assert!(!closed);
            let mut pongs = Vec::new();
            for _ in &payloads {
                put_frame(&mut pongs, PONG, &[1, 2, 3]);
            }
            prop_assert_eq!(reply, pongs);
        }

        #[test]
        fn unmasking_in_words_matches_byte_by_byte(
            bytes in prop::collection::vec(any::<u8>(), 0..64),
            mask in any::<[u8; 4]>(),
            at in 0usize..8,
        ) {
            let mut fast = bytes.clone();
            unmask(&mut fast, mask, at);
            let slow: Vec<u8> = bytes.iter().enumerate().map(|(i, b)| b ^ mask[(at + i) % 4]).collect();
            prop_assert_eq!(fast, slow);
        }
    }

    #[test]
    fn a_fragmented_message_is_one_stream_and_fragments_must_follow_their_start() {
        let mut wire = masked(BINARY, b"ab");
        wire.extend(masked(FIN | PING, b"p"));
        wire.extend(masked(FIN | CONTINUATION, b"cd"));
        let (mqtt, reply, _) = read_in_pieces(&wire, 3).unwrap();
        assert_eq!(mqtt, b"abcd");
        assert_eq!(reply, [FIN | PONG, 1, b'p']);
        let e = read_in_pieces(&masked(FIN | CONTINUATION, b"x"), 1).unwrap_err();
        assert!(e.contains("no message begun"), "{e}");
        let mut wire = masked(BINARY, b"a");
        wire.extend(masked(FIN | BINARY, b"b"));
        let e = read_in_pieces(&wire, 64).unwrap_err();
        assert!(e.contains("before the last one ended"), "{e}");
    }

    #[test]
    fn a_close_is_answered_with_its_status_and_ends_reading() {
        let mut wire = from_client(&[Message::Close(None)]);
        wire.extend(masked(FIN | BINARY, b"late"));
        let (mqtt, reply, closed) = read_in_pieces(&wire, 1).unwrap();
        assert!(closed && mqtt.is_empty());
        assert_eq!(reply, [FIN | CLOSE, 0]);
        let (_, reply, closed) =
            read_in_pieces(&masked(FIN | CLOSE, &[0x03, 0xE8, b'b', b'y']), 2).unwrap();
        assert!(closed);
        assert_eq!(reply, [FIN | CLOSE, 2, 0x03, 0xE8]);
        // 1005 may not be sent in a close frame: answered with 1002 Protocol error.
        let (_, reply, _) = read_in_pieces(&masked(FIN | CLOSE, &[0x03, 0xED]), 64).unwrap();
        assert_eq!(reply, [FIN | CLOSE, 2, 0x03, 0xEA]);
    }

    #[test]
    fn frames_a_server_must_refuse_are_errors() {
        let cases: [(Vec<u8>, &str); 6] = [
            (vec![FIN | BINARY, 1, b'x'], "unmasked"),
            (masked(FIN | TEXT, b"hi"), "text frame"),
            (masked(FIN | RSV | BINARY, b"x"), "reserved bits"),
            (masked(FIN | 0x3, b"x"), "reserved opcode"),
            (masked(PING, b"x"), "control frame"),
            (masked(FIN | CLOSE, b"x"), "one byte"),
        ];
        for (wire, why) in cases {
            let e = read_in_pieces(&wire, 64).unwrap_err();
            assert!(e.contains(why), "{why}: {e}");
        }
        let mut reader = FrameReader::new();
        let e = reader
            .read(
                &masked(FIN | BINARY, &[0; 100]),
                &mut BytesMut::new(),
                &mut Vec::new(),
                99,
            )
            .unwrap_err();
        assert!(e.contains("more than 99"), "{e}");
    }

    #[test]
    fn a_refused_frame_names_its_status_for_the_close() {
        for (wire, max, status) in [
            (masked(FIN | TEXT, b"hi"), 64, 1003),
            (masked(FIN | BINARY, &[0; 100]), 99, 1009),
            (vec![FIN | BINARY, 1, b'x'], 64, 1002),
        ] {
            let mut reader = FrameReader::new();
            let read = reader.read(&wire, &mut BytesMut::new(), &mut Vec::new(), max);
            assert!(read.is_err());
            assert_eq!(reader.failed(), Some(status));
            let mut close = Vec::new();
            put_close(&mut close, reader.failed().unwrap());
            assert_eq!(close, [FIN | CLOSE, 2, (status >> 8) as u8, status as u8]);
        }
        assert_eq!(FrameReader::new().failed(), None);
    }

    #[test]
    fn server_frames_use_the_shortest_length() {
        for (len, header) in [(125, 2), (126, 4), (65_535, 4), (65_536, 10)] {
            let mut out = Vec::new();
            put_binary(&mut out, &vec![7; len]);
            assert_eq!(out.len(), header + len);
            assert_eq!(out[0], FIN | BINARY);
        }
    }
}
