//! The bounds midge keeps on what one client can make it hold or do, in one place, with the
//! relations between them checked at compile time. Those a user sets are options (`config`);
//! these are midge's own. README's table "Bounds" lists both, with what happens at each.

use std::time::Duration;

/// Largest packet taken from a connection before its CONNECT is accepted: every field of a
/// CONNECT at its longest (client id, will topic and payload, user name, password,
/// authentication method and data: 64 KiB each) fits, with room for properties. A larger
/// one is refused as too large before its bytes are stored (`max_packet_size`, if lower,
/// applies instead). Once CONNECT is accepted, `max_packet_size` applies.
pub const CONNECT_PACKET_BYTES_MAX: usize = 512 * 1024;

/// Bytes all connections that have not had their CONNECT accepted may hold together (a
/// partial CONNECT waiting for the rest), at most: past it, the connection whose bytes
/// would go beyond it is closed (counted as `preconnect_bytes`). Also at most a quarter of
/// `memory_limit` (`preconnect_bytes_max`).
pub const PRECONNECT_BYTES_MAX: usize = 32 << 20;

/// A buffer holding a partly received packet this large or smaller is not counted in
/// `memory_limit` (those of every connection are bounded by their count); a larger one is,
/// all of it, as it grows (`Shared::receiving_bytes`), and its packet refused if, whole, it
/// would take the broker past `memory_limit` (`shard/receiving.rs`).
pub const PARTIAL_PACKET_UNCOUNTED_BYTES: usize = 64 * 1024;

/// A packet's buffer is sized for the whole packet at once when the packet is at most this
/// large, or once this fraction of it (one in 16) has arrived: until then it grows by
/// doubling. The largest copy a growing packet costs is a sixteenth of it (16 MiB for the
/// largest MQTT allows, a few milliseconds), and what is set aside ahead of the bytes that
/// arrived is at most 16 times them (and counted, `receiving.rs`).
pub const PACKET_SIZED_AT_ONCE_BYTES: usize = 4 * 1024;
pub const PACKET_SIZED_AFTER_PART: usize = 16;

/// Packets of one connection decoded and handled in one loop turn: past them, the rest of
/// what it sent waits for the next turn, and it is not read meanwhile. 64 KiB of 12-byte
/// PUBLISHes, each answered, held a shard for 30 ms (release build) to 400 ms (test build);
/// a thousand packets are about a millisecond.
pub const PACKETS_PER_TURN: usize = 1024;

/// Bytes waiting for a client that reads slowly, past which QoS 0 messages to it are
/// dropped while the broker as a whole is over `memory_limit`, and its reading is held.
pub const SLOW_BACKLOG_BYTES: usize = 64 * 1024;

/// A client whose reading was held because its unsent output passed its bound is read
/// again once what waits for it is down to this.
pub const OUTPUT_RESUME_BYTES: usize = SLOW_BACKLOG_BYTES / 2;

/// Topic levels a scan of the retained messages looks at in one slice (one hold of the
/// retained store's lock), and messages it finds at most: about a hundred microseconds.
pub const SCAN_VISITS_PER_SLICE: usize = 1024;
pub const SCAN_FOUND_PER_SLICE: usize = 256;

/// Topic levels the scans of all sessions on a shard look at in one loop turn: a SUBSCRIBE
/// of `#` over a million retained messages goes on over many turns, the shard's other
/// clients served in between.
pub const SCAN_VISITS_PER_TURN: usize = 16 * SCAN_VISITS_PER_SLICE;

/// Bytes of topics one connection's table of outgoing topic aliases may hold (each topic
/// with its entry): past it, the oldest aliases are given to new topics.
pub const OUT_ALIAS_BYTES_MAX: usize = 64 * 1024;

/// Bytes one client's subscriptions may hold beyond what their count bounds: filter text
/// too long to be kept inline, and trie levels past each filter's first
/// (`session::filter_cost`): past it a new subscription is refused (3.x 0x80, 5.0 0x97
/// Quota exceeded). 100,000 filters of three levels fit.
pub const SUBSCRIPTION_BYTES_MAX: usize = 32 << 20;

/// Bytes of such filters all clients may hold together, for a `memory_limit`.
pub fn subscription_bytes_max_total(memory_limit: usize) -> usize {
    memory_limit / 4
}

/// Bytes the retained messages may hold together (`RetainStore::bytes`: their levels and
/// messages), for a `memory_limit`: past it a new retained message, or one that grows the
/// store, is refused (5.0 QoS 1/2: 0x97 Quota exceeded; QoS 0 dropped; a 3.x QoS 1/2
/// publisher is disconnected unacknowledged, so it sends again later), counted as
/// `retained_bytes`. Removing or replacing one with no larger is always taken.
pub fn retained_bytes_max(memory_limit: usize) -> usize {
    memory_limit / 2
}

/// The broker-wide bound on bytes held by connections before CONNECT, for a `memory_limit`.
pub fn preconnect_bytes_max(memory_limit: usize) -> usize {
    PRECONNECT_BYTES_MAX.min(memory_limit / 4)
}

// A connection's partial CONNECT alone never passes the broker-wide bound at its default.
const _: () = assert!(CONNECT_PACKET_BYTES_MAX < PRECONNECT_BYTES_MAX);
// Holding and releasing have room between them (no pause and resume every turn).
const _: () = assert!(OUTPUT_RESUME_BYTES < SLOW_BACKLOG_BYTES);

// What one loop turn of a shard does, at most (the rest waits for the next turn, which comes
// at once): a shard's other clients are served in between.

/// Most bytes read from one connection in one `wait`.
pub const READ_MAX_PER_TURN: usize = 64 * 1024;

/// Mailbox messages handled per loop turn, so a flood from other shards cannot starve this
/// shard's own sockets.
pub const MAILBOX_PER_TURN: usize = 4096;

/// Filters of SUBSCRIBEs and UNSUBSCRIBEs a shard handles in one loop turn, at most (a
/// packet may list 16,384): one SUBSCRIBE of 16,384 new filters held a shard for 24-41 ms
/// (release build), about 1 µs a filter to handle and 2 µs to change the trie.
pub const FILTERS_PER_TURN: usize = 512;

/// A share of the turn's filters for each of several packets waiting, so that a small one
/// is not held behind large ones for long.
pub const FILTERS_PER_TURN_SHARED: usize = FILTERS_PER_TURN / 8;

/// New subscriptions' requests for their retained messages (a filter each) owed in one
/// loop turn, at most: each is looked up or scanned at once, and a SUBSCRIBE's 16,384 held
/// a shard for 3.5 ms (release build).
pub const RETAINED_REQUESTS_PER_TURN: usize = 2048;

/// Subscriptions of ended sessions taken out of the trie in one loop turn, at most: a
/// client with 100,000 subscriptions leaving held its shard for 200 ms (release build); a
/// thousand trie changes are 2-3 ms.
pub const SWEPT_PER_TURN: usize = 512;

/// Bytes sealed at once: four TLS records of 16 KiB (and one WebSocket frame).
pub const SEAL_SLICE_BYTES: usize = 64 * 1024;

/// Bytes a shard seals in one loop turn over all its connections (about a millisecond of
/// AES-GCM); past it, the rest waits for the next turn, which comes at once.
pub const SEAL_PER_TURN_BYTES: usize = 4 << 20;

/// CPU time a shard spends on TLS handshakes per loop turn before it holds the rest of them
/// to the next turn: a handshake signs (an RSA-2048 signature takes about a millisecond), and
/// a storm of them must not stall the shard's connected clients for longer than this.
pub const HANDSHAKE_TIME_PER_TURN: Duration = Duration::from_millis(2);

/// Entries a list reused from one message or turn to the next keeps room for (the local
/// targets of a message, the connections written in a turn): what a burst grew it to past
/// this is given back.
pub const KEPT_CAPACITY: usize = 256;

/// Clients waiting for their output to drain that are checked every turn; past it, every
/// `DRAIN_CHECK_INTERVAL` (`shard/holding.rs`).
pub const DRAIN_CHECK_EVERY_TURN_MAX: usize = 256;

// What one client can make midge hold or send, beside those above.

/// Most retained messages one session may be owed at once (found by its scans a slice at a
/// time, or owed to a bridge); past it, more are dropped and counted.
pub const OWED_MAX: usize = 1 << 20;

/// Most scans of retained messages one session may have under way, and most bytes of
/// filters among them: one per filter (a subscription made again restarts its scan rather
/// than adding one, an UNSUBSCRIBE ends it, and a filter without wildcards needs none), so
/// that a client cannot make the broker keep a scan for each of its many subscriptions
/// while it does not read; past either, a new subscription's retained messages are not
/// sent, and that is counted (`retained_scans`).
pub const SCANS_MAX: usize = 4096;
pub const SCAN_FILTER_BYTES_MAX: usize = 1 << 20;

/// Bytes a connection may have waiting to be written before owed retained messages wait
/// for it to drain.
pub const OWED_WRITE_MAX: usize = 256 * 1024;

/// A connection gets more sealed once the backend holds less than this for it.
pub const SEAL_AHEAD_BYTES: usize = 256 * 1024;

// Between shards.

/// The most shards (threads) a broker runs: the `threads` option's bound, and `Claim`'s.
pub const SHARDS_MAX: usize = 1024;

/// Messages one shard's mailbox holds before senders must hold or drop.
pub const MAILBOX_CAPACITY: usize = 16 * 1024;

/// Cross-shard messages held while a target mailbox is full (QoS 1/2 only).
pub const OVERFLOW_MAX: usize = 65_536;

// How the bounds relate, checked when midge is built.
// A session's one slice of a scan fits what it may be owed.
const _: () = assert!(SCAN_FOUND_PER_SLICE <= OWED_MAX);
// A turn's scan budget is a number of full slices.
const _: () = assert!(SCAN_VISITS_PER_TURN.is_multiple_of(SCAN_VISITS_PER_SLICE));
// Each of several SUBSCRIBEs waiting gets some of the turn's filters.
const _: () = assert!(0 < FILTERS_PER_TURN_SHARED && FILTERS_PER_TURN_SHARED <= FILTERS_PER_TURN);
// A SUBSCRIBE's longest list of filters is handled in a bounded number of turns, even at
// its share when several wait.
const _: () = assert!(crate::codec::TOPIC_FILTERS_MAX.div_ceil(FILTERS_PER_TURN_SHARED) <= 256);
// Sealing: a slice fits what a connection may have sealed ahead, which fits a turn.
const _: () =
    assert!(SEAL_SLICE_BYTES <= SEAL_AHEAD_BYTES && SEAL_AHEAD_BYTES <= SEAL_PER_TURN_BYTES);
// A shard numbers itself in 16 bits (`PublishOrder::shard`, `Subscription::shard`, `Claim`).
const _: () = assert!(SHARDS_MAX <= u16::MAX as usize + 1);
// What a healthy shard has passed to another and not yet seen on its disk (numbered as it
// goes into the outbox): the other's mailbox and a turn's worth, and a full overflow list.
// Under what marks a shard whose disk fails.
const _: () = assert!(MAILBOX_CAPACITY + MAILBOX_PER_TURN + OVERFLOW_MAX < UNSETTLED_MAX);
// A turn takes at most a mailbox's worth.
const _: () = assert!(MAILBOX_PER_TURN <= MAILBOX_CAPACITY);

/// Each bound a client can reach, as counted (`Stats::limits_hit`) and named in metrics
/// (`midge_limits_hit{limit=...}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// A connection closed because the bytes connections hold before CONNECT passed
    /// `preconnect_bytes_max`.
    PreconnectBytes,
    /// A client's reading held because its unsent output passed its bound.
    OutputBacklog,
    /// A subscription's retained messages not sent: its session had `SCANS_MAX` scans of
    /// the retained store under way.
    RetainedScans,
    /// A subscription refused: its client's filters, or all clients', would hold more than
    /// their bound.
    SubscriptionBytes,
    /// A retained message refused: the retained messages would hold more than their bound.
    RetainedBytes,
    /// A client disconnected: the packet it was sending would, whole, take the broker past
    /// `memory_limit`.
    ReceivingBytes,
    /// A connection's packets left for the next loop turn (`PACKETS_PER_TURN`); counted,
    /// not logged (a busy client of small packets meets it too).
    PacketsPerTurn,
    /// A SUBSCRIBE's or UNSUBSCRIBE's filters left for the next loop turn
    /// (`FILTERS_PER_TURN`); counted, not logged.
    FiltersPerTurn,
    /// Messages for another shard's sessions kept waiting here: that shard had not shown
    /// `UNSETTLED_MAX` of the messages passed to it on its disk (its disk failing).
    UnsettledMessages,
}

/// Messages one shard may have passed to another, with persistence, that the other has not
/// shown taken on its disk: past it, what it would pass there waits in its outbox (the
/// publishers paused, QoS 0 dropped) until that shard's disk takes them. A healthy shard
/// has at most a mailbox and a turn's worth (well under this); one whose disk fails takes
/// them in and shows nothing, and they are kept here until it does (`persist::journal`).
pub const UNSETTLED_MAX: usize = 256 * 1024;

impl Limit {
    pub const ALL: [Limit; 9] = [
        Limit::PreconnectBytes,
        Limit::OutputBacklog,
        Limit::RetainedScans,
        Limit::SubscriptionBytes,
        Limit::RetainedBytes,
        Limit::ReceivingBytes,
        Limit::PacketsPerTurn,
        Limit::FiltersPerTurn,
        Limit::UnsettledMessages,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Limit::PreconnectBytes => "preconnect_bytes",
            Limit::OutputBacklog => "output_backlog",
            Limit::RetainedScans => "retained_scans",
            Limit::SubscriptionBytes => "subscription_bytes",
            Limit::RetainedBytes => "retained_bytes",
            Limit::ReceivingBytes => "receiving_bytes",
            Limit::PacketsPerTurn => "packets_per_turn",
            Limit::FiltersPerTurn => "filters_per_turn",
            Limit::UnsettledMessages => "unsettled_messages",
        }
    }
}
