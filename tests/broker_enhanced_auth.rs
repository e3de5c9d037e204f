//! MQTT 5.0 enhanced authentication (§4.12) through the plumbing: a toy challenge/response
//! method is given to a broker started in this process, and a client over a real socket goes
//! through CONNECT -> AUTH 0x18 -> AUTH 0x18 -> CONNACK, then re-authenticates with AUTH 0x19.

mod common;

use bytes::Bytes;
use common::*;
use midge::auth::{AuthExchange, AuthMethod, AuthStep};
use midge::codec::*;
use midge::config::{Config, Listener};
use midge::server::Server;
use std::sync::Arc;

/// Challenge "nonce", expects "nonce-answer", welcomes with "welcome".
struct Challenge;

struct ChallengeExchange;

impl AuthMethod for Challenge {
    fn name(&self) -> &str {
        "TEST-CHALLENGE"
    }
    fn begin(&self, _client_id: &str, _data: Option<&[u8]>) -> (Box<dyn AuthExchange>, AuthStep) {
        (
            Box::new(ChallengeExchange),
            AuthStep::Continue(Some(Bytes::from_static(b"nonce"))),
        )
    }
}

impl AuthExchange for ChallengeExchange {
    fn step(&mut self, data: Option<&[u8]>) -> AuthStep {
        if data == Some(b"nonce-answer") {
            AuthStep::Success(Some(Bytes::from_static(b"welcome")))
        } else {
            AuthStep::Failure(ReasonCode::NotAuthorized)
        }
    }
}

fn server() -> Server {
    let mut config = Config {
        threads: 1,
        connection_messages: false,
        ..Config::default()
    };
    config.listeners = vec![Listener::on("127.0.0.1:0".parse().unwrap())];
    // The backend the other black-box tests are run on (see common::io_backend_args).
    if let Some(io) = std::env::var("MIDGE_TEST_IO")
        .ok()
        .and_then(|io| midge::config::IoBackend::parse(&io))
    {
        config.io_backend = io;
    }
    Server::start_with_auth(config, vec![Arc::new(Challenge)]).expect("start midge in-process")
}

fn auth_packet(reason: ReasonCode, data: &'static [u8]) -> Packet {
    let mut auth = Auth::with_reason(reason);
    auth.properties.authentication_method = Some(s("TEST-CHALLENGE"));
    auth.properties.authentication_data = Some(Bytes::from_static(data));
    Packet::Auth(auth)
}

fn connect_with_method() -> Packet {
    let mut c = connect_packet(ProtocolVersion::V5, "authed", true, 60);
    c.properties.authentication_method = Some(s("TEST-CHALLENGE"));
    Packet::Connect(Box::new(c))
}

#[test]
fn a_challenge_exchange_then_re_authentication() {
    let server = server();
    let port = server.addrs[0].port();
    let mut c = Raw::open(port, ProtocolVersion::V5);
    c.send(&connect_with_method());
    // The broker's challenge.
    let Packet::Auth(challenge) = c.recv() else {
        panic!("expected AUTH")
    };
    assert_eq!(challenge.reason, ReasonCode::ContinueAuthentication);
    assert_eq!(
        challenge.properties.authentication_data.as_deref(),
        Some(&b"nonce"[..])
    );
    c.send(&auth_packet(
        ReasonCode::ContinueAuthentication,
        b"nonce-answer",
    ));
    let Packet::ConnAck(ack) = c.recv() else {
        panic!("expected CONNACK")
    };
    assert_eq!(ack.reason, ReasonCode::Success);
    assert_eq!(
        ack.properties.authentication_method.as_deref(),
        Some("TEST-CHALLENGE")
    );
    assert_eq!(
        ack.properties.authentication_data.as_deref(),
        Some(&b"welcome"[..])
    );
    // Re-authentication on the live connection: AUTH 0x19, challenge, answer, AUTH 0x00.
    c.send(&auth_packet(ReasonCode::ReAuthenticate, b""));
    let Packet::Auth(challenge) = c.recv() else {
        panic!("expected AUTH")
    };
    assert_eq!(challenge.reason, ReasonCode::ContinueAuthentication);
    c.send(&auth_packet(
        ReasonCode::ContinueAuthentication,
        b"nonce-answer",
    ));
    let Packet::Auth(done) = c.recv() else {
        panic!("expected AUTH")
    };
    assert_eq!(done.reason, ReasonCode::Success);
    // Still connected and working.
    c.send(&Packet::PingReq);
    assert_eq!(c.recv(), Packet::PingResp);
    server.shutdown();
}

#[test]
fn a_wrong_answer_is_refused_and_unknown_methods_get_0x8c() {
    let server = server();
    let port = server.addrs[0].port();
    let mut c = Raw::open(port, ProtocolVersion::V5);
    c.send(&connect_with_method());
    assert!(matches!(c.recv(), Packet::Auth(_)));
    c.send(&auth_packet(ReasonCode::ContinueAuthentication, b"wrong"));
    let Packet::ConnAck(ack) = c.recv() else {
        panic!("expected CONNACK")
    };
    assert_eq!(ack.reason, ReasonCode::NotAuthorized);
    assert!(c.expect_closed().is_empty());

    // Any other packet in the middle of the exchange is a protocol error.
    let mut d = Raw::open(port, ProtocolVersion::V5);
    d.send(&connect_with_method());
    assert!(matches!(d.recv(), Packet::Auth(_)));
    d.send(&Packet::PingReq);
    assert!(d
        .expect_closed()
        .iter()
        .all(|p| matches!(p, Packet::Disconnect(_))));

    let mut unknown = connect_packet(ProtocolVersion::V5, "other", true, 60);
    unknown.properties.authentication_method = Some(s("SCRAM-SHA-256"));
    let (mut e, ack) = Raw::connect_with(port, unknown);
    assert_eq!(ack.reason, ReasonCode::BadAuthenticationMethod);
    assert!(e.expect_closed().is_empty());
    server.shutdown();
}
