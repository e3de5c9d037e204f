//! The bridges a shard runs (`bridge/`): each an outgoing connection made through the
//! backend (`Backend::connect`) and a local session (its local client id), on this shard.
//! Here: starting them, their local sessions, and the topic remapping on the way out and in;
//! `connecting.rs`: when to connect and where; `link.rs`: CONNACK, the remote
//! subscriptions, keepalive answers, notifications, and what a lost connection does. Once
//! CONNACK has come, PUBLISH and its acknowledgements take the shard's usual paths both
//! ways (the flows are symmetric in MQTT), with the topics remapped (`bridge/topics.rs`).

mod connecting;
mod link;

use compact_str::CompactString;
use std::sync::atomic::Ordering;

use super::io::Backend;
use super::trie_ops::TrieOp;
use super::{Claim, Shard};
use crate::bridge::{Link, State};
use crate::codec::{Publish, QoS, SubscriptionOptions};
use crate::config::bridge::Direction;
use crate::topic::{SessionId, Subscription};

impl<B: Backend> Shard<B> {
    /// Starts the bridges `indices` (of `Config::bridges`) on this shard, once its restored
    /// sessions are in: each gets its local session, and connects as its start type says
    /// (`automatic` and `once` at once).
    pub fn start_bridges(&mut self, indices: &[usize]) {
        for &index in indices {
            let Some(bridge) = self.config.bridges.get(index).cloned() else {
                continue;
            };
            let tls = match crate::bridge::tls_config(&bridge) {
                Ok(tls) => tls,
                Err(e) => {
                    log::error!("Error: bridge {}: {e}; it is not started.", bridge.name);
                    continue;
                }
            };
            let mut link = Link::new(index, bridge, self.clock.now, tls);
            link.session = Some(self.bridge_session(&link));
            link.state = State::Down {
                retry_at: link.first_attempt(self.clock.now),
            };
            self.links.push(link);
            // As Mosquitto: "0" (retained) on the notification topic until it is up.
            self.notify_locally(self.links.len() - 1, false);
        }
        // The subscriptions are live, and the first attempts start, before any client is
        // served (as Mosquitto's).
        if !self.links.is_empty() {
            self.apply_trie_ops();
            self.check_bridges();
        }
    }

    /// Whether a bridge with a clean local session drops what comes for it now: while it
    /// has no connection at all (Mosquitto queues for it only once a connection is being
    /// made).
    pub(super) fn bridge_drops(&self, i: usize) -> bool {
        let link = &self.links[i];
        matches!(link.state, State::Down { .. } | State::Resolving { .. })
            && (link.session)
                .and_then(|id| self.sessions.get(&id))
                .is_some_and(|s| s.clean)
    }

    /// The bridge's local session: the one restored from disk (its queue kept, when the
    /// local session is not clean), or a new one; subscribed to exactly the bridge's
    /// `out` and `both` topics, with No Local (what comes in over the bridge does not go
    /// back out) and Retain As Published, as Mosquitto subscribes its bridges.
    fn bridge_session(&mut self, link: &Link) -> SessionId {
        let config = &link.config;
        let local_clean = config.local_clean_session.unwrap_or(config.clean_session);
        let client_id = link.local_client_id.clone();
        let mut session = match self.sessions.id_of(&client_id) {
            Some(old) if local_clean => {
                if let Some(old) = self.sessions.remove(&old) {
                    self.end_session(old, false);
                }
                None
            }
            Some(old) => self.sessions.remove(&old),
            None => None,
        }
        .unwrap_or_else(|| {
            let id = self.shared.new_session_id();
            Box::new(crate::session::Session::begin(
                id,
                client_id.clone(),
                link.version,
                local_clean,
                self.sessions.changes(),
            ))
        });
        let expiry = if local_clean { 0 } else { u32::MAX };
        session.set_parameters(link.version, expiry, local_clean, self.sessions.changes());
        session.set_credentials(config.local_username.as_deref(), None);
        session.set_listener(0);
        let id = session.id;
        let wanted: Vec<(String, QoS)> = (config.topics.iter())
            .filter(|t| t.direction != Direction::In)
            .map(|t| (t.local_filter(), t.qos))
            .collect();
        let stale: Vec<CompactString> = (session.subscriptions().keys())
            .filter(|f| !wanted.iter().any(|(w, _)| w == f.as_str()))
            .cloned()
            .collect();
        for filter in stale {
            session.unsubscribe(&filter, self.sessions.changes());
            self.subs.trie.ops.push(TrieOp::Unsubscribe {
                filter,
                session: id,
            });
        }
        for (filter, qos) in wanted {
            let sub = Subscription {
                shard: self.id as u16,
                options: SubscriptionOptions {
                    qos,
                    no_local: true,
                    retain_as_published: true,
                    ..SubscriptionOptions::default()
                },
                identifier: None,
            };
            log::debug!("Bridge {client_id} doing local SUBSCRIBE on topic {filter}");
            session.subscribe(
                &filter,
                sub,
                self.sessions.changes(),
                &self.shared.filter_bytes,
            );
            self.subs.trie.ops.push(TrieOp::Subscribe {
                filter: CompactString::from(filter),
                session: id,
                sub,
            });
        }
        let claim = self.shared.next_claim.fetch_add(1, Ordering::Relaxed);
        (self.shared.registry.lock().expect("registry lock"))
            .insert(client_id.clone(), Claim::new(self.id, claim));
        self.sessions.insert(session);
        self.journal_session(id, claim);
        id
    }

    /// The bridge whose local session `session` is (there are few: a scan).
    pub(super) fn link_of_session(&self, session: SessionId) -> Option<usize> {
        if self.links.is_empty() {
            return None;
        }
        self.links.iter().position(|l| l.session == Some(session))
    }

    /// The local topic of a message a bridge received (remapped by its `in` topics).
    pub(super) fn bridge_incoming_topic(
        &self,
        i: usize,
        topic: &crate::codec::MqttStr,
    ) -> Option<crate::codec::MqttStr> {
        let remapped = crate::bridge::topics::local_topic(&self.links[i].config.topics, topic)?;
        crate::codec::MqttStr::new(&remapped).ok()
    }
}

/// What a bridge sends the remote for a local message: the topic remapped, RETAIN
/// cleared when the remote cannot take it (`bridge_outgoing_retain false`, or its CONNACK
/// said so). A free function: the caller holds the session and connection it goes to.
pub(super) fn outgoing(link: &mut Link, now: std::time::Instant, publish: &mut Publish) {
    link.last_message = now;
    if let Some(topic) = crate::bridge::topics::remote_topic(&link.config.topics, &publish.topic) {
        if let Ok(topic) = crate::codec::MqttStr::new(&topic) {
            publish.topic = topic;
        }
    }
    publish.retain &= link.remote_retain;
}

pub(super) fn show_address((host, port): &(String, u16)) -> String {
    format!("{host}:{port}")
}
