//! SUBSCRIBE and UNSUBSCRIBE. Changes to the shared trie are collected and applied as one
//! batch (one lock, one new snapshot) at the end of the loop turn, or sooner when a later
//! packet needs them (a PUBLISH to route, any reply that must follow the SUBACK); SUBACK and
//! UNSUBACK go out after that, so a subscription is live by the time its SUBACK is sent, and
//! the retained messages it is owed follow as the client reads.

use std::num::NonZeroU32;

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

impl TrieOp {
    pub(super) fn filter(&self) -> &str {
        match self {
            TrieOp::Subscribe { filter, .. } | TrieOp::Unsubscribe { filter, .. } => filter,
        }
    }
}

/// Subscriptions of ended sessions taken out of the trie in one loop turn, at most: a
/// client with 100,000 subscriptions leaving held its shard for 200 ms (release build).
const SWEPT_PER_TURN: usize = 4096;

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
    filter: String,
    qos: QoS,
    identifier: Option<u32>,
}

impl<B: Backend> Shard<B> {
    pub(super) fn on_subscribe(
        &mut self,
        conn: ConnId,
        session_id: SessionId,
        subscribe: Subscribe,
    ) {
        let Some(c) = self.conn(conn) else { return };
        let name = c.name().to_string();
        let v5 = c.version() == Some(ProtocolVersion::V5);
        // A 3.x bridge that says so (`try_private`) is not sent back what it publishes, and
        // gets RETAIN as published, as Mosquitto does: two brokers bridged both ways do not
        // echo messages forever, and retained messages stay retained across the bridge.
        // (3.x has no subscription options to ask for either; a 5.0 bridge asks.)
        let bridge = c.is_bridge() && !v5;
        log::debug!("Received SUBSCRIBE from {name}");
        let identifier = subscribe
            .properties
            .subscription_identifiers
            .first()
            .copied();
        let subscriptions_max = self.config.subscriptions_per_client_max;
        let mount = self.config.listener(c.listener()).mount_point.clone();
        let max_qos = self.config.listener(c.listener()).max_qos;
        let shard = self.id as u16;
        let Some(session) = self.sessions.get_mut(&session_id) else {
            return;
        };
        let mut reasons = Vec::with_capacity(subscribe.filters.len());
        let mut retained = Vec::new();
        let mut violation = None;
        let mut too_deep = false;
        let mut refused_for_bytes = 0;
        let filter_total_max = crate::limits::subscription_bytes_max_total(self.write_bytes_max);
        for (filter, options) in &subscribe.filters {
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
                    reasons.push(if v5 {
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
                    reasons.push(if v5 {
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
                reasons.push(if v5 {
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
                reasons.push(if v5 {
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
                session: session_id,
                sub,
            });
            log::info!(target: "subscribe", "{name} {} {filter}", options.qos as u8);
            // Granted QoS: what was asked, up to max_qos. [MQTT-3.9.3-1]
            reasons.push(match options.qos {
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
            return;
        }
        if too_deep {
            let what = "a subscription filter beyond the level limit";
            if self.config.connection_messages {
                log::info!("Client {name} disconnected due to malformed packet ({what}).");
            }
            self.disconnect_with(conn, ReasonCode::MalformedPacket, what);
            return;
        }
        let ack = SubAck {
            packet_id: subscribe.packet_id,
            properties: Properties::default(),
            reasons,
        };
        self.after_trie.push(AfterTrie::Ack {
            conn,
            session: session_id,
            packet: Packet::SubAck(ack),
            retained: last_of_each_filter(retained),
        });
    }

    pub(super) fn on_unsubscribe(
        &mut self,
        conn: ConnId,
        session_id: SessionId,
        unsubscribe: Unsubscribe,
    ) {
        let Some(c) = self.conn(conn) else { return };
        let name = c.name().to_string();
        let v5 = c.version() == Some(ProtocolVersion::V5);
        log::debug!("Received UNSUBSCRIBE from {name}");
        let mount = self.config.listener(c.listener()).mount_point.clone();
        let Some(session) = self.sessions.get_mut(&session_id) else {
            return;
        };
        let mut reasons = Vec::with_capacity(unsubscribe.filters.len());
        for filter in &unsubscribe.filters {
            if parse_filter(filter).is_err() {
                log::debug!("\tan invalid filter");
                reasons.push(ReasonCode::TopicFilterInvalid);
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
                    session: session_id,
                });
                reasons.push(ReasonCode::Success);
            } else {
                reasons.push(ReasonCode::NoSubscriptionExisted);
            }
        }
        if !v5 {
            reasons.clear();
        }
        let ack = UnsubAck {
            packet_id: unsubscribe.packet_id,
            properties: Properties::default(),
            reasons,
        };
        self.after_trie.push(AfterTrie::Ack {
            conn,
            session: session_id,
            packet: Packet::UnsubAck(ack),
            retained: Vec::new(),
        });
    }

    /// Takes the next slice of ended sessions' subscriptions out of the trie (all of them
    /// when `all`).
    pub(super) fn sweep_trie(&mut self, all: bool) {
        if self.trie_sweep.is_empty() {
            return;
        }
        let count = if all {
            self.trie_sweep.len()
        } else {
            self.trie_sweep.len().min(SWEPT_PER_TURN)
        };
        let mut writer = self.shared.trie_writer.lock().expect("trie writer lock");
        for op in self.trie_sweep.drain(..count) {
            if let TrieOp::Unsubscribe { filter, session } = op {
                let parsed = parse_filter(&filter).expect("checked before it was queued");
                writer.unsubscribe(parsed, session);
            }
        }
        writer.publish();
        if self.trie_sweep.is_empty() && self.trie_sweep.capacity() > TRIE_OPS_KEPT {
            self.trie_sweep = Default::default();
        }
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
            for request in retained {
                self.owe_retained(session, &request.filter, request.qos, request.identifier);
            }
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
