//! `loadgen`: an open-loop MQTT load generator that measures any broker over sockets.
//!
//! Every message carries its publisher, sequence number and *intended* send time; latency is
//! receive time minus intended time (so coordinated omission cannot hide a stalled broker),
//! loss/duplicates/reordering come from the sequence numbers, and loadgen reports when it
//! fell behind its own schedule instead of passing that off as a broker figure.

mod cli;
mod compare;
mod hlog;
mod html;
mod mqtt;
mod plan;
mod plots;
mod procfs;
mod report;
mod stats;
mod storm;
mod tls;
mod worker;

use clap::Parser;
use cli::Args;
use std::io::IsTerminal;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use plan::{Scenario, Shape};
use report::{Report, RunHistograms};
use stats::{latency_histogram, Delivery, Percentiles};

fn pin(cpus: &[usize], index: usize) {
    if cpus.is_empty() {
        return;
    }
    let id = cpus[index % cpus.len()];
    if let Some(core) = core_affinity::get_core_ids()
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.id == id)
    {
        core_affinity::set_for_current(core);
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(out) = &args.compare {
        return match compare::write(out, &args.logs, args.notes.as_deref()) {
            Ok(()) => {
                eprintln!("loadgen: wrote {}", out.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("loadgen: --compare: {e}");
                ExitCode::from(2)
            }
        };
    }
    let (addr, tls, source_ips) = match check_args(&args).and_then(|()| connection_setup(&args)) {
        Ok(setup) => setup,
        Err(e) => {
            eprintln!("loadgen: {e}");
            return ExitCode::from(2);
        }
    };
    let mut reports = if args.scenario == Scenario::ConnStorm {
        vec![conn_storm(&args, addr, &source_ips, &tls)]
    } else if args.ceiling {
        find_ceiling(&args, addr, &source_ips, &tls)
    } else {
        vec![run_once(&args, addr, &source_ips, args.rate, &tls)]
    };
    for r in &mut reports {
        r.title.clone_from(&args.title);
    }
    report::print(&reports, args.json, args.csv);
    if let Some(path) = &args.report {
        if let Err(e) = write_report(path, &reports) {
            eprintln!("loadgen: --report: {e}");
            return ExitCode::from(2);
        }
    }
    let failed = reports.iter().any(|r| !r.errors.is_empty());
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// The options checked before any load (a long run should not end unable to write its
/// report).
fn check_args(args: &Args) -> Result<(), String> {
    if let Some(path) = &args.report {
        if path.extension().is_some_and(|e| e == "hlog") {
            return Err("--report names the HTML page; the .hlog goes beside it".into());
        }
        std::fs::File::create(path)
            .and_then(|_| std::fs::File::create(path.with_extension("hlog")))
            .map_err(|e| format!("--report {}: {e}", path.display()))?;
    }
    if args.payload < stats::HEADER_LEN {
        return Err(format!(
            "--payload must be at least {} bytes",
            stats::HEADER_LEN
        ));
    }
    if !(args.rate > 0.0 && args.duration > 0.0 && args.warmup >= 0.0) {
        return Err("--rate and --duration must be positive, --warmup not negative".into());
    }
    if !matches!(args.qos.as_str(), "0" | "1" | "2" | "mix") {
        return Err("--qos takes 0, 1, 2 or mix".into());
    }
    Ok(())
}

/// The broker's address, TLS to it if asked, the source addresses to connect from; and
/// enough file descriptors for every client.
fn connection_setup(args: &Args) -> Result<(SocketAddr, Option<tls::Tls>, Vec<IpAddr>), String> {
    let addr = (args.host.as_str(), args.port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| format!("cannot resolve {}", args.host))?;
    let tls = args
        .tls
        .then(|| tls::Tls::new(&args.host, args.cafile.as_deref(), args.insecure))
        .transpose()
        .map_err(|e| e.to_string())?;
    let source_ips = args
        .source_ips
        .as_deref()
        .map(cli::parse_source_ips)
        .transpose()
        .map_err(|e| format!("--source-ips: {e}"))?
        .unwrap_or_default();
    // Every client is a socket (two for each client in the traffic scenarios, at most).
    let per_client = if args.scenario == Scenario::ConnStorm {
        1
    } else {
        2
    };
    procfs::ensure_fd_limit(u64::from(args.clients) * per_client + 64)
        .map_err(|e| e.to_string())?;
    Ok((addr, tls, source_ips))
}

/// --ceiling: the rate raised by --step until a run does not hold (errors, losses, p99
/// over --p99-max, or loadgen behind); every run's report.
fn find_ceiling(
    args: &Args,
    addr: SocketAddr,
    source_ips: &[IpAddr],
    tls: &Option<tls::Tls>,
) -> Vec<Report> {
    let mut reports = Vec::new();
    let mut rate = args.rate;
    let mut best: Option<Report> = None;
    for _ in 0..30 {
        let mut report = run_once(args, addr, source_ips, rate, tls);
        let held = report.errors.is_empty()
            && report.delivery.lost == 0
            && (report.latency.p99_us as f64) <= args.p99_max * 1000.0
            && !report.loadgen_behind;
        eprintln!(
            "loadgen: {:.0} msgs/s offered: {} (p99 {:.2} ms, lost {})",
            report.offered_msgs_per_s,
            if held { "held" } else { "did not hold" },
            report.latency.p99_us as f64 / 1000.0,
            report.delivery.lost
        );
        report.held = Some(held);
        reports.push(report.clone());
        if !held {
            break;
        }
        best = Some(report);
        rate *= args.step;
    }
    match &best {
        Some(b) => eprintln!(
            "loadgen: sustainable throughput: {:.0} msgs/s offered, {:.0} deliveries/s",
            b.offered_msgs_per_s, b.deliveries_per_s
        ),
        None => eprintln!("loadgen: not even the first rate held"),
    }
    reports
}

/// The HTML page at `path`, the histograms beside it (.hlog).
fn write_report(path: &std::path::Path, reports: &[Report]) -> Result<(), String> {
    let command: Vec<String> = std::env::args().collect();
    std::fs::write(path, html::page(reports, &command.join(" ")))
        .map_err(|e| format!("{}: {e}", path.display()))
        .and_then(|()| hlog::write(&path.with_extension("hlog"), reports))?;
    eprintln!(
        "loadgen: report in {} (histograms in {})",
        path.display(),
        path.with_extension("hlog").display()
    );
    Ok(())
}

fn run_once(
    args: &Args,
    addr: SocketAddr,
    source_ips: &[IpAddr],
    rate: f64,
    tls: &Option<tls::Tls>,
) -> Report {
    let qos = args.qos.parse::<u8>().ok();
    let run_id = format!(
        "{}-{}",
        std::process::id(),
        RUNS.fetch_add(1, Ordering::Relaxed)
    );
    let shape = Shape {
        scenario: args.scenario,
        clients: args.clients,
        publishers: args.publishers,
        share: args.share,
        qos,
        run_id,
    };
    let plan = plan::plan(&shape);
    let total_seq = ((args.warmup + args.duration) * rate).ceil() as u64;
    let window_start_seq = (args.warmup * rate).ceil() as u64;
    let shared = shared_state(
        args,
        addr,
        source_ips,
        rate,
        tls,
        &plan,
        (total_seq, window_start_seq),
    );
    let handles = spawn_workers(args, &plan, &shared);
    let subscribers = plan
        .clients
        .iter()
        .filter(|c| c.subscribe.is_some())
        .count() as u32;
    let mut report = report_heading(args, addr, rate, plan.publishers, subscribers);
    start_and_measure(args, &shared, &plan, source_ips, &mut report);
    shared.stop.store(true, Ordering::Release);
    let (streams, histograms) = join_workers(handles, &mut report);
    report.delivery = stats::account(&streams, &plan.expected, window_start_seq..total_seq);
    report.deliveries_per_s = report.delivery.received as f64 / args.duration;
    report.latency = Percentiles::of(&histograms.latency);
    report.send_lag = Percentiles::of(&histograms.send_lag);
    report.loadgen_behind = (report.send_lag.p99_us as f64) > args.lag_max * 1000.0;
    if args.report.is_some() {
        report.histograms = Some(Box::new(histograms));
    }
    if let Some(cpu) = report.broker_cpu_s {
        if cpu > 0.0 {
            report.deliveries_per_cpu_s = Some(report.delivery.received as f64 / cpu);
        }
    }
    report
}

/// What every worker thread of one run shares: where to connect, the schedule (messages
/// `seqs.0` in all, measured from `seqs.1`), and the counters.
fn shared_state(
    args: &Args,
    addr: SocketAddr,
    source_ips: &[IpAddr],
    rate: f64,
    tls: &Option<tls::Tls>,
    plan: &plan::Plan,
    (total_seq, window_start_seq): (u64, u64),
) -> Arc<worker::Shared> {
    Arc::new(worker::Shared {
        addr,
        sub_addr: SocketAddr::new(addr.ip(), args.sub_port.unwrap_or(addr.port())),
        tls: tls.clone(),
        ws_host: args.ws.then(|| args.host.clone()),
        source_ips: source_ips.to_vec(),
        v5: args.mqtt == 5,
        persistent: args.persistent,
        payload: args.payload,
        inflight: args.inflight.max(1),
        rate,
        publishers: plan.publishers,
        total_seq,
        window_start_seq,
        ready: AtomicUsize::new(0),
        epoch: OnceLock::new(),
        stop: AtomicBool::new(false),
        failed: AtomicBool::new(false),
        sent: AtomicU64::new(0),
        received: AtomicU64::new(0),
        live: Mutex::new(latency_histogram()),
        // Per second over the whole run and its drain, with --report.
        timeline_s: if args.report.is_some() {
            (args.warmup + args.duration + args.drain).ceil() as usize + 2
        } else {
            0
        },
    })
}

/// The worker threads, each with its share of the clients.
fn spawn_workers(
    args: &Args,
    plan: &plan::Plan,
    shared: &Arc<worker::Shared>,
) -> Vec<std::thread::JoinHandle<worker::WorkerResult>> {
    let threads = args.threads.max(1);
    let mut per_thread: Vec<Vec<(usize, plan::ClientPlan)>> = vec![Vec::new(); threads];
    for (i, client) in plan.clients.iter().enumerate() {
        per_thread[i % threads].push((i, client.clone()));
    }
    per_thread
        .into_iter()
        .enumerate()
        .map(|(i, clients)| {
            let shared = shared.clone();
            let cpus = args.cpus.clone();
            std::thread::spawn(move || {
                pin(&cpus, i);
                worker::run(shared, clients)
            })
        })
        .collect()
}

/// The report's description of the run, before it is measured.
fn report_heading(
    args: &Args,
    addr: SocketAddr,
    rate: f64,
    publishers: u32,
    subscribers: u32,
) -> Report {
    Report {
        scenario: format!("{:?}", args.scenario).to_lowercase(),
        broker: args.label.clone().unwrap_or_else(|| addr.to_string()),
        mqtt: if args.mqtt == 5 {
            "5".into()
        } else {
            "3.1.1".into()
        },
        qos: args.qos.clone(),
        payload_bytes: args.payload,
        publishers,
        subscribers,
        rate_per_publisher: rate,
        offered_msgs_per_s: rate * f64::from(publishers),
        duration_s: args.duration,
        warmup_s: args.warmup,
        ..Report::default()
    }
}

/// Waits (bounded) until every client is connected and subscribed, then starts the
/// schedules together (and the churn, for that scenario) and measures.
fn start_and_measure(
    args: &Args,
    shared: &Arc<worker::Shared>,
    plan: &plan::Plan,
    source_ips: &[IpAddr],
    report: &mut Report,
) {
    let until = Instant::now() + Duration::from_secs(60);
    while shared.ready.load(Ordering::Acquire) < plan.clients.len()
        && !shared.failed.load(Ordering::Acquire)
        && Instant::now() < until
    {
        std::thread::sleep(Duration::from_millis(2));
    }
    if shared.ready.load(Ordering::Acquire) < plan.clients.len() {
        report.errors.push(format!(
            "only {} of {} clients connected and subscribed",
            shared.ready.load(Ordering::Acquire),
            plan.clients.len()
        ));
    } else {
        let epoch = Instant::now() + Duration::from_millis(100);
        let _ = shared.epoch.set(epoch);
        let churn = (args.scenario == Scenario::Churn).then(|| {
            let (shared, rate, v5) = (shared.clone(), args.churn_rate, args.mqtt == 5);
            let (cpus, ips) = (args.cpus.clone(), source_ips.to_vec());
            let window = (
                epoch + Duration::from_secs_f64(args.warmup),
                Duration::from_secs_f64(args.duration),
            );
            std::thread::spawn(move || {
                pin(&cpus, usize::MAX);
                storm::churn(&shared, &ips, rate, v5, window.0, window.1)
            })
        });
        measure(args, shared, plan, epoch, report);
        if let Some(churn) = churn {
            match churn.join() {
                Ok(c) => {
                    report.churn_cycles = Some(c.connected);
                    report.churn_connack = Some(Percentiles::of(&c.latency));
                    report.errors.extend(c.errors.into_iter().take(10));
                }
                Err(_) => report.errors.push("the churn thread panicked".into()),
            }
        }
    }
}

/// Joins the worker threads: their streams, latencies, send lags and timelines merged,
/// their sent counts and errors into `report`.
fn join_workers(
    handles: Vec<std::thread::JoinHandle<worker::WorkerResult>>,
    report: &mut Report,
) -> (stats::Streams, RunHistograms) {
    let mut streams = stats::Streams::new();
    let mut latency = latency_histogram();
    let mut send_lag = latency_histogram();
    let mut timeline = stats::Timeline::default();
    for handle in handles {
        match handle.join() {
            Ok(r) => {
                stats::merge_streams(&mut streams, r.streams);
                let _ = latency.add(&r.latency);
                let _ = send_lag.add(&r.send_lag);
                if let Some(t) = &r.timeline {
                    timeline.merge(t);
                }
                report.sent += r.sent_in_window;
                report.errors.extend(r.errors);
            }
            Err(_) => report.errors.push("a load thread panicked".into()),
        }
    }
    let histograms = RunHistograms {
        latency,
        send_lag,
        timeline,
    };
    (streams, histograms)
}

static RUNS: AtomicU64 = AtomicU64::new(0);

/// Waits out the warm-up and the window (sampling the broker), then the drain.
fn measure(
    args: &Args,
    shared: &worker::Shared,
    plan: &plan::Plan,
    epoch: Instant,
    report: &mut Report,
) {
    let window_start = epoch + Duration::from_secs_f64(args.warmup);
    let window_end = window_start + Duration::from_secs_f64(args.duration);
    let progress = std::io::stderr().is_terminal();
    let mut cpu_start = None;
    let mut rss_max = 0u64;
    let (mut last_sent, mut last_received) = (0u64, 0u64);
    let mut next_tick = epoch + Duration::from_secs(1);
    let deliveries_per_message = plan.expected.len() as f64 / f64::from(plan.publishers.max(1));
    while Instant::now() < window_end && !shared.failed.load(Ordering::Acquire) {
        let now = Instant::now();
        if cpu_start.is_none() && now >= window_start {
            cpu_start = args.broker_pid.and_then(procfs::cpu_times);
        }
        if now >= next_tick {
            if let Some(pid) = args.broker_pid {
                rss_max = rss_max.max(procfs::rss_kib(pid).unwrap_or(0));
            }
            let sent = shared.sent.load(Ordering::Relaxed);
            let received = shared.received.load(Ordering::Relaxed);
            let p99 = shared.live.lock().map(|mut h| {
                let p = if h.is_empty() {
                    0
                } else {
                    h.value_at_quantile(0.99)
                };
                h.reset();
                p
            });
            if progress {
                // Deliveries owed for what was sent and not yet received: lost or late.
                let owed = (sent as f64 * deliveries_per_message) as i64 - received as i64;
                eprint!(
                    "\r\x1b[2Kt={:>4.0}s  sent {:>9}/s  received {:>9}/s  p99 {:>8.2} ms  outstanding {:>8}",
                    now.duration_since(epoch).as_secs_f64(),
                    sent - last_sent,
                    received - last_received,
                    p99.unwrap_or(0) as f64 / 1000.0,
                    owed.max(0)
                );
            }
            (last_sent, last_received) = (sent, received);
            next_tick += Duration::from_secs(1);
        }
        std::thread::sleep(
            Duration::from_millis(10).min(window_end.saturating_duration_since(Instant::now())),
        );
    }
    if progress {
        eprintln!();
    }
    if let (Some(pid), Some(start)) = (args.broker_pid, cpu_start) {
        if let Some(used) = procfs::cpu_times(pid).map(|end| end.since(start)) {
            report.broker_cpu_s = Some(used.total_s());
            report.broker_user_cpu_s = Some(used.user_s);
            report.broker_system_cpu_s = Some(used.system_s);
        }
        rss_max = rss_max.max(procfs::rss_kib(pid).unwrap_or(0));
        report.broker_rss_max_kib = Some(rss_max);
    }
    // Drain: until every expected message arrived, or the drain time is up.
    let expected_total = plan.expected.len() as u64 * shared.total_seq;
    let drain_until = Instant::now() + Duration::from_secs_f64(args.drain);
    while shared.received.load(Ordering::Relaxed) < expected_total
        && Instant::now() < drain_until
        && !shared.failed.load(Ordering::Acquire)
    {
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn conn_storm(
    args: &Args,
    addr: SocketAddr,
    source_ips: &[IpAddr],
    tls: &Option<tls::Tls>,
) -> Report {
    let shape = Shape {
        scenario: Scenario::ConnStorm,
        clients: args.clients,
        publishers: 0,
        share: 0,
        qos: Some(0),
        run_id: std::process::id().to_string(),
    };
    let plan = plan::plan(&shape);
    let ids: Vec<String> = plan.clients.iter().map(|c| c.client_id.clone()).collect();
    let threads = args.threads.max(1);
    let chunk = ids.len().div_ceil(threads).max(1);
    let rss_before = args.broker_pid.and_then(procfs::rss_kib);
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(args.storm_deadline.max(0.0));
    let handles: Vec<_> = ids
        .chunks(chunk)
        .enumerate()
        .map(|(i, part)| {
            let part = part.to_vec();
            let ips = source_ips.to_vec();
            let (cpus, v5, concurrency) = (args.cpus.clone(), args.mqtt == 5, args.concurrency);
            let tls = tls.clone();
            let ws_host = args.ws.then(|| args.host.clone());
            std::thread::spawn(move || {
                pin(&cpus, i);
                let layers = storm::Layers {
                    tls: tls.as_ref(),
                    ws_host: ws_host.as_deref(),
                };
                storm::connect_all(addr, &ips, &part, v5, concurrency, deadline, layers)
            })
        })
        .collect();
    let mut latency = latency_histogram();
    let mut connected = 0;
    let mut errors = Vec::new();
    let mut streams = Vec::new();
    for h in handles {
        match h.join() {
            Ok(r) => {
                let _ = latency.add(&r.latency);
                connected += r.connected;
                errors.extend(r.errors.into_iter().take(10));
                streams.extend(r.streams);
            }
            Err(_) => errors.push("a connect thread panicked".into()),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs_f64(args.idle));
    let rss_after = args.broker_pid.and_then(procfs::rss_kib);
    drop(streams);
    Report {
        scenario: "conn-storm".into(),
        broker: args.label.clone().unwrap_or_else(|| addr.to_string()),
        mqtt: if args.mqtt == 5 {
            "5".into()
        } else {
            "3.1.1".into()
        },
        subscribers: 0,
        sent: ids.len() as u64,
        delivery: Delivery {
            expected: ids.len() as u64,
            received: connected,
            lost: ids.len() as u64 - connected,
            ..Delivery::default()
        },
        latency: Percentiles::of(&latency),
        histograms: args.report.is_some().then(|| {
            Box::new(RunHistograms {
                latency,
                send_lag: latency_histogram(),
                timeline: stats::Timeline::default(),
            })
        }),
        connects_per_s: Some(connected as f64 / elapsed),
        broker_rss_max_kib: rss_after,
        rss_per_connection_bytes: match (rss_before, rss_after) {
            (Some(b), Some(a)) if connected > 0 => {
                Some((a.saturating_sub(b) * 1024) as f64 / connected as f64)
            }
            _ => None,
        },
        errors,
        ..Report::default()
    }
}
