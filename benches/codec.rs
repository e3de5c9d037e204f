//! Decode and encode of PUBLISH at 16 B, 256 B and 4 KiB payloads, MQTT 3.1.1 and 5.0.
//! Throughput is in packets: criterion prints packets/s as "elem/s".

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use midge::codec::*;
use std::hint::black_box;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn publish(payload_len: usize, version: ProtocolVersion) -> Packet {
    let mut properties = Properties::default();
    if version == ProtocolVersion::V5 {
        properties.message_expiry_interval = Some(60);
        properties.user_properties.push((
            MqttStr::from_static("source"),
            MqttStr::from_static("bench"),
        ));
    }
    Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: MqttStr::from_static("devices/0042/telemetry"),
        packet_id: 7,
        properties,
        payload: Bytes::from(vec![0xA5; payload_len]),
    })
}

fn codec(c: &mut Criterion) {
    for version in [ProtocolVersion::V311, ProtocolVersion::V5] {
        for size in [16usize, 256, 4096] {
            let packet = publish(size, version);
            let bytes = packet.to_bytes(version).unwrap();
            let decoder = Decoder::client(version, 1 << 20);

            let mut group = c.benchmark_group(format!("publish_v{}", version as u8));
            group.throughput(Throughput::Elements(1));
            group.bench_function(format!("decode_{size}B"), |b| {
                b.iter(|| match decoder.decode(black_box(&bytes)) {
                    Ok(Decoded::Packet { packet, .. }) => black_box(packet),
                    other => panic!("{other:?}"),
                })
            });
            let mut out = BytesMut::with_capacity(bytes.len() * 2);
            group.bench_function(format!("encode_{size}B"), |b| {
                b.iter(|| {
                    out.clear();
                    black_box(&packet).encode(version, &mut out).unwrap();
                    black_box(out.len())
                })
            });
            group.finish();
        }
    }
}

criterion_group!(benches, codec);
criterion_main!(benches);
