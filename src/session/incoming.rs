//! QoS 2 received from the client, as a state machine with no I/O: midge delivers on
//! PUBLISH and remembers the packet id until PUBREL (method B of §4.3.3), so a PUBLISH sent
//! again with that id is not delivered twice.

use hashbrown::HashSet;

/// What a QoS 2 PUBLISH is, given the ids awaiting PUBREL.
#[derive(Debug, PartialEq, Eq)]
pub enum Qos2Publish {
    /// Not seen: deliver it, then `record` its id.
    New,
    /// Its id awaits PUBREL: answer PUBREC again, deliver nothing. [MQTT-4.3.3-10]
    Duplicate,
    /// More unacknowledged QoS 2 than the Receive Maximum the broker gave: DISCONNECT
    /// 0x93. [MQTT-3.3.4-7]
    OverReceiveMaximum,
}

#[derive(Debug, Default)]
pub struct IncomingQos2 {
    /// Out of line, made on the first QoS 2 PUBLISH: most sessions never receive one, and
    /// every idle session would pay for an empty set's space.
    awaiting_pubrel: Option<Box<HashSet<u16>>>,
}

impl IncomingQos2 {
    pub fn publish(&self, packet_id: u16, receive_maximum: usize) -> Qos2Publish {
        if self
            .awaiting_pubrel
            .as_ref()
            .is_some_and(|ids| ids.contains(&packet_id))
        {
            Qos2Publish::Duplicate
        } else if self.len() >= receive_maximum {
            Qos2Publish::OverReceiveMaximum
        } else {
            Qos2Publish::New
        }
    }

    /// PUBREC sent for `packet_id`: it awaits PUBREL.
    pub fn record(&mut self, packet_id: u16) {
        self.awaiting_pubrel
            .get_or_insert_with(Default::default)
            .insert(packet_id);
    }

    /// PUBREL: the exchange ends. False if the id was not awaiting one (PUBCOMP then says
    /// Packet Identifier not found).
    pub fn pubrel(&mut self, packet_id: u16) -> bool {
        self.awaiting_pubrel
            .as_mut()
            .is_some_and(|ids| ids.remove(&packet_id))
    }

    pub fn awaiting_pubrel(&self) -> impl Iterator<Item = u16> + '_ {
        self.awaiting_pubrel
            .iter()
            .flat_map(|ids| ids.iter().copied())
    }

    pub fn len(&self) -> usize {
        self.awaiting_pubrel.as_ref().map_or(0, |ids| ids.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resent_publish_is_a_duplicate_until_pubrel() {
        let mut incoming = IncomingQos2::default();
        assert_eq!(incoming.publish(7, 2), Qos2Publish::New);
        incoming.record(7);
        assert_eq!(incoming.publish(7, 2), Qos2Publish::Duplicate);
        assert_eq!(incoming.publish(8, 2), Qos2Publish::New);
        incoming.record(8);
        assert_eq!(incoming.publish(9, 2), Qos2Publish::OverReceiveMaximum);
        assert!(incoming.pubrel(7));
        assert!(!incoming.pubrel(7));
        assert_eq!(incoming.publish(7, 2), Qos2Publish::New);
    }
}
