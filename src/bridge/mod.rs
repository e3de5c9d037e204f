//! Bridges (`connection` sections of `mosquitto.conf`): each is an outgoing MQTT client owned
//! by one shard, on that shard's event loop, that appears to the local broker as a session
//! (its local client id): subscribed locally to its `out` and `both` topics, and subscribed
//! on the remote broker to its `in` and `both` topics. What it receives from the remote it
//! publishes locally; what its local session is sent goes to the remote. The PUBLISH flows
//! are the same both ways in MQTT, so the shard's own QoS 1/2 machinery (`session/`) carries
//! them; this module holds what is a bridge's own: when and where to connect, the packets
//! only a client sends, and topic remapping (`topics.rs`). No I/O here: the shard's glue is
//! `shard/bridges/`.

pub mod topics;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::codec::{
    Connect, MqttStr, Properties, ProtocolVersion, QoS, Subscribe, SubscriptionOptions,
    Unsubscribe, Will,
};
use crate::config::bridge::{Bridge, Direction, RestartTimeout, StartType};
use crate::types::{ConnId, SessionId};

/// How long to wait for a primary address again before probing it, while connected to
/// another (`round_robin false`), as Mosquitto does.
pub const PRIMARY_RETRY: Duration = Duration::from_secs(5);

/// What a host name lookup on a helper thread comes back with.
pub type Lookup = Arc<Mutex<Option<std::io::Result<Vec<SocketAddr>>>>>;

/// One bridge on the shard that runs it.
pub struct Link {
    /// Its place in `Config::bridges`.
    pub index: usize,
    pub config: Bridge,
    pub remote_client_id: String,
    pub local_client_id: Arc<str>,
    /// `None` with `notifications false`.
    pub notification_topic: Option<String>,
    /// Its local session (made when the bridge starts).
    pub session: Option<SessionId>,
    pub state: State,
    /// The address tried now (an index into `config.addresses`).
    pub address: usize,
    /// The delay before the next attempt (backoff moves it between base and cap).
    restart_delay: Duration,
    /// The protocol spoken: the configured one, or 3.1.1 once a remote refused 5.0.
    pub version: ProtocolVersion,
    /// Whether the bridge bit is set in CONNECT: `try_private`, until a remote refuses it.
    pub try_private: bool,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Keepalive: when a packet was last sent, and the PINGREQ awaiting its PINGRESP.
    pub last_sent: Instant,
    pub ping_sent: Option<Instant>,
    /// When a message last crossed it (`idle_timeout` of a lazy bridge).
    pub last_message: Instant,
    /// Connected to a later address without `round_robin`: when to probe the first again,
    /// and the probe's connection while it is under way.
    pub primary_retry_at: Option<Instant>,
    pub probe: Option<ConnId>,
    /// The highest QoS and whether retained messages are available, as the remote's
    /// CONNACK says (5.0).
    pub remote_max_qos: QoS,
    pub remote_retain: bool,
    /// The packet id of the "1" notification sent to the remote, until its PUBACK.
    pub notification_id: Option<u16>,
    /// Pseudo-random state for backoff jitter.
    jitter: u64,
}

#[derive(Debug)]
pub enum State {
    /// Not connected; the next attempt is due at `retry_at` (`None`: none is scheduled; a
    /// lazy bridge waits for its threshold, a `once` bridge for nothing).
    Down { retry_at: Option<Instant> },
    /// The address's host name is being looked up on a helper thread.
    Resolving { lookup: Lookup, deadline: Instant },
    /// The TCP (and TLS) connection is being made, or CONNECT was sent and CONNACK is awaited.
    Connecting { conn: ConnId, deadline: Instant },
    /// CONNACK received: packets flow.
    Up { conn: ConnId },
}

impl Link {
    pub fn new(
        index: usize,
        config: Bridge,
        now: Instant,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Link {
        let (remote_client_id, local_client_id) = client_ids(&config);
        let local_client_id: Arc<str> = Arc::from(local_client_id.as_str());
        let notification_topic = config.notifications.then(|| {
            config
                .notification_topic
                .clone()
                .unwrap_or_else(|| format!("$SYS/broker/connection/{remote_client_id}/state"))
        });
        let restart_delay = match config.restart_timeout {
            RestartTimeout::Constant(d) => d,
            RestartTimeout::Backoff { base, .. } => base,
        };
        let clock = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
        let seed =
            clock.map_or(0, |d| d.as_nanos() as u64) ^ (index as u64).wrapping_mul(0x9E37_79B9);
        Link {
            index,
            remote_client_id,
            local_client_id,
            notification_topic,
            session: None,
            state: State::Down { retry_at: None },
            address: 0,
            restart_delay,
            version: config.protocol,
            try_private: config.try_private,
            tls,
            last_sent: now,
            ping_sent: None,
            last_message: now,
            primary_retry_at: None,
            probe: None,
            remote_max_qos: QoS::ExactlyOnce,
            remote_retain: config.outgoing_retain,
            notification_id: None,
            jitter: seed | 1,
            config,
        }
    }

    /// When the bridge first connects: at once, unless it is lazy (it waits for its
    /// threshold).
    pub fn first_attempt(&self, now: Instant) -> Option<Instant> {
        match self.config.start_type {
            StartType::Automatic | StartType::Once => Some(now),
            StartType::Lazy => None,
        }
    }

    /// The connection the bridge has now (being made or up).
    pub fn conn(&self) -> Option<ConnId> {
        match self.state {
            State::Connecting { conn, .. } | State::Up { conn } => Some(conn),
            _ => None,
        }
    }

    pub fn is_up(&self) -> bool {
        matches!(self.state, State::Up { .. })
    }

    /// The address to try now.
    pub fn current_address(&self) -> &(String, u16) {
        &self.config.addresses[self.address % self.config.addresses.len()]
    }

    /// An attempt starts: with backoff, the delay before the next one is drawn now
    /// ("decorrelated jitter": between the base and three times the last delay, at most
    /// the cap), as Mosquitto does.
    pub fn attempt_started(&mut self) {
        if let RestartTimeout::Backoff { base, cap } = self.config.restart_timeout {
            let high = (self.restart_delay * 3).max(base + Duration::from_millis(1));
            let span = (high - base).as_millis() as u64;
            self.restart_delay = (base + Duration::from_millis(self.random() % span)).min(cap);
        }
    }

    /// The connection is up: backoff starts again from its base.
    pub fn connected(&mut self, conn: ConnId, now: Instant) {
        self.state = State::Up { conn };
        if let RestartTimeout::Backoff { base, .. } = self.config.restart_timeout {
            self.restart_delay = base;
        }
        self.last_sent = now;
        self.ping_sent = None;
        self.last_message = now;
        self.primary_retry_at =
            (!self.config.round_robin && self.address != 0).then(|| now + PRIMARY_RETRY);
    }

    /// The connection ended or could not be made: the next address is tried after the
    /// restart delay (automatic), or when the threshold is reached again (lazy), or never
    /// (once). `at_once`: the first address answered a probe, try it now.
    pub fn went_down(&mut self, now: Instant, next_address: bool) {
        if next_address {
            self.address = (self.address + 1) % self.config.addresses.len();
        }
        self.ping_sent = None;
        self.primary_retry_at = None;
        let retry_at = match self.config.start_type {
            StartType::Automatic => Some(now + self.restart_delay),
            StartType::Lazy | StartType::Once => None,
        };
        self.state = State::Down { retry_at };
    }

    /// The CONNECT the bridge sends: its remote client id and credentials, the clean
    /// session it is configured with, and (notifications not local only) a retained will
    /// of "0" on its notification topic, so the remote says when the bridge is gone.
    pub fn connect_packet(&self) -> Connect {
        let v5 = self.version == ProtocolVersion::V5;
        let mut properties = Properties::default();
        if v5 {
            // As Mosquitto: the Receive Maximum it takes in, and a Session Expiry Interval
            // only when configured (`bridge_session_expiry_interval`).
            properties.receive_maximum = Some(self.config.receive_maximum.unwrap_or(20));
            properties.session_expiry_interval = self.config.session_expiry_interval;
            if self.config.max_packet_size > 0 {
                properties.maximum_packet_size = Some(self.config.max_packet_size);
            }
        }
        let will = self
            .notification_topic
            .as_ref()
            .filter(|_| !self.config.notifications_local_only)
            .and_then(|topic| MqttStr::new(topic).ok())
            .map(|topic| Will {
                qos: QoS::AtLeastOnce.min(self.remote_max_qos),
                retain: self.remote_retain,
                properties: Properties::default(),
                topic,
                payload: bytes::Bytes::from_static(b"0"),
            });
        Connect {
            version: self.version,
            bridge: self.try_private && !v5,
            clean_start: self.config.clean_session,
            keep_alive: self.config.keepalive,
            properties,
            client_id: MqttStr::new(&self.remote_client_id).unwrap_or_default(),
            will,
            username: (self.config.remote_username.as_deref()).and_then(|u| MqttStr::new(u).ok()),
            password: (self.config.remote_password.as_ref())
                .map(|p| bytes::Bytes::copy_from_slice(p.as_bytes())),
        }
    }

    /// The remote subscriptions (one SUBSCRIBE per `in`/`both` topic, as Mosquitto sends
    /// them) and unsubscriptions (`out` topics, with `bridge_attempt_unsubscribe`), each
    /// with the packet id `next_id` gives.
    pub fn remote_subscriptions(&self, mut next_id: impl FnMut() -> u16) -> Vec<RemoteRequest> {
        let v5 = self.version == ProtocolVersion::V5;
        let mut requests = Vec::new();
        for topic in &self.config.topics {
            let Ok(filter) = MqttStr::new(&topic.remote_filter()) else {
                continue;
            };
            if topic.direction == Direction::Out {
                if self.config.attempt_unsubscribe {
                    requests.push(RemoteRequest::Unsubscribe(Unsubscribe {
                        packet_id: next_id(),
                        properties: Properties::default(),
                        filters: vec![filter],
                    }));
                }
                continue;
            }
            // 5.0: not sent back what the bridge publishes there (No Local), retained
            // messages as they were published [MQTT-3.8.3-3]; 3.x has the bridge bit.
            let options = SubscriptionOptions {
                qos: topic.qos.min(self.remote_max_qos),
                no_local: v5,
                retain_as_published: v5,
                ..SubscriptionOptions::default()
            };
            requests.push(RemoteRequest::Subscribe(Subscribe {
                packet_id: next_id(),
                properties: Properties::default(),
                filters: vec![(filter, options)],
            }));
        }
        requests
    }

    fn random(&mut self) -> u64 {
        // xorshift64: jitter needs no more.
        let mut x = self.jitter;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.jitter = x;
        x
    }
}

pub enum RemoteRequest {
    Subscribe(Subscribe),
    Unsubscribe(Unsubscribe),
}

/// The rustls configuration of a bridge with TLS (`bridge_cafile`/`bridge_capath` given).
pub fn tls_config(bridge: &Bridge) -> Result<Option<Arc<rustls::ClientConfig>>, String> {
    if !bridge.tls.enabled() {
        return Ok(None);
    }
    let files = [
        ("bridge_cafile", &bridge.tls.cafile),
        ("bridge_certfile", &bridge.tls.certfile),
        ("bridge_keyfile", &bridge.tls.keyfile),
    ];
    for (option, path) in files {
        if let Some(path) = path {
            std::fs::metadata(path).map_err(|e| format!("{option} {path}: {e}"))?;
        }
    }
    let settings = crate::client::tls::ClientTls {
        cafile: bridge.tls.cafile.as_ref().map(Into::into),
        capath: bridge.tls.capath.as_ref().map(Into::into),
        os_certs: false,
        cert: bridge.tls.certfile.as_ref().map(Into::into),
        key: bridge.tls.keyfile.as_ref().map(Into::into),
        insecure: bridge.tls.insecure,
        version: match bridge.tls.tls_version.as_deref() {
            Some("tlsv1.3") => Some(crate::tls::TlsVersion::V13),
            _ => None,
        },
        ciphers: None,
    };
    let config = settings.config().map_err(|e| format!("TLS: {e}"))?;
    let Some(alpn) = &bridge.tls.alpn else {
        return Ok(Some(config));
    };
    let mut config = Arc::unwrap_or_clone(config);
    config.alpn_protocols = vec![alpn.as_bytes().to_vec()];
    Ok(Some(Arc::new(config)))
}

/// A bridge's client ids, on the remote broker and locally: as configured, or Mosquitto's
/// defaults, `<hostname>.<connection name>` and `local.` before that.
pub fn client_ids(config: &Bridge) -> (String, String) {
    let remote = (config.remote_client_id.clone())
        .unwrap_or_else(|| format!("{}.{}", hostname(), config.name));
    let local = (config.local_client_id.clone()).unwrap_or_else(|| format!("local.{remote}"));
    (remote, local)
}

/// This machine's host name (Mosquitto's default remote client id starts with it).
fn hostname() -> &'static str {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(read_hostname)
}

fn read_hostname() -> String {
    crate::os::host_name().unwrap_or_else(|_| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::bridge::BridgeTopic;

    fn bridge() -> Bridge {
        let mut b = Bridge::new("b1", 1);
        b.addresses = vec![("127.0.0.1".into(), 1883), ("127.0.0.2".into(), 1884)];
        b.topics = vec![BridgeTopic {
            pattern: "t/#".into(),
            direction: Direction::Both,
            qos: QoS::AtLeastOnce,
            local_prefix: String::new(),
            remote_prefix: String::new(),
        }];
        b
    }

    #[test]
    fn ids_and_notification_topic_follow_mosquittos_defaults() {
        let link = Link::new(0, bridge(), Instant::now(), None);
        assert_eq!(link.remote_client_id, format!("{}.b1", hostname()));
        assert_eq!(&*link.local_client_id, format!("local.{}.b1", hostname()));
        assert_eq!(
            link.notification_topic.as_deref(),
            Some(format!("$SYS/broker/connection/{}.b1/state", hostname()).as_str())
        );
        let connect = link.connect_packet();
        assert!(connect.bridge && !connect.clean_start);
        let will = connect.will.expect("a notification will");
        assert!(will.retain && &will.payload[..] == b"0");
    }

    #[test]
    fn backoff_stays_between_base_and_cap_and_resets_on_connect() {
        let mut b = bridge();
        let (base, cap) = (Duration::from_secs(2), Duration::from_secs(20));
        b.restart_timeout = RestartTimeout::Backoff { base, cap };
        let now = Instant::now();
        let mut link = Link::new(0, b, now, None);
        let mut seen_above_base = false;
        for _ in 0..50 {
            link.attempt_started();
            assert!(link.restart_delay >= base && link.restart_delay <= cap);
            seen_above_base |= link.restart_delay > base;
        }
        assert!(seen_above_base);
        link.connected(ConnId::new(1, 1), now);
        assert_eq!(link.restart_delay, base);
    }

    #[test]
    fn failures_move_through_the_addresses_and_start_types_decide_the_retry() {
        let now = Instant::now();
        let mut link = Link::new(0, bridge(), now, None);
        assert_eq!(link.first_attempt(now), Some(now));
        link.went_down(now, true);
        assert_eq!(link.current_address().0, "127.0.0.2");
        assert!(matches!(link.state, State::Down { retry_at: Some(_) }));
        link.went_down(now, true);
        assert_eq!(link.current_address().0, "127.0.0.1");

        let mut once = bridge();
        once.start_type = StartType::Once;
        let mut link = Link::new(0, once, now, None);
        link.went_down(now, true);
        assert!(matches!(link.state, State::Down { retry_at: None }));

        let mut lazy = bridge();
        lazy.start_type = StartType::Lazy;
        assert_eq!(Link::new(0, lazy, now, None).first_attempt(now), None);
    }

    #[test]
    fn remote_subscriptions_carry_no_local_on_5_0_and_out_topics_are_unsubscribed() {
        let mut b = bridge();
        b.protocol = ProtocolVersion::V5;
        b.topics.push(BridgeTopic {
            pattern: "o/#".into(),
            direction: Direction::Out,
            qos: QoS::AtMostOnce,
            local_prefix: String::new(),
            remote_prefix: "r/".into(),
        });
        let link = Link::new(0, b, Instant::now(), None);
        let mut id = 0;
        let requests = link.remote_subscriptions(|| {
            id += 1;
            id
        });
        let [RemoteRequest::Subscribe(s), RemoteRequest::Unsubscribe(u)] = &requests[..] else {
            panic!("a SUBSCRIBE then an UNSUBSCRIBE");
        };
        let (filter, options) = &s.filters[0];
        assert_eq!((filter.as_str(), s.packet_id), ("t/#", 1));
        assert!(options.no_local && options.retain_as_published);
        assert_eq!((u.filters[0].as_str(), u.packet_id), ("r/o/#", 2));
    }
}
