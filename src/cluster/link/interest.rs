//! The link's NATS subscriptions for the node's interest: one per subject pattern its
//! filters need (reference counted), a queue subscription per share group, the catch-all
//! past `cluster_max_subscriptions`, and how a subscription goes without losing or
//! repeating what is on its way (`retire`, `pass_on`).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot};

use super::{Arriving, Link, Subscribed, CONFIRM_WAIT, RETIRE_GRACE};
use crate::cluster::subject::{filter_subjects, long_subject, queue_group};

impl Link {
    /// Brings the subscriptions in line with the filters the node's clients hold now:
    /// every addition before any removal, so that a filter replaced by another (SUBSCRIBE
    /// `a/b`, UNSUBSCRIBE `a/#`) is never uncovered in between.
    pub(super) async fn reconcile(&mut self) {
        let (added, removed) = {
            let mut interest = self.cluster.interest.lock().expect("interest lock");
            let changed = std::mem::take(&mut interest.changed);
            let (added, removed): (Vec<String>, Vec<String>) = changed
                .into_iter()
                .partition(|f| interest.counts.contains_key(f));
            (added, removed)
        };
        // Once NATS could not be asked (its client stuck, `CONFIRM_WAIT` each), the rest
        // waits for the next try instead of each waiting in turn.
        let mut stuck = false;
        for filter in added {
            let known = self.filters.contains_key(&filter) || self.groups.contains_key(&filter);
            if known || self.uncovered.contains(&filter) {
                continue;
            }
            self.failed.remove(&filter);
            if stuck || !self.add_filter(filter.clone()).await {
                stuck = true;
                self.failed.insert(filter);
            }
        }
        for filter in removed {
            self.failed.remove(&filter);
            if self.uncovered.remove(&filter) {
                continue;
            }
            if let Some(subscribed) = self.groups.remove(&filter) {
                for (_, stop) in subscribed {
                    let _ = stop.send(());
                }
                continue;
            }
            for pattern in self.filters.remove(&filter).unwrap_or_default() {
                self.drop_pattern(&pattern);
            }
        }
        self.maybe_stop_catching_all().await;
        let stats = &self.cluster.stats;
        let held = self.by_pattern.len() + self.group_of.len();
        (stats.subscriptions).store(held, Ordering::Relaxed);
        (stats.uncovered).store(self.uncovered.len(), Ordering::Relaxed);
    }

    /// Filters whose subscriptions could not be made (NATS away long enough for the
    /// client's queue to fill) are tried again.
    pub(super) async fn retry_failed(&mut self) {
        let failed = std::mem::take(&mut self.failed);
        self.cluster
            .interest
            .lock()
            .expect("interest lock")
            .changed
            .extend(failed);
        self.reconcile().await;
    }

    /// Subscribes what a filter (or a share group's `$share/{group}/{filter}`) needs, or
    /// past `cluster_max_subscriptions` leaves it to the catch-all (a share group: to this
    /// node's own publishers). False if NATS could not be asked: nothing is kept of it.
    async fn add_filter(&mut self, filter: String) -> bool {
        let shared = crate::cluster::shared_filter(&filter).map(|(_, f)| f.to_string());
        let subjects = filter_subjects(&self.cluster.root, shared.as_deref().unwrap_or(&filter));
        let new = match shared {
            Some(_) => subjects.len() + 1,
            None => (subjects.iter())
                .filter(|p| !self.by_pattern.contains_key(*p))
                .count(),
        };
        let over = self.for_filters() + new > self.max_subscriptions();
        if shared.is_some() && over {
            // The catch-all cannot serve a group (it is no queue group): its members get
            // what their own node's clients publish until the group fits again.
            if !self.groups_over_limit_said {
                self.groups_over_limit_said = true;
                log::warn!("Warning: cluster: share groups past cluster_max_subscriptions ({}) get only what their own node's clients publish ({filter} is one).", self.max_subscriptions());
            }
            self.uncovered.insert(filter);
            return true;
        }
        let catching = self.catch_all.is_some();
        if (over || catching) && self.catch_all().await {
            self.uncovered.insert(filter);
            return true;
        }
        match shared {
            Some(_) => self.cover_group(filter, subjects).await,
            None => self.cover(filter, subjects).await,
        }
    }

    /// Subscribes what `filter` needs; false (none of it kept) if NATS could not be asked.
    async fn cover(&mut self, filter: String, patterns: Vec<String>) -> bool {
        let mut subscribed: Vec<String> = Vec::with_capacity(patterns.len());
        for pattern in patterns {
            if !self.add_pattern(pattern.clone()).await {
                for pattern in subscribed {
                    self.drop_pattern(&pattern);
                }
                return false;
            }
            subscribed.push(pattern);
        }
        self.filters.insert(filter, subscribed);
        true
    }

    fn max_subscriptions(&self) -> usize {
        self.cluster.settings.max_subscriptions
    }

    /// The subscriptions held for the clients' filters and share groups (not the `long`
    /// subject's, nor the node's fences', nor the catch-all's).
    fn for_filters(&self) -> usize {
        let fences = usize::from(self.cluster.settings.messages_in_jetstream);
        let fixed = 1 + fences + usize::from(self.catch_all.is_some());
        self.by_pattern.len().saturating_sub(fixed) + self.group_of.len()
    }

    /// Subscribes a share group's subjects in its NATS queue group: NATS gives each
    /// message to one node of those with members, never back to the node that published it
    /// (`no_echo`), which served its own members first (`wire.rs`'s served groups). False
    /// (none of it kept) if NATS could not be asked.
    async fn cover_group(&mut self, key: String, mut subjects: Vec<String>) -> bool {
        let queue = queue_group(&key);
        let shared: Arc<str> = Arc::from(key.as_str());
        let hash = crate::topic::group_hash(&key);
        // Topics too long for a subject come on the `long` subject: the group takes its
        // share of them too (its node's trie matches them again).
        subjects.push(long_subject(&self.cluster.root));
        let mut subscribed = Vec::with_capacity(subjects.len());
        for subject in subjects {
            let subscribing = self.client.queue_subscribe(subject.clone(), queue.clone());
            let failed = match tokio::time::timeout(CONFIRM_WAIT, subscribing).await {
                Ok(Ok(subscriber)) => {
                    let id = self.next_id;
                    self.next_id += 1;
                    let (stop, stopped) = oneshot::channel();
                    tokio::spawn(pass_on(id, subscriber, stopped, self.arriving_tx.clone()));
                    self.group_of.insert(id, (shared.clone(), hash));
                    subscribed.push((id, stop));
                    continue;
                }
                Ok(Err(e)) => e.to_string(),
                Err(_) => "the NATS client is stuck".to_string(),
            };
            log::warn!("Warning: cluster: cannot subscribe to {subject} for {key}: {failed}");
            for (_, stop) in subscribed {
                let _ = stop.send(());
            }
            return false;
        }
        self.groups.insert(key, subscribed);
        true
    }

    /// Takes every message of the cluster from now on (once): each node's clients may
    /// hold as many distinct filters as they like, and one NATS subscription each would
    /// cost without bound. What arrives is matched on the node's trie as always, so it
    /// costs traffic, never a wrong delivery. False if it could not be subscribed.
    async fn catch_all(&mut self) -> bool {
        if self.catch_all.is_some() {
            return true;
        }
        let pattern = format!("{}.m.>", self.cluster.root);
        if !self.add_pattern(pattern.clone()).await {
            return false;
        }
        self.catch_all = Some(pattern);
        let stats = &self.cluster.stats;
        stats.catching_all.store(true, Ordering::Relaxed);
        stats.catch_all_started.fetch_add(1, Ordering::Relaxed);
        log::warn!(
            "Warning: cluster: the node's clients hold more distinct filters than cluster_max_subscriptions ({}) lets it subscribe to on NATS; it now takes every message of the cluster and keeps what its clients want (share groups past it are served by their own node's publishers).",
            self.max_subscriptions()
        );
        true
    }

    /// Back to a subscription per filter once they would take half the limit at most
    /// (a filter needs two subjects at most: `a/#` is `a` and `a.>`), so that a count
    /// near the limit does not switch back and forth. The filters' subscriptions are made
    /// before the catch-all goes; if one cannot be made, the catch-all stays.
    async fn maybe_stop_catching_all(&mut self) {
        if self.catch_all.is_none() && self.uncovered.is_empty() {
            return;
        }
        // A filter needs two subjects at most, a group three (with the `long` one).
        let half = self.max_subscriptions() / 2;
        if self.for_filters() + 2 * self.uncovered.len() > half {
            return;
        }
        let groups = (self.uncovered.iter())
            .filter(|f| f.starts_with("$share/"))
            .count();
        if self.for_filters() + 2 * self.uncovered.len() + groups > half {
            return;
        }
        let mut all_covered = true;
        for filter in std::mem::take(&mut self.uncovered) {
            if !all_covered {
                self.uncovered.insert(filter);
                continue;
            }
            let covered = match crate::cluster::shared_filter(&filter) {
                Some((_, topic_filter)) => {
                    let subjects = filter_subjects(&self.cluster.root, topic_filter);
                    self.cover_group(filter.clone(), subjects).await
                }
                None => {
                    let patterns = filter_subjects(&self.cluster.root, &filter);
                    self.cover(filter.clone(), patterns).await
                }
            };
            if !covered {
                self.uncovered.insert(filter);
                all_covered = false;
            }
        }
        let Some(pattern) = self.catch_all.clone().filter(|_| all_covered) else {
            return;
        };
        self.catch_all = None;
        self.drop_pattern(&pattern);
        self.cluster
            .stats
            .catching_all
            .store(false, Ordering::Relaxed);
        log::info!(
            "Cluster: the node's clients' filters fit cluster_max_subscriptions ({}) again; it takes only what they want.",
            self.max_subscriptions()
        );
    }

    /// One more filter needs `pattern`; the first subscribes it. False if NATS could not
    /// be asked (the client is closing).
    pub(super) async fn add_pattern(&mut self, pattern: String) -> bool {
        if let Some(sub) = self.by_pattern.get_mut(&pattern) {
            sub.needed_by += 1;
            return true;
        }
        let subscribing = self.client.subscribe(pattern.clone());
        let subscriber = match tokio::time::timeout(CONFIRM_WAIT, subscribing).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                log::warn!("Warning: cluster: cannot subscribe to {pattern}: {e}");
                return false;
            }
            Err(_) => {
                log::warn!(
                    "Warning: cluster: cannot subscribe to {pattern}: the NATS client is stuck"
                );
                return false;
            }
        };
        let id = self.next_id;
        self.next_id += 1;
        let (stop, stopped) = oneshot::channel();
        tokio::spawn(pass_on(id, subscriber, stopped, self.arriving_tx.clone()));
        self.patterns.insert(&pattern, id);
        self.pattern_of.insert(id, pattern.clone());
        let needed_by = 1;
        (self.by_pattern).insert(
            pattern,
            Subscribed {
                id,
                needed_by,
                stop,
            },
        );
        true
    }

    /// One filter fewer needs `pattern`; the last one lets it go (`retire`). It stays the
    /// oldest for its subjects until its task says it is drained (`Arriving::Drained`).
    fn drop_pattern(&mut self, pattern: &str) {
        let Some(sub) = self.by_pattern.get_mut(pattern) else {
            return;
        };
        sub.needed_by -= 1;
        if sub.needed_by > 0 {
            return;
        }
        let sub = self.by_pattern.remove(pattern).expect("just found");
        tokio::spawn(retire(
            sub.id,
            sub.stop,
            self.client.clone(),
            self.cluster.fence_subject(),
            self.arriving_tx.clone(),
        ));
    }
}

/// Lets subscription `id` go once NATS surely routes to the subscriptions made since: they
/// are confirmed (a round trip through the server), then `RETIRE_GRACE` more. The client forgets a
/// subscription as soon as it is told to go and drops what is still on the way for it; a
/// message NATS routed before a newer subscription existed went to this one alone, and
/// must be in by then. Until it goes it stays the oldest for its subjects, so the newer
/// ones' copies are passed over; from `Leaving` on they wait for it to be drained.
async fn retire(
    id: u64,
    stop: oneshot::Sender<()>,
    client: async_nats::Client,
    fence: String,
    link: mpsc::Sender<Arriving>,
) {
    // A request nobody answers: NATS says "no responders" once it has read everything
    // this connection sent before it, the newer subscriptions included. (A flush only
    // writes them to the socket.)
    let _ = tokio::time::timeout(CONFIRM_WAIT, client.request(fence, Default::default())).await;
    tokio::time::sleep(RETIRE_GRACE).await;
    if link.send(Arriving::Leaving(id)).await.is_ok() {
        let _ = stop.send(());
    }
}

/// A subscription's task: passes what it brings to the link, in order; told to stop, it
/// unsubscribes, passes what it still holds, and says it is drained.
async fn pass_on(
    id: u64,
    mut subscriber: async_nats::Subscriber,
    mut stop: oneshot::Receiver<()>,
    link: mpsc::Sender<Arriving>,
) {
    loop {
        tokio::select! {
            message = subscriber.next() => match message {
                Some(message) => {
                    if link.send(Arriving::Message(id, message)).await.is_err() {
                        return;
                    }
                }
                None => break,
            },
            _ = &mut stop => {
                let _ = subscriber.unsubscribe().await;
                while let Some(message) = subscriber.next().await {
                    if link.send(Arriving::Message(id, message)).await.is_err() {
                        return;
                    }
                }
                break;
            }
        }
    }
    let _ = link.send(Arriving::Drained(id)).await;
}
