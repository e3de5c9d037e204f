//! One shard's journal: the records of what changed, gathered over a loop turn and
//! appended in one write at its end (synced as `persistence_sync` says), and rewritten
//! compactly from the shard's live state when it has grown well past it.

use bytes::BytesMut;
use hashbrown::HashMap;
use std::collections::VecDeque;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Instant;

mod compaction;
mod disk;
mod failing;
mod transit;

use super::format::{self, options_byte, Delivery, Publisher, Record};
use super::storage::{replace_file, Storage, StoredFile};
use super::{SyncPolicy, WallClock};
use crate::codec::Will;
use crate::retain::{Retained, Source};
use crate::session::{Change, Session, What};
use crate::types::{Message, SessionId};
use compaction::{compaction_path, Compaction};

pub struct Journal {
    storage: Arc<dyn Storage>,
    path: PathBuf,
    file: Box<dyn StoredFile>,
    /// This turn's records, written by `commit`.
    pending: BytesMut,
    /// Bytes in the file.
    size: u64,
    /// The file's size after the last compaction.
    compacted_size: u64,
    sync: SyncPolicy,
    /// Since when a write waits for its sync (`SyncPolicy::Interval`).
    unsynced_since: Option<Instant>,
    /// Messages written, by address, with the number they were written under. The weak
    /// reference tells a live message from a later one at a reused address.
    messages: HashMap<usize, (u64, Weak<Message>)>,
    /// The size of `messages` after its last sweep of dead entries.
    messages_swept: usize,
    next_message: u64,
    /// Sessions written whole here (since the file began), with the claim they were
    /// written under (a rewrite writes them under it again): their changes are journaled.
    sessions: HashMap<SessionId, u64>,
    /// Set from a failed write or sync until the live state is written again.
    failing: Option<failing::Failing>,
    failures_total: u64,
    /// Compactions asked for (SIGUSR1) that this journal has done.
    pub compactions_done: u64,
    compaction: Compaction,
    /// Per shard: messages passed to it that it has not shown taken on its disk yet (kept
    /// for a compaction to write again).
    unsettled: Vec<VecDeque<Forward>>,
    /// Per shard: the highest number taken from it, and whether that changed this turn.
    received: Vec<(u64, bool)>,
    /// Per shard: sessions passed to it that it has not shown on its disk, each whole
    /// (`transit.rs`), with its number.
    handed: Vec<VecDeque<(u64, bytes::Bytes)>>,
}

/// A message passed to another shard: its number, the message, and its targets there.
type Forward = (u64, Arc<Message>, Vec<(u64, Delivery)>);

/// A journal file's name in the store directory: `shard-<shard>-<generation>.journal`.
pub fn file_name(shard: usize, generation: u64) -> String {
    format!("shard-{shard}-{generation}.journal")
}

/// Which files records go to: the journal, and (during a compaction) the new file.
#[derive(Clone, Copy)]
struct To {
    old: bool,
    new: bool,
}

impl To {
    /// The journal only.
    const OLD: To = To {
        old: true,
        new: false,
    };
    /// A compaction's new file only.
    const NEW: To = To {
        old: false,
        new: true,
    };
}

impl Journal {
    /// A new, empty journal for `shard` in `dir`, of the store's `generation` (the files
    /// of earlier generations are removed once every shard has written its new one).
    pub fn create(
        storage: Arc<dyn Storage>,
        dir: &Path,
        shard: usize,
        generation: u64,
        sync: SyncPolicy,
    ) -> io::Result<Journal> {
        let path = dir.join(file_name(shard, generation));
        let tmp = compaction_path(&path);
        let file = replace_file(&*storage, &path, &tmp, &format::header())?;
        let size = format::HEADER_LEN as u64;
        Ok(Journal {
            storage,
            file,
            path,
            pending: BytesMut::new(),
            size,
            compacted_size: size,
            sync,
            unsynced_since: None,
            messages: HashMap::new(),
            messages_swept: 0,
            next_message: 1,
            sessions: HashMap::new(),
            failing: None,
            failures_total: 0,
            compactions_done: 0,
            compaction: Compaction::None,
            unsettled: Vec::new(),
            received: Vec::new(),
            handed: Vec::new(),
        })
    }

    /// The number `message` is written under, writing it first into whichever of the
    /// files in `to` lacks it. A message has the same number in the journal and in a
    /// compaction's new file.
    fn message(&mut self, message: &Arc<Message>, to: To, clock: &WallClock) -> u64 {
        let address = Arc::as_ptr(message) as usize;
        let known = |map: &HashMap<usize, (u64, Weak<Message>)>| {
            let (id, weak) = map.get(&address)?;
            weak.upgrade()
                .is_some_and(|m| Arc::ptr_eq(&m, message))
                .then_some(*id)
        };
        let in_old = known(&self.messages);
        let in_new = self.compaction.fresh().and_then(known);
        let lacking = To {
            old: to.old && in_old.is_none(),
            new: to.new && in_new.is_none(),
        };
        let id = in_old.or(in_new).unwrap_or_else(|| {
            self.next_message += 1;
            self.next_message - 1
        });
        if !lacking.old && !lacking.new {
            return id;
        }
        let record = Record::Message {
            id,
            expires_at_ms: message.expires_at.map_or(0, |at| clock.unix_ms(at).max(1)),
            publish: message.publish_bytes().unwrap_or_default(),
        };
        self.emit(&record, lacking);
        let entry = (id, Arc::downgrade(message));
        if lacking.new {
            if let Some(fresh) = self.compaction.fresh_mut() {
                fresh.insert(address, entry.clone());
            }
        }
        if lacking.old {
            self.messages.insert(address, entry);
            if self.messages.len() > 2 * self.messages_swept + 1024 {
                self.messages.retain(|_, (_, weak)| weak.strong_count() > 0);
                self.messages_swept = self.messages.len();
            }
        }
        id
    }

    /// Appends `record` to this turn's records for the files in `to`.
    fn emit(&mut self, record: &Record, to: To) {
        let start = self.pending.len();
        if to.old {
            record.encode(&mut self.pending);
        }
        if let (true, Some(new)) = (to.new, self.compaction.pending_mut()) {
            if to.old {
                new.extend_from_slice(&self.pending[start..]);
            } else {
                record.encode(new);
            }
        }
    }

    /// Where records that are no session's go: the journal, and the new file of a
    /// compaction under way.
    fn everywhere(&self) -> To {
        To {
            old: true,
            new: self.compacting(),
        }
    }

    /// Where a session's records go: the journal if the session is journaled here, the
    /// compaction's new file if it has been written there already (a change while the
    /// journal is not durable marks the session: `failing.rs`).
    fn session_to(&mut self, session: SessionId) -> To {
        let to = To {
            old: self.sessions.contains_key(&session),
            new: self.compaction.has_session(session),
        };
        if to.old || to.new {
            self.touch(session);
        }
        to
    }

    /// A session's change, if the session is journaled here.
    pub fn change(&mut self, change: &Change, clock: &WallClock) {
        let s = change.session;
        let to = self.session_to(s);
        if !to.old && !to.new {
            return;
        }
        let session = s.get();
        let record = match &change.what {
            // Sessions are written whole when they arrive (`session`).
            What::Started { .. } => return,
            What::Parameters {
                version,
                expiry_interval_s,
            } => Record::Parameters {
                session,
                version: *version as u8,
                expiry_interval_s: *expiry_interval_s,
            },
            What::Subscribed {
                filter,
                options,
                identifier,
            } => Record::Subscribed {
                session,
                filter: filter.clone(),
                options: options_byte(options),
                identifier: identifier.unwrap_or(0),
            },
            What::Unsubscribed { filter } => Record::Unsubscribed {
                session,
                filter: filter.clone(),
            },
            What::Queued {
                message,
                target,
                packet_id,
            } => Record::Queued {
                session,
                packet_id: *packet_id,
                message: self.message(message, to, clock),
                delivery: Delivery::of(target),
            },
            What::Dequeued => Record::Dequeued { session },
            What::InFlight {
                packet_id,
                message,
                target,
            } => Record::InFlight {
                session,
                packet_id: *packet_id,
                message: self.message(message, to, clock),
                delivery: Delivery::of(target),
            },
            What::Released { packet_id } => Record::Released {
                session,
                packet_id: *packet_id,
            },
            What::Finished { packet_id } => Record::Finished {
                session,
                packet_id: *packet_id,
            },
            What::AwaitingPubrel { packet_id } => Record::AwaitingPubrel {
                session,
                packet_id: *packet_id,
            },
            What::PubrelReceived { packet_id } => Record::PubrelReceived {
                session,
                packet_id: *packet_id,
            },
            What::Ended => {
                self.emit(&Record::Ended { session }, to);
                self.forget(s);
                return;
            }
        };
        self.emit(&record, to);
    }

    /// Writes `session` whole, as of its client's claim `claim`; its changes are journaled
    /// from now on. `offline_since`: when its client went away, if it has.
    pub fn session(
        &mut self,
        session: &Session,
        claim: u64,
        offline_since: Option<Instant>,
        clock: &WallClock,
    ) {
        self.sessions.insert(session.id, claim);
        self.touch(session.id);
        let to = To {
            old: true,
            new: self.compaction.add_session(session.id),
        };
        self.write_session(session, claim, offline_since, clock, to);
    }

    /// `session` whole, into the files in `to`.
    fn write_session(
        &mut self,
        session: &Session,
        claim: u64,
        offline_since: Option<Instant>,
        clock: &WallClock,
        to: To,
    ) {
        let id = session.id.get();
        let record = Record::Started {
            session: id,
            client_id: session.client_id.to_string(),
            claim,
            last_packet_id: session.outgoing().last_id(),
        };
        self.emit(&record, to);
        let record = Record::Parameters {
            session: id,
            version: session.version as u8,
            expiry_interval_s: session.expiry_interval_s,
        };
        self.emit(&record, to);
        for (filter, sub) in session.subscriptions() {
            let record = Record::Subscribed {
                session: id,
                filter: filter.to_string(),
                options: options_byte(&sub.options),
                identifier: sub.identifier.map_or(0, |i| i.get()),
            };
            self.emit(&record, to);
        }
        for f in session.outgoing().in_flight() {
            let message = self.message(&f.message, to, clock);
            let record = Record::InFlight {
                session: id,
                packet_id: f.packet_id,
                message,
                delivery: Delivery {
                    qos: f.qos as u8,
                    retain: f.retain,
                    identifiers: f.identifiers.to_vec(),
                },
            };
            self.emit(&record, to);
            if f.released {
                let record = Record::Released {
                    session: id,
                    packet_id: f.packet_id,
                };
                self.emit(&record, to);
            }
        }
        for q in session.outgoing().queued() {
            let message = self.message(&q.message, to, clock);
            let record = Record::Queued {
                session: id,
                packet_id: q.packet_id,
                message,
                delivery: Delivery::of(&q.target),
            };
            self.emit(&record, to);
        }
        for packet_id in session.incoming().awaiting_pubrel() {
            let record = Record::AwaitingPubrel {
                session: id,
                packet_id,
            };
            self.emit(&record, to);
        }
        if let Some(at) = offline_since {
            let at_ms = clock.unix_ms(at);
            self.emit(&Record::Disconnected { session: id, at_ms }, to);
        }
        if let Some(waiting) = &session.delayed_will {
            self.will_waiting_to(session.id, waiting.0, &waiting.1, clock, to);
        }
    }

    /// A journaled session's will waits until `due` (its Will Delay Interval).
    pub fn will_waiting(
        &mut self,
        session: SessionId,
        due: Instant,
        will: &Will,
        clock: &WallClock,
    ) {
        let to = self.session_to(session);
        self.will_waiting_to(session, due, will, clock, to);
    }

    fn will_waiting_to(
        &mut self,
        session: SessionId,
        due: Instant,
        will: &Will,
        clock: &WallClock,
        to: To,
    ) {
        if !to.old && !to.new {
            return;
        }
        // Kept as `due`.
        let message = Arc::new(Message::of_waiting_will(will));
        let message = self.message(&message, to, clock);
        let record = Record::WillWaiting {
            session: session.get(),
            due_ms: clock.unix_ms(due),
            message,
        };
        self.emit(&record, to);
    }

    /// A journaled session's waiting will was published.
    pub fn will_gone(&mut self, session: SessionId) {
        let to = self.session_to(session);
        self.emit(
            &Record::WillGone {
                session: session.get(),
            },
            to,
        );
    }

    /// A journaled session's client went away at `at_ms`.
    pub fn disconnected(&mut self, session: SessionId, at_ms: u64) {
        let to = self.session_to(session);
        let record = Record::Disconnected {
            session: session.get(),
            at_ms,
        };
        self.emit(&record, to);
    }

    /// A session that left this shard (handed to another), or ended: no longer journaled.
    pub fn forget(&mut self, session: SessionId) {
        self.sessions.remove(&session);
        self.compaction.remove_session(session);
    }

    /// The retained message of a topic changed (`seq`: its order among all such changes;
    /// `source`: who published it, for `check_retain_source`).
    pub fn retained(
        &mut self,
        seq: u64,
        message: &Arc<Message>,
        source: Option<&Source>,
        clock: &WallClock,
    ) {
        self.retained_to(seq, message, source, clock, self.everywhere());
    }

    fn retained_to(
        &mut self,
        seq: u64,
        message: &Arc<Message>,
        source: Option<&Source>,
        clock: &WallClock,
        to: To,
    ) {
        if message.payload.is_empty() {
            let record = Record::RetainedCleared {
                seq,
                topic: message.topic.to_string(),
            };
            self.emit(&record, to);
        } else {
            let message = self.message(message, to, clock);
            let source = source.map(|s| Publisher {
                client_id: s.client_id.to_string(),
                username: s.username.clone(),
                listener: s.listener as u32,
            });
            let record = Record::Retained {
                seq,
                message,
                source,
            };
            self.emit(&record, to);
        }
    }

    /// Every retained message (with who published it), as of change `seq` (at start).
    pub fn all_retained(&mut self, seq: u64, retained: &[Retained], clock: &WallClock) {
        self.emit(&Record::RetainedBaseline { seq }, To::OLD);
        for (message, source) in retained {
            self.retained_to(seq, message, source.as_deref(), clock, To::OLD);
        }
    }

    /// The claim a session journaled here was written under.
    pub fn claim_of(&self, session: SessionId) -> Option<u64> {
        self.sessions.get(&session).copied()
    }

    /// Whether this turn changed anything.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }
}

#[cfg(test)]
mod tests;
