//! Simulated storage for the deterministic simulation (`tests/simulation.rs`), as
//! FoundationDB and TigerBeetle test theirs: files in memory that keep what was synced
//! apart from what was only written, and, by seed, the faults of real disks:
//!
//! - a crash at any operation: what was not synced is lost, except perhaps a prefix of it,
//!   with zeros after it (a torn write); names not synced with their directory survive only
//!   as a prefix of the changes made since (a rename is one change);
//! - writes that fail with EIO (after writing a part, or not), and a full disk: ENOSPC once
//!   the space given runs out, after writing what fitted;
//! - syncs that fail with EIO, after which the pages they were to write are lost even if a
//!   later sync succeeds (the page cache marked them clean: PostgreSQL's fsync lesson);
//! - bits flipped in what a read returns.
//!
//! Everything is decided by its own random numbers from the seed: a run replays exactly.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use super::{BackgroundSync, Storage, StoredFile};

const EIO: i32 = 5;
const ENOSPC: i32 = 28;

/// Faults to inject; in thousandths of the operations of a kind.
#[derive(Clone, Copy, Debug, Default)]
pub struct Faults {
    pub write_eio: u32,
    pub sync_eio: u32,
    /// Reads that return one bit flipped.
    pub read_flip: u32,
    /// The bytes the files may hold in all (`None`: no limit); ENOSPC past it.
    pub capacity: Option<u64>,
}

/// What was injected, for the simulation's report.
#[derive(Clone, Copy, Debug, Default)]
pub struct Injected {
    pub crashes: u64,
    pub torn_writes: u64,
    pub write_failures: u64,
    pub full_disk: u64,
    pub sync_failures: u64,
    pub flips: u64,
}

#[derive(Default)]
struct Inode {
    /// What a read returns (the page cache).
    data: Vec<u8>,
    /// What is on the disk: survives a crash.
    durable: Vec<u8>,
    /// `data` from here on is not on the disk (`durable` agrees with it before).
    dirty_from: usize,
    open: usize,
}

/// What a crash left on the disk: its names, and each inode's contents.
type Image = (BTreeMap<PathBuf, usize>, Vec<Vec<u8>>);

/// A change of names in a directory, not synced yet: (name, the inode it now names).
type NameChange = (PathBuf, Vec<(PathBuf, Option<usize>)>);

#[derive(Default)]
struct Disk {
    inodes: Vec<Inode>,
    names: BTreeMap<PathBuf, usize>,
    durable_names: BTreeMap<PathBuf, usize>,
    /// Name changes since their directory's last sync, in order.
    unsynced_names: Vec<NameChange>,
    dirs: BTreeSet<PathBuf>,
    faults: Faults,
    rng: u64,
    /// Mutating operations so far, and the one at which the machine crashes.
    ops: u64,
    crash_at: Option<u64>,
    /// After a crash, what the disk holds (names, contents) until `restart`.
    crashed: Option<Image>,
    injected: Injected,
    /// Where flipped bits were put: (path, byte).
    flipped: Vec<(PathBuf, usize)>,
    /// Restarts so far: files opened before the last one are the dead process's.
    boot: u64,
}

/// A handle on one simulated disk (clones share it).
#[derive(Clone, Default)]
pub struct SimStorage(Arc<Mutex<Disk>>);

fn error(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

fn parent(path: &Path) -> PathBuf {
    path.parent().map(Path::to_path_buf).unwrap_or_default()
}

impl Disk {
    fn random(&mut self) -> u64 {
        // splitmix64
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.random() % n
        }
    }

    fn per_mille(&mut self, p: u32) -> bool {
        p > 0 && self.below(1000) < u64::from(p)
    }

    /// Counts a mutating operation: an error if the machine has crashed, or crashes now.
    fn operation(&mut self) -> io::Result<()> {
        if self.crashed.is_some() {
            return Err(error(EIO));
        }
        self.ops += 1;
        if self.crash_at.is_some_and(|at| self.ops >= at) {
            self.crash();
            return Err(error(EIO));
        }
        Ok(())
    }

    /// What a crash now leaves on the disk.
    fn crash(&mut self) {
        self.crash_at = None;
        self.injected.crashes += 1;
        let mut contents = Vec::with_capacity(self.inodes.len());
        for i in 0..self.inodes.len() {
            let (dirty_from, len, durable_len) = {
                let inode = &self.inodes[i];
                (inode.dirty_from, inode.data.len(), inode.durable.len())
            };
            // Cut back since its last sync, and that never reached the disk: the old file.
            if durable_len > dirty_from && self.below(2) == 0 {
                contents.push(self.inodes[i].durable.clone());
                continue;
            }
            let unsynced = (len - dirty_from) as u64;
            let kept = self.below(unsynced + 1) as usize;
            let zeros = self.below(unsynced - kept as u64 + 1) as usize;
            if kept + zeros > 0 {
                self.injected.torn_writes += 1;
            }
            let inode = &self.inodes[i];
            let mut image = inode.durable[..dirty_from].to_vec();
            image.extend_from_slice(&inode.data[dirty_from..dirty_from + kept]);
            image.resize(image.len() + zeros, 0);
            contents.push(image);
        }
        let mut names = self.durable_names.clone();
        let survive = self.below(self.unsynced_names.len() as u64 + 1) as usize;
        for (_, changes) in &self.unsynced_names[..survive] {
            apply(&mut names, changes);
        }
        self.crashed = Some((names, contents));
    }

    fn name(&mut self, changes: Vec<(PathBuf, Option<usize>)>) {
        apply(&mut self.names, &changes);
        let dir = parent(&changes[0].0);
        self.unsynced_names.push((dir, changes));
    }

    /// Bytes the files hold (those named or open).
    fn used(&self) -> u64 {
        let named: BTreeSet<usize> = self.names.values().copied().collect();
        (self.inodes.iter().enumerate())
            .filter(|(i, inode)| inode.open > 0 || named.contains(i))
            .map(|(_, inode)| inode.data.len() as u64)
            .sum()
    }

    fn inode_at(&self, path: &Path) -> io::Result<usize> {
        let found = self.names.get(path).copied();
        found.ok_or_else(|| error(2)) // ENOENT
    }
}

fn apply(names: &mut BTreeMap<PathBuf, usize>, changes: &[(PathBuf, Option<usize>)]) {
    for (name, inode) in changes {
        match inode {
            Some(inode) => names.insert(name.clone(), *inode),
            None => names.remove(name),
        };
    }
}

impl SimStorage {
    /// An empty disk whose faults and tears follow `seed`.
    pub fn new(seed: u64) -> SimStorage {
        let disk = Disk {
            rng: seed,
            dirs: [PathBuf::new(), PathBuf::from("/")].into(),
            ..Default::default()
        };
        SimStorage(Arc::new(Mutex::new(disk)))
    }

    fn disk(&self) -> MutexGuard<'_, Disk> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set_faults(&self, faults: Faults) {
        self.disk().faults = faults;
    }

    pub fn faults(&self) -> Faults {
        self.disk().faults
    }

    /// The bytes the files hold now.
    pub fn used(&self) -> u64 {
        self.disk().used()
    }

    /// The machine crashes at the `ops`th mutating operation from now (1: the next).
    pub fn crash_after(&self, ops: u64) {
        let mut disk = self.disk();
        disk.crash_at = Some(disk.ops + ops.max(1));
    }

    /// No crash is set to come.
    pub fn cancel_crash(&self) {
        self.disk().crash_at = None;
    }

    /// The machine crashes now (if it has not).
    pub fn crash_now(&self) {
        let mut disk = self.disk();
        if disk.crashed.is_none() {
            disk.crash();
        }
    }

    pub fn crashed(&self) -> bool {
        self.disk().crashed.is_some()
    }

    /// The machine is up again: the disk holds what the crash left (no faults set).
    pub fn restart(&self) {
        let mut disk = self.disk();
        let Some((names, contents)) = disk.crashed.take() else {
            return;
        };
        disk.inodes = (contents.into_iter())
            .map(|data| Inode {
                dirty_from: data.len(),
                durable: data.clone(),
                data,
                open: 0,
            })
            .collect();
        disk.durable_names = names.clone();
        disk.names = names;
        disk.unsynced_names.clear();
        disk.faults = Faults::default();
        disk.boot += 1;
    }

    pub fn injected(&self) -> Injected {
        self.disk().injected
    }

    /// Where bits were flipped on read: (file, byte).
    pub fn flipped(&self) -> Vec<(PathBuf, usize)> {
        self.disk().flipped.clone()
    }

    /// The names on the disk now, with their sizes.
    pub fn files(&self) -> Vec<(PathBuf, usize)> {
        let disk = self.disk();
        (disk.names.iter())
            .map(|(name, &i)| (name.clone(), disk.inodes[i].data.len()))
            .collect()
    }
}

impl Storage for SimStorage {
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        let mut disk = self.disk();
        if disk.crashed.is_some() {
            return Err(error(EIO));
        }
        let inode = disk.inode_at(path)?;
        let mut data = disk.inodes[inode].data.clone();
        let flip = disk.faults.read_flip;
        if !data.is_empty() && disk.per_mille(flip) {
            let bit = disk.below(data.len() as u64 * 8) as usize;
            data[bit / 8] ^= 1 << (bit % 8);
            disk.injected.flips += 1;
            disk.flipped.push((path.to_path_buf(), bit / 8));
        }
        Ok(data)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        let disk = self.disk();
        if disk.crashed.is_some() {
            return Err(error(EIO));
        }
        if !disk.dirs.contains(dir) {
            return Err(error(2));
        }
        let files = disk.names.keys().filter(|name| parent(name) == dir);
        let dirs = disk.dirs.iter().filter(|d| d.parent() == Some(dir));
        Ok(files.chain(dirs).cloned().collect())
    }

    fn exists(&self, path: &Path) -> bool {
        let disk = self.disk();
        disk.names.contains_key(path) || disk.dirs.contains(path)
    }

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut disk = self.disk();
        disk.operation()?;
        disk.dirs.extend(dir.ancestors().map(Path::to_path_buf));
        Ok(())
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn StoredFile>> {
        let mut disk = self.disk();
        disk.operation()?;
        if !disk.dirs.contains(&parent(path)) {
            return Err(error(2));
        }
        disk.inodes.push(Inode {
            open: 1,
            ..Default::default()
        });
        let inode = disk.inodes.len() - 1;
        disk.name(vec![(path.to_path_buf(), Some(inode))]);
        Ok(Box::new(SimFile {
            storage: self.clone(),
            inode,
            boot: disk.boot,
        }))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut disk = self.disk();
        disk.operation()?;
        if disk.dirs.contains(from) {
            // A directory: moved at once, with everything in it (never synced apart).
            let moved: Vec<PathBuf> = (disk.dirs.iter())
                .filter(|d| d.starts_with(from))
                .cloned()
                .collect();
            for d in moved {
                disk.dirs.remove(&d);
                let rest = d.strip_prefix(from).expect("under it").to_path_buf();
                disk.dirs.insert(to.join(rest));
            }
            let disk = &mut *disk;
            for names in [&mut disk.names, &mut disk.durable_names] {
                let moved: Vec<(PathBuf, usize)> = (names.iter())
                    .filter(|(name, _)| name.starts_with(from))
                    .map(|(name, &i)| (name.clone(), i))
                    .collect();
                for (name, inode) in moved {
                    names.remove(&name);
                    let rest = name.strip_prefix(from).expect("under it");
                    names.insert(to.join(rest), inode);
                }
            }
            return Ok(());
        }
        let inode = disk.inode_at(from)?;
        if !disk.dirs.contains(&parent(to)) {
            return Err(error(2));
        }
        disk.name(vec![
            (to.to_path_buf(), Some(inode)),
            (from.to_path_buf(), None),
        ]);
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut disk = self.disk();
        disk.operation()?;
        disk.inode_at(path)?;
        disk.name(vec![(path.to_path_buf(), None)]);
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut disk = self.disk();
        disk.operation()?;
        let sync_eio = disk.faults.sync_eio;
        if disk.per_mille(sync_eio) {
            disk.injected.sync_failures += 1;
            return Err(error(EIO));
        }
        let all = std::mem::take(&mut disk.unsynced_names);
        let (synced, rest): (Vec<_>, Vec<_>) = all.into_iter().partition(|(d, _)| d == dir);
        for (_, changes) in &synced {
            apply(&mut disk.durable_names, changes);
        }
        disk.unsynced_names = rest;
        Ok(())
    }

    fn link_or_copy(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut disk = self.disk();
        disk.operation()?;
        let inode = disk.inode_at(from)?;
        disk.name(vec![(to.to_path_buf(), Some(inode))]);
        Ok(())
    }
}

/// An open simulated file.
struct SimFile {
    storage: SimStorage,
    inode: usize,
    boot: u64,
}

impl SimFile {
    /// The disk, for an operation on this file: an error if the machine crashed since it
    /// was opened, or crashes now.
    fn disk(&self) -> io::Result<MutexGuard<'_, Disk>> {
        let mut disk = self.storage.disk();
        if disk.boot != self.boot {
            return Err(error(EIO));
        }
        disk.operation()?;
        Ok(disk)
    }
}

impl StoredFile for SimFile {
    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        let mut disk = self.disk()?;
        let (fits, failure) = match disk.faults.capacity {
            Some(capacity) if disk.used() + bytes.len() as u64 > capacity => {
                disk.injected.full_disk += 1;
                let room = capacity.saturating_sub(disk.used()) as usize;
                (room, Some(ENOSPC))
            }
            _ => {
                let write_eio = disk.faults.write_eio;
                if disk.per_mille(write_eio) {
                    disk.injected.write_failures += 1;
                    (disk.below(bytes.len() as u64 + 1) as usize, Some(EIO))
                } else {
                    (bytes.len(), None)
                }
            }
        };
        disk.inodes[self.inode]
            .data
            .extend_from_slice(&bytes[..fits]);
        match failure {
            Some(code) => Err(error(code)),
            None => Ok(()),
        }
    }

    fn sync(&mut self) -> io::Result<()> {
        let mut disk = self.disk()?;
        let sync_eio = disk.faults.sync_eio;
        let failed = disk.per_mille(sync_eio);
        let inode = &mut disk.inodes[self.inode];
        let from = inode.dirty_from;
        inode.durable.truncate(from);
        if failed {
            // The pages it was to write are marked clean, but the disk never got them.
            let len = inode.data.len();
            inode.durable.resize(len, 0);
        } else {
            inode.durable.extend_from_slice(&inode.data[from..]);
        }
        inode.dirty_from = inode.data.len();
        if failed {
            disk.injected.sync_failures += 1;
            return Err(error(EIO));
        }
        Ok(())
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        let mut disk = self.disk()?;
        let inode = &mut disk.inodes[self.inode];
        inode.data.resize(len as usize, 0);
        inode.dirty_from = inode.dirty_from.min(len as usize);
        Ok(())
    }

    fn sync_in_background(&mut self) -> io::Result<BackgroundSync> {
        Ok(BackgroundSync::Done(self.sync()))
    }
}

impl Drop for SimFile {
    fn drop(&mut self) {
        let mut disk = self.storage.disk();
        let boot = disk.boot;
        if let Some(inode) = disk
            .inodes
            .get_mut(self.inode)
            .filter(|_| boot == self.boot)
        {
            inode.open = inode.open.saturating_sub(1);
        }
    }
}
