//! A run's results, and their table, JSON and CSV forms.

use crate::stats::{Delivery, Percentiles, Timeline};
use hdrhistogram::Histogram;

#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Report {
    /// `--title`: what the run is called in a report or a comparison.
    pub title: Option<String>,
    pub scenario: String,
    /// The broker's `--label`, or its address.
    pub broker: String,
    pub mqtt: String,
    pub qos: String,
    pub payload_bytes: usize,
    pub publishers: u32,
    pub subscribers: u32,
    pub rate_per_publisher: f64,
    pub offered_msgs_per_s: f64,
    pub duration_s: f64,
    /// Seconds of warm-up before the measured window.
    pub warmup_s: f64,
    pub sent: u64,
    pub delivery: Delivery,
    pub deliveries_per_s: f64,
    pub latency: Percentiles,
    /// loadgen's own lateness in sending what it was free to send.
    pub send_lag: Percentiles,
    pub loadgen_behind: bool,
    pub broker_cpu_s: Option<f64>,
    /// The broker's CPU in user space and in the kernel (their sum is `broker_cpu_s`). On
    /// loopback the kernel share includes the receivers' TCP work, which a network card
    /// would take elsewhere.
    pub broker_user_cpu_s: Option<f64>,
    pub broker_system_cpu_s: Option<f64>,
    pub broker_rss_max_kib: Option<u64>,
    pub deliveries_per_cpu_s: Option<f64>,
    pub connects_per_s: Option<f64>,
    pub rss_per_connection_bytes: Option<f64>,
    /// churn: connect/disconnect cycles done during the window, and their CONNACK latency.
    pub churn_cycles: Option<u64>,
    pub churn_connack: Option<Percentiles>,
    /// A `--ceiling` step: whether it held (nothing lost, p99 within `--p99-max`, loadgen on
    /// its schedule).
    pub held: Option<bool>,
    pub errors: Vec<String>,
    /// `--report`: the measured window's latencies and send lag, and the run per second.
    #[serde(skip)]
    pub histograms: Option<Box<RunHistograms>>,
}

/// The raw data behind a report's percentiles, kept for `--report`.
#[derive(Clone, Debug)]
pub struct RunHistograms {
    pub latency: Histogram<u64>,
    pub send_lag: Histogram<u64>,
    pub timeline: Timeline,
}

/// Prints the reports as a table, or as JSON or CSV.
pub fn print(reports: &[Report], json: bool, csv: bool) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(reports).expect("reports serialize")
        );
        return;
    }
    if csv {
        println!("scenario,mqtt,qos,payload,publishers,subscribers,offered_msgs_per_s,deliveries_per_s,expected,received,lost,duplicates,reordered,p50_us,p90_us,p99_us,p999_us,p9999_us,max_us,send_lag_p99_us,loadgen_behind,broker_cpu_s,broker_user_cpu_s,broker_system_cpu_s,deliveries_per_cpu_s,connects_per_s,rss_per_connection_bytes");
        for r in reports {
            let opt = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.1}"));
            let opt2 = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.2}"));
            println!(
                "{},{},{},{},{},{},{:.0},{:.0},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
                r.scenario,
                r.mqtt,
                r.qos,
                r.payload_bytes,
                r.publishers,
                r.subscribers,
                r.offered_msgs_per_s,
                r.deliveries_per_s,
                r.delivery.expected,
                r.delivery.received,
                r.delivery.lost,
                r.delivery.duplicates,
                r.delivery.reordered,
                r.latency.p50_us,
                r.latency.p90_us,
                r.latency.p99_us,
                r.latency.p999_us,
                r.latency.p9999_us,
                r.latency.max_us,
                r.send_lag.p99_us,
                r.loadgen_behind,
                opt2(r.broker_cpu_s),
                opt2(r.broker_user_cpu_s),
                opt2(r.broker_system_cpu_s),
                opt(r.deliveries_per_cpu_s),
                opt(r.connects_per_s),
                opt(r.rss_per_connection_bytes)
            );
        }
        return;
    }
    for r in reports {
        println!(
            "scenario {} against {} (MQTT {}, QoS {}, {} B payload)",
            r.scenario, r.broker, r.mqtt, r.qos, r.payload_bytes
        );
        if let Some(rate) = r.connects_per_s {
            println!(
                "  connections     {} of {} ({:.0}/s)",
                r.delivery.received, r.delivery.expected, rate
            );
            println!(
                "  CONNACK latency p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
                ms(r.latency.p50_us),
                ms(r.latency.p99_us),
                ms(r.latency.max_us)
            );
            if let Some(b) = r.rss_per_connection_bytes {
                println!("  broker RSS      {:.0} bytes per connection", b);
            }
        } else {
            println!(
                "  publishers {}  subscribers {}  offered {:.0} msgs/s over {:.1} s",
                r.publishers, r.subscribers, r.offered_msgs_per_s, r.duration_s
            );
            println!("  deliveries      {:.0}/s ({} of {} expected; lost {}, duplicates {}, reordered {})", r.deliveries_per_s, r.delivery.received, r.delivery.expected, r.delivery.lost, r.delivery.duplicates, r.delivery.reordered);
            let l = &r.latency;
            println!("  latency         p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  p99.99 {:.3}  max {:.3} ms", ms(l.p50_us), ms(l.p90_us), ms(l.p99_us), ms(l.p999_us), ms(l.p9999_us), ms(l.max_us));
            if let (Some(cpu), Some(per)) = (r.broker_cpu_s, r.deliveries_per_cpu_s) {
                println!("  broker          {:.2} CPU-s, {:.0} deliveries per CPU-second, RSS max {} KiB", cpu, per, r.broker_rss_max_kib.unwrap_or(0));
            }
            if let (Some(user), Some(system)) = (r.broker_user_cpu_s, r.broker_system_cpu_s) {
                println!("  broker CPU      {user:.2} s user, {system:.2} s system (on loopback, system includes the receivers' TCP work)");
            }
            if let (Some(cycles), Some(c)) = (r.churn_cycles, &r.churn_connack) {
                println!("  churn           {cycles} connect/disconnect cycles, CONNACK p50 {:.2} ms  p99 {:.2} ms", ms(c.p50_us), ms(c.p99_us));
            }
            if r.loadgen_behind {
                println!("  WARNING: loadgen fell behind its own schedule (send lag p99 {:.2} ms): these figures understate the broker", ms(r.send_lag.p99_us));
            }
        }
        for e in r.errors.iter().take(10) {
            println!("  error: {e}");
        }
    }
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}
