//! Option names: the ones midge acts on, the Mosquitto 2.0 ones it reads but does not act on
//! yet (a warning), and the nearest known name for a misspelling.

/// Options midge acts on (Mosquitto's, then midge's own).
pub const SUPPORTED: &[&str] = &[
    "acl_file",
    "allow_anonymous",
    "allow_zero_length_clientid",
    "auto_id_prefix",
    "autosave_interval",
    "autosave_on_changes",
    "bind_address",
    "bind_interface",
    "check_retain_source",
    "clientid_prefixes",
    "connection_messages",
    "include_dir",
    "listener",
    "log_dest",
    "log_facility",
    "log_timestamp",
    "log_timestamp_format",
    "log_type",
    "max_connections",
    "max_inflight_messages",
    "max_keepalive",
    "max_packet_size",
    "max_qos",
    "max_queued_bytes",
    "max_queued_messages",
    "maximum_qos",
    "memory_limit",
    "max_topic_alias",
    "message_size_limit",
    "mount_point",
    "password_file",
    "per_listener_settings",
    "persistence",
    "persistence_file",
    "persistence_location",
    "persistent_client_expiration",
    "pid_file",
    "port",
    "protocol",
    "retain_available",
    "socket_domain",
    "sys_interval",
    "upgrade_outgoing_qos",
    "use_username_as_clientid",
    "user",
    // TLS (tls/mod.rs); the PSK, cipher and engine options are refused with the reason
    "cafile",
    "capath",
    "certfile",
    "ciphers",
    "ciphers_tls1.3",
    "crlfile",
    "dhparamfile",
    "keyfile",
    "ocsp_stapling",
    "psk_file",
    "psk_hint",
    "require_certificate",
    "tls_engine",
    "tls_engine_kpass_sha1",
    "tls_keyform",
    "tls_version",
    "use_identity_as_username",
    "use_subject_as_username",
    "websockets_headers_size",
    // midge's own
    "acl_strict_subscribe",
    "client_idle_timeout",
    "connect_timeout",
    "cpu_affinity",
    "io_backend",
    "io_batch_wait_us",
    "metrics_listener",
    "persistence_on_damage",
    "persistence_sync",
    "response_topic_prefix",
    "threads",
];

/// Mosquitto 2.0 options that midge reads but does not act on yet: a warning, not an error.
/// (Plugins, `http_dir` and a few tuning knobs.)
pub const NOT_YET: &[&str] = &[
    "accept_protocol_versions",
    "allow_duplicate_messages",
    "auth_plugin",
    "auth_plugin_deny_special_chars",
    "enable_control_api",
    "http_dir",
    "max_inflight_bytes",
    "plugin",
    "queue_qos0_messages",
    "retry_interval",
    "set_tcp_nodelay",
    "store_clean_interval",
    "websockets_log_level",
];

/// The bridge options (`connection` and what follows it): read and checked
/// (`config/bridge.rs`).
pub const BRIDGE: &[&str] = &[
    "address",
    "addresses",
    "bridge_alpn",
    "bridge_attempt_unsubscribe",
    "bridge_bind_address",
    "bridge_cafile",
    "bridge_capath",
    "bridge_certfile",
    "bridge_identity",
    "bridge_insecure",
    "bridge_keyfile",
    "bridge_max_packet_size",
    "bridge_outgoing_retain",
    "bridge_protocol_version",
    "bridge_psk",
    "bridge_receive_maximum",
    "bridge_require_ocsp",
    "bridge_session_expiry_interval",
    "bridge_tls_version",
    "cleansession",
    "clientid",
    "connection",
    "idle_timeout",
    "keepalive_interval",
    "local_cleansession",
    "local_clientid",
    "local_password",
    "local_username",
    "notification_topic",
    "notifications",
    "notifications_local_only",
    "password",
    "remote_clientid",
    "remote_password",
    "remote_username",
    "restart_timeout",
    "round_robin",
    "start_type",
    "threshold",
    "topic",
    "try_private",
    "username",
];

/// Whether `option` is a Mosquitto option midge reads without acting on it. Plugin options
/// (`plugin_opt_*`, `auth_opt_*`) take any suffix.
pub fn not_yet(option: &str) -> bool {
    NOT_YET.contains(&option)
        || option.starts_with("plugin_opt_")
        || option.starts_with("auth_opt_")
}

/// The known option nearest to `unknown`, if it is close enough to be a misspelling.
pub fn suggest(unknown: &str) -> Option<&'static str> {
    let limit = (unknown.len() / 4).clamp(1, 3);
    SUPPORTED
        .iter()
        .chain(NOT_YET)
        .chain(BRIDGE)
        .map(|&name| (edit_distance(unknown, name), name))
        .filter(|&(d, _)| d <= limit)
        .min()
        .map(|(_, name)| name)
}

/// Levenshtein distance (insertions, deletions, substitutions), on bytes.
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, &ca) in a.iter().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (diagonal + usize::from(ca != cb))
                .min(above + 1)
                .min(row[j] + 1);
            diagonal = above;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn misspellings_get_the_right_name() {
        assert_eq!(
            suggest("max_inflight_mesages"),
            Some("max_inflight_messages")
        );
        assert_eq!(suggest("allow_anonymus"), Some("allow_anonymous"));
        assert_eq!(suggest("listner"), Some("listener"));
        assert_eq!(suggest("pasword_file"), Some("password_file"));
        assert_eq!(suggest("completely_different"), None);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn lists_do_not_overlap() {
        for name in SUPPORTED.iter().chain(BRIDGE) {
            assert!(!NOT_YET.contains(name), "{name} is in two lists");
        }
        for name in SUPPORTED {
            assert!(!BRIDGE.contains(name), "{name} is in two lists");
        }
    }
}
