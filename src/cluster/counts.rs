//! What the cluster counts (`$SYS/broker/cluster/...` and the `midge_cluster_*` metrics):
//! the counters the link, the retained store and the sessions keep, and the one table that
//! names each for `$SYS` and Prometheus alike.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

/// What the cluster counts (`$SYS/broker/cluster/...`, the metrics).
#[derive(Default)]
pub struct ClusterStats {
    pub connected: AtomicBool,
    pub forwarded: AtomicU64,
    pub forwarded_bytes: AtomicU64,
    pub received: AtomicU64,
    pub received_bytes: AtomicU64,
    /// Not published: the queue to the link was full, or NATS refused it.
    pub dropped_outgoing: AtomicU64,
    /// Not published: larger than the NATS server's max_payload.
    pub too_large: AtomicU64,
    /// Not delivered: the shard's mailbox stayed full.
    pub dropped_incoming: AtomicU64,
    /// Copies of a message taken already (overlapping subscriptions).
    pub duplicates: AtomicU64,
    /// Messages on midge's subjects that are not a message of this format, or not what a
    /// node sends.
    pub undecodable: AtomicU64,
    /// Times the NATS client dropped messages for a subscription the link did not read in time.
    pub slow_consumer: AtomicU64,
    /// NATS subscriptions held now.
    pub subscriptions: AtomicUsize,
    /// Past `cluster_max_subscriptions`: the node takes every message of the cluster; the
    /// times it began to; the filters held since without a subscription of their own.
    pub catching_all: AtomicBool,
    pub catch_all_started: AtomicU64,
    pub uncovered: AtomicUsize,
    /// Retained messages (and removals) JetStream acknowledged, and those it did not.
    pub retained_stored: AtomicU64,
    pub retained_not_stored: AtomicU64,
    /// Retained messages found for new subscriptions; queries that failed or could not
    /// be asked; queries that found more than a subscription is sent.
    pub retained_found: AtomicU64,
    pub retained_queries_failed: AtomicU64,
    pub retained_cut: AtomicU64,
    /// Removals and expired retained messages the sweep deleted from the stream.
    pub retained_swept: AtomicU64,
    /// Messages NATS gave this node for a share group that the publishing node served
    /// itself (not delivered again); messages published here that went to more share
    /// groups here than a message lists (`wire::SERVED_MAX`).
    pub served_there: AtomicU64,
    pub served_cut: AtomicU64,
    /// Messages NATS gave this node for a share group with no member here any more (the
    /// group's queue subscription was still going).
    pub group_gone: AtomicU64,
    /// QoS 1 and 2 messages stored in the messages' stream; those whose first try failed;
    /// those that went without it (`stored.rs`).
    pub stored: AtomicU64,
    pub store_retries: AtomicU64,
    pub not_stored: AtomicU64,
    /// Client ids this node made itself the owner of; connections that went on without
    /// the cluster deciding (it did not answer in time); sessions fetched from another node,
    /// handed to another, not fetched (the node did not answer), and queued messages left
    /// out of a session handed over (larger than NATS takes).
    pub sessions_claimed: AtomicU64,
    pub sessions_unclaimed: AtomicU64,
    pub sessions_moved_in: AtomicU64,
    pub sessions_moved_out: AtomicU64,
    pub sessions_not_fetched: AtomicU64,
    pub sessions_cut: AtomicU64,
    /// Records of sessions this node owns written to their keys; records not written (the
    /// bucket refused them, or larger than NATS takes).
    pub records_written: AtomicU64,
    pub records_not_written: AtomicU64,
    /// Nodes this node found gone (their heartbeats stopped) and took the sessions of;
    /// sessions it took over from gone nodes (and from their records when a client came
    /// back first); times this node found itself taken for gone.
    pub nodes_gone: AtomicU64,
    pub sessions_adopted: AtomicU64,
    pub taken_for_gone: AtomicU64,
    /// Replays of what a gone node missed (`replay.rs`); those cut short; messages they
    /// delivered; messages gone from the stream before they were read again; messages
    /// that came for sessions being replayed and were delivered by the replay already.
    pub replays: AtomicU64,
    pub replays_cut: AtomicU64,
    pub replayed: AtomicU64,
    pub replay_missed: AtomicU64,
    pub replay_duplicates: AtomicU64,
    /// Messages delivered as they came to a session being replayed for, past what may wait
    /// (their order with the replay's not kept).
    pub replay_unheld: AtomicU64,
}

/// A count the cluster keeps: its `$SYS` topic, its metric (name, help, counter or gauge),
/// and how it is read.
pub struct ClusterCount {
    pub topic: &'static str,
    pub metric: &'static str,
    pub help: &'static str,
    pub counter: bool,
    pub read: fn(&ClusterStats) -> u64,
}

const fn count(
    topic: &'static str,
    metric: &'static str,
    help: &'static str,
    counter: bool,
    read: fn(&ClusterStats) -> u64,
) -> ClusterCount {
    ClusterCount {
        topic,
        metric,
        help,
        counter,
        read,
    }
}

/// Counts one more in `counter`; the count if it is worth saying: the 1st, 2nd, 4th,
/// 8th..., so that whoever floods a node with what it drops cannot flood its log too.
pub(super) fn count_to_say(counter: &AtomicU64) -> Option<u64> {
    let seen = counter.fetch_add(1, Ordering::Relaxed) + 1;
    seen.is_power_of_two().then_some(seen)
}

fn load(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

/// Every count, for `$SYS/broker/cluster/...` and the metrics alike.
pub const COUNTS: &[ClusterCount] = &[
    count(
        "$SYS/broker/cluster/connected",
        "midge_cluster_nats_connected",
        "Whether the node is connected to NATS (1) or not (0)",
        false,
        |s| u64::from(s.connected.load(Ordering::Relaxed)),
    ),
    count(
        "$SYS/broker/cluster/subscriptions",
        "midge_cluster_nats_subscriptions",
        "NATS subscriptions the node holds for its clients' filters",
        false,
        |s| s.subscriptions.load(Ordering::Relaxed) as u64,
    ),
    count(
        "$SYS/broker/cluster/catch_all",
        "midge_cluster_catch_all",
        "Whether the node takes every message of the cluster (1): its clients' filters need more NATS subscriptions than cluster_max_subscriptions",
        false,
        |s| u64::from(s.catching_all.load(Ordering::Relaxed)),
    ),
    count(
        "$SYS/broker/cluster/catch_all/started",
        "midge_cluster_catch_all_started",
        "Times the node began to take every message of the cluster",
        true,
        |s| load(&s.catch_all_started),
    ),
    count(
        "$SYS/broker/cluster/subscriptions/uncovered",
        "midge_cluster_uncovered_filters",
        "Filters of the node's clients without a NATS subscription of their own (past cluster_max_subscriptions; the catch-all brings their messages)",
        false,
        |s| s.uncovered.load(Ordering::Relaxed) as u64,
    ),
    count(
        "$SYS/broker/cluster/retained/stored",
        "midge_cluster_retained_stored",
        "Retained messages and removals stored in JetStream",
        true,
        |s| load(&s.retained_stored),
    ),
    count(
        "$SYS/broker/cluster/retained/not_stored",
        "midge_cluster_retained_not_stored",
        "Retained messages and removals JetStream did not take (not open, NATS away, no acknowledgement)",
        true,
        |s| load(&s.retained_not_stored),
    ),
    count(
        "$SYS/broker/cluster/retained/found",
        "midge_cluster_retained_found",
        "Retained messages found in JetStream for new subscriptions",
        true,
        |s| load(&s.retained_found),
    ),
    count(
        "$SYS/broker/cluster/retained/queries_failed",
        "midge_cluster_retained_queries_failed",
        "New subscriptions whose retained messages could not be looked for in JetStream",
        true,
        |s| load(&s.retained_queries_failed),
    ),
    count(
        "$SYS/broker/cluster/retained/cut",
        "midge_cluster_retained_cut",
        "New subscriptions matching more retained messages than one is sent",
        true,
        |s| load(&s.retained_cut),
    ),
    count(
        "$SYS/broker/cluster/retained/swept",
        "midge_cluster_retained_swept",
        "Removals and expired retained messages deleted from JetStream",
        true,
        |s| load(&s.retained_swept),
    ),
    count(
        "$SYS/broker/cluster/shared/served_there",
        "midge_cluster_shared_served_there",
        "Messages for a share group here that the publishing node served itself",
        true,
        |s| load(&s.served_there),
    ),
    count(
        "$SYS/broker/cluster/shared/served_cut",
        "midge_cluster_shared_served_cut",
        "Messages that went to more share groups on this node than a message lists (the others may serve them too)",
        true,
        |s| load(&s.served_cut),
    ),
    count(
        "$SYS/broker/cluster/shared/dropped",
        "midge_cluster_shared_dropped",
        "Messages for a share group that had no member on this node any more when they came",
        true,
        |s| load(&s.group_gone),
    ),
    count(
        "$SYS/broker/cluster/sessions/claimed",
        "midge_cluster_sessions_claimed",
        "Client ids this node made itself the owner of in the cluster",
        true,
        |s| load(&s.sessions_claimed),
    ),
    count(
        "$SYS/broker/cluster/sessions/unclaimed",
        "midge_cluster_sessions_unclaimed",
        "Connections accepted without the cluster deciding where their session is (it did not answer in time)",
        true,
        |s| load(&s.sessions_unclaimed),
    ),
    count(
        "$SYS/broker/cluster/sessions/moved_in",
        "midge_cluster_sessions_moved_in",
        "Sessions taken over from another node",
        true,
        |s| load(&s.sessions_moved_in),
    ),
    count(
        "$SYS/broker/cluster/sessions/moved_out",
        "midge_cluster_sessions_moved_out",
        "Sessions handed to another node",
        true,
        |s| load(&s.sessions_moved_out),
    ),
    count(
        "$SYS/broker/cluster/sessions/not_fetched",
        "midge_cluster_sessions_not_fetched",
        "Sessions another node held that could not be fetched (it did not answer): their clients started anew",
        true,
        |s| load(&s.sessions_not_fetched),
    ),
    count(
        "$SYS/broker/cluster/sessions/cut",
        "midge_cluster_sessions_cut",
        "Queued messages left out of sessions handed to another node (larger than NATS takes)",
        true,
        |s| load(&s.sessions_cut),
    ),
    count(
        "$SYS/broker/cluster/sessions/records",
        "midge_cluster_sessions_records",
        "Records of this node's sessions written to the sessions bucket",
        true,
        |s| load(&s.records_written),
    ),
    count(
        "$SYS/broker/cluster/sessions/records_not_written",
        "midge_cluster_sessions_records_not_written",
        "Records of this node's sessions not written (the bucket refused them, or larger than NATS takes)",
        true,
        |s| load(&s.records_not_written),
    ),
    count(
        "$SYS/broker/cluster/sessions/adopted",
        "midge_cluster_sessions_adopted",
        "Sessions taken over from their records: their node was gone",
        true,
        |s| load(&s.sessions_adopted),
    ),
    count(
        "$SYS/broker/cluster/nodes/gone",
        "midge_cluster_nodes_gone",
        "Nodes this node found gone (no heartbeat for cluster_node_timeout) and took the sessions of",
        true,
        |s| load(&s.nodes_gone),
    ),
    count(
        "$SYS/broker/cluster/nodes/taken_for_gone",
        "midge_cluster_taken_for_gone",
        "Times the cluster took this node for gone (its heartbeat key was deleted or written by another)",
        true,
        |s| load(&s.taken_for_gone),
    ),
    count(
        "$SYS/broker/cluster/replays/done",
        "midge_cluster_replays",
        "Replays of the messages a gone node missed, for its sessions taken over here",
        true,
        |s| load(&s.replays),
    ),
    count(
        "$SYS/broker/cluster/replays/cut",
        "midge_cluster_replays_cut",
        "Replays not read to their end (NATS away, past their time)",
        true,
        |s| load(&s.replays_cut),
    ),
    count(
        "$SYS/broker/cluster/replays/messages",
        "midge_cluster_replayed",
        "Messages a gone node missed, delivered to its sessions taken over here",
        true,
        |s| load(&s.replayed),
    ),
    count(
        "$SYS/broker/cluster/replays/missed",
        "midge_cluster_replay_missed",
        "Messages gone from the messages' stream (past its limits) before a replay read them",
        true,
        |s| load(&s.replay_missed),
    ),
    count(
        "$SYS/broker/cluster/replays/unheld",
        "midge_cluster_replay_unheld",
        "Messages delivered as they came to sessions being replayed for, past what may wait (10,000 a session, 1,000,000 a shard)",
        true,
        |s| load(&s.replay_unheld),
    ),
    count(
        "$SYS/broker/cluster/replays/duplicates",
        "midge_cluster_replay_duplicates",
        "Messages that came for sessions being replayed and that the replay delivered already",
        true,
        |s| load(&s.replay_duplicates),
    ),
    count(
        "$SYS/broker/cluster/messages/forwarded",
        "midge_cluster_messages_forwarded",
        "Messages published to NATS for the other nodes",
        true,
        |s| load(&s.forwarded),
    ),
    count(
        "$SYS/broker/cluster/bytes/forwarded",
        "midge_cluster_bytes_forwarded",
        "Bytes published to NATS",
        true,
        |s| load(&s.forwarded_bytes),
    ),
    count(
        "$SYS/broker/cluster/messages/received",
        "midge_cluster_messages_received",
        "Messages from other nodes routed here",
        true,
        |s| load(&s.received),
    ),
    count(
        "$SYS/broker/cluster/bytes/received",
        "midge_cluster_bytes_received",
        "Bytes of messages from other nodes",
        true,
        |s| load(&s.received_bytes),
    ),
    count(
        "$SYS/broker/cluster/messages/dropped/outgoing",
        "midge_cluster_dropped_outgoing",
        "Messages not published to NATS: the queue to the NATS client was full, or NATS refused them",
        true,
        |s| load(&s.dropped_outgoing),
    ),
    count(
        "$SYS/broker/cluster/messages/dropped/too_large",
        "midge_cluster_too_large",
        "Messages not published to NATS: larger than its max_payload",
        true,
        |s| load(&s.too_large),
    ),
    count(
        "$SYS/broker/cluster/messages/dropped/incoming",
        "midge_cluster_dropped_incoming",
        "Messages from NATS not routed: the shard's mailbox stayed full",
        true,
        |s| load(&s.dropped_incoming),
    ),
    count(
        "$SYS/broker/cluster/messages/dropped/slow",
        "midge_cluster_slow_consumer",
        "Times the NATS client dropped messages the link did not read in time",
        true,
        |s| load(&s.slow_consumer),
    ),
    count(
        "$SYS/broker/cluster/messages/stored",
        "midge_cluster_messages_stored",
        "QoS 1 and 2 messages published here and stored in JetStream before their publisher was acknowledged",
        true,
        |s| load(&s.stored),
    ),
    count(
        "$SYS/broker/cluster/messages/store_retries",
        "midge_cluster_store_retries",
        "QoS 1 and 2 messages whose first store in JetStream failed (tried again)",
        true,
        |s| load(&s.store_retries),
    ),
    count(
        "$SYS/broker/cluster/messages/not_stored",
        "midge_cluster_messages_not_stored",
        "QoS 1 and 2 messages JetStream did not store in time: sent to the other nodes at most once, their publisher acknowledged all the same",
        true,
        |s| load(&s.not_stored),
    ),
    count(
        "$SYS/broker/cluster/messages/duplicates",
        "midge_cluster_duplicates",
        "Copies of a message already taken (overlapping NATS subscriptions), not routed again",
        true,
        |s| load(&s.duplicates),
    ),
    count(
        "$SYS/broker/cluster/messages/undecodable",
        "midge_cluster_undecodable",
        "Messages on the cluster's subjects that are not a node's",
        true,
        |s| load(&s.undecodable),
    ),
];
