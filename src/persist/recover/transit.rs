//! What shards passed each other, read back from every journal (`Forwarded`, `Received`,
//! `HeldDelivered`): what one shard passed and the other did not take is handed on.

use hashbrown::HashMap;
use std::path::Path;
use std::sync::Arc;

use super::{generation_of, shard_of, FileState, RecoveredSession};
use crate::persist::format::Delivery;
use crate::types::Message;

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

    /// Hands on what was passed and not taken, in the order it was passed; returns how
    /// many deliveries.
    pub(super) fn hand_on(self, sessions: &mut HashMap<String, RecoveredSession>) -> usize {
        let mut count = 0;
        for ((generation, from), mut forwards) in self.forwards {
            forwards.sort_by_key(|f| (f.0, f.1));
            for (to, number, message, targets) in forwards {
                let taken = self.received.get(&(generation, to, from)).copied();
                if taken.is_some_and(|taken| number <= taken) {
                    continue;
                }
                let delivered = (to == from)
                    .then(|| self.held_delivered.get(&(generation, from)))
                    .flatten()
                    .is_some_and(|set| set.contains(&number));
                if delivered {
                    continue;
                }
                for (key, delivery) in targets {
                    let Some((client_id, claim)) = self.keys.get(&(generation, key)) else {
                        continue;
                    };
                    // The session it was for, or the same one moved on (a later claim).
                    let Some(session) = sessions.get_mut(client_id) else {
                        continue;
                    };
                    if session.ended || session.claim < *claim {
                        continue;
                    }
                    session.queue_next(message.clone(), delivery);
                    count += 1;
                }
            }
        }
        count
    }
}

/// A message passed to another shard: to which, its number, the message, its targets.
pub(super) type PassedOn = (u16, u64, Arc<Message>, Vec<(u64, Delivery)>);
