//! Bridges as `mosquitto.conf` describes them (`connection` and the options after it): an
//! outgoing MQTT connection to another broker per bridge, with the topics it carries each
//! way. Read and checked here; `bridge/` runs them.

use std::time::Duration;

use crate::codec::{ProtocolVersion, QoS};

/// One `connection` section.
#[derive(Clone, Debug, PartialEq)]
pub struct Bridge {
    /// `connection NAME`.
    pub name: String,
    /// `address`/`addresses`: host and port (1883 unless given), tried as `round_robin` says.
    pub addresses: Vec<(String, u16)>,
    pub round_robin: bool,
    pub topics: Vec<BridgeTopic>,
    /// `bridge_protocol_version mqttv31|mqttv311|mqttv50` (3.1.1 unless set).
    pub protocol: ProtocolVersion,
    /// `cleansession` (false), and `local_cleansession` (the same unless set).
    pub clean_session: bool,
    pub local_clean_session: Option<bool>,
    /// `remote_clientid` (or `clientid`): `<hostname>.<name>` unless set.
    pub remote_client_id: Option<String>,
    /// `local_clientid`: `local.<remote client id>` unless set.
    pub local_client_id: Option<String>,
    pub remote_username: Option<String>,
    pub remote_password: Option<String>,
    pub local_username: Option<String>,
    pub local_password: Option<String>,
    /// `keepalive_interval` (60 s, at least 5).
    pub keepalive: u16,
    pub start_type: StartType,
    pub restart_timeout: RestartTimeout,
    /// `idle_timeout` (60 s) and `threshold` (10 messages), for `lazy`.
    pub idle_timeout: Duration,
    pub threshold: u32,
    /// `notifications` (true), `notifications_local_only` (false), `notification_topic`
    /// (`$SYS/broker/connection/<remote client id>/state` unless set).
    pub notifications: bool,
    pub notifications_local_only: bool,
    pub notification_topic: Option<String>,
    pub try_private: bool,
    pub attempt_unsubscribe: bool,
    pub outgoing_retain: bool,
    /// `bridge_max_packet_size` (0: no limit).
    pub max_packet_size: u32,
    pub bind_address: Option<String>,
    /// `bridge_receive_maximum` and `bridge_session_expiry_interval` (5.0 bridges).
    pub receive_maximum: Option<u16>,
    pub session_expiry_interval: Option<u32>,
    pub tls: BridgeTls,
    /// The line of its `connection`, for errors found at the end of the file.
    pub line: usize,
}

/// `start_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartType {
    /// At start, and again after a failure (`restart_timeout`).
    Automatic,
    /// Once `threshold` messages wait for it; stopped after `idle_timeout` idle.
    Lazy,
    /// At start, never again.
    Once,
}

/// `restart_timeout`: a constant delay, or backoff with jitter from `base` up to `cap`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestartTimeout {
    Constant(Duration),
    Backoff { base: Duration, cap: Duration },
}

/// `bridge_cafile` and the other TLS options of a bridge.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BridgeTls {
    pub cafile: Option<String>,
    pub capath: Option<String>,
    pub certfile: Option<String>,
    pub keyfile: Option<String>,
    /// `bridge_insecure`: the server's name is not checked against its certificate.
    pub insecure: bool,
    pub tls_version: Option<String>,
    pub alpn: Option<String>,
}

impl BridgeTls {
    /// TLS is on when a CA is given, as in Mosquitto.
    pub fn enabled(&self) -> bool {
        self.cafile.is_some() || self.capath.is_some()
    }
}

/// `topic pattern [[[out | in | both] qos] local-prefix remote-prefix]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BridgeTopic {
    /// The pattern (a filter; empty with both prefixes set: the prefixes are the topics).
    pub pattern: String,
    pub direction: Direction,
    pub qos: QoS,
    pub local_prefix: String,
    pub remote_prefix: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Out,
    In,
    Both,
}

impl BridgeTopic {
    /// The filter on the local broker: local prefix + pattern.
    pub fn local_filter(&self) -> String {
        format!("{}{}", self.local_prefix, self.pattern)
    }

    /// The filter on the remote broker: remote prefix + pattern.
    pub fn remote_filter(&self) -> String {
        format!("{}{}", self.remote_prefix, self.pattern)
    }
}

impl Bridge {
    pub fn new(name: &str, line: usize) -> Bridge {
        Bridge {
            name: name.to_string(),
            addresses: Vec::new(),
            round_robin: false,
            topics: Vec::new(),
            protocol: ProtocolVersion::V311,
            clean_session: false,
            local_clean_session: None,
            remote_client_id: None,
            local_client_id: None,
            remote_username: None,
            remote_password: None,
            local_username: None,
            local_password: None,
            keepalive: 60,
            start_type: StartType::Automatic,
            restart_timeout: RestartTimeout::Backoff {
                base: Duration::from_secs(5),
                cap: Duration::from_secs(30),
            },
            idle_timeout: Duration::from_secs(60),
            threshold: 10,
            notifications: true,
            notifications_local_only: false,
            notification_topic: None,
            try_private: true,
            attempt_unsubscribe: true,
            outgoing_retain: true,
            max_packet_size: 0,
            bind_address: None,
            receive_maximum: None,
            session_expiry_interval: None,
            tls: BridgeTls::default(),
            line,
        }
    }
}
