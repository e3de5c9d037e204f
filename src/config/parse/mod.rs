//! Reads `mosquitto.conf`: one option per line (`name value...`), `#` comments, `include_dir`.
//!
//! Listener options (`max_connections`, `mount_point`, `protocol`, ...) apply to the last
//! `listener` line above them. Before any `listener` line they set the default listener of
//! `port`/`bind_address` if the file has one, and otherwise the starting values of every
//! listener that follows. Security options are global unless `per_listener_settings true`,
//! which must come before any listener or security option, as Mosquitto requires.

mod bridge;
mod persistence;
mod tls;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::options::{self, suggest};
use super::{Config, ConfigError, CpuAffinity, IoBackend, Listener, Security, SocketDomain};
use crate::logging::{LogDest, LogTypes};

/// `include_dir` nesting allowed (a directory including itself must not loop forever).
const INCLUDE_DEPTH_MAX: usize = 8;

impl Config {
    /// Reads `path` on top of the defaults. Warnings go to the log.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let mut reader = Reader::default();
        reader.file(path, 0)?;
        reader.finish(path)
    }

    /// Reads configuration text (as if from `path`) on top of the defaults.
    pub fn from_text(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let mut reader = Reader::default();
        reader.text(path, text, 0)?;
        reader.finish(path)
    }
}

#[derive(Default)]
struct Reader {
    config: Config,
    /// Listener options read before the first `listener` line.
    top: Listener,
    /// `port` or `bind_address` was given: `top` is a listener of its own.
    default_listener: bool,
    /// A `listener` line was read: listener options go to the last listener.
    in_listener: bool,
    log_type_said: bool,
    log_dest_said: bool,
    security_said: bool,
}

/// One line being read, for error messages and argument parsing.
struct Line<'a> {
    file: &'a Path,
    number: usize,
    option: &'a str,
    args: Vec<&'a str>,
    /// Everything after the option name (values that may hold spaces: paths, formats).
    rest: &'a str,
}

impl Line<'_> {
    fn err(&self, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.to_path_buf(),
            line: self.number,
            message: message.into(),
        }
    }

    fn warn(&self, message: &str) {
        log::warn!(
            "Warning: {}:{}: {message}",
            self.file.display(),
            self.number
        );
    }

    fn one(&self, what: &str) -> Result<&str, ConfigError> {
        match self.args.as_slice() {
            [value] => Ok(value),
            _ => Err(self.err(format!("{} takes one {what}", self.option))),
        }
    }

    /// The rest of the line, which must not be empty.
    fn text(&self, what: &str) -> Result<&str, ConfigError> {
        if self.rest.is_empty() {
            return Err(self.err(format!("{} takes a {what}", self.option)));
        }
        Ok(self.rest)
    }

    /// A file or directory: the rest of the line (paths may hold spaces).
    fn path(&self) -> Result<std::path::PathBuf, ConfigError> {
        Ok(std::path::PathBuf::from(self.text("path")?))
    }

    fn number(&self, max: u64) -> Result<u64, ConfigError> {
        let value = self.one("number")?;
        value
            .parse::<u64>()
            .ok()
            .filter(|&n| n <= max)
            .ok_or_else(|| {
                self.err(format!(
                    "{}: {value:?} is not a number from 0 to {max}",
                    self.option
                ))
            })
    }

    /// A count where Mosquitto's -1 means no limit.
    fn limit(&self) -> Result<Option<usize>, ConfigError> {
        let value = self.one("number")?;
        match value.parse::<i64>() {
            Ok(n) if n < 0 => Ok(None),
            Ok(n) => Ok(Some(n as usize)),
            Err(_) => Err(self.err(format!("{}: {value:?} is not a number", self.option))),
        }
    }

    fn boolean(&self) -> Result<bool, ConfigError> {
        match self.one("value")? {
            "true" => Ok(true),
            "false" => Ok(false),
            other => Err(self.err(format!(
                "{}: {other:?} is neither true nor false",
                self.option
            ))),
        }
    }
}

/// Mosquitto's durations: a number and h, d, w, m (30 days) or y (365 days); midge also
/// takes s (seconds).
fn duration(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    let hour = 3600;
    let seconds = match unit {
        "s" => 1,
        "h" => hour,
        "d" => 24 * hour,
        "w" => 7 * 24 * hour,
        "m" => 30 * 24 * hour,
        "y" => 365 * 24 * hour,
        _ => return None,
    };
    Some(Duration::from_secs(n.checked_mul(seconds)?))
}

impl Reader {
    fn file(&mut self, path: &Path, depth: usize) -> Result<(), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            line: 0,
            message: format!("cannot read the file: {e}"),
        })?;
        self.text(path, &text, depth)
    }

    fn listener(&mut self) -> &mut Listener {
        if self.in_listener {
            if let Some(last) = self.config.listeners.last_mut() {
                return last;
            }
        }
        &mut self.top
    }

    fn security(&mut self) -> &mut Security {
        self.security_said = true;
        if self.config.per_listener_settings {
            &mut self.listener().security
        } else {
            &mut self.config.security
        }
    }

    fn text(&mut self, file: &Path, text: &str, depth: usize) -> Result<(), ConfigError> {
        for (index, raw) in text.lines().enumerate() {
            let trimmed = raw.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let (option, rest) = trimmed
                .split_once(char::is_whitespace)
                .map_or((trimmed, ""), |(o, r)| (o, r.trim()));
            let line = Line {
                file,
                number: index + 1,
                option,
                args: rest.split_whitespace().collect(),
                rest,
            };
            self.option(&line, depth)?;
        }
        Ok(())
    }

    fn option(&mut self, line: &Line, depth: usize) -> Result<(), ConfigError> {
        let config = &mut self.config;
        match line.option {
            // Listeners.
            "listener" => {
                if config.listeners.len() >= crate::config::LISTENERS_MAX {
                    return Err(line.err(format!(
                        "too many listeners (at most {})",
                        crate::config::LISTENERS_MAX
                    )));
                }
                let (port, bind) = match line.args.as_slice() {
                    [port] => (*port, None),
                    [port, bind] => (*port, Some(bind.to_string())),
                    _ => return Err(line.err("listener takes a port and an optional address")),
                };
                let port: u16 = port
                    .parse()
                    .map_err(|_| line.err(format!("listener: bad port {port:?}")))?;
                let mut listener = if self.default_listener {
                    Listener::default()
                } else {
                    self.top.clone()
                };
                listener.port = port;
                listener.unix_socket = None;
                match bind {
                    // Port 0 with a path is a Unix socket, as in Mosquitto (any argument
                    // that is not an IP address; with an IP address or none, port 0 is a
                    // free port, midge's own).
                    Some(path) if port == 0 && path.parse::<std::net::IpAddr>().is_err() => {
                        // sockaddr_un's sun_path: 108 bytes with the terminating NUL.
                        if path.len() > 107 {
                            return Err(line.err(format!(
                                "Path to unix socket is too long \"{path}\" (at most 107 bytes)"
                            )));
                        }
                        listener.unix_socket = Some(path);
                        listener.bind = None;
                    }
                    bind => listener.bind = bind,
                }
                config.listeners.push(listener);
                self.in_listener = true;
            }
            "port" => {
                self.top.port = line.number(u16::MAX.into())? as u16;
                self.default_listener = true;
            }
            "bind_address" => {
                self.top.bind = Some(line.one("address")?.to_string());
                self.default_listener = true;
            }
            "bind_interface" => {
                self.listener().bind_interface = Some(line.one("interface name")?.to_string())
            }
            "socket_domain" => {
                self.listener().socket_domain = Some(match line.one("domain")? {
                    "ipv4" => SocketDomain::Ipv4,
                    "ipv6" => SocketDomain::Ipv6,
                    other => {
                        return Err(line.err(format!(
                            "socket_domain: {other:?} is neither ipv4 nor ipv6"
                        )))
                    }
                })
            }
            "max_connections" => self.listener().connections_max = line.limit()?,
            "mount_point" => {
                let mount = line.text("topic prefix")?;
                if crate::topic::validate_topic_name(mount).is_err() || mount.starts_with('$') {
                    return Err(line.err(format!(
                        "mount_point: {mount:?} is not a valid topic prefix"
                    )));
                }
                self.listener().mount_point = Some(mount.to_string());
            }
            "protocol" => match line.one("protocol")? {
                "mqtt" => {}
                "websockets" => self.listener().websockets = true,
                other => {
                    return Err(line.err(format!(
                        "protocol: {other:?} is neither mqtt nor websockets"
                    )))
                }
            },
            "max_topic_alias" => self.listener().topic_alias_max = line.number(65535)? as u16,
            "max_qos" | "maximum_qos" => {
                self.listener().max_qos = match line.number(2)? {
                    0 => crate::codec::QoS::AtMostOnce,
                    1 => crate::codec::QoS::AtLeastOnce,
                    _ => crate::codec::QoS::ExactlyOnce,
                }
            }
            "use_username_as_clientid" => {
                self.listener().use_username_as_clientid = line.boolean()?
            }

            // Security: global, or the listener's with per_listener_settings.
            "per_listener_settings" => {
                let on = line.boolean()?;
                if on != config.per_listener_settings
                    && (self.in_listener || self.default_listener || self.security_said)
                {
                    return Err(line.err(
                        "per_listener_settings must come before any listener and security option",
                    ));
                }
                config.per_listener_settings = on;
            }
            "allow_anonymous" => {
                let on = line.boolean()?;
                self.security().allow_anonymous = Some(on);
            }
            "acl_strict_subscribe" => {
                let on = line.boolean()?;
                self.security().acl_strict_subscribe = on;
            }
            "allow_zero_length_clientid" => {
                let on = line.boolean()?;
                self.security().allow_zero_length_clientid = on;
            }
            "auto_id_prefix" => {
                let prefix = line.one("prefix")?.to_string();
                self.security().auto_id_prefix = prefix;
            }
            "password_file" => {
                let path = line.text("path")?;
                let loaded = crate::auth::password::PasswordFile::load(Path::new(path))
                    .map_err(|e| line.err(format!("password_file: {e}")))?;
                self.security().password_file = Some(Arc::new(loaded));
            }
            "acl_file" => {
                let path = line.text("path")?;
                let acl = crate::auth::acl::Acl::load(Path::new(path))
                    .map_err(|e| line.err(format!("acl_file: {e}")))?;
                self.security().acl = Some(Arc::new(acl));
            }
            "clientid_prefixes" => config.clientid_prefixes = Some(line.one("prefix")?.to_string()),

            // Limits.
            "max_inflight_messages" => {
                // Mosquitto: 0 means no limit; keep a bound all the same.
                let n = line.number(65535)? as usize;
                config.inflight_max = if n == 0 { 65535 } else { n };
            }
            "max_queued_messages" => {
                // Mosquitto: 0 means no limit on the count (max_queued_bytes and the
                // broker-wide memory_limit still bound what is held).
                let n = line.number(u32::MAX.into())? as usize;
                config.queued_max = if n == 0 { usize::MAX } else { n };
            }
            "memory_limit" => config.memory_limit = line.number(u64::MAX)? as usize,
            "max_queued_bytes" => config.queued_bytes_max = line.number(u32::MAX.into())? as usize,
            "max_packet_size" => {
                config.packet_size_max = line.number(268_435_460)?.max(20) as usize
            }
            "retain_available" => config.retain_available = line.boolean()?,
            "check_retain_source" => config.check_retain_source = line.boolean()?,
            "upgrade_outgoing_qos" => config.upgrade_outgoing_qos = line.boolean()?,
            "message_size_limit" => {
                config.message_size_limit = line.number(268_435_455)? as usize
            }
            "max_keepalive" => config.keepalive_max_s = line.number(65535)? as u16,
            "persistent_client_expiration" => {
                let value = line.one("duration")?;
                let d = duration(value).ok_or_else(|| {
                    line.err(format!(
                        "persistent_client_expiration: {value:?} is not a duration (a number and s, h, d, w, m or y)"
                    ))
                })?;
                config.persistent_client_expiration = Some(d);
            }

            // Logging.
            "log_dest" => {
                if !self.log_dest_said {
                    config.log.dests.clear();
                    self.log_dest_said = true;
                }
                let dest = match line.args.first().copied() {
                    Some("stdout") => LogDest::Stdout,
                    Some("stderr") => LogDest::Stderr,
                    Some("syslog") => LogDest::Syslog,
                    Some("none") => {
                        config.log.dests.clear();
                        return Ok(());
                    }
                    Some("file") => {
                        let path = line.rest["file".len()..].trim();
                        if path.is_empty() {
                            return Err(line.err("log_dest file takes a path"));
                        }
                        LogDest::File(path.into())
                    }
                    Some("topic") => LogDest::Topic,
                    Some("dlt") => {
                        line.warn(&format!(
                            "log_dest {} is not supported by midge yet; ignored.",
                            line.args[0]
                        ));
                        return Ok(());
                    }
                    _ => {
                        return Err(line.err(
                            "log_dest takes stdout, stderr, file PATH, syslog, topic or none",
                        ))
                    }
                };
                if !config.log.dests.contains(&dest) {
                    config.log.dests.push(dest);
                }
            }
            "log_type" => {
                if !self.log_type_said {
                    config.log.types = LogTypes::NONE;
                    self.log_type_said = true;
                }
                let name = line.one("type")?;
                let types = LogTypes::named(name).ok_or_else(|| {
                    line.err(format!("log_type: unknown type {name:?} (error, warning, notice, information, subscribe, unsubscribe, websockets, debug, all, none)"))
                })?;
                if types == LogTypes::NONE {
                    config.log.types = LogTypes::NONE;
                } else {
                    config.log.types = config.log.types.with(types);
                }
            }
            "log_timestamp" => config.log.timestamp = line.boolean()?,
            "log_timestamp_format" => {
                config.log.timestamp_format = Some(line.text("format")?.to_string())
            }
            "log_facility" => config.log.facility = line.number(7)? as u8,
            "connection_messages" => config.connection_messages = line.boolean()?,

            // Process.
            "pid_file" => config.pid_file = Some(line.text("path")?.into()),
            "user" => config.user = Some(line.one("user name")?.to_string()),
            "sys_interval" => config.sys_interval_s = line.number(u32::MAX.into())?,
            "metrics_listener" => {
                let value = line.one("address:port")?;
                let addr = value.parse::<std::net::SocketAddr>().map_err(|_| {
                    line.err(format!(
                        "metrics_listener: {value:?} is not an address and port (127.0.0.1:9883, [::1]:9883)"
                    ))
                })?;
                config.metrics_listener = Some(addr);
            }

            // Persistence (persist/).
            "persistence" | "persistence_location" | "persistence_file" | "persistence_sync"
            | "persistence_on_damage" | "autosave_interval" | "autosave_on_changes" => {
                persistence::option(config, line)?
            }
            "include_dir" => {
                let dir = line.text("directory")?;
                if depth >= INCLUDE_DEPTH_MAX {
                    return Err(line.err("include_dir nested too deeply"));
                }
                let entries = std::fs::read_dir(dir)
                    .map_err(|e| line.err(format!("include_dir: cannot read {dir:?}: {e}")))?;
                // Mosquitto reads the `.conf` files of the directory in name order.
                let mut files: Vec<_> = entries
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|e| e == "conf") && p.is_file())
                    .collect();
                files.sort();
                for path in files {
                    self.file(&path, depth + 1)?;
                }
            }

            // midge's own.
            "threads" => config.threads = line.number(crate::limits::SHARDS_MAX as u64)? as usize,
            "cpu_affinity" => {
                config.cpu_affinity = match line.one("value")? {
                    "true" => CpuAffinity::Auto,
                    "false" => CpuAffinity::Off,
                    list => CpuAffinity::Cores(
                        list.split(',')
                            .map(|n| n.trim().parse::<usize>())
                            .collect::<Result<_, _>>()
                            .map_err(|_| {
                                line.err(format!(
                                    "cpu_affinity: {list:?} is not true, false or a list of core numbers (0,2,3)"
                                ))
                            })?,
                    ),
                }
            }
            "connect_timeout" => config.connect_timeout_s = line.number(3600)?.max(1),
            "client_idle_timeout" => config.client_idle_timeout_s = line.number(u32::MAX.into())?,
            "websockets_headers_size" => {
                config.websockets_headers_size = match line.number(1 << 20)? {
                    0 => 1024,
                    n => n as usize,
                }
            }
            "io_batch_wait_us" => config.io_batch_wait_us = line.number(1000)? as u32,
            "io_backend" => {
                let value = line.one("backend")?;
                config.io_backend = IoBackend::parse(value).ok_or_else(|| {
                    line.err(format!(
                        "io_backend: {value:?} is not one of auto, uring, epoll"
                    ))
                })?
            }
            "response_topic_prefix" => {
                let prefix = line.one("topic prefix")?;
                if crate::topic::validate_topic_name(prefix).is_err() {
                    return Err(line.err(format!(
                        "response_topic_prefix: {prefix:?} is not a valid topic name"
                    )));
                }
                config.response_topic_prefix = Some(prefix.to_string());
            }

            // TLS, per listener (tls/mod.rs).
            "cafile" | "capath" | "certfile" | "keyfile" | "crlfile" | "require_certificate"
            | "use_identity_as_username" | "use_subject_as_username" | "tls_version"
            | "ciphers" | "ciphers_tls1.3" | "psk_hint" | "psk_file" | "tls_engine"
            | "tls_keyform" | "tls_engine_kpass_sha1" | "ocsp_stapling" | "dhparamfile" => {
                self.tls_option(line)?
            }

            // Bridges (parse/bridge.rs).
            option if bridge::is_bridge_option(option) => bridge::option(config, line)?,

            option if options::not_yet(option) => {
                line.warn(&format!("{option} is not supported by midge yet; ignored."));
            }
            option => {
                let hint = suggest(option)
                    .map(|name| format!(" (did you mean {name}?)"))
                    .unwrap_or_default();
                return Err(line.err(format!("unknown option {option:?}{hint}")));
            }
        }
        Ok(())
    }

    fn finish(mut self, path: &Path) -> Result<Config, ConfigError> {
        let mut config = self.config;
        bridge::check(&config, path)?;
        if self.default_listener {
            config.listeners.insert(0, self.top.clone());
        }
        config.local_only = config.listeners.is_empty();
        if config.local_only {
            // Listeners made later from -p start from the settings of the file.
            self.top.loopback = true;
            config.listener_defaults = self.top;
        }
        // Mosquitto 2: with a listener configured, anonymous clients are refused unless the
        // file says allow_anonymous true; in local only mode they are allowed.
        let anonymous = config.local_only;
        config.security.allow_anonymous.get_or_insert(anonymous);
        for listener in &mut config.listeners {
            listener.security.allow_anonymous.get_or_insert(anonymous);
        }
        // Certificates and keys are read now, so that a bad one stops the start (and
        // `--test-config`) with its name, never a listener opened without TLS.
        for listener in &mut config.listeners {
            if listener.tls_settings.any_given() {
                let (file, line) = (listener.tls_settings.origin.clone())
                    .unwrap_or_else(|| (path.to_path_buf(), 0));
                let tls = listener
                    .tls_settings
                    .load()
                    .map_err(|message| ConfigError {
                        file,
                        line,
                        message: format!(
                            "listener {}{}: {message}",
                            listener.port,
                            listener
                                .bind
                                .as_ref()
                                .map(|b| format!(" {b}"))
                                .unwrap_or_default()
                        ),
                    })?;
                listener.tls = Some(tls);
            }
        }
        if config.local_only && config.listener_defaults.tls_settings.any_given() {
            let (file, line) = (config.listener_defaults.tls_settings.origin.clone())
                .unwrap_or_else(|| (path.to_path_buf(), 0));
            return Err(ConfigError {
                file,
                line,
                message: "TLS options need a listener (local only mode has none)".into(),
            });
        }
        Ok(config)
    }
}
