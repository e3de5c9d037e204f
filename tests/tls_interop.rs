//! TLS and secure WebSockets with other clients and tools: Debian's `mosquitto_pub` and
//! `mosquitto_sub` with client certificates, midge's tools failing as `mosquitto_pub` does,
//! midge's tools against Debian's `mosquitto` over TLS, `--ciphers` chosen as
//! `mosquitto_pub` chooses them, paho-mqtt over TLS and `wss://`.

mod common;

use common::tls::*;
use common::*;
use std::io::{Read, Write};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn run(program_name: &str, args: &[&str]) -> std::process::Output {
    Command::new(program(program_name))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program_name}: {e}"))
}

#[test]
fn mosquitto_clients_over_tls_with_server_and_client_certificates() {
    let pki = Pki::new("mosquitto-clients");
    let broker = pki.broker(
        "tls-mosquitto-clients",
        &format!(
            "cafile {}\nrequire_certificate true\nuse_identity_as_username true\n",
            pki.path("ca.pem")
        ),
    );
    let port = broker.port.to_string();
    let ca = pki.path("ca.pem");
    let (cert, key) = (pki.path("alice.pem"), pki.path("alice.key"));
    let tls = ["-h", "localhost", "-p", &port, "--cafile", &ca];
    let identity = ["--cert", &cert, "--key", &key];
    let sub = std::thread::spawn({
        let args: Vec<String> = tls
            .iter()
            .chain(&identity)
            .chain(&["-t", "tls/t", "-C", "1", "-W", "10", "-i", "sub"])
            .map(|s| s.to_string())
            .collect();
        move || {
            run(
                "mosquitto_sub",
                &args.iter().map(String::as_str).collect::<Vec<_>>(),
            )
        }
    });
    // Subscribed (the broker logs each subscription), not just connected, before the
    // message goes: a QoS 1 message published before that reaches nobody.
    broker.wait_for_log("sub 0 tls/t");
    let out = run(
        "mosquitto_pub",
        &[
            &tls[..],
            &identity[..],
            &["-t", "tls/t", "-m", "over tls", "-q", "1"],
        ]
        .concat(),
    );
    succeeded(&out);
    let got = sub.join().unwrap();
    assert_eq!(succeeded(&got), "over tls\n");
    broker.wait_for_log("u'alice'");

    // A client that trusts another CA refuses the broker; one without a certificate is
    // refused by it. Neither gets in; both fail the way mosquitto_pub reports TLS errors.
    let other = pki.path("other-ca.pem");
    let wrong_ca = ["-h", "localhost", "-p", &port, "--cafile", &other];
    let out = run(
        "mosquitto_pub",
        &[&wrong_ca[..], &identity[..], &["-t", "x", "-m", "m"]].concat(),
    );
    assert!(!out.status.success());
    let out = run(
        "mosquitto_pub",
        &[&tls[..], &["-t", "x", "-m", "m"]].concat(),
    );
    assert!(!out.status.success());
}

/// A tool by name: midge's from this build, Mosquitto's from Debian.
fn tool(name: &str) -> String {
    match name {
        "midge-pub" => env!("CARGO_BIN_EXE_midge-pub").to_string(),
        "midge-sub" => env!("CARGO_BIN_EXE_midge-sub").to_string(),
        other => program(other),
    }
}

/// Exit code and first line of output (stderr, else stdout).
fn outcome(out: &std::process::Output) -> (Option<i32>, String) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let first = stderr.lines().chain(stdout.lines()).next().unwrap_or("");
    (out.status.code(), first.to_string())
}

fn unable_to_connect() -> (Option<i32>, String) {
    (
        Some(1),
        "Unable to connect (A TLS error occurred.).".to_string(),
    )
}

/// midge-pub's exit and message are mosquitto_pub's.
fn assert_same_outcome(ours: &(Option<i32>, String), theirs: &(Option<i32>, String), what: &str) {
    if *ours == unable_to_connect() {
        // mosquitto_pub says this when the handshake fails inside its connect, and
        // "Error: A TLS error occurred." (8) when it fails after, depending on timing.
        let later = (Some(8), "Error: A TLS error occurred.".to_string());
        assert!(
            *theirs == unable_to_connect() || *theirs == later,
            "{what}: {theirs:?}"
        );
    } else {
        assert_eq!(ours, theirs, "{what}");
    }
}

#[test]
fn midge_tools_fail_over_tls_as_mosquittos_do() {
    let pki = Pki::new("tool-failures");
    let broker = pki.broker(
        "tls-tool-failures",
        &format!(
            "cafile {}\nrequire_certificate true\nuse_identity_as_username true\n",
            pki.path("ca.pem")
        ),
    );
    let port = broker.port.to_string();
    let (ca, other) = (pki.path("ca.pem"), pki.path("other-ca.pem"));
    let (cert, key) = (pki.path("alice.pem"), pki.path("alice.key"));
    let base = ["-h", "localhost", "-p", &port, "-t", "x", "-m", "m"];
    let cases: Vec<(&str, Vec<&str>)> = vec![
        (
            "accepted",
            vec!["--cafile", &ca, "--cert", &cert, "--key", &key],
        ),
        (
            "broker's certificate from an unknown CA",
            vec!["--cafile", &other, "--cert", &cert, "--key", &key],
        ),
        ("no client certificate", vec!["--cafile", &ca]),
        ("no such CA file", vec!["--cafile", "/nonexistent/ca.pem"]),
        (
            "certificate without its key",
            vec!["--cafile", &ca, "--cert", &cert],
        ),
    ];
    for (what, extra) in cases {
        let args = [&base[..], &extra[..]].concat();
        let ours = outcome(&run(&tool("midge-pub"), &args));
        let theirs = outcome(&run(&tool("mosquitto_pub"), &args));
        assert_same_outcome(&ours, &theirs, what);
    }
    broker.wait_for_log("u'alice'");
}

#[test]
fn midge_tools_over_tls_to_mosquitto_and_to_midge() {
    let pki = Pki::new("tools");
    let tls = format!(
        "certfile {}\nkeyfile {}\ncafile {}\nrequire_certificate true\nuse_identity_as_username true\nallow_anonymous true\n",
        pki.path("server.pem"),
        pki.path("server.key"),
        pki.path("ca.pem"),
    );
    let mosquitto = Mosquitto::start("tls-tools", &tls);
    let midge = pki.broker(
        "tls-tools-midge",
        &format!(
            "cafile {}\nrequire_certificate true\nallow_anonymous true\n",
            pki.path("ca.pem")
        ),
    );
    let ca = pki.path("ca.pem");
    let (cert, key) = (pki.path("alice.pem"), pki.path("alice.key"));
    for port in [mosquitto.port, midge.port] {
        let port = port.to_string();
        // -L mqtts://: TLS from the URL; the CA and identity from the options.
        let url = format!("mqtts://localhost:{port}/tls/tools");
        let identity = [
            "--cafile",
            ca.as_str(),
            "--cert",
            cert.as_str(),
            "--key",
            key.as_str(),
        ];
        let sub_args: Vec<String> = ["-L", url.as_str(), "-C", "1", "-W", "10"]
            .iter()
            .chain(&identity)
            .map(|s| s.to_string())
            .collect();
        let sub = std::thread::spawn(move || {
            run(
                &tool("midge-sub"),
                &sub_args.iter().map(String::as_str).collect::<Vec<_>>(),
            )
        });
        // midge-sub may not have subscribed when the first message goes: publish every
        // 100 ms until it has printed one (-C 1) and ended.
        let until = Instant::now() + DEADLINE;
        loop {
            let out = run(
                &tool("midge-pub"),
                &[
                    &[
                        "-h",
                        "localhost",
                        "-p",
                        port.as_str(),
                        "-t",
                        "tls/tools",
                        "-m",
                        "hello",
                        "-q",
                        "1",
                    ][..],
                    &identity[..],
                ]
                .concat(),
            );
            succeeded(&out);
            if sub.is_finished() || Instant::now() > until {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let got = sub.join().unwrap();
        assert_eq!(succeeded(&got), "hello\n");
    }
}

#[test]
fn paho_mqtt_over_tls_with_a_client_certificate() {
    let pki = Pki::new("paho");
    let broker = pki.broker(
        "tls-paho",
        &format!(
            "cafile {}\nrequire_certificate true\nuse_identity_as_username true\n",
            pki.path("ca.pem")
        ),
    );
    let identity = [
        pki.path("ca.pem"),
        pki.path("alice.pem"),
        pki.path("alice.key"),
    ];
    paho_passes(&broker, &identity.each_ref().map(String::as_str));
    broker.wait_for_log("as paho-pub5 (p5, c1, k60, u'alice')");
}

#[test]
fn paho_mqtt_over_secure_websockets() {
    let pki = Pki::new("wss");
    let broker = pki.broker(
        "tls-wss",
        &format!(
            "protocol websockets\ncafile {}\nrequire_certificate true\nuse_identity_as_username true\n",
            pki.path("ca.pem")
        ),
    );
    let identity = [
        pki.path("ca.pem"),
        pki.path("alice.pem"),
        pki.path("alice.key"),
    ];
    let [ca, cert, key] = identity.each_ref().map(String::as_str);
    paho_passes(&broker, &["--websockets", ca, cert, key]);
    broker.wait_for_log("as paho-pub5 (p5, c1, k60, u'alice')");
}

/// A TLS server that speaks only TLS 1.2 with one suite (neither broker can be made to:
/// their `tls_version` is the lowest version): it completes handshakes, answers CONNECT
/// with a CONNACK and reads to the end, for `connections` connections. Returns its port.
fn tls12_only_server(pki: &Pki, suite: rustls::SupportedCipherSuite, connections: usize) -> u16 {
    use rustls::pki_types::{pem::PemObject, PrivateKeyDer};
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites = vec![suite];
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            pem_certs(&pki.path("server.pem")),
            PrivateKeyDer::from_pem_file(pki.path("server.key")).unwrap(),
        )
        .unwrap();
    let config = Arc::new(config);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for tcp in listener.incoming().take(connections) {
            let mut tcp = tcp.unwrap();
            tcp.set_read_timeout(Some(DEADLINE)).unwrap();
            let mut session = rustls::ServerConnection::new(config.clone()).unwrap();
            let mut tls = rustls::Stream::new(&mut session, &mut tcp);
            let mut byte = [0u8; 1];
            // The first byte of CONNECT ends the handshake; a failed handshake ends here.
            if tls.read_exact(&mut byte).is_err() {
                continue;
            }
            let _ = tls.write_all(&[0x20, 2, 0, 0]);
            while matches!(tls.read(&mut [0u8; 256]), Ok(n) if n > 0) {}
        }
    });
    port
}

#[test]
fn midge_tools_choose_tls12_ciphers_as_mosquittos_do() {
    let pki = Pki::new("tool-ciphers");
    let ca = pki.path("ca.pem");
    let base = ["-h", "localhost", "-t", "x", "-m", "m", "--cafile", &ca];
    let suite = rustls::crypto::ring::cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384;
    let cases = [
        ("the server's suite", "ECDHE-ECDSA-AES256-GCM-SHA384", true),
        (
            "a list holding it",
            "ECDHE-ECDSA-AES128-GCM-SHA256:AES256",
            true,
        ),
        ("no suite in common", "ECDHE-ECDSA-AES128-GCM-SHA256", false),
        ("a list naming nothing known", "NO-SUCH-CIPHER", false),
    ];
    for (what, ciphers, connects) in cases {
        // One server per case, one connection for each tool.
        let port = tls12_only_server(&pki, suite, 2).to_string();
        let args = [&base[..], &["-p", &port, "--ciphers", ciphers][..]].concat();
        let ours = outcome(&run(&tool("midge-pub"), &args));
        let theirs = outcome(&run(&tool("mosquitto_pub"), &args));
        assert_same_outcome(&ours, &theirs, what);
        let expected = if connects {
            (Some(0), String::new())
        } else {
            unable_to_connect()
        };
        assert_eq!(ours, expected, "{what}");
    }
    // `--ciphers` names TLS 1.2 suites; over TLS 1.3 (a broker's default) it changes
    // nothing, in libmosquitto as in midge's tools.
    let broker = pki.broker("tls-tool-ciphers", "allow_anonymous true\n");
    let port = broker.port.to_string();
    let args = [
        &base[..],
        &["-p", &port, "--ciphers", "ECDHE-RSA-CHACHA20-POLY1305"][..],
    ]
    .concat();
    assert_eq!(
        outcome(&run(&tool("midge-pub"), &args)),
        (Some(0), String::new())
    );
    assert_eq!(
        outcome(&run(&tool("mosquitto_pub"), &args)),
        (Some(0), String::new())
    );
}
