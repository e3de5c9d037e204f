//! `--compare OUT.html LOGS...`: runs recorded by `--report` (their interval logs) drawn on
//! shared axes, one section per `--title`, each broker (`--label`) in its own colour.

use std::fmt::Write;
use std::path::{Path, PathBuf};

use crate::html::{self, escape};
use crate::plots::{self, format_value, Series};
use crate::report::{Report, RunHistograms};

/// One log's run to draw, with where it came from.
struct Drawn {
    file: PathBuf,
    report: Report,
}

pub fn write(out: &Path, logs: &[PathBuf], notes: Option<&Path>) -> Result<(), String> {
    let mut runs = Vec::new();
    for log in logs {
        let reports = crate::hlog::read(log)?;
        runs.push(Drawn {
            file: log.clone(),
            report: representative(reports),
        });
    }
    let notes = match notes {
        Some(path) => {
            Some(std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?)
        }
        None => None,
    };
    let page = page(&runs, notes.as_deref(), out);
    std::fs::write(out, page).map_err(|e| format!("{}: {e}", out.display()))
}

/// The run of a log that stands for it: in a ceiling search, the highest rate that held
/// (else the first step); otherwise its only run.
fn representative(mut reports: Vec<Report>) -> Report {
    let best = (reports.iter().enumerate())
        .filter(|(_, r)| r.held == Some(true))
        .max_by(|a, b| a.1.offered_msgs_per_s.total_cmp(&b.1.offered_msgs_per_s))
        .map_or(0, |(i, _)| i);
    reports.swap_remove(best)
}

fn page(runs: &[Drawn], notes: Option<&str>, out: &Path) -> String {
    let brokers = distinct(runs.iter().map(|d| d.report.broker.as_str()));
    let titles = distinct(runs.iter().map(|d| html::name(&d.report)));
    let mut page = String::new();
    let heading = format!("loadgen: {}", brokers.join(" vs "));
    let _ = write!(
        page,
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{}</title><style>{}</style></head><body><h1>{}</h1>\
         <p>The same scenarios against each broker, drawn on the same axes (one colour per broker; \
         each round its own line). Latency counts from each message's intended send time (open loop). \
         A ceiling search is shown at the highest rate that held.</p>",
        escape(&heading),
        html::STYLE,
        escape(&heading)
    );
    if let Some(notes) = notes {
        let _ = write!(page, "<h2>Ratios</h2><pre>{}</pre>", escape(notes));
    }
    for title in &titles {
        let group: Vec<&Drawn> = (runs.iter())
            .filter(|d| html::name(&d.report) == title)
            .collect();
        let _ = write!(page, "<h2>{}</h2>", escape(title));
        page.push_str(&table(&group, out));
        page.push_str("<div class=\"plots\">");
        page.push_str(&group_plots(&group, &brokers));
        page.push_str("</div>");
    }
    page.push_str("</body></html>\n");
    page
}

fn distinct<'a>(names: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut seen: Vec<String> = Vec::new();
    for name in names {
        if !seen.iter().any(|s| s == name) {
            seen.push(name.to_string());
        }
    }
    seen
}

fn table(group: &[&Drawn], out: &Path) -> String {
    let mut html = String::from(
        "<table><tr><th>broker</th><th>run</th><th>offered msgs/s</th><th>deliveries/s</th><th>lost</th>\
         <th>p50 ms</th><th>p99 ms</th><th>max ms</th><th>deliveries per CPU-s</th><th>connects/s</th></tr>",
    );
    let ms = |us: u64| format_value(us as f64 / 1000.0);
    let opt = |v: Option<f64>| v.map(format_value).unwrap_or_default();
    for d in group {
        let r = &d.report;
        // The run's own page, when it sits beside its log (as `--report` leaves them).
        let own = d.file.with_extension("html");
        let stem = d.file.file_stem().unwrap_or_default().to_string_lossy();
        let run = if own.exists() {
            let href = relative(&own, out);
            format!("<a href=\"{}\">{}</a>", escape(&href), escape(&stem))
        } else {
            escape(&stem)
        };
        let warn = if r.loadgen_behind || !r.errors.is_empty() {
            " <span class=\"warn\">(loadgen behind or errors: see its page)</span>"
        } else {
            ""
        };
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{run}{warn}</td><td class=n>{}</td><td class=n>{}</td><td class=n>{}</td>\
             <td class=n>{}</td><td class=n>{}</td><td class=n>{}</td><td class=n>{}</td><td class=n>{}</td></tr>",
            escape(&r.broker),
            format_value(r.offered_msgs_per_s),
            format_value(r.deliveries_per_s),
            r.delivery.lost,
            ms(r.latency.p50_us),
            ms(r.latency.p99_us),
            ms(r.latency.max_us),
            opt(r.deliveries_per_cpu_s),
            opt(r.connects_per_s),
        );
    }
    html.push_str("</table>");
    html
}

/// `target` as a link from the page `from` (same directory: the file name).
fn relative(target: &Path, from: &Path) -> String {
    let same_dir = target
        .parent()
        .map(Path::canonicalize)
        .transpose()
        .ok()
        .flatten()
        == from
            .parent()
            .map(Path::canonicalize)
            .transpose()
            .ok()
            .flatten();
    if same_dir {
        target
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned()
    } else {
        target.display().to_string()
    }
}

fn group_plots(group: &[&Drawn], brokers: &[String]) -> String {
    let colour = |r: &Report| brokers.iter().position(|b| *b == r.broker).unwrap_or(0);
    let with_data: Vec<(&Report, &RunHistograms)> = (group.iter())
        .filter_map(|d| d.report.histograms.as_deref().map(|h| (&d.report, h)))
        .collect();
    // One line per run; the first line of each broker carries the legend.
    let series = |points: &dyn Fn(&RunHistograms) -> Vec<(f64, f64)>| {
        let mut named: Vec<usize> = Vec::new();
        (with_data.iter())
            .map(|(r, h)| {
                let c = colour(r);
                let name = if named.contains(&c) {
                    String::new()
                } else {
                    named.push(c);
                    r.broker.clone()
                };
                Series {
                    name,
                    colour: c,
                    points: points(h),
                    dashed: false,
                }
            })
            .collect::<Vec<_>>()
    };
    let percentiles = series(&|h| plots::percentile_points(&h.latency));
    let mut html = plots::percentiles("Latency by percentile (measured window)", &percentiles);
    let p99 = series(&|h| html::quantiles(&h.timeline.latency, 0.99));
    let deliveries = series(&|h| html::counts(&h.timeline.latency));
    if p99.iter().all(|s| s.points.is_empty()) {
        return html;
    }
    let window = group.first().map_or((0.0, 0.0), |d| {
        (d.report.warmup_s, d.report.warmup_s + d.report.duration_s)
    });
    html += &plots::per_second(
        "Latency p99 per second, by arrival",
        "p99 (ms)",
        &p99,
        window,
    );
    html += &plots::per_second("Deliveries per second", "deliveries/s", &deliveries, window);
    html
}
