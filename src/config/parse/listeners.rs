//! The listener options: `listener` itself, the default listener's `port` and
//! `bind_address`, and what applies to the listener above them.

use super::table::{known, Known, Read};
use super::{Line, Reader};
use crate::codec::QoS;
use crate::config::{ConfigError, Listener, SocketDomain, LISTENERS_MAX};

pub(super) const OPTIONS: &[Known] = &[
    known(
        "listener",
        "a listener: a port and an optional address, or port 0 and a Unix socket's path",
        Read::Reader(listener),
    ),
    known(
        "port",
        "the default listener's port",
        Read::Reader(|r, line| {
            r.top.port = line.number(u16::MAX.into())? as u16;
            r.default_listener = true;
            Ok(())
        }),
    ),
    known(
        "bind_address",
        "the default listener's address",
        Read::Reader(|r, line| {
            r.top.bind = Some(line.one("address")?.to_string());
            r.default_listener = true;
            Ok(())
        }),
    ),
    known(
        "bind_interface",
        "the network interface a listener is bound to",
        Read::Listener(|l, line| {
            l.bind_interface = Some(line.one("interface name")?.to_string());
            Ok(())
        }),
    ),
    known(
        "socket_domain",
        "ipv4 or ipv6 only, for a listener with no address",
        Read::Listener(|l, line| {
            l.socket_domain = Some(match line.one("domain")? {
                "ipv4" => SocketDomain::Ipv4,
                "ipv6" => SocketDomain::Ipv6,
                other => {
                    return Err(
                        line.err(format!("socket_domain: {other:?} is neither ipv4 nor ipv6"))
                    )
                }
            });
            Ok(())
        }),
    ),
    known(
        "max_connections",
        "connections a listener takes at once (-1: no limit)",
        Read::Listener(|l, line| {
            l.connections_max = line.limit()?;
            Ok(())
        }),
    ),
    known(
        "mount_point",
        "a topic prefix a listener's clients publish and subscribe under",
        Read::Listener(|l, line| {
            let mount = line.text("topic prefix")?;
            if crate::topic::validate_topic_name(mount).is_err() || mount.starts_with('$') {
                return Err(line.err(format!(
                    "mount_point: {mount:?} is not a valid topic prefix"
                )));
            }
            l.mount_point = Some(mount.to_string());
            Ok(())
        }),
    ),
    known(
        "protocol",
        "mqtt or websockets",
        Read::Listener(|l, line| {
            match line.one("protocol")? {
                "mqtt" => {}
                "websockets" => l.websockets = true,
                other => {
                    return Err(line.err(format!(
                        "protocol: {other:?} is neither mqtt nor websockets"
                    )))
                }
            }
            Ok(())
        }),
    ),
    known(
        "max_topic_alias",
        "the Topic Alias Maximum a listener gives MQTT 5.0 clients",
        Read::Listener(|l, line| {
            l.topic_alias_max = line.number(65535)? as u16;
            Ok(())
        }),
    ),
    known(
        "max_qos",
        "the highest QoS a listener takes",
        Read::Listener(max_qos),
    ),
    known("maximum_qos", "as max_qos", Read::Listener(max_qos)),
    known(
        "use_username_as_clientid",
        "a client's user name is its client id",
        Read::Listener(|l, line| {
            l.use_username_as_clientid = line.boolean()?;
            Ok(())
        }),
    ),
];

fn max_qos(l: &mut Listener, line: &Line) -> Result<(), ConfigError> {
    l.max_qos = match line.number(2)? {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    };
    Ok(())
}

/// `listener PORT [ADDRESS]`: a new listener, starting from the listener options read
/// before the first listener (unless they made a default listener of their own).
fn listener(r: &mut Reader, line: &Line) -> Result<(), ConfigError> {
    if r.config.listeners.len() >= LISTENERS_MAX {
        return Err(line.err(format!("too many listeners (at most {LISTENERS_MAX})")));
    }
    let (port, bind) = match line.args.as_slice() {
        [port] => (*port, None),
        [port, bind] => (*port, Some(bind.to_string())),
        _ => return Err(line.err("listener takes a port and an optional address")),
    };
    let port: u16 = port
        .parse()
        .map_err(|_| line.err(format!("listener: bad port {port:?}")))?;
    let mut listener = if r.default_listener {
        Listener::default()
    } else {
        r.top.clone()
    };
    listener.port = port;
    listener.unix_socket = None;
    match bind {
        // Port 0 with a path is a Unix socket, as in Mosquitto (any argument that is not an
        // IP address; with an IP address or none, port 0 is a free port, midge's own).
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
    r.config.listeners.push(listener);
    r.in_listener = true;
    Ok(())
}
