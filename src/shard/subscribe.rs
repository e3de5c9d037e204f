//! SUBSCRIBE and UNSUBSCRIBE filters: each checked, granted or refused, and changed in the
//! session and (`trie_ops.rs`) the trie, a slice of a packet's filters at a time
//! (`subscribing.rs`); the SUBACK or UNSUBACK once the packet's changes are in the trie,
//! then the retained messages its new subscriptions are owed, as the client reads.

use std::num::NonZeroU32;

use super::io::Backend;
use super::subscribing::{Filters, Slice, Subscribing};
use super::trie_ops::{AfterTrie, TrieOp};
use super::Shard;
use crate::codec::{
    Packet, Properties, ProtocolVersion, QoS, ReasonCode, RetainHandling, SubAck, UnsubAck,
};
use crate::limits::{Limit, SUBSCRIPTION_BYTES_MAX};
use crate::topic::{parse_filter, Subscription};
use compact_str::CompactString;
use std::sync::atomic::Ordering::Relaxed;

/// Retained messages owed to a new subscription: its filter, and the subscription as it
/// was made (one made again since owes its own).
pub struct RetainedRequest {
    pub(super) filter: String,
    pub(super) sub: Subscription,
}

impl<B: Backend> Shard<B> {
    /// Handles the next `count` filters of a SUBSCRIBE.
    pub(super) fn subscribe_slice(&mut self, job: &mut Subscribing, count: usize) -> Slice {
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
        let Some((session, changes)) = self.sessions.recording(&job.session) else {
            return Slice::Closed;
        };
        let Filters::Subscribe { packet, retained } = &mut job.packet else {
            unreachable!("a SUBSCRIBE's job");
        };
        let identifier = packet.properties.subscription_identifiers.first().copied();
        let mut violation = None;
        let mut too_deep = false;
        let mut refused_for_bytes = 0;
        let filter_total_max =
            crate::limits::subscription_bytes_max_total(self.output.memory.limit);
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
            session.subscribe(filter, sub, changes, &self.shared.filter_bytes);
            self.trie.ops.push(TrieOp::Subscribe {
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
                    sub,
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
    pub(super) fn unsubscribe_slice(&mut self, job: &mut Subscribing, count: usize) -> Slice {
        let Some(c) = self
            .conn(job.conn)
            .filter(|c| c.session == Some(job.session))
        else {
            return Slice::Closed;
        };
        let name = c.name().to_string();
        let mount = self.config.listener(c.listener()).mount_point.clone();
        let Some((session, changes)) = self.sessions.recording(&job.session) else {
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
            if session.unsubscribe(filter, changes) {
                // Its retained messages are owed no more. [MQTT-3.10.4-2]
                session.cancel_scan(filter);
                self.trie.ops.push(TrieOp::Unsubscribe {
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
    pub(super) fn answer_filters(&mut self, job: Subscribing) {
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
        self.trie.after.push(AfterTrie::Ack {
            conn,
            session,
            packet,
            retained,
        });
    }
}

/// A filter repeated in one SUBSCRIBE is subscribed at each repeat, each replacing the
/// last [MQTT-3.8.4-3]; its retained messages are owed once, as the last repeat asks for
/// them, not once per repeat (a packet listing `#` thousands of times would otherwise owe
/// the whole store thousands of times over). The client sees one SUBACK for them all
/// [MQTT-3.8.4-5], and the subscription they leave.
pub(super) fn last_of_each_filter(mut requests: Vec<RetainedRequest>) -> Vec<RetainedRequest> {
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
