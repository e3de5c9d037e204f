//! `midge-passwd` and password files: files it writes work with Debian's mosquitto, files
//! Debian's `mosquitto_passwd` writes work with midge, and `-D`, `-U` do what they say.

mod common;

use common::*;
use midge::codec::*;
use std::process::{Command, Stdio};
use std::time::Instant;

fn temp(name: &str) -> String {
    std::env::temp_dir()
        .join(format!("midge-test-{}-{name}", std::process::id()))
        .to_string_lossy()
        .into_owned()
}

fn passwd(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_midge-passwd"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn midge_passwd_files_work_with_mosquitto() {
    let file = temp("pw-for-mosquitto");
    assert!(passwd(&["-c", "-b", &file, "alice", "secret"])
        .status
        .success());
    assert!(passwd(&["-b", &file, "bob", "other"]).status.success());
    assert!(passwd(&["-D", &file, "bob"]).status.success());
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        text.starts_with("alice:$7$101$") && !text.contains("bob:"),
        "{text}"
    );
    // Wrong use: exit code 1 and a message, as mosquitto_passwd.
    let out = passwd(&["-c", "-D", &file, "x"]);
    assert_eq!(out.status.code(), Some(1));

    let port = quiet_port();
    let conf = config_file(
        "mosquitto-pw",
        &format!("listener {port} 127.0.0.1\npassword_file {file}\nallow_anonymous false\n"),
    );
    let mut mosquitto = Command::new(program("mosquitto"))
        .args(["-c", &conf])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let until = Instant::now() + DEADLINE;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < until, "mosquitto does not listen");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let publish = |user: &str, password: &str| {
        Command::new("mosquitto_pub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-u",
                user,
                "-P",
                password,
                "-t",
                "t",
                "-m",
                "m",
            ])
            .output()
            .unwrap()
            .status
            .success()
    };
    let (right, wrong) = (publish("alice", "secret"), publish("alice", "nope"));
    let _ = mosquitto.kill();
    let _ = mosquitto.wait();
    assert!(right, "mosquitto refused a password midge-passwd wrote");
    assert!(!wrong, "mosquitto accepted a wrong password");
}

#[test]
fn mosquitto_passwd_files_work_with_midge() {
    let file = temp("pw-for-midge");
    let made = Command::new(program("mosquitto_passwd"))
        .args(["-c", "-b", &file, "carol", "pw"])
        .status()
        .unwrap();
    assert!(made.success());
    // -U turns a plain-text line into a hash.
    let mut text = std::fs::read_to_string(&file).unwrap();
    text.push_str("dave:plain\n");
    std::fs::write(&file, text).unwrap();
    assert!(passwd(&["-U", &file]).status.success());
    assert!(!std::fs::read_to_string(&file)
        .unwrap()
        .contains("dave:plain"));

    let conf = config_file("midge-pw", &format!("password_file {file}\n"));
    let broker = Broker::start(&["-c", &conf]);
    let login = |user: &str, password: &str| {
        let mut c = connect_packet(ProtocolVersion::V311, &format!("{user}-client"), true, 60);
        c.username = Some(s(user));
        c.password = Some(bytes::Bytes::copy_from_slice(password.as_bytes()));
        Raw::connect_with(broker.port, c).1.reason
    };
    assert_eq!(login("carol", "pw"), ReasonCode::Success);
    assert_eq!(login("dave", "plain"), ReasonCode::Success);
    // Wrong password or unknown user: CONNACK 5 "not authorised", as Mosquitto 2 sends it.
    assert_eq!(login("carol", "PW"), ReasonCode::NotAuthorized);
    assert_eq!(v3_return_code(login("eve", "pw")), 5);
}

/// A password file entry midge cannot use is left out and logged with its file and line,
/// as Mosquitto leaves it out: the broker starts, that user cannot log in, the others can.
#[test]
fn a_bad_password_file_entry_is_logged_and_left_out() {
    let good = password_file("pw-mixed-good", &[("alice", "a")]);
    let file = temp("pw-mixed");
    let alice = std::fs::read_to_string(&good).unwrap();
    std::fs::write(&file, format!("broken line\n{alice}bob:plain\n")).unwrap();
    let conf = config_file(
        "midge-pw-mixed",
        &format!("listener 0 127.0.0.1\npassword_file {file}\n"),
    );
    let broker = Broker::start_configured(&["-c", &conf]);
    broker.wait_for_log(&format!("{file}:1: no password hash for user broken line"));
    broker.wait_for_log(&format!("{file}:3: user bob"));
    let login = |user: &str, password: &str| {
        let mut c = connect_packet(ProtocolVersion::V311, user, true, 60);
        c.username = Some(s(user));
        c.password = Some(bytes::Bytes::copy_from_slice(password.as_bytes()));
        Raw::connect_with(broker.port, c).1.reason
    };
    assert_eq!(login("alice", "a"), ReasonCode::Success);
    assert_eq!(login("bob", "plain"), ReasonCode::NotAuthorized);
}
