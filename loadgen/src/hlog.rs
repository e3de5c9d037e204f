//! `--report`'s raw data as an HdrHistogram interval log (the format HdrHistogram's own
//! tools read, e.g. HistogramLogProcessor), and reading it back for `--compare`.
//!
//! Per run N of the file (a `--ceiling` search has several): a comment line with the run's
//! report as JSON, then its histograms in microseconds, tagged `rN-window` (the measured
//! window's latencies, one interval), `rN-latency` (one interval per second since the load
//! started, by arrival) and `rN-send-lag` (loadgen's lateness, by send time). Interval
//! timestamps are seconds since the run's load started.

use base64::Engine;
use hdrhistogram::serialization::interval_log::{
    IntervalLogIterator, IntervalLogWriterBuilder, LogEntry, Tag,
};
use hdrhistogram::serialization::{Deserializer, V2DeflateSerializer};
use hdrhistogram::Histogram;
use std::path::Path;
use std::time::Duration;

use crate::report::{Report, RunHistograms};
use crate::stats::{second_of, Timeline};

const REPORT_COMMENT: &str = "loadgen-report ";

pub fn write(path: &Path, reports: &[Report]) -> Result<(), String> {
    let mut out = Vec::new();
    let mut serializer = V2DeflateSerializer::new();
    let mut log = IntervalLogWriterBuilder::new()
        .add_comment("loadgen --report: latencies and send lag in microseconds (max column: ms)")
        .add_comment(
            "tags: rN-window (run N's measured window), rN-latency and rN-send-lag (per second)",
        )
        .with_max_value_divisor(1000.0)
        .begin_log_with(&mut out, &mut serializer)
        .map_err(|e| e.to_string())?;
    for (run, report) in reports.iter().enumerate() {
        let json = serde_json::to_string(report).map_err(|e| e.to_string())?;
        log.write_comment(&format!("{REPORT_COMMENT}{json}"))
            .map_err(|e| e.to_string())?;
        let Some(h) = &report.histograms else {
            continue;
        };
        let mut put = |kind: &str, h: &Histogram<u64>, start: f64, length: f64| {
            let tag = format!("r{run}-{kind}");
            let tag = Tag::new(&tag).expect("a tag without spaces or commas");
            log.write_histogram(
                h,
                Duration::from_secs_f64(start),
                Duration::from_secs_f64(length),
                Some(tag),
            )
            .map_err(|e| format!("{e:?}"))
        };
        put("window", &h.latency, report.warmup_s, report.duration_s)?;
        for (second, h) in h.timeline.latency.iter().enumerate() {
            put("latency", h, second as f64, 1.0)?;
        }
        for (second, h) in h.timeline.send_lag.iter().enumerate() {
            put("send-lag", h, second as f64, 1.0)?;
        }
    }
    std::fs::write(path, out).map_err(|e| format!("{}: {e}", path.display()))
}

/// The runs of an interval log written by `write`, with their histograms.
pub fn read(path: &Path) -> Result<Vec<Report>, String> {
    let fail = |e: String| format!("{}: {e}", path.display());
    let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    let mut reports: Vec<Report> = Vec::new();
    for line in text.lines() {
        if let Some(json) = line
            .strip_prefix('#')
            .and_then(|l| l.strip_prefix(REPORT_COMMENT))
        {
            let mut report: Report =
                serde_json::from_str(json).map_err(|e| fail(format!("a run's report: {e}")))?;
            report.histograms = Some(Box::new(RunHistograms {
                latency: crate::stats::latency_histogram(),
                send_lag: crate::stats::latency_histogram(),
                timeline: Timeline::default(),
            }));
            reports.push(report);
        }
    }
    if reports.is_empty() {
        return Err(fail(
            "no run in it (not written by loadgen --report?)".into(),
        ));
    }
    let mut deserializer = Deserializer::new();
    for entry in IntervalLogIterator::new(text.as_bytes()) {
        let entry = entry.map_err(|e| fail(format!("{e:?}")))?;
        let LogEntry::Interval(interval) = entry else {
            continue;
        };
        let Some(tag) = interval.tag() else { continue };
        let Some((run, kind)) = tag
            .as_str()
            .strip_prefix('r')
            .and_then(|t| t.split_once('-'))
        else {
            continue;
        };
        let Some(h) = run
            .parse::<usize>()
            .ok()
            .and_then(|run| reports.get_mut(run))
            .and_then(|r| r.histograms.as_deref_mut())
        else {
            return Err(fail(format!(
                "an interval of a run that is not in the log: {tag:?}"
            )));
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(interval.encoded_histogram())
            .map_err(|e| fail(e.to_string()))?;
        let histogram: Histogram<u64> = deserializer
            .deserialize(&mut bytes.as_slice())
            .map_err(|e| fail(format!("{e:?}")))?;
        let second = interval.start_timestamp().as_secs() as usize;
        match kind {
            "window" => h.latency = histogram,
            "latency" => *second_of(&mut h.timeline.latency, second) = histogram,
            "send-lag" => *second_of(&mut h.timeline.send_lag, second) = histogram,
            _ => {}
        }
    }
    Ok(reports)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_survives_the_interval_log() {
        let mut timeline = Timeline::new(10);
        timeline.latency(200_000_000, 120);
        timeline.latency(2_100_000_000, 340);
        timeline.send_lag(1_000_000_000, 7);
        let mut latency = crate::stats::latency_histogram();
        latency.record(340).unwrap();
        let report = Report {
            title: Some("p2p-qos0".into()),
            broker: "midge".into(),
            warmup_s: 1.0,
            duration_s: 2.0,
            histograms: Some(Box::new(RunHistograms {
                latency,
                send_lag: crate::stats::latency_histogram(),
                timeline,
            })),
            ..Report::default()
        };
        let path = std::env::temp_dir().join(format!("loadgen-hlog-{}.hlog", std::process::id()));
        write(&path, &[report.clone(), Report::default()]).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("Tag=r0-window,"), "{text}");
        let back = read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(back[0].title.as_deref(), Some("p2p-qos0"));
        assert_eq!(back[0].broker, "midge");
        let h = back[0].histograms.as_ref().unwrap();
        assert_eq!(h.latency.len(), 1);
        let seconds: Vec<u64> = h.timeline.latency.iter().map(|h| h.len()).collect();
        assert_eq!(seconds, [1, 0, 1]);
        assert_eq!(h.timeline.latency[2].max(), 340);
        assert_eq!(h.timeline.send_lag[1].len(), 1);
        assert!(read(Path::new("/nonexistent.hlog")).is_err());
    }
}
