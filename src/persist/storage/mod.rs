//! Where the store meets the disk: the few file operations persistence uses, behind a
//! trait, so that the deterministic simulation runs the real journal, compaction and
//! recovery on simulated storage (`sim.rs`: crashes at any operation, torn and lost
//! writes, ENOSPC, EIO, failed syncs, bit flips) while the broker uses the operating
//! system's files (`os.rs`). One call through it per loop turn that changed something:
//! its cost is one indirect call beside a write and an fsync.

use std::io;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

pub mod os;
pub mod sim;

pub use os::Os;

/// A file system as persistence sees it. Paths are the configuration's.
pub trait Storage: Send + Sync {
    /// A file's whole contents.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// The paths of the entries of `dir` (`NotFound` if there is no such directory).
    fn list(&self, dir: &Path) -> io::Result<Vec<PathBuf>>;
    fn exists(&self, path: &Path) -> bool;
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// A new, empty file at `path` (replacing any there), open for appending.
    fn create(&self, path: &Path) -> io::Result<Box<dyn StoredFile>>;
    /// Renames a file or directory (replacing a file at `to`).
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Makes the names in `dir` (new, renamed, removed) survive a crash.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Gives the file at `from` a second name `to`, durably (a copy where links fail).
    fn link_or_copy(&self, from: &Path, to: &Path) -> io::Result<()>;
}

/// An open file, written only at its end.
pub trait StoredFile: Send {
    /// Appends all of `bytes`, or fails (perhaps after a part of them was written).
    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()>;
    /// `fdatasync`: what was written survives a crash once it returns `Ok`.
    fn sync(&mut self) -> io::Result<()>;
    /// Cuts the file back to `len` bytes.
    fn set_len(&mut self, len: u64) -> io::Result<()>;
    /// Starts a sync that the caller does not wait for (a compaction's new file).
    fn sync_in_background(&mut self) -> io::Result<BackgroundSync>;
}

/// A sync under way on a thread of its own, or one already done.
pub enum BackgroundSync {
    Thread(JoinHandle<io::Result<()>>),
    Done(io::Result<()>),
}

impl BackgroundSync {
    pub fn is_finished(&self) -> bool {
        match self {
            BackgroundSync::Thread(handle) => handle.is_finished(),
            BackgroundSync::Done(_) => true,
        }
    }

    /// Waits for it; its result.
    pub fn join(self) -> io::Result<()> {
        match self {
            BackgroundSync::Thread(handle) => handle
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("the sync thread panicked"))),
            BackgroundSync::Done(result) => result,
        }
    }
}

/// Writes `contents` to `path` through a temporary file (`tmp`), synced and renamed over
/// it, the directory synced too: the file is either the old one or the new one, whole. The
/// file is left open for appending.
pub fn replace_file(
    storage: &dyn Storage,
    path: &Path,
    tmp: &Path,
    contents: &[u8],
) -> io::Result<Box<dyn StoredFile>> {
    let mut file = storage.create(tmp)?;
    file.write_all(contents)?;
    file.sync()?;
    storage.rename(tmp, path)?;
    sync_parent(storage, path)?;
    Ok(file)
}

/// A rename or a new name of `path` reaches the disk with its directory.
pub fn sync_parent(storage: &dyn Storage, path: &Path) -> io::Result<()> {
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
    storage.sync_dir(parent.unwrap_or(Path::new(".")))
}
