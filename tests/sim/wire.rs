//! What the simulated clients put on the wire: messages that say who published them, and
//! a short description of packets for traces.

use bytes::Bytes;
use midge::codec::*;

/// Who published a message: the publishing client, its connection, and a sequence number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Key {
    pub publisher: u32,
    pub incarnation: u32,
    pub seq: u32,
}

impl Key {
    pub fn payload(self) -> Bytes {
        let mut b = Vec::with_capacity(12);
        b.extend_from_slice(&self.publisher.to_be_bytes());
        b.extend_from_slice(&self.incarnation.to_be_bytes());
        b.extend_from_slice(&self.seq.to_be_bytes());
        Bytes::from(b)
    }

    pub fn read(payload: &[u8]) -> Key {
        let n = |i: usize| u32::from_be_bytes(payload[i..i + 4].try_into().unwrap());
        Key {
            publisher: n(0),
            incarnation: n(4),
            seq: n(8),
        }
    }
}

pub fn publish_packet(topic: &str, qos: QoS, pid: u16, dup: bool, key: Key) -> Packet {
    Packet::Publish(Publish {
        dup,
        qos,
        retain: false,
        topic: MqttStr::new(topic).unwrap(),
        packet_id: pid,
        properties: Properties::default(),
        payload: key.payload(),
    })
}

pub fn brief(packet: &Packet, who: &str) -> String {
    match packet {
        Packet::Publish(p) => {
            let key = if p.payload.len() == 12 {
                format!("{:?}", Key::read(&p.payload))
            } else {
                String::new()
            };
            format!(
                "{who} PUBLISH q{} d{} m{} {} {key}",
                p.qos as u8,
                u8::from(p.dup),
                p.packet_id,
                p.topic
            )
        }
        Packet::Connect(c) => format!("{who} CONNECT clean={}", c.clean_start),
        other => format!("{who} {other:?}"),
    }
}
