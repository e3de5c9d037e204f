//! The broker's QoS 1 and 2 exchanges with a subscriber, after the first send
//! (`deliver.rs`): its acknowledgements, the window they free for queued messages, and what
//! is sent again when its session resumes.

use super::encode::{build_publish, mount_strip, Variants};
use super::io::{Backend, ConnId};
use super::Shard;
use crate::codec::{Packet, ProtocolVersion, PubResponse, ReasonCode};
use crate::session::{Ack, Acknowledged, DropReason};
use crate::topic::SessionId;

impl<B: Backend> Shard<B> {
    /// Whether an acknowledgement fits what is in flight under `packet_id`: `Some(true)` if
    /// so, `None` if nothing is (a late or repeated acknowledgement: ignored), `Some(false)`
    /// if it is the wrong one for that message (PUBACK for QoS 2, PUBCOMP before PUBREC,
    /// PUBREC for QoS 1): a protocol violation, as Mosquitto treats it.
    fn ack_fits(&self, session_id: SessionId, packet_id: u16, ack: Ack) -> Option<bool> {
        let session = self.sessions.get(&session_id)?;
        session.outgoing().fits(packet_id, ack)
    }

    /// Checks an acknowledgement of `packet_id` (see `ack_fits`); false if the connection
    /// is closed for it or there is nothing to acknowledge.
    fn check_ack(&mut self, conn: ConnId, session_id: SessionId, packet_id: u16, ack: Ack) -> bool {
        let ack_name = ack.name();
        match self.ack_fits(session_id, packet_id, ack) {
            Some(true) => true,
            Some(false) => {
                let what = format!("{ack_name} does not fit message {packet_id}");
                self.protocol_violation(conn, &what);
                false
            }
            None => {
                let name = self.conn_name(conn);
                log::warn!(
                    "Warning: Received {ack_name} from {name} for an unknown packet identifier {packet_id}."
                );
                false
            }
        }
    }

    pub(super) fn on_puback(&mut self, conn: ConnId, session_id: SessionId, packet_id: u16) {
        log::debug!(
            "Received PUBACK from {} (Mid: {packet_id})",
            self.conn_name(conn)
        );
        if self.check_ack(conn, session_id, packet_id, Ack::PubAck) {
            self.acknowledged(session_id, packet_id, Ack::PubAck, ReasonCode::Success);
        }
    }

    pub(super) fn on_pubrec(
        &mut self,
        conn: ConnId,
        session_id: SessionId,
        packet_id: u16,
        reason: ReasonCode,
    ) {
        let name = self.conn_name(conn);
        log::debug!("Received PUBREC from {name} (Mid: {packet_id})");
        let fits = self.ack_fits(session_id, packet_id, Ack::PubRec);
        if fits == Some(false) {
            self.protocol_violation(conn, &format!("PUBREC does not fit message {packet_id}"));
            return;
        }
        // 5.0: PUBREL answers a PUBREC below 0x80 only [MQTT-4.3.3-4]; one of 0x80 and above
        // ends the exchange, its packet identifier free again (§4.3.3).
        match self.acknowledged(session_id, packet_id, Ack::PubRec, reason) {
            Acknowledged::Finished => return,
            Acknowledged::Released => {}
            // Answered all the same, as Mosquitto does (a repeat after a reconnect).
            Acknowledged::Unknown => log::warn!(
                "Warning: Received PUBREC from {name} for an unknown packet identifier {packet_id}."
            ),
        }
        log::debug!("Sending PUBREL to {name} (Mid: {packet_id})");
        self.send_packet(conn, &Packet::PubRel(PubResponse::new(packet_id)));
    }

    pub(super) fn on_pubcomp(&mut self, conn: ConnId, session_id: SessionId, packet_id: u16) {
        log::debug!(
            "Received PUBCOMP from {} (Mid: {packet_id})",
            self.conn_name(conn)
        );
        if self.check_ack(conn, session_id, packet_id, Ack::PubComp) {
            self.acknowledged(session_id, packet_id, Ack::PubComp, ReasonCode::Success);
        }
    }

    /// The session takes the acknowledgement (`Session::acknowledged`); an exchange that
    /// ended lets the next queued message in.
    fn acknowledged(
        &mut self,
        session_id: SessionId,
        packet_id: u16,
        ack: Ack,
        reason: ReasonCode,
    ) -> Acknowledged {
        let Some((session, changes)) = self.sessions.recording(&session_id) else {
            return Acknowledged::Unknown;
        };
        let done = session.acknowledged(packet_id, ack, reason, changes);
        if done == Acknowledged::Finished {
            self.fill_window(session_id);
        }
        done
    }

    /// Moves queued messages into the inflight window while there is room.
    pub(super) fn fill_window(&mut self, session_id: SessionId) {
        let inflight_max = self.config.inflight_max;
        loop {
            let Some(session) = self.sessions.get_mut(&session_id) else {
                return;
            };
            if session.conn.is_none() {
                return;
            }
            let Some(conn) = session.conn else { return };
            let next_size = session
                .outgoing()
                .queued()
                .next()
                .map(|q| q.message.payload.len());
            if next_size.is_some_and(|size| !self.can_write(conn, size)) {
                // Sent once its client has read what waits for it (`holding.rs`).
                self.holding.waiting.insert(session_id);
                return;
            }
            let Some((session, changes)) = self.sessions.recording(&session_id) else {
                return;
            };
            let window = session.window(inflight_max);
            let Some(queued) = session.next_queued(window, changes) else {
                return;
            };
            // acl_file: checked again as the message leaves the queue, so that an ACL
            // reloaded meanwhile decides what a returning client still gets (Mosquitto).
            if !self.may_read(session_id, &queued.message.topic) {
                self.stats().dropped(DropReason::Acl, 1);
                continue;
            }
            self.send_to_session(
                session_id,
                &queued.message,
                &queued.target,
                &mut Variants::default(),
                Some(queued.packet_id),
            );
        }
    }

    /// After a persistent session resumes: resend unacknowledged messages with DUP, in
    /// order [MQTT-4.4.0-1], then fill the window from the queue.
    pub(super) fn resume_outgoing(&mut self, session_id: SessionId) {
        let Some(session) = self.sessions.get(&session_id) else {
            return;
        };
        let Some(conn) = session.conn else { return };
        let v5 = session.version == ProtocolVersion::V5;
        let mount = self
            .config
            .listener(session.listener())
            .mount_point
            .as_deref();
        let in_flight = session.outgoing().in_flight();
        let now = self.clock.now;
        let link = self.link_of_session(session_id);
        let mut packets = Vec::with_capacity(in_flight.len());
        for f in in_flight {
            if f.released {
                // [MQTT-4.4.0-1] (3.1.1): after PUBREC, the PUBREL is what gets resent.
                packets.push((f.packet_id, Packet::PubRel(PubResponse::new(f.packet_id))));
            } else {
                let strip = mount_strip(mount, &f.message.topic).unwrap_or(0);
                let mut publish =
                    build_publish(&f.message, f.qos, f.retain, &f.identifiers, v5, strip, now);
                publish.dup = true;
                publish.packet_id = f.packet_id;
                if let Some(i) = link {
                    super::bridges::outgoing(&mut self.links[i], now, &mut publish);
                }
                packets.push((f.packet_id, Packet::Publish(publish)));
            }
        }
        for (packet_id, packet) in &packets {
            if !self.send_packet(conn, packet) {
                // It no longer encodes for this client (it came back with another protocol
                // version): dropped and counted rather than holding its slot for ever.
                self.stats().dropped(DropReason::TooLarge, 1);
                if let Some((session, changes)) = self.sessions.recording(&session_id) {
                    session.abandon(*packet_id, changes);
                }
            }
        }
        self.fill_window(session_id);
    }
}
