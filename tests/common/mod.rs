//! Test harness: starts the real `midge` binary on a free loopback port and speaks MQTT to it
//! over real sockets, with raw packets where the wire matters.
#![allow(dead_code)]

pub mod bridge;
pub mod cluster;
pub mod hostile;
pub mod metrics;
mod mosquitto;
pub mod nats;
mod paho;
pub mod persist;
mod raw;
pub mod tls;

pub use raw::Raw;

#[allow(unused_imports)] // Used by the tests that run paho, not by every test binary.
pub use paho::{paho_passes, paho_script_passes};

#[allow(unused_imports)] // Used by the tests that start Mosquitto.
pub use mosquitto::Mosquitto;

use bytes::Bytes;
use midge::codec::*;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long any wait in a test may take before it fails.
pub const DEADLINE: Duration = Duration::from_secs(10);

pub struct Broker {
    child: Child,
    pub port: u16,
    log: Arc<Mutex<Vec<String>>>,
}

/// `MIDGE_TEST_IO=uring|epoll|auto` runs every broker the tests start on that backend
/// (`scripts/test.sh` runs the black-box tests once per backend).
pub fn io_backend_args() -> Vec<String> {
    match std::env::var("MIDGE_TEST_IO") {
        Ok(io) if !io.is_empty() => vec!["--io".to_string(), io],
        _ => Vec::new(),
    }
}

impl Broker {
    /// Starts midge with `-p 0 -v` and `args`, and waits until it listens.
    pub fn start(args: &[&str]) -> Broker {
        Broker::start_with_env(args, &[])
    }

    /// As `start`, with extra environment variables for the broker process.
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Broker {
        let mut all = vec!["-p", "0"];
        all.extend_from_slice(args);
        Broker::spawn(&all, env)
    }

    /// Starts midge with only `args` (and `-v`): for configurations that name their own
    /// listeners.
    pub fn start_configured(args: &[&str]) -> Broker {
        Broker::spawn(args, &[])
    }

    /// Starts midge with only `args` (not even `-v`): for tests of the logging settings.
    /// The configuration must log `information` lines to stderr.
    pub fn start_quiet(args: &[&str]) -> Broker {
        Broker::spawn_with(args, &[], false)
    }

    /// Starts midge with only `args` (and `-v`) and extra environment variables.
    pub fn spawn_env(args: &[&str], env: &[(&str, &str)]) -> Broker {
        Broker::spawn(args, env)
    }

    fn spawn(args: &[&str], env: &[(&str, &str)]) -> Broker {
        Broker::spawn_with(args, env, true)
    }

    fn spawn_with(args: &[&str], env: &[(&str, &str)], verbose: bool) -> Broker {
        Broker::spawn_limited(args, env, verbose, None)
    }

    /// Starts midge (`-p 0 -v` and `args`) allowed at most `limit` open file descriptors.
    pub fn start_with_fd_limit(args: &[&str], limit: u64) -> Broker {
        let mut all = vec!["-p", "0"];
        all.extend_from_slice(args);
        Broker::spawn_limited(&all, &[], true, Some(limit))
    }

    fn spawn_limited(
        args: &[&str],
        env: &[(&str, &str)],
        verbose: bool,
        fd_limit: Option<u64>,
    ) -> Broker {
        use std::os::unix::process::CommandExt;
        let mut command = Command::new(env!("CARGO_BIN_EXE_midge"));
        command
            .envs(env.iter().copied())
            .args(io_backend_args())
            .args(verbose.then_some("-v"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(limit) = fd_limit {
            let rlimit = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            // SAFETY: runs in the child between fork and exec, where only async-signal-safe
            // calls are allowed; setrlimit is one, and `rlimit` is a plain copied value.
            unsafe {
                command.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &rlimit) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        let mut child = command.spawn().expect("start midge");
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { return };
                sink.lock().unwrap().push(line);
            }
        });
        let mut broker = Broker {
            child,
            port: 0,
            log,
        };
        let line = broker.wait_for_log("listen socket on port");
        broker.port = line
            .rsplit(' ')
            .next()
            .unwrap()
            .trim_end_matches('.')
            .parse()
            .expect("port in log line");
        broker
    }

    /// Starts one broker per shard count, for tests that must hold with one shard and two.
    pub fn each_threads(args: &[&str], mut test: impl FnMut(&Broker)) {
        for threads in ["1", "2"] {
            let mut all = vec!["--threads", threads];
            all.extend_from_slice(args);
            let broker = Broker::start(&all);
            test(&broker);
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_lines(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Waits for a log line containing `text` and returns it.
    pub fn wait_for_log(&self, text: &str) -> String {
        let until = Instant::now() + DEADLINE;
        loop {
            if let Some(line) = self.log.lock().unwrap().iter().find(|l| l.contains(text)) {
                return line.clone();
            }
            assert!(
                Instant::now() < until,
                "no log line with {text:?}; log:\n{}",
                self.log_lines().join("\n")
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The first port of each of `n` listeners (waits until midge has opened them).
    pub fn ports(&self, n: usize) -> Vec<u16> {
        let until = Instant::now() + DEADLINE;
        loop {
            let mut ports: Vec<u16> = Vec::new();
            for line in self.log_lines() {
                if let Some(rest) = line.split("listen socket on port ").nth(1) {
                    let port = rest
                        .trim_end_matches('.')
                        .parse()
                        .expect("port in log line");
                    if !ports.contains(&port) {
                        ports.push(port);
                    }
                }
            }
            if ports.len() >= n {
                return ports;
            }
            assert!(
                Instant::now() < until,
                "fewer than {n} listeners: {ports:?}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// How many log lines contain `text`.
    pub fn count_log(&self, text: &str) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(text))
            .count()
    }

    /// Waits until `n` log lines contain `text`.
    pub fn wait_for_log_count(&self, text: &str, n: usize) {
        let until = Instant::now() + DEADLINE;
        while self.count_log(text) < n {
            assert!(
                Instant::now() < until,
                "fewer than {n} log lines with {text:?}; log:\n{}",
                self.log_lines().join("\n")
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Sends `signal` (SIGHUP, say) to the broker.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on the PID of the child this test started and has not reaped.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    pub fn has_log(&self, text: &str) -> bool {
        self.log.lock().unwrap().iter().any(|l| l.contains(text))
    }

    /// Waits for the broker to exit by itself and returns its status.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let until = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < until, "midge is still running");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        // SAFETY: kill(2) on the PID of the child this test started and has not reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.wait_exit()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        // A failed test shows the end of what the broker said: a failure in CI is read once.
        if std::thread::panicking() {
            let log = self.log.lock().map(|l| l.clone()).unwrap_or_default();
            let tail = &log[log.len().saturating_sub(LOG_TAIL_ON_FAILURE)..];
            eprintln!(
                "-- the broker's last {} log lines:\n{}",
                tail.len(),
                tail.join("\n")
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether a read that failed with `e` is simply to be tried again: its timeout passed, or
/// a signal or a stop of the test process interrupted it (a socket with a read timeout
/// gives EINTR then even without a signal handler; seen in CI as a connection "closed").
pub fn read_again(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock
            | std::io::ErrorKind::TimedOut
            | std::io::ErrorKind::Interrupted
    )
}

/// `read`, tried again when interrupted (see `read_again`); its timeout still ends it.
pub fn read_retrying(from: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        match from.read(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            done => return done,
        }
    }
}

/// How many of its last log lines a broker prints when its test fails.
const LOG_TAIL_ON_FAILURE: usize = 60;

/// Packets with the Reason Strings of DISCONNECTs taken out (free text, checked elsewhere),
/// so that the reason codes can be compared exactly.
pub fn without_reason_strings(packets: Vec<Packet>) -> Vec<Packet> {
    packets
        .into_iter()
        .map(|p| match p {
            Packet::Disconnect(mut d) => {
                d.properties.reason_string = None;
                Packet::Disconnect(d)
            }
            other => other,
        })
        .collect()
}

/// Writes a mosquitto.conf for a test and returns its path (unique per test process).
pub fn config_file(name: &str, text: &str) -> String {
    let path = std::env::temp_dir().join(format!("midge-test-{}-{name}.conf", std::process::id()));
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

/// Writes a Mosquitto password file (`$7$` hashes) for a test and returns its path.
pub fn password_file(name: &str, users: &[(&str, &str)]) -> String {
    let mut text = String::new();
    for (user, password) in users {
        let hash =
            midge::auth::password::PasswordHash::pbkdf2(password.as_bytes(), b"0123456789ab", 101);
        text.push_str(&format!("{user}:{}\n", hash.to_field()));
    }
    let path =
        std::env::temp_dir().join(format!("midge-test-{}-{name}.passwd", std::process::id()));
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

pub fn connect_packet(
    version: ProtocolVersion,
    client_id: &str,
    clean: bool,
    keep_alive: u16,
) -> Connect {
    Connect {
        version,
        bridge: false,
        clean_start: clean,
        keep_alive,
        properties: Properties::default(),
        client_id: MqttStr::new(client_id).unwrap(),
        will: None,
        username: None,
        password: None,
    }
}

/// A clean CONNECT carrying a will on topic `w`.
pub fn connect_with_will(
    version: ProtocolVersion,
    client_id: &str,
    qos: QoS,
    retain: bool,
    payload: &'static [u8],
) -> Connect {
    let mut c = connect_packet(version, client_id, true, 60);
    c.will = Some(Will {
        qos,
        retain,
        properties: Properties::default(),
        topic: s("w"),
        payload: Bytes::from_static(payload),
    });
    c
}

pub fn s(text: &str) -> MqttStr {
    MqttStr::new(text).unwrap()
}

pub fn publish(topic: &str, payload: &[u8], qos: QoS, packet_id: u16, retain: bool) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain,
        topic: s(topic),
        packet_id,
        properties: Properties::default(),
        payload: Bytes::copy_from_slice(payload),
    })
}

/// A SUBSCRIBE of every one of `filters`, at `qos`.
pub fn subscribe_to(packet_id: u16, filters: &[String], qos: QoS) -> Packet {
    let wanted: Vec<(&str, QoS)> = filters.iter().map(|f| (f.as_str(), qos)).collect();
    subscribe(packet_id, &wanted)
}

pub fn subscribe(packet_id: u16, filters: &[(&str, QoS)]) -> Packet {
    Packet::Subscribe(Subscribe {
        packet_id,
        properties: Properties::default(),
        filters: filters
            .iter()
            .map(|(f, qos)| {
                (
                    s(f),
                    SubscriptionOptions {
                        qos: *qos,
                        ..Default::default()
                    },
                )
            })
            .collect(),
    })
}

/// A process's resident memory, KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// What a tool printed, once it is known to have succeeded (otherwise its stderr fails
/// the test).
pub fn succeeded(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A program from Debian's packages (mosquitto is in /usr/sbin, which a PATH may lack).
pub fn program(name: &str) -> String {
    let found = Command::new("which")
        .arg(name)
        .output()
        .is_ok_and(|o| o.status.success());
    if found {
        name.to_string()
    } else {
        format!("/usr/sbin/{name}")
    }
}

/// A free port below Linux's ephemeral range, so no broker started with `-p 0` takes it.
/// Each call starts its search further on, so that tests running at once in one process
/// do not pick the same port before either binds it.
pub fn quiet_port() -> u16 {
    quiet_ports(1)[0]
}

/// `n` different free ports below Linux's ephemeral range (see `quiet_port`).
pub fn quiet_ports(n: usize) -> Vec<u16> {
    static CALLS: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let start = (std::process::id() as u16 % 2_000).wrapping_add(call.wrapping_mul(37));
    let mut held = Vec::new();
    for i in 0..2_700u16 {
        let port = 30_000 + start.wrapping_add(i) % 2_700;
        if let Ok(listener) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            held.push((port, listener));
            if held.len() == n {
                break;
            }
        }
    }
    assert_eq!(held.len(), n, "free ports");
    held.into_iter().map(|(port, _)| port).collect()
}
