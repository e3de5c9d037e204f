//! What shards passed each other, read back from every journal (`Forwarded`, `Received`,
//! `HeldDelivered`): what one shard passed and the other did not take is handed on.

use hashbrown::HashMap;
use std::path::Path;
use std::sync::Arc;

use super::{generation_of, shard_of, FileState, RecoveredSession};
use crate::persist::format::Delivery;
use crate::types::{Message, PublishOrder};

/// What shards passed each other, from every journal: a message one shard journaled as
/// passed to another that the other's journal does not show taken (a crash came between
/// the two writes) is handed on here. The sender's record and its publisher's
/// acknowledgement (and a QoS 2 packet id awaiting PUBREL) went to disk in the same turn,
/// and the receiver took the message only once that turn was on disk: so each
/// acknowledged message reaches its sessions once.
#[derive(Default)]
pub(super) struct Transit {
    /// (generation, from shard): what it passed on.
    forwards: Vec<((u64, u16), Vec<PassedOn>)>,
    /// (generation, to shard, from shard): the highest number taken.
    received: HashMap<(u64, u16, u16), u64>,
    /// (generation, shard): what it held for its settling sessions and delivered.
    held_delivered: HashMap<(u64, u16), hashbrown::HashSet<u64>>,
    /// (generation, session number): its client id and claim (the latest).
    keys: HashMap<(u64, u64), (String, u64)>,
}

impl Transit {
    pub(super) fn add(&mut self, path: &Path, file: &mut FileState) {
        let (Some(shard), Some(generation)) = (shard_of(path), generation_of(path)) else {
            return;
        };
        for (from, number) in file.received.drain() {
            let n = self.received.entry((generation, shard, from)).or_default();
            *n = (*n).max(number);
        }
        (self.held_delivered.entry((generation, shard)).or_default())
            .extend(file.held_delivered.drain());
        for (key, (client_id, claim)) in file.keys.drain() {
            let known = self.keys.entry((generation, key)).or_default();
            if claim >= known.1 {
                *known = (client_id, claim);
            }
        }
        self.forwards
            .push(((generation, shard), std::mem::take(&mut file.forwards)));
    }

    /// Hands on what was passed and not taken, to the end of each session's queue in its
    /// publishers' order; returns how many deliveries.
    ///
    /// A publisher's messages may have come by different routes (straight from its shard,
    /// through the shard its subscriber's session moved from, held where it settled), each
    /// taken up to a different point before the crash: the order of the routes is not
    /// theirs, so they are put back in the order they were published [MQTT-4.6.0-6]. (What
    /// a session had taken is older than what it had not, on every route.)
    pub(super) fn hand_on(self, sessions: &mut HashMap<String, RecoveredSession>) -> usize {
        let mut owed: HashMap<&str, Vec<Owed>> = HashMap::new();
        for ((generation, from), forwards) in &self.forwards {
            for passed in forwards {
                let taken = self.received.get(&(*generation, passed.to, *from)).copied();
                if taken.is_some_and(|taken| passed.number <= taken) {
                    continue;
                }
                let delivered = (passed.to == *from)
                    .then(|| self.held_delivered.get(&(*generation, *from)))
                    .flatten()
                    .is_some_and(|set| set.contains(&passed.number));
                if delivered {
                    continue;
                }
                // (A journal written before messages carried their order: by number.)
                let order = passed.order.unwrap_or(PublishOrder {
                    shard: *from,
                    number: passed.number,
                });
                for (key, delivery) in &passed.targets {
                    let Some((client_id, claim)) = self.keys.get(&(*generation, *key)) else {
                        continue;
                    };
                    // The session it was for, or the same one moved on (a later claim).
                    let Some(session) = sessions.get(client_id) else {
                        continue;
                    };
                    if session.ended || session.claim < *claim {
                        continue;
                    }
                    (owed.entry(client_id).or_default()).push(Owed {
                        order: (*generation, order),
                        passed,
                        delivery: delivery.clone(),
                    });
                }
            }
        }
        let mut count = 0;
        for (client_id, mut messages) in owed {
            messages.sort_by_key(|m| m.order);
            let session = sessions.get_mut(client_id).expect("looked up above");
            for m in messages {
                session.queue_next(m.passed.message.clone(), m.delivery);
                count += 1;
            }
        }
        count
    }
}

/// A message owed to a session: handed on in the order it was published (in its
/// generation).
struct Owed<'a> {
    order: (u64, PublishOrder),
    passed: &'a PassedOn,
    delivery: Delivery,
}

/// A message a shard passed to another (`to`; to itself: held for a session settling
/// there) as its `number`, published where `order` says, for `targets` there.
pub(super) struct PassedOn {
    pub to: u16,
    pub number: u64,
    pub order: Option<PublishOrder>,
    pub message: Arc<Message>,
    pub targets: Vec<(u64, Delivery)>,
}
