//! `--report FILE.html`: one self-contained page per invocation (no scripts, no fetches):
//! for each run its parameters and figures, the latency distribution by percentile, and
//! deliveries, latency and loadgen's send lag per second.

use std::fmt::Write;

use crate::plots::{self, format_value, Series};
use crate::report::Report;

pub const STYLE: &str = "body{font-family:sans-serif;margin:24px auto;max-width:1000px;color:#222}\
h1{font-size:1.5em}h2{font-size:1.2em;border-top:1px solid #ccc;padding-top:16px;margin-top:32px}\
table{border-collapse:collapse;margin:8px 0 16px}td,th{padding:3px 10px;border-bottom:1px solid #eee;text-align:left}\
td.n{text-align:right;font-variant-numeric:tabular-nums}.warn{color:#b00}.plots svg{display:block;margin:8px 0}\
pre{background:#f6f6f6;padding:10px;overflow-x:auto}";

pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The page for `reports` (one invocation: one run, or the steps of a ceiling search).
pub fn page(reports: &[Report], command: &str) -> String {
    let mut html = String::new();
    let title = reports
        .first()
        .map(|r| format!("loadgen: {} against {}", name(r), r.broker))
        .unwrap_or_else(|| "loadgen".into());
    let _ = write!(
        html,
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{}</title><style>{STYLE}</style></head><body>\
         <h1>{}</h1><p>Open loop: each message's latency counts from when it was meant to be sent, so a stalled \
         broker shows as latency, never as a lower rate. Command: <code>{}</code></p>",
        escape(&title),
        escape(&title),
        escape(command)
    );
    for (i, r) in reports.iter().enumerate() {
        let load = match r.connects_per_s {
            Some(_) => format!("{} connections", r.delivery.expected),
            None => format!("{} msgs/s offered", format_value(r.offered_msgs_per_s)),
        };
        let heading = if reports.len() > 1 {
            format!("Run {} of {}: {load}", i + 1, reports.len())
        } else {
            load
        };
        let _ = write!(html, "<h2>{}</h2>", escape(&heading));
        html.push_str(&parameters(r));
        html.push_str("<div class=\"plots\">");
        html.push_str(&run_plots(r));
        html.push_str("</div>");
    }
    html.push_str("</body></html>\n");
    html
}

/// A run's name: its title, else its scenario.
pub fn name(r: &Report) -> &str {
    r.title.as_deref().unwrap_or(&r.scenario)
}

fn parameters(r: &Report) -> String {
    let ms = |us: u64| format_value(us as f64 / 1000.0);
    let d = &r.delivery;
    let mut rows: Vec<(&str, String)> = vec![
        ("scenario", r.scenario.clone()),
        ("broker", r.broker.clone()),
        (
            "MQTT, QoS, payload",
            format!("{}, QoS {}, {} bytes", r.mqtt, r.qos, r.payload_bytes),
        ),
    ];
    let storm = r.connects_per_s.is_some();
    if storm {
        // A conn-storm's "deliveries" are its connections.
        let connected = format!(
            "{} of {} (refused or not done: {})",
            d.received, d.expected, d.lost
        );
        rows.push(("connections", connected));
    } else {
        rows.push((
            "publishers, subscribers",
            format!("{}, {}", r.publishers, r.subscribers),
        ));
        rows.push((
            "offered",
            format!(
                "{} msgs/s ({} per publisher)",
                format_value(r.offered_msgs_per_s),
                format_value(r.rate_per_publisher)
            ),
        ));
        rows.push((
            "warm-up, window",
            format!("{} s, {} s", r.warmup_s, r.duration_s),
        ));
        rows.push((
            "deliveries",
            format!(
                "{}/s: {} of {} expected; lost {}, duplicates {}, reordered {}",
                format_value(r.deliveries_per_s),
                d.received,
                d.expected,
                d.lost,
                d.duplicates,
                d.reordered
            ),
        ));
    }
    let l = &r.latency;
    rows.push((
        if storm {
            "CONNACK latency (ms)"
        } else {
            "latency (ms)"
        },
        format!(
            "p50 {}, p90 {}, p99 {}, p99.9 {}, p99.99 {}, max {}",
            ms(l.p50_us),
            ms(l.p90_us),
            ms(l.p99_us),
            ms(l.p999_us),
            ms(l.p9999_us),
            ms(l.max_us)
        ),
    ));
    if !storm {
        rows.push((
            "loadgen send lag (ms)",
            format!(
                "p99 {}, max {}",
                ms(r.send_lag.p99_us),
                ms(r.send_lag.max_us)
            ),
        ));
    }
    if let (Some(cpu), Some(user), Some(system)) =
        (r.broker_cpu_s, r.broker_user_cpu_s, r.broker_system_cpu_s)
    {
        rows.push(("broker CPU", format!("{cpu:.2} s ({user:.2} user, {system:.2} system; on loopback the system share includes the receivers' TCP work)")));
    }
    if let Some(per) = r.deliveries_per_cpu_s {
        rows.push(("deliveries per broker CPU-second", format_value(per)));
    }
    if let Some(kib) = r.broker_rss_max_kib {
        rows.push(("broker RSS, most", format!("{kib} KiB")));
    }
    if let Some(rate) = r.connects_per_s {
        rows.push(("connects", format!("{}/s", format_value(rate))));
    }
    if let Some(held) = r.held {
        rows.push((
            "ceiling step",
            if held {
                "held".into()
            } else {
                "did not hold".into()
            },
        ));
    }
    let mut html = String::from("<table>");
    for (key, value) in rows {
        let _ = write!(
            html,
            "<tr><th>{}</th><td>{}</td></tr>",
            escape(key),
            escape(&value)
        );
    }
    html.push_str("</table>");
    if r.loadgen_behind {
        html.push_str("<p class=\"warn\">loadgen fell behind its own schedule in this run: its figures understate the broker.</p>");
    }
    for e in r.errors.iter().take(10) {
        let _ = write!(html, "<p class=\"warn\">error: {}</p>", escape(e));
    }
    html
}

/// The four plots of one run.
fn run_plots(r: &Report) -> String {
    let Some(h) = &r.histograms else {
        return String::new();
    };
    let mut html = if r.connects_per_s.is_some() {
        let connack = Series {
            name: "CONNACK latency".into(),
            colour: 0,
            points: plots::percentile_points(&h.latency),
            dashed: false,
        };
        plots::percentiles("CONNACK latency by percentile", &[connack])
    } else {
        plots::percentiles(
            "Latency by percentile (measured window)",
            &[
                Series {
                    name: "latency".into(),
                    colour: 0,
                    points: plots::percentile_points(&h.latency),
                    dashed: false,
                },
                Series {
                    name: "loadgen send lag".into(),
                    colour: 1,
                    points: plots::percentile_points(&h.send_lag),
                    dashed: true,
                },
            ],
        )
    };
    if h.timeline.latency.is_empty() {
        return html;
    }
    let window = (r.warmup_s, r.warmup_s + r.duration_s);
    let expected = if r.duration_s > 0.0 {
        r.delivery.expected as f64 / r.duration_s
    } else {
        0.0
    };
    let mut deliveries = vec![Series {
        name: "delivered".into(),
        colour: 0,
        points: counts(&h.timeline.latency),
        dashed: false,
    }];
    if expected > 0.0 {
        deliveries.push(Series {
            name: "expected".into(),
            colour: 1,
            points: vec![(0.0, expected), (window.1, expected)],
            dashed: true,
        });
    }
    html += &plots::per_second(
        "Deliveries per second (shaded: the measured window)",
        "deliveries/s",
        &deliveries,
        window,
    );
    html += &plots::per_second(
        "Latency per second, by arrival",
        "latency (ms)",
        &[
            Series {
                name: "p99".into(),
                colour: 0,
                points: quantiles(&h.timeline.latency, 0.99),
                dashed: false,
            },
            Series {
                name: "p50".into(),
                colour: 2,
                points: quantiles(&h.timeline.latency, 0.5),
                dashed: false,
            },
        ],
        window,
    );
    html += &plots::per_second(
        "loadgen's send lag per second (how late it sent what was due)",
        "send lag (ms)",
        &[Series {
            name: "p99".into(),
            colour: 1,
            points: quantiles(&h.timeline.send_lag, 0.99),
            dashed: false,
        }],
        window,
    );
    html
}

/// Per second: how many values (the x of each point is the second's middle).
pub fn counts(seconds: &[hdrhistogram::Histogram<u64>]) -> Vec<(f64, f64)> {
    seconds
        .iter()
        .enumerate()
        .map(|(s, h)| (s as f64 + 0.5, h.len() as f64))
        .collect()
}

/// Per second with values: the quantile `q`, in milliseconds.
pub fn quantiles(seconds: &[hdrhistogram::Histogram<u64>], q: f64) -> Vec<(f64, f64)> {
    (seconds.iter().enumerate())
        .filter(|(_, h)| !h.is_empty())
        .map(|(s, h)| (s as f64 + 0.5, h.value_at_quantile(q) as f64 / 1000.0))
        .collect()
}
