//! Mosquitto's logging: `<unix time>: <message>` lines (or a `log_timestamp_format` time),
//! filtered by `log_type`, written to every `log_dest` (stdout, stderr, a file, syslog).
//!
//! Log records map to Mosquitto's types by level, and for `info` by target: `information`,
//! `subscribe` and `unsubscribe` targets are those types, any other info line is a notice
//! (connection lines). Settings can be replaced while running (SIGHUP); a file destination
//! is reopened then, so that log rotation works as with Mosquitto.
//!
//! No thread waits on a log destination: a line is formatted where it is logged and put in
//! a bounded queue (lock-free), and a writer thread of its own writes it out. A shard never
//! blocks on another shard's logging nor on a slow file or a full pipe; when the queue is
//! full the line is dropped, counted, and the writer says how many were lost.

use std::fs::File;
use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A set of Mosquitto log types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogTypes(u8);

impl LogTypes {
    pub const NONE: LogTypes = LogTypes(0);
    pub const ERROR: LogTypes = LogTypes(1);
    pub const WARNING: LogTypes = LogTypes(1 << 1);
    pub const NOTICE: LogTypes = LogTypes(1 << 2);
    pub const INFORMATION: LogTypes = LogTypes(1 << 3);
    pub const SUBSCRIBE: LogTypes = LogTypes(1 << 4);
    pub const UNSUBSCRIBE: LogTypes = LogTypes(1 << 5);
    pub const WEBSOCKETS: LogTypes = LogTypes(1 << 6);
    pub const DEBUG: LogTypes = LogTypes(1 << 7);
    pub const ALL: LogTypes = LogTypes(u8::MAX);
    /// Mosquitto's default: error, warning, notice, information.
    pub const DEFAULT: LogTypes = LogTypes(0b1111);

    /// A `log_type` value.
    pub fn named(name: &str) -> Option<LogTypes> {
        Some(match name {
            "none" => Self::NONE,
            "error" => Self::ERROR,
            "warning" => Self::WARNING,
            "notice" => Self::NOTICE,
            "information" => Self::INFORMATION,
            "subscribe" => Self::SUBSCRIBE,
            "unsubscribe" => Self::UNSUBSCRIBE,
            "websockets" => Self::WEBSOCKETS,
            "debug" => Self::DEBUG,
            "all" => Self::ALL,
            _ => return None,
        })
    }

    pub fn with(self, other: LogTypes) -> LogTypes {
        LogTypes(self.0 | other.0)
    }

    pub fn contains(self, other: LogTypes) -> bool {
        self.0 & other.0 == other.0 && other.0 != 0
    }

    /// The type of a log record.
    fn of(record: &log::Metadata) -> LogTypes {
        match record.level() {
            log::Level::Error => Self::ERROR,
            log::Level::Warn => Self::WARNING,
            log::Level::Info => match record.target() {
                "information" => Self::INFORMATION,
                "subscribe" => Self::SUBSCRIBE,
                "unsubscribe" => Self::UNSUBSCRIBE,
                _ => Self::NOTICE,
            },
            log::Level::Debug | log::Level::Trace => Self::DEBUG,
        }
    }

    /// The most verbose `log` level any of these types needs.
    fn level(self) -> log::LevelFilter {
        if self.contains(Self::DEBUG) {
            log::LevelFilter::Debug
        } else if self.0 & 0b0111_1100 != 0 {
            log::LevelFilter::Info
        } else if self.contains(Self::WARNING) {
            log::LevelFilter::Warn
        } else if self.contains(Self::ERROR) {
            log::LevelFilter::Error
        } else {
            log::LevelFilter::Off
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogDest {
    Stdout,
    Stderr,
    File(PathBuf),
    Syslog,
    /// Published by the broker on `$SYS/broker/log/<type letter>` (not debug lines, so that
    /// logging a delivery cannot feed itself), as Mosquitto does.
    Topic,
}

/// Log lines waiting to be published on `$SYS/broker/log/...`; beyond this many, lines are
/// dropped and counted (`topic_lines_dropped`).
const TOPIC_QUEUE_MAX: usize = 1024;
/// And beyond this many bytes (a line can carry a 64 KB topic).
const TOPIC_QUEUE_BYTES_MAX: usize = 4 << 20;
static TOPIC_PENDING_BYTES: AtomicUsize = AtomicUsize::new(0);

type TopicQueue = (
    crossbeam_channel::Sender<(&'static str, String)>,
    crossbeam_channel::Receiver<(&'static str, String)>,
);

fn topic_queue() -> &'static TopicQueue {
    static QUEUE: std::sync::OnceLock<TopicQueue> = std::sync::OnceLock::new();
    QUEUE.get_or_init(|| crossbeam_channel::bounded(TOPIC_QUEUE_MAX))
}

static TOPIC_LINES_DROPPED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Log lines for `log_dest topic`: (topic, line), at most `max` of them.
pub fn take_topic_lines(max: usize) -> impl Iterator<Item = (&'static str, String)> {
    topic_queue().1.try_iter().take(max).inspect(|(_, line)| {
        TOPIC_PENDING_BYTES.fetch_sub(line.len(), Ordering::Relaxed);
    })
}

/// Log lines not published on `$SYS/broker/log` because too many were waiting.
pub fn topic_lines_dropped() -> u64 {
    TOPIC_LINES_DROPPED.load(std::sync::atomic::Ordering::Relaxed)
}

/// Mosquitto's `$SYS/broker/log/` topic for a line of this type.
fn log_topic(types: LogTypes) -> &'static str {
    match types {
        LogTypes::ERROR => "$SYS/broker/log/E",
        LogTypes::WARNING => "$SYS/broker/log/W",
        LogTypes::NOTICE => "$SYS/broker/log/N",
        LogTypes::INFORMATION => "$SYS/broker/log/I",
        LogTypes::SUBSCRIBE => "$SYS/broker/log/M/subscribe",
        LogTypes::UNSUBSCRIBE => "$SYS/broker/log/M/unsubscribe",
        _ => "$SYS/broker/log/D",
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogSettings {
    pub dests: Vec<LogDest>,
    pub types: LogTypes,
    /// `log_timestamp`: prefix lines with the time.
    pub timestamp: bool,
    /// `log_timestamp_format`: a strftime format (local time); unset: seconds since 1970.
    pub timestamp_format: Option<String>,
    /// `log_facility`: syslog's LOCAL0 + N; unset (the default): DAEMON.
    pub facility: u8,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            dests: vec![LogDest::Stderr],
            types: LogTypes::DEFAULT,
            timestamp: true,
            timestamp_format: None,
            facility: u8::MAX,
        }
    }
}

/// The open destinations of the current settings (the writer thread's, and `apply`'s).
struct Sinks {
    settings: LogSettings,
    file: Option<File>,
    syslog: Option<UnixDatagram>,
}

struct Logger {
    /// What `log` reads to filter and format a line: no lock on the logging path.
    settings: arc_swap::ArcSwapOption<LogSettings>,
    sinks: Mutex<Option<Sinks>>,
}

static LOGGER: Logger = Logger {
    settings: arc_swap::ArcSwapOption::const_empty(),
    sinks: Mutex::new(None),
};

/// Lines waiting for the writer thread; past this many, or this many bytes (a debug line
/// can carry a 64 KB topic: a client must not make the broker hold a gigabyte of log lines
/// while the log is slow), lines are dropped and counted.
const PENDING_MAX: usize = 16 * 1024;
const PENDING_BYTES_MAX: usize = 16 << 20;

/// What debug lines may take of the queue: the rest stays for the other kinds, so that a
/// flood of debug lines (`-v`, a client sending thousands of packets a second) never costs
/// a warning or a notice.
const DEBUG_SHARE: (usize, usize) = (PENDING_MAX * 3 / 4, PENDING_BYTES_MAX * 3 / 4);
static PENDING_BYTES: AtomicUsize = AtomicUsize::new(0);

/// Takes `size` bytes of `pending` if that stays within `max`; false (nothing taken) if not.
fn reserve(pending: &AtomicUsize, size: usize, max: usize) -> bool {
    if pending.fetch_add(size, Ordering::Relaxed) + size > max {
        pending.fetch_sub(size, Ordering::Relaxed);
        return false;
    }
    true
}

/// Gives back `size` bytes of `pending`. False, so that it can end a `||` of a failed send.
fn release(pending: &AtomicUsize, size: usize) -> bool {
    pending.fetch_sub(size, Ordering::Relaxed);
    false
}
/// How long `flush` waits for the writer to catch up.
const FLUSH_WAIT: Duration = Duration::from_secs(2);

enum Pending {
    Line {
        kind: LogTypes,
        message: String,
        line: String,
    },
    /// Everything before this is written: say so.
    Flush(crossbeam_channel::Sender<()>),
}

type PendingQueue = (
    crossbeam_channel::Sender<Pending>,
    crossbeam_channel::Receiver<Pending>,
);

fn pending() -> &'static PendingQueue {
    static QUEUE: std::sync::OnceLock<PendingQueue> = std::sync::OnceLock::new();
    QUEUE.get_or_init(|| crossbeam_channel::bounded(PENDING_MAX))
}

/// Lines dropped because the writer could not keep up.
static LINES_DROPPED: AtomicU64 = AtomicU64::new(0);
/// The process whose writer thread is running (a fork, `-d`, starts its own).
static WRITER_PID: AtomicU32 = AtomicU32::new(0);

/// Log lines dropped since start because the log destinations could not keep up.
pub fn lines_dropped() -> u64 {
    LINES_DROPPED.load(Ordering::Relaxed)
}

/// Starts the writer thread of this process, once.
fn ensure_writer() {
    let pid = std::process::id();
    if WRITER_PID.load(Ordering::Acquire) == pid {
        return;
    }
    static STARTING: Mutex<()> = Mutex::new(());
    let _starting = STARTING.lock().unwrap_or_else(|e| e.into_inner());
    if WRITER_PID.load(Ordering::Acquire) == pid {
        return;
    }
    let queue = pending().1.clone();
    // The writer takes no signal (SIGHUP is read from a signalfd, and a thread that left it
    // unblocked would be where it lands): it starts with every signal blocked.
    let spawned = crate::os::with_signals_blocked(|| {
        std::thread::Builder::new()
            .name("midge-log".into())
            .spawn(move || write_lines(queue))
    });
    if spawned.is_ok() {
        WRITER_PID.store(pid, Ordering::Release);
    }
}

/// The writer thread: writes queued lines to every destination, in order.
fn write_lines(queue: crossbeam_channel::Receiver<Pending>) {
    let mut reported = 0;
    for item in queue.iter() {
        match item {
            Pending::Line {
                kind,
                message,
                line,
            } => {
                let dropped = LINES_DROPPED.load(Ordering::Relaxed);
                if dropped > reported {
                    let note = format!(
                        "Warning: {} log lines were dropped: the log could not keep up.",
                        dropped - reported
                    );
                    let stamp = line.split_once(": ").map_or("", |(time, _)| time);
                    write_out(LogTypes::WARNING, &note, &format!("{stamp}: {note}\n"));
                    reported = dropped;
                }
                write_out(kind, &message, &line);
                PENDING_BYTES.fetch_sub(message.len() + line.len(), Ordering::Relaxed);
            }
            Pending::Flush(done) => {
                LOGGER.flush_sinks();
                let _ = done.send(());
            }
        }
    }
}

/// Writes one line to every destination of the current settings.
fn write_out(kind: LogTypes, message: &str, line: &str) {
    let mut guard = LOGGER.sinks.lock().unwrap_or_else(|e| e.into_inner());
    let Some(sinks) = guard.as_mut() else { return };
    for dest in &sinks.settings.dests {
        // A log line that cannot be written is lost: there is nowhere left to say so.
        let _ = match dest {
            LogDest::Stdout => std::io::stdout().lock().write_all(line.as_bytes()),
            LogDest::Stderr => std::io::stderr().lock().write_all(line.as_bytes()),
            LogDest::File(_) => match sinks.file.as_mut() {
                Some(file) => file.write_all(line.as_bytes()),
                None => Ok(()),
            },
            LogDest::Syslog => match sinks.syslog.as_ref() {
                Some(socket) => {
                    let facility = match sinks.settings.facility {
                        u8::MAX => 3,        // daemon
                        local => 16 + local, // local0..local7
                    };
                    let priority = u16::from(facility) * 8 + u16::from(severity(kind));
                    let text = format!("<{priority}>midge[{}]: {message}", std::process::id());
                    socket.send(text.as_bytes()).map(|_| ())
                }
                None => Ok(()),
            },
            LogDest::Topic if kind != LogTypes::DEBUG => {
                let text = line.trim_end().to_string();
                let size = text.len();
                let queued = reserve(&TOPIC_PENDING_BYTES, size, TOPIC_QUEUE_BYTES_MAX)
                    && (topic_queue().0.try_send((log_topic(kind), text)).is_ok()
                        || release(&TOPIC_PENDING_BYTES, size));
                if !queued {
                    TOPIC_LINES_DROPPED.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            }
            LogDest::Topic => Ok(()),
        };
    }
}

impl Logger {
    fn flush_sinks(&self) {
        let mut guard = self.sinks.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(file) = guard.as_mut().and_then(|s| s.file.as_mut()) {
            let _ = file.flush();
        }
        let _ = std::io::stdout().flush();
    }
}

/// Waits (a bounded time) until every line logged so far is written: before the process
/// exits or aborts.
pub fn flush() {
    log::logger().flush();
}

/// Starts logging to stderr with Mosquitto's default types (all of them if `verbose`), until
/// `apply` gives the configured settings. Safe to call more than once.
pub fn init(verbose: bool) {
    let mut settings = LogSettings::default();
    if verbose {
        settings.types = LogTypes::ALL;
    }
    let _ = log::set_logger(&LOGGER);
    let _ = apply(&settings);
}

/// Uses `settings` from now on: opens the log file or syslog socket first, and keeps the
/// current settings if that fails.
pub fn apply(settings: &LogSettings) -> Result<(), String> {
    let mut file = None;
    let mut syslog = None;
    for dest in &settings.dests {
        match dest {
            LogDest::File(path) => {
                let opened = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| format!("cannot open log file {}: {e}", path.display()))?;
                file = Some(opened);
            }
            LogDest::Syslog => {
                let socket = UnixDatagram::unbound()
                    .and_then(|s| s.connect("/dev/log").map(|()| s))
                    .map_err(|e| format!("cannot reach syslog at /dev/log: {e}"))?;
                syslog = Some(socket);
            }
            LogDest::Stdout | LogDest::Stderr | LogDest::Topic => {}
        }
    }
    let level = if settings.dests.is_empty() {
        log::LevelFilter::Off
    } else {
        settings.types.level()
    };
    // Lines logged under the settings being replaced go where those settings said.
    flush();
    let mut sinks = LOGGER.sinks.lock().unwrap_or_else(|e| e.into_inner());
    *sinks = Some(Sinks {
        settings: settings.clone(),
        file,
        syslog,
    });
    LOGGER.settings.store(Some(Arc::new(settings.clone())));
    log::set_max_level(level);
    Ok(())
}

/// The time prefix of a line, without the `: `.
fn timestamp(format: Option<&str>) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    match format {
        None => now.to_string(),
        // As Mosquitto's `log_timestamp_format`.
        Some(format) => crate::os::strftime_local(format, now).unwrap_or_else(|| now.to_string()),
    }
}

/// syslog's severity for a line of this type.
fn severity(types: LogTypes) -> u8 {
    match types {
        LogTypes::ERROR => 3,
        LogTypes::WARNING => 4,
        LogTypes::NOTICE => 5,
        LogTypes::DEBUG => 7,
        _ => 6,
    }
}

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let kind = LogTypes::of(record.metadata());
        let settings = self.settings.load();
        let Some(settings) = settings.as_deref() else {
            return;
        };
        if !settings.types.contains(kind) {
            return;
        }
        let message = record.args().to_string();
        let line = if settings.timestamp {
            let time = timestamp(settings.timestamp_format.as_deref());
            format!("{time}: {message}\n")
        } else {
            format!("{message}\n")
        };
        ensure_writer();
        let size = message.len() + line.len();
        let item = Pending::Line {
            kind,
            message,
            line,
        };
        let (len_max, bytes_max) = if kind == LogTypes::DEBUG {
            DEBUG_SHARE
        } else {
            (PENDING_MAX, PENDING_BYTES_MAX)
        };
        let queued = pending().0.len() < len_max
            && reserve(&PENDING_BYTES, size, bytes_max)
            && (pending().0.try_send(item).is_ok() || release(&PENDING_BYTES, size));
        if !queued {
            LINES_DROPPED.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn flush(&self) {
        if WRITER_PID.load(Ordering::Acquire) != std::process::id() {
            self.flush_sinks();
            return;
        }
        let (done, written) = crossbeam_channel::bounded(1);
        // Behind every line already queued (it waits for room, a bounded time).
        if pending()
            .0
            .send_timeout(Pending::Flush(done), FLUSH_WAIT)
            .is_ok()
        {
            let _ = written.recv_timeout(FLUSH_WAIT);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_map_to_levels() {
        assert_eq!(LogTypes::DEFAULT.level(), log::LevelFilter::Info);
        assert_eq!(LogTypes::ALL.level(), log::LevelFilter::Debug);
        assert_eq!(LogTypes::ERROR.level(), log::LevelFilter::Error);
        assert_eq!(LogTypes::NONE.level(), log::LevelFilter::Off);
        assert!(LogTypes::DEFAULT.contains(LogTypes::NOTICE));
        assert!(!LogTypes::DEFAULT.contains(LogTypes::DEBUG));
        assert!(!LogTypes::DEFAULT.contains(LogTypes::NONE));
    }

    #[test]
    fn strftime_formats_local_time() {
        let year = crate::os::strftime_local("%Y", 0).unwrap();
        assert!(year == "1970" || year == "1969", "{year}");
        let literal = crate::os::strftime_local("literal", 0);
        assert_eq!(literal.as_deref(), Some("literal"));
    }
}
