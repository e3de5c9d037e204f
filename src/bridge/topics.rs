//! A bridge's topic remapping, as Mosquitto applies it: a message leaving on an `out` or
//! `both` topic whose local filter (local prefix + pattern) it matches loses the local prefix
//! and gains the remote one; a message arriving on an `in` or `both` topic whose remote
//! filter it matches loses the remote prefix and gains the local one. The first topic line
//! that matches decides; a topic no line with prefixes matches is left as it is.

use crate::config::bridge::{BridgeTopic, Direction};

/// The topic `topic` (a local topic) has on the remote broker.
pub fn remote_topic(topics: &[BridgeTopic], topic: &str) -> Option<String> {
    remap(topics, topic, Way::Out)
}

/// The topic `topic` (received from the remote broker) has locally.
pub fn local_topic(topics: &[BridgeTopic], topic: &str) -> Option<String> {
    remap(topics, topic, Way::In)
}

#[derive(Clone, Copy)]
enum Way {
    Out,
    In,
}

/// `None` when the topic stays as it is.
fn remap(topics: &[BridgeTopic], topic: &str, way: Way) -> Option<String> {
    for t in topics {
        let carries = match way {
            Way::Out => t.direction != Direction::In,
            Way::In => t.direction != Direction::Out,
        };
        if !carries || (t.local_prefix.is_empty() && t.remote_prefix.is_empty()) {
            continue;
        }
        let (filter, from, to) = match way {
            Way::Out => (t.local_filter(), &t.local_prefix, &t.remote_prefix),
            Way::In => (t.remote_filter(), &t.remote_prefix, &t.local_prefix),
        };
        if !crate::topic::matches(&filter, topic) {
            continue;
        }
        let rest = topic.strip_prefix(from.as_str()).unwrap_or(topic);
        return Some(format!("{to}{rest}"));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::QoS;

    fn topic(pattern: &str, direction: Direction, local: &str, remote: &str) -> BridgeTopic {
        BridgeTopic {
            pattern: pattern.into(),
            direction,
            qos: QoS::AtMostOnce,
            local_prefix: local.into(),
            remote_prefix: remote.into(),
        }
    }

    /// The cases of Mosquitto's own remapping test (06-bridge-br2b-remapping), outwards.
    #[test]
    fn outgoing_topics_are_remapped_as_mosquitto_does() {
        let topics = [
            topic("#", Direction::Out, "local/topic/", "remote/topic/"),
            topic(
                "prefix/#",
                Direction::Out,
                "local2/topic/",
                "remote2/topic/",
            ),
            topic("+/value", Direction::Out, "local3/topic/", "remote3/topic/"),
            topic("ic/+", Direction::Out, "local4/top", "remote4/tip"),
        ];
        let cases = [
            ("local/topic/something", Some("remote/topic/something")),
            (
                "local/topic/some/t/h/i/n/g",
                Some("remote/topic/some/t/h/i/n/g"),
            ),
            ("local2/topic/something", None),
            (
                "local2/topic/prefix/something",
                Some("remote2/topic/prefix/something"),
            ),
            (
                "local3/topic/something/value",
                Some("remote3/topic/something/value"),
            ),
            ("local4/topic/something", Some("remote4/tipic/something")),
            ("local5/topic/something", None),
        ];
        for (local, remote) in cases {
            assert_eq!(remote_topic(&topics, local).as_deref(), remote, "{local}");
        }
    }

    #[test]
    fn incoming_topics_lose_the_remote_prefix_and_gain_the_local_one() {
        let topics = [
            topic("#", Direction::In, "", "remote/"),
            topic("a/#", Direction::Both, "site1/", "central/"),
            topic("b/#", Direction::Out, "x/", "y/"),
        ];
        assert_eq!(local_topic(&topics, "remote/t").as_deref(), Some("t"));
        assert_eq!(
            local_topic(&topics, "central/a/1").as_deref(),
            Some("site1/a/1")
        );
        // An `out` line does not remap what comes in, nor an `in` line what goes out.
        assert_eq!(local_topic(&topics, "y/b/1"), None);
        assert_eq!(remote_topic(&topics, "t"), None);
        assert_eq!(
            remote_topic(&topics, "site1/a/1").as_deref(),
            Some("central/a/1")
        );
    }

    #[test]
    fn an_empty_pattern_maps_one_topic_to_another() {
        let topics = [topic("", Direction::Both, "here/topic", "there/topic")];
        assert_eq!(
            remote_topic(&topics, "here/topic").as_deref(),
            Some("there/topic")
        );
        assert_eq!(
            local_topic(&topics, "there/topic").as_deref(),
            Some("here/topic")
        );
        assert_eq!(remote_topic(&topics, "here/topic/x"), None);
    }
}
