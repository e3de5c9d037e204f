//! loadgen's command line.

use clap::Parser;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use crate::plan::Scenario;

/// Measures an MQTT broker: messages per second and latency percentiles, open loop.
#[derive(Clone, Debug, Parser)]
#[command(name = "loadgen", version)]
pub struct Args {
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    #[arg(long, default_value_t = 1883)]
    pub port: u16,

    /// Subscribers connect to this port instead (on --host): another broker, bridged from
    /// the one publishers use, to measure throughput through a bridge.
    #[arg(long)]
    pub sub_port: Option<u16>,

    #[arg(long, value_enum, default_value = "p2p")]
    pub scenario: Scenario,
    /// Pairs (p2p), publishers (fan-in), subscribers (fan-out, wildcard), connections (conn-storm).
    #[arg(long, default_value_t = 10)]
    pub clients: u32,
    /// Publishers for fan-out and wildcard.
    #[arg(long, default_value_t = 1)]
    pub publishers: u32,
    /// fan-in: a `$share` group of this many members instead of one wildcard subscriber.
    #[arg(long, default_value_t = 0)]
    pub share: u32,
    /// Messages per second per publisher.
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// 0, 1, 2, or `mix` (publishers take 0, 1, 2 in turn).
    #[arg(long, default_value = "0")]
    pub qos: String,
    /// Payload bytes (at least 20: loadgen's header).
    #[arg(long, default_value_t = 64)]
    pub payload: usize,
    /// QoS 1/2 messages a publisher may have unacknowledged.
    #[arg(long, default_value_t = 20)]
    pub inflight: usize,
    /// MQTT version: 3 (3.1.1) or 5.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(3..=5))]
    pub mqtt: u8,
    /// Persistent sessions (clean session 0 / session expiry 300 s) instead of clean ones.
    #[arg(long)]
    pub persistent: bool,
    /// Seconds of load before the measured window.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// Seconds of the measured window.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Most seconds to wait after the window for messages still on their way.
    #[arg(long, default_value_t = 5.0)]
    pub drain: f64,
    /// Load threads (each pinned to a core of --cpus).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Cores to pin load threads to, e.g. `0` or `0,2` (default: not pinned).
    #[arg(long, value_delimiter = ',')]
    pub cpus: Vec<usize>,
    /// Source addresses to spread connections over, e.g. 127.0.0.2-127.0.0.20 (more than
    /// 64 k connections need several).
    #[arg(long)]
    pub source_ips: Option<String>,
    /// The broker's PID: report its CPU time, RSS and deliveries per CPU-second.
    #[arg(long)]
    pub broker_pid: Option<u32>,
    /// Step the rate up until loss appears or p99 passes --p99-max; report the highest that held.
    #[arg(long)]
    pub ceiling: bool,
    /// Rate factor between ceiling steps.
    #[arg(long, default_value_t = 1.5)]
    pub step: f64,
    /// The p99 bound for --ceiling, milliseconds.
    #[arg(long, default_value_t = 10.0)]
    pub p99_max: f64,
    /// loadgen's own send lag (p99, milliseconds) above which it reports itself behind.
    #[arg(long, default_value_t = 1.0)]
    pub lag_max: f64,
    /// conn-storm: seconds to hold the connections idle before measuring memory.
    #[arg(long, default_value_t = 2.0)]
    pub idle: f64,
    /// churn: connections opened (and closed again) per second while traffic flows.
    #[arg(long, default_value_t = 100.0)]
    pub churn_rate: f64,
    /// conn-storm: CONNECTs in flight per thread.
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// conn-storm: seconds after which connecting stops, whatever is left (a broker that
    /// stops accepting, at its file-descriptor limit say, must not hang the run).
    #[arg(long, default_value_t = 120.0)]
    pub storm_deadline: f64,
    /// Connect over TLS (with --cafile, or --insecure).
    #[arg(long)]
    pub tls: bool,
    /// --tls: the CA (PEM) the broker's certificate must chain to; checked against --host.
    #[arg(long)]
    pub cafile: Option<String>,
    /// --tls: take any broker certificate (the handshake still costs what it costs).
    #[arg(long)]
    pub insecure: bool,
    /// Connect over WebSockets (path /mqtt, subprotocol mqtt; inside TLS with --tls).
    #[arg(long)]
    pub ws: bool,
    /// Print the results as JSON.
    #[arg(long)]
    pub json: bool,
    /// Print the results as CSV.
    #[arg(long)]
    pub csv: bool,
    /// Also write the run(s) as one self-contained HTML page: the latency distribution by
    /// percentile, deliveries, p99 and send lag per second, the parameters. The raw
    /// histograms go next to it as an HdrHistogram interval log (FILE with .hlog).
    #[arg(long, value_name = "FILE.html")]
    pub report: Option<PathBuf>,
    /// --report: the name the broker goes by in the report (default: its address).
    #[arg(long)]
    pub label: Option<String>,
    /// --report: a title for the run (the scenario's name in a comparison).
    #[arg(long)]
    pub title: Option<String>,
    /// Measure nothing: draw the interval logs written by --report (LOGS) on shared axes,
    /// runs of the same --title together, into this HTML page.
    #[arg(long, value_name = "OUT.html")]
    pub compare: Option<PathBuf>,
    /// --compare: a text file (a ratios table, say) shown at the top of the page.
    #[arg(long, value_name = "FILE", requires = "compare")]
    pub notes: Option<PathBuf>,
    /// --compare: the interval logs to draw.
    #[arg(value_name = "LOGS", requires = "compare")]
    pub logs: Vec<PathBuf>,
}

pub fn parse_source_ips(text: &str) -> Result<Vec<IpAddr>, String> {
    let (a, b) = text.split_once('-').unwrap_or((text, text));
    let a: Ipv4Addr = a.trim().parse().map_err(|_| format!("bad address {a:?}"))?;
    let b: Ipv4Addr = b.trim().parse().map_err(|_| format!("bad address {b:?}"))?;
    let (a, b) = (u32::from(a), u32::from(b));
    if b < a || b - a > 65_536 {
        return Err("the range must run upwards, at most 65536 addresses".into());
    }
    let ips: Vec<IpAddr> = (a..=b).map(|n| IpAddr::V4(Ipv4Addr::from(n))).collect();
    // Load is sent to this machine only.
    if ips.iter().any(|ip| !ip.is_loopback()) {
        return Err("source addresses must be loopback (127.0.0.0/8)".into());
    }
    Ok(ips)
}
