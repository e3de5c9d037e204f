//! `midge`: the broker's command line. Flags follow Mosquitto's where they overlap.

use clap::{Parser, ValueEnum};
use midge::config::Config;
use midge::server::Server;
use std::path::PathBuf;
use std::process::ExitCode;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum IoBackend {
    /// epoll, through mio.
    Epoll,
}

/// An MQTT 3.1 / 3.1.1 / 5.0 broker, a drop-in alternative to Mosquitto.
#[derive(Debug, Parser)]
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
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    threads: Option<u16>,
    /// The I/O backend.
    #[arg(long = "io", value_enum, default_value = "epoll")]
    io: IoBackend,
}

fn main() -> ExitCode {
    let args = Args::parse();
    midge::logging::init(args.verbose);
    let mut config = match &args.config_file {
        Some(path) => match Config::from_file(path) {
            Ok(config) => config,
            Err(e) => {
                log::error!("Error: {e}");
                return ExitCode::FAILURE;
            }
        },
        None => Config::default(),
    };
    if config.verbose && !args.verbose {
        midge::logging::init(true);
        log::set_max_level(log::LevelFilter::Debug);
    }
    config.verbose |= args.verbose;
    if let Some(threads) = args.threads {
        config.threads = threads.into();
    }
    config.listeners_with_ports(&args.port);

    if args.daemon {
        // SAFETY: called before any thread is started, as daemon(3) (a fork) requires.
        // nochdir = 1 keeps relative paths in the configuration working.
        if unsafe { libc::daemon(1, 0) } != 0 {
            log::error!(
                "Error: cannot run in the background: {}",
                std::io::Error::last_os_error()
            );
            return ExitCode::FAILURE;
        }
    }

    log::info!("midge version {} starting", env!("CARGO_PKG_VERSION"));
    if let Some(path) = &args.config_file {
        log::info!("Config loaded from {}.", path.display());
    } else {
        log::info!("Using default config.");
    }
    let server = match Server::start(config) {
        Ok(server) => server,
        Err(e) => {
            log::error!("Error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let stopper = server.stopper();
    let mut signals = match signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ]) {
        Ok(signals) => signals,
        Err(e) => {
            log::error!("Error: cannot handle signals: {e}");
            server.shutdown();
            return ExitCode::FAILURE;
        }
    };
    std::thread::spawn(move || {
        if signals.forever().next().is_some() {
            stopper.stop();
        }
    });
    server.join();
    log::info!("midge version {} terminating", env!("CARGO_PKG_VERSION"));
    ExitCode::SUCCESS
}
