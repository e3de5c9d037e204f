//! Topic names, topic filters and the subscription trie.

mod cow_map;
mod hamt;
mod trie;
mod validate;

pub use cow_map::{CowMap, CowSet};
pub use trie::{
    group_hash, Match, Members, Node, SessionId, Subscription, SubscriptionTree, TreeWriter,
};
pub use validate::{
    matches, parse_filter, validate_filter, validate_topic_name, FilterRef, TopicError,
    SHARE_PREFIX, TOPIC_LEVELS_MAX,
};
