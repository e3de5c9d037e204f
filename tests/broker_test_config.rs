//! `midge --test-config -c FILE` (issue 16): what the broker would run, or the error it
//! would stop on. (TLS files: `broker_tls.rs`.)

mod common;

use common::*;
use std::process::Command;

/// `midge --test-config -c FILE`: what would listen where and which bridges would run, or
/// the error the broker would stop on, with a non-zero exit (issue 16).
#[test]
fn test_config_checks_every_referenced_file_and_says_what_would_run() {
    let check = |text: &str| {
        let conf = config_file("test-config", text);
        let out = Command::new(env!("CARGO_BIN_EXE_midge"))
            .args(["--test-config", "-c", &conf])
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), said)
    };
    let (ok, said) = check(
        "listener 18830 127.0.0.1\nallow_anonymous true\n\
         connection central\naddress 10.0.0.1:1884\ntopic t/# out\nremote_clientid edge\n",
    );
    assert!(ok, "{said}");
    assert!(said.contains("listener 127.0.0.1:18830"), "{said}");
    assert!(
        said.contains("bridge central to 10.0.0.1:1884 as edge (locally local.edge)"),
        "{said}"
    );
    assert!(said.contains("Configuration OK."), "{said}");
    for (text, reason) in [
        (
            "listener 18830\npassword_file /nonexistent/passwd\n",
            "/nonexistent/passwd",
        ),
        (
            "listener 18830\nacl_file /nonexistent/acl\n",
            "/nonexistent/acl",
        ),
        (
            "listener 18830\nconnection c\naddress h\ntopic t\nbridge_cafile /nonexistent/ca.pem\n",
            "/nonexistent/ca.pem",
        ),
    ] {
        let (ok, said) = check(text);
        assert!(!ok && said.contains(reason), "{text}: {said}");
    }
}

/// `midge --list-options`: every option the broker reads, one line each with what it does,
/// those read without being acted on marked so; the broker does not start.
#[test]
fn list_options_names_every_option_with_what_it_does() {
    let out = Command::new(env!("CARGO_BIN_EXE_midge"))
        .arg("--list-options")
        .output()
        .unwrap();
    assert!(out.status.success());
    let listing = String::from_utf8(out.stdout).unwrap();
    let line_of = |name: &str| {
        listing
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("{name} is not listed:\n{listing}"))
            .to_string()
    };
    for name in [
        "listener",
        "max_inflight_messages",
        "persistence",
        "cafile",
        "connection",
        "bridge_cafile",
    ] {
        let line = line_of(name);
        assert!(line.len() > name.len() + 10, "{line}");
        assert!(!line.contains("not acted on"), "{line}");
    }
    assert!(line_of("plugin").contains("(read, not acted on yet)"));
    // One line per option, none twice.
    let mut names: Vec<&str> = listing
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let count = names.len();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), count);
    assert!(count > 100, "{count} options");
}
