//! paho-mqtt (PyPI) against brokers the test started: the scripts in tests/interop/.
#![allow(dead_code)]

use super::Broker;
use std::process::Command;

/// Runs tests/interop/paho_client.py (paho-mqtt's QoS 0/1/2, retained, will and MQTT 5
/// checks) against `broker` with `args` after the port (`--websockets`, a CA, a client
/// certificate and key), and fails with the script's output and the broker's log.
pub fn paho_passes(broker: &Broker, args: &[&str]) {
    let port = broker.port.to_string();
    let args: Vec<&str> = std::iter::once(port.as_str())
        .chain(args.iter().copied())
        .collect();
    paho_script_passes("paho_client.py", &args, &[broker]);
}

/// Runs the paho-mqtt script `script` of tests/interop/ with `args` (within 60 s), and
/// fails with its output and the log of each of `brokers`.
pub fn paho_script_passes(script: &str, args: &[&str], brokers: &[&Broker]) {
    let path = format!("{}/tests/interop/{script}", env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("timeout")
        .args(["60", "python3", &path])
        .args(args)
        .output()
        .unwrap();
    let logs: Vec<String> = (brokers.iter().enumerate())
        .map(|(i, b)| format!("broker {i} log:\n{}", b.log_lines().join("\n")))
        .collect();
    assert!(
        out.status.success(),
        "{script} ({args:?}) failed: {}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        logs.join("\n")
    );
}
