//! The operating system's files: what the broker stores through.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::{BackgroundSync, Storage, StoredFile};

/// Files on the machine's file systems.
pub struct Os;

impl Storage for Os {
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        let entries = std::fs::read_dir(dir)?;
        Ok(entries.filter_map(|e| e.ok().map(|e| e.path())).collect())
    }

    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn StoredFile>> {
        // Created (emptied) first: O_APPEND cannot be had with O_TRUNC.
        File::create(path)?;
        let file = OpenOptions::new().append(true).open(path)?;
        Ok(Box::new(OsFile(file)))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    fn link_or_copy(&self, from: &Path, to: &Path) -> io::Result<()> {
        if std::fs::hard_link(from, to).is_err() {
            std::fs::copy(from, to)?;
            File::open(to)?.sync_all()?;
        }
        Ok(())
    }
}

struct OsFile(File);

impl StoredFile for OsFile {
    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.0.write_all(bytes)
    }

    fn sync(&mut self) -> io::Result<()> {
        sync_data(&self.0)
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }

    fn sync_in_background(&mut self) -> io::Result<BackgroundSync> {
        let file = self.0.try_clone()?;
        let handle = std::thread::Builder::new()
            .name("midge-compact".into())
            .spawn(move || sync_data(&file))?;
        Ok(BackgroundSync::Thread(handle))
    }
}

/// `fdatasync`; in debug builds it fails while the file that `MIDGE_FAULT_SYNC_FAILS_WHILE`
/// names exists (the black-box tests' failing disk).
fn sync_data(file: &File) -> io::Result<()> {
    #[cfg(debug_assertions)]
    if std::env::var_os("MIDGE_FAULT_SYNC_FAILS_WHILE").is_some_and(|p| Path::new(&p).exists()) {
        return Err(io::Error::from_raw_os_error(5)); // EIO
    }
    file.sync_data()
}
