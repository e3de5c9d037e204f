//! Every decision about one message for one session, in the order it is taken:
//!
//! 1. `capped`: never above the Maximum QoS a bridge's remote broker takes.
//! 2. `decide`, as the message reaches the session: dropped if the client's link is down
//!    and nothing waits for it, or if its read ACL says no; else sent now, queued (behind
//!    the window, for a connection that cannot take more yet, or for a client that is away),
//!    or dropped because the queue is full or nothing queues QoS 0 for an absent client.
//! 3. `worth_sending`, as it is written: dropped if it expired on the way, or (QoS 0) if the
//!    client is not keeping up with what it already has.
//! 4. `fits`, once it is encoded: dropped if larger than the client takes.
//!
//! No I/O and no clock: the shard gives the facts it knows (`Rules`: the ACL, the link, the
//! bounds; the time; `Backlog`: what waits on the connection) and carries out the
//! answer (`shard/deliver.rs`). Each drop has a `DropReason`, counted once by the shard.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

use super::{Changes, Limits, Offer, Session};
use crate::auth::acl::{Access, Acl};
use crate::codec::QoS;
use crate::types::{Message, Target};

/// Why a message did not reach a session's client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// QoS 0 for a client that is not connected (not queued, as Mosquitto by default), or
    /// anything for a clean bridge whose link is down.
    Offline,
    /// `max_queued_messages` or `max_queued_bytes` reached.
    QueueFull,
    /// The client's read ACL does not allow the topic.
    Acl,
    /// Its 5.0 Message Expiry Interval ran out before it could go [MQTT-3.3.2-5].
    Expired,
    /// QoS 0 to a client that is not reading what it already has.
    SlowClient,
    /// Larger than the client's Maximum Packet Size [MQTT-3.1.2-25], or than its protocol
    /// version can carry.
    TooLarge,
}

/// What the shard knows, for the decisions of `decide`.
#[derive(Clone, Copy)]
pub struct Rules<'a> {
    /// The ACL the client reads under: none without an `acl_file`, and none for a bridge's
    /// own session (it is the broker's, as in Mosquitto).
    pub acl: Option<&'a Acl>,
    /// A bridge with a clean local session whose link is down: nothing waits for it.
    pub link_down: bool,
    pub limits: Limits,
    /// A retained message owed to a new subscription, not one published now.
    pub owed: bool,
}

/// What `decide` says to do with a message.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Encode and write it now (QoS 1/2: then `Session::start` numbers it).
    Send,
    /// Kept in the session's queue. `waits_for_reader`: the client is connected, and the
    /// message goes once it has read what waits for it.
    Queued {
        waits_for_reader: bool,
    },
    Dropped(DropReason),
}

/// What waits to be written to the client, for the QoS 0 rule of `worth_sending`.
#[derive(Clone, Copy, Debug)]
pub struct Backlog {
    /// Bytes buffered for the connection and not yet taken by the kernel.
    pub bytes: usize,
    /// `client_write_max`: the most a client may have waiting.
    pub write_max: usize,
    /// Whether the broker as a whole holds more than `memory_limit` for its clients: then
    /// only `slow_max` may wait.
    pub over_memory_limit: bool,
    pub slow_max: usize,
}

/// `target` with its QoS no higher than `cap` [MQTT-3.2.2-11] (copied only when lowered).
pub fn capped(target: &Target, cap: Option<QoS>) -> Cow<'_, Target> {
    match cap {
        Some(max) if target.qos > max => Cow::Owned(Target {
            qos: max,
            ..target.clone()
        }),
        _ => Cow::Borrowed(target),
    }
}

impl Session {
    /// Whether `acl` lets this session's client read `topic`: only what it may read reaches
    /// it, whatever its filter matched (a subscription to `#` leaks nothing), retained
    /// messages included.
    pub fn may_read(&self, acl: Option<&Acl>, topic: &str) -> bool {
        acl.is_none_or(|acl| acl.check_topic(self.username(), &self.client_id, topic, Access::Read))
    }

    /// What to do with `message` for `target` (already `capped`): send now, queue
    /// (recorded in `changes`), or drop, and why.
    pub fn decide(
        &mut self,
        message: &Arc<Message>,
        target: &Target,
        rules: &Rules,
        changes: &mut Changes,
    ) -> Decision {
        if rules.link_down {
            return Decision::Dropped(DropReason::Offline);
        }
        if !self.may_read(rules.acl, &message.topic) {
            return Decision::Dropped(DropReason::Acl);
        }
        let offer = self.offer(message, target, rules.limits, changes);
        if !rules.owed && matches!(offer, Offer::Send | Offer::Queued) {
            self.outgoing.delivered_live(&message.topic);
        }
        match offer {
            Offer::Send => Decision::Send,
            Offer::Queued => Decision::Queued {
                waits_for_reader: self.conn.is_some() && !rules.limits.writable,
            },
            Offer::Dropped(reason) => Decision::Dropped(reason),
        }
    }

    /// Whether a message about to be written is still worth it: not expired on the way
    /// [MQTT-3.3.2-5]; and, at QoS 0, not for a client that is not keeping up: past its own
    /// write limit, or past a small backlog while the broker holds more than `memory_limit`
    /// for its clients. Clients that read keep getting everything. (`backlog` is asked
    /// for QoS 0 only.)
    pub fn worth_sending(
        &self,
        message: &Message,
        qos: QoS,
        now: Instant,
        backlog: impl FnOnce() -> Backlog,
    ) -> Result<(), DropReason> {
        if message.expires_at.is_some_and(|at| at <= now) {
            return Err(DropReason::Expired);
        }
        if qos == QoS::AtMostOnce {
            let b = backlog();
            if b.bytes > b.write_max || (b.over_memory_limit && b.bytes > b.slow_max) {
                return Err(DropReason::SlowClient);
            }
        }
        Ok(())
    }

    /// Whether a PUBLISH of `encoded_len` bytes may go to this client: never more than its
    /// Maximum Packet Size; one that is larger is discarded as if delivered [MQTT-3.1.2-25].
    pub fn fits(&self, encoded_len: usize) -> Result<(), DropReason> {
        match self.packet_size_max {
            Some(max) if encoded_len > max.get() as usize => Err(DropReason::TooLarge),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::ProtocolVersion;
    use crate::types::{ConnId, SessionId};
    use std::num::NonZeroU32;
    use std::time::Duration;

    fn session(online: bool) -> Session {
        let mut s = Session::new(
            SessionId::new(1),
            Arc::from("client"),
            ProtocolVersion::V5,
            false,
        );
        if online {
            s.conn = Some(ConnId::new(7, 1));
        }
        s
    }

    fn message(topic: &'static str) -> Arc<Message> {
        let mut m = super::super::outgoing::tests::message(1, QoS::AtLeastOnce);
        Arc::get_mut(&mut m).expect("not shared").topic = crate::codec::MqttStr::from_static(topic);
        m
    }

    fn target(qos: QoS) -> Target {
        super::super::outgoing::tests::target(qos)
    }

    fn rules(writable: bool, queued_max: usize) -> Rules<'static> {
        Rules {
            acl: None,
            link_down: false,
            owed: false,
            limits: Limits {
                window: 2,
                queued_max,
                queued_bytes_max: 0,
                writable,
            },
        }
    }

    fn backlog(bytes: usize, over_memory_limit: bool) -> Backlog {
        Backlog {
            bytes,
            write_max: 1000,
            over_memory_limit,
            slow_max: 100,
        }
    }

    #[test]
    fn qos1_goes_while_the_window_has_room_then_queues_then_drops_when_the_queue_is_full() {
        let mut s = session(true);
        let mut changes = Changes::default();
        let (m, t) = (message("a"), target(QoS::AtLeastOnce));
        let r = rules(true, 1);
        for _ in 0..2 {
            assert_eq!(s.decide(&m, &t, &r, &mut changes), Decision::Send);
            s.start(&m, &t, None, &mut changes);
        }
        let queued = Decision::Queued {
            waits_for_reader: false,
        };
        assert_eq!(s.decide(&m, &t, &r, &mut changes), queued);
        let full = Decision::Dropped(DropReason::QueueFull);
        assert_eq!(s.decide(&m, &t, &r, &mut changes), full);
        assert_eq!(s.outgoing().dropped(), 1);
    }

    #[test]
    fn a_connection_that_cannot_take_more_queues_qos1_until_its_client_reads() {
        let mut s = session(true);
        let mut changes = Changes::default();
        let (m, t) = (message("a"), target(QoS::AtLeastOnce));
        let queued = Decision::Queued {
            waits_for_reader: true,
        };
        assert_eq!(s.decide(&m, &t, &rules(false, 10), &mut changes), queued);
        // Once queued, the next waits behind it even when the connection could take it
        // [MQTT-4.6.0-6].
        let behind = Decision::Queued {
            waits_for_reader: false,
        };
        assert_eq!(s.decide(&m, &t, &rules(true, 10), &mut changes), behind);
    }

    #[test]
    fn an_absent_client_gets_qos1_queued_and_qos0_dropped() {
        let mut s = session(false);
        let mut changes = Changes::default();
        let m = message("a");
        let r = rules(true, 10);
        let queued = Decision::Queued {
            waits_for_reader: false,
        };
        let t1 = target(QoS::AtLeastOnce);
        assert_eq!(s.decide(&m, &t1, &r, &mut changes), queued);
        let offline = Decision::Dropped(DropReason::Offline);
        let t0 = target(QoS::AtMostOnce);
        assert_eq!(s.decide(&m, &t0, &r, &mut changes), offline);
    }

    #[test]
    fn a_clean_bridge_whose_link_is_down_takes_nothing() {
        let mut s = session(false);
        let mut changes = Changes::default();
        let r = Rules {
            link_down: true,
            ..rules(true, 10)
        };
        let decision = s.decide(&message("a"), &target(QoS::ExactlyOnce), &r, &mut changes);
        assert_eq!(decision, Decision::Dropped(DropReason::Offline));
        assert_eq!(s.outgoing().queue_len(), 0);
    }

    #[test]
    fn the_read_acl_decides_before_anything_is_kept() {
        let path = std::env::temp_dir().join(format!("midge-delivery-acl-{}", std::process::id()));
        std::fs::write(&path, "topic read open/#\n").expect("acl file");
        let acl = Acl::load(&path).expect("acl");
        std::fs::remove_file(&path).expect("acl file removed");
        let mut s = session(false);
        let mut changes = Changes::default();
        let r = Rules {
            acl: Some(&acl),
            ..rules(true, 10)
        };
        let t = target(QoS::AtLeastOnce);
        let denied = s.decide(&message("secret/x"), &t, &r, &mut changes);
        assert_eq!(denied, Decision::Dropped(DropReason::Acl));
        assert_eq!(s.outgoing().queue_len(), 0);
        let allowed = s.decide(&message("open/x"), &t, &r, &mut changes);
        assert!(matches!(allowed, Decision::Queued { .. }));
        assert!(
            s.may_read(None, "secret/x"),
            "no ACL: everything is readable"
        );
    }

    #[test]
    fn a_bridge_cap_lowers_the_qos_and_copies_only_then() {
        let t = target(QoS::ExactlyOnce);
        assert_eq!(capped(&t, Some(QoS::AtLeastOnce)).qos, QoS::AtLeastOnce);
        assert!(matches!(capped(&t, None), Cow::Borrowed(_)));
        let t0 = target(QoS::AtMostOnce);
        assert!(matches!(
            capped(&t0, Some(QoS::AtLeastOnce)),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn an_expired_message_is_not_sent_at_any_qos() {
        let s = session(true);
        let now = Instant::now();
        let mut m = message("a");
        Arc::get_mut(&mut m).expect("not shared").expires_at = Some(now);
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce] {
            let answer = s.worth_sending(&m, qos, now, || backlog(0, false));
            assert_eq!(answer, Err(DropReason::Expired));
        }
        let later = now - Duration::from_secs(1);
        assert_eq!(
            s.worth_sending(&m, QoS::AtLeastOnce, later, || unreachable!()),
            Ok(())
        );
    }

    #[test]
    fn qos0_is_dropped_for_a_client_not_keeping_up_and_the_bound_tightens_over_memory_limit() {
        let s = session(true);
        let (m, now) = (message("a"), Instant::now());
        let q0 = QoS::AtMostOnce;
        assert_eq!(
            s.worth_sending(&m, q0, now, || backlog(1000, false)),
            Ok(())
        );
        let slow = Err(DropReason::SlowClient);
        assert_eq!(s.worth_sending(&m, q0, now, || backlog(1001, false)), slow);
        assert_eq!(s.worth_sending(&m, q0, now, || backlog(100, true)), Ok(()));
        assert_eq!(s.worth_sending(&m, q0, now, || backlog(101, true)), slow);
        // QoS 1/2 is bounded by the window and the queue instead: the backlog is not asked.
        let answer = s.worth_sending(&m, QoS::AtLeastOnce, now, || unreachable!());
        assert_eq!(answer, Ok(()));
    }

    #[test]
    fn nothing_larger_than_the_clients_maximum_packet_size_goes() {
        let mut s = session(true);
        assert_eq!(s.fits(usize::MAX), Ok(()));
        s.packet_size_max = NonZeroU32::new(100);
        assert_eq!(s.fits(100), Ok(()));
        assert_eq!(s.fits(101), Err(DropReason::TooLarge));
    }

    /// Every acknowledgement through one call: PUBACK ends QoS 1, PUBREC releases QoS 2
    /// (or ends it with a refusing reason code, §4.3.3), PUBCOMP ends it; an id with no
    /// exchange is unknown, and a repeat finds nothing.
    #[test]
    fn acknowledgements_end_or_release_their_exchange() {
        use crate::codec::ReasonCode;
        use crate::session::{Ack, Acknowledged};
        let mut s = session(true);
        let mut changes = Changes::default();
        let rules = rules(true, 10);
        let mut start = |s: &mut Session, qos| {
            let (m, t) = (message("a"), target(qos));
            assert_eq!(s.decide(&m, &t, &rules, &mut changes), Decision::Send);
            s.start(&m, &t, None, &mut changes)
        };
        let q1 = start(&mut s, QoS::AtLeastOnce);
        let q2 = start(&mut s, QoS::ExactlyOnce);
        let mut changes = Changes::default();
        let ok = ReasonCode::Success;
        assert_eq!(
            s.acknowledged(q1, Ack::PubAck, ok, &mut changes),
            Acknowledged::Finished
        );
        assert_eq!(
            s.acknowledged(q1, Ack::PubAck, ok, &mut changes),
            Acknowledged::Unknown
        );
        assert_eq!(
            s.acknowledged(q2, Ack::PubRec, ok, &mut changes),
            Acknowledged::Released
        );
        assert_eq!(
            s.acknowledged(q2, Ack::PubComp, ok, &mut changes),
            Acknowledged::Finished
        );
        assert_eq!(
            s.acknowledged(999, Ack::PubRec, ok, &mut changes),
            Acknowledged::Unknown
        );
        // A 5.0 PUBREC that refuses the message ends its exchange without PUBREL.
        let refused = start(&mut s, QoS::ExactlyOnce);
        let quota = ReasonCode::QuotaExceeded;
        assert_eq!(
            s.acknowledged(refused, Ack::PubRec, quota, &mut changes),
            Acknowledged::Finished
        );
        assert_eq!(s.outgoing().in_flight().len(), 0);
    }
}
