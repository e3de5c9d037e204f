//! Reading the store at start: every journal in the directory (of any shard count and
//! generation), merged into the retained messages and the sessions to give back.
//!
//! - A client id's session is the one written under its highest claim, in whichever
//!   journal: a client that moved between shards was written whole by the shard it moved
//!   to, under a later claim. If that latest record ended the session, it has none.
//! - Retained messages: the latest `RetainedBaseline` over all journals holds them all as
//!   of its change number; changes with a higher number, in any journal, apply after it.

use bytes::Bytes;
use hashbrown::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

mod session;
#[cfg(test)]
mod tests;
mod transit;

pub use session::{InFlight, RecoveredSession};

use super::format::{self, Publisher, Record};
use super::storage::{sync_parent, Storage};
use super::WallClock;
use crate::codec::QoS;
use crate::types::Message;
use transit::{PassedOn, Transit};

/// What the store held.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Retained messages, with who published them.
    pub retained: Vec<Published>,
    /// The number the next retained change takes (past every one read).
    pub next_retained_seq: u64,
    pub sessions: Vec<RecoveredSession>,
    /// The journal files read (removed once the shards have written new ones).
    pub files: Vec<PathBuf>,
    /// The generation new journals take (past every one read).
    pub next_generation: u64,
    /// The first claim number past every one read (ended sessions' too).
    pub next_claim: u64,
    /// What was left out, for the log: torn last records.
    pub notes: Vec<String>,
}

impl Recovered {
    pub fn queued_messages(&self) -> usize {
        self.sessions
            .iter()
            .map(|s| s.queued.len() + s.in_flight.len())
            .sum()
    }
}

/// A retained message and who published it.
pub type Published = (Arc<Message>, Option<Publisher>);

/// One retained change read.
struct RetainedChange {
    seq: u64,
    topic: String,
    message: Option<Published>,
}

/// Reads every journal in `dir` (none, or no directory: an empty store) of generation
/// `current` (what the store's marker names) or later; older ones are leftovers of a start
/// whose removals a crash cut short, removed with the files read. An unreadable or damaged
/// journal is an error naming it, unless `set_aside`: then it is renamed to
/// `<name>.damaged` (kept, never read again) and the others are read.
pub fn recover(
    storage: &dyn Storage,
    dir: &Path,
    clock: &WallClock,
    set_aside: bool,
    current: Option<u64>,
) -> Result<Recovered, String> {
    let mut recovered = Recovered {
        next_generation: 1,
        ..Default::default()
    };
    let all = match storage.list(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(recovered),
        Err(e) => return Err(format!("{}: {e}", dir.display())),
    };
    let files = recovered.journals_to_read(all, current, dir);
    let mut sessions: HashMap<String, RecoveredSession> = HashMap::new();
    let mut retained = Vec::new();
    let mut transit = Transit::default();
    let mut baseline = 0;
    for path in &files {
        let Some(mut file) = recovered.read_journal(storage, path, clock, set_aside)? else {
            continue;
        };
        recovered.next_claim = recovered.next_claim.max(file.max_claim + 1);
        transit.add(path, &mut file);
        for session in file.sessions.into_values() {
            let newer = sessions
                .get(&session.client_id)
                .is_none_or(|known| session.claim > known.claim);
            if newer {
                sessions.insert(session.client_id.clone(), session);
            }
        }
        baseline = baseline.max(file.baseline);
        retained.extend(file.retained);
    }
    recovered.keep_latest_retained(retained, baseline);
    let handed_on = transit.hand_on(&mut sessions);
    if handed_on > 0 {
        recovered.notes.push(format!(
            "handed on {handed_on} deliveries that one shard had passed to another and the other had not written yet"
        ));
    }
    recovered.sessions = sessions.into_values().filter(|s| !s.ended).collect();
    // In an order of their own (not the hash map's): a start is the same every time.
    recovered
        .sessions
        .sort_by(|a, b| a.client_id.cmp(&b.client_id));
    (recovered.retained).sort_by(|a, b| a.0.topic.as_str().cmp(b.0.topic.as_str()));
    Ok(recovered)
}

impl Recovered {
    /// Of the files in the store's directory, the journals to read, in order; the others
    /// to remove once the new journals are written go to `files` (a compaction's
    /// unfinished `*.journal.new`, journals older than the marker's generation), and
    /// `next_generation` moves past every generation seen or named.
    fn journals_to_read(
        &mut self,
        all: Vec<PathBuf>,
        current: Option<u64>,
        dir: &Path,
    ) -> Vec<PathBuf> {
        // A compaction's unfinished file (`*.journal.new`, a crash cut it short) is never
        // read: its journal holds everything. It goes with the files read.
        self.files = (all.iter())
            .filter(|p| p.to_string_lossy().ends_with(".journal.new"))
            .cloned()
            .collect();
        let journals: Vec<PathBuf> = (all.into_iter())
            .filter(|p| p.extension().is_some_and(|x| x == "journal"))
            .collect();
        // Older journals are leftovers only beside those of the generation the marker
        // names; without any of those (journals put back from a copy, say), every one is
        // read.
        let current = current.filter(|&marked| {
            let present = journals.iter().any(|p| generation_of(p) >= Some(marked));
            if !present && !journals.is_empty() {
                self.notes.push(format!(
                    "the store's marker names journals of generation {marked}, and {} has none: every journal there is read",
                    dir.display()
                ));
            }
            present
        });
        let (mut files, left_over): (Vec<PathBuf>, Vec<PathBuf>) = (journals.into_iter())
            .partition(|p| generation_of(p).is_none_or(|g| g >= current.unwrap_or(0)));
        // New journals are numbered past every generation seen or named: never below the
        // marker's, whatever was removed.
        for path in left_over.iter().chain(&files) {
            if let Some(generation) = generation_of(path) {
                self.next_generation = self.next_generation.max(generation + 1);
            }
        }
        self.next_generation = self.next_generation.max(current.unwrap_or(0) + 1);
        self.files.extend(left_over);
        files.sort();
        files
    }

    /// One journal replayed, noted in `files` (removed once the new journals are written);
    /// `None` if it could not be read and was set aside.
    fn read_journal(
        &mut self,
        storage: &dyn Storage,
        path: &Path,
        clock: &WallClock,
        set_aside: bool,
    ) -> Result<Option<FileState>, String> {
        let bytes = match storage.read(path) {
            Ok(bytes) => Bytes::from(bytes),
            Err(e) if set_aside => {
                let e = e.to_string();
                set_aside_damaged(storage, path, &e, "starting without what it held")?;
                return Ok(None);
            }
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let (file, read) = replay(&bytes, clock);
        match read {
            Ok(0) => self.files.push(path.to_path_buf()),
            Ok(torn_bytes) => {
                self.notes.push(format!(
                    "left out a torn last record ({torn_bytes} bytes) of {}",
                    path.display()
                ));
                self.files.push(path.to_path_buf());
            }
            // What it held before the damage is kept (written into the new journals); the
            // file stays aside, never removed.
            Err(damage) if set_aside => {
                let kept = format!(
                    "starting with what it held before that byte; the {} bytes from there on (about {} turns) were not read",
                    bytes.len() - damage.at,
                    damage.turns_after
                );
                set_aside_damaged(storage, path, &damage.to_string(), &kept)?;
            }
            Err(damage) => return Err(format!("{}: {damage}", path.display())),
        }
        Ok(Some(file))
    }

    /// Retained: from the latest baseline on, the highest change number of each topic,
    /// unexpired.
    fn keep_latest_retained(&mut self, mut retained: Vec<RetainedChange>, baseline: u64) {
        retained.retain(|c: &RetainedChange| c.seq >= baseline);
        retained.sort_by_key(|c| c.seq);
        self.next_retained_seq = retained.last().map_or(baseline, |c| c.seq) + 1;
        let mut by_topic: HashMap<String, Option<Published>> = HashMap::new();
        for change in retained {
            by_topic.insert(change.topic, change.message);
        }
        let now = std::time::Instant::now();
        self.retained = by_topic
            .into_values()
            .flatten()
            .filter(|(m, _)| m.expires_at.is_none_or(|at| at > now))
            .collect();
    }
}

/// `persistence_on_damage set_aside`: the damaged journal is renamed `<name>.damaged`, kept
/// for whoever looks into it, and never read again.
fn set_aside_damaged(
    storage: &dyn Storage,
    path: &Path,
    e: &str,
    kept: &str,
) -> Result<(), String> {
    let mut aside = path.with_extension("journal.damaged");
    if storage.exists(&aside) {
        // One set aside before is kept too.
        let unix_ms = WallClock::now().current_unix_ms();
        aside = path.with_extension(format!("journal.damaged-{unix_ms}"));
    }
    (storage.rename(path, &aside))
        .and_then(|()| sync_parent(storage, &aside))
        .map_err(|r| format!("{}: {e}; setting it aside failed: {r}", path.display()))?;
    log::error!(
        "Error: persistence: {}: {e}; set aside as {}, {kept}.",
        path.display(),
        aside.display()
    );
    Ok(())
}

/// `shard-<n>-<generation>.journal`'s shard.
fn shard_of(path: &Path) -> Option<u16> {
    let stem = path.file_stem()?.to_str()?;
    stem.strip_prefix("shard-")?.split('-').next()?.parse().ok()
}

/// `shard-<n>-<generation>.journal`'s generation.
fn generation_of(path: &Path) -> Option<u64> {
    let stem = path.file_stem()?.to_str()?;
    stem.rsplit('-').next()?.parse().ok()
}

/// One journal's records, applied in order.
#[derive(Default)]
struct FileState {
    /// What this shard passed to other shards.
    forwards: Vec<PassedOn>,
    /// Per shard that passed messages here: the highest number taken.
    received: HashMap<u16, u64>,
    /// Messages this shard held for its settling sessions that it delivered (by number).
    held_delivered: hashbrown::HashSet<u64>,
    /// Every session number this journal started, with its client id and claim.
    keys: HashMap<u64, (String, u64)>,
    /// By client id: the latest session of each (ended ones included, to outrank an older
    /// copy in another journal).
    sessions: HashMap<String, RecoveredSession>,
    baseline: u64,
    retained: Vec<RetainedChange>,
    max_claim: u64,
}

/// One journal's records, applied as they are read: its state, and its torn tail's length
/// or where it is damaged (the state then holds the turns before the damage).
fn replay(file: &Bytes, clock: &WallClock) -> (FileState, Result<usize, format::Damage>) {
    let mut state = FileState::default();
    let mut messages: HashMap<u64, Arc<Message>> = HashMap::new();
    // The journal's session numbers, to client ids.
    let mut keys: HashMap<u64, String> = HashMap::new();
    let message = |messages: &HashMap<u64, Arc<Message>>, id: u64| {
        messages
            .get(&id)
            .cloned()
            .ok_or_else(|| format!("a record names message {id}, which was never written"))
    };
    let read = format::read_each(file, |record| {
        match record {
            Record::Message {
                id,
                expires_at_ms,
                publish,
            } => {
                messages.insert(id, Arc::new(decode_message(publish, expires_at_ms, clock)?));
            }
            Record::Retained {
                seq,
                message: id,
                source,
            } => {
                let m = message(&messages, id)?;
                state.retained.push(RetainedChange {
                    seq,
                    topic: m.topic.to_string(),
                    message: Some((m, source)),
                });
            }
            Record::RetainedCleared { seq, topic } => state.retained.push(RetainedChange {
                seq,
                topic,
                message: None,
            }),
            Record::RetainedBaseline { seq } => state.baseline = state.baseline.max(seq),
            Record::Started {
                session: key,
                client_id,
                claim,
                last_packet_id,
            } => {
                state.max_claim = state.max_claim.max(claim);
                keys.insert(key, client_id.clone());
                state.keys.insert(key, (client_id.clone(), claim));
                let started = RecoveredSession::started(client_id.clone(), claim, last_packet_id);
                state.sessions.insert(client_id, started);
            }
            Record::Parameters {
                session: key,
                version,
                expiry_interval_s,
            } => {
                session_mut(&keys, &mut state.sessions, key)?.parameters(version, expiry_interval_s)
            }
            Record::Subscribed {
                session: key,
                filter,
                options,
                identifier,
            } => session_mut(&keys, &mut state.sessions, key)?
                .subscribed(filter, options, identifier),
            Record::Unsubscribed {
                session: key,
                filter,
            } => session_mut(&keys, &mut state.sessions, key)?.unsubscribed(&filter),
            Record::Queued {
                session: key,
                packet_id,
                message: id,
                delivery,
            } => {
                let m = message(&messages, id)?;
                session_mut(&keys, &mut state.sessions, key)?.queued(m, delivery, packet_id);
            }
            Record::Dequeued { session: key } => {
                session_mut(&keys, &mut state.sessions, key)?.dequeued()
            }
            Record::InFlight {
                session: key,
                packet_id,
                message: id,
                delivery,
            } => {
                let m = message(&messages, id)?;
                session_mut(&keys, &mut state.sessions, key)?.in_flight(packet_id, m, delivery);
            }
            Record::Released {
                session: key,
                packet_id,
            } => session_mut(&keys, &mut state.sessions, key)?.released(packet_id),
            Record::Finished {
                session: key,
                packet_id,
            } => session_mut(&keys, &mut state.sessions, key)?.finished(packet_id),
            Record::AwaitingPubrel {
                session: key,
                packet_id,
            } => session_mut(&keys, &mut state.sessions, key)?.awaiting_pubrel(packet_id),
            Record::PubrelReceived {
                session: key,
                packet_id,
            } => session_mut(&keys, &mut state.sessions, key)?.pubrel_received(packet_id),
            Record::Disconnected {
                session: key,
                at_ms,
            } => session_mut(&keys, &mut state.sessions, key)?.offline_since_ms = Some(at_ms),
            Record::WillWaiting {
                session: key,
                due_ms,
                message: id,
            } => {
                let m = message(&messages, id)?;
                session_mut(&keys, &mut state.sessions, key)?.delayed_will = Some((due_ms, m));
            }
            Record::WillGone { session: key } => {
                session_mut(&keys, &mut state.sessions, key)?.delayed_will = None
            }
            Record::Forwarded {
                to_shard,
                number,
                order,
                message: id,
                targets,
            } => {
                let message = message(&messages, id)?;
                state.forwards.push(PassedOn {
                    to: to_shard,
                    number,
                    order,
                    message,
                    targets,
                });
            }
            Record::Received { from_shard, number } => {
                let n = state.received.entry(from_shard).or_default();
                *n = (*n).max(number);
            }
            Record::HeldDelivered { number } => {
                state.held_delivered.insert(number);
            }
            // Turns are put together by the reader.
            Record::TurnEnd => {}
            Record::Ended { session: key } => {
                session_mut(&keys, &mut state.sessions, key)?.end();
                keys.remove(&key);
            }
        }
        Ok(())
    });
    (state, read)
}

/// The session a record is about (`Started` made it).
fn session_mut<'a>(
    keys: &HashMap<u64, String>,
    sessions: &'a mut HashMap<String, RecoveredSession>,
    key: u64,
) -> Result<&'a mut RecoveredSession, String> {
    let client = keys
        .get(&key)
        .ok_or_else(|| format!("a record names session {key}, which never started"))?;
    Ok(sessions.get_mut(client).expect("started sessions are kept"))
}

/// A message from its 5.0 PUBLISH bytes.
pub(super) fn decode_message(
    publish: Bytes,
    expires_at_ms: u64,
    clock: &WallClock,
) -> Result<Message, String> {
    let expires_at = (expires_at_ms != 0).then(|| clock.instant(expires_at_ms));
    Message::from_publish_bytes(&publish, format::RECORD_MAX, expires_at)
        .map_err(|e| format!("a message record: {e}"))
}

/// QoS from a delivery's byte.
pub fn qos(byte: u8) -> QoS {
    QoS::from_u8(byte).unwrap_or(QoS::AtLeastOnce)
}
