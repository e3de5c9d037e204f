//! The broker's own settings: limits, logging, the process, `include_dir`, and midge's
//! own options.

use super::table::{known, Known, Read};
use super::{duration, Line, Reader, INCLUDE_DEPTH_MAX};
use crate::config::{Config, ConfigError, CpuAffinity, IoBackend};
use crate::logging::{LogDest, LogTypes};

pub(super) const OPTIONS: &[Known] = &[
    // Limits.
    known(
        "max_inflight_messages",
        "QoS 1/2 messages in flight to a client at once (0: no limit, kept at 65535)",
        Read::Broker(|c, line| {
            let n = line.number(65535)? as usize;
            c.inflight_max = if n == 0 { 65535 } else { n };
            Ok(())
        }),
    ),
    known(
        "max_queued_messages",
        "messages queued for a client (0: no limit on the count; max_queued_bytes and memory_limit still bound them)",
        Read::Broker(|c, line| {
            let n = line.number(u32::MAX.into())? as usize;
            c.queued_max = if n == 0 { usize::MAX } else { n };
            Ok(())
        }),
    ),
    known(
        "memory_limit",
        "bytes the broker may hold for its clients",
        Read::Broker(|c, line| {
            c.memory_limit = line.number(u64::MAX)? as usize;
            Ok(())
        }),
    ),
    known(
        "max_queued_bytes",
        "bytes queued for a client",
        Read::Broker(|c, line| {
            c.queued_bytes_max = line.number(u32::MAX.into())? as usize;
            Ok(())
        }),
    ),
    known(
        "max_packet_size",
        "the largest packet the broker takes (at least 20)",
        Read::Broker(|c, line| {
            c.packet_size_max = line.number(268_435_460)?.max(20) as usize;
            Ok(())
        }),
    ),
    known(
        "retain_available",
        "whether clients may publish retained messages",
        Read::Broker(|c, line| {
            c.retain_available = line.boolean()?;
            Ok(())
        }),
    ),
    known(
        "check_retain_source",
        "a retained message is sent only if its publisher may still write its topic",
        Read::Broker(|c, line| {
            c.check_retain_source = line.boolean()?;
            Ok(())
        }),
    ),
    known(
        "upgrade_outgoing_qos",
        "deliver at the subscription's QoS, not the lower of it and the message's",
        Read::Broker(|c, line| {
            c.upgrade_outgoing_qos = line.boolean()?;
            Ok(())
        }),
    ),
    known(
        "message_size_limit",
        "the largest payload the broker takes",
        Read::Broker(|c, line| {
            c.message_size_limit = line.number(268_435_455)? as usize;
            Ok(())
        }),
    ),
    known(
        "max_keepalive",
        "the longest keep alive a client may ask for",
        Read::Broker(|c, line| {
            c.keepalive_max_s = line.number(65535)? as u16;
            Ok(())
        }),
    ),
    known(
        "persistent_client_expiration",
        "how long a persistent session of a 3.x client outlives its connection",
        Read::Broker(|c, line| {
            let value = line.one("duration")?;
            let d = duration(value).ok_or_else(|| {
                line.err(format!(
                    "persistent_client_expiration: {value:?} is not a duration (a number and s, h, d, w, m or y)"
                ))
            })?;
            c.persistent_client_expiration = Some(d);
            Ok(())
        }),
    ),
    // Logging.
    known(
        "log_dest",
        "where log lines go: stdout, stderr, file PATH, syslog, topic or none",
        Read::Reader(log_dest),
    ),
    known("log_type", "which log lines are written", Read::Reader(log_type)),
    known(
        "log_timestamp",
        "log lines start with the time",
        Read::Broker(|c, line| {
            c.log.timestamp = line.boolean()?;
            Ok(())
        }),
    ),
    known(
        "log_timestamp_format",
        "the time's strftime format",
        Read::Broker(|c, line| {
            c.log.timestamp_format = Some(line.text("format")?.to_string());
            Ok(())
        }),
    ),
    known(
        "log_facility",
        "syslog's LOCAL0 to LOCAL7",
        Read::Broker(|c, line| {
            c.log.facility = line.number(7)? as u8;
            Ok(())
        }),
    ),
    known(
        "connection_messages",
        "log clients' connections and disconnections",
        Read::Broker(|c, line| {
            c.connection_messages = line.boolean()?;
            Ok(())
        }),
    ),
    // The process.
    known(
        "pid_file",
        "where the broker writes its process id",
        Read::Broker(|c, line| {
            c.pid_file = Some(line.text("path")?.into());
            Ok(())
        }),
    ),
    known(
        "user",
        "the user the broker runs as once started as root",
        Read::Broker(|c, line| {
            c.user = Some(line.one("user name")?.to_string());
            Ok(())
        }),
    ),
    known(
        "sys_interval",
        "seconds between $SYS updates (0: none)",
        Read::Broker(|c, line| {
            c.sys_interval_s = line.number(u32::MAX.into())?;
            Ok(())
        }),
    ),
    known(
        "include_dir",
        "read the .conf files of a directory, in name order",
        Read::Reader(include_dir),
    ),
    // midge's own.
    known(
        "metrics_listener",
        "midge's own: an address and port serving Prometheus metrics",
        Read::Broker(|c, line| {
            let value = line.one("address:port")?;
            let addr = value.parse::<std::net::SocketAddr>().map_err(|_| {
                line.err(format!(
                    "metrics_listener: {value:?} is not an address and port (127.0.0.1:9883, [::1]:9883)"
                ))
            })?;
            c.metrics_listener = Some(addr);
            Ok(())
        }),
    ),
    known(
        "threads",
        "midge's own: shards (event loops), 0 for one per core",
        Read::Broker(|c, line| {
            c.threads = line.number(crate::limits::SHARDS_MAX as u64)? as usize;
            Ok(())
        }),
    ),
    known(
        "cpu_affinity",
        "midge's own: pin shards to cores (true, false, or a list of cores)",
        Read::Broker(cpu_affinity),
    ),
    known(
        "connect_timeout",
        "midge's own: seconds a new connection has to send its CONNECT",
        Read::Broker(|c, line| {
            c.connect_timeout_s = line.number(3600)?.max(1);
            Ok(())
        }),
    ),
    known(
        "client_idle_timeout",
        "midge's own: seconds a client without a keep alive may stay silent (0: for ever)",
        Read::Broker(|c, line| {
            c.client_idle_timeout_s = line.number(u32::MAX.into())?;
            Ok(())
        }),
    ),
    known(
        "websockets_headers_size",
        "the largest WebSocket upgrade request, in bytes",
        Read::Broker(|c, line| {
            c.websockets_headers_size = match line.number(1 << 20)? {
                0 => 1024,
                n => n as usize,
            };
            Ok(())
        }),
    ),
    known(
        "io_batch_wait_us",
        "midge's own: microseconds a shard waits to batch its socket writes",
        Read::Broker(|c, line| {
            c.io_batch_wait_us = line.number(1000)? as u32;
            Ok(())
        }),
    ),
    known(
        "io_backend",
        "midge's own: auto, uring or epoll",
        Read::Broker(|c, line| {
            let value = line.one("backend")?;
            c.io_backend = IoBackend::parse(value).ok_or_else(|| {
                line.err(format!(
                    "io_backend: {value:?} is not one of auto, uring, epoll"
                ))
            })?;
            Ok(())
        }),
    ),
    known(
        "response_topic_prefix",
        "midge's own: the Response Information given to MQTT 5.0 clients that ask",
        Read::Broker(|c, line| {
            let prefix = line.one("topic prefix")?;
            if crate::topic::validate_topic_name(prefix).is_err() {
                return Err(line.err(format!(
                    "response_topic_prefix: {prefix:?} is not a valid topic name"
                )));
            }
            c.response_topic_prefix = Some(prefix.to_string());
            Ok(())
        }),
    ),
];

/// `log_dest`: the first line replaces the default destinations; later ones add.
fn log_dest(r: &mut Reader, line: &Line) -> Result<(), ConfigError> {
    let log = &mut r.config.log;
    if !r.log_dest_said {
        log.dests.clear();
        r.log_dest_said = true;
    }
    let dest = match line.args.first().copied() {
        Some("stdout") => LogDest::Stdout,
        Some("stderr") => LogDest::Stderr,
        Some("syslog") => LogDest::Syslog,
        Some("none") => {
            log.dests.clear();
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
            return Err(line.err("log_dest takes stdout, stderr, file PATH, syslog, topic or none"))
        }
    };
    if !log.dests.contains(&dest) {
        log.dests.push(dest);
    }
    Ok(())
}

/// `log_type`: the first line replaces the default types; later ones add (`none` clears).
fn log_type(r: &mut Reader, line: &Line) -> Result<(), ConfigError> {
    let log = &mut r.config.log;
    if !r.log_type_said {
        log.types = LogTypes::NONE;
        r.log_type_said = true;
    }
    let name = line.one("type")?;
    let types = LogTypes::named(name).ok_or_else(|| {
        line.err(format!("log_type: unknown type {name:?} (error, warning, notice, information, subscribe, unsubscribe, websockets, debug, all, none)"))
    })?;
    if types == LogTypes::NONE {
        log.types = LogTypes::NONE;
    } else {
        log.types = log.types.with(types);
    }
    Ok(())
}

/// `include_dir`: the directory's `.conf` files, in name order, as Mosquitto reads them.
fn include_dir(r: &mut Reader, line: &Line) -> Result<(), ConfigError> {
    let dir = line.text("directory")?;
    if line.depth >= INCLUDE_DEPTH_MAX {
        return Err(line.err("include_dir nested too deeply"));
    }
    let entries = std::fs::read_dir(dir)
        .map_err(|e| line.err(format!("include_dir: cannot read {dir:?}: {e}")))?;
    let mut files: Vec<_> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "conf") && p.is_file())
        .collect();
    files.sort();
    for path in files {
        r.file(&path, line.depth + 1)?;
    }
    Ok(())
}

fn cpu_affinity(c: &mut Config, line: &Line) -> Result<(), ConfigError> {
    c.cpu_affinity = match line.one("value")? {
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
    };
    Ok(())
}
