//! Retained messages owed to new subscriptions, found a slice at a time and sent at the pace
//! the client reads: never all at once (a filter may match a hundred thousand of them),
//! never under the retained store's lock for long, never dropped. What a SUBSCRIBE makes
//! the broker owe a client is a scan (a filter and a place in the store), not the messages.

use crate::limits::{OWED_WRITE_MAX, RETAINED_REQUESTS_PER_TURN};
use std::sync::Arc;

use super::encode::Variants;
use super::io::Backend;
use super::subscribe::RetainedRequest;
use super::Shard;
use crate::codec::QoS;
use crate::limits::{Limit, SCAN_FOUND_PER_SLICE, SCAN_VISITS_PER_SLICE, SCAN_VISITS_PER_TURN};
use crate::session::DropReason;
use crate::topic::Subscription;
use crate::types::{Message, SessionId, Target};

impl<B: Backend> Shard<B> {
    /// Owes a session the retained messages matching `filter` (a new subscription's, as
    /// `sub`, or a bridge's `out` topic): found and sent as its client reads (`send_owed`).
    /// In a cluster that keeps them in JetStream they are asked of it as well; this node's
    /// store then has only those the cluster does not keep (`$SYS`).
    pub(super) fn owe_retained(
        &mut self,
        session_id: SessionId,
        filter: &str,
        qos: QoS,
        identifier: Option<u32>,
        sub: Option<&Subscription>,
    ) {
        if let Some(cluster) = (self.shared.cluster.get()).filter(|c| c.finds_retained(filter)) {
            self.ask_cluster(cluster.clone(), session_id, filter, qos, identifier, sub);
        }
        let exact = !filter.contains(['+', '#']);
        // A filter without wildcards names one topic: its retained message, if any, is
        // owed at once (no scan to keep).
        let found = exact.then(|| {
            let store = self.shared.retained.lock().expect("retained lock");
            store.get(filter, &|source, message| self.kept_here(source, message))
        });
        let Some(session) = self.sessions.get_mut(&session_id) else {
            return;
        };
        let was_idle = !session.outgoing().owes();
        match found {
            Some(found) => {
                // At most one message: within OWED_MAX but at its very edge.
                let _ = session.owe(found.into_iter().collect(), qos, identifier);
            }
            None if !session.owe_scan(filter, qos, identifier) => {
                let name = session.client_id.clone();
                self.limit_reached(Limit::RetainedScans, || {
                    format!(
                        "client {name} has {} scans of retained messages (or {} bytes of their \
                         filters) under way; those of its subscription to {filter:?} are not sent.",
                        crate::limits::SCANS_MAX,
                        crate::limits::SCAN_FILTER_BYTES_MAX,
                    )
                });
            }
            None => {}
        }
        let owes = self
            .sessions
            .get(&session_id)
            .is_some_and(|s| s.outgoing().owes());
        if was_idle && owes {
            self.subs.owed.owing.push(session_id);
        }
        self.send_owed(session_id);
    }

    /// Asks the cluster for the retained messages of a session's new subscription, unless
    /// the session waits for too many answers already, or owes more than one answer
    /// brings (counted as scans past their limit are).
    fn ask_cluster(
        &mut self,
        cluster: std::sync::Arc<crate::cluster::Cluster>,
        session_id: SessionId,
        filter: &str,
        qos: QoS,
        identifier: Option<u32>,
        sub: Option<&Subscription>,
    ) {
        let now = self.shared.clock.now();
        let Some(session) = self.sessions.get_mut(&session_id) else {
            return;
        };
        let owes_much = session.outgoing().owed_len() >= crate::cluster::retained::FOUND_MAX;
        if owes_much || !session.may_await_cluster(now) {
            let name = session.client_id.clone();
            self.limit_reached(Limit::RetainedScans, || {
                format!(
                    "client {name} waits for the cluster's retained messages of {} subscriptions \
                     (or is owed {} of them); those of its subscription to {filter:?} are not sent.",
                    crate::session::AWAITED_ANSWERS_MAX,
                    crate::cluster::retained::FOUND_MAX,
                )
            });
            return;
        }
        self.subs.owed.questions += 1;
        let question = self.subs.owed.questions;
        let query = crate::cluster::retained::Query {
            shard: self.id,
            question,
            session: session_id,
            filter: filter.to_string(),
            sub: sub.cloned(),
            qos,
            identifier,
        };
        if cluster.find_retained(query) {
            session.await_cluster(now, question);
        }
    }

    /// Sends what a session is owed while its client keeps up: until its connection has
    /// `OWED_WRITE_MAX` bytes waiting, or (QoS 1/2) its inflight window is full, finding
    /// more with its scans as it goes while this turn's scan budget lasts. Returns false
    /// once nothing is owed any more (or the session is gone).
    pub(super) fn send_owed(&mut self, session_id: SessionId) -> bool {
        let inflight_max = self.config.inflight_max;
        loop {
            let Some(session) = self.sessions.get(&session_id) else {
                return false;
            };
            let Some(conn) = session.conn else {
                return session.outgoing().owes();
            };
            if !session.outgoing().owes() {
                return false;
            }
            let unsent = self.unsent_bytes(conn);
            let waiting = self.conn(conn).map_or(0, |c| c.out_len()) + unsent;
            if waiting >= OWED_WRITE_MAX {
                // The socket drains what it holds (and says so when it was full); what is
                // only in this turn's buffer goes out at the end of the turn, and the next
                // turn must come at once to go on.
                self.subs.owed.next_turn |= unsent < OWED_WRITE_MAX;
                return true;
            }
            if !session.outgoing().has_owed_found() {
                if self.subs.owed.scan_visits_left == 0 {
                    self.subs.owed.next_turn = true;
                    return true;
                }
                self.scan_retained(session_id);
                continue;
            }
            let qos = (session.outgoing())
                .next_owed_qos(self.config.upgrade_outgoing_qos)
                .expect("a message was found");
            let window_full = !session.outgoing().has_room(session.window(inflight_max));
            if qos != QoS::AtMostOnce && window_full {
                return true; // An acknowledgement makes room.
            }
            let owed = self
                .sessions
                .get_mut(&session_id)
                .and_then(|s| s.take_owed())
                .expect("just seen");
            // Variants are per message: each retained message is encoded on its own.
            let target = Target {
                session: session_id,
                qos,
                // [MQTT-3.3.1-8] the RETAIN flag is set on retained messages sent for a new
                // subscription.
                retain: true,
                identifiers: owed.identifier.into_iter().collect(),
                shared: false,
            };
            self.subs.owed.sending = true;
            self.deliver_to_session(&owed.message, &target, &mut Variants::default());
            self.subs.owed.sending = false;
        }
    }

    /// One slice of the session's oldest scan: the retained store's lock is held for at
    /// most `SCAN_VISITS_PER_SLICE` topic levels, and what it finds waits in the session.
    fn scan_retained(&mut self, session_id: SessionId) {
        let Some(mut scan) = self
            .sessions
            .get_mut(&session_id)
            .and_then(|s| s.take_scan())
        else {
            return;
        };
        let still_allowed = |source: Option<&crate::retain::Source>, message: &Message| {
            self.kept_here(source, message)
        };
        let mut found: Vec<Arc<Message>> = Vec::new();
        let slice = (
            SCAN_VISITS_PER_SLICE.min(self.subs.owed.scan_visits_left),
            SCAN_FOUND_PER_SLICE,
        );
        let visits = (self.shared.retained.lock().expect("retained lock")).scan(
            &scan.filter,
            &mut scan.cursor,
            slice,
            &mut found,
            &still_allowed,
        );
        self.subs.owed.scan_visits_left = self.subs.owed.scan_visits_left.saturating_sub(visits);
        let Some(session) = self.sessions.get_mut(&session_id) else {
            return;
        };
        owe_counted(
            session,
            found,
            scan.qos,
            scan.identifier,
            &self.shared.stats[self.id],
        );
        if scan.cursor.is_some() {
            session.put_back_scan(scan);
        }
    }

    /// Goes on with every session owed retained messages (once per turn). When the turn's
    /// scan budget runs out, the sessions that did not get to scan go first next turn.
    pub(super) fn send_all_owed(&mut self) {
        self.subs.owed.next_turn = false;
        let mut owing = std::mem::take(&mut self.subs.owed.owing);
        let mut starved_from = None;
        let mut kept = 0;
        for i in 0..owing.len() {
            let id = owing[i];
            if starved_from.is_none() && self.subs.owed.scan_visits_left == 0 {
                starved_from = Some(kept);
            }
            if self.send_owed(id) {
                owing[kept] = id;
                kept += 1;
            }
        }
        owing.truncate(kept);
        if let Some(first) = starved_from {
            owing.rotate_left(first);
        }
        owing.append(&mut self.subs.owed.owing);
        self.subs.owed.owing = owing;
    }

    /// check_retain_source: a retained message goes only while its publisher may still
    /// publish it (the ACL in force now; sources are kept only with the option on).
    /// Whether this node's store sends `message`: not if the cluster keeps its topic's
    /// retained message (one this node kept before it joined the cluster, set aside: the
    /// cluster's is the one), and with `check_retain_source` only while its publisher
    /// may still publish there.
    fn kept_here(&self, source: Option<&crate::retain::Source>, message: &Message) -> bool {
        let cluster = self.shared.cluster.get();
        if cluster.is_some_and(|c| c.keeps_retained(&message.topic)) {
            return false;
        }
        source.is_none_or(|source| self.still_allowed(source, message))
    }

    fn still_allowed(&self, source: &crate::retain::Source, message: &Message) -> bool {
        let acl = self.config.security(source.listener).acl.as_ref();
        acl.is_none_or(|acl| {
            let (user, id) = (source.username.as_deref(), &*source.client_id);
            let write = crate::auth::acl::Access::Write;
            acl.check_topic(user, id, &message.topic, write)
        })
    }

    /// Owes a session the retained messages of its new subscriptions (after their SUBACK),
    /// behind those of earlier ones, as the turn's budget allows.
    pub(super) fn owe_requested(&mut self, session: SessionId, requests: Vec<RetainedRequest>) {
        if !requests.is_empty() {
            self.subs
                .owed
                .requests
                .push_back((session, requests.into_iter()));
            self.owe_requested_retained();
        }
    }

    /// A new loop turn: `RETAINED_REQUESTS_PER_TURN` more requests are owed, and those
    /// left from the last turn go first.
    pub(super) fn renew_requests_budget(&mut self) {
        self.subs.owed.requests_left = RETAINED_REQUESTS_PER_TURN;
        self.owe_requested_retained();
    }

    /// Owes the retained messages of new subscriptions, oldest first, while the turn's
    /// budget lasts.
    fn owe_requested_retained(&mut self) {
        while self.subs.owed.requests_left > 0 {
            let Some((session, requests)) = self.subs.owed.requests.front_mut() else {
                break;
            };
            let session = *session;
            let Some(request) = requests.next() else {
                self.subs.owed.requests.pop_front();
                continue;
            };
            self.subs.owed.requests_left -= 1;
            self.owe_if_subscribed(session, request);
        }
    }

    /// Owes what `request` asks for if its subscription is still as it was made: not
    /// unsubscribed since [MQTT-3.10.4-2], nor made again (which owes its own, if its
    /// Retain Handling asks for them [MQTT-3.3.1-11]).
    pub(super) fn owe_if_subscribed(&mut self, session: SessionId, request: RetainedRequest) {
        let current = (self.sessions.get(&session))
            .and_then(|s| s.subscriptions().get(request.filter.as_str()));
        if current == Some(&request.sub) {
            let (qos, identifier) = (request.sub.options.qos, request.sub.identifier);
            let identifier = identifier.map(|i| i.get());
            self.owe_retained(
                session,
                &request.filter,
                qos,
                identifier,
                Some(&request.sub),
            );
        }
    }

    /// The retained messages the cluster keeps for a subscription this shard asked for:
    /// owed if the session is still here and the subscription as it was (not unsubscribed
    /// since [MQTT-3.10.4-2], nor made again), except those of topics the session was sent
    /// since it asked (newer).
    pub(super) fn owe_from_cluster(&mut self, found: crate::cluster::retained::Found) {
        let crate::cluster::retained::Found { query, messages } = found;
        let Some(session) = self.sessions.get_mut(&query.session) else {
            return;
        };
        let Some(messages) = session.cluster_answered(query.question, messages) else {
            log::debug!(
                "Client {}: the cluster's retained messages for {:?} came after they were given up on; not sent.",
                session.client_id,
                query.filter
            );
            return;
        };
        if let Some(sub) = &query.sub {
            if session.subscriptions().get(query.filter.as_str()) != Some(sub) {
                return;
            }
        }
        let was_idle = !session.outgoing().owes();
        let stats = &self.shared.stats[self.id];
        owe_counted(session, messages, query.qos, query.identifier, stats);
        let owes = (self.sessions.get(&query.session)).is_some_and(|s| s.outgoing().owes());
        if was_idle && owes {
            self.subs.owed.owing.push(query.session);
        }
        self.send_owed(query.session);
    }

    /// A new loop turn: the scans of retained messages may look at `SCAN_VISITS_PER_TURN`
    /// topic levels again.
    pub(super) fn renew_scan_budget(&mut self) {
        self.subs.owed.scan_visits_left = SCAN_VISITS_PER_TURN;
    }
}

/// Owes `session` the retained messages found for one of its subscriptions; those past
/// `OWED_MAX` are dropped, said and counted.
fn owe_counted(
    session: &mut crate::session::Session,
    messages: Vec<Arc<Message>>,
    qos: QoS,
    identifier: Option<u32>,
    stats: &super::Stats,
) {
    let dropped = session.owe(messages, qos, identifier);
    if dropped > 0 {
        log::info!(
            "Client {} is owed too many retained messages; {dropped} dropped.",
            session.client_id
        );
        stats.dropped(DropReason::QueueFull, dropped as u64);
    }
}

/// Retained messages owed to new subscriptions (`owed.rs`).
pub(super) struct OwedWork {
    /// New subscriptions' requests for their retained messages, a slice a turn.
    pub(super) requests: RetainedRequests,
    /// Sessions owed retained messages (each once), continued every turn.
    pub(super) owing: Vec<SessionId>,
    /// Some of them can go on as soon as this turn's writes are out: do not sleep.
    pub(super) next_turn: bool,
    /// What is left of this turn's budgets: requests to take on (`RETAINED_REQUESTS_PER_TURN`),
    /// and topic levels the scans of the retained store may look at
    /// (`SCAN_VISITS_PER_TURN`).
    requests_left: usize,
    scan_visits_left: usize,
    /// While an owed retained message is delivered (not a message published now).
    pub(super) sending: bool,
    /// Questions asked of the cluster for retained messages (`ask_cluster`).
    questions: u64,
}

impl Default for OwedWork {
    fn default() -> OwedWork {
        OwedWork {
            requests: Default::default(),
            owing: Vec::new(),
            next_turn: false,
            requests_left: 0,
            sending: false,
            questions: 0,
            scan_visits_left: SCAN_VISITS_PER_TURN,
        }
    }
}

/// Requests of new subscriptions for their retained messages, by session, in the order
/// they were made.
pub(super) type RetainedRequests =
    std::collections::VecDeque<(SessionId, std::vec::IntoIter<RetainedRequest>)>;
