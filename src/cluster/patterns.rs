//! The node's NATS subscriptions by subject pattern, to tell which one a message should be
//! taken from.
//!
//! Overlapping subscriptions (`a.*` and `a.>`) each deliver a message, on channels read
//! separately. Taking every message of a subject from one subscription, the oldest that
//! matches it, keeps the messages of a topic in the order NATS sent them [MQTT-4.6.0-6]: a
//! newer subscription never becomes the one for a subject while an older one matching it
//! lives, and the link drains an old one before it goes (`link.rs`).

use hashbrown::HashMap;
use smallvec::SmallVec;

/// The subscriptions for one pattern: usually one; two while one goes and a new one for
/// the same pattern has come (the old stays the oldest until it is drained).
type Ids = SmallVec<[u64; 1]>;

#[derive(Default)]
struct Node {
    literal: HashMap<Box<str>, Node>,
    star: Option<Box<Node>>,
    /// The subscriptions whose pattern ends here with `>`.
    rest: Ids,
    /// The subscriptions whose pattern ends here.
    here: Ids,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.literal.is_empty()
            && self.star.is_none()
            && self.rest.is_empty()
            && self.here.is_empty()
    }
}

/// Subscription ids by pattern.
#[derive(Default)]
pub struct Patterns {
    root: Node,
    len: usize,
}

impl Patterns {
    /// Adds subscription `id` for `pattern` (beside any other for it).
    pub fn insert(&mut self, pattern: &str, id: u64) {
        let mut node = &mut self.root;
        let tokens: Vec<&str> = pattern.split('.').collect();
        for (i, token) in tokens.iter().enumerate() {
            let last = i + 1 == tokens.len();
            match *token {
                ">" if last => {
                    node.rest.push(id);
                    self.len += 1;
                    return;
                }
                "*" => node = node.star.get_or_insert_with(Default::default),
                literal => node = node.literal.entry(literal.into()).or_default(),
            }
        }
        node.here.push(id);
        self.len += 1;
    }

    /// Removes subscription `id` for `pattern`.
    pub fn remove(&mut self, pattern: &str, id: u64) {
        let tokens: Vec<&str> = pattern.split('.').collect();
        if remove(&mut self.root, &tokens, id) {
            self.len -= 1;
        }
    }

    /// The oldest (lowest id) subscription whose pattern matches `subject`.
    pub fn oldest_match(&self, subject: &str) -> Option<u64> {
        let tokens: Vec<&str> = subject.split('.').collect();
        let mut best = None;
        oldest(&self.root, &tokens, &mut best);
        best
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Takes `id` out of `ids`; whether it was there.
fn take(ids: &mut Ids, id: u64) -> bool {
    let before = ids.len();
    ids.retain(|i| *i != id);
    ids.len() < before
}

fn remove(node: &mut Node, tokens: &[&str], id: u64) -> bool {
    match tokens {
        [] => take(&mut node.here, id),
        [">"] => take(&mut node.rest, id),
        [token, rest @ ..] => {
            let (removed, empty) = if *token == "*" {
                let Some(child) = node.star.as_deref_mut() else {
                    return false;
                };
                (remove(child, rest, id), child.is_empty())
            } else {
                let Some(child) = node.literal.get_mut(*token) else {
                    return false;
                };
                (remove(child, rest, id), child.is_empty())
            };
            if empty {
                if *token == "*" {
                    node.star = None;
                } else {
                    node.literal.remove(*token);
                }
            }
            removed
        }
    }
}

fn oldest(node: &Node, tokens: &[&str], best: &mut Option<u64>) {
    let mut take = |ids: &Ids| {
        if let Some(&id) = ids.iter().min() {
            *best = Some(best.map_or(id, |b| b.min(id)));
        }
    };
    let Some((token, rest)) = tokens.split_first() else {
        take(&node.here);
        return;
    };
    take(&node.rest);
    if let Some(child) = node.literal.get(*token) {
        oldest(child, rest, best);
    }
    if let Some(child) = &node.star {
        oldest(child, rest, best);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::subject::nats_matches;
    use proptest::prelude::*;

    #[test]
    fn the_oldest_matching_subscription_is_found() {
        let mut p = Patterns::default();
        p.insert("m.a.>", 3);
        p.insert("m.a.*", 1);
        p.insert("m.a.b", 2);
        p.insert("m.>", 4);
        assert_eq!(p.oldest_match("m.a.b"), Some(1));
        assert_eq!(p.oldest_match("m.a.b.c"), Some(3));
        assert_eq!(p.oldest_match("m.x"), Some(4));
        assert_eq!(p.oldest_match("n.a"), None);
        p.remove("m.a.*", 1);
        assert_eq!(p.oldest_match("m.a.b"), Some(2));
        // The same pattern again while the old one is still there: the old stays the
        // oldest; removing it leaves the new one.
        p.insert("m.a.b", 7);
        assert_eq!(p.oldest_match("m.a.b"), Some(2));
        p.remove("m.a.b", 2);
        assert_eq!(p.oldest_match("m.a.b"), Some(3), "m.a.> is older than 7");
        p.remove("m.a.>", 3);
        p.remove("m.>", 4);
        assert_eq!(p.oldest_match("m.a.b"), Some(7));
        p.remove("m.a.b", 7);
        assert_eq!(p.len(), 0);
        assert!(p.root.is_empty(), "removing every pattern leaves no node");
    }

    fn pattern() -> impl Strategy<Value = String> {
        (
            proptest::collection::vec(prop_oneof!["[ab]", Just("*".to_string())], 1..4),
            any::<bool>(),
        )
            .prop_map(|(mut t, rest)| {
                if rest {
                    t.push(">".into());
                }
                t.join(".")
            })
    }

    proptest! {
        /// What the trie finds is what trying every pattern in turn finds.
        #[test]
        fn it_agrees_with_matching_each_pattern(
            patterns in proptest::collection::vec(pattern(), 0..8),
            subject in proptest::collection::vec("[ab]", 1..5).prop_map(|t| t.join(".")),
        ) {
            let mut p = Patterns::default();
            let mut kept: Vec<(String, u64)> = Vec::new();
            for (id, pattern) in patterns.iter().enumerate() {
                if kept.iter().all(|(k, _)| k != pattern) {
                    p.insert(pattern, id as u64);
                    kept.push((pattern.clone(), id as u64));
                }
            }
            let expected = kept.iter().filter(|(k, _)| nats_matches(k, &subject)).map(|(_, id)| *id).min();
            prop_assert_eq!(p.oldest_match(&subject), expected);
        }
    }
}
