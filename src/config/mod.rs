//! The broker's settings: Mosquitto 2.0's option names and defaults, read from a
//! `mosquitto.conf` file by `parse.rs`. What SIGHUP may change is marked on each field;
//! listeners and threads stay as started.

pub mod bridge;
pub mod cluster;
mod parse;
pub use parse::option_listing;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::auth::acl::Acl;
use crate::auth::password::PasswordFile;
use crate::logging::LogSettings;

/// Which IP family a listener without a bind address uses (`socket_domain`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SocketDomain {
    Ipv4,
    Ipv6,
}

/// Who may connect and what they may do: global, or per listener with
/// `per_listener_settings true`. Reloaded on SIGHUP.
#[derive(Clone, Debug)]
pub struct Security {
    /// `allow_anonymous`; unset means true in local only mode and false once a listener is
    /// configured (Mosquitto 2).
    pub allow_anonymous: Option<bool>,
    pub allow_zero_length_clientid: bool,
    pub auto_id_prefix: String,
    /// `password_file`: users and password hashes (Mosquitto's format).
    pub password_file: Option<Arc<PasswordFile>>,
    /// `acl_file`: who may read and write which topics.
    pub acl: Option<Arc<Acl>>,
    /// `acl_strict_subscribe` (midge's own): a SUBSCRIBE is refused unless everything its
    /// filter could match is readable. Off, as in Mosquitto: any filter is granted, and
    /// only what the client may read is delivered.
    pub acl_strict_subscribe: bool,
}

impl Default for Security {
    fn default() -> Self {
        Security {
            allow_anonymous: None,
            allow_zero_length_clientid: true,
            auto_id_prefix: "auto-".to_string(),
            password_file: None,
            acl: None,
            acl_strict_subscribe: false,
        }
    }
}

impl Security {
    pub fn anonymous_allowed(&self) -> bool {
        self.allow_anonymous.unwrap_or(true)
    }

    /// Whether a user name and password let a client in, as Mosquitto 2 decides: with a
    /// `password_file`, a user name must be in it with this password (none, or an empty
    /// one, matches no entry), and a client without a user name needs `allow_anonymous`;
    /// with nothing to check a password against, only `allow_anonymous` lets anyone in,
    /// user name or not (a client never gets in because a check had nothing to check).
    pub fn lets_in(&self, user: Option<&str>, password: Option<&[u8]>) -> bool {
        match (&self.password_file, user) {
            (Some(passwords), Some(user)) => match password {
                Some(password) if !password.is_empty() => passwords.check(user, password),
                _ => false,
            },
            _ => self.anonymous_allowed(),
        }
    }
}

/// One `listener` (or the default listener of `port`/`bind_address`, or the loopback
/// listener of local only mode). Not reloaded, except its `security`.
#[derive(Clone, Debug)]
pub struct Listener {
    /// 0 picks a free port (the same one for every address of the listener).
    pub port: u16,
    /// An address or host name; unset: every address.
    pub bind: Option<String>,
    pub socket_domain: Option<SocketDomain>,
    /// `bind_interface`: only connections arriving on this network interface.
    pub bind_interface: Option<String>,
    /// Local only mode: 127.0.0.1 and ::1.
    pub loopback: bool,
    /// `max_connections`: clients connected to this listener at once (None: no limit).
    pub connections_max: Option<usize>,
    /// `mount_point`: prefixed to the topics of this listener's clients, hidden from them.
    pub mount_point: Option<String>,
    /// `max_topic_alias`: topic aliases a 5.0 client may set (its Topic Alias Maximum).
    pub topic_alias_max: u16,
    /// `max_qos` (or `maximum_qos`): the highest QoS this listener's clients may use and
    /// are sent (5.0 Maximum QoS in CONNACK).
    pub max_qos: crate::codec::QoS,
    /// `use_username_as_clientid`: the user name replaces the client id.
    pub use_username_as_clientid: bool,
    /// Why this listener is not opened: a kind midge does not serve, with a warning rather
    /// than a refusal to start.
    pub not_opened: Option<&'static str>,
    /// `listener 0 PATH`: a Unix socket at PATH instead of a TCP port.
    pub unix_socket: Option<String>,
    /// Used when `per_listener_settings` is true.
    pub security: Security,
    /// `protocol websockets`: MQTT over WebSockets (`ws/`), over TLS too with `certfile`.
    pub websockets: bool,
    /// TLS options as given (`certfile`, `keyfile`, `cafile`, ...).
    pub tls_settings: crate::tls::TlsSettings,
    /// Made from `tls_settings` once the file is read: a TLS listener.
    pub tls: Option<crate::tls::TlsListener>,
}

impl Default for Listener {
    fn default() -> Self {
        Listener {
            port: 1883,
            bind: None,
            socket_domain: None,
            bind_interface: None,
            loopback: false,
            connections_max: None,
            mount_point: None,
            topic_alias_max: 10,
            max_qos: crate::codec::QoS::ExactlyOnce,
            use_username_as_clientid: false,
            not_opened: None,
            unix_socket: None,
            security: Security::default(),
            websockets: false,
            tls_settings: Default::default(),
            tls: None,
        }
    }
}

impl Listener {
    /// A listener on one address.
    pub fn on(addr: SocketAddr) -> Listener {
        Listener {
            port: addr.port(),
            bind: Some(addr.ip().to_string()),
            ..Listener::default()
        }
    }

    /// The addresses to bind (host names resolved). IPv4 comes first.
    pub fn addrs(&self) -> std::io::Result<Vec<SocketAddr>> {
        let port = self.port;
        if self.loopback {
            return Ok(vec![
                SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port),
                SocketAddr::new(Ipv6Addr::LOCALHOST.into(), port),
            ]);
        }
        let mut addrs: Vec<SocketAddr> = match &self.bind {
            Some(host) => match host.parse::<IpAddr>() {
                Ok(ip) => vec![SocketAddr::new(ip, port)],
                Err(_) => (host.as_str(), port).to_socket_addrs()?.collect(),
            },
            None => vec![
                SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port),
                SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port),
            ],
        };
        match self.socket_domain {
            Some(SocketDomain::Ipv4) => addrs.retain(SocketAddr::is_ipv4),
            Some(SocketDomain::Ipv6) => addrs.retain(SocketAddr::is_ipv6),
            None => {}
        }
        addrs.sort_by_key(|a| a.is_ipv6());
        addrs.dedup();
        if addrs.is_empty() {
            return Err(std::io::Error::other(format!(
                "listener on port {port}: no address of the configured family"
            )));
        }
        Ok(addrs)
    }
}

/// `io_backend` (midge's own) and `--io`: how shards do their I/O.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoBackend {
    /// io_uring where the kernel offers what it needs, else epoll (logged, with why).
    Auto,
    /// io_uring, or the broker does not start.
    Uring,
    Epoll,
}

impl IoBackend {
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "auto" => Some(IoBackend::Auto),
            "uring" | "io_uring" => Some(IoBackend::Uring),
            "epoll" => Some(IoBackend::Epoll),
            _ => None,
        }
    }
}

/// `cpu_affinity` (midge's own): pin shard threads to cores.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CpuAffinity {
    /// Shard N on core N (modulo the cores), the default.
    Auto,
    /// Not pinned.
    Off,
    /// Shard N on the Nth core of this list (modulo its length).
    Cores(Vec<usize>),
}

/// Listeners one configuration may define: a connection records its listener's index in
/// two bytes.
pub const LISTENERS_MAX: usize = u16::MAX as usize;

/// A listener's index as connections and sessions keep it (two bytes). The configuration
/// has at most `LISTENERS_MAX`, so every index fits.
pub fn listener_index(listener: usize) -> u16 {
    u16::try_from(listener).unwrap_or(u16::MAX)
}

#[derive(Clone, Debug)]
pub struct Config {
    pub listeners: Vec<Listener>,
    /// Settings for the listeners `-p` makes (local only mode): the file's listener options.
    pub listener_defaults: Listener,
    /// Started with no listener configured: loopback only, as Mosquitto 2's local only mode.
    pub local_only: bool,
    /// `per_listener_settings`: each listener has its own `Security`.
    pub per_listener_settings: bool,
    /// Security settings when they are not per listener.
    pub security: Security,
    /// Shards; 0 means one per core. Not reloaded.
    pub threads: usize,
    pub cpu_affinity: CpuAffinity,
    /// Not reloaded.
    pub io_backend: IoBackend,
    /// `io_batch_wait_us` (midge's own, io_uring only): once a completion is in, a shard's
    /// wait goes on up to this long gathering more, so that one turn handles several
    /// messages: less CPU per message for up to this much more latency. Not reloaded.
    pub io_batch_wait_us: u32,
    /// `max_inflight_messages`: QoS 1/2 messages sent to a client and not yet acknowledged.
    pub inflight_max: usize,
    /// `max_queued_messages`: QoS 1/2 messages waiting behind the inflight window.
    pub queued_max: usize,
    /// `memory_limit`: bytes waiting to be written to clients, over all of them. Past it,
    /// QoS 0 messages to clients that are not keeping up are dropped (counted), and those
    /// clients are not read until they drain. A quarter of it (at most
    /// `limits::PRECONNECT_BYTES_MAX`) bounds what connections hold before CONNECT. Unset or
    /// 0 (Mosquitto: no limit) is a quarter of the machine's memory: midge bounds it anyway.
    pub memory_limit: usize,
    /// `max_queued_bytes`: payload bytes waiting behind the inflight window (0: no limit
    /// beyond `max_queued_messages`).
    pub queued_bytes_max: usize,
    /// `max_packet_size`: largest packet accepted from a client, in bytes (fixed header
    /// included). Mosquitto's default is the protocol's limit.
    pub packet_size_max: usize,
    /// `message_size_limit`: largest payload of a PUBLISH or a will, in bytes (0: none).
    /// A PUBLISH over it is dropped and answered; a CONNECT whose will is over it refused.
    pub message_size_limit: usize,
    /// `retain_available`: false refuses retained messages (5.0: Retain Available 0 in
    /// CONNACK, and DISCONNECT 0x9A for a PUBLISH with RETAIN).
    pub retain_available: bool,
    /// `check_retain_source`: a retained message goes to a new subscriber only while the
    /// client that published it may still publish to its topic (ACL, after reloads too).
    pub check_retain_source: bool,
    /// `upgrade_outgoing_qos`: messages go out at the subscription's QoS, even above the
    /// QoS they were published with (Mosquitto's option; outside the spec's rule).
    pub upgrade_outgoing_qos: bool,
    /// `max_keepalive`: longest keep alive granted, seconds.
    pub keepalive_max_s: u16,
    /// `persistent_client_expiration`: how long a session that would never expire
    /// (3.1.1 clean session false, 5.0 expiry 0xFFFFFFFF) is kept while its client is away.
    pub persistent_client_expiration: Option<Duration>,
    /// Bytes of encoded packets waiting for one client's socket before QoS 0 messages to it
    /// are dropped (and counted) and it is not read until they drain (`shard/holding.rs`).
    pub client_write_max: usize,
    pub connection_messages: bool,
    /// Logging: destinations, types, timestamps. Reloaded on SIGHUP.
    pub log: LogSettings,
    /// Seconds a new connection has to send CONNECT before it is closed.
    pub connect_timeout_s: u64,
    /// `client_idle_timeout` (midge's own; 0: off): a client that asked for no keepalive
    /// (0) is closed after this many seconds without sending anything, so that one whose
    /// peer vanished without a FIN does not hold its connection for ever.
    pub client_idle_timeout_s: u64,
    /// `websockets_headers_size`: the largest WebSocket upgrade request, bytes (Mosquitto:
    /// 0 or unset means 1024).
    pub websockets_headers_size: usize,
    /// midge's `response_topic_prefix`: a 5.0 client that asks for Response Information is
    /// told `{prefix}/{client id}` as the base of its response topics. Unset: none is given.
    pub response_topic_prefix: Option<String>,
    /// The bridges (`connection` sections), read and checked.
    pub bridges: Vec<bridge::Bridge>,
    /// midge's `cluster_*` options: a node of a cluster on NATS (`cluster/`).
    pub cluster: cluster::ClusterSettings,
    /// `clientid_prefixes`: only client ids starting with this may connect.
    pub clientid_prefixes: Option<String>,
    /// Subscriptions one session may hold; more are refused (SUBACK failure, counted).
    pub subscriptions_per_client_max: usize,
    /// `pid_file`: written at start, removed at exit.
    pub pid_file: Option<PathBuf>,
    /// `user`: when started as root, run as this user after opening the listeners (`root`:
    /// stay root). The `midge` command defaults it to `mosquitto`, as Mosquitto does.
    pub user: Option<String>,
    /// `sys_interval`: seconds between `$SYS` updates.
    pub sys_interval_s: u64,
    /// `metrics_listener ADDRESS:PORT` (midge's own): where Prometheus metrics are served
    /// over HTTP (`/metrics`); off unless set.
    pub metrics_listener: Option<std::net::SocketAddr>,
    /// `persistence`: retained messages and persistent sessions survive a restart.
    pub persistence: bool,
    /// `persistence_location` (a directory) and `persistence_file`: the store is the
    /// directory `<location>/<file>.d` (`persist::directory`).
    pub persistence_location: Option<PathBuf>,
    pub persistence_file: String,
    /// `persistence_on_damage stop|set_aside` (midge's own): a damaged journal stops the
    /// start (the default), or is renamed aside and the broker starts without it.
    pub persistence_on_damage_set_aside: bool,
    /// `persistence_sync` (midge's own): when journal writes reach the disk.
    pub persistence_sync: crate::persist::SyncPolicy,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listeners: Vec::new(),
            listener_defaults: Listener {
                loopback: true,
                ..Listener::default()
            },
            local_only: true,
            per_listener_settings: false,
            security: Security::default(),
            threads: 0,
            cpu_affinity: CpuAffinity::Auto,
            io_backend: IoBackend::Auto,
            io_batch_wait_us: 0,
            inflight_max: 20,
            queued_max: 1000,
            memory_limit: 0,
            queued_bytes_max: 0,
            packet_size_max: 268_435_455 + 5,
            message_size_limit: 0,
            retain_available: true,
            check_retain_source: false,
            upgrade_outgoing_qos: false,
            keepalive_max_s: 65535,
            persistent_client_expiration: None,
            client_write_max: 4 << 20,
            connection_messages: true,
            log: LogSettings::default(),
            connect_timeout_s: 10,
            client_idle_timeout_s: 0,
            websockets_headers_size: 1024,
            subscriptions_per_client_max: 100_000,
            response_topic_prefix: None,
            bridges: Vec::new(),
            cluster: cluster::ClusterSettings::default(),
            clientid_prefixes: None,
            persistence: false,
            persistence_location: None,
            persistence_file: "mosquitto.db".to_string(),
            persistence_sync: crate::persist::SyncPolicy::Always,
            persistence_on_damage_set_aside: false,
            pid_file: None,
            user: None,
            sys_interval_s: 10,
            metrics_listener: None,
        }
    }
}

/// A configuration error, naming the file and line.
#[derive(Debug)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: usize,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            // Not one line's fault (a listener's files, checked once the file is read).
            return write!(f, "{}: {}", self.file.display(), self.message);
        }
        write!(f, "{}:{}: {}", self.file.display(), self.line, self.message)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// The security settings that apply to a client of `listener`.
    pub fn security(&self, listener: usize) -> &Security {
        match self.listeners.get(listener) {
            Some(l) if self.per_listener_settings => &l.security,
            _ => &self.security,
        }
    }

    /// The listener a connection arrived on (the first one if the index is unknown, which
    /// only an in-process caller could cause).
    /// `memory_limit` in force: as set, or a quarter of the machine's memory.
    pub fn write_bytes_max(&self) -> usize {
        if self.memory_limit > 0 {
            return self.memory_limit;
        }
        crate::os::physical_memory().map_or(1 << 30, |bytes| bytes / 4)
    }

    pub fn listener(&self, listener: usize) -> &Listener {
        static FALLBACK: std::sync::OnceLock<Listener> = std::sync::OnceLock::new();
        self.listeners
            .get(listener)
            .unwrap_or_else(|| FALLBACK.get_or_init(Listener::default))
    }

    /// The listeners to open: the configured ones, or loopback on `ports` (default 1883),
    /// Mosquitto's `-p`.
    pub fn listeners_with_ports(&mut self, ports: &[u16]) {
        if !self.listeners.is_empty() && ports.is_empty() {
            return;
        }
        let ports = if ports.is_empty() { &[1883][..] } else { ports };
        for &port in ports {
            self.listeners.push(Listener {
                port,
                loopback: self.local_only,
                ..self.listener_defaults.clone()
            });
        }
    }

    /// The persistence store's directory, if persistence is on.
    pub fn persistence_dir(&self) -> Option<PathBuf> {
        self.persistence.then(|| {
            crate::persist::directory(self.persistence_location.as_ref(), &self.persistence_file)
        })
    }

    /// The persistence store's marker file (`persist::marker`), if persistence is on.
    pub fn persistence_marker(&self) -> Option<PathBuf> {
        self.persistence.then(|| {
            crate::persist::marker(self.persistence_location.as_ref(), &self.persistence_file)
        })
    }

    /// Takes what SIGHUP may change from `new` (a fresh read of the same file): security,
    /// limits, logging. Listeners' addresses and the threads stay; a change to them is named
    /// in the returned warnings.
    pub fn reloaded(&self, mut new: Config) -> (Config, Vec<String>) {
        let mut warnings = Vec::new();
        let same_listeners = new.listeners.len() == self.listeners.len()
            && new.listeners.iter().zip(&self.listeners).all(|(a, b)| {
                a.port == b.port && a.bind == b.bind && a.unix_socket == b.unix_socket
            });
        if !same_listeners && !self.local_only {
            warnings.push("listener changes take effect on restart".to_string());
        }
        let mut listeners = self.listeners.clone();
        if same_listeners {
            for (old, fresh) in listeners.iter_mut().zip(&new.listeners) {
                old.security = fresh.security.clone();
                // Certificates, keys, CAs and CRLs are read again: new connections get the
                // new ones, connected clients keep their sessions. (A file that fails to
                // load failed the whole reload before this point.)
                if old.tls.is_some() == fresh.tls.is_some() {
                    old.tls_settings = fresh.tls_settings.clone();
                    old.tls = fresh.tls.clone();
                } else {
                    warnings.push(format!(
                        "turning TLS on or off for listener {} takes effect on restart",
                        old.port
                    ));
                }
            }
        }
        if new.per_listener_settings != self.per_listener_settings {
            warnings.push("per_listener_settings changes take effect on restart".to_string());
            new.per_listener_settings = self.per_listener_settings;
        }
        if new.bridges != self.bridges {
            // As Mosquitto: bridges are made at start.
            warnings.push("bridge changes take effect on restart".to_string());
            new.bridges = self.bridges.clone();
        }
        if !new.cluster.same_as(&self.cluster) {
            warnings.push("cluster changes take effect on restart".to_string());
        }
        new.cluster = self.cluster.clone();
        new.listeners = listeners;
        new.local_only = self.local_only;
        new.threads = self.threads;
        new.cpu_affinity = self.cpu_affinity.clone();
        new.io_backend = self.io_backend;
        new.io_batch_wait_us = self.io_batch_wait_us;
        if new.metrics_listener != self.metrics_listener {
            warnings.push("metrics_listener changes take effect on restart".to_string());
            new.metrics_listener = self.metrics_listener;
        }
        new.pid_file = self.pid_file.clone();
        new.user = self.user.clone();
        (new, warnings)
    }
}

#[cfg(test)]
mod tests;
