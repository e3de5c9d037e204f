//! The global subscription trie, published as immutable snapshots.
//!
//! Readers (every shard, for every PUBLISH) take the current snapshot with one atomic load
//! (`arc_swap`) and walk it without locks. One writer applies subscribes and unsubscribes to
//! its own working copy by path copying: a change clones only the nodes on its path that are
//! still shared with a published snapshot (O(depth), and a node's maps clone in O(1), see
//! `cow_map`), and nodes cloned earlier in the same batch are changed in place. `publish`
//! makes the batch visible at once; a superseded snapshot is freed when its last reader drops
//! it.
//!
//! A node is laid out for the common case, a level with one child or one subscriber: its
//! name inline, one child or one subscriber without an allocation of its own, and what few
//! nodes have (a `+` child, a `#` filter, share groups) behind one optional box. A filter
//! with one subscriber costs one node (112 bytes with its reference count) and its slot in
//! the parent.

use arc_swap::{ArcSwap, Guard};
use compact_str::CompactString;
use smallvec::SmallVec;
use std::num::NonZeroU32;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use super::cow_map::{CowMap, CowSet};
use super::hamt::Keyed;
use super::validate::{FilterRef, TOPIC_LEVELS_MAX};
use crate::codec::SubscriptionOptions;

pub use crate::types::SessionId;

/// One session's subscription to one filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Subscription {
    /// The shard that owns the session now: matches are grouped by it.
    pub shard: u16,
    pub options: SubscriptionOptions,
    /// MQTT 5 Subscription Identifier, sent back with matching messages.
    pub identifier: Option<NonZeroU32>,
}

/// A share group's name in a cluster's messages (`$share/{group}/{filter}`): the first 64
/// bits of its SHA-256, so that a client cannot choose a name that stands for another's
/// group.
pub fn group_hash(key: &str) -> u64 {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(key.as_bytes());
    u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
}

/// Subscribers of one filter, or members of one share group.
pub type Members = CowMap<SessionId, Subscription>;

/// The members of one share group, in the order they subscribed, and whose turn it is.
#[derive(Clone, Debug, Default)]
struct Group {
    /// The whole shared filter, `$share/{group}/{filter}`: the group's name in the
    /// cluster (`cluster/`), and its hash (`group_hash`).
    key: Arc<str>,
    key_hash: u64,
    members: Members,
    /// Counts the group's messages: the next goes to member `turn % len`, as Mosquitto
    /// rotates a group's list. Shared by every copy of the group, so it survives membership
    /// changes and snapshots; atomic, since every shard's publishers advance it.
    turn: Arc<AtomicUsize>,
}

/// Share groups of one filter, by group name.
type Groups = CowMap<Arc<str>, Group>;

/// Everything subscribed to one exact filter.
#[derive(Clone, Debug, Default)]
struct Leaf {
    subscribers: Members,
    /// `$share/{group}/{filter}` groups; boxed, as few filters have any.
    groups: Option<Box<Groups>>,
}

impl Leaf {
    fn is_empty(&self) -> bool {
        self.subscribers.is_empty() && self.groups.is_none()
    }

    /// The members of `group` (created for `filter`), or the subscribers.
    fn members_mut(&mut self, group: Option<&str>, filter: &str) -> &mut Members {
        let Some(group) = group else {
            return &mut self.subscribers;
        };
        let groups = self.groups.get_or_insert_with(Default::default);
        let new = || {
            let key: Arc<str> = Arc::from(format!("$share/{group}/{filter}"));
            let group_of = Group {
                key_hash: group_hash(&key),
                key,
                members: Members::default(),
                turn: Arc::default(),
            };
            (Arc::from(group), group_of)
        };
        &mut groups.get_or_insert_with(group, new).1.members
    }

    fn members(&self, group: Option<&str>) -> Option<&Members> {
        match group {
            None => Some(&self.subscribers),
            Some(group) => Some(&self.groups.as_ref()?.get(group)?.1.members),
        }
    }

    fn remove(&mut self, group: Option<&str>, session: SessionId) -> Option<Subscription> {
        let Some(group) = group else {
            return self.subscribers.remove(&session).map(|(_, s)| s);
        };
        let groups = self.groups.as_mut()?;
        let members = &mut groups.get_mut(group)?.1.members;
        let removed = members.remove(&session).map(|(_, s)| s);
        if members.is_empty() {
            groups.remove(group);
            if groups.is_empty() {
                self.groups = None;
            }
        }
        removed
    }

    fn count(&self) -> usize {
        self.subscribers.len()
            + (self.groups.iter())
                .flat_map(|groups| groups.iter())
                .map(|(_, g)| g.members.len())
                .sum::<usize>()
    }
}

/// What few nodes have.
#[derive(Clone, Debug, Default)]
struct Rare {
    /// The `+` child.
    plus: Option<Arc<Node>>,
    /// Filters that end with `#` just below this level (`a/#` lives in node `a`).
    multi: Leaf,
}

/// A level of the trie. The root is the level above the first.
#[derive(Clone, Debug, Default)]
pub struct Node {
    /// The level this node matches (in its parent's `children`).
    name: CompactString,
    children: CowSet<Arc<Node>>,
    /// Filters that end at this level.
    exact: Leaf,
    rare: Option<Box<Rare>>,
}

impl Keyed for Arc<Node> {
    type Key = str;
    fn key(&self) -> &str {
        &self.name
    }
}

/// One thing a topic matched: a plain subscriber, or a share group of which the router picks
/// one member. A session with several matching filters appears once per filter; the caller
/// merges them (MQTT 5.0 §4.7.3 lets the server deliver once, at the highest QoS).
#[derive(Clone, Copy, Debug)]
pub enum Match<'a> {
    Subscriber(SessionId, &'a Subscription),
    Group {
        name: &'a str,
        /// `$share/{name}/{filter}`, and its `group_hash`.
        key: &'a Arc<str>,
        key_hash: u64,
        members: &'a Members,
        /// Advanced once per message to the group (see `Group`).
        turn: &'a AtomicUsize,
    },
}

fn split_level(topic: &str) -> (&str, Option<&str>) {
    match topic.split_once('/') {
        Some((level, rest)) => (level, Some(rest)),
        None => (topic, None),
    }
}

fn emit<'a, F: FnMut(Match<'a>)>(leaf: &'a Leaf, f: &mut F) {
    leaf.subscribers.for_each(|(session, subscription)| {
        f(Match::Subscriber(*session, subscription));
    });
    for (name, group) in leaf.groups.iter().flat_map(|groups| groups.iter()) {
        f(Match::Group {
            name,
            key: &group.key,
            key_hash: group.key_hash,
            members: &group.members,
            turn: &group.turn,
        });
    }
}

impl Node {
    fn named(name: &str) -> Self {
        Node {
            name: CompactString::from(name),
            ..Node::default()
        }
    }

    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.exact.is_empty() && self.rare.is_none()
    }

    fn plus(&self) -> Option<&Arc<Node>> {
        self.rare.as_ref()?.plus.as_ref()
    }

    fn child(&self, level: &str) -> Option<&Arc<Node>> {
        self.children.get(level)
    }

    /// Calls `f` for every subscription whose filter matches the topic name `topic`.
    /// Recursion depth is bounded by the trie's depth, at most `TOPIC_LEVELS_MAX`.
    pub fn for_each_match<'a, F: FnMut(Match<'a>)>(&'a self, topic: &str, f: &mut F) {
        let (first, rest) = split_level(topic);
        // [MQTT-4.7.2-1] a filter starting with a wildcard does not match a topic name
        // starting with '$'.
        if !first.starts_with('$') {
            if let Some(rare) = &self.rare {
                emit(&rare.multi, f);
                if let Some(plus) = &rare.plus {
                    plus.descend(rest, f);
                }
            }
        }
        if let Some(child) = self.child(first) {
            child.descend(rest, f);
        }
    }

    /// Matches `rest` of the topic below this node, which matched the level before it.
    fn descend<'a, F: FnMut(Match<'a>)>(&'a self, rest: Option<&str>, f: &mut F) {
        // `#` matches its parent level too (§4.7.1.2: "sport/#" matches "sport").
        if let Some(rare) = &self.rare {
            emit(&rare.multi, f);
        }
        let Some(rest) = rest else {
            emit(&self.exact, f);
            return;
        };
        let (level, rest) = split_level(rest);
        if let Some(child) = self.child(level) {
            child.descend(rest, f);
        }
        if let Some(plus) = self.plus() {
            plus.descend(rest, f);
        }
    }

    /// The leaf of `filter`'s last level, if the path exists.
    fn leaf(&self, levels: &[&str]) -> Option<&Leaf> {
        let (&level, rest) = levels.split_first()?;
        if level == "#" {
            return Some(&self.rare.as_ref()?.multi);
        }
        let child = if level == "+" {
            self.plus()?
        } else {
            self.child(level)?
        };
        if rest.is_empty() {
            Some(&child.exact)
        } else {
            child.leaf(rest)
        }
    }

    /// The subscription `session` holds on `filter`, if any.
    pub fn get(&self, filter: FilterRef<'_>, session: SessionId) -> Option<&Subscription> {
        let levels = split_levels(filter.filter());
        let members = self.leaf(&levels)?.members(filter.group())?;
        members.get(&session).map(|(_, s)| s)
    }

    /// Counts the subscriptions in the trie (a walk of all of it: for tests and tools).
    pub fn count(&self) -> usize {
        self.exact.count()
            + self.rare.as_ref().map_or(0, |rare| {
                rare.multi.count() + rare.plus.as_ref().map_or(0, |p| p.count())
            })
            + self.children.iter().map(|c| c.count()).sum::<usize>()
    }

    /// Inserts or replaces `session`'s subscription, cloning shared nodes on the way.
    fn insert(
        self: &mut Arc<Self>,
        filter: &str,
        levels: &[&str],
        group: Option<&str>,
        session: SessionId,
        sub: Subscription,
    ) -> Option<Subscription> {
        let mut node = Arc::make_mut(self);
        let mut at = 0;
        let leaf = loop {
            let level = levels[at];
            at += 1;
            if level == "#" {
                break &mut node.rare.get_or_insert_with(Default::default).multi;
            }
            let child = if level == "+" {
                (node.rare.get_or_insert_with(Default::default).plus)
                    .get_or_insert_with(|| Arc::new(Node::named(level)))
            } else {
                (node.children).get_or_insert_with(level, || Arc::new(Node::named(level)))
            };
            node = Arc::make_mut(child);
            if at == levels.len() {
                break &mut node.exact;
            }
        };
        leaf.members_mut(group, filter)
            .insert((session, sub))
            .map(|(_, old)| old)
    }

    /// Removes `session`'s subscription, which must exist, and every node left empty.
    fn remove(
        &mut self,
        levels: &[&str],
        group: Option<&str>,
        session: SessionId,
    ) -> Option<Subscription> {
        let (&level, rest) = levels.split_first()?;
        if level == "#" {
            let rare = self.rare.as_mut()?;
            let removed = rare.multi.remove(group, session);
            self.drop_rare_if_empty();
            return removed;
        }
        let child_slot = if level == "+" {
            self.rare.as_mut()?.plus.as_mut()?
        } else {
            self.children.get_mut(level)?
        };
        let child = Arc::make_mut(child_slot);
        let removed = if rest.is_empty() {
            child.exact.remove(group, session)
        } else {
            child.remove(rest, group, session)
        };
        if child.is_empty() {
            if level == "+" {
                if let Some(rare) = &mut self.rare {
                    rare.plus = None;
                }
                self.drop_rare_if_empty();
            } else {
                self.children.remove(level);
            }
        }
        removed
    }

    fn drop_rare_if_empty(&mut self) {
        if (self.rare.as_ref()).is_some_and(|rare| rare.plus.is_none() && rare.multi.is_empty()) {
            self.rare = None;
        }
    }
}

fn split_levels(filter: &str) -> SmallVec<[&str; 8]> {
    let levels: SmallVec<[&str; 8]> = filter.split('/').collect();
    // `FilterRef` comes only from `parse_filter`, which bounds the levels.
    debug_assert!(levels.len() <= TOPIC_LEVELS_MAX);
    levels
}

/// The published trie, shared by every shard.
#[derive(Debug, Default)]
pub struct SubscriptionTree {
    root: ArcSwap<Node>,
}

impl SubscriptionTree {
    pub fn new() -> Arc<Self> {
        Arc::new(SubscriptionTree::default())
    }

    /// A tree that starts from an existing snapshot (shared, not copied).
    pub fn with_root(root: Arc<Node>) -> Arc<Self> {
        Arc::new(SubscriptionTree {
            root: ArcSwap::new(root),
        })
    }

    /// The current snapshot: one atomic load, no lock, no reference count traffic on the
    /// fast path. Hold it for a short while (one publish, one loop turn).
    pub fn load(&self) -> Guard<Arc<Node>> {
        self.root.load()
    }

    /// The current snapshot as an owned `Arc`, to keep for longer.
    pub fn load_full(&self) -> Arc<Node> {
        self.root.load_full()
    }
}

/// The one writer of a `SubscriptionTree`. Changes stay private to it until `publish`.
pub struct TreeWriter {
    tree: Arc<SubscriptionTree>,
    working: Arc<Node>,
    unpublished: usize,
    subscriptions: usize,
}

impl TreeWriter {
    /// Writes to `tree`, starting from what it holds now.
    pub fn new(tree: Arc<SubscriptionTree>) -> Self {
        let working = tree.load_full();
        let subscriptions = working.count();
        TreeWriter {
            tree,
            working,
            unpublished: 0,
            subscriptions,
        }
    }

    /// Subscribes `session` to `filter`, or replaces its options there; returns the
    /// subscription it replaced.
    pub fn subscribe(
        &mut self,
        filter: FilterRef<'_>,
        session: SessionId,
        sub: Subscription,
    ) -> Option<Subscription> {
        let levels = split_levels(filter.filter());
        let old = (self.working).insert(filter.filter(), &levels, filter.group(), session, sub);
        if old.is_none() {
            self.subscriptions += 1;
        }
        self.unpublished += 1;
        old
    }

    /// Removes `session`'s subscription to `filter`; returns it, or `None` if there was none.
    pub fn unsubscribe(
        &mut self,
        filter: FilterRef<'_>,
        session: SessionId,
    ) -> Option<Subscription> {
        // Look first, so that a filter nobody holds copies no node.
        self.working.get(filter, session)?;
        let levels = split_levels(filter.filter());
        let old = Arc::make_mut(&mut self.working).remove(&levels, filter.group(), session);
        debug_assert!(old.is_some(), "found by get() just before");
        self.subscriptions -= 1;
        self.unpublished += 1;
        old
    }

    /// The writer's view, with unpublished changes.
    pub fn working(&self) -> &Node {
        &self.working
    }

    /// Subscriptions in the working trie.
    pub fn len(&self) -> usize {
        self.subscriptions
    }

    pub fn is_empty(&self) -> bool {
        self.subscriptions == 0
    }

    /// Changes applied since the last `publish`.
    pub fn unpublished(&self) -> usize {
        self.unpublished
    }

    /// Makes every change so far visible to readers, as one new snapshot.
    pub fn publish(&mut self) {
        if self.unpublished > 0 {
            self.tree.root.store(Arc::clone(&self.working));
            self.unpublished = 0;
        }
    }
}
