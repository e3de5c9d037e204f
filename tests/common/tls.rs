//! TLS helpers for the black-box tests: certificates made with rcgen (a CA, a server
//! certificate, client certificates good, expired, revoked and from another CA, a CRL), and a
//! rustls client that speaks raw MQTT.
#![allow(dead_code)]

use super::*;
use midge::codec::*;
use rcgen::{
    date_time_ymd, BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevokedCertParams, SerialNumber,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A CA, a server certificate for localhost and 127.0.0.1, client certificates (good,
/// expired, revoked, and one from another CA) and a CRL, as PEM files in a fresh directory.
pub struct Pki {
    pub dir: PathBuf,
}

impl Pki {
    pub fn new(name: &str) -> Pki {
        let dir = std::env::temp_dir().join(format!("midge-tls-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let write = |file: &str, text: &str| std::fs::write(dir.join(file), text).unwrap();

        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::default();
        ca.distinguished_name
            .push(DnType::CommonName, "midge test CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        write("ca.pem", &ca.self_signed(&ca_key).unwrap().pem());
        write("ca.key", &ca_key.serialize_pem());
        let issuer = Issuer::new(ca, ca_key);

        let leaf = |file: &str, cn: &str, server: bool, serial: u64, expired: bool| {
            let key = KeyPair::generate().unwrap();
            let sans = if server {
                vec!["localhost".to_string(), "127.0.0.1".to_string()]
            } else {
                Vec::new()
            };
            let mut params = CertificateParams::new(sans).unwrap();
            params
                .distinguished_name
                .push(DnType::OrganizationName, "midge tests");
            params.distinguished_name.push(DnType::CommonName, cn);
            params.serial_number = Some(SerialNumber::from(serial));
            params.extended_key_usages = vec![if server {
                ExtendedKeyUsagePurpose::ServerAuth
            } else {
                ExtendedKeyUsagePurpose::ClientAuth
            }];
            if expired {
                params.not_before = date_time_ymd(2019, 1, 1);
                params.not_after = date_time_ymd(2020, 1, 1);
            }
            (params, key, file.to_string())
        };
        for (params, key, file) in [
            leaf("server", "localhost", true, 1, false),
            leaf("alice", "alice", false, 2, false),
            leaf("expired", "old", false, 3, true),
            leaf("revoked", "mallory", false, 4, false),
        ] {
            let cert = params.signed_by(&key, &issuer).unwrap();
            write(&format!("{file}.pem"), &cert.pem());
            write(&format!("{file}.key"), &key.serialize_pem());
        }
        let crl = CertificateRevocationListParams {
            this_update: date_time_ymd(2025, 1, 1),
            next_update: date_time_ymd(2099, 1, 1),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: vec![RevokedCertParams {
                serial_number: SerialNumber::from(4u64),
                revocation_time: date_time_ymd(2025, 6, 1),
                reason_code: None,
                invalidity_date: None,
            }],
            key_identifier_method: KeyIdMethod::Sha256,
        };
        write("crl.pem", &crl.signed_by(&issuer).unwrap().pem().unwrap());

        // A client certificate from a CA the broker does not know.
        let other_key = KeyPair::generate().unwrap();
        let mut other = CertificateParams::default();
        other
            .distinguished_name
            .push(DnType::CommonName, "another CA");
        other.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        other.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        write(
            "other-ca.pem",
            &other.self_signed(&other_key).unwrap().pem(),
        );
        let other_issuer = Issuer::new(other, other_key);
        let (params, key, _) = leaf("stranger", "alice", false, 5, false);
        write(
            "stranger.pem",
            &params.signed_by(&key, &other_issuer).unwrap().pem(),
        );
        write("stranger.key", &key.serialize_pem());
        Pki { dir }
    }

    pub fn path(&self, file: &str) -> String {
        self.dir.join(file).to_string_lossy().into_owned()
    }

    /// A TLS listener on a free loopback port, with `extra` options.
    pub fn broker(&self, name: &str, extra: &str) -> Broker {
        let conf = config_file(
            name,
            &format!(
                "listener 0 127.0.0.1\ncertfile {}\nkeyfile {}\n{extra}",
                self.path("server.pem"),
                self.path("server.key")
            ),
        );
        Broker::start_configured(&["-c", &conf])
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A TLS client trusting `ca`, presenting `identity` (certificate and key files) if given.
pub fn tls_connect(
    port: u16,
    ca: &str,
    identity: Option<(&str, &str)>,
) -> std::io::Result<TlsStream> {
    tls_connect_with(
        port,
        ca,
        identity,
        &[&rustls::version::TLS13, &rustls::version::TLS12],
    )
}

pub fn tls_connect_with(
    port: u16,
    ca: &str,
    identity: Option<(&str, &str)>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> std::io::Result<TlsStream> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in pem_certs(ca) {
        roots.add(cert).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots);
    let config = match identity {
        Some((cert, key)) => {
            use rustls::pki_types::pem::PemObject;
            let key = PrivateKeyDer::from_pem_file(key).unwrap();
            builder.with_client_auth_cert(pem_certs(cert), key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    let session =
        rustls::ClientConnection::new(Arc::new(config), ServerName::try_from("localhost").unwrap())
            .unwrap();
    let tcp = TcpStream::connect(("127.0.0.1", port))?;
    tcp.set_read_timeout(Some(Duration::from_millis(50)))?;
    let mut stream = rustls::StreamOwned::new(session, tcp);
    // Finish the handshake now, so that a refused certificate shows here.
    let until = Instant::now() + DEADLINE;
    while stream.conn.is_handshaking() {
        match stream.conn.complete_io(&mut stream.sock) {
            Ok(_) => {}
            Err(e) if read_again(&e) && Instant::now() < until => {}
            Err(e) => return Err(e),
        }
    }
    Ok(stream)
}

pub fn pem_certs(path: &str) -> Vec<CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_file_iter(path)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// Sends `packet` and returns the next packet from the broker, or `None` if the connection
/// ended first (a TLS alert, a close).
pub fn exchange(stream: &mut TlsStream, packet: Option<&Packet>) -> Option<Packet> {
    if let Some(packet) = packet {
        let bytes = packet.to_bytes(ProtocolVersion::V311).unwrap();
        if stream
            .write_all(&bytes)
            .and_then(|_| stream.flush())
            .is_err()
        {
            return None;
        }
    }
    let decoder = Decoder::client(ProtocolVersion::V311, 1 << 20);
    let mut buf = bytes::BytesMut::new();
    let until = Instant::now() + DEADLINE;
    loop {
        if let Some(packet) = decoder.decode_from(&mut buf).expect("a valid packet") {
            return Some(packet);
        }
        assert!(
            Instant::now() < until,
            "nothing from midge within {DEADLINE:?}"
        );
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk) {
            Ok(0) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if read_again(&e) => {}
            Err(_) => return None,
        }
    }
}

pub fn connect(stream: &mut TlsStream, client_id: &str) -> Option<ConnAck> {
    let packet = Packet::Connect(Box::new(connect_packet(
        ProtocolVersion::V311,
        client_id,
        true,
        60,
    )));
    match exchange(stream, Some(&packet))? {
        Packet::ConnAck(ack) => Some(ack),
        other => panic!("expected CONNACK, got {other:?}"),
    }
}
