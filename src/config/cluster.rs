//! The cluster's settings (`cluster_*`, midge's own options; `cluster/`).

use std::path::PathBuf;

/// How the node proves itself to NATS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClusterAuth {
    None,
    UserPassword(String, String),
    Token(String),
    /// A `.creds` file (a user JWT and its NKey seed).
    Creds(PathBuf),
}

/// NATS subscriptions a node holds for its clients' filters by default: each costs the NATS
/// client about 6.5 KB (async-nats 0.49: a channel and its first block of 32 messages;
/// measured), so this many cost about 65 MB at most.
pub const DEFAULT_MAX_SUBSCRIPTIONS: usize = 10_000;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterSettings {
    /// `cluster_nats_url`, one or more (failover): empty, no cluster.
    pub urls: Vec<String>,
    /// `cluster_name`: nodes of one cluster share it (subjects start with
    /// `midge.<name>`), so that several clusters can share one NATS.
    pub name: String,
    /// `cluster_node_id`: this node's name in the cluster (default: the host name).
    pub node_id: Option<String>,
    pub user: Option<String>,
    pub password: Option<String>,
    pub token: Option<String>,
    pub creds: Option<PathBuf>,
    /// TLS to NATS: the CA that signed the servers' certificates, and this node's own.
    pub cafile: Option<PathBuf>,
    pub certfile: Option<PathBuf>,
    pub keyfile: Option<PathBuf>,
    /// `cluster_max_subscriptions`: the NATS subscriptions the node holds for its clients'
    /// filters at most; past it, it takes every message of the cluster instead (`link.rs`).
    pub max_subscriptions: usize,
    /// `cluster_retained`: `jetstream` (the default), the cluster's retained messages kept
    /// once in a JetStream stream; `node`, each node keeps those published on it.
    pub retained_in_jetstream: bool,
    /// `cluster_sessions`: `jetstream` (the default), at most one live connection per
    /// client id in the cluster, its session following it to the node it connects to;
    /// `node`, each node decides alone for its own clients.
    pub sessions_in_jetstream: bool,
    /// `cluster_messages`: `jetstream` (the default), QoS 1 and 2 messages between nodes
    /// go through a JetStream stream, their publisher acknowledged once it has them;
    /// `core`, through core NATS alone, at most once between nodes (`cluster/stored.rs`).
    pub messages_in_jetstream: bool,
    /// `cluster_messages_max_age` and `cluster_messages_max_bytes`: how long, and up to
    /// how many bytes, that stream keeps them.
    pub messages_max_age: std::time::Duration,
    pub messages_max_bytes: u64,
    /// `cluster_replicas`: how many NATS servers keep each JetStream stream the cluster
    /// makes (1 to 5; 3 for a three-server NATS cluster).
    pub replicas: usize,
    /// `cluster_retained_sweep_interval`: how often a node deletes removals and expired
    /// messages from the retained messages' stream.
    pub sweep_every: std::time::Duration,
    /// `cluster_node_timeout`: how long a node's heartbeats may be missing before the
    /// others take it for gone and take over its sessions and wills.
    pub node_timeout: std::time::Duration,
    /// The file and line of the last cluster option read, for errors about them together.
    pub origin: Option<(PathBuf, usize)>,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        ClusterSettings {
            urls: Vec::new(),
            name: "midge".into(),
            node_id: None,
            user: None,
            password: None,
            token: None,
            creds: None,
            cafile: None,
            certfile: None,
            keyfile: None,
            max_subscriptions: DEFAULT_MAX_SUBSCRIPTIONS,
            retained_in_jetstream: true,
            sessions_in_jetstream: true,
            messages_in_jetstream: true,
            messages_max_age: std::time::Duration::from_secs(3600),
            messages_max_bytes: 1 << 30,
            replicas: 1,
            sweep_every: std::time::Duration::from_secs(60),
            node_timeout: std::time::Duration::from_secs(10),
            origin: None,
        }
    }
}

impl ClusterSettings {
    /// Whether the node is part of a cluster.
    pub fn enabled(&self) -> bool {
        !self.urls.is_empty()
    }

    /// The node's name: `cluster_node_id`, else the host name.
    pub fn node_id(&self) -> String {
        (self.node_id.clone())
            .or_else(|| crate::os::host_name().ok())
            .unwrap_or_else(|| "midge".into())
    }

    /// How the node authenticates (checked by `check`: one way at most).
    pub fn auth(&self) -> ClusterAuth {
        match (&self.user, &self.password, &self.token, &self.creds) {
            (Some(user), Some(password), _, _) => {
                ClusterAuth::UserPassword(user.clone(), password.clone())
            }
            (_, _, Some(token), _) => ClusterAuth::Token(token.clone()),
            (_, _, _, Some(creds)) => ClusterAuth::Creds(creds.clone()),
            _ => ClusterAuth::None,
        }
    }

    /// Whether `other` says the same (wherever it is said).
    pub fn same_as(&self, other: &ClusterSettings) -> bool {
        let unplaced = |s: &ClusterSettings| ClusterSettings {
            origin: None,
            ..s.clone()
        };
        unplaced(self) == unplaced(other)
    }

    /// What is wrong with the settings together, if anything.
    pub fn check(&self) -> Result<(), String> {
        let any = self.origin.is_some();
        if any && !self.enabled() {
            return Err("cluster options without cluster_nats_url".into());
        }
        if self.user.is_some() != self.password.is_some() {
            return Err("cluster_nats_user and cluster_nats_password go together".into());
        }
        let ways = [
            self.user.is_some(),
            self.token.is_some(),
            self.creds.is_some(),
        ];
        if ways.iter().filter(|&&w| w).count() > 1 {
            return Err(
                "one of cluster_nats_user, cluster_nats_token and cluster_nats_creds at most"
                    .into(),
            );
        }
        if self.certfile.is_some() != self.keyfile.is_some() {
            return Err("cluster_nats_certfile and cluster_nats_keyfile go together".into());
        }
        Ok(())
    }
}
