//! Opening the store at start: recovery reads it, each shard gets a new journal (of the
//! next generation) and its share of the sessions to write into it, and once every shard
//! has written and synced its journal the files read are removed. Until then the old
//! files stay: a crash in between reads both, which hold the same state.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use super::journal::Journal;
use super::mosquitto_db;
use super::recover::{self, Published, Recovered, RecoveredSession};
use super::storage::{sync_parent, Storage};
use super::WallClock;
use crate::config::Config;
use crate::retain::{Retained, Source};
use crate::shard::Shared;

/// What one shard starts with: its journal, its sessions, and (one shard) every retained
/// message with the number of the last retained change, to write into its journal.
pub struct ShardStore {
    pub journal: Journal,
    pub sessions: Vec<RecoveredSession>,
    pub retained: Option<(u64, Vec<Retained>)>,
}

pub struct Store {
    storage: Arc<dyn Storage>,
    dir: PathBuf,
    shards: Vec<Option<ShardStore>>,
    /// The retained messages, for the shared store; the number of the last change.
    pub retained: Vec<Retained>,
    pub last_retained_change: u64,
    /// The first claim number not used by any session read.
    pub next_claim: u64,
    /// The generation of the new journals (the marker names it once they are written).
    generation: u64,
    old_files: Vec<PathBuf>,
    counts: (usize, usize, usize),
    started: Instant,
    marker: PathBuf,
    /// The store was a Mosquitto database, read into the new journals: kept beside them
    /// once they are written, and the marker takes its place.
    imported: bool,
}

/// Reads the store (`persistence true`) from `storage` and makes each shard's new journal.
/// `Ok(None)` without persistence; an error names the file that could not be read or
/// written.
pub fn open(
    config: &Config,
    shards: usize,
    storage: Arc<dyn Storage>,
) -> io::Result<Option<Store>> {
    let (Some(dir), Some(marker)) = (config.persistence_dir(), config.persistence_marker()) else {
        return Ok(None);
    };
    let started = Instant::now();
    let (mut recovered, imported) = read_store(&*storage, config, &dir, &marker)?;
    (storage.create_dir_all(&dir))
        .map_err(|e| io::Error::other(format!("persistence: {}: {e}", dir.display())))?;
    drop_expired(&mut recovered.sessions, config);
    let counts = (
        recovered.retained.len(),
        recovered.sessions.len(),
        recovered.queued_messages(),
    );
    let parts = by_shard(recovered.sessions, shards);
    let last_retained_change = recovered.next_retained_seq.saturating_sub(1);
    let retained = with_sources(recovered.retained);
    let mut store = Store {
        storage: storage.clone(),
        shards: Vec::with_capacity(shards),
        retained,
        last_retained_change,
        next_claim: recovered.next_claim,
        generation: recovered.next_generation,
        old_files: recovered.files,
        counts,
        started,
        dir: dir.clone(),
        marker,
        imported,
    };
    for (shard, sessions) in parts.into_iter().enumerate() {
        let journal = Journal::create(
            storage.clone(),
            &dir,
            shard,
            recovered.next_generation,
            config.persistence_sync,
        )
        .map_err(|e| io::Error::other(format!("persistence: {}: {e}", dir.display())))?;
        let retained = (shard == 0).then(|| (last_retained_change, store.retained.clone()));
        store.shards.push(Some(ShardStore {
            journal,
            sessions,
            retained,
        }));
    }
    Ok(Some(store))
}

/// What the store at `dir` (or a Mosquitto database at `marker`) holds, and whether it
/// was Mosquitto's; damage noted is logged.
fn read_store(
    storage: &dyn Storage,
    config: &Config,
    dir: &Path,
    marker: &Path,
) -> io::Result<(Recovered, bool)> {
    let set_aside = config.persistence_on_damage_set_aside;
    let found = check_marker(storage, marker, dir)?;
    let imported = matches!(found, Found::Mosquitto(_));
    let recovered = match found {
        Found::Mosquitto(bytes) => import_mosquitto(storage, config, marker, &bytes, set_aside)?,
        Found::Midge { current } => recover::recover(storage, dir, &WallClock::now(), set_aside, current).map_err(|e| {
            io::Error::other(format!(
                "persistence: {e}. The store was left as it is; `persistence_on_damage set_aside` starts without the damaged file (kept beside it)."
            ))
        })?,
    };
    for note in &recovered.notes {
        log::warn!("Warning: persistence: {note}.");
    }
    Ok((recovered, imported))
}

/// Sessions whose expiry ran out while the broker was down end here. (One whose will
/// still waits is kept: it ends at the first turn, its will going then.)
fn drop_expired(sessions: &mut Vec<RecoveredSession>, config: &Config) {
    let now_ms = WallClock::now().current_unix_ms();
    let expiry = config.persistent_client_expiration;
    let before = sessions.len();
    sessions.retain(|s| !s.expired(now_ms, expiry) || s.delayed_will.is_some());
    if sessions.len() < before {
        log::info!(
            target: "information",
            "{} stored sessions expired while the broker was down.",
            before - sessions.len()
        );
    }
}

/// Each session to the shard its client id hashes to.
fn by_shard(sessions: Vec<RecoveredSession>, shards: usize) -> Vec<Vec<RecoveredSession>> {
    let mut parts: Vec<Vec<RecoveredSession>> = (0..shards).map(|_| Vec::new()).collect();
    for session in sessions {
        let mut hasher = DefaultHasher::new();
        session.client_id.hash(&mut hasher);
        parts[hasher.finish() as usize % shards].push(session);
    }
    parts
}

/// The retained messages read, each with its publisher as the shared store keeps it.
fn with_sources(retained: Vec<Published>) -> Vec<Retained> {
    (retained.into_iter())
        .map(|(message, publisher)| {
            let source = publisher.map(|p| {
                Arc::new(Source {
                    client_id: p.client_id.into(),
                    username: p.username,
                    listener: p.listener as usize,
                })
            });
            (message, source)
        })
        .collect()
}

impl Store {
    /// Shard `shard`'s part (once).
    /// The shard whose part holds the session of `client_id`, if any.
    pub fn holder_of(&self, client_id: &str) -> Option<usize> {
        self.shards.iter().position(|part| {
            part.as_ref()
                .is_some_and(|p| p.sessions.iter().any(|s| s.client_id == client_id))
        })
    }

    /// What every shard shares: the retained messages (whatever the bound, which counts
    /// them: they were acknowledged) and the claim numbers to go on from.
    pub fn share(&self, shared: &Shared) {
        let mut retained = shared.retained.lock().expect("retained lock");
        retained.restore(self.retained.clone(), self.last_retained_change);
        (shared.retained_bytes).store(retained.bytes(), Ordering::Relaxed);
        (shared.next_claim).store(self.next_claim, Ordering::Relaxed);
    }

    pub fn take_shard(&mut self, shard: usize) -> Option<ShardStore> {
        self.shards.get_mut(shard)?.take()
    }

    /// Every shard has written its journal: the marker is written (if it was not there),
    /// the files read go, and the log says what came back.
    pub fn finish(mut self) {
        let mut kept = None;
        if self.imported {
            match keep_imported(&*self.storage, &self.marker) {
                Ok(copy) => kept = Some(copy),
                Err(e) => log::error!(
                    "Error: persistence: cannot keep a copy of the Mosquitto database {}: {e}; it stays where it is and will be read again at the next start.",
                    self.marker.display()
                ),
            }
        }
        // The marker names the new generation before the files read go: if a crash lets only
        // some of the removals reach the disk, what is left of an older generation is not
        // read again (its shards' records of what they passed each other would no longer
        // match, and a message one took would be handed on to it again).
        if let Err(e) = write_marker(&*self.storage, &self.marker, self.generation) {
            log::error!(
                "Error: persistence: cannot write {}: {e}; the journals read stay in {} beside the new ones (read together, they hold the same state){}.",
                self.marker.display(),
                self.dir.display(),
                if self.storage.exists(&self.marker) {
                    ""
                } else {
                    "; without the marker they will be set aside at the next start"
                }
            );
            self.old_files.clear();
        }
        for file in &self.old_files {
            if let Err(e) = self.storage.remove(file) {
                log::warn!(
                    "Warning: persistence: could not remove {} (already restored): {e}.",
                    file.display()
                );
            }
        }
        // What recovery read was allocated on this thread, which allocates little from now
        // on: its freed pages go back to the system now rather than never.
        drop(self.shards);
        crate::os::release_freed_memory(true);
        let (retained, sessions, queued) = self.counts;
        let from = match &kept {
            Some(copy) => format!(
                "the Mosquitto database {} (kept as {}; midge's store is now in {})",
                self.marker.display(),
                copy.display(),
                self.dir.display()
            ),
            None => self.dir.display().to_string(),
        };
        log::info!(
            target: "information",
            "Restored {retained} retained messages, {sessions} sessions, {queued} queued messages from {from} in {} ms.",
            self.started.elapsed().as_millis()
        );
    }
}

/// Reads the Mosquitto database found where the store's marker goes. Damaged, it stops the
/// start, or with `set_aside` is renamed `<name>.damaged` and the broker starts empty.
fn import_mosquitto(
    storage: &dyn Storage,
    config: &Config,
    path: &Path,
    bytes: &[u8],
    set_aside: bool,
) -> io::Result<Recovered> {
    let ports: Vec<u16> = config.listeners.iter().map(|l| l.port).collect();
    match mosquitto_db::read(bytes, &ports, &WallClock::now()) {
        Ok(recovered) => Ok(recovered),
        Err(e) if set_aside => {
            let aside = path.with_extension("db.damaged");
            storage.rename(path, &aside)?;
            sync_parent(storage, &aside)?;
            log::error!(
                "Error: persistence: the Mosquitto database {}: {e}; set aside as {}, starting without what it held.",
                path.display(),
                aside.display()
            );
            Ok(Recovered {
                next_generation: 1,
                ..Default::default()
            })
        }
        Err(e) => Err(io::Error::other(format!(
            "persistence: the Mosquitto database {}: {e}. It was left as it is; `persistence_on_damage set_aside` starts without it (kept beside it).",
            path.display()
        ))),
    }
}

/// Keeps the imported Mosquitto database as `<name>.imported` (another name if that is
/// taken) before the marker replaces it: linked, so both names hold it until the marker's
/// rename, and a crash in between imports it again at the next start.
fn keep_imported(storage: &dyn Storage, db: &Path) -> io::Result<PathBuf> {
    let mut copy = db.with_extension("db.imported");
    if storage.exists(&copy) {
        let unix_ms = WallClock::now().current_unix_ms();
        copy = db.with_extension(format!("db.imported-{unix_ms}"));
    }
    storage.link_or_copy(db, &copy)?;
    Ok(copy)
}

/// What the file at the marker's place says the store is.
enum Found {
    /// midge's journals (or none yet); `current`: the generation the marker names (older
    /// journals are leftovers, not read).
    Midge { current: Option<u64> },
    /// A Mosquitto database (its bytes), to take over.
    Mosquitto(Vec<u8>),
}

/// The marker says whether the journal directory is the store: present and midge's, it is;
/// absent, or replaced by a Mosquitto database, a directory left there is from a store that
/// was removed (set aside, not read); anything else there is an error.
fn check_marker(storage: &dyn Storage, marker: &Path, dir: &Path) -> io::Result<Found> {
    let found = match storage.read(marker) {
        Ok(bytes) if bytes.starts_with(b"MIDGE") => {
            let current = marked_generation(&bytes).map_err(|what| {
                io::Error::other(format!(
                    "persistence: {}: {what}; it was left as it is (the text midge writes there, with a line `generation: N CRC` naming the newest journals in {}, or without the line to read them all)",
                    marker.display(),
                    dir.display()
                ))
            })?;
            return Ok(Found::Midge { current });
        }
        Ok(bytes) if mosquitto_db::is_mosquitto_db(&bytes) => Found::Mosquitto(bytes),
        Ok(_) => {
            return Err(io::Error::other(format!(
                "persistence: {} is neither midge's store nor a Mosquitto database; move it aside, or set persistence_file to another name",
                marker.display()
            )))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Found::Midge { current: None },
        Err(e) => {
            return Err(io::Error::other(format!(
                "persistence: {}: {e}",
                marker.display()
            )))
        }
    };
    if storage.exists(dir) {
        let unix_ms = WallClock::now().current_unix_ms();
        let aside = dir.with_extension(format!("d.removed-{unix_ms}"));
        storage.rename(dir, &aside)?;
        let why = match found {
            Found::Midge { .. } => "was removed",
            Found::Mosquitto(_) => "is a Mosquitto database now",
        };
        log::warn!(
            "Warning: persistence: {} {why}, so the journals in {} are not read; set aside as {}.",
            marker.display(),
            dir.display(),
            aside.display()
        );
    }
    Ok(found)
}

/// The marker's text: what it is, and the generation of the journals that hold the store
/// with a checksum of the number (a bit flipped in it must not make the journals look like
/// leftovers).
fn write_marker(storage: &dyn Storage, marker: &Path, generation: u64) -> io::Result<()> {
    let tmp = marker.with_extension("midge-new");
    let text = format!("{}{}", super::MARKER_TEXT, generation_line(generation));
    super::storage::replace_file(storage, marker, &tmp, text.as_bytes())?;
    Ok(())
}

const GENERATION: &str = "generation: ";

/// The generation a marker names (none in a marker written before midge named them); an
/// error if the marker is not exactly what midge writes (a bit flipped anywhere in it).
fn marked_generation(marker: &[u8]) -> Result<Option<u64>, String> {
    let damaged = || "it is not the marker midge writes (damaged?)".to_string();
    let rest = (marker.strip_prefix(super::MARKER_TEXT.as_bytes())).ok_or_else(damaged)?;
    if rest.is_empty() {
        return Ok(None);
    }
    let line = std::str::from_utf8(rest).map_err(|_| damaged())?;
    let number = (line.strip_prefix(GENERATION))
        .and_then(|l| l.split_once(' '))
        .and_then(|(number, _)| number.parse::<u64>().ok())
        .ok_or_else(damaged)?;
    // Exactly the line midge writes for that number (its checksum in lower-case hex).
    if line != generation_line(number) {
        return Err(damaged());
    }
    Ok(Some(number))
}

/// The marker's last line, naming generation `number` with its checksum.
fn generation_line(number: u64) -> String {
    let text = number.to_string();
    let check = crc32c::crc32c(text.as_bytes());
    format!("{GENERATION}{text} {check:08x}\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::persist::storage::sim::SimStorage;

    /// Journals older than the generation the marker names are leftovers, not read, when
    /// journals of that generation are there; when none is (journals put back from a
    /// copy), every journal is read, and the log says so.
    #[test]
    fn older_journals_are_leftovers_only_beside_the_marked_generation() {
        let storage = Arc::new(SimStorage::new(1));
        let dir = Path::new("/s/mosquitto.db.d");
        storage.create_dir_all(dir).unwrap();
        let message = Arc::new(crate::types::Message {
            topic: crate::codec::MqttStr::from_static("t"),
            payload: bytes::Bytes::from_static(b"kept"),
            qos: crate::codec::QoS::AtMostOnce,
            retain: true,
            properties: Default::default(),
            origin: None,
            expires_at: None,
            order: Default::default(),
            stream: Default::default(),
        });
        let sync = crate::persist::SyncPolicy::Always;
        let mut old = Journal::create(storage.clone(), dir, 0, 3, sync).unwrap();
        old.all_retained(1, &[(message, None)], &WallClock::now());
        old.commit(Instant::now());
        let read = |current| recover::recover(&*storage, dir, &WallClock::now(), false, current);
        let all = read(Some(9)).unwrap();
        assert_eq!(all.retained.len(), 1);
        assert!(
            all.notes.iter().any(|n| n.contains("every journal")),
            "{:?}",
            all.notes
        );
        Journal::create(storage.clone(), dir, 0, 9, sync).unwrap();
        let current = read(Some(9)).unwrap();
        assert!(current.retained.is_empty());
        assert!(current.notes.is_empty(), "{:?}", current.notes);
        assert_eq!(
            current.files.len(),
            2,
            "the leftover goes with the files read"
        );
    }

    /// The marker names the generation it was written with; a marker of an older midge
    /// (its text alone) names none; any bit flipped in it is damage, not another number.
    #[test]
    fn the_marker_names_its_generation_and_any_flipped_bit_is_damage() {
        let storage = SimStorage::new(1);
        storage.create_dir_all(Path::new("/s")).unwrap();
        let marker = Path::new("/s/mosquitto.db");
        write_marker(&storage, marker, 12).unwrap();
        let bytes = storage.read(marker).unwrap();
        assert_eq!(marked_generation(&bytes), Ok(Some(12)));
        assert_eq!(
            marked_generation(crate::persist::MARKER_TEXT.as_bytes()),
            Ok(None)
        );
        for bit in 0..bytes.len() * 8 {
            let mut flipped = bytes.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert!(marked_generation(&flipped).is_err(), "bit {bit}");
        }
    }
}
