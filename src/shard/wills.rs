//! A client's will on its shard: published as its client's last message, where its client
//! may write [MQTT-3.1.2-8], at once or when its delay has run out, unless its client came
//! back first [MQTT-3.1.3-9]. When a will is due is the session's to say
//! (`session/lifecycle.rs`: its connection ended, it was taken over, it expired); the shard
//! publishes it here, and keeps delayed wills on a timer.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::io::Backend;
use super::Shard;
use crate::codec::Will;
use crate::router::Message;
use crate::topic::SessionId;

impl<B: Backend> Shard<B> {
    /// The will of session `id` is due at `due`, unless its client comes back first.
    pub(super) fn schedule_will(&mut self, id: SessionId, due: Instant) {
        self.sessions.schedule_will(id, due);
    }

    /// Publishes wills whose delay has run out (and were not cancelled by a resume).
    pub(super) fn publish_due_wills(&mut self, now: Instant) {
        while let Some((id, will)) = self.sessions.next_due_will(now) {
            self.publish_will(id, will);
            self.journal_will_gone(id);
            self.record_changed(id);
        }
    }

    /// Publishes a will as if its client had sent it. [MQTT-3.1.2-8]
    pub(super) fn publish_will(&mut self, origin: SessionId, will: Will) {
        // acl_file: a will is published only where its client may write.
        if !self.write_allowed(origin, &will.topic) {
            self.stats().dropped_acl.fetch_add(1, Ordering::Relaxed);
            log::debug!("Will to '{}' not published: not authorised.", will.topic);
            return;
        }
        let mut properties = will.properties;
        properties.retain_allowed(crate::codec::PropertyContext::Publish);
        let expires_at = properties
            .message_expiry_interval
            .map(|s| self.clock.now + Duration::from_secs(s.into()));
        let message = Arc::new(Message {
            expires_at,
            order: self.publish_order(),
            stream: Default::default(),
            topic: will.topic,
            payload: will.payload,
            qos: will.qos,
            // retain_available false: a 3.x will (which could not be refused for it) goes
            // out unretained, as Mosquitto's.
            retain: will.retain && self.config.retain_available,
            properties,
            origin: Some(origin),
        });
        // The client's last message: a later connection of its client, on any shard,
        // numbers past it (published after the socket closed, it is not under that mark).
        self.mark_published();
        // A will the retained messages have no room for goes out, unretained (its client is
        // gone: there is no one to refuse).
        if message.retain && !self.keep_retained(&message, None) {
            let unretained = match Arc::try_unwrap(message) {
                Ok(mut message) => {
                    message.retain = false;
                    Arc::new(message)
                }
                Err(shared) => shared,
            };
            self.route(&unretained, None);
            return;
        }
        self.route(&message, None);
    }
}
