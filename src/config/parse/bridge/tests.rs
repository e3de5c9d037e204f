//! Reading bridge sections: what each option sets, and the errors for bad lines.
use crate::codec::{ProtocolVersion, QoS};
use crate::config::bridge::{Direction, RestartTimeout, StartType};
use crate::config::{Config, ConfigError};
use std::path::Path;
use std::time::Duration;

fn read(text: &str) -> Result<Config, ConfigError> {
    Config::from_text(Path::new("m.conf"), text)
}

/// A CA certificate file (a bridge's TLS files are read with the configuration; the
/// caller removes it once read).
fn ca_file() -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["ca".to_string()]).unwrap();
    let path = std::env::temp_dir().join(format!("midge-bridge-ca-{}.pem", std::process::id()));
    std::fs::write(&path, params.self_signed(&key).unwrap().pem()).unwrap();
    path.display().to_string()
}

/// The error for `text`, which must be refused.
fn refused(text: &str) -> ConfigError {
    read(text).expect_err(text)
}

const BASE: &str = "connection edge\naddress 127.0.0.1\n";

#[test]
fn a_bridge_section_is_read_whole() {
    let ca = ca_file();
    let c = read(&format!(
        "listener 1883\n\
         connection central\n\
         address broker-a:8883 [::1]:1884 10.0.0.2\n\
         round_robin true\n\
         topic sensors/# out 1 local/ remote/\n\
         topic cmd/+ in 2\n\
         topic \"\" both 0 here/one there/one\n\
         topic all\n\
         bridge_protocol_version mqttv50\n\
         cleansession true\n\
         local_cleansession false\n\
         remote_clientid edge-1\n\
         remote_username u\n\
         remote_password p\n\
         keepalive_interval 30\n\
         start_type lazy\n\
         threshold 5\n\
         idle_timeout 90\n\
         restart_timeout 3 60\n\
         notification_topic bridges/central\n\
         try_private false\n\
         bridge_cafile {}\n\
         bridge_insecure true\n\
         connection second\n\
         address 127.0.0.1\n\
         topic x/# out\n\
         restart_timeout 20\n",
        ca
    ))
    .unwrap();
    let _ = std::fs::remove_file(&ca);
    let [b, second] = &c.bridges[..] else {
        panic!("{:?}", c.bridges)
    };
    assert_eq!(b.name, "central");
    assert_eq!(
        b.addresses,
        vec![
            ("broker-a".to_string(), 8883),
            ("::1".to_string(), 1884),
            ("10.0.0.2".to_string(), 1883)
        ]
    );
    assert!(b.round_robin && b.clean_session && !b.try_private && b.tls.insecure);
    assert_eq!(b.local_clean_session, Some(false));
    assert_eq!(b.protocol, ProtocolVersion::V5);
    assert_eq!(b.topics.len(), 4);
    let t = &b.topics[0];
    assert_eq!((t.direction, t.qos), (Direction::Out, QoS::AtLeastOnce));
    assert_eq!(
        (t.local_filter(), t.remote_filter()),
        ("local/sensors/#".into(), "remote/sensors/#".into())
    );
    assert_eq!(
        (b.topics[1].direction, b.topics[1].qos),
        (Direction::In, QoS::ExactlyOnce)
    );
    assert_eq!(b.topics[2].local_filter(), "here/one");
    assert_eq!(b.topics[2].remote_filter(), "there/one");
    assert_eq!(
        (b.topics[3].direction, b.topics[3].qos),
        (Direction::Out, QoS::AtMostOnce)
    );
    assert_eq!(b.remote_client_id.as_deref(), Some("edge-1"));
    assert_eq!(
        (b.keepalive, b.start_type, b.threshold),
        (30, StartType::Lazy, 5)
    );
    assert_eq!(b.idle_timeout, Duration::from_secs(90));
    assert_eq!(
        b.restart_timeout,
        RestartTimeout::Backoff {
            base: Duration::from_secs(3),
            cap: Duration::from_secs(60)
        }
    );
    assert!(b.tls.enabled());
    // Defaults, and options that belong to the last connection only.
    assert_eq!(
        second.restart_timeout,
        RestartTimeout::Constant(Duration::from_secs(20))
    );
    assert_eq!(
        (second.protocol, second.keepalive),
        (ProtocolVersion::V311, 60)
    );
    assert!(second.notifications && second.try_private && second.attempt_unsubscribe);
    assert!(!second.tls.enabled());
}

#[test]
fn bad_bridge_lines_are_errors_naming_them() {
    let cases: &[(&str, usize, &str)] = &[
        ("address 10.0.0.1\n", 1, "must follow a connection line"),
        ("topic a/# out\n", 1, "must follow a connection line"),
        (
            "connection edge\nconnection edge\n",
            2,
            "already configured",
        ),
        ("connection edge\naddress host:port\n", 2, "not host[:port]"),
        ("connection edge\naddress\n", 2, "one or more host[:port]"),
        (
            "connection edge\ntopic a/# sideways\n",
            2,
            "not out, in or both",
        ),
        ("connection edge\ntopic a/# out 3\n", 2, "not 0, 1 or 2"),
        ("connection edge\ntopic a/# out 1 local/\n", 2, "both"),
        (
            "connection edge\ntopic \"\" out 1 local/ \"\"\n",
            2,
            "needs both",
        ),
        ("connection edge\ntopic a out 1 lo+cal/ r/\n", 2, "wildcard"),
        (
            "connection edge\ntopic a/#/b\n",
            2,
            "not a valid topic filter",
        ),
        ("connection edge\nkeepalive_interval 3\n", 2, "at least 5"),
        (
            "connection edge\nbridge_require_ocsp true\n",
            2,
            "does not check stapled OCSP",
        ),
        (
            "connection edge\naddress h\ntopic t\nbridge_cafile /nonexistent/ca.pem\n",
            1,
            "bridge \"edge\": bridge_cafile /nonexistent/ca.pem: No such file",
        ),
        ("connection edge\nrestart_timeout 30 10\n", 2, "base <= cap"),
        (
            "connection edge\nstart_type sometimes\n",
            2,
            "automatic, lazy or once",
        ),
        (
            "connection edge\nstart_type manual\n",
            2,
            "start_type manual is not supported",
        ),
        (
            "connection edge\nbridge_protocol_version mqttv4\n",
            2,
            "mqttv31, mqttv311 or mqttv50",
        ),
        ("connection edge\nbridge_psk 00ff\n", 2, "TLS-PSK"),
        (
            "connection edge\nbridge_tls_version tlsv1.1\n",
            2,
            "tlsv1.2 and tlsv1.3",
        ),
        (
            "connection edge\nbridge_bind_address eth0\n",
            2,
            "not an IP address",
        ),
        // Checked at the end of the file, naming the connection line.
        ("\nconnection edge\ntopic a/#\n", 2, "no address"),
        (BASE, 1, "no topic"),
    ];
    for (text, line, says) in cases {
        let e = refused(text);
        assert!(e.line == *line && e.message.contains(says), "{text:?}: {e}");
    }
    let e = refused(&format!("{BASE}topic a\nremote_password p\n"));
    assert!(e.message.contains("without a remote_username"), "{e}");
    let e = refused(&format!("{BASE}topic a\nbridge_certfile /c.pem\n"));
    assert!(e.message.contains("together"), "{e}");
    // Misspelt bridge options get a suggestion.
    let e = refused(&format!("{BASE}topic a\nkeepalive_intreval 30\n"));
    assert!(
        e.message.contains("did you mean keepalive_interval?"),
        "{e}"
    );
}
