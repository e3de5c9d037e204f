//! Who gets in (issue 11): as Mosquitto 2 decides, and never because a check had nothing
//! to check against.

mod common;

use common::*;
use midge::codec::*;

fn login(port: u16, version: ProtocolVersion, user: Option<&str>, password: &str) -> ReasonCode {
    let mut c = connect_packet(version, "who", true, 60);
    c.username = user.map(s);
    c.password = user.map(|_| bytes::Bytes::copy_from_slice(password.as_bytes()));
    Raw::connect_with(port, c).1.reason
}

/// `allow_anonymous false` and no password file: nothing can check a password, so no
/// client gets in, with a user name or without (CONNACK 5 / 0x87).
#[test]
fn no_password_file_and_no_anonymous_lets_nobody_in() {
    let conf = config_file(
        "no-anon-no-pw.conf",
        "listener 0 127.0.0.1\nallow_anonymous false\n",
    );
    let broker = Broker::start_configured(&["-c", &conf]);
    for version in [ProtocolVersion::V311, ProtocolVersion::V5] {
        assert_eq!(
            login(broker.port, version, Some("any"), "thing"),
            ReasonCode::NotAuthorized
        );
        assert_eq!(
            login(broker.port, version, None, ""),
            ReasonCode::NotAuthorized
        );
    }
}

/// With a password file, a wrong password is refused with 5 / 0x87 (Mosquitto 2's code),
/// and `allow_anonymous true` lets in clients without a user name only.
#[test]
fn a_wrong_password_is_not_authorised_even_with_anonymous_allowed() {
    let pw = password_file("pw-anon-ok", &[("alice", "secret")]);
    let conf = config_file(
        "pw-anon-ok.conf",
        &format!("listener 0 127.0.0.1\nallow_anonymous true\npassword_file {pw}\n"),
    );
    let broker = Broker::start_configured(&["-c", &conf]);
    let port = broker.port;
    assert_eq!(
        login(port, ProtocolVersion::V311, Some("alice"), "nope"),
        ReasonCode::NotAuthorized
    );
    let mut raw = Raw::open(port, ProtocolVersion::V311);
    let mut c = connect_packet(ProtocolVersion::V311, "bytes", true, 60);
    c.username = Some(s("alice"));
    c.password = Some(bytes::Bytes::from_static(b"nope"));
    raw.send(&Packet::Connect(Box::new(c)));
    assert_eq!(
        raw.recv_bytes(4),
        [0x20, 0x02, 0x00, 0x05],
        "CONNACK 5 on the wire"
    );
    assert_eq!(
        login(port, ProtocolVersion::V5, Some("alice"), "secret"),
        ReasonCode::Success
    );
    assert_eq!(
        login(port, ProtocolVersion::V5, None, ""),
        ReasonCode::Success
    );
}

/// A user whose password is empty cannot log in with it, nor without a password
/// (Mosquitto 2 refuses both, even where the file holds the hash of the empty string).
#[test]
fn an_empty_or_missing_password_matches_no_entry() {
    let blank = password_file("pw-blank", &[("blank", "")]);
    let conf = config_file(
        "pw-blank.conf",
        &format!("listener 0 127.0.0.1\nallow_anonymous false\npassword_file {blank}\n"),
    );
    let broker = Broker::start_configured(&["-c", &conf]);
    let empty = login(broker.port, ProtocolVersion::V311, Some("blank"), "");
    assert_eq!(empty, ReasonCode::NotAuthorized);
    let mut c = connect_packet(ProtocolVersion::V311, "nopw", true, 60);
    c.username = Some(s("blank"));
    assert_eq!(
        Raw::connect_with(broker.port, c).1.reason,
        ReasonCode::NotAuthorized
    );
}
