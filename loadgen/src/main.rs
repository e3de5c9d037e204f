//! `loadgen`: an open-loop MQTT load generator that measures any broker over sockets.
//! Its scenarios and measurement arrive with their own issue; this is the crate's place.

use clap::Parser;

/// Measures an MQTT broker: messages per second and latency percentiles, open loop.
#[derive(Debug, Parser)]
#[command(name = "loadgen", version)]
struct Args {
    /// Broker host.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Broker port.
    #[arg(long, default_value_t = 1883)]
    port: u16,
}

fn main() {
    let args = Args::parse();
    eprintln!(
        "loadgen: would measure {}:{}; scenarios are not built yet.",
        args.host, args.port
    );
    std::process::exit(2);
}
