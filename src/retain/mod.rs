//! Retained messages: one per topic name, in a trie by level so that a wildcard subscription
//! finds its matches without scanning every topic.

use hashbrown::HashMap;
use std::sync::Arc;

use crate::types::Message;

#[derive(Default)]
struct RetainNode {
    children: HashMap<Box<str>, RetainNode>,
    message: Option<Arc<Message>>,
    /// Who published it, kept for `check_retain_source` only.
    source: Option<Arc<Source>>,
}

/// A retained message and who published it.
pub type Retained = (Arc<Message>, Option<Arc<Source>>);

/// The client that published a retained message: `check_retain_source` sends it to a new
/// subscriber only while this client may still publish to its topic (as Mosquitto).
#[derive(Debug)]
pub struct Source {
    pub client_id: Arc<str>,
    pub username: Option<String>,
    pub listener: usize,
}

#[derive(Default)]
pub struct RetainStore {
    root: RetainNode,
    count: usize,
    /// Changes made so far (and restored ones): orders changes journaled by different
    /// shards (`persist`).
    changes: u64,
}

impl RetainStore {
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Stores `message` as the retained one for its topic, or with an empty payload removes
    /// it. [MQTT-3.3.1-5] [MQTT-3.3.1-10] [MQTT-3.3.1-11]
    pub fn set(&mut self, message: Arc<Message>) -> u64 {
        self.set_from(message, None)
    }

    /// As `set`, remembering who published it (for `check_retain_source`). Returns the
    /// change's number (increasing).
    pub fn set_from(&mut self, message: Arc<Message>, source: Option<Arc<Source>>) -> u64 {
        self.changes += 1;
        let topic = message.topic.to_string();
        if message.payload.is_empty() {
            if Self::remove(&mut self.root, &topic) {
                self.count -= 1;
            }
            return self.changes;
        }
        let mut node = &mut self.root;
        for level in topic.split('/') {
            node = node.children.entry(level.into()).or_default();
        }
        node.source = source;
        if node.message.replace(message).is_none() {
            self.count += 1;
        }
        self.changes
    }

    /// The number of the last change.
    pub fn last_change(&self) -> u64 {
        self.changes
    }

    /// Messages restored at start (`persist`); later changes are numbered after `changes`.
    pub fn restore(&mut self, retained: Vec<Retained>, changes: u64) {
        for (message, source) in retained {
            self.set_from(message, source);
        }
        self.changes = self.changes.max(changes);
    }

    /// Every retained message, with who published it, but the broker's own `$SYS` ones
    /// (what persistence keeps).
    pub fn all_but_sys(&self, out: &mut Vec<Retained>) {
        fn walk(node: &RetainNode, out: &mut Vec<Retained>) {
            if let Some(message) = &node.message {
                out.push((message.clone(), node.source.clone()));
            }
            for child in node.children.values() {
                walk(child, out);
            }
        }
        for (name, child) in &self.root.children {
            if &**name != "$SYS" {
                walk(child, out);
            }
        }
    }

    /// Removes the message at `topic` and prunes empty nodes; true if there was one.
    fn remove(node: &mut RetainNode, topic: &str) -> bool {
        let (level, rest) = match topic.split_once('/') {
            Some((level, rest)) => (level, Some(rest)),
            None => (topic, None),
        };
        let Some(child) = node.children.get_mut(level) else {
            return false;
        };
        let removed = match rest {
            None => {
                child.source = None;
                child.message.take().is_some()
            }
            Some(rest) => Self::remove(child, rest),
        };
        if child.message.is_none() && child.children.is_empty() {
            node.children.remove(level);
        }
        removed
    }

    /// Every retained message whose topic matches `filter` (valid, not shared).
    pub fn matching(&self, filter: &str, out: &mut Vec<Arc<Message>>) {
        self.matching_from(filter, out, &|_, _| true);
    }

    /// As `matching`, keeping only messages whose source `keep` accepts (those stored
    /// without one are kept).
    pub fn matching_from(
        &self,
        filter: &str,
        out: &mut Vec<Arc<Message>>,
        keep: &dyn Fn(&Source, &Message) -> bool,
    ) {
        let levels: Vec<&str> = filter.split('/').collect();
        let mut found = Found { out, keep };
        Self::collect(&self.root, &levels, true, &mut found);
    }

    fn collect(node: &RetainNode, levels: &[&str], at_root: bool, out: &mut Found<'_>) {
        let Some((&level, rest)) = levels.split_first() else {
            out.add(node);
            return;
        };
        // [MQTT-4.7.2-1] wildcards at the first level do not match '$' topics.
        let visible = |name: &str| !(at_root && name.starts_with('$'));
        match level {
            "#" => {
                // '#' matches the parent level too.
                if !at_root {
                    out.add(node);
                }
                for (name, child) in &node.children {
                    if visible(name) {
                        Self::collect_all(child, out);
                    }
                }
            }
            "+" => {
                for (name, child) in &node.children {
                    if visible(name) {
                        Self::collect(child, rest, false, out);
                    }
                }
            }
            _ => {
                if let Some(child) = node.children.get(level) {
                    Self::collect(child, rest, false, out);
                }
            }
        }
    }

    fn collect_all(node: &RetainNode, out: &mut Found<'_>) {
        out.add(node);
        for child in node.children.values() {
            Self::collect_all(child, out);
        }
    }
}

/// Where `collect` puts what it finds.
struct Found<'a> {
    out: &'a mut Vec<Arc<Message>>,
    keep: &'a dyn Fn(&Source, &Message) -> bool,
}

impl Found<'_> {
    fn add(&mut self, node: &RetainNode) {
        if let Some(message) = &node.message {
            if node.source.as_ref().is_none_or(|s| (self.keep)(s, message)) {
                self.out.push(message.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{MqttStr, QoS};

    fn msg(topic: &str, payload: &'static [u8]) -> Arc<Message> {
        Arc::new(Message {
            topic: MqttStr::new(topic).unwrap(),
            payload: bytes::Bytes::from_static(payload),
            qos: QoS::AtMostOnce,
            retain: true,
            properties: Default::default(),
            origin: None,
            expires_at: None,
        })
    }

    fn topics(store: &RetainStore, filter: &str) -> Vec<String> {
        let mut out = Vec::new();
        store.matching(filter, &mut out);
        let mut t: Vec<String> = out.iter().map(|m| m.topic.to_string()).collect();
        t.sort();
        t
    }

    #[test]
    fn stores_replaces_deletes_and_matches() {
        let mut s = RetainStore::default();
        for t in ["a", "a/b", "a/b/c", "$SYS/x", "b/c"] {
            s.set(msg(t, b"1"));
        }
        s.set(msg("a/b", b"2"));
        assert_eq!(s.len(), 5);
        assert_eq!(topics(&s, "#"), ["a", "a/b", "a/b/c", "b/c"]);
        assert_eq!(topics(&s, "a/#"), ["a", "a/b", "a/b/c"]);
        assert_eq!(topics(&s, "+/+"), ["a/b", "b/c"]);
        assert_eq!(topics(&s, "$SYS/#"), ["$SYS/x"]);
        assert_eq!(topics(&s, "+/x"), Vec::<String>::new());
        s.set(msg("a/b", b""));
        assert_eq!(s.len(), 4);
        assert_eq!(topics(&s, "a/+"), Vec::<String>::new());
        s.set(msg("a/b/c", b""));
        s.set(msg("a", b""));
        assert_eq!(topics(&s, "#"), ["b/c"]);
        assert!(
            s.root.children.get("a").is_none(),
            "empty branches are pruned"
        );
    }
}
