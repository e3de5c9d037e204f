//! loadgen against a real broker (Debian's mosquitto, installed by scripts/test.sh) on a
//! loopback port: the counts add up, and a broker stalled with SIGSTOP shows up as latency,
//! not as a lower rate that looks fine.

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(10);

/// The tests here run one at a time: each gives mosquitto a port found free a moment before,
/// and two at once could hand out the same one (the second mosquitto would fail to bind while
/// its test talked to the first).
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

struct Mosquitto {
    child: Child,
    port: u16,
}

/// A port free a moment ago (bound here and released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Mosquitto {
    fn start() -> Mosquitto {
        let port = free_port();
        Mosquitto::start_with(&["-p", &port.to_string()], port)
    }

    /// With a WebSocket listener on the port it returns (and a plain one beside it:
    /// Mosquitto 2.0.11 exits with only a WebSocket listener).
    fn start_websockets() -> Mosquitto {
        let (plain, ws) = (free_port(), free_port());
        let conf = std::env::temp_dir().join(format!("loadgen-e2e-ws-{}.conf", std::process::id()));
        std::fs::write(
            &conf,
            format!("listener {plain} 127.0.0.1\nlistener {ws} 127.0.0.1\nprotocol websockets\nallow_anonymous true\n"),
        )
        .unwrap();
        Mosquitto::start_with(&["-c", conf.to_str().unwrap()], ws)
    }

    /// mosquitto with `args`, once `port` answers.
    fn start_with(args: &[&str], port: u16) -> Mosquitto {
        // Debian puts the broker in /usr/sbin, which a user's PATH may lack.
        let which = Command::new("which").arg("mosquitto").output();
        let program = if which.is_ok_and(|o| o.status.success()) {
            "mosquitto"
        } else {
            "/usr/sbin/mosquitto"
        };
        assert!(
            program == "mosquitto" || std::path::Path::new(program).exists(),
            "mosquitto is missing: scripts/test.sh installs Debian's mosquitto"
        );
        // A free port, given to mosquitto (which binds it at once).
        let mut child = Command::new(program)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let until = Instant::now() + DEADLINE;
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < until,
                "mosquitto does not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        // It is ours that listens: had the port been taken meanwhile, mosquitto would have
        // exited on the failed bind.
        assert!(
            child.try_wait().unwrap().is_none(),
            "mosquitto exited: port {port} was taken"
        );
        Mosquitto { child, port }
    }

    fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on the PID of the child this test started and still holds.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.signal(libc::SIGCONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn loadgen(port: u16, args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["--port", &port.to_string(), "--json"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "loadgen failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let reports: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    reports[0].clone()
}

fn n(v: &serde_json::Value, path: &[&str]) -> f64 {
    let mut v = v;
    for key in path {
        v = &v[key];
    }
    v.as_f64()
        .unwrap_or_else(|| panic!("no number at {path:?} in {v}"))
}

#[test]
fn counts_add_up() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let broker = Mosquitto::start();
    let pid = broker.child.id().to_string();
    // p2p, 4 pairs, QoS 1: 500/s each for a 2 s window after 0.5 s of warm-up.
    let r = loadgen(
        broker.port,
        &[
            "--scenario",
            "p2p",
            "--clients",
            "4",
            "--qos",
            "1",
            "--rate",
            "500",
            "--warmup",
            "0.5",
            "--duration",
            "2",
            "--broker-pid",
            &pid,
        ],
    );
    let window = 1000.0; // ceil(2.5 * 500) - ceil(0.5 * 500)
    assert_eq!(n(&r, &["delivery", "expected"]), 4.0 * window);
    assert_eq!(n(&r, &["delivery", "received"]), 4.0 * window);
    assert_eq!(n(&r, &["delivery", "lost"]), 0.0);
    assert_eq!(n(&r, &["delivery", "duplicates"]), 0.0);
    assert_eq!(n(&r, &["sent"]), 4.0 * window);
    assert_eq!(n(&r, &["latency", "count"]), 4.0 * window);
    assert!(n(&r, &["broker_cpu_s"]) > 0.0);
    // fan-out 1 -> 5 at QoS 0: every subscriber sees every message of the window.
    let r = loadgen(
        broker.port,
        &[
            "--scenario",
            "fan-out",
            "--clients",
            "5",
            "--qos",
            "0",
            "--rate",
            "400",
            "--warmup",
            "0.5",
            "--duration",
            "1",
        ],
    );
    assert_eq!(n(&r, &["delivery", "expected"]), 5.0 * 400.0);
    assert_eq!(
        n(&r, &["delivery", "received"]) + n(&r, &["delivery", "lost"]),
        5.0 * 400.0
    );
    // fan-in through a $share group of 3: each message to exactly one member.
    let r = loadgen(
        broker.port,
        &[
            "--scenario",
            "fan-in",
            "--clients",
            "4",
            "--share",
            "3",
            "--qos",
            "1",
            "--rate",
            "200",
            "--warmup",
            "0.5",
            "--duration",
            "1",
        ],
    );
    assert_eq!(n(&r, &["delivery", "received"]), 4.0 * 200.0);
    assert_eq!(n(&r, &["delivery", "duplicates"]), 0.0);
    // conn-storm: every connection acknowledged.
    let r = loadgen(
        broker.port,
        &[
            "--scenario",
            "conn-storm",
            "--clients",
            "200",
            "--idle",
            "0.2",
            "--broker-pid",
            &pid,
        ],
    );
    assert_eq!(n(&r, &["delivery", "received"]), 200.0);
    assert!(n(&r, &["connects_per_s"]) > 0.0);
}

/// Over WebSockets (`--ws`): traffic and a conn-storm (each connection's upgrade, then its
/// CONNECT), against Mosquitto's WebSocket listener.
#[test]
fn traffic_and_conn_storm_over_websockets() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let broker = Mosquitto::start_websockets();
    let args = |line: &'static str| line.split(' ').collect::<Vec<_>>();
    let p2p = "--ws --scenario p2p --clients 2 --qos 1 --rate 200 --warmup 0.5 --duration 1";
    let r = loadgen(broker.port, &args(p2p));
    assert_eq!(n(&r, &["delivery", "received"]), 2.0 * 200.0, "{r}");
    assert_eq!(n(&r, &["delivery", "lost"]), 0.0);
    let storm = "--ws --scenario conn-storm --clients 100 --concurrency 20 --idle 0";
    let r = loadgen(broker.port, &args(storm));
    assert_eq!(n(&r, &["delivery", "received"]), 100.0, "{r}");
    // The same storm without --ws on a WebSocket port: the CONNECTs are not upgrades, so
    // none is acknowledged, and loadgen says so rather than hanging.
    let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["--port", &broker.port.to_string(), "--json"])
        .args(args(
            "--scenario conn-storm --clients 5 --idle 0 --storm-deadline 5",
        ))
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn a_stalled_broker_shows_as_latency_not_as_a_lower_rate() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let broker = Mosquitto::start();
    let stall = Duration::from_millis(1000);
    let stopper = {
        let pid = broker.child.id() as i32;
        std::thread::spawn(move || {
            // Well inside the measured window (0.5 s warm-up, 3 s window, after connecting).
            std::thread::sleep(Duration::from_millis(2000));
            // SAFETY: SIGSTOP/SIGCONT to the mosquitto this test started.
            unsafe { libc::kill(pid, libc::SIGSTOP) };
            std::thread::sleep(stall);
            // SAFETY: as above.
            unsafe { libc::kill(pid, libc::SIGCONT) };
        })
    };
    let r = loadgen(
        broker.port,
        &[
            "--scenario",
            "p2p",
            "--clients",
            "2",
            "--qos",
            "1",
            "--rate",
            "200",
            "--warmup",
            "0.5",
            "--duration",
            "3",
            "--drain",
            "5",
        ],
    );
    stopper.join().unwrap();
    // Nothing lost, the full rate delivered over the window...
    assert_eq!(n(&r, &["delivery", "lost"]), 0.0);
    assert_eq!(n(&r, &["delivery", "received"]), 2.0 * 600.0);
    // ...but the messages due during the stall waited for it, and the tail says so: about a
    // third of the window was stalled, so p90 and the maximum are near the stall's length.
    assert!(n(&r, &["latency", "max_us"]) >= 900_000.0, "{r}");
    assert!(n(&r, &["latency", "p90_us"]) >= 300_000.0, "{r}");
}

/// A broker that stops accepting (here a listener that never accepts nor answers) does not
/// hang a conn-storm: it ends at `--storm-deadline` and says how many connected and why.
#[test]
fn a_conn_storm_against_a_broker_that_stops_accepting_ends_at_its_deadline() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let started = std::time::Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args([
            "--port",
            &port.to_string(),
            "--json",
            "--scenario",
            "conn-storm",
        ])
        .args(["--clients", "300", "--storm-deadline", "2", "--idle", "0"])
        .output()
        .unwrap();
    // Connections failed: loadgen says so in its exit status, and reports all the same.
    assert!(!out.status.success());
    let reports: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    let report = &reports[0];
    assert!(
        started.elapsed() < std::time::Duration::from_secs(8),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(n(report, &["delivery", "received"]), 0.0);
    let errors = report["errors"].to_string();
    assert!(errors.contains("stopped at the deadline"), "{errors}");
    drop(silent);
}

/// loadgen checks its own file-descriptor limit before it starts, with a clear message.
#[test]
fn too_many_clients_for_the_fd_limit_are_refused_up_front() {
    let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args([
            "--port",
            "1",
            "--scenario",
            "conn-storm",
            "--clients",
            "4000000000",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("file descriptors") && err.contains("ulimit -n"),
        "{err}"
    );
}

/// The histograms of an interval log written by `--report`, by tag: (second, count, max).
fn intervals(log: &std::path::Path) -> Vec<(String, u64, u64, u64)> {
    use base64::Engine;
    use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
    let text = std::fs::read_to_string(log).unwrap();
    let mut deserializer = hdrhistogram::serialization::Deserializer::new();
    IntervalLogIterator::new(text.as_bytes())
        .filter_map(|e| match e.unwrap() {
            LogEntry::Interval(i) => Some(i),
            _ => None,
        })
        .map(|i| {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(i.encoded_histogram())
                .unwrap();
            let h: hdrhistogram::Histogram<u64> =
                deserializer.deserialize(&mut bytes.as_slice()).unwrap();
            let tag = i.tag().unwrap().as_str().to_string();
            (tag, i.start_timestamp().as_secs(), h.len(), h.max())
        })
        .collect()
}

/// `--report` writes a page with its plots and an interval log that holds every latency
/// loadgen measured; `--compare` draws two such runs on one page.
#[test]
fn a_report_page_its_interval_log_and_a_comparison() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let broker = Mosquitto::start();
    let dir = std::env::temp_dir().join(format!("loadgen-report-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let page = |name: &str| dir.join(format!("{name}.html"));
    for (label, file) in [("first", "a"), ("second <b>", "b")] {
        let path = page(file);
        // p2p, 2 pairs at 500/s: 0.5 s warm-up then a 2 s window.
        let r = loadgen(
            broker.port,
            &[
                "--scenario",
                "p2p",
                "--clients",
                "2",
                "--rate",
                "500",
                "--warmup",
                "0.5",
                "--duration",
                "2",
                "--label",
                label,
                "--title",
                "p2p-qos0",
                "--report",
                path.to_str().unwrap(),
            ],
        );
        assert_eq!(r["broker"], label);
        assert_eq!(n(&r, &["delivery", "lost"]), 0.0);
    }
    let html = std::fs::read_to_string(page("a")).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>"));
    // Four plots (percentiles, deliveries, latency and send lag per second), drawn lines.
    assert_eq!(html.matches("<svg").count(), 4, "{html}");
    assert!(html.contains("<polyline"), "plots with lines");
    assert!(html.contains("p2p-qos0 against first"));
    assert!(!html.contains("<script"), "self-contained, nothing to run");

    // Every latency measured is in the log: the window's in `r0-window`, and all of them
    // (warm-up and window: 2 pairs x 1250 messages) spread over the per-second intervals.
    let logged = intervals(&dir.join("a.hlog"));
    let window: Vec<_> = logged.iter().filter(|i| i.0 == "r0-window").collect();
    assert_eq!(window.len(), 1);
    assert_eq!(window[0].2, 2 * 1000, "{logged:?}");
    let per_second: Vec<_> = logged.iter().filter(|i| i.0 == "r0-latency").collect();
    assert!(per_second.len() >= 3, "{logged:?}");
    assert_eq!(per_second.iter().map(|i| i.2).sum::<u64>(), 2 * 1250);
    let lag: u64 = (logged.iter().filter(|i| i.0 == "r0-send-lag"))
        .map(|i| i.2)
        .sum();
    assert_eq!(lag, 2 * 1250, "one send lag per message sent");

    let notes = dir.join("notes.txt");
    std::fs::write(&notes, "scenario  ratio\np2p-qos0  1.00 <x>\n").unwrap();
    let index = dir.join("index.html");
    let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .arg("--compare")
        .arg(&index)
        .arg("--notes")
        .arg(&notes)
        .arg(dir.join("a.hlog"))
        .arg(dir.join("b.hlog"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let html = std::fs::read_to_string(&index).unwrap();
    assert!(html.contains("first vs second &lt;b&gt;"), "{html}");
    assert!(html.contains("1.00 &lt;x&gt;"), "the notes, escaped");
    assert_eq!(html.matches("<svg").count(), 3);
    assert!(
        html.contains("href=\"a.html\""),
        "a link to each run's own page"
    );

    // Bad input: a clear error naming the file, and nothing written.
    let bad = dir.join("bad.hlog");
    std::fs::write(&bad, "not a log\n").unwrap();
    for input in [bad, dir.join("missing.hlog")] {
        let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
            .arg("--compare")
            .arg(dir.join("never.html"))
            .arg(&input)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(input.to_str().unwrap()), "{err}");
    }
    assert!(!dir.join("never.html").exists());
    // A report that could not be written is refused before any load is offered.
    for report in ["/nonexistent-dir/r.html", "r.hlog"] {
        let started = Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
            .args(["--port", &broker.port.to_string(), "--report", report])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&out.stderr).contains("--report"));
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "no load was run"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
