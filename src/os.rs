//! The operating system calls midge makes outside the shards' I/O backends (`shard/io/`,
//! whose calls are theirs), each wrapped once in a safe function with the argument why the
//! call is sound beside it. The rest of the crate calls these, never `libc` unsafely.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

/// A set of signals.
#[derive(Clone, Copy)]
pub struct SignalSet(libc::sigset_t);

impl SignalSet {
    pub fn empty() -> SignalSet {
        // SAFETY: sigset_t is plain data; sigemptyset initialises the live local.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            SignalSet(set)
        }
    }

    pub fn full() -> SignalSet {
        // SAFETY: as `empty`, with sigfillset.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut set);
            SignalSet(set)
        }
    }

    /// The set with `signal` added (a signal number the system does not know is left out).
    pub fn with(mut self, signal: libc::c_int) -> SignalSet {
        // SAFETY: the set is initialised (`empty`, `full`); sigaddset checks the number.
        unsafe { libc::sigaddset(&mut self.0, signal) };
        self
    }

    pub fn contains(&self, signal: libc::c_int) -> bool {
        // SAFETY: reads the initialised set; sigismember checks the number.
        unsafe { libc::sigismember(&self.0, signal) == 1 }
    }
}

/// How `thread_signal_mask` changes the calling thread's mask.
#[derive(Clone, Copy, Debug)]
pub enum MaskChange {
    Block,
    Unblock,
    Set,
}

/// Changes the calling thread's signal mask by `set`; returns the mask it had.
pub fn thread_signal_mask(change: MaskChange, set: &SignalSet) -> io::Result<SignalSet> {
    let how = match change {
        MaskChange::Block => libc::SIG_BLOCK,
        MaskChange::Unblock => libc::SIG_UNBLOCK,
        MaskChange::Set => libc::SIG_SETMASK,
    };
    let mut old = SignalSet::empty();
    // SAFETY: both sets are live and initialised; pthread_sigmask changes only the calling
    // thread's mask.
    let rc = unsafe { libc::pthread_sigmask(how, &set.0, &mut old.0) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(old)
}

/// Runs `f` with every signal blocked on the calling thread, then puts its mask back: a
/// thread `f` starts inherits the full mask (and so takes no signal meant for another).
pub fn with_signals_blocked<T>(f: impl FnOnce() -> T) -> T {
    let old = thread_signal_mask(MaskChange::Block, &SignalSet::full());
    let out = f();
    if let Ok(old) = old {
        let _ = thread_signal_mask(MaskChange::Set, &old);
    }
    out
}

/// The signals pending for the calling thread or the process that the thread blocks.
pub fn pending_signals() -> io::Result<SignalSet> {
    let mut set = SignalSet::empty();
    // SAFETY: sigpending fills the live, initialised set.
    if unsafe { libc::sigpending(&mut set.0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(set)
}

/// A non-blocking descriptor that reads the signals of `set` (they must be blocked).
pub fn signalfd(set: &SignalSet) -> io::Result<OwnedFd> {
    // SAFETY: the set is initialised; -1 asks for a new descriptor.
    let fd = unsafe { libc::signalfd(-1, &set.0, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: signalfd returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Waits until `fd` is readable, at most `wait` (`None`: for as long as it takes); false
/// if the time ran out.
pub fn wait_readable(fd: &impl AsFd, wait: Option<Duration>) -> io::Result<bool> {
    let mut poll = libc::pollfd {
        fd: fd.as_fd().as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let timeout = wait.map_or(-1, |w| {
        libc::c_int::try_from(w.as_millis()).unwrap_or(i32::MAX)
    });
    // SAFETY: one pollfd, a live local, for the duration of the call; the descriptor is
    // borrowed, so open.
    let ready = unsafe { libc::poll(&mut poll, 1, timeout) };
    if ready < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(ready > 0)
}

/// Reads what `fd` has, into `buf`.
pub fn read(fd: &impl AsFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is writable for its length; the descriptor is borrowed, so open.
    let n = unsafe { libc::read(fd.as_fd().as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// The machine's physical memory in bytes, if the system says.
pub fn physical_memory() -> Option<usize> {
    // SAFETY: sysconf has no preconditions.
    let (pages, page) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    match (usize::try_from(pages), usize::try_from(page)) {
        (Ok(pages), Ok(page)) if pages > 0 && page > 0 => Some(pages.saturating_mul(page)),
        _ => None,
    }
}

/// `CLOCK_MONOTONIC` in microseconds (what systemd's `MONOTONIC_USEC` counts).
pub fn monotonic_micros() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the live local.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000 + now.tv_nsec as u64 / 1_000
}

/// `strftime(3)` of `secs` (since the Unix epoch) in local time; `None` if the format has
/// a NUL, the time does not convert, or the result is empty or longer than 255 bytes.
pub fn strftime_local(format: &str, secs: u64) -> Option<String> {
    let format = CString::new(format).ok()?;
    let time = libc::time_t::try_from(secs).ok()?;
    // SAFETY: `tm` is plain data that localtime_r fills; both pointers are live for the
    // call, and localtime_r is the thread-safe form (no shared static result).
    let tm = unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&time, &mut tm).is_null() {
            return None;
        }
        tm
    };
    let mut buf = [0u8; 256];
    // SAFETY: buf is writable for its length, format is NUL-terminated and tm initialised;
    // strftime writes at most buf.len() bytes and returns how many (0 if it did not fit).
    let n = unsafe { libc::strftime(buf.as_mut_ptr().cast(), buf.len(), format.as_ptr(), &tm) };
    (n > 0).then(|| String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// The uid and primary gid of `user`, if it exists.
pub fn user_ids(user: &str) -> io::Result<Option<(libc::uid_t, libc::gid_t)>> {
    let name = CString::new(user).map_err(io::Error::other)?;
    // SAFETY: passwd is plain data that getpwnam_r fills, its strings in `buf`, which
    // outlives the call; every pointer is live for the call.
    unsafe {
        let mut passwd: libc::passwd = std::mem::zeroed();
        let mut buf = vec![0 as libc::c_char; 16 * 1024];
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        let rc = libc::getpwnam_r(
            name.as_ptr(),
            &mut passwd,
            buf.as_mut_ptr(),
            buf.len(),
            &mut found,
        );
        if rc != 0 || found.is_null() {
            return Ok(None);
        }
        Ok(Some((passwd.pw_uid, passwd.pw_gid)))
    }
}

/// Whether the process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Becomes `user` with `uid` and primary group `gid`, and its supplementary groups: for
/// good (a process that was root cannot get back).
pub fn become_user(user: &str, uid: libc::uid_t, gid: libc::gid_t) -> io::Result<()> {
    let name = CString::new(user).map_err(io::Error::other)?;
    // SAFETY: initgroups reads the NUL-terminated name; setgid/setuid take plain ids. The
    // order matters: groups and gid while still root, then uid.
    unsafe {
        if libc::initgroups(name.as_ptr(), gid) != 0
            || libc::setgid(gid) != 0
            || libc::setuid(uid) != 0
        {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// No transparent huge pages for this process (`PR_SET_THP_DISABLE`).
pub fn disable_transparent_huge_pages() {
    // SAFETY: PR_SET_THP_DISABLE takes plain integers and changes only this process.
    unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
}

/// Goes on in the background, detached from the terminal (`daemon(3)`, keeping the working
/// directory so that relative paths still work).
///
/// # Safety
///
/// `daemon` forks: the child goes on with the calling thread alone. No other thread may
/// hold anything the child will use (a lock, a half-written buffer) when it is called, and
/// whatever the child needs from another thread it starts again itself.
pub unsafe fn daemonize() -> io::Result<()> {
    // SAFETY: the caller's promise above.
    if unsafe { libc::daemon(1, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The soft and hard limits of open files (`RLIMIT_NOFILE`).
pub fn open_files_limit() -> io::Result<(u64, u64)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit, a live local.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((limit.rlim_cur, limit.rlim_max))
}

/// Sets the soft limit of open files (at most the hard limit).
pub fn set_open_files_limit(soft: u64, hard: u64) -> io::Result<()> {
    let limit = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: setrlimit reads one rlimit, a live local.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The machine's host name.
pub fn host_name() -> io::Result<String> {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `buf.len()` bytes into the live buffer.
    if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let name = CStr::from_bytes_until_nul(&buf).map_err(io::Error::other)?;
    Ok(name.to_string_lossy().into_owned())
}

/// A terminal's attributes (`termios`).
#[derive(Clone, Copy)]
pub struct Terminal(libc::termios);

/// Turns off the echo of what is typed on standard input, if it is a terminal; returns its
/// attributes before, to `restore_terminal` with.
pub fn stdin_echo_off() -> Option<Terminal> {
    // SAFETY: termios is plain data that tcgetattr fills (on descriptor 0, which it
    // checks is a terminal) before it is read.
    let mut term: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::tcgetattr(0, &mut term) } != 0 {
        return None;
    }
    let saved = Terminal(term);
    term.c_lflag &= !libc::ECHO;
    // SAFETY: sets the attributes just read, with echo cleared, on the same terminal.
    unsafe { libc::tcsetattr(0, libc::TCSANOW, &term) };
    Some(saved)
}

/// Puts standard input's terminal attributes back as `stdin_echo_off` found them.
pub fn restore_terminal(saved: &Terminal) {
    // SAFETY: restores attributes read from the same terminal.
    unsafe { libc::tcsetattr(0, libc::TCSANOW, &saved.0) };
}

/// Gives the pages this thread's freed memory sits on back to the system (those past
/// mimalloc's purge delay; `now`: all of them). A no-op for memory not allocated by
/// mimalloc.
pub fn release_freed_memory(now: bool) {
    // SAFETY: mi_collect takes no pointers; mimalloc allows it on any thread at any time,
    // and it frees nothing still in use.
    unsafe { libmimalloc_sys::mi_collect(now) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blocked_signal_is_seen_pending_and_the_mask_comes_back() {
        let usr2 = SignalSet::empty().with(libc::SIGUSR2);
        assert!(usr2.contains(libc::SIGUSR2));
        assert!(!usr2.contains(libc::SIGUSR1));
        let before = thread_signal_mask(MaskChange::Block, &usr2).expect("mask");
        assert!(!pending_signals().expect("pending").contains(libc::SIGUSR2));
        let inside = with_signals_blocked(|| {
            thread_signal_mask(MaskChange::Block, &SignalSet::empty()).expect("mask")
        });
        assert!(inside.contains(libc::SIGUSR1), "everything blocked inside");
        let after = thread_signal_mask(MaskChange::Set, &before).expect("mask");
        assert!(after.contains(libc::SIGUSR2) && !after.contains(libc::SIGUSR1));
    }

    #[test]
    fn a_signalfd_is_readable_once_its_signal_is_sent() {
        // Run on a thread of its own, whose mask blocks SIGUSR2 (the signal goes to the
        // thread with tgkill, so no other thread of the test process takes it).
        std::thread::spawn(|| {
            let usr2 = SignalSet::empty().with(libc::SIGUSR2);
            thread_signal_mask(MaskChange::Block, &usr2).expect("mask");
            let fd = signalfd(&usr2).expect("signalfd");
            let quick = Some(Duration::from_millis(1));
            assert!(!wait_readable(&fd, quick).expect("poll"));
            // SAFETY: sends SIGUSR2, blocked here, to this thread alone.
            unsafe {
                libc::syscall(
                    libc::SYS_tgkill,
                    libc::getpid(),
                    libc::gettid(),
                    libc::SIGUSR2,
                )
            };
            assert!(wait_readable(&fd, None).expect("poll"));
            let mut info = [0u8; 128];
            assert_eq!(read(&fd, &mut info).expect("read"), 128);
        })
        .join()
        .expect("thread");
    }

    #[test]
    fn system_facts_read_sensibly() {
        assert!(physical_memory().is_some_and(|m| m > 1 << 20));
        let (a, b) = (monotonic_micros(), monotonic_micros());
        assert!(b >= a);
        assert_eq!(strftime_local("%Y", 0).map(|y| y.len()), Some(4));
        assert_eq!(strftime_local("", 0), None);
        assert_eq!(strftime_local("a\0b", 0), None);
        assert!(user_ids("root")
            .expect("lookup")
            .is_some_and(|(uid, _)| uid == 0));
        assert!(user_ids("no-such-user-midge").expect("lookup").is_none());
        assert!(user_ids("nul\0name").is_err());
        assert!(!host_name().expect("host name").is_empty());
        let (soft, hard) = open_files_limit().expect("limit");
        assert!(soft <= hard);
    }
}
