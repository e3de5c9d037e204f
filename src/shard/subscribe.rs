//! SUBSCRIBE and UNSUBSCRIBE. A packet's filters are handled `FILTERS_PER_TURN` a loop turn
//! at most: one of more goes on in the next turns, its client not read meanwhile, as the
//! sequence of packets the spec says it is [MQTT-3.8.4-4]. Changes to the shared trie are
//! collected and applied as one batch (one lock, one new snapshot) at the end of the loop
//! turn, or sooner when a later packet needs them (a PUBLISH to route, any reply that must
//! follow the SUBACK); SUBACK and UNSUBACK go out after that, so a subscription is live by
//! the time its SUBACK is sent, and the retained messages it is owed follow as the client
//! reads.

use std::num::NonZeroU32;

use super::conn::Hold;
use super::io::{Backend, ConnId};
use super::Shard;
use crate::codec::{
    Packet, Properties, ProtocolVersion, QoS, ReasonCode, RetainHandling, SubAck, Subscribe,
    UnsubAck, Unsubscribe,
};
use crate::limits::{Limit, SUBSCRIPTION_BYTES_MAX};
use crate::topic::{parse_filter, SessionId, Subscription};
use compact_str::CompactString;
use std::sync::atomic::Ordering::Relaxed;

/// Trie changes a shard keeps room for between turns.
const TRIE_OPS_KEPT: usize = 1024;

/// Filters of SUBSCRIBEs and UNSUBSCRIBEs a shard handles in one loop turn, at most (a
/// packet may list 16,384): one SUBSCRIBE of 16,384 new filters held a shard for 24-41 ms
/// (release build), about 1 µs a filter to handle and 2 µs to change the trie.
pub(super) const FILTERS_PER_TURN: usize = 512;

pub enum TrieOp {
    Subscribe {
        filter: CompactString,
        session: SessionId,
        sub: Subscription,
    },
    Unsubscribe {
        filter: CompactString,
        session: SessionId,
    },
}

/// Subscriptions of ended sessions taken out of the trie in one loop turn, at most: a
/// client with 100,000 subscriptions leaving held its shard for 200 ms (release build); a
/// thousand trie changes are 2-3 ms.
const SWEPT_PER_TURN: usize = 512;

/// Ended sessions' subscriptions still to take out of the trie, oldest first.
pub(super) type TrieSweep = std::collections::VecDeque<(
    SessionId,
    hashbrown::hash_map::IntoKeys<CompactString, Subscription>,
)>;

/// What to send once the turn's trie changes are published.
pub enum AfterTrie {
    Ack {
        conn: ConnId,
        session: SessionId,
        packet: Packet,
        retained: Vec<RetainedRequest>,
    },
}

/// Retained messages owed to a new subscription.
pub struct RetainedRequest {
    pub(super) filter: String,
    pub(super) qos: QoS,
    pub(super) identifier: Option<u32>,
}

/// A SUBSCRIBE or UNSUBSCRIBE whose filters are handled a slice a turn.
pub(super) struct Subscribing {
    conn: ConnId,
    session: SessionId,
    /// Filters handled so far, and what each got.
    done: usize,
    reasons: Vec<ReasonCode>,
    packet: Filters,
}

enum Filters {
    Subscribe {
        packet: Subscribe,
        /// Retained messages owed once the SUBACK is out.
        retained: Vec<RetainedRequest>,
    },
    Unsubscribe(Unsubscribe),
}

impl Filters {
    fn len(&self) -> usize {
        match self {
            Filters::Subscribe { packet, .. } => packet.filters.len(),
            Filters::Unsubscribe(packet) => packet.filters.len(),
        }
    }
}

/// Where a slice of a packet's filters left it.
enum Slice {
    Done,
    /// Filters are left for a later turn.
    More,
    /// Its connection is gone, or was closed for a filter that broke a rule.
    Closed,
}

impl<B: Backend> Shard<B> {
    pub(super) fn on_subscribe(&mut self, conn: ConnId, session: SessionId, subscribe: Subscribe) {
        log::debug!("Received SUBSCRIBE from {}", self.conn_name(conn));
        let job = Subscribing {
            conn,
            session,
            done: 0,
            reasons: Vec::with_capacity(subscribe.filters.len()),
            packet: Filters::Subscribe {
                packet: subscribe,
                retained: Vec::new(),
            },
        };
        self.go_on_subscribing(job, false);
    }

    pub(super) fn on_unsubscribe(
        &mut self,
        conn: ConnId,
        session: SessionId,
        unsubscribe: Unsubscribe,
    ) {
        log::debug!("Received UNSUBSCRIBE from {}", self.conn_name(conn));
        let job = Subscribing {
            conn,
            session,
            done: 0,
            reasons: Vec::with_capacity(unsubscribe.filters.len()),
            packet: Filters::Unsubscribe(unsubscribe),
        };
        self.go_on_subscribing(job, false);
    }

    /// At the start of a turn: renews the turn's budgets of filters and of retained
    /// messages' requests, and goes on with what is left of both from the last turn, in
    /// the order it came.
    pub(super) fn resume_subscribing(&mut self) {
        self.filters_left = FILTERS_PER_TURN;
        self.renew_requests_budget();
        for _ in 0..self.subscribing.len() {
            let Some(job) = self.subscribing.pop_front() else {
                break;
            };
            self.go_on_subscribing(job, false);
        }
    }

    /// Handles the rest of `conn`'s SUBSCRIBE or UNSUBSCRIBE whatever the turn's budget,
    /// if one is under way: its peer has closed, and there is no later turn for it.
    pub(super) fn finish_subscribing(&mut self, conn: ConnId) -> bool {
        let Some(at) = self.subscribing.iter().position(|job| job.conn == conn) else {
            return false;
        };
        let job = self.subscribing.remove(at).expect("found just before");
        self.go_on_subscribing(job, true);
        true
    }

    /// Handles as many of `job`'s filters as the turn's budget allows (all of them if
    /// `all`); a packet with filters left waits for the next turn, and its client with it.
    fn go_on_subscribing(&mut self, mut job: Subscribing, all: bool) {
        let left = job.packet.len() - job.done;
        let count = if all {
            left
        } else {
            left.min(self.filters_left)
        };
        self.filters_left = self.filters_left.saturating_sub(count);
        let slice = match job.packet {
            Filters::Subscribe { .. } => self.subscribe_slice(&mut job, count),
            Filters::Unsubscribe(_) => self.unsubscribe_slice(&mut job, count),
        };
        match slice {
            Slice::Closed => {}
            Slice::More => {
                // Counted, not logged: a client that subscribes to many filters at once
                // meets it too.
                self.stats().limit_hit(Limit::FiltersPerTurn);
                self.hold_reading(job.conn, Hold::SUBSCRIBING);
                self.subscribing.push_back(job);
            }
            Slice::Done => {
                let conn = job.conn;
                self.answer_filters(job);
                if self
                    .conn(conn)
                    .is_some_and(|c| c.held.contains(Hold::SUBSCRIBING))
                {
                    // What it sent meanwhile is read from the next turn's start.
                    if self.hold_reading(conn, Hold::DECODE) {
                        self.decoding.push(conn);
                    }
                    self.release_reading(conn, Hold::SUBSCRIBING);
                }
            }
        }
    }

    /// Handles the next `count` filters of a SUBSCRIBE.
    fn subscribe_slice(&mut self, job: &mut Subscribing, count: usize) -> Slice {
        let conn = job.conn;
        let Some(c) = self.conn(conn).filter(|c| c.session == Some(job.session)) else {
            return Slice::Closed;
        };
        let name = c.name().to_string();
        let v5 = c.version() == Some(ProtocolVersion::V5);
        // A 3.x bridge that says so (`try_private`) is not sent back what it publishes, and
        // gets RETAIN as published, as Mosquitto does: two brokers bridged both ways do not
        // echo messages forever, and retained messages stay retained across the bridge.
        // (3.x has no subscription options to ask for either; a 5.0 bridge asks.)
        let bridge = c.is_bridge() && !v5;
        let subscriptions_max = self.config.subscriptions_per_client_max;
        let mount = self.config.listener(c.listener()).mount_point.clone();
        let max_qos = self.config.listener(c.listener()).max_qos;
        let shard = self.id as u16;
        let Some(session) = self.sessions.get_mut(&job.session) else {
            return Slice::Closed;
        };
        let Filters::Subscribe { packet, retained } = &mut job.packet else {
            unreachable!("a SUBSCRIBE's job");
        };
        let identifier = packet.properties.subscription_identifiers.first().copied();
        let mut violation = None;
        let mut too_deep = false;
        let mut refused_for_bytes = 0;
        let filter_total_max = crate::limits::subscription_bytes_max_total(self.write_bytes_max);
        for (filter, options) in &packet.filters[job.done..job.done + count] {
            // Granted at most the listener's max_qos [MQTT-3.2.2-10] [MQTT-3.9.3-1].
            let options = &crate::codec::SubscriptionOptions {
                qos: options.qos.min(max_qos),
                no_local: options.no_local || bridge,
                retain_as_published: options.retain_as_published || bridge,
                ..*options
            };
            let mounted = match &mount {
                Some(mount) => mounted_filter(mount, filter),
                None => filter.to_string(),
            };
            let filter = &mounted;
            let parsed = match parse_filter(filter) {
                Ok(parsed) => parsed,
                Err(crate::topic::TopicError::TooManyLevels { levels }) => {
                    // Beyond the broker's level limit: Mosquitto ends the connection (5.0:
                    // Malformed Packet), and so does midge. Not logged whole.
                    log::debug!("Subscription filter of {levels} levels from {name}.");
                    too_deep = true;
                    break;
                }
                Err(e) => {
                    log::debug!("Invalid subscription filter {filter:?} from {name}: {e}");
                    // 3.1.1: 0x80 [MQTT-3.9.3-2]; 5.0: Topic Filter invalid.
                    job.reasons.push(if v5 {
                        ReasonCode::TopicFilterInvalid
                    } else {
                        ReasonCode::UnspecifiedError
                    });
                    continue;
                }
            };
            log::debug!("\t{filter} (QoS {})", options.qos as u8);
            // acl_file: as in Mosquitto, any filter is granted and only what the client may
            // read is delivered (`deliver.rs`). With acl_strict_subscribe, everything the
            // filter could match must be readable (3.x: 0x80; 5.0: Not authorized).
            let security = self.config.security(session.listener());
            let strict_acl = security
                .acl
                .as_ref()
                .filter(|_| security.acl_strict_subscribe);
            if let Some(acl) = strict_acl {
                if !acl.check_subscribe(session.username(), &session.client_id, parsed.filter()) {
                    log::debug!("Denied SUBSCRIBE from {name} to {filter:?}.");
                    job.reasons.push(if v5 {
                        ReasonCode::NotAuthorized
                    } else {
                        ReasonCode::UnspecifiedError
                    });
                    continue;
                }
            }
            // [MQTT-3.8.3-4] No Local on a shared subscription is a Protocol Error.
            if v5 && parsed.group().is_some() && options.no_local {
                violation = Some("No Local on a shared subscription");
                break;
            }
            let is_new = !session.subscriptions().contains_key(filter.as_str());
            if is_new && session.subscriptions().len() >= subscriptions_max {
                log::info!("Client {name} has reached its subscription limit; {filter:?} refused.");
                job.reasons.push(if v5 {
                    ReasonCode::QuotaExceeded
                } else {
                    ReasonCode::UnspecifiedError
                });
                continue;
            }
            // What long filters hold, the client's and everyone's, is bounded by bytes.
            let cost = crate::session::filter_cost(filter);
            if is_new
                && cost > 0
                && (session.filter_bytes() + cost > SUBSCRIPTION_BYTES_MAX
                    || self.shared.filter_bytes.load(Relaxed) + cost > filter_total_max)
            {
                refused_for_bytes += 1;
                job.reasons.push(if v5 {
                    ReasonCode::QuotaExceeded
                } else {
                    ReasonCode::UnspecifiedError
                });
                continue;
            }
            let sub = Subscription {
                shard,
                options: *options,
                identifier: identifier.and_then(NonZeroU32::new),
            };
            session.subscribe(filter, sub, &mut self.changes, &self.shared.filter_bytes);
            self.trie_ops.push(TrieOp::Subscribe {
                filter: CompactString::from(filter.as_str()),
                session: job.session,
                sub,
            });
            log::info!(target: "subscribe", "{name} {} {filter}", options.qos as u8);
            // Granted QoS: what was asked, up to max_qos. [MQTT-3.9.3-1]
            job.reasons.push(match options.qos {
                QoS::AtMostOnce => ReasonCode::GRANTED_QOS_0,
                QoS::AtLeastOnce => ReasonCode::GrantedQos1,
                QoS::ExactlyOnce => ReasonCode::GrantedQos2,
            });
            // Retained messages: never for shared subscriptions (5.0 §4.8.2); Retain
            // Handling 1 only for a new subscription, 2 never. [MQTT-3.3.1-9] [MQTT-3.3.1-10]
            let wanted = match options.retain_handling {
                RetainHandling::SendAtSubscribe => true,
                RetainHandling::SendAtNewSubscribe => is_new,
                RetainHandling::DoNotSend => false,
            };
            if parsed.group().is_none() && wanted {
                retained.push(RetainedRequest {
                    filter: parsed.filter().to_string(),
                    qos: options.qos,
                    identifier,
                });
            }
        }
        job.done += count;
        if refused_for_bytes > 0 {
            self.limit_reached(Limit::SubscriptionBytes, || {
                format!(
                    "client {name} would hold more than {SUBSCRIPTION_BYTES_MAX} bytes of \
                     subscriptions (or all clients more than {filter_total_max}); \
                     {refused_for_bytes} filters refused."
                )
            });
        }
        if let Some(what) = violation {
            self.protocol_violation(conn, what);
            return Slice::Closed;
        }
        if too_deep {
            let what = "a subscription filter beyond the level limit";
            if self.config.connection_messages {
                log::info!("Client {name} disconnected due to malformed packet ({what}).");
            }
            self.disconnect_with(conn, ReasonCode::MalformedPacket, what);
            return Slice::Closed;
        }
        if job.done < job.packet.len() {
            Slice::More
        } else {
            Slice::Done
        }
    }

    /// Handles the next `count` filters of an UNSUBSCRIBE.
    fn unsubscribe_slice(&mut self, job: &mut Subscribing, count: usize) -> Slice {
        let Some(c) = self
            .conn(job.conn)
            .filter(|c| c.session == Some(job.session))
        else {
            return Slice::Closed;
        };
        let name = c.name().to_string();
        let mount = self.config.listener(c.listener()).mount_point.clone();
        let Some(session) = self.sessions.get_mut(&job.session) else {
            return Slice::Closed;
        };
        let Filters::Unsubscribe(packet) = &job.packet else {
            unreachable!("an UNSUBSCRIBE's job");
        };
        for filter in &packet.filters[job.done..job.done + count] {
            if parse_filter(filter).is_err() {
                log::debug!("\tan invalid filter");
                job.reasons.push(ReasonCode::TopicFilterInvalid);
                continue;
            }
            log::debug!("\t{filter}");
            let mounted = match &mount {
                Some(mount) => mounted_filter(mount, filter),
                None => filter.to_string(),
            };
            let filter = &mounted;
            log::info!(target: "unsubscribe", "{name} {filter}");
            if session.unsubscribe(filter, &mut self.changes) {
                // Its retained messages are owed no more. [MQTT-3.10.4-2]
                session.cancel_scan(filter);
                self.trie_ops.push(TrieOp::Unsubscribe {
                    filter: CompactString::from(filter.as_str()),
                    session: job.session,
                });
                job.reasons.push(ReasonCode::Success);
            } else {
                job.reasons.push(ReasonCode::NoSubscriptionExisted);
            }
        }
        job.done += count;
        if job.done < job.packet.len() {
            Slice::More
        } else {
            Slice::Done
        }
    }

    /// A packet's filters are all handled: its SUBACK or UNSUBACK goes out once the trie
    /// has them, then the retained messages they are owed.
    fn answer_filters(&mut self, job: Subscribing) {
        let Subscribing {
            conn,
            session,
            mut reasons,
            packet,
            ..
        } = job;
        let (packet, retained) = match packet {
            Filters::Subscribe { packet, retained } => {
                let ack = SubAck {
                    packet_id: packet.packet_id,
                    properties: Properties::default(),
                    reasons,
                };
                (Packet::SubAck(ack), last_of_each_filter(retained))
            }
            Filters::Unsubscribe(packet) => {
                // 3.1.1's UNSUBACK has no reason codes.
                if self.conn(conn).and_then(|c| c.version()) != Some(ProtocolVersion::V5) {
                    reasons.clear();
                }
                let ack = UnsubAck {
                    packet_id: packet.packet_id,
                    properties: Properties::default(),
                    reasons,
                };
                (Packet::UnsubAck(ack), Vec::new())
            }
        };
        self.after_trie.push(AfterTrie::Ack {
            conn,
            session,
            packet,
            retained,
        });
    }

    /// Takes the next slice of ended sessions' subscriptions out of the trie (all of them
    /// when `all`).
    pub(super) fn sweep_trie(&mut self, all: bool) {
        if self.trie_sweep.is_empty() {
            return;
        }
        let mut left = if all { usize::MAX } else { SWEPT_PER_TURN };
        let mut writer = self.shared.trie_writer.lock().expect("trie writer lock");
        while left > 0 {
            let Some((session, filters)) = self.trie_sweep.front_mut() else {
                break;
            };
            let session = *session;
            let Some(filter) = filters.next() else {
                self.trie_sweep.pop_front();
                continue;
            };
            left -= 1;
            // A shared subscription has left already (`end_session`): not found again.
            let parsed = parse_filter(&filter).expect("checked before it was subscribed");
            writer.unsubscribe(parsed, session);
        }
        writer.publish();
    }

    /// Applies this turn's subscription changes as one batch, then sends what waited on it.
    pub(super) fn apply_trie_ops(&mut self) {
        if self.trie_ops.is_empty() && self.after_trie.is_empty() {
            return;
        }
        if !self.trie_ops.is_empty() {
            let mut writer = self.shared.trie_writer.lock().expect("trie writer lock");
            for op in self.trie_ops.drain(..) {
                match op {
                    TrieOp::Subscribe {
                        filter,
                        session,
                        sub,
                    } => {
                        let parsed = parse_filter(&filter).expect("checked before it was queued");
                        writer.subscribe(parsed, session, sub);
                    }
                    TrieOp::Unsubscribe { filter, session } => {
                        let parsed = parse_filter(&filter).expect("checked before it was queued");
                        writer.unsubscribe(parsed, session);
                    }
                }
            }
            writer.publish();
            // A subscribe storm's batch does not stay allocated afterwards.
            if self.trie_ops.capacity() > TRIE_OPS_KEPT {
                self.trie_ops = Vec::new();
            }
        }
        for after in std::mem::take(&mut self.after_trie) {
            let AfterTrie::Ack {
                conn,
                session,
                packet,
                retained,
            } = after;
            if self.conn(conn).and_then(|c| c.session) != Some(session) {
                continue; // The connection closed in the meantime.
            }
            let kind = if matches!(packet, Packet::SubAck(_)) {
                "SUBACK"
            } else {
                "UNSUBACK"
            };
            log::debug!("Sending {kind} to {}", self.conn_name(conn));
            self.send_packet(conn, &packet);
            self.owe_requested(session, retained);
        }
    }
}

/// A filter repeated in one SUBSCRIBE is subscribed at each repeat, each replacing the
/// last [MQTT-3.8.4-3]; its retained messages are owed once, as the last repeat asks for
/// them, not once per repeat (a packet listing `#` thousands of times would otherwise owe
/// the whole store thousands of times over). The client sees one SUBACK for them all
/// [MQTT-3.8.4-5], and the subscription they leave.
fn last_of_each_filter(mut requests: Vec<RetainedRequest>) -> Vec<RetainedRequest> {
    if requests.len() < 2 {
        return requests;
    }
    let keep: Vec<bool> = {
        let last: hashbrown::HashMap<&str, usize> = (requests.iter().enumerate())
            .map(|(i, r)| (r.filter.as_str(), i))
            .collect();
        (requests.iter().enumerate())
            .map(|(i, r)| last[r.filter.as_str()] == i)
            .collect()
    };
    let mut keep = keep.into_iter();
    requests.retain(|_| keep.next().expect("one flag per request"));
    requests
}

/// `mount_point`: a filter of a listener's client, inside the listener's part of the topic
/// space (`$share/group/` stays in front).
fn mounted_filter(mount: &str, filter: &str) -> String {
    if let Some(rest) = filter.strip_prefix("$share/") {
        if let Some((group, topic)) = rest.split_once('/') {
            return format!("$share/{group}/{mount}{topic}");
        }
    }
    format!("{mount}{filter}")
}
