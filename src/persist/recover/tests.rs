//! Recovery of what shards passed each other, on the simulated disk.

use std::sync::Arc;
use std::time::Instant;

use smallvec::smallvec;

use super::recover;
use crate::codec::{MqttStr, ProtocolVersion, QoS};
use crate::persist::journal::Journal;
use crate::persist::storage::sim::SimStorage;
use crate::persist::storage::Storage;
use crate::persist::{SyncPolicy, WallClock};
use crate::session::Session;
use crate::types::{Message, PublishOrder, SessionId, Target};

fn published_on_shard_0(number: u64) -> Arc<Message> {
    Arc::new(Message {
        topic: MqttStr::from_static("t"),
        payload: bytes::Bytes::from(vec![number as u8]),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Default::default(),
        origin: None,
        expires_at: None,
        order: PublishOrder { shard: 0, number },
        stream: Default::default(),
    })
}

/// A publisher on shard 0 sends 1 and 2 to a subscriber whose session has just moved to
/// shard 1. Shard 1 took 1 and holds it while the session settles; 2 is still in its
/// mailbox when the broker crashes. Recovery hands both on: 2 from shard 0's journal (not
/// taken), 1 from shard 1's (held, not delivered). Read journal by journal, 2 would come
/// first; they come in the order they were published [MQTT-4.6.0-6].
#[test]
fn what_is_handed_on_keeps_its_publishers_order_whatever_route_it_took() {
    let storage = Arc::new(SimStorage::new(1));
    let dir = std::path::Path::new("/store");
    let clock = WallClock::now();
    let now = Instant::now();
    storage.create_dir_all(dir).unwrap();
    let journal =
        |shard| Journal::create(storage.clone(), dir, shard, 1, SyncPolicy::Always).unwrap();
    let (mut shard_0, mut shard_1) = (journal(0), journal(1));
    let subscriber = Session::new(
        SessionId::new(7),
        "subscriber".into(),
        ProtocolVersion::V311,
        false,
    );
    let target = Target {
        session: subscriber.id,
        qos: QoS::AtLeastOnce,
        retain: false,
        identifiers: smallvec![],
        shared: false,
    };
    let targets = std::slice::from_ref(&target);
    let (one, two) = (published_on_shard_0(1), published_on_shard_0(2));

    shard_1.session(&subscriber, 3, None, &clock);
    shard_0.forwarded(1, 1, &one, targets, &clock);
    shard_0.forwarded(1, 2, &two, targets, &clock);
    shard_0.commit(now);
    // Shard 1 takes 1 and holds it: passed to itself as its number 1.
    shard_1.received(0, 1);
    shard_1.forwarded(1, 1, &one, targets, &clock);
    shard_1.commit(now);

    let recovered = recover(&*storage, dir, &clock, false, None).unwrap();
    let session = (recovered.sessions.iter())
        .find(|s| s.client_id == "subscriber")
        .unwrap();
    let queued: Vec<u8> = session.queued.iter().map(|(m, _)| m.payload[0]).collect();
    assert_eq!(queued, [1, 2]);
}
