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
