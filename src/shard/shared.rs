//! What every shard shares: the settings, the subscription trie, the retained store, the
//! client id registry, the mailboxes, the clock and the counters.

use crate::limits::MAILBOX_CAPACITY;
use crossbeam_channel::Receiver;
use crossbeam_utils::CachePadded;
use hashbrown::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::{clock, io, Stats};
use crate::config::Config;
use crate::retain::RetainStore;
use crate::router::{Mailboxes, ShardMsg};
use crate::topic::{SessionId, SubscriptionTree, TreeWriter};

/// SIGHUPs counted by their handler and reloads counted by the thread that applies them.
#[derive(Debug, Default)]
pub struct ReloadSignals {
    /// SIGHUPs whose handler has run (an atomic add: async-signal-safe).
    pub taken: AtomicU64,
    /// The value of `taken` read by the reloading thread before a reload it has since
    /// applied (or given up on).
    pub applied: AtomicU64,
}

impl ReloadSignals {
    /// A taken SIGHUP's reload is not applied yet.
    pub fn pending(&self) -> bool {
        self.applied.load(Ordering::Acquire) < self.taken.load(Ordering::Acquire)
    }
}

/// What every shard shares.
pub struct Shared {
    /// The settings now; replaced on reload (SIGHUP), when each shard is told and takes the
    /// new ones at the start of its next turn (`new_config`).
    pub config: arc_swap::ArcSwap<Config>,
    /// Per shard: whether the settings changed since it last took them.
    config_changed: Box<[AtomicBool]>,
    /// SIGHUPs taken and reloads applied: while a taken signal's reload is not applied,
    /// shards hold what they read, so that a client that connects after the signal is
    /// judged by the new settings, as in Mosquitto, whose one loop handles the signal
    /// before reading on.
    pub reload_signals: Arc<ReloadSignals>,
    /// The configured listener of each listening socket (a listener may have several
    /// addresses), by the socket's index in the backend.
    pub listener_of_socket: Vec<usize>,
    /// Connections open now, per configured listener (for its max_connections).
    pub listener_connections: Box<[std::sync::atomic::AtomicUsize]>,
    pub trie: Arc<SubscriptionTree>,
    pub trie_writer: Mutex<TreeWriter>,
    /// Ended sessions whose shared subscriptions are still leaving the trie, a slice a
    /// turn (`trie_ops::sweep_trie`): a share group's pick passes them over, as a member
    /// gone at once would be. Empty but for those few turns; read once a routed message.
    pub leaving_groups: arc_swap::ArcSwap<hashbrown::HashSet<SessionId>>,
    /// At least the number of sessions in `leaving_groups` (raised before they go in,
    /// lowered after they are out), so that routing reads the set only when it may hold
    /// one: most of the time it is empty, and routing is the hot path.
    pub leaving_count: CachePadded<AtomicUsize>,
    pub retained: Mutex<RetainStore>,
    /// Each client id's latest claim: the shard of the connection that connected last with
    /// it (where the session is or is going), and the claim's number (increasing per client
    /// id), which orders racing connections: the latest claim wins (`shard/handover/`).
    pub registry: Mutex<HashMap<Arc<str>, Claim>>,
    pub mailboxes: Arc<Mailboxes>,
    pub next_session: AtomicU64,
    /// The next claim number (`Claim`): increasing over every client id, and continued
    /// from the persisted sessions' after a restart.
    pub next_claim: AtomicU64,
    /// Connections open now, over all shards.
    pub connections: std::sync::atomic::AtomicUsize,
    /// Enhanced authentication methods (MQTT 5.0), by name.
    pub auth_methods: Vec<Arc<dyn crate::auth::AuthMethod>>,
    pub shutdown: AtomicBool,
    /// With persistence, by (receiving shard, sending shard): the number of the last
    /// message from the sender that the receiver has on disk (`shard/crossing/transit.rs`).
    pub durable_from: PairNumbers,
    /// With persistence, by (sending shard, receiving shard): the number of the last
    /// message the sender passed to the receiver whose record is on the sender's disk
    /// (`shard/crossing/transit.rs`).
    pub forwards_committed: PairNumbers,
    /// Journal compactions asked for (SIGUSR1): a shard that has done fewer does one.
    pub compactions_asked: AtomicU64,
    /// With persistence and more than one shard: at least the `PublishOrder` number of every
    /// message published on a connection that has closed, and of every will. A shard
    /// raises it before it lets another shard have the client (`Shard::mark_published`,
    /// when a socket closes and when a will goes); a shard accepting a connection counts on
    /// from past it, so a client's messages are numbered in the order it sent them
    /// whichever shards its connections landed on.
    pub published_mark: AtomicU64,
    /// Where shards meet at shutdown with persistence (`Shard::deliver_in_transit`).
    pub shutdown_barrier: std::sync::Barrier,
    /// When the broker started (`$SYS/broker/uptime`).
    pub started: Instant,
    /// One set of counters per shard, each on its own cache line: a shard counts without
    /// contending with the others; readers add them up (`total_stats`).
    pub stats: Box<[CachePadded<Stats>]>,
    /// Where time comes from (the system's clock, or a simulation's).
    pub clock: Arc<dyn clock::Clock>,
    /// Bytes each shard's connections have waiting to be written (for `memory_limit`),
    /// published by the shard at the end of each turn.
    pub write_queued: Box<[CachePadded<std::sync::atomic::AtomicUsize>]>,
    /// Bytes held by connections whose CONNECT is not accepted yet, over all shards (bounded
    /// by `limits::preconnect_bytes_max`; `shard/holding.rs`).
    pub preconnect_bytes: CachePadded<std::sync::atomic::AtomicUsize>,
    /// Bytes of buffers holding packets partly received from connected clients, over all
    /// shards (a buffer of `limits::PARTIAL_PACKET_UNCOUNTED_BYTES` or less is not counted,
    /// a larger one is, all of it; `shard/receiving.rs`), and of SUBSCRIBEs and
    /// UNSUBSCRIBEs waiting for later turns (`shard/subscribing.rs`).
    pub receiving_bytes: CachePadded<std::sync::atomic::AtomicUsize>,
    /// What subscriptions hold beyond what their count bounds, over every session (each
    /// session's share goes back when it ends; `session::filter_cost`).
    pub filter_bytes: Arc<std::sync::atomic::AtomicUsize>,
    /// What the retained messages hold (`RetainStore::bytes`), as of its last change.
    pub retained_bytes: std::sync::atomic::AtomicUsize,
    /// Per configured bridge (`Config::bridges`), whether its connection is up: set by the
    /// shard that runs it, read by the metrics.
    pub bridges_up: Box<[AtomicBool]>,
    /// The node's part of a cluster on NATS (`cluster_nats_url`), once it is started.
    pub cluster: std::sync::OnceLock<Arc<crate::cluster::Cluster>>,
}

/// A client id's latest claim (see `Shared::registry`): the shard of the connection that
/// made it, and its number. One word, so that a registry entry takes 24 bytes, not 32: the
/// shard in the low 16 bits (shards are at most `SHARDS_MAX`), the number in the high 48
/// (2.8 x 10^14 connects: about nine years at a million a second, beyond what the registry's
/// lock lets through).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Claim(u64);

impl Claim {
    const SHARD_BITS: u32 = 16;

    pub fn new(shard: usize, number: u64) -> Claim {
        debug_assert!(shard < 1 << Self::SHARD_BITS && number < 1 << (64 - Self::SHARD_BITS));
        Claim(number << Self::SHARD_BITS | shard as u64)
    }

    pub fn shard(self) -> usize {
        (self.0 & ((1 << Self::SHARD_BITS) - 1)) as usize
    }

    pub fn number(self) -> u64 {
        self.0 >> Self::SHARD_BITS
    }
}

impl std::fmt::Debug for Claim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        (f.debug_struct("Claim"))
            .field("shard", &self.shard())
            .field("number", &self.number())
            .finish()
    }
}

impl Shared {
    /// Bytes kept for clients beyond what waits to be written to them: subscriptions,
    /// retained messages, partial CONNECTs and other partial packets. Within `memory_limit` with what waits.
    pub fn kept_bytes(&self) -> usize {
        self.filter_bytes.load(Ordering::Relaxed)
            + self.retained_bytes.load(Ordering::Relaxed)
            + self.preconnect_bytes.load(Ordering::Relaxed)
            + self.receiving_bytes.load(Ordering::Relaxed)
    }

    /// The state of a broker of one shard per waker, whose listening sockets belong to the
    /// configured listeners `listener_of_socket`; returns each shard's mailbox receiver.
    pub fn new(
        config: Config,
        wakers: Vec<Arc<dyn io::Waker>>,
        listener_of_socket: Vec<usize>,
        auth_methods: Vec<Arc<dyn crate::auth::AuthMethod>>,
        reload_signals: Arc<ReloadSignals>,
    ) -> (Arc<Shared>, Vec<Receiver<ShardMsg>>) {
        Shared::build(
            config,
            wakers,
            listener_of_socket,
            auth_methods,
            Arc::new(clock::SystemClock),
            reload_signals,
        )
    }

    /// As `new`, with time from `clock`.
    pub fn with_clock(
        config: Config,
        wakers: Vec<Arc<dyn io::Waker>>,
        listener_of_socket: Vec<usize>,
        auth_methods: Vec<Arc<dyn crate::auth::AuthMethod>>,
        clock: Arc<dyn clock::Clock>,
    ) -> (Arc<Shared>, Vec<Receiver<ShardMsg>>) {
        let never_signalled = Arc::default();
        Shared::build(
            config,
            wakers,
            listener_of_socket,
            auth_methods,
            clock,
            never_signalled,
        )
    }

    fn build(
        config: Config,
        wakers: Vec<Arc<dyn io::Waker>>,
        listener_of_socket: Vec<usize>,
        auth_methods: Vec<Arc<dyn crate::auth::AuthMethod>>,
        clock: Arc<dyn clock::Clock>,
        reload_signals: Arc<ReloadSignals>,
    ) -> (Arc<Shared>, Vec<Receiver<ShardMsg>>) {
        let shards = wakers.len();
        let (mailboxes, receivers) = Mailboxes::new(MAILBOX_CAPACITY, wakers);
        let trie = SubscriptionTree::new();
        let shared = Arc::new(Shared {
            trie_writer: Mutex::new(TreeWriter::new(trie.clone())),
            leaving_groups: Default::default(),
            leaving_count: CachePadded::new(AtomicUsize::new(0)),
            trie,
            retained: Mutex::new(RetainStore::default()),
            registry: Mutex::new(Default::default()),
            mailboxes,
            next_session: AtomicU64::new(1),
            next_claim: AtomicU64::new(0),
            connections: Default::default(),
            auth_methods,
            shutdown: AtomicBool::new(false),
            shutdown_barrier: std::sync::Barrier::new(shards),
            compactions_asked: AtomicU64::new(0),
            published_mark: AtomicU64::new(0),
            durable_from: PairNumbers::new(shards),
            forwards_committed: PairNumbers::new(shards),
            started: clock.now(),
            clock,
            stats: (0..shards).map(|_| Default::default()).collect(),
            write_queued: (0..shards).map(|_| Default::default()).collect(),
            preconnect_bytes: Default::default(),
            receiving_bytes: Default::default(),
            filter_bytes: Default::default(),
            retained_bytes: Default::default(),
            listener_of_socket,
            cluster: std::sync::OnceLock::new(),
            bridges_up: config
                .bridges
                .iter()
                .map(|_| AtomicBool::new(false))
                .collect(),
            listener_connections: config
                .listeners
                .iter()
                .map(|_| Default::default())
                .collect(),
            config_changed: (0..shards).map(|_| AtomicBool::new(false)).collect(),
            reload_signals,
            config: arc_swap::ArcSwap::from_pointee(config),
        });
        (shared, receivers)
    }

    /// Replaces the settings; every shard takes them at its next turn and checks its
    /// clients against the new security settings.
    pub fn reload(&self, config: Config) {
        self.config.store(Arc::new(config));
        for shard in 0..self.mailboxes.shards() {
            self.config_changed[shard].store(true, Ordering::Release);
            self.mailboxes.wake(shard);
        }
    }

    /// The settings, if they changed since `shard` last took them (read every turn: one
    /// load of a flag that changes only on a reload).
    pub fn new_config(&self, shard: usize) -> Option<Arc<Config>> {
        let changed = &self.config_changed[shard];
        // Cleared before the load: a reload after it is seen next turn.
        (changed.load(Ordering::Acquire) && changed.swap(false, Ordering::AcqRel))
            .then(|| self.config.load_full())
    }

    /// `client_id`'s latest claim (its latest connection, on any shard).
    pub fn latest_claim(&self, client_id: &str) -> Option<Claim> {
        let registry = self.registry.lock().expect("registry lock");
        registry.get(client_id).copied()
    }

    /// Forgets `client_id`'s claim if `shard` still holds it (no other shard has claimed the
    /// id since).
    pub fn release_claim(&self, client_id: &str, shard: usize) {
        let mut registry = self.registry.lock().expect("registry lock");
        if registry.get(client_id).map(|c| c.shard()) == Some(shard) {
            registry.remove(client_id);
        }
    }

    pub fn new_session_id(&self) -> SessionId {
        SessionId::new(self.next_session.fetch_add(1, Ordering::Relaxed))
    }
}

/// A number per ordered pair of shards, each pair's on its own, named by the pair rather
/// than by an index computed at every use.
pub struct PairNumbers {
    shards: usize,
    numbers: Box<[AtomicU64]>,
}

impl PairNumbers {
    fn new(shards: usize) -> PairNumbers {
        PairNumbers {
            shards,
            numbers: (0..shards * shards).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// The number of the pair (`first`, `second`); what the two mean is the field's.
    pub fn of(&self, first: usize, second: usize) -> &AtomicU64 {
        assert!(first < self.shards && second < self.shards);
        &self.numbers[first * self.shards + second]
    }
}

#[cfg(test)]
mod tests {
    use super::{Claim, PairNumbers};
    use std::sync::atomic::Ordering;

    #[test]
    fn each_ordered_pair_of_shards_has_its_own_number() {
        let pairs = PairNumbers::new(3);
        for a in 0..3 {
            for b in 0..3 {
                pairs.of(a, b).store((a * 10 + b) as u64, Ordering::Relaxed);
            }
        }
        for a in 0..3 {
            for b in 0..3 {
                assert_eq!(pairs.of(a, b).load(Ordering::Relaxed), (a * 10 + b) as u64);
            }
        }
    }
    use crate::limits::SHARDS_MAX;

    #[test]
    fn a_claim_keeps_its_shard_and_number_in_one_word() {
        assert_eq!(std::mem::size_of::<Claim>(), 8);
        let largest = (1 << 48) - 1;
        for (shard, number) in [(0, 0), (SHARDS_MAX - 1, 7), (3, largest), (65_535, 1 << 40)] {
            let claim = Claim::new(shard, number);
            assert_eq!((claim.shard(), claim.number()), (shard, number));
        }
        assert_ne!(Claim::new(1, 2), Claim::new(2, 1));
    }
}
