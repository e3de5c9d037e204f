//! Bytes as Mosquitto writes them, where the spec leaves the choice free: tools and test
//! suites written against Mosquitto compare them (issue 11). Each test states the bytes.

mod common;

use common::*;
use midge::codec::*;

/// CONNACK properties come in Mosquitto's order: what the connection negotiated (Topic
/// Alias Maximum, Server Keep Alive, Assigned Client Identifier) before the broker's limits
/// (Receive Maximum).
#[test]
fn connack_properties_in_mosquittos_order() {
    let conf = config_file(
        "connack-order.conf",
        "listener 0 127.0.0.1\nallow_anonymous true\nmax_keepalive 60\n",
    );
    let broker = Broker::start_configured(&["-c", &conf]);
    let mut connect = connect_packet(ProtocolVersion::V5, "", true, 100);
    connect.client_id = s("");
    let mut raw = Raw::open(broker.port, ProtocolVersion::V5);
    raw.send(&Packet::Connect(Box::new(connect)));
    let head = raw.recv_bytes(2);
    assert_eq!(head[0], 0x20);
    let body = raw.recv_bytes(usize::from(head[1]));
    // Flags, reason, property length; then 0x22 Topic Alias Maximum 10, 0x13 Server Keep
    // Alive 60, 0x12 Assigned Client Identifier, 0x21 Receive Maximum 20.
    assert_eq!(&body[..3], &[0x00, 0x00, body[2]]);
    assert_eq!(
        &body[3..9],
        &[0x22, 0x00, 0x0A, 0x13, 0x00, 0x3C],
        "{body:02X?}"
    );
    assert_eq!(body[9], 0x12, "{body:02X?}");
    let id_len = usize::from(u16::from_be_bytes([body[10], body[11]]));
    assert_eq!(&body[12 + id_len..], &[0x21, 0x00, 0x14], "{body:02X?}");
}
