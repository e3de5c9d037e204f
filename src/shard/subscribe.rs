//! SUBSCRIBE and UNSUBSCRIBE filters: each checked, granted or refused, and changed in the
//! session and (`trie_ops.rs`) the trie, a slice of a packet's filters at a time
//! (`subscribing.rs`); the SUBACK or UNSUBACK once the packet's changes are in the trie,
//! then the retained messages its new subscriptions are owed, as the client reads.

use std::num::NonZeroU32;

use super::conn::Conn;
use super::io::{Backend, ConnId};
use super::shared::Shared;
use super::subscribing::{Filters, Slice, Subscribing};
use super::trie_ops::{AfterTrie, TrieOp};
use super::Shard;
use crate::codec::{
    Packet, Properties, ProtocolVersion, QoS, ReasonCode, RetainHandling, SubAck,
    SubscriptionOptions, UnsubAck,
};
use crate::config::Config;
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
        let memory_limit = self.output.memory.limit;
        let rules = FilterRules::of(&self.config, &self.shared, memory_limit, c, &name);
        let Some((session, changes)) = self.sessions.recording(&job.session) else {
            return Slice::Closed;
        };
        let security = self.config.security(session.listener());
        let strict_acl = (security.acl.as_ref()).filter(|_| security.acl_strict_subscribe);
        let Filters::Subscribe { packet, retained } = &mut job.packet else {
            unreachable!("a SUBSCRIBE's job");
        };
        let identifier = packet.properties.subscription_identifiers.first().copied();
        let identifier = identifier.and_then(NonZeroU32::new);
        let mut refused_for_bytes = 0;
        let mut closing = None;
        for (filter, options) in &packet.filters[job.done..job.done + count] {
            let checked = rules.check(session, strict_acl, filter, options);
            let (filter, shared, options, is_new) = match checked {
                Checked::Fits {
                    filter,
                    shared,
                    options,
                    is_new,
                } => (filter, shared, options, is_new),
                Checked::Refused(reason) => {
                    job.reasons.push(reason);
                    continue;
                }
                Checked::OverBytes(reason) => {
                    refused_for_bytes += 1;
                    job.reasons.push(reason);
                    continue;
                }
                Checked::Closes(end) => {
                    closing = Some(end);
                    break;
                }
            };
            let sub = Subscription {
                shard: self.id as u16,
                options,
                identifier,
            };
            session.subscribe(&filter, sub, changes, &self.shared.filter_bytes);
            self.subs.trie.ops.push(TrieOp::Subscribe {
                filter: CompactString::from(filter.as_str()),
                session: job.session,
                sub,
            });
            log::info!(target: "subscribe", "{name} {} {filter}", options.qos as u8);
            job.reasons.push(granted(options.qos));
            let wanted = retained_wanted(&options, is_new);
            // Never for shared subscriptions (5.0 §4.8.2).
            if !shared && wanted {
                retained.push(RetainedRequest { filter, sub });
            }
        }
        job.done += count;
        let more = job.done < job.packet.len();
        let filter_total_max = rules.filter_total_max;
        self.slice_done(
            conn,
            &name,
            refused_for_bytes,
            filter_total_max,
            closing,
            more,
        )
    }

    /// After a slice of a SUBSCRIBE: the filters refused for their bytes logged, and the
    /// connection ended if a filter ends it.
    fn slice_done(
        &mut self,
        conn: ConnId,
        name: &str,
        refused_for_bytes: usize,
        filter_total_max: usize,
        closing: Option<Ending>,
        more: bool,
    ) -> Slice {
        if refused_for_bytes > 0 {
            self.limit_reached(Limit::SubscriptionBytes, || {
                format!(
                    "client {name} would hold more than {SUBSCRIPTION_BYTES_MAX} bytes of \
                     subscriptions (or all clients more than {filter_total_max}); \
                     {refused_for_bytes} filters refused."
                )
            });
        }
        match closing {
            Some(Ending::Violation(what)) => {
                self.protocol_violation(conn, what);
                Slice::Closed
            }
            Some(Ending::TooDeep) => {
                let what = "a subscription filter beyond the level limit";
                if self.config.connection_messages {
                    log::info!("Client {name} disconnected due to malformed packet ({what}).");
                }
                self.disconnect_with(conn, ReasonCode::MalformedPacket, what);
                Slice::Closed
            }
            None if more => Slice::More,
            None => Slice::Done,
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
                self.subs.trie.ops.push(TrieOp::Unsubscribe {
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
        self.subs.trie.after.push(AfterTrie::Ack {
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

/// The reason code granting `qos`: what was asked, up to max_qos. [MQTT-3.9.3-1]
fn granted(qos: QoS) -> ReasonCode {
    match qos {
        QoS::AtMostOnce => ReasonCode::GRANTED_QOS_0,
        QoS::AtLeastOnce => ReasonCode::GrantedQos1,
        QoS::ExactlyOnce => ReasonCode::GrantedQos2,
    }
}

/// Whether a subscription is sent the retained messages it matches: Retain Handling 1
/// only for a new subscription, 2 never [MQTT-3.3.1-9] [MQTT-3.3.1-10] (and never a shared
/// subscription, 5.0 §4.8.2: the caller's).
fn retained_wanted(options: &SubscriptionOptions, is_new: bool) -> bool {
    match options.retain_handling {
        RetainHandling::SendAtSubscribe => true,
        RetainHandling::SendAtNewSubscribe => is_new,
        RetainHandling::DoNotSend => false,
    }
}

/// What a SUBSCRIBE's filters are checked against: its client's and listener's.
struct FilterRules<'a> {
    v5: bool,
    bridge: bool,
    max_qos: QoS,
    mount: Option<&'a str>,
    subscriptions_max: usize,
    /// What the filters of every client may hold, and hold now (`limits`).
    filter_total_max: usize,
    filter_total: &'a std::sync::atomic::AtomicUsize,
    /// The client's name, for log lines.
    name: &'a str,
}

/// What the checks of one filter found.
enum Checked {
    /// It may be subscribed: the filter (under the mount point), whether it is a shared
    /// subscription's, the options granted, and whether the session did not have it.
    Fits {
        filter: String,
        shared: bool,
        options: SubscriptionOptions,
        is_new: bool,
    },
    /// Refused with this reason code; the others go on.
    Refused(ReasonCode),
    /// Refused for the bytes the client's (or every client's) filters would hold.
    OverBytes(ReasonCode),
    /// The connection ends, and the rest of the packet with it.
    Closes(Ending),
}

enum Ending {
    Violation(&'static str),
    /// A filter beyond the broker's level limit.
    TooDeep,
}

impl<'a> FilterRules<'a> {
    /// The rules for a SUBSCRIBE of `c`, named `name` in log lines.
    fn of(
        config: &'a Config,
        shared: &'a Shared,
        memory_limit: usize,
        c: &Conn,
        name: &'a str,
    ) -> Self {
        let v5 = c.version() == Some(ProtocolVersion::V5);
        let listener = config.listener(c.listener());
        FilterRules {
            v5,
            // A 3.x bridge that says so (`try_private`) is not sent back what it publishes,
            // and gets RETAIN as published, as Mosquitto does: two brokers bridged both
            // ways do not echo messages forever, and retained messages stay retained across
            // the bridge. (3.x has no subscription options to ask for either; a 5.0 bridge
            // asks.)
            bridge: c.is_bridge() && !v5,
            max_qos: listener.max_qos,
            mount: listener.mount_point.as_deref(),
            subscriptions_max: config.subscriptions_per_client_max,
            filter_total_max: crate::limits::subscription_bytes_max_total(memory_limit),
            filter_total: &shared.filter_bytes,
            name,
        }
    }

    /// 3.1.1: 0x80 [MQTT-3.9.3-2]; 5.0: `reason`.
    fn refused(&self, reason: ReasonCode) -> ReasonCode {
        if self.v5 {
            reason
        } else {
            ReasonCode::UnspecifiedError
        }
    }

    fn check(
        &self,
        session: &crate::session::Session,
        strict_acl: Option<&std::sync::Arc<crate::auth::acl::Acl>>,
        filter: &str,
        options: &SubscriptionOptions,
    ) -> Checked {
        let name = self.name;
        // Granted at most the listener's max_qos [MQTT-3.2.2-10] [MQTT-3.9.3-1].
        let options = SubscriptionOptions {
            qos: options.qos.min(self.max_qos),
            no_local: options.no_local || self.bridge,
            retain_as_published: options.retain_as_published || self.bridge,
            ..*options
        };
        let filter = match self.mount {
            Some(mount) => mounted_filter(mount, filter),
            None => filter.to_string(),
        };
        let parsed = match parse_filter(&filter) {
            Ok(parsed) => parsed,
            Err(crate::topic::TopicError::TooManyLevels { levels }) => {
                // Beyond the broker's level limit: Mosquitto ends the connection (5.0:
                // Malformed Packet), and so does midge. Not logged whole.
                log::debug!("Subscription filter of {levels} levels from {name}.");
                return Checked::Closes(Ending::TooDeep);
            }
            Err(e) => {
                log::debug!("Invalid subscription filter {filter:?} from {name}: {e}");
                return Checked::Refused(self.refused(ReasonCode::TopicFilterInvalid));
            }
        };
        log::debug!("\t{filter} (QoS {})", options.qos as u8);
        // acl_file: as in Mosquitto, any filter is granted and only what the client may
        // read is delivered (`deliver.rs`). With acl_strict_subscribe, everything the
        // filter could match must be readable (3.x: 0x80; 5.0: Not authorized).
        if let Some(acl) = strict_acl {
            if !acl.check_subscribe(session.username(), &session.client_id, parsed.filter()) {
                log::debug!("Denied SUBSCRIBE from {name} to {filter:?}.");
                return Checked::Refused(self.refused(ReasonCode::NotAuthorized));
            }
        }
        // [MQTT-3.8.3-4] No Local on a shared subscription is a Protocol Error.
        if self.v5 && parsed.group().is_some() && options.no_local {
            return Checked::Closes(Ending::Violation("No Local on a shared subscription"));
        }
        let is_new = !session.subscriptions().contains_key(filter.as_str());
        if is_new && session.subscriptions().len() >= self.subscriptions_max {
            log::info!("Client {name} has reached its subscription limit; {filter:?} refused.");
            return Checked::Refused(self.refused(ReasonCode::QuotaExceeded));
        }
        // What long filters hold, the client's and everyone's, is bounded by bytes.
        let cost = crate::session::filter_cost(&filter);
        if is_new
            && cost > 0
            && (session.filter_bytes() + cost > SUBSCRIPTION_BYTES_MAX
                || self.filter_total.load(Relaxed) + cost > self.filter_total_max)
        {
            return Checked::OverBytes(self.refused(ReasonCode::QuotaExceeded));
        }
        let shared = parsed.group().is_some();
        Checked::Fits {
            filter,
            shared,
            options,
            is_new,
        }
    }
}
