//! `midge`: the broker's command line. Flags follow Mosquitto's where they overlap.

use clap::{Parser, ValueEnum};
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
    /// Listen on this port (may be given several times).
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
    let threads = args.threads.map_or_else(
        || std::thread::available_parallelism().map_or(1, |n| n.get()),
        usize::from,
    );
    let ports = if args.port.is_empty() {
        vec![1883]
    } else {
        args.port.clone()
    };
    println!(
        "midge {}: would listen on port(s) {ports:?} with {threads} shard(s), io {:?}, config {:?}, verbose {}, daemon {}",
        env!("CARGO_PKG_VERSION"),
        args.io,
        args.config_file,
        args.verbose,
        args.daemon
    );
    eprintln!("midge: the broker itself is not built yet; this build parses its flags only.");
    ExitCode::SUCCESS
}
