//! `midge`: the broker's command line. Flags follow Mosquitto's where they overlap.

use clap::{Parser, ValueEnum};
use midge::config::Config;
use midge::logging::LogTypes;
use midge::server::Server;
use midge::shard::ReloadSignals;
use midge::systemd::Notifier;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum IoBackend {
    /// io_uring where the kernel offers it (Linux 6.1+, not blocked), else epoll.
    Auto,
    /// io_uring, or fail to start.
    Uring,
    /// epoll, through mio.
    Epoll,
}

/// An MQTT 3.1 / 3.1.1 / 5.0 broker, a drop-in alternative to Mosquitto.
#[derive(Clone, Debug, Parser)]
#[command(name = "midge", version)]
struct Args {
    /// Read the configuration from a mosquitto.conf file.
    #[arg(short = 'c', long = "config-file", value_name = "FILE")]
    config_file: Option<PathBuf>,
    /// Listen on this port (may be given several times; 0 picks a free one).
    #[arg(short = 'p', long = "port", value_name = "PORT")]
    port: Vec<u16>,
    /// Log everything (log_type all).
    #[arg(short = 'v', long = "verbose")]
    verbose: bool,
    /// Run in the background.
    #[arg(short = 'd', long = "daemon")]
    daemon: bool,
    /// Shards (threads, one per core); default: the number of cores.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=midge::limits::SHARDS_MAX as i64))]
    threads: Option<u16>,
    /// The I/O backend (wins over the file's io_backend; default: the file's, else auto).
    #[arg(long = "io", value_enum)]
    io: Option<IoBackend>,
    /// Check the configuration and the I/O backend, say what would run, and exit (0: fine).
    #[arg(long = "test-config")]
    test_config: bool,
    /// List every mosquitto.conf option midge reads, with what it does, and exit.
    #[arg(long = "list-options")]
    list_options: bool,
}

/// Command-line settings that win over the file's (also after a reload).
fn apply_args(config: &mut Config, args: &Args) {
    if args.verbose {
        config.log.types = LogTypes::ALL;
    }
    if let Some(threads) = args.threads {
        config.threads = threads.into();
    }
    if let Some(io) = args.io {
        config.io_backend = match io {
            IoBackend::Auto => midge::config::IoBackend::Auto,
            IoBackend::Uring => midge::config::IoBackend::Uring,
            IoBackend::Epoll => midge::config::IoBackend::Epoll,
        };
    }
}

fn read_config(args: &Args) -> Result<Config, String> {
    let mut config = match &args.config_file {
        Some(path) => Config::from_file(path).map_err(|e| e.to_string())?,
        None => Config::default(),
    };
    apply_args(&mut config, args);
    Ok(config)
}

/// SIGHUP: read the file again and apply what may change; on any error keep everything as
/// it is and say why.
fn reload(args: &Args, stopper: &midge::server::Stopper, systemd: Option<&Notifier>) {
    if let Some(systemd) = systemd {
        systemd.reloading();
    }
    reload_file(args, stopper);
    if let Some(systemd) = systemd {
        systemd.ready();
    }
}

fn reload_file(args: &Args, stopper: &midge::server::Stopper) {
    let Some(path) = &args.config_file else {
        log::info!(target: "information", "Reload requested, but no configuration file was given.");
        return;
    };
    log::info!(target: "information", "Reloading config.");
    let fresh = match read_config(args) {
        Ok(fresh) => fresh,
        Err(e) => {
            log::error!(
                "Error: reloading {} failed, keeping the current settings: {e}",
                path.display()
            );
            return;
        }
    };
    if let Err(e) = midge::logging::apply(&fresh.log) {
        log::error!(
            "Error: reloading {} failed, keeping the current settings: {e}",
            path.display()
        );
        return;
    }
    for warning in stopper.reload(fresh) {
        log::warn!("Warning: {warning}.");
    }
}

fn main() -> ExitCode {
    // No transparent huge pages: mimalloc asks for them on its arenas, and then every
    // touched 2 MiB counts whole in RSS: idle connections cost three times their bytes
    // (measured with scripts/memory.py). The broker's hot data is small; TLB misses are
    // not where its time goes.
    midge::os::disable_transparent_huge_pages();
    let args = Args::parse();
    if args.list_options {
        return list_options();
    }
    midge::logging::init(args.verbose);
    // Whichever way main returns, what is still queued for the log is written first.
    let _flush = FlushLog;
    let mut config = match read_config(&args) {
        Ok(config) => config,
        Err(e) => {
            log::error!("Error: {e}");
            return ExitCode::FAILURE;
        }
    };
    config.listeners_with_ports(&args.port);
    if args.test_config {
        return test_config(&config);
    }
    // Mosquitto's default: started as root, the broker runs as `mosquitto` (or `nobody`).
    // (Only the command does this; an embedded `Server` changes user only when told.)
    config.user.get_or_insert_with(|| "mosquitto".to_string());
    if let Err(e) = midge::logging::apply(&config.log) {
        log::error!("Error: {e}");
        return ExitCode::FAILURE;
    }

    if args.daemon {
        // The log's writer thread (the only other thread now) writes out what is queued and
        // releases the log's destinations before the fork; nothing logs between here and
        // the fork, so it is idle then, and the child starts a writer of its own (`logging`:
        // one per process). (Left: the instant the idle writer takes the queue's lock to wait
        // on it; a fork exactly then would leave the child's log stuck.)
        midge::logging::flush();
        // SAFETY: no shard, listener or other thread of the broker runs yet, and the log's
        // writer holds nothing the child uses (above).
        if let Err(e) = unsafe { midge::os::daemonize() } {
            log::error!("Error: cannot run in the background: {e}");
            return ExitCode::FAILURE;
        }
    }
    if let Some(pid_file) = &config.pid_file {
        if let Err(e) = std::fs::write(pid_file, format!("{}\n", std::process::id())) {
            log::error!("Error: cannot write pid file {}: {e}", pid_file.display());
            return ExitCode::FAILURE;
        }
    }
    let pid_file = config.pid_file.clone();

    log::info!(target: "information", "midge version {} starting", env!("CARGO_PKG_VERSION"));
    if let Some(path) = &args.config_file {
        log::info!(target: "information", "Config loaded from {}.", path.display());
    } else {
        log::info!(target: "information", "Using default config.");
    }
    raise_file_limit();
    let code = run(config, &args);
    if let Some(pid_file) = pid_file {
        let _ = std::fs::remove_file(pid_file);
    }
    code
}

/// `--list-options`: one line per option, its name and what it does; those read without
/// being acted on yet say so.
fn list_options() -> ExitCode {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    for (name, about, acted_on) in midge::config::option_listing() {
        let not_yet = if acted_on {
            ""
        } else {
            " (read, not acted on yet)"
        };
        if writeln!(out, "{name:<32} {about}{not_yet}").is_err() {
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

/// `--test-config`: what the broker would run with, or the error it would stop on.
fn test_config(config: &Config) -> ExitCode {
    let backend = match midge::server::choose_io_backend(config.io_backend) {
        Ok(backend) => backend,
        Err(e) => {
            log::error!("Error: {e}");
            return ExitCode::FAILURE;
        }
    };
    for listener in &config.listeners {
        if let Some(path) = &listener.unix_socket {
            println!("listener unix {path}");
            continue;
        }
        match listener.addrs() {
            Ok(addrs) => {
                for addr in addrs {
                    println!("listener {addr}");
                }
            }
            Err(e) => {
                log::error!("Error: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    for bridge in &config.bridges {
        let (remote, local) = midge::bridge::client_ids(bridge);
        let addresses: Vec<String> = (bridge.addresses.iter())
            .map(|(host, port)| format!("{host}:{port}"))
            .collect();
        println!(
            "bridge {} to {} as {remote} (locally {local})",
            bridge.name,
            addresses.join(" ")
        );
    }
    println!("io_backend {backend}");
    println!("Configuration OK.");
    ExitCode::SUCCESS
}

fn run(config: Config, args: &Args) -> ExitCode {
    // Signals are caught before the listeners open, so that one sent as soon as the broker
    // is reachable is handled, not fatal. SIGHUP is blocked in every thread and read by the
    // reloading thread from a signalfd (`server::watch_reload_signals`): it is counted
    // before it leaves the pending set, which shards judging a CONNECT look at.
    midge::server::block_reload_signals();
    let reload_signals = Arc::new(ReloadSignals::default());
    let signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGUSR1,
    ]);
    let mut signals = match signals {
        Ok(signals) => signals,
        Err(e) => {
            log::error!("Error: cannot handle signals: {e}");
            return ExitCode::FAILURE;
        }
    };
    let server = match Server::start_with(config, Vec::new(), reload_signals.clone()) {
        Ok(server) => server,
        Err(e) => {
            log::error!("Error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let stopper = server.stopper();
    // Started by systemd (Type=notify): the listeners are open and persisted state is in.
    let systemd = Notifier::from_env().map(Arc::new);
    if let Some(systemd) = &systemd {
        systemd.ready();
        if let Some(every) = midge::systemd::watchdog_interval() {
            let (systemd, stopper) = (systemd.clone(), stopper.clone());
            std::thread::spawn(move || watchdog(&systemd, &stopper, every));
        }
    }
    let handle = signals.handle();
    let (reload_args, reload_stopper) = (args.clone(), stopper.clone());
    let reload_systemd = systemd.clone();
    // Ends with the process.
    std::thread::spawn(move || {
        let reload = || reload(&reload_args, &reload_stopper, reload_systemd.as_deref());
        if let Err(e) = midge::server::watch_reload_signals(reload_signals, reload) {
            log::error!("Error: SIGHUP (reload) cannot be taken: {e}");
        }
    });
    let signal_thread = std::thread::spawn(move || {
        for signal in signals.forever() {
            if signal == signal_hook::consts::SIGUSR1 {
                stopper.compact();
            } else {
                if let Some(systemd) = &systemd {
                    systemd.stopping();
                }
                stopper.stop();
                return;
            }
        }
    });
    server.join();
    handle.close();
    let _ = signal_thread.join();
    log::info!(target: "information", "midge version {} terminating", env!("CARGO_PKG_VERSION"));
    ExitCode::SUCCESS
}

/// systemd's watchdog (`WatchdogSec`): `WATCHDOG=1` every `every` while every shard has
/// turned since the last ping (a shard turns at least every timer tick, 250 ms); a shard
/// that stops turning stops the pings, said once, and systemd restarts the broker.
fn watchdog(systemd: &Notifier, stopper: &midge::server::Stopper, every: std::time::Duration) {
    // A shard is judged stuck only after this long without a turn (an idle one turns only
    // at its timer tick).
    let grace = std::time::Duration::from_secs(1).max(every);
    let (mut last, mut moved_at) = (stopper.loop_turns(), std::time::Instant::now());
    let mut stalled = false;
    while !stopper.stopping() {
        std::thread::sleep(every);
        let now = stopper.loop_turns();
        let stuck: Vec<usize> = (0..now.len()).filter(|&i| now[i] == last[i]).collect();
        if stuck.is_empty() {
            (last, moved_at, stalled) = (now, std::time::Instant::now(), false);
            systemd.notify("WATCHDOG=1");
        } else if moved_at.elapsed() < grace {
            systemd.notify("WATCHDOG=1");
        } else if !stalled {
            log::error!(
                "Error: shard(s) {stuck:?} have not turned for {grace:?}; the systemd watchdog is no longer pinged."
            );
            stalled = true;
        }
    }
}

/// Every connection takes a file descriptor: the soft `RLIMIT_NOFILE` (often 1024) is
/// raised to the hard limit at start, and said.
fn raise_file_limit() {
    let Ok((soft, hard)) = midge::os::open_files_limit() else {
        return;
    };
    if soft >= hard {
        return;
    }
    match midge::os::set_open_files_limit(hard, hard) {
        Ok(()) => {
            log::info!("Raised the open file limit from {soft} to {hard} (one per connection).")
        }
        Err(e) => log::warn!("Warning: cannot raise the open file limit from {soft}: {e}"),
    }
}

/// Writes the log's queued lines when dropped (`logging.rs` writes from a thread).
struct FlushLog;

impl Drop for FlushLog {
    fn drop(&mut self) {
        midge::logging::flush();
    }
}
