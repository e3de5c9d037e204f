//! Connecting to NATS as the cluster options say: several servers for failover, a user
//! and password, a token or a `.creds` file, TLS with a CA and a client certificate.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_nats::{ConnectOptions, Event, ServerAddr};

use super::link::SUBSCRIPTION_CAPACITY;
use super::Cluster;
use crate::config::cluster::{ClusterAuth, ClusterSettings};

/// Messages the client queues for the server while it is away; past this, publishing
/// waits (on the link's thread only: the shards' queue fills and they drop and count).
const CLIENT_CAPACITY: usize = 8192;

/// The servers `settings` name, each checked.
pub fn servers(settings: &ClusterSettings) -> Result<Vec<ServerAddr>, String> {
    (settings.urls.iter())
        .map(|url| {
            url.parse::<ServerAddr>()
                .map_err(|e| format!("cluster_nats_url {url}: {e}"))
        })
        .collect()
}

/// The client's options as the settings say; an error names what cannot be used (a
/// credentials file that cannot be read or parsed).
pub(super) fn options(cluster: &Arc<Cluster>) -> Result<ConnectOptions, String> {
    let settings = &cluster.settings;
    let mut options = match settings.auth() {
        ClusterAuth::None => ConnectOptions::new(),
        ClusterAuth::UserPassword(user, password) => {
            ConnectOptions::with_user_and_password(user, password)
        }
        ClusterAuth::Token(token) => ConnectOptions::with_token(token),
        ClusterAuth::Creds(path) => std::fs::read_to_string(&path)
            .and_then(|creds| ConnectOptions::with_credentials(&creds))
            .map_err(|e| format!("cluster_nats_creds {}: {e}", path.display()))?,
    };
    if let Some(ca) = &settings.cafile {
        options = options.add_root_certificates(ca.clone()).require_tls(true);
    }
    if let (Some(cert), Some(key)) = (&settings.certfile, &settings.keyfile) {
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    let events = cluster.clone();
    Ok(options
        .name(format!("midge {}", cluster.node_id))
        // A node never gets back what it published.
        .no_echo()
        .retry_on_initial_connect()
        .max_reconnects(None)
        .subscription_capacity(SUBSCRIPTION_CAPACITY)
        .client_capacity(CLIENT_CAPACITY)
        .connection_timeout(Duration::from_secs(5))
        .event_callback(move |event| {
            let cluster = events.clone();
            async move { cluster.on_event(&event) }
        }))
}

impl Cluster {
    fn on_event(&self, event: &Event) {
        let stats = &self.stats;
        match event {
            Event::Connected => {
                stats.connected.store(true, Ordering::Relaxed);
                log::info!(target: "information", "Cluster: connected to NATS as node {}.", self.node_id);
            }
            Event::Disconnected => {
                stats.connected.store(false, Ordering::Relaxed);
                log::warn!("Warning: cluster: disconnected from NATS; reconnecting.");
            }
            Event::SlowConsumer(_) => {
                stats.slow_consumer.fetch_add(1, Ordering::Relaxed);
            }
            other => log::info!(target: "information", "Cluster: NATS: {other}."),
        }
    }
}
