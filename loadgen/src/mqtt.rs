//! The little MQTT loadgen needs (3.1.1 and 5.0), written here rather than borrowed from a
//! broker: a measuring tool should not share its codec, and so its bugs, with what it measures.

pub const CONNACK: u8 = 2;
pub const PUBLISH: u8 = 3;
pub const PUBACK: u8 = 4;
pub const PUBREC: u8 = 5;
pub const PUBREL: u8 = 6;
pub const PUBCOMP: u8 = 7;
pub const SUBACK: u8 = 9;
pub const PINGRESP: u8 = 13;
pub const DISCONNECT: u8 = 14;

fn put_varint(out: &mut Vec<u8>, mut value: usize) {
    loop {
        let mut byte = (value % 128) as u8;
        value /= 128;
        if value > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if value == 0 {
            return;
        }
    }
}

fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

fn packet(out: &mut Vec<u8>, first: u8, body: &[u8]) {
    out.push(first);
    put_varint(out, body.len());
    out.extend_from_slice(body);
}

pub fn connect(
    out: &mut Vec<u8>,
    client_id: &str,
    v5: bool,
    clean: bool,
    keepalive: u16,
    session_expiry: u32,
) {
    let mut body = Vec::with_capacity(32 + client_id.len());
    put_str(&mut body, b"MQTT");
    body.push(if v5 { 5 } else { 4 });
    body.push(if clean { 0x02 } else { 0 });
    body.extend_from_slice(&keepalive.to_be_bytes());
    if v5 {
        if session_expiry > 0 {
            body.extend_from_slice(&[5, 0x11]);
            body.extend_from_slice(&session_expiry.to_be_bytes());
        } else {
            body.push(0);
        }
    }
    put_str(&mut body, client_id.as_bytes());
    packet(out, 0x10, &body);
}

pub fn subscribe(out: &mut Vec<u8>, packet_id: u16, filter: &str, qos: u8, v5: bool) {
    let mut body = Vec::with_capacity(8 + filter.len());
    body.extend_from_slice(&packet_id.to_be_bytes());
    if v5 {
        body.push(0);
    }
    put_str(&mut body, filter.as_bytes());
    body.push(qos);
    packet(out, 0x82, &body);
}

/// Appends a PUBLISH without building it in a temporary buffer.
pub fn publish(out: &mut Vec<u8>, topic: &str, qos: u8, packet_id: u16, payload: &[u8], v5: bool) {
    let len = 2 + topic.len() + usize::from(qos > 0) * 2 + usize::from(v5) + payload.len();
    out.push(0x30 | (qos << 1));
    put_varint(out, len);
    put_str(out, topic.as_bytes());
    if qos > 0 {
        out.extend_from_slice(&packet_id.to_be_bytes());
    }
    if v5 {
        out.push(0);
    }
    out.extend_from_slice(payload);
}

/// PUBACK, PUBREC, PUBREL (flags 0010) or PUBCOMP: the short form, valid in 3.1.1 and 5.0.
pub fn ack(out: &mut Vec<u8>, packet_type: u8, packet_id: u16) {
    let first = (packet_type << 4) | if packet_type == PUBREL { 0x02 } else { 0 };
    out.extend_from_slice(&[first, 2]);
    out.extend_from_slice(&packet_id.to_be_bytes());
}

pub fn pingreq(out: &mut Vec<u8>) {
    out.extend_from_slice(&[0xC0, 0]);
}

pub fn disconnect(out: &mut Vec<u8>) {
    out.extend_from_slice(&[0xE0, 0]);
}

/// One packet at the front of a buffer: its type, flags, and body range.
#[derive(Debug, PartialEq, Eq)]
pub struct Frame {
    pub packet_type: u8,
    pub flags: u8,
    pub body_start: usize,
    pub end: usize,
}

/// Finds the first whole packet in `buf`. `Ok(None)`: more bytes needed.
pub fn frame(buf: &[u8]) -> Result<Option<Frame>, String> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let mut len = 0usize;
    for i in 0..4 {
        let Some(&byte) = buf.get(1 + i) else {
            return Ok(None);
        };
        len |= usize::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            let body_start = 2 + i;
            let end = body_start + len;
            if buf.len() < end {
                return Ok(None);
            }
            return Ok(Some(Frame {
                packet_type: buf[0] >> 4,
                flags: buf[0] & 0x0F,
                body_start,
                end,
            }));
        }
    }
    Err("remaining length longer than four bytes".into())
}

/// The parts of a received PUBLISH that loadgen uses.
pub struct Incoming<'a> {
    pub qos: u8,
    pub packet_id: u16,
    pub payload: &'a [u8],
}

pub fn parse_publish<'a>(flags: u8, body: &'a [u8], v5: bool) -> Result<Incoming<'a>, String> {
    let qos = (flags >> 1) & 3;
    let short = || "PUBLISH shorter than its fields".to_string();
    let topic_len = usize::from(u16::from_be_bytes([
        *body.first().ok_or_else(short)?,
        *body.get(1).ok_or_else(short)?,
    ]));
    let mut at = 2 + topic_len;
    let mut packet_id = 0;
    if qos > 0 {
        let b = body.get(at..at + 2).ok_or_else(short)?;
        packet_id = u16::from_be_bytes([b[0], b[1]]);
        at += 2;
    }
    if v5 {
        let (props, used) = varint(body.get(at..).ok_or_else(short)?).ok_or_else(short)?;
        at += used + props;
    }
    let payload = body.get(at..).ok_or_else(short)?;
    Ok(Incoming {
        qos,
        packet_id,
        payload,
    })
}

fn varint(buf: &[u8]) -> Option<(usize, usize)> {
    let mut value = 0usize;
    for (i, &byte) in buf.iter().take(4).enumerate() {
        value |= usize::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

/// The packet id of a PUBACK/PUBREC/PUBREL/PUBCOMP body.
pub fn packet_id(body: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes([*body.first()?, *body.get(1)?]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_round_trip_and_framing() {
        for v5 in [false, true] {
            for qos in 0..3u8 {
                let mut out = Vec::new();
                publish(&mut out, "a/b", qos, 7, b"payload", v5);
                out.extend_from_slice(&[0xD0, 0]); // a PINGRESP behind it
                let f = frame(&out).unwrap().unwrap();
                assert_eq!(f.packet_type, PUBLISH);
                let p = parse_publish(f.flags, &out[f.body_start..f.end], v5).unwrap();
                assert_eq!((p.qos, p.payload), (qos, &b"payload"[..]));
                assert_eq!(p.packet_id, if qos > 0 { 7 } else { 0 });
                let next = frame(&out[f.end..]).unwrap().unwrap();
                assert_eq!(next.packet_type, PINGRESP);
                assert_eq!(frame(&out[..f.end - 1]).unwrap(), None);
            }
        }
    }

    #[test]
    fn connect_is_the_3_1_1_example() {
        let mut out = Vec::new();
        connect(&mut out, "528986875", false, true, 120, 0);
        assert_eq!(
            &out[..12],
            &[0x10, 0x15, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 120]
        );
    }
}
