//! A session's scans of retained messages under way, oldest first, found by filter in
//! constant time: a SUBSCRIBE of 16,384 filters to a session with 4,096 scans under way
//! compared each filter with every scan (67 million comparisons, a shard held for 50 ms).
//!
//! Scans sit in a queue, each at a sequence number: the front's number is `base`, and the
//! one at index `i` has `base + i`. A hash table finds a scan's number by its filter. A
//! scan that ends out of turn (its subscription went) leaves a hole, so that the others'
//! numbers hold; holes are dropped as they reach the front, or all at once when they
//! outnumber the scans.

use std::collections::VecDeque;

use hashbrown::HashTable;

use super::owed::{filter_hash, RetainedScan};

#[derive(Debug, Default)]
pub(super) struct Scans {
    queue: VecDeque<Option<RetainedScan>>,
    /// The sequence number of the queue's front (numbers wrap).
    base: u64,
    /// (the filter's hash, the scan's sequence number), for every scan in the queue.
    by_filter: HashTable<(u64, u64)>,
    /// Bytes of the scans' filters.
    filter_bytes: usize,
}

impl Scans {
    pub(super) fn len(&self) -> usize {
        self.by_filter.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.by_filter.is_empty()
    }

    pub(super) fn filter_bytes(&self) -> usize {
        self.filter_bytes
    }

    fn index(&self, seq: u64) -> usize {
        seq.wrapping_sub(self.base) as usize
    }

    /// The sequence number of the scan of `filter`, if one is under way.
    fn find(&self, hash: u64, filter: &str) -> Option<u64> {
        let queue = &self.queue;
        let base = self.base;
        let same = |&(h, seq): &(u64, u64)| {
            h == hash
                && queue[seq.wrapping_sub(base) as usize]
                    .as_ref()
                    .is_some_and(|s| *s.filter == *filter)
        };
        self.by_filter.find(hash, same).map(|&(_, seq)| seq)
    }

    /// Starts the scan of `scan.filter` again with `scan`, in its place, if one is under
    /// way; gives `scan` back if none is.
    pub(super) fn restart(&mut self, scan: RetainedScan) -> Result<(), RetainedScan> {
        let Some(seq) = self.find(scan.filter_hash, &scan.filter) else {
            return Err(scan);
        };
        let at = self.index(seq);
        self.queue[at] = Some(scan);
        Ok(())
    }

    /// Whether a scan of `filter` is under way.
    pub(super) fn contains(&self, filter: &str) -> bool {
        self.find(filter_hash(filter), filter).is_some()
    }

    fn insert(&mut self, scan: &RetainedScan, seq: u64) {
        let hash = scan.filter_hash;
        self.by_filter.insert_unique(hash, (hash, seq), |&(h, _)| h);
        self.filter_bytes += scan.filter.len();
    }

    /// Forgets the scan at `seq`, taken out of the queue.
    fn forget(&mut self, scan: &RetainedScan, seq: u64) {
        let entry = self
            .by_filter
            .find_entry(scan.filter_hash, |&(_, s)| s == seq);
        entry.expect("every queued scan is in the table").remove();
        self.filter_bytes -= scan.filter.len();
    }

    /// Adds a scan of a filter none is under way for, last.
    pub(super) fn push_back(&mut self, scan: RetainedScan) {
        let seq = self.base.wrapping_add(self.queue.len() as u64);
        self.insert(&scan, seq);
        self.queue.push_back(Some(scan));
    }

    /// Puts back first a scan taken with `pop_front`, of a filter none is under way for.
    pub(super) fn push_front(&mut self, scan: RetainedScan) {
        self.base = self.base.wrapping_sub(1);
        self.insert(&scan, self.base);
        self.queue.push_front(Some(scan));
    }

    /// Takes out the oldest scan.
    pub(super) fn pop_front(&mut self) -> Option<RetainedScan> {
        let scan = self.queue.pop_front()?.expect("the front is never a hole");
        let seq = self.base;
        self.base = self.base.wrapping_add(1);
        self.forget(&scan, seq);
        self.trim();
        Some(scan)
    }

    /// Ends the scan of `filter`, if one is under way.
    pub(super) fn remove(&mut self, filter: &str) {
        let Some(seq) = self.find(filter_hash(filter), filter) else {
            return;
        };
        let at = self.index(seq);
        let scan = self.queue[at].take().expect("found just before");
        self.forget(&scan, seq);
        self.trim();
    }

    /// Drops the holes at either end (neither end is ever a hole), and all of them once
    /// they outnumber the scans (a cost of one per hole made).
    fn trim(&mut self) {
        while self.queue.front().is_some_and(Option::is_none) {
            self.queue.pop_front();
            self.base = self.base.wrapping_add(1);
        }
        while self.queue.back().is_some_and(Option::is_none) {
            self.queue.pop_back();
        }
        if self.queue.len() > 2 * self.len() + 16 {
            let scans: Vec<RetainedScan> = self.queue.drain(..).flatten().collect();
            self.by_filter.clear();
            self.filter_bytes = 0;
            for scan in scans {
                self.push_back(scan);
            }
        }
    }

    /// The scans, oldest first (for checks).
    #[cfg(test)]
    pub(super) fn iter(&self) -> impl Iterator<Item = &RetainedScan> {
        self.queue.iter().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::QoS;
    use proptest::prelude::*;

    fn scan(filter: &str, qos: QoS) -> RetainedScan {
        RetainedScan::new(filter, qos, None)
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// Restart a scan of the filter, or add one last.
        Owe(u8, bool),
        Remove(u8),
        /// Take the oldest out, and put it back first if asked.
        Take(bool),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..24, any::<bool>()).prop_map(|(f, q)| Op::Owe(f, q)),
            (0u8..24).prop_map(Op::Remove),
            any::<bool>().prop_map(Op::Take),
        ]
    }

    proptest! {
        /// The queue keeps the order and contents of a plain list of scans searched from
        /// end to end, whatever the order of additions, restarts, removals and takes.
        #[test]
        fn scans_behave_as_a_list_searched_in_full(ops in proptest::collection::vec(op(), 0..400)) {
            let mut scans = Scans::default();
            let mut model: VecDeque<(String, QoS)> = VecDeque::new();
            for op in ops {
                match op {
                    Op::Owe(f, q) => {
                        let filter = format!("f/{f}/+");
                        let qos = if q { QoS::AtLeastOnce } else { QoS::AtMostOnce };
                        if let Some(same) = model.iter_mut().find(|(m, _)| *m == filter) {
                            same.1 = qos;
                        } else {
                            model.push_back((filter.clone(), qos));
                        }
                        if let Err(new) = scans.restart(scan(&filter, qos)) {
                            scans.push_back(new);
                        }
                    }
                    Op::Remove(f) => {
                        let filter = format!("f/{f}/+");
                        model.retain(|(m, _)| *m != filter);
                        scans.remove(&filter);
                    }
                    Op::Take(back) => {
                        let taken = scans.pop_front();
                        let expected = model.pop_front();
                        prop_assert_eq!(
                            taken.as_ref().map(|s| (s.filter.to_string(), s.qos)),
                            expected.clone()
                        );
                        if let (true, Some(taken)) = (back, taken) {
                            scans.push_front(taken);
                            model.push_front(expected.expect("taken"));
                        }
                    }
                }
                let listed: Vec<(String, QoS)> =
                    scans.iter().map(|s| (s.filter.to_string(), s.qos)).collect();
                prop_assert_eq!(&listed, &model.iter().cloned().collect::<Vec<_>>());
                prop_assert_eq!(scans.len(), model.len());
                prop_assert_eq!(
                    scans.filter_bytes(),
                    model.iter().map(|(m, _)| m.len()).sum::<usize>()
                );
                for (filter, _) in &model {
                    prop_assert!(scans.contains(filter));
                }
                prop_assert!(scans.queue.len() <= 2 * scans.len() + 16);
            }
        }
    }
}
