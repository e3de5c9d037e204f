//! Measurement: latency histograms (HDR, from the intended send time) and per-stream loss,
//! duplicate and reordering accounting from sequence numbers.

use hdrhistogram::Histogram;
use std::collections::HashMap;

/// Latencies in microseconds, 1 µs to 1 hour, 3 significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

/// Per-second histograms over a run (`--report`): latencies by the second they arrived in,
/// loadgen's send lag by the second it sent, counted from the run's epoch. Bounded: seconds
/// past `limit` are not kept (the run's length plus its drain).
#[derive(Clone, Debug, Default)]
pub struct Timeline {
    pub latency: Vec<Histogram<u64>>,
    pub send_lag: Vec<Histogram<u64>>,
    limit: usize,
}

impl Timeline {
    pub fn new(limit_s: usize) -> Self {
        Timeline {
            limit: limit_s,
            ..Timeline::default()
        }
    }

    /// A latency of `us` for a message received `at_ns` after the epoch.
    pub fn latency(&mut self, at_ns: u64, us: u64) {
        Self::record(&mut self.latency, self.limit, at_ns, us);
    }

    /// A send `us` late, `at_ns` after the epoch.
    pub fn send_lag(&mut self, at_ns: u64, us: u64) {
        Self::record(&mut self.send_lag, self.limit, at_ns, us);
    }

    fn record(seconds: &mut Vec<Histogram<u64>>, limit: usize, at_ns: u64, us: u64) {
        let second = (at_ns / 1_000_000_000) as usize;
        if second < limit {
            let _ = second_of(seconds, second).record(us);
        }
    }

    pub fn merge(&mut self, other: &Timeline) {
        self.limit = self.limit.max(other.limit);
        for (mine, theirs) in [
            (&mut self.latency, &other.latency),
            (&mut self.send_lag, &other.send_lag),
        ] {
            for (second, t) in theirs.iter().enumerate() {
                let _ = second_of(mine, second).add(t);
            }
        }
    }
}

/// The histogram of `second` in a per-second series, made (with any before it) if new.
pub fn second_of(seconds: &mut Vec<Histogram<u64>>, second: usize) -> &mut Histogram<u64> {
    if seconds.len() <= second {
        // Auto-resizing: a quiet second costs a few hundred bytes, not a full range.
        seconds.resize_with(second + 1, || Histogram::new(3).expect("3 digits"));
    }
    &mut seconds[second]
}

/// The header loadgen puts at the front of every payload: which publisher, which message of
/// its stream, and when it was meant to be sent (nanoseconds after the run's epoch).
pub const HEADER_LEN: usize = 20;

pub fn write_header(payload: &mut [u8], publisher: u32, seq: u64, intended_ns: u64) {
    payload[..4].copy_from_slice(&publisher.to_be_bytes());
    payload[4..12].copy_from_slice(&seq.to_be_bytes());
    payload[12..20].copy_from_slice(&intended_ns.to_be_bytes());
}

pub fn read_header(payload: &[u8]) -> Option<(u32, u64, u64)> {
    let h = payload.get(..HEADER_LEN)?;
    let publisher = u32::from_be_bytes(h[..4].try_into().ok()?);
    let seq = u64::from_be_bytes(h[4..12].try_into().ok()?);
    let intended = u64::from_be_bytes(h[12..20].try_into().ok()?);
    Some((publisher, seq, intended))
}

/// What one receiving group saw of one publisher's stream: a bitset of sequence numbers, so
/// that members of a shared-subscription group on different threads can be merged.
#[derive(Clone, Debug, Default)]
pub struct SeqTracker {
    seen: Vec<u64>,
    pub received: u64,
    pub duplicates: u64,
    pub reordered: u64,
    max_seq: Option<u64>,
}

impl SeqTracker {
    pub fn record(&mut self, seq: u64) {
        self.received += 1;
        let (word, bit) = ((seq / 64) as usize, seq % 64);
        if self.seen.len() <= word {
            self.seen.resize(word + 1, 0);
        }
        if self.seen[word] & (1 << bit) != 0 {
            self.duplicates += 1;
            return;
        }
        self.seen[word] |= 1 << bit;
        match self.max_seq {
            Some(max) if seq < max => self.reordered += 1,
            _ => self.max_seq = Some(seq),
        }
    }

    /// Folds in what another member of the same group saw. A message both saw is a duplicate.
    pub fn merge(&mut self, other: &SeqTracker) {
        if self.seen.len() < other.seen.len() {
            self.seen.resize(other.seen.len(), 0);
        }
        for (mine, theirs) in self.seen.iter_mut().zip(&other.seen) {
            self.duplicates += u64::from((*mine & theirs).count_ones());
            *mine |= theirs;
        }
        self.received += other.received;
        self.duplicates += other.duplicates;
        self.reordered += other.reordered;
        self.max_seq = self.max_seq.max(other.max_seq);
    }

    /// Distinct sequence numbers seen in `range`.
    pub fn unique_in(&self, range: std::ops::Range<u64>) -> u64 {
        range
            .filter(|&seq| {
                self.seen
                    .get((seq / 64) as usize)
                    .is_some_and(|w| w & (1 << (seq % 64)) != 0)
            })
            .count() as u64
    }
}

/// Stream accounting of one run: (receiving group, publisher) → tracker.
pub type Streams = HashMap<(u32, u32), SeqTracker>;

pub fn merge_streams(into: &mut Streams, from: Streams) {
    for (key, tracker) in from {
        into.entry(key).or_default().merge(&tracker);
    }
}

/// Loss and duplicates over the measured window.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Delivery {
    pub expected: u64,
    pub received: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub reordered: u64,
}

/// Counts, for each (group, publisher) the run expects, the messages of `window` (sequence
/// numbers) that arrived.
pub fn account(
    streams: &Streams,
    expected: &[(u32, u32)],
    window: std::ops::Range<u64>,
) -> Delivery {
    let mut d = Delivery::default();
    for key in expected {
        let per_stream = window.end - window.start;
        d.expected += per_stream;
        if let Some(t) = streams.get(key) {
            let unique = t.unique_in(window.clone());
            d.received += unique;
            d.lost += per_stream - unique;
            d.duplicates += t.duplicates;
            d.reordered += t.reordered;
        } else {
            d.lost += per_stream;
        }
    }
    d
}

/// Percentiles of a latency histogram, in microseconds.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub p9999_us: u64,
    pub max_us: u64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            count: h.len(),
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            p9999_us: h.value_at_quantile(0.9999),
            max_us: h.max(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut h = latency_histogram();
        for us in 1..=10_000u64 {
            h.record(us).unwrap();
        }
        let p = Percentiles::of(&h);
        assert_eq!(p.count, 10_000);
        // HDR keeps 3 significant digits: values are exact to 0.1 %.
        let near = |value: u64, want: u64| value.abs_diff(want) * 1000 <= want;
        assert!(near(p.p50_us, 5_000), "{p:?}");
        assert!(near(p.p90_us, 9_000), "{p:?}");
        assert!(near(p.p99_us, 9_900), "{p:?}");
        assert!(near(p.p999_us, 9_990), "{p:?}");
        assert!(near(p.max_us, 10_000), "{p:?}");
        assert_eq!(Percentiles::of(&latency_histogram()).count, 0);
    }

    #[test]
    fn a_timeline_keeps_each_second_apart_and_merges_by_second() {
        let mut a = Timeline::new(3);
        a.latency(100, 5);
        a.latency(1_500_000_000, 7);
        a.latency(9_000_000_000, 1); // past the limit: not kept
        a.send_lag(2_000_000_000, 3);
        let mut b = Timeline::new(3);
        b.latency(1_000_000_000, 9);
        a.merge(&b);
        let counts: Vec<u64> = a.latency.iter().map(|h| h.len()).collect();
        assert_eq!(counts, [1, 2]);
        assert_eq!(a.latency[1].max(), 9);
        assert_eq!(a.send_lag.len(), 3);
        assert_eq!(a.send_lag[2].len(), 1);
    }

    #[test]
    fn loss_duplicates_and_reordering() {
        let mut t = SeqTracker::default();
        for seq in [0, 1, 2, 4, 3, 3, 6, 9, 8] {
            t.record(seq);
        }
        // Seen: 0 1 2 3 4 6 8 9; 3 twice; 3 and 8 came after a higher one.
        assert_eq!((t.received, t.duplicates, t.reordered), (9, 1, 2));
        let mut streams = Streams::new();
        streams.insert((0, 0), t);
        let d = account(&streams, &[(0, 0)], 0..10);
        assert_eq!(
            d,
            Delivery {
                expected: 10,
                received: 8,
                lost: 2,
                duplicates: 1,
                reordered: 2
            }
        );
        // A stream the run expected but never heard from is all lost.
        let d = account(&streams, &[(0, 0), (1, 0)], 2..6);
        assert_eq!((d.expected, d.received, d.lost), (8, 3, 5));
    }

    #[test]
    fn shared_group_members_merge() {
        let (mut a, mut b) = (SeqTracker::default(), SeqTracker::default());
        for seq in [0, 2, 4] {
            a.record(seq);
        }
        for seq in [1, 3, 4] {
            b.record(seq);
        }
        let mut streams = Streams::new();
        merge_streams(&mut streams, [((7, 1), a)].into());
        merge_streams(&mut streams, [((7, 1), b)].into());
        let d = account(&streams, &[(7, 1)], 0..6);
        // 4 went to both members: one duplicate; 5 to nobody: one lost.
        assert_eq!((d.received, d.lost, d.duplicates), (5, 1, 1));
    }

    #[test]
    fn header_round_trip() {
        let mut payload = vec![0u8; 32];
        write_header(&mut payload, 3, 99, 123_456_789);
        assert_eq!(read_header(&payload), Some((3, 99, 123_456_789)));
        assert_eq!(read_header(&payload[..10]), None);
    }
}
