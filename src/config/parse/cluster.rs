//! midge's own options for a cluster of nodes on NATS (`cluster/`).

use super::table::{known, Known, Read};
use super::Line;
use crate::config::ConfigError;

/// `jetstream` (true) or `node` (false): where the cluster keeps what `option` names.
fn in_jetstream(line: &Line, option: &str) -> Result<bool, ConfigError> {
    match line.one("place")? {
        "jetstream" => Ok(true),
        "node" => Ok(false),
        other => Err(line.err(format!("{option}: {other:?} is neither jetstream nor node"))),
    }
}

/// A name that goes into NATS subjects as one token: letters, digits, `-` and `_`.
fn token<'a>(line: &'a Line, what: &str) -> Result<&'a str, ConfigError> {
    let value = line.one(what)?;
    let fits = !value.is_empty()
        && value.len() <= 64
        && (value.bytes()).all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !fits {
        return Err(line.err(format!(
            "{}: {value:?} must be 1 to 64 letters, digits, - or _",
            line.option
        )));
    }
    Ok(value)
}

/// A whole number from `low` to `high`.
fn in_range(line: &Line, low: u64, high: u64) -> Result<u64, ConfigError> {
    let value = line.one("number")?;
    (value.parse::<u64>().ok())
        .filter(|n| (low..=high).contains(n))
        .ok_or_else(|| {
            line.err(format!(
                "{}: {value:?} is not a number from {low} to {high}",
                line.option
            ))
        })
}

pub(super) const OPTIONS: &[Known] = &[
    known(
        "cluster_nats_url",
        "a NATS server of the cluster (nats://host:port, tls://...); several, on one line or more, for failover",
        Read::Broker(|c, line| {
            c.cluster.origin = Some((line.file.to_path_buf(), line.number));
            if line.args.is_empty() {
                return Err(line.err("cluster_nats_url takes one or more URLs"));
            }
            for url in &line.args {
                for url in url.split(',').filter(|u| !u.is_empty()) {
                    url.parse::<async_nats::ServerAddr>()
                        .map_err(|e| line.err(format!("cluster_nats_url {url}: {e}")))?;
                    c.cluster.urls.push(url.to_string());
                }
            }
            Ok(())
        }),
    ),
    known(
        "cluster_name",
        "the cluster this node joins (default midge): nodes with the same name on one NATS are one broker",
        Read::Broker(|c, line| {
            c.cluster.origin = Some((line.file.to_path_buf(), line.number));
            c.cluster.name = token(line, "name")?.to_string();
            Ok(())
        }),
    ),
    known(
        "cluster_node_id",
        "this node's name in the cluster (default: the host name)",
        Read::Broker(|c, line| {
            c.cluster.origin = Some((line.file.to_path_buf(), line.number));
            c.cluster.node_id = Some(token(line, "name")?.to_string());
            Ok(())
        }),
    ),
    known(
        "cluster_nats_user",
        "the user name the node gives NATS (with cluster_nats_password)",
        Read::Broker(|c, line| {
            c.cluster.origin = Some((line.file.to_path_buf(), line.number));
            c.cluster.user = Some(line.one("user name")?.to_string());
            Ok(())
        }),
    ),
    known(
        "cluster_nats_password",
        "the password the node gives NATS (with cluster_nats_user; the rest of the line)",
        Read::Broker(|c, line| {
            c.cluster.origin = Some((line.file.to_path_buf(), line.number));
            // The rest of the line: a password may hold spaces.
            c.cluster.password = Some(line.text("password")?.to_string());
            Ok(())
        }),
    ),
    known(
        "cluster_nats_token",
        "a token the node gives NATS",
        Read::Broker(|c, line| {
            c.cluster.origin = Some((line.file.to_path_buf(), line.number));
            c.cluster.token = Some(line.one("token")?.to_string());
            Ok(())
        }),
    ),
    known(
        "cluster_nats_creds",
        "a NATS .creds file (user JWT and NKey seed) the node authenticates with",
        Read::Broker(|c, line| {
            c.cluster.origin = Some((line.file.to_path_buf(), line.number));
            c.cluster.creds = Some(line.path()?);
            Ok(())
        }),
    ),
    known(
        "cluster_nats_cafile",
        "TLS to NATS: the CA certificate the servers' certificates are checked against",
        Read::Broker(|c, line| {
            c.cluster.origin = Some((line.file.to_path_buf(), line.number));
            c.cluster.cafile = Some(line.path()?);
            Ok(())
        }),
    ),
    known(
        "cluster_nats_certfile",
        "TLS to NATS: this node's certificate (with cluster_nats_keyfile)",
        Read::Broker(|c, line| {
            c.cluster.origin = Some((line.file.to_path_buf(), line.number));
            c.cluster.certfile = Some(line.path()?);
            Ok(())
        }),
    ),
    known(
        "cluster_nats_keyfile",
        "TLS to NATS: this node's private key (with cluster_nats_certfile)",
        Read::Broker(|c, line| {
            c.cluster.origin = Some((line.file.to_path_buf(), line.number));
            c.cluster.keyfile = Some(line.path()?);
            Ok(())
        }),
    ),
    known(
        "cluster_max_subscriptions",
        "the NATS subscriptions the node holds for its clients' filters at most (default 10000); past it, it takes every message of the cluster and keeps what its clients want",
        Read::Broker(|c, line| {
            c.cluster.origin = Some((line.file.to_path_buf(), line.number));
            c.cluster.max_subscriptions = in_range(line, 1, u64::from(u32::MAX))? as usize;
            Ok(())
        }),
    ),
    known(
        "cluster_retained",
        "where the cluster keeps retained messages: jetstream (default; once, in a JetStream stream, found from every node) or node (each node those published on it)",
        Read::Broker(|c, line| {
            c.cluster.origin = Some((line.file.to_path_buf(), line.number));
            c.cluster.retained_in_jetstream = in_jetstream(line, "cluster_retained")?;
            Ok(())
        }),
    ),
    known(
        "cluster_sessions",
        "who decides where a client's session is: jetstream (default; the cluster, one live connection per client id, the session following its client to any node) or node (each node alone)",
        Read::Broker(|c, line| {
            c.cluster.origin = Some((line.file.to_path_buf(), line.number));
            c.cluster.sessions_in_jetstream = in_jetstream(line, "cluster_sessions")?;
            Ok(())
        }),
    ),
    known(
        "cluster_messages",
        "how QoS 1 and 2 messages go between nodes: jetstream (default; through a JetStream stream, the publisher acknowledged once it has them) or core (core NATS alone: at most once between nodes)",
        Read::Broker(|c, line| {
            c.cluster.origin = Some((line.file.to_path_buf(), line.number));
            c.cluster.messages_in_jetstream = match line.one("how")? {
                "jetstream" => true,
                "core" => false,
                other => {
                    let why = format!("cluster_messages: {other:?} is neither jetstream nor core");
                    return Err(line.err(why));
                }
            };
            Ok(())
        }),
    ),
    known(
        "cluster_messages_max_age",
        "seconds the stream of QoS 1 and 2 messages keeps each (60 to 31536000, default 3600): a session taken over from a node that died gets what came for it within that time",
        Read::Broker(|c, line| {
            c.cluster.origin = Some((line.file.to_path_buf(), line.number));
            let seconds = in_range(line, 60, 31_536_000)?;
            c.cluster.messages_max_age = std::time::Duration::from_secs(seconds);
            Ok(())
        }),
    ),
    known(
        "cluster_messages_max_bytes",
        "bytes the stream of QoS 1 and 2 messages keeps at most, its oldest dropped past it (1048576 and up, default 1073741824)",
        Read::Broker(|c, line| {
            c.cluster.origin = Some((line.file.to_path_buf(), line.number));
            c.cluster.messages_max_bytes = in_range(line, 1 << 20, 1 << 50)?;
            Ok(())
        }),
    ),
    known(
        "cluster_replicas",
        "how many NATS servers keep each JetStream stream of the cluster (1 to 5, default 1; 3 for a three-server NATS cluster)",
        Read::Broker(|c, line| {
            c.cluster.origin = Some((line.file.to_path_buf(), line.number));
            c.cluster.replicas = in_range(line, 1, 5)? as usize;
            Ok(())
        }),
    ),
    known(
        "cluster_retained_sweep_interval",
        "seconds between two sweeps of the retained messages' stream, which delete removals and expired messages (default 60)",
        Read::Broker(|c, line| {
            c.cluster.origin = Some((line.file.to_path_buf(), line.number));
            let seconds = in_range(line, 1, 86_400)?;
            c.cluster.sweep_every = std::time::Duration::from_secs(seconds);
            Ok(())
        }),
    ),
    known(
        "cluster_node_timeout",
        "seconds a node's heartbeats may be missing before the other nodes take it for gone, take over its sessions and publish its clients' wills (2 to 3600, default 10)",
        Read::Broker(|c, line| {
            c.cluster.origin = Some((line.file.to_path_buf(), line.number));
            let seconds = in_range(line, 2, 3600)?;
            c.cluster.node_timeout = std::time::Duration::from_secs(seconds);
            Ok(())
        }),
    ),
];
