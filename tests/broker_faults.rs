//! What the broker does when something goes wrong inside it: a message it cannot encode for
//! one subscriber, and a shard that panics.

mod common;

use common::*;
use midge::codec::*;
use std::os::unix::process::ExitStatusExt;

/// The largest remaining length a packet may have [MQTT-2.2.3].
const REMAINING_LENGTH_MAX: usize = 268_435_455;

#[test]
fn a_message_too_large_for_a_subscribers_version_is_dropped_for_it_alone() {
    let broker = Broker::start(&["--threads", "1"]);
    let mut v5 = Raw::connect_with(
        broker.port,
        connect_packet(ProtocolVersion::V5, "sub-v5", true, 60),
    )
    .0;
    v5.send(&subscribe(
        1,
        &[("big", QoS::AtMostOnce), ("small", QoS::AtMostOnce)],
    ));
    assert!(matches!(v5.recv(), Packet::SubAck(_)));
    let mut v3 = Raw::connect(broker.port, "sub-v3");
    v3.subscribe(&[("big", QoS::AtMostOnce)]);

    // A 3.1.1 PUBLISH of the largest remaining length: the 5.0 copy would need one byte
    // more (its property length) and cannot be encoded.
    let mut publisher = Raw::connect(broker.port, "publisher");
    let payload = vec![0x42; REMAINING_LENGTH_MAX - 2 - "big".len()];
    let packet = publish("big", &payload, QoS::AtMostOnce, 0, false);
    publisher.send(&packet);
    drop(payload);
    broker.wait_for_log("too large to send to sub-v5");

    // The 3.1.1 subscriber gets it whole; the 5.0 one does not, and its connection and the
    // broker carry on.
    let got = v3.recv_publish();
    assert_eq!(got.payload.len(), REMAINING_LENGTH_MAX - 5);
    publisher.send(&publish("small", b"after", QoS::AtMostOnce, 0, false));
    let next = v5.recv_publish();
    assert_eq!((&*next.topic, &next.payload[..]), ("small", &b"after"[..]));
}

#[test]
fn a_shard_that_panics_aborts_the_broker() {
    // Debug builds only: a PUBLISH to this topic panics the shard that reads it.
    let mut broker = Broker::start_with_env(
        &["--threads", "2"],
        &[("MIDGE_FAULT_PANIC_TOPIC", "fault/panic")],
    );
    let mut client = Raw::connect(broker.port, "doomed");
    client.send(&publish("fault/panic", b"x", QoS::AtMostOnce, 0, false));
    let status = broker.wait_exit();
    // Aborted (so that systemd restarts it), not left running with a dead shard.
    assert_eq!(status.signal(), Some(libc::SIGABRT), "{status:?}");
    broker.wait_for_log("panicked (fault injected by MIDGE_FAULT_PANIC_TOPIC); aborting");
}
