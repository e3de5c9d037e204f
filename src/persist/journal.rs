//! One shard's journal: the records of what changed, gathered over a loop turn and
//! appended in one write at its end (synced as `persistence_sync` says), and rewritten
//! compactly from the shard's live state when it has grown well past it.

use bytes::BytesMut;
use hashbrown::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Instant;

use super::format::{self, Delivery, Publisher, Record};
use super::{SyncPolicy, WallClock};
use crate::codec::{Packet, ProtocolVersion, Publish, QoS, Will};
use crate::retain::{Retained, Source};
use crate::session::{Change, Session, What};
use crate::types::{Message, SessionId, Target};

/// A journal is compacted once it is this large and four times its size after the last
/// compaction: the disk holds at most a few times the live state.
const COMPACT_MIN: u64 = 64 << 20;

pub struct Journal {
    path: PathBuf,
    file: File,
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
    /// Sessions written whole here (since the file began): their changes are journaled.
    sessions: HashSet<SessionId>,
    /// Writes that failed since the last one that worked (logged once per run of them).
    failures: u64,
    /// Compactions asked for (SIGUSR1) that this journal has done.
    pub compactions_done: u64,
}

/// A journal file's name in the store directory: `shard-<shard>-<generation>.journal`.
pub fn file_name(shard: usize, generation: u64) -> String {
    format!("shard-{shard}-{generation}.journal")
}

fn publish_bytes(message: &Message) -> bytes::Bytes {
    let publish = Publish {
        dup: false,
        qos: message.qos,
        retain: message.retain,
        topic: message.topic.clone(),
        // A placeholder: QoS 1/2 PUBLISH bytes need one. Deliveries number their own.
        packet_id: u16::from(message.qos != QoS::AtMostOnce),
        properties: message.properties.clone(),
        payload: message.payload.clone(),
    };
    Packet::Publish(publish)
        .to_bytes(ProtocolVersion::V5)
        .unwrap_or_default()
}

fn delivery(target: &Target) -> Delivery {
    Delivery {
        qos: target.qos as u8,
        retain: target.retain,
        identifiers: target.identifiers.to_vec(),
    }
}

impl Journal {
    /// A new, empty journal for `shard` in `dir`, of the store's `generation` (the files
    /// of earlier generations are removed once every shard has written its new one).
    pub fn create(
        dir: &Path,
        shard: usize,
        generation: u64,
        sync: SyncPolicy,
    ) -> io::Result<Journal> {
        let path = dir.join(file_name(shard, generation));
        replace_file(&path, &format::header())?;
        let size = format::HEADER_LEN as u64;
        Ok(Journal {
            file: OpenOptions::new().append(true).open(&path)?,
            path,
            pending: BytesMut::new(),
            size,
            compacted_size: size,
            sync,
            unsynced_since: None,
            messages: HashMap::new(),
            messages_swept: 0,
            next_message: 1,
            sessions: HashSet::new(),
            failures: 0,
            compactions_done: 0,
        })
    }

    /// The number `message` is written under, writing it first if this journal has not.
    fn message(&mut self, message: &Arc<Message>, clock: &WallClock) -> u64 {
        let address = Arc::as_ptr(message) as usize;
        if let Some((id, weak)) = self.messages.get(&address) {
            if weak.upgrade().is_some_and(|m| Arc::ptr_eq(&m, message)) {
                return *id;
            }
        }
        let id = self.next_message;
        self.next_message += 1;
        Record::Message {
            id,
            expires_at_ms: message.expires_at.map_or(0, |at| clock.unix_ms(at).max(1)),
            publish: publish_bytes(message),
        }
        .encode(&mut self.pending);
        self.messages.insert(address, (id, Arc::downgrade(message)));
        if self.messages.len() > 2 * self.messages_swept + 1024 {
            self.messages.retain(|_, (_, weak)| weak.strong_count() > 0);
            self.messages_swept = self.messages.len();
        }
        id
    }

    /// A session's change, if the session is journaled here.
    pub fn change(&mut self, change: &Change, clock: &WallClock) {
        let s = change.session;
        if !self.sessions.contains(&s) {
            return;
        }
        let session = s.0;
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
                message: self.message(message, clock),
                delivery: delivery(target),
            },
            What::Dequeued => Record::Dequeued { session },
            What::InFlight {
                packet_id,
                message,
                target,
            } => Record::InFlight {
                session,
                packet_id: *packet_id,
                message: self.message(message, clock),
                delivery: delivery(target),
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
                self.sessions.remove(&s);
                Record::Ended { session }
            }
        };
        record.encode(&mut self.pending);
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
        let id = session.id.0;
        self.sessions.insert(session.id);
        Record::Started {
            session: id,
            client_id: session.client_id.to_string(),
            claim,
            last_packet_id: session.outgoing().last_id(),
        }
        .encode(&mut self.pending);
        Record::Parameters {
            session: id,
            version: session.version as u8,
            expiry_interval_s: session.expiry_interval_s,
        }
        .encode(&mut self.pending);
        for (filter, sub) in session.subscriptions() {
            Record::Subscribed {
                session: id,
                filter: filter.to_string(),
                options: options_byte(&sub.options),
                identifier: sub.identifier.map_or(0, |i| i.get()),
            }
            .encode(&mut self.pending);
        }
        for f in session.outgoing().in_flight() {
            let message = self.message(&f.message, clock);
            Record::InFlight {
                session: id,
                packet_id: f.packet_id,
                message,
                delivery: Delivery {
                    qos: f.qos as u8,
                    retain: f.retain,
                    identifiers: f.identifiers.to_vec(),
                },
            }
            .encode(&mut self.pending);
            if f.released {
                Record::Released {
                    session: id,
                    packet_id: f.packet_id,
                }
                .encode(&mut self.pending);
            }
        }
        let queued: Vec<_> = session
            .outgoing()
            .queued()
            .map(|q| (q.message.clone(), delivery(&q.target), q.packet_id))
            .collect();
        for (message, delivery, packet_id) in queued {
            let message = self.message(&message, clock);
            Record::Queued {
                session: id,
                packet_id,
                message,
                delivery,
            }
            .encode(&mut self.pending);
        }
        for packet_id in session.incoming().awaiting_pubrel() {
            Record::AwaitingPubrel {
                session: id,
                packet_id,
            }
            .encode(&mut self.pending);
        }
        if let Some(at) = offline_since {
            self.disconnected(session.id, clock.unix_ms(at));
        }
        if let Some(waiting) = &session.delayed_will {
            self.will_waiting(session.id, waiting.0, &waiting.1, clock);
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
        if !self.sessions.contains(&session) {
            return;
        }
        let mut properties = will.properties.clone();
        // Kept as `due`; not a PUBLISH property.
        properties.will_delay_interval = None;
        let message = Arc::new(Message {
            topic: will.topic.clone(),
            payload: will.payload.clone(),
            qos: will.qos,
            retain: will.retain,
            properties,
            origin: None,
            expires_at: None,
        });
        let message = self.message(&message, clock);
        Record::WillWaiting {
            session: session.0,
            due_ms: clock.unix_ms(due),
            message,
        }
        .encode(&mut self.pending);
    }

    /// A journaled session's waiting will was published.
    pub fn will_gone(&mut self, session: SessionId) {
        if self.sessions.contains(&session) {
            Record::WillGone { session: session.0 }.encode(&mut self.pending);
        }
    }

    /// A journaled session's client went away at `at_ms`.
    pub fn disconnected(&mut self, session: SessionId, at_ms: u64) {
        if self.sessions.contains(&session) {
            Record::Disconnected {
                session: session.0,
                at_ms,
            }
            .encode(&mut self.pending);
        }
    }

    /// A session that left this shard (handed to another): no longer journaled here.
    pub fn forget(&mut self, session: SessionId) {
        self.sessions.remove(&session);
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
        if message.payload.is_empty() {
            Record::RetainedCleared {
                seq,
                topic: message.topic.to_string(),
            }
            .encode(&mut self.pending);
        } else {
            let message = self.message(message, clock);
            let source = source.map(|s| Publisher {
                client_id: s.client_id.to_string(),
                username: s.username.clone(),
                listener: s.listener as u32,
            });
            Record::Retained {
                seq,
                message,
                source,
            }
            .encode(&mut self.pending);
        }
    }

    /// Every retained message (with who published it), as of change `seq`.
    pub fn all_retained(&mut self, seq: u64, retained: &[Retained], clock: &WallClock) {
        Record::RetainedBaseline { seq }.encode(&mut self.pending);
        for (message, source) in retained {
            self.retained(seq, message, source.as_deref(), clock);
        }
    }

    /// Whether this turn changed anything.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Writes this turn's records, and syncs them if the policy says so now. An error is
    /// logged (once per run of failures) and the records are dropped: the broker goes on,
    /// without them on disk.
    pub fn commit(&mut self, now: Instant) {
        if !self.pending.is_empty() {
            let written = self.file.write_all(&self.pending);
            match written {
                Ok(()) => {
                    self.size += self.pending.len() as u64;
                    self.unsynced_since.get_or_insert(now);
                    self.succeeded();
                }
                Err(e) => self.failed("write", &e),
            }
            self.pending.clear();
            if self.pending.capacity() > 1 << 20 {
                self.pending = BytesMut::new();
            }
        }
        let due = match (self.sync, self.unsynced_since) {
            (_, None) | (SyncPolicy::Never, _) => false,
            (SyncPolicy::Always, Some(_)) => true,
            (SyncPolicy::Interval(every), Some(since)) => now.duration_since(since) >= every,
        };
        if due {
            match self.file.sync_data() {
                Ok(()) => self.unsynced_since = None,
                Err(e) => self.failed("sync", &e),
            }
        }
    }

    /// Syncs what was written, whatever the policy (at shutdown).
    pub fn sync_now(&mut self) {
        if let Err(e) = self.file.sync_data() {
            self.failed("sync", &e);
        }
        self.unsynced_since = None;
    }

    fn failed(&mut self, what: &str, e: &io::Error) {
        if self.failures == 0 {
            log::error!(
                "Error: persistence {what} to {} failed: {e}; changes from now on may be lost.",
                self.path.display()
            );
        }
        self.failures += 1;
    }

    fn succeeded(&mut self) {
        if self.failures > 0 {
            log::info!(
                target: "information",
                "Persistence writes to {} work again ({} failed).",
                self.path.display(),
                self.failures
            );
            self.failures = 0;
        }
    }

    /// Whether the journal has grown enough past its live state to be rewritten.
    pub fn wants_compaction(&self) -> bool {
        self.size >= COMPACT_MIN && self.size >= 4 * self.compacted_size
    }

    /// Starts the journal again with nothing in it but what follows (the caller writes the
    /// live state next, and `finish_compaction` puts the result in place). Records of this
    /// turn not yet committed go to the old file first.
    pub fn begin_compaction(&mut self, now: Instant) {
        self.commit(now);
        self.sessions.clear();
        self.messages.clear();
        self.messages_swept = 0;
    }

    /// Replaces the file with the live state written since `begin_compaction`, synced, then
    /// goes on appending to it.
    pub fn finish_compaction(&mut self) {
        let mut fresh = BytesMut::from(&format::header()[..]);
        fresh.extend_from_slice(&self.pending);
        self.pending.clear();
        match replace_file(&self.path, &fresh)
            .and_then(|_| OpenOptions::new().append(true).open(&self.path))
        {
            Ok(file) => {
                self.file = file;
                self.size = fresh.len() as u64;
                self.compacted_size = self.size;
                self.unsynced_since = None;
                log::info!(
                    target: "information",
                    "Compacted {} to {} bytes.",
                    self.path.display(),
                    self.size
                );
            }
            Err(e) => self.failed("compaction", &e),
        }
    }
}

/// The 5.0 subscription options byte.
fn options_byte(options: &crate::codec::SubscriptionOptions) -> u8 {
    options.qos as u8
        | u8::from(options.no_local) << 2
        | u8::from(options.retain_as_published) << 3
        | (options.retain_handling as u8) << 4
}

/// Writes `contents` to `path` through a temporary file, synced and renamed over it, the
/// directory synced too: the file is either the old one or the new one, whole.
fn replace_file(path: &Path, contents: &[u8]) -> io::Result<File> {
    let tmp = path.with_extension("journal.new");
    let mut file = File::create(&tmp)?;
    file.write_all(contents)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(file)
}
