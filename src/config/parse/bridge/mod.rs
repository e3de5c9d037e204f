//! The bridge options of `mosquitto.conf` (`config/bridge.rs`): each applies to the bridge
//! of the last `connection` line above it.

use std::time::Duration;

use super::table::{known, Known, Read};
use super::Line;
use crate::codec::{ProtocolVersion, QoS};
use crate::config::bridge::{Bridge, BridgeTopic, Direction, RestartTimeout, StartType};
use crate::config::{Config, ConfigError};
use crate::topic;

pub(super) const OPTIONS: &[Known] = &[
    known(
        "connection",
        "a bridge: its name; the bridge options below it are its own",
        Read::Broker(connection),
    ),
    known(
        "address",
        "where the remote broker is: host[:port], several for failover",
        Read::Bridge(addresses),
    ),
    known("addresses", "as address", Read::Bridge(addresses)),
    known(
        "round_robin",
        "go through the addresses in turn rather than back to the first",
        Read::Bridge(|b, line| {
            b.round_robin = line.boolean()?;
            Ok(())
        }),
    ),
    known(
        "topic",
        "a pattern carried out, in or both ways, with a QoS and local and remote prefixes",
        Read::Bridge(|b, line| {
            b.topics.push(bridge_topic(line)?);
            Ok(())
        }),
    ),
    known(
        "bridge_protocol_version",
        "mqttv31, mqttv311 or mqttv50 to the remote broker",
        Read::Bridge(|b, line| {
            b.protocol = match line.one("version")? {
                "mqttv31" => ProtocolVersion::V31,
                "mqttv311" => ProtocolVersion::V311,
                "mqttv50" => ProtocolVersion::V5,
                other => {
                    return Err(line.err(format!(
                        "bridge_protocol_version: {other:?} is not mqttv31, mqttv311 or mqttv50"
                    )))
                }
            };
            Ok(())
        }),
    ),
    known(
        "cleansession",
        "the remote session is clean",
        Read::Bridge(|b, line| {
            b.clean_session = line.boolean()?;
            Ok(())
        }),
    ),
    known(
        "local_cleansession",
        "the bridge's session on this broker is clean (default: as cleansession)",
        Read::Bridge(|b, line| {
            b.local_clean_session = Some(line.boolean()?);
            Ok(())
        }),
    ),
    known(
        "remote_clientid",
        "the client id on the remote broker",
        Read::Bridge(remote_client_id),
    ),
    known(
        "clientid",
        "as remote_clientid",
        Read::Bridge(remote_client_id),
    ),
    known(
        "local_clientid",
        "the bridge's client id on this broker",
        Read::Bridge(|b, line| {
            b.local_client_id = Some(line.one("client id")?.to_string());
            Ok(())
        }),
    ),
    known(
        "remote_username",
        "the user name on the remote broker",
        Read::Bridge(remote_username),
    ),
    known(
        "username",
        "as remote_username",
        Read::Bridge(remote_username),
    ),
    known(
        "remote_password",
        "the password on the remote broker",
        Read::Bridge(remote_password),
    ),
    known(
        "password",
        "as remote_password",
        Read::Bridge(remote_password),
    ),
    known(
        "local_username",
        "the bridge's user name on this broker",
        Read::Bridge(|b, line| {
            b.local_username = Some(line.one("username")?.to_string());
            Ok(())
        }),
    ),
    known(
        "local_password",
        "the bridge's password on this broker",
        Read::Bridge(|b, line| {
            b.local_password = Some(line.one("password")?.to_string());
            Ok(())
        }),
    ),
    known(
        "keepalive_interval",
        "the keep alive to the remote broker, at least 5 seconds",
        Read::Bridge(|b, line| {
            let seconds = line.number(u16::MAX.into())?;
            if seconds < 5 {
                return Err(line.err("keepalive_interval: at least 5 seconds"));
            }
            b.keepalive = seconds as u16;
            Ok(())
        }),
    ),
    known(
        "start_type",
        "automatic, lazy (past threshold messages) or once",
        Read::Bridge(start_type),
    ),
    known(
        "restart_timeout",
        "seconds before connecting again, or a base and a cap for a backoff",
        Read::Bridge(restart_timeout),
    ),
    known(
        "idle_timeout",
        "a lazy bridge's seconds without messages before it disconnects",
        Read::Bridge(|b, line| {
            b.idle_timeout = Duration::from_secs(line.number(u32::MAX.into())?);
            Ok(())
        }),
    ),
    known(
        "threshold",
        "messages a lazy bridge waits for before it connects",
        Read::Bridge(|b, line| {
            b.threshold = line.number(u32::MAX.into())?.max(1) as u32;
            Ok(())
        }),
    ),
    known(
        "notifications",
        "publish the bridge's state (1 connected, 0 not) on its notification topic",
        Read::Bridge(|b, line| {
            b.notifications = line.boolean()?;
            Ok(())
        }),
    ),
    known(
        "notifications_local_only",
        "publish the state on this broker only",
        Read::Bridge(|b, line| {
            b.notifications_local_only = line.boolean()?;
            Ok(())
        }),
    ),
    known(
        "notification_topic",
        "the topic of the bridge's state",
        Read::Bridge(|b, line| {
            let topic = line.one("topic")?;
            if topic::validate_topic_name(topic).is_err() {
                return Err(line.err(format!(
                    "notification_topic: {topic:?} is not a valid topic name"
                )));
            }
            b.notification_topic = Some(topic.to_string());
            Ok(())
        }),
    ),
    known(
        "try_private",
        "tell the remote broker this is a bridge (Mosquitto's protocol bit)",
        Read::Bridge(|b, line| {
            b.try_private = line.boolean()?;
            Ok(())
        }),
    ),
    known(
        "bridge_attempt_unsubscribe",
        "unsubscribe on the remote broker from what is no longer carried",
        Read::Bridge(|b, line| {
            b.attempt_unsubscribe = line.boolean()?;
            Ok(())
        }),
    ),
    known(
        "bridge_outgoing_retain",
        "keep the retain flag on what goes out",
        Read::Bridge(|b, line| {
            b.outgoing_retain = line.boolean()?;
            Ok(())
        }),
    ),
    known(
        "bridge_max_packet_size",
        "the largest packet the bridge takes from the remote broker (MQTT 5.0)",
        Read::Bridge(|b, line| {
            b.max_packet_size = line.number(268_435_460)? as u32;
            Ok(())
        }),
    ),
    known(
        "bridge_bind_address",
        "the local address the bridge connects from",
        Read::Bridge(|b, line| {
            let address = line.one("address")?;
            if address.parse::<std::net::IpAddr>().is_err() {
                return Err(line.err(format!(
                    "bridge_bind_address: {address:?} is not an IP address"
                )));
            }
            b.bind_address = Some(address.to_string());
            Ok(())
        }),
    ),
    known(
        "bridge_receive_maximum",
        "the Receive Maximum the bridge gives the remote broker (MQTT 5.0)",
        Read::Bridge(|b, line| {
            let n = line.number(u16::MAX.into())?;
            if n == 0 {
                return Err(line.err("bridge_receive_maximum: from 1 to 65535"));
            }
            b.receive_maximum = Some(n as u16);
            Ok(())
        }),
    ),
    known(
        "bridge_session_expiry_interval",
        "the remote session's expiry (MQTT 5.0)",
        Read::Bridge(|b, line| {
            b.session_expiry_interval = Some(line.number(u32::MAX.into())? as u32);
            Ok(())
        }),
    ),
    known(
        "bridge_cafile",
        "TLS to the remote broker: its CA certificates",
        Read::Bridge(|b, line| {
            b.tls.cafile = Some(line.text("file")?.to_string());
            Ok(())
        }),
    ),
    known(
        "bridge_capath",
        "TLS: a directory of CA certificates",
        Read::Bridge(|b, line| {
            b.tls.capath = Some(line.text("directory")?.to_string());
            Ok(())
        }),
    ),
    known(
        "bridge_certfile",
        "TLS: the bridge's certificate",
        Read::Bridge(|b, line| {
            b.tls.certfile = Some(line.text("file")?.to_string());
            Ok(())
        }),
    ),
    known(
        "bridge_keyfile",
        "TLS: the bridge's private key",
        Read::Bridge(|b, line| {
            b.tls.keyfile = Some(line.text("file")?.to_string());
            Ok(())
        }),
    ),
    known(
        "bridge_insecure",
        "TLS: do not check the remote broker's host name",
        Read::Bridge(|b, line| {
            b.tls.insecure = line.boolean()?;
            Ok(())
        }),
    ),
    known(
        "bridge_tls_version",
        "TLS: tlsv1.2 or tlsv1.3",
        Read::Bridge(|b, line| {
            let version = line.one("version")?;
            if !matches!(version, "tlsv1.2" | "tlsv1.3") {
                return Err(line.err(format!(
                    "bridge_tls_version: {version:?}: midge speaks tlsv1.2 and tlsv1.3"
                )));
            }
            b.tls.tls_version = Some(version.to_string());
            Ok(())
        }),
    ),
    known(
        "bridge_alpn",
        "TLS: the ALPN protocol to ask for",
        Read::Bridge(|b, line| {
            b.tls.alpn = Some(line.one("protocol")?.to_string());
            Ok(())
        }),
    ),
    known(
        "bridge_require_ocsp",
        "refused when true: rustls does not check stapled OCSP responses",
        Read::Bridge(|_, line| {
            // Refused rather than ignored: a bridge told to insist on a stapled OCSP
            // response must not connect without the check.
            if line.boolean()? {
                return Err(line.err(
                    "bridge_require_ocsp true is not supported: midge's TLS (rustls) does not check stapled OCSP responses",
                ));
            }
            Ok(())
        }),
    ),
    known(
        "bridge_identity",
        "refused: TLS-PSK (rustls has no PSK)",
        Read::Bridge(no_psk),
    ),
    known(
        "bridge_psk",
        "refused: TLS-PSK (rustls has no PSK)",
        Read::Bridge(no_psk),
    ),
];

/// `connection NAME`: a new bridge.
fn connection(config: &mut Config, line: &Line) -> Result<(), ConfigError> {
    let name = line.one("name")?;
    if config.bridges.iter().any(|b| b.name == name) {
        return Err(line.err(format!(
            "connection {name:?}: a bridge of that name is already configured"
        )));
    }
    config.bridges.push(Bridge::new(name, line.number));
    Ok(())
}

fn addresses(bridge: &mut Bridge, line: &Line) -> Result<(), ConfigError> {
    if line.args.is_empty() {
        return Err(line.err(format!("{} takes one or more host[:port]", line.option)));
    }
    for value in &line.args {
        bridge.addresses.push(address(value).ok_or_else(|| {
            line.err(format!(
                "{}: {value:?} is not host[:port] (an IPv6 address needs its port)",
                line.option
            ))
        })?);
    }
    Ok(())
}

fn remote_client_id(bridge: &mut Bridge, line: &Line) -> Result<(), ConfigError> {
    bridge.remote_client_id = Some(line.one("client id")?.to_string());
    Ok(())
}

fn remote_username(bridge: &mut Bridge, line: &Line) -> Result<(), ConfigError> {
    bridge.remote_username = Some(line.one("username")?.to_string());
    Ok(())
}

fn remote_password(bridge: &mut Bridge, line: &Line) -> Result<(), ConfigError> {
    bridge.remote_password = Some(line.one("password")?.to_string());
    Ok(())
}

fn start_type(bridge: &mut Bridge, line: &Line) -> Result<(), ConfigError> {
    bridge.start_type = match line.one("start type")? {
        "automatic" => StartType::Automatic,
        "lazy" => StartType::Lazy,
        "once" => StartType::Once,
        // RSMB's: started by a command, which Mosquitto (and midge) does not have.
        "manual" => {
            return Err(line.err(
                "start_type manual is not supported (as in Mosquitto): a manual bridge would wait for a start command that does not exist; use automatic, lazy or once",
            ))
        }
        other => {
            return Err(line.err(format!(
                "start_type: {other:?} is not automatic, lazy or once"
            )))
        }
    };
    Ok(())
}

fn restart_timeout(bridge: &mut Bridge, line: &Line) -> Result<(), ConfigError> {
    let seconds = |value: &str| value.parse::<u64>().ok().map(Duration::from_secs);
    bridge.restart_timeout = match line.args.as_slice() {
        [constant] => seconds(constant).map(RestartTimeout::Constant),
        [base, cap] => match (seconds(base), seconds(cap)) {
            (Some(base), Some(cap)) if base <= cap => Some(RestartTimeout::Backoff { base, cap }),
            _ => None,
        },
        _ => None,
    }
    .ok_or_else(|| {
        line.err("restart_timeout takes seconds, or a base and a cap in seconds (base <= cap)")
    })?;
    Ok(())
}

fn no_psk(_: &mut Bridge, line: &Line) -> Result<(), ConfigError> {
    Err(line.err(format!(
        "{}: TLS-PSK is not supported (midge's TLS, rustls, has no PSK); use certificates",
        line.option
    )))
}

/// Checks at the end of the file: every bridge has somewhere to connect and something to
/// carry.
pub(super) fn check(config: &Config, file: &std::path::Path) -> Result<(), ConfigError> {
    for bridge in &config.bridges {
        let missing = if bridge.addresses.is_empty() {
            Some("no address".to_string())
        } else if bridge.topics.is_empty() {
            Some("no topic".to_string())
        } else if bridge.remote_password.is_some() && bridge.remote_username.is_none() {
            Some("a remote_password without a remote_username".to_string())
        } else if bridge.tls.certfile.is_some() != bridge.tls.keyfile.is_some() {
            Some("bridge_certfile and bridge_keyfile must be given together".to_string())
        } else {
            // Certificates and keys are read now: a bad file stops the start.
            crate::bridge::tls_config(bridge).err()
        };
        if let Some(what) = missing {
            return Err(ConfigError {
                file: file.to_path_buf(),
                line: bridge.line,
                message: format!("bridge {:?}: {what}", bridge.name),
            });
        }
    }
    Ok(())
}

/// `host[:port]` (1883 unless given); an IPv6 address needs its port (`::1:1883`), or
/// brackets (`[::1]:1883`).
fn address(value: &str) -> Option<(String, u16)> {
    if let Some(rest) = value.strip_prefix('[') {
        let (host, port) = rest.split_once("]:")?;
        return Some((host.to_string(), port.parse().ok()?));
    }
    match value.rsplit_once(':') {
        None if !value.is_empty() => Some((value.to_string(), 1883)),
        Some((host, port)) if !host.is_empty() => Some((host.to_string(), port.parse().ok()?)),
        _ => None,
    }
}

/// `topic pattern [[[out | in | both] qos] local-prefix remote-prefix]`, `""` standing for
/// an empty pattern or prefix.
fn bridge_topic(line: &Line) -> Result<BridgeTopic, ConfigError> {
    let empty = |s: &str| {
        if s == "\"\"" {
            String::new()
        } else {
            s.to_string()
        }
    };
    let (pattern, direction, qos, prefixes) = match line.args.as_slice() {
        [pattern] => (*pattern, "out", "0", None),
        [pattern, direction] => (*pattern, *direction, "0", None),
        [pattern, direction, qos] => (*pattern, *direction, *qos, None),
        [pattern, direction, qos, local, remote] => {
            (*pattern, *direction, *qos, Some((empty(local), empty(remote))))
        }
        _ => {
            return Err(line.err(
                "topic takes a pattern, then optionally out|in|both, a QoS, and a local and a remote prefix (both)",
            ))
        }
    };
    let direction = match direction {
        "out" => Direction::Out,
        "in" => Direction::In,
        "both" => Direction::Both,
        other => return Err(line.err(format!("topic: {other:?} is not out, in or both"))),
    };
    let qos = qos
        .parse::<u8>()
        .ok()
        .and_then(QoS::from_u8)
        .ok_or_else(|| line.err(format!("topic: QoS {qos:?} is not 0, 1 or 2")))?;
    let pattern = empty(pattern);
    let (local_prefix, remote_prefix) = prefixes.unwrap_or_default();
    // Mosquitto's table: an empty pattern needs both prefixes, which are then the topics.
    if pattern.is_empty() && (local_prefix.is_empty() || remote_prefix.is_empty()) {
        return Err(
            line.err("topic: an empty pattern (\"\") needs both a local and a remote prefix")
        );
    }
    for prefix in [&local_prefix, &remote_prefix] {
        if prefix.contains(['+', '#']) {
            return Err(line.err(format!("topic: the prefix {prefix:?} has a wildcard")));
        }
    }
    let topic = BridgeTopic {
        pattern,
        direction,
        qos,
        local_prefix,
        remote_prefix,
    };
    for filter in [topic.local_filter(), topic.remote_filter()] {
        if topic::validate_filter(&filter).is_err() {
            return Err(line.err(format!("topic: {filter:?} is not a valid topic filter")));
        }
    }
    Ok(topic)
}

#[cfg(test)]
mod tests;
