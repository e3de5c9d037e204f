//! paho-mqtt (PyPI) against a broker the test started: tests/interop/paho_client.py.
#![allow(dead_code)]

use super::Broker;
use std::process::Command;

/// Runs tests/interop/paho_client.py (paho-mqtt's QoS 0/1/2, retained, will and MQTT 5
/// checks) against `broker` with `args` after the port (`--websockets`, a CA, a client
/// certificate and key), and fails with the script's output and the broker's log.
pub fn paho_passes(broker: &Broker, args: &[&str]) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/paho_client.py");
    let out = Command::new("timeout")
        .args(["60", "python3", script, &broker.port.to_string()])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "paho script ({args:?}) failed: {}{}\nbroker log:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        broker.log_lines().join("\n")
    );
}
