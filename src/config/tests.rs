use super::*;
use crate::logging::{LogDest, LogTypes};
use std::path::Path;

fn read(text: &str) -> Result<Config, ConfigError> {
    Config::from_text(Path::new("m.conf"), text)
}

#[test]
fn reads_options_and_names_bad_lines() {
    let c = read(
        "# comment\nlistener 1884 127.0.0.1\nmax_inflight_messages 5\nmax_queued_messages 10\n",
    )
    .unwrap();
    assert_eq!(c.listeners.len(), 1);
    assert_eq!(c.listeners[0].port, 1884);
    assert_eq!(
        c.listeners[0].addrs().unwrap(),
        vec!["127.0.0.1:1884".parse().unwrap()]
    );
    assert_eq!((c.inflight_max, c.queued_max, c.local_only), (5, 10, false));
    let e = read("\nmax_inflight_mesages 5\n").unwrap_err();
    assert_eq!(e.line, 2);
    assert!(e.to_string().contains("m.conf:2"), "{e}");
    assert!(
        e.message.contains("did you mean max_inflight_messages?"),
        "{e}"
    );
    let e = read("allow_anonymous maybe\n").unwrap_err();
    assert!(e.message.contains("neither true nor false"));
    let e = read("no_such_thing_at_all 1\n").unwrap_err();
    assert!(!e.message.contains("did you mean"), "{e}");
}

#[test]
fn mosquitto_defaults() {
    let c = Config::default();
    assert_eq!((c.inflight_max, c.queued_max), (20, 1000));
    assert_eq!(c.keepalive_max_s, 65535);
    assert_eq!(c.listener_defaults.topic_alias_max, 10);
    assert!(c.security.anonymous_allowed(), "local only mode");
    // A listener makes anonymous access opt-in (Mosquitto 2).
    let c = read("listener 1883\n").unwrap();
    assert!(!c.security.anonymous_allowed());
    let c = read("listener 1883\nallow_anonymous true\n").unwrap();
    assert!(c.security.anonymous_allowed());
    // Only the file's log_type lines count once one is given.
    assert_eq!(c.log.types, LogTypes::DEFAULT);
    assert_eq!(c.log.dests, vec![LogDest::Stderr]);
}

#[test]
fn listener_options_apply_to_the_listener_above() {
    let c = read(
        "max_connections 7\n\
         listener 1883\n\
         mount_point a/\n\
         listener 1884 ::1\n\
         max_connections 2\n\
         max_topic_alias 3\n\
         socket_domain ipv6\n",
    )
    .unwrap();
    assert_eq!(c.listeners.len(), 2);
    // Before any listener (and without port): the starting values of every listener.
    assert_eq!(c.listeners[0].connections_max, Some(7));
    assert_eq!(c.listeners[0].mount_point.as_deref(), Some("a/"));
    assert_eq!(c.listeners[1].connections_max, Some(2));
    assert_eq!(c.listeners[1].mount_point, None);
    assert_eq!(c.listeners[1].topic_alias_max, 3);
    assert_eq!(c.listeners[0].topic_alias_max, 10);
    let addrs = c.listeners[0].addrs().unwrap();
    assert_eq!(addrs.len(), 2, "every address, IPv4 first: {addrs:?}");
    assert!(addrs[0].is_ipv4() && addrs[1].is_ipv6());
}

#[test]
fn port_makes_a_default_listener_that_owns_the_options_above() {
    let c = read("port 1885\nmax_connections 4\nlistener 1886\n").unwrap();
    assert_eq!(c.listeners.len(), 2);
    assert_eq!(
        (c.listeners[0].port, c.listeners[0].connections_max),
        (1885, Some(4))
    );
    assert_eq!(
        (c.listeners[1].port, c.listeners[1].connections_max),
        (1886, None)
    );
    assert_eq!(
        read("max_connections -1\nport 1\n").unwrap().listeners[0].connections_max,
        None
    );
}

#[test]
fn per_listener_security() {
    let c = read(
        "per_listener_settings true\n\
         listener 1883\n\
         allow_anonymous true\n\
         listener 1884\n\
         auto_id_prefix x-\n",
    )
    .unwrap();
    assert!(c.security(0).anonymous_allowed());
    assert!(!c.security(1).anonymous_allowed());
    assert_eq!(c.security(1).auto_id_prefix, "x-");
    assert_eq!(c.security(0).auto_id_prefix, "auto-");
    // Global security when not per listener, wherever the line is.
    let c = read("listener 1883\nallow_anonymous true\nlistener 1884\n").unwrap();
    assert!(c.security(0).anonymous_allowed() && c.security(1).anonymous_allowed());
    // per_listener_settings after a listener is refused: the earlier lines would change
    // meaning.
    let e = read("listener 1883\nper_listener_settings true\n").unwrap_err();
    assert!(e.message.contains("must come before"), "{e}");
}

#[test]
fn logging_options() {
    let c = read(
        "log_dest stdout\nlog_dest file /tmp/midge test.log\nlog_type error\nlog_type subscribe\n\
         log_timestamp_format %Y-%m-%d %H:%M:%S\nlog_timestamp false\n",
    )
    .unwrap();
    assert_eq!(
        c.log.dests,
        vec![LogDest::Stdout, LogDest::File("/tmp/midge test.log".into())]
    );
    assert_eq!(c.log.types, LogTypes::ERROR.with(LogTypes::SUBSCRIBE));
    assert_eq!(c.log.timestamp_format.as_deref(), Some("%Y-%m-%d %H:%M:%S"));
    assert!(!c.log.timestamp);
    assert!(read("log_dest none\n").unwrap().log.dests.is_empty());
    assert!(read("log_type loud\n").is_err());
    assert!(read("log_dest file\n").is_err());
}

#[test]
fn durations_and_process_options() {
    let c = read(
        "persistent_client_expiration 2d\npid_file /run/m.pid\nuser mosquitto\nmax_queued_bytes 100\ncpu_affinity 1,0\n",
    )
    .unwrap();
    assert_eq!(
        c.persistent_client_expiration,
        Some(Duration::from_secs(2 * 86400))
    );
    assert_eq!(c.pid_file.as_deref(), Some(Path::new("/run/m.pid")));
    assert_eq!(c.user.as_deref(), Some("mosquitto"));
    assert_eq!(c.queued_bytes_max, 100);
    assert_eq!(c.cpu_affinity, CpuAffinity::Cores(vec![1, 0]));
    assert_eq!(
        read("persistent_client_expiration 5s\n")
            .unwrap()
            .persistent_client_expiration,
        Some(Duration::from_secs(5))
    );
    for bad in ["2", "h", "5x", "-1d", "99999999999999999y"] {
        assert!(
            read(&format!("persistent_client_expiration {bad}\n")).is_err(),
            "{bad}"
        );
    }
    assert!(read("cpu_affinity 1,x\n").is_err());
}

#[test]
fn io_backend_and_batch_wait() {
    assert_eq!(read("").unwrap().io_backend, IoBackend::Auto);
    for (text, backend) in [
        ("auto", IoBackend::Auto),
        ("uring", IoBackend::Uring),
        ("io_uring", IoBackend::Uring),
        ("epoll", IoBackend::Epoll),
    ] {
        assert_eq!(
            read(&format!("io_backend {text}\n")).unwrap().io_backend,
            backend
        );
    }
    let e = read("io_backend kqueue\n").unwrap_err().to_string();
    assert!(e.contains("auto, uring, epoll"), "{e}");
    assert_eq!(read("io_batch_wait_us 50\n").unwrap().io_batch_wait_us, 50);
    assert!(read("io_batch_wait_us 5000\n").is_err());
}

#[test]
fn later_features_warn_and_unknown_options_fail() {
    // Mosquitto options of later features: read, not an error.
    let c = read("plugin_opt_x 1\nhttp_dir /x\n").unwrap();
    assert!(c.local_only);
    // TLS options are acted on: without a listener (local only mode), or without the
    // files they name, they are errors with the line that gave them.
    let e = read("allow_anonymous true\ncafile /x\n").unwrap_err();
    assert_eq!(e.line, 2, "{e}");
    let e = read("listener 8883\ncertfile /nonexistent/cert.pem\nkeyfile /nonexistent/key.pem\n")
        .unwrap_err();
    assert!(
        e.line == 3 && e.message.contains("/nonexistent/cert.pem"),
        "{e}"
    );
    // protocol websockets: a WebSocket listener.
    let c = read("listener 9001\nprotocol websockets\nwebsockets_headers_size 0\n").unwrap();
    assert!(c.listeners[0].websockets && c.listeners[0].not_opened.is_none());
    assert_eq!(c.websockets_headers_size, 1024);
    let c = read("listener 0 /tmp/mosquitto.sock\nlistener 0 127.0.0.1\nlistener 1883\n").unwrap();
    assert_eq!(
        c.listeners[0].unix_socket.as_deref(),
        Some("/tmp/mosquitto.sock")
    );
    assert!(c.listeners[0].bind.is_none() && c.listeners[0].not_opened.is_none());
    assert!(c.listeners[1].unix_socket.is_none() && c.listeners[2].unix_socket.is_none());
    let long = format!("listener 0 /{}\n", "a".repeat(107));
    assert!(read(&long).unwrap_err().to_string().contains("too long"));
    assert!(read("listener 9001\nprotocol http\n").is_err());
    assert!(read("mount_point a/#\n").is_err());
}

#[test]
fn include_dir_reads_conf_files_in_name_order() {
    let dir = std::env::temp_dir().join(format!("midge-include-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("b.conf"), "max_queued_messages 2\n").unwrap();
    std::fs::write(
        dir.join("a.conf"),
        "max_queued_messages 1\nmax_keepalive 30\n",
    )
    .unwrap();
    std::fs::write(dir.join("c.txt"), "not an option\n").unwrap();
    let c = read(&format!("include_dir {}\n", dir.display())).unwrap();
    assert_eq!((c.queued_max, c.keepalive_max_s), (2, 30));
    std::fs::write(dir.join("d.conf"), "\nbogus_option 1\n").unwrap();
    let e = read(&format!("include_dir {}\n", dir.display())).unwrap_err();
    assert!(e.file.ends_with("d.conf") && e.line == 2, "{e}");
    // A directory that includes itself stops at the depth limit.
    std::fs::write(
        dir.join("d.conf"),
        format!("include_dir {}\n", dir.display()),
    )
    .unwrap();
    let e = read(&format!("include_dir {}\n", dir.display())).unwrap_err();
    assert!(e.message.contains("nested too deeply"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn reload_keeps_listeners_and_takes_security() {
    let old = read("listener 1883\nmax_inflight_messages 5\n").unwrap();
    let fresh = read("listener 1884\nallow_anonymous true\nmax_inflight_messages 7\n").unwrap();
    let (merged, warnings) = old.reloaded(fresh);
    assert_eq!(merged.listeners[0].port, 1883);
    assert_eq!(merged.inflight_max, 7);
    assert!(merged.security(0).anonymous_allowed());
    assert_eq!(warnings.len(), 1, "{warnings:?}");
}

mod never_panics {
    use super::*;
    use proptest::prelude::*;

    /// Lines built from real option names (and a few misspellings) with odd values.
    fn line() -> impl Strategy<Value = String> {
        let names: Vec<&'static str> = crate::config::option_listing()
            .map(|(name, _, _)| name)
            .filter(|n| {
                !matches!(
                    *n,
                    "include_dir" | "password_file" | "acl_file" | "pid_file"
                )
            })
            .chain(["listner", "#", "", "max_conections"])
            .collect();
        let value = prop_oneof![
            Just(String::new()),
            "-?[0-9]{1,12}[hdwmys]?",
            "[a-z0-9:./#+%$ \t-]{0,24}",
            Just("true".to_string()),
            Just("false".to_string()),
            Just("file /dev/null".to_string()),
        ];
        (proptest::sample::select(names), value, value_again())
            .prop_map(|(name, a, b)| format!("{name} {a} {b}"))
    }

    fn value_again() -> impl Strategy<Value = String> {
        prop_oneof![Just(String::new()), "[a-z0-9.:]{0,8}"]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]
        #[test]
        fn any_file_is_read_or_refused_with_its_line(lines in proptest::collection::vec(line(), 0..12)) {
            let text = lines.join("\n");
            match read(&text) {
                Ok(config) => {
                    // Whatever was read is usable: listeners resolve or fail cleanly (host
                    // names are left alone: no DNS lookups in a test).
                    for listener in &config.listeners {
                        let ip = listener.bind.as_deref().is_none_or(|b| b.parse::<std::net::IpAddr>().is_ok());
                        if ip {
                            let _ = listener.addrs();
                        }
                    }
                    let _ = config.reloaded(config.clone());
                }
                Err(e) => prop_assert!(e.line >= 1 && e.line <= lines.len(), "{e}"),
            }
        }
    }
}

#[test]
fn persistence_options() {
    let c = read("persistence true\npersistence_location /var/lib/midge/\npersistence_file m.db\nautosave_interval 60\nautosave_on_changes false\npersistence_sync 250\n").unwrap();
    assert!(c.persistence);
    assert_eq!(
        c.persistence_dir(),
        Some(std::path::PathBuf::from("/var/lib/midge/m.db.d"))
    );
    assert_eq!(
        c.persistence_sync,
        crate::persist::SyncPolicy::Interval(std::time::Duration::from_millis(250))
    );
    let c = read("persistence false\n").unwrap();
    assert_eq!(c.persistence_dir(), None);
    assert_eq!(c.persistence_sync, crate::persist::SyncPolicy::Always);
    assert!(read("persistence_sync sometimes\n").is_err());
    assert!(read("persistence_file a/b.db\n").is_err());
}

/// A connection keeps its listener's index in two bytes: a configuration with more
/// listeners than that is refused, naming the line, not served wrongly.
#[test]
fn more_listeners_than_a_connection_can_name_are_refused() {
    let lines = |n: usize| -> String {
        (0..n)
            .map(|i| format!("listener {} 127.0.0.1\n", 1024 + i % 60_000))
            .collect()
    };
    assert_eq!(
        read(&lines(LISTENERS_MAX)).unwrap().listeners.len(),
        LISTENERS_MAX
    );
    let e = read(&lines(LISTENERS_MAX + 1)).unwrap_err();
    assert_eq!(e.line, LISTENERS_MAX + 1);
    assert!(
        e.message.contains("too many listeners (at most 65535)"),
        "{e}"
    );
}

#[test]
fn cluster_options_are_read_and_checked_together() {
    let c = read(
        "cluster_nats_url nats://10.0.0.1:4222,nats://10.0.0.2:4222\ncluster_nats_url tls://n3:4222\ncluster_name plant-1\ncluster_node_id edge_7\ncluster_nats_user u\ncluster_nats_password p\ncluster_nats_cafile /etc/ca.pem\n",
    )
    .unwrap();
    let cluster = &c.cluster;
    assert!(cluster.enabled());
    assert_eq!(
        cluster.urls,
        [
            "nats://10.0.0.1:4222",
            "nats://10.0.0.2:4222",
            "tls://n3:4222"
        ]
    );
    assert_eq!(
        (cluster.name.as_str(), cluster.node_id()),
        ("plant-1", "edge_7".into())
    );
    assert_eq!(
        cluster.auth(),
        crate::config::cluster::ClusterAuth::UserPassword("u".into(), "p".into())
    );
    assert_eq!(cluster.max_subscriptions, 10_000, "the default");
    assert!(cluster.retained_in_jetstream, "the default");
    assert!(cluster.sessions_in_jetstream, "the default");
    assert_eq!(cluster.replicas, 1);
    assert!(cluster.messages_in_jetstream, "the default");
    assert_eq!(
        cluster.messages_max_age,
        std::time::Duration::from_secs(3600)
    );
    assert_eq!(cluster.messages_max_bytes, 1 << 30);
    let limited = read(
        "cluster_nats_url nats://a:4222\ncluster_max_subscriptions 50\ncluster_retained node\ncluster_sessions node\ncluster_replicas 3\ncluster_retained_sweep_interval 5\ncluster_node_timeout 4\ncluster_messages core\ncluster_messages_max_age 60\ncluster_messages_max_bytes 2097152\n",
    )
    .unwrap();
    let limited = &limited.cluster;
    assert_eq!(limited.max_subscriptions, 50);
    assert!(!limited.retained_in_jetstream);
    assert!(!limited.sessions_in_jetstream);
    assert_eq!(limited.replicas, 3);
    assert_eq!(limited.sweep_every, std::time::Duration::from_secs(5));
    assert_eq!(limited.node_timeout, std::time::Duration::from_secs(4));
    assert!(!limited.messages_in_jetstream);
    assert_eq!(limited.messages_max_age, std::time::Duration::from_secs(60));
    assert_eq!(limited.messages_max_bytes, 2 << 20);
    assert_eq!(
        cluster.node_timeout,
        std::time::Duration::from_secs(10),
        "the default"
    );
    assert!(
        !read("").unwrap().cluster.enabled(),
        "no cluster unless asked"
    );
    // Each error names the line that is wrong, or the last cluster line for settings that
    // do not go together.
    for (text, line, says) in [
        ("cluster_name c\n", 1, "without cluster_nats_url"),
        (
            "cluster_nats_url nats://a:4222\ncluster_name a.b\n",
            2,
            "letters, digits",
        ),
        (
            "cluster_nats_url nats://a:4222\ncluster_node_id *\n",
            2,
            "letters, digits",
        ),
        ("cluster_nats_url\n", 1, "takes one or more URLs"),
        (
            "cluster_nats_url nats://a:4222\ncluster_nats_user u\n",
            2,
            "go together",
        ),
        (
            "cluster_nats_url nats://a:4222\ncluster_nats_token t\ncluster_nats_creds /c\n",
            3,
            "at most",
        ),
        (
            "cluster_nats_url nats://a:4222\ncluster_nats_keyfile /k\n",
            2,
            "go together",
        ),
        (
            "cluster_nats_url nats://a:4222\ncluster_max_subscriptions 0\n",
            2,
            "from 1 to",
        ),
        (
            "cluster_nats_url nats://a:4222\ncluster_max_subscriptions many\n",
            2,
            "\"many\" is not a number",
        ),
        (
            "cluster_nats_url nats://a:4222\ncluster_retained disk\n",
            2,
            "neither jetstream nor node",
        ),
        (
            "cluster_nats_url nats://a:4222\ncluster_sessions shared\n",
            2,
            "neither jetstream nor node",
        ),
        (
            "cluster_nats_url nats://a:4222\ncluster_replicas 7\n",
            2,
            "from 1 to 5",
        ),
        (
            "cluster_nats_url nats://a:4222\ncluster_replicas 0\n",
            2,
            "1 to 5",
        ),
        (
            "cluster_nats_url nats://a:4222\ncluster_node_timeout 1\n",
            2,
            "2 to 3600",
        ),
        (
            "cluster_nats_url nats://a:4222\ncluster_messages disk\n",
            2,
            "neither jetstream nor core",
        ),
        (
            "cluster_nats_url nats://a:4222\ncluster_messages_max_age 59\n",
            2,
            "60 to 31536000",
        ),
        (
            "cluster_nats_url nats://a:4222\ncluster_messages_max_bytes 1000\n",
            2,
            "1048576 to",
        ),
    ] {
        let e = read(text).expect_err(text);
        assert_eq!(e.line, line, "{text}: {e}");
        assert!(e.message.contains(says), "{text}: {e}");
    }
}

#[test]
fn a_reload_keeps_the_cluster_settings_and_says_so() {
    let old = read("cluster_nats_url nats://a:4222\n").unwrap();
    let moved = read("\n\ncluster_nats_url nats://a:4222\n").unwrap();
    let (kept, warnings) = old.reloaded(moved);
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(kept.cluster.urls, ["nats://a:4222"]);
    let (kept, warnings) = old.reloaded(read("cluster_nats_url nats://b:4222\n").unwrap());
    assert_eq!(warnings, ["cluster changes take effect on restart"]);
    assert_eq!(kept.cluster.urls, ["nats://a:4222"]);
}
