//! A session's life around its connections: what happens to its will when a connection
//! ends, when an offline session expires, and what a resume cancels. No I/O and no clock
//! of its own: the time is passed in, and the shard acts on the answers (publish a will,
//! set a timer, end the session).

use std::time::{Duration, Instant};

use super::Session;
use crate::codec::{ProtocolVersion, Will};

/// What to do with a session's will when its connection ends.
#[derive(Debug)]
pub enum WillAfterClose {
    /// No will, or the connection ended in a way that does not send it (DISCONNECT).
    None,
    /// Publish it now.
    Now(Will),
    /// It waits out its Will Delay Interval, until then (kept in the session; cancelled if
    /// the session resumes in time).
    At(Instant),
}

/// How long an offline session lasts: its 5.0 Session Expiry Interval [MQTT-3.1.2-23], or
/// `persistent_client_expiration` for one that would never expire (3.x clean session 0,
/// 5.0 0xFFFFFFFF); `None`: for ever. The one rule, for live sessions and recovered ones.
pub fn expires_after(
    version: ProtocolVersion,
    expiry_interval_s: u32,
    persistent_client_expiration: Option<Duration>,
) -> Option<Duration> {
    let never = version != ProtocolVersion::V5 || expiry_interval_s == u32::MAX;
    if never {
        persistent_client_expiration
    } else {
        Some(Duration::from_secs(expiry_interval_s.into()))
    }
}

impl Session {
    /// How long this session lasts once offline (`expires_after`).
    pub fn expires_after(
        &self,
        persistent_client_expiration: Option<Duration>,
    ) -> Option<Duration> {
        expires_after(
            self.version,
            self.expiry_interval_s,
            persistent_client_expiration,
        )
    }

    /// The session's connection ended at `now`; `sends_will`: the way it ended publishes the
    /// will (not a DISCONNECT [MQTT-3.14.4-3]).
    pub fn connection_ended(&mut self, now: Instant, sends_will: bool) -> WillAfterClose {
        self.conn = None;
        let Some(will) = self.will.take() else {
            return WillAfterClose::None;
        };
        if !sends_will {
            return WillAfterClose::None;
        }
        // [MQTT-3.1.3-9] after the Will Delay Interval, or when the session ends if that
        // comes first (a session that ends with the connection: now).
        let delay = will.properties.will_delay_interval.unwrap_or(0);
        if delay == 0 || self.clean {
            return WillAfterClose::Now(*will);
        }
        let due = now + Duration::from_secs(delay.into());
        self.delayed_will = Some(Box::new((due, *will)));
        WillAfterClose::At(due)
    }

    /// A newer connection takes the session over [MQTT-3.1.4-3]; `ends`: it does not carry
    /// on (clean on either side). The old connection's will goes out only then, as in
    /// Mosquitto: a session that carries on is resumed at once, which cancels a will
    /// [MQTT-3.1.3-9]. Returns the will to publish now.
    pub fn taken_over(&mut self, ends: bool) -> Option<Will> {
        self.conn = None;
        let will = self.will.take();
        if ends {
            will.map(|w| *w)
        } else {
            None
        }
    }

    /// Starts the offline session's expiry clock at `now`: 5.0's Session Expiry Interval
    /// [MQTT-3.1.2-23], or `persistent_client_expiration` for a session that would never
    /// expire (3.x clean session 0, 5.0 0xFFFFFFFF). Returns when it ends, if ever.
    pub fn start_expiry(
        &mut self,
        now: Instant,
        persistent_client_expiration: Option<Duration>,
    ) -> Option<Instant> {
        let after = self.expires_after(persistent_client_expiration)?;
        self.expires_at = Some(now + after);
        self.expires_at
    }

    /// The will due at `at`, if it still waits (a resume cancels it [MQTT-3.1.3-9]).
    pub fn take_due_will(&mut self, at: Instant) -> Option<Will> {
        if self.delayed_will.as_ref().is_some_and(|d| d.0 == at) {
            self.delayed_will.take().map(|d| d.1)
        } else {
            None
        }
    }

    /// Whether the session ends at `at`: still offline, and not rescheduled since.
    pub fn expires_at(&self, at: Instant) -> bool {
        self.conn.is_none() && self.expires_at == Some(at)
    }

    /// The session ends before its will's delay ran out: the will, to go now.
    pub fn take_waiting_will(&mut self) -> Option<Will> {
        self.delayed_will.take().map(|d| d.1)
    }

    /// A connection resumes the session: a will still waiting is not sent [MQTT-3.1.3-9],
    /// and the session no longer expires.
    pub fn resumed(&mut self) {
        self.delayed_will = None;
        self.expires_at = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{MqttStr, Properties, QoS};
    use crate::types::SessionId;

    fn session(version: ProtocolVersion, clean: bool, delay: Option<u32>) -> Session {
        let mut s = Session::new(SessionId::new(1), "c".into(), version, clean);
        let mut properties = Properties::default();
        properties.will_delay_interval = delay;
        s.will = Some(Box::new(Will {
            qos: QoS::AtMostOnce,
            retain: false,
            properties,
            topic: MqttStr::from_static("w"),
            payload: bytes::Bytes::new(),
        }));
        s
    }

    #[test]
    fn a_delayed_will_waits_and_a_resume_cancels_it() {
        let now = Instant::now();
        let mut s = session(ProtocolVersion::V5, false, Some(10));
        let WillAfterClose::At(due) = s.connection_ended(now, true) else {
            panic!("the will waits")
        };
        assert_eq!(due, now + Duration::from_secs(10));
        assert!(s.take_due_will(due + Duration::from_secs(1)).is_none());
        s.resumed();
        assert!(
            s.take_due_will(due).is_none(),
            "[MQTT-3.1.3-9] cancelled by the resume"
        );
    }

    #[test]
    fn a_will_goes_at_once_without_delay_or_when_the_session_ends_too() {
        let now = Instant::now();
        let mut s = session(ProtocolVersion::V5, false, None);
        assert!(matches!(
            s.connection_ended(now, true),
            WillAfterClose::Now(_)
        ));
        let mut clean = session(ProtocolVersion::V5, true, Some(10));
        assert!(matches!(
            clean.connection_ended(now, true),
            WillAfterClose::Now(_)
        ));
        let mut disconnected = session(ProtocolVersion::V311, false, None);
        assert!(matches!(
            disconnected.connection_ended(now, false),
            WillAfterClose::None
        ));
        assert!(
            disconnected.will.is_none(),
            "[MQTT-3.14.4-3] the will is discarded"
        );
    }

    #[test]
    fn expiry_follows_the_interval_or_persistent_client_expiration() {
        let now = Instant::now();
        let mut s = session(ProtocolVersion::V5, false, None);
        s.expiry_interval_s = 30;
        let at = s.start_expiry(now, None).unwrap();
        assert_eq!(at, now + Duration::from_secs(30));
        assert!(s.expires_at(at));
        let mut v3 = session(ProtocolVersion::V311, false, None);
        assert_eq!(v3.start_expiry(now, None), None, "never, by default");
        let limit = Duration::from_secs(3600);
        assert_eq!(v3.start_expiry(now, Some(limit)), Some(now + limit));
    }

    #[test]
    fn a_takeover_sends_the_will_only_when_the_session_ends() {
        let mut carries_on = session(ProtocolVersion::V5, false, None);
        carries_on.conn = Some(crate::types::ConnId::new(1, 1));
        assert!(carries_on.taken_over(false).is_none());
        assert!(carries_on.will.is_none() && carries_on.conn.is_none());
        let mut ends = session(ProtocolVersion::V311, true, None);
        assert!(ends.taken_over(true).is_some());
    }
}
