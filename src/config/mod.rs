//! The broker's settings, and a reader for the `mosquitto.conf` options the broker uses so far.
//! Option names and defaults are Mosquitto 2.0's; the full file format has its own issue.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

/// One address and port to accept MQTT connections on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listener {
    pub addr: SocketAddr,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub listeners: Vec<Listener>,
    /// Started with no listener configured: loopback only, as Mosquitto 2's local only mode.
    pub local_only: bool,
    /// Shards; 0 means one per core.
    pub threads: usize,
    /// `max_inflight_messages`: QoS 1/2 messages sent to a client and not yet acknowledged.
    pub inflight_max: usize,
    /// `max_queued_messages`: QoS 1/2 messages waiting behind the inflight window.
    pub queued_max: usize,
    /// `max_packet_size`: largest packet accepted from a client, in bytes (fixed header
    /// included). Mosquitto's default is the protocol's limit.
    pub packet_size_max: usize,
    /// `max_keepalive`: longest keep alive granted, seconds.
    pub keepalive_max_s: u16,
    pub allow_zero_length_clientid: bool,
    pub auto_id_prefix: String,
    pub allow_anonymous: bool,
    /// Bytes of encoded packets waiting for one client's socket before QoS 0 messages to it
    /// are dropped (and counted).
    pub client_write_max: usize,
    pub verbose: bool,
    pub connection_messages: bool,
    /// Seconds a new connection has to send CONNECT before it is closed.
    pub connect_timeout_s: u64,
    /// midge's `response_topic_prefix`: a 5.0 client that asks for Response Information is
    /// told `{prefix}/{client id}` as the base of its response topics. Unset: none is given.
    pub response_topic_prefix: Option<String>,
    /// `max_connections`: clients connected at once, over all listeners (None: no limit).
    pub connections_max: Option<usize>,
    /// `clientid_prefixes`: only client ids starting with this may connect.
    pub clientid_prefixes: Option<String>,
    /// `acl_file`: who may read and write which topics, loaded at start.
    pub acl: Option<crate::auth::acl::Acl>,
    /// `password_file`: users and password hashes (Mosquitto's format), loaded at start.
    pub password_file: Option<crate::auth::password::PasswordFile>,
    /// `max_topic_alias`: topic aliases a 5.0 client may set (sent as Topic Alias Maximum).
    pub topic_alias_max: u16,
    /// Subscriptions one session may hold; more are refused (SUBACK failure, counted).
    pub subscriptions_per_client_max: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listeners: Vec::new(),
            local_only: true,
            threads: 0,
            inflight_max: 20,
            queued_max: 1000,
            packet_size_max: 268_435_455 + 5,
            keepalive_max_s: 65535,
            allow_zero_length_clientid: true,
            auto_id_prefix: "auto-".to_string(),
            allow_anonymous: true,
            client_write_max: 4 << 20,
            verbose: false,
            connection_messages: true,
            connect_timeout_s: 10,
            subscriptions_per_client_max: 100_000,
            topic_alias_max: 10,
            response_topic_prefix: None,
            password_file: None,
            acl: None,
            connections_max: None,
            clientid_prefixes: None,
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
        write!(f, "{}:{}: {}", self.file.display(), self.line, self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Options of Mosquitto 2.0 that midge reads but does not act on yet: a warning, not an error.
const NOT_YET: &[&str] = &[
    "allow_duplicate_messages",
    "autosave_interval",
    "autosave_on_changes",
    "bridge_attempt_unsubscribe",
    "bridge_protocol_version",
    "cafile",
    "capath",
    "certfile",
    "check_retain_source",
    "ciphers",
    "connection",
    "address",
    "include_dir",
    "keyfile",
    "log_dest",
    "log_timestamp",
    "log_timestamp_format",
    "max_queued_bytes",
    "memory_limit",
    "mount_point",
    "per_listener_settings",
    "persistence",
    "persistence_file",
    "persistence_location",
    "persistent_client_expiration",
    "pid_file",
    "protocol",
    "psk_file",
    "queue_qos0_messages",
    "require_certificate",
    "retain_available",
    "set_tcp_nodelay",
    "socket_domain",
    "sys_interval",
    "tls_version",
    "topic",
    "upgrade_outgoing_qos",
    "use_identity_as_username",
    "user",
    "websockets_log_level",
];

impl Config {
    /// Reads `path` on top of the defaults. Warnings go to the log.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            line: 0,
            message: format!("cannot read the file: {e}"),
        })?;
        let mut config = Config::default();
        config.apply(path, &text)?;
        // Mosquitto 2: with a listener configured, anonymous clients are refused unless the
        // file says allow_anonymous true; without one (local only mode) they are allowed.
        let said = text
            .lines()
            .any(|l| l.split_whitespace().next() == Some("allow_anonymous"));
        if !said && !config.local_only {
            config.allow_anonymous = false;
        }
        Ok(config)
    }

    /// Applies the lines of a mosquitto.conf file.
    pub fn apply(&mut self, path: &Path, text: &str) -> Result<(), ConfigError> {
        for (index, raw) in text.lines().enumerate() {
            let err = |message: String| ConfigError {
                file: path.to_path_buf(),
                line: index + 1,
                message,
            };
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut words = line.split_whitespace();
            let option = words.next().unwrap_or_default();
            let args: Vec<&str> = words.collect();
            let one = |what: &str| -> Result<&str, ConfigError> {
                match args.as_slice() {
                    [value] => Ok(value),
                    _ => Err(err(format!("{option} takes one {what}"))),
                }
            };
            let number = |max: u64| -> Result<u64, ConfigError> {
                let value = one("number")?;
                value
                    .parse::<u64>()
                    .ok()
                    .filter(|&n| n <= max)
                    .ok_or_else(|| {
                        err(format!(
                            "{option}: {value:?} is not a number from 0 to {max}"
                        ))
                    })
            };
            let boolean = || -> Result<bool, ConfigError> {
                match one("value")? {
                    "true" => Ok(true),
                    "false" => Ok(false),
                    other => Err(err(format!(
                        "{option}: {other:?} is neither true nor false"
                    ))),
                }
            };
            match option {
                "listener" => {
                    let (port, bind) = match args.as_slice() {
                        [port] => (port, None),
                        [port, bind] => (port, Some(*bind)),
                        _ => {
                            return Err(err("listener takes a port and an optional address".into()))
                        }
                    };
                    let port: u16 = port
                        .parse()
                        .map_err(|_| err(format!("listener: bad port {port:?}")))?;
                    self.local_only = false;
                    match bind {
                        None => {
                            self.listeners.push(Listener {
                                addr: SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port),
                            });
                            self.listeners.push(Listener {
                                addr: SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port),
                            });
                        }
                        Some(bind) => {
                            let ip: IpAddr = bind
                                .parse()
                                .map_err(|_| err(format!("listener: bad address {bind:?}")))?;
                            self.listeners.push(Listener {
                                addr: SocketAddr::new(ip, port),
                            });
                        }
                    }
                }
                "port" => {
                    let port = number(u16::MAX.into())? as u16;
                    self.local_only = false;
                    self.listeners.push(Listener {
                        addr: SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port),
                    });
                }
                "max_inflight_messages" => {
                    // Mosquitto: 0 means no limit; keep a bound all the same.
                    let n = number(65535)? as usize;
                    self.inflight_max = if n == 0 { 65535 } else { n };
                }
                "max_queued_messages" => self.queued_max = number(u32::MAX.into())? as usize,
                "max_packet_size" => self.packet_size_max = number(268_435_460)?.max(20) as usize,
                "message_size_limit" => {
                    let n = number(268_435_455)? as usize;
                    if n > 0 {
                        self.packet_size_max = self.packet_size_max.min(n + 65_535 + 16);
                    }
                }
                "max_keepalive" => self.keepalive_max_s = number(65535)? as u16,
                "max_connections" => {
                    let value = one("number")?;
                    let n: i64 = value
                        .parse()
                        .map_err(|_| err(format!("max_connections: {value:?} is not a number")))?;
                    // Mosquitto: -1 (the default) means no limit.
                    self.connections_max = usize::try_from(n).ok();
                }
                "clientid_prefixes" => self.clientid_prefixes = Some(one("prefix")?.to_string()),
                "acl_file" => {
                    let file = one("path")?;
                    let acl = crate::auth::acl::Acl::load(Path::new(file))
                        .map_err(|e| err(format!("acl_file: {e}")))?;
                    self.acl = Some(acl);
                }
                "password_file" => {
                    let file = one("path")?;
                    let loaded = crate::auth::password::PasswordFile::load(Path::new(file))
                        .map_err(|e| err(format!("password_file: {e}")))?;
                    self.password_file = Some(loaded);
                }
                "response_topic_prefix" => {
                    let prefix = one("topic prefix")?;
                    if crate::topic::validate_topic_name(prefix).is_err() {
                        return Err(err(format!(
                            "response_topic_prefix: {prefix:?} is not a valid topic name"
                        )));
                    }
                    self.response_topic_prefix = Some(prefix.to_string());
                }
                "max_topic_alias" => self.topic_alias_max = number(65535)? as u16,
                "allow_zero_length_clientid" => self.allow_zero_length_clientid = boolean()?,
                "auto_id_prefix" => self.auto_id_prefix = one("prefix")?.to_string(),
                "allow_anonymous" => self.allow_anonymous = boolean()?,
                "connection_messages" => self.connection_messages = boolean()?,
                "threads" => self.threads = number(1024)? as usize,
                "connect_timeout" => self.connect_timeout_s = number(3600)?.max(1),
                "io_backend" => match one("backend")? {
                    "epoll" => {}
                    other => {
                        return Err(err(format!(
                            "io_backend: {other:?} is not available (epoll)"
                        )))
                    }
                },
                "log_type" => {
                    if matches!(one("type")?, "all" | "debug") {
                        self.verbose = true;
                    }
                }
                _ if NOT_YET.contains(&option) => {
                    log::warn!(
                        "Warning: {}:{}: {option} is not supported by midge yet; ignored.",
                        path.display(),
                        index + 1
                    );
                }
                _ => return Err(err(format!("unknown option {option:?}"))),
            }
        }
        Ok(())
    }

    /// The listeners to open: the configured ones, or loopback on `ports` (default 1883).
    pub fn listeners_with_ports(&mut self, ports: &[u16]) {
        if !self.listeners.is_empty() && ports.is_empty() {
            return;
        }
        let ports = if ports.is_empty() { &[1883][..] } else { ports };
        for &port in ports {
            if self.local_only {
                self.listeners.push(Listener {
                    addr: SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port),
                });
                self.listeners.push(Listener {
                    addr: SocketAddr::new(Ipv6Addr::LOCALHOST.into(), port),
                });
            } else {
                self.listeners.push(Listener {
                    addr: SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_options_and_names_bad_lines() {
        let mut c = Config::default();
        c.apply(
            Path::new("m.conf"),
            "# comment\nlistener 1884 127.0.0.1\nmax_inflight_messages 5\nmax_queued_messages 10\n",
        )
        .unwrap();
        assert_eq!(
            c.listeners,
            vec![Listener {
                addr: "127.0.0.1:1884".parse().unwrap()
            }]
        );
        assert_eq!((c.inflight_max, c.queued_max, c.local_only), (5, 10, false));
        let e = Config::default()
            .apply(Path::new("m.conf"), "\nmax_inflight_mesages 5\n")
            .unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.to_string().contains("m.conf:2"), "{e}");
        let e = Config::default()
            .apply(Path::new("m.conf"), "allow_anonymous maybe\n")
            .unwrap_err();
        assert!(e.message.contains("neither true nor false"));
    }
}
