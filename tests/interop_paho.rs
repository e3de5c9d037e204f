//! Interop with paho-mqtt (Python, PyPI; installed by scripts/test.sh): the script in
//! tests/interop/paho_client.py publishes and subscribes at QoS 0/1/2, with retained messages
//! and a will.

mod common;

use common::*;
use std::process::Command;

#[test]
fn paho_mqtt_publishes_and_subscribes() {
    let check = Command::new("python3")
        .args(["-c", "import paho.mqtt.client"])
        .output();
    assert!(
        check.is_ok_and(|o| o.status.success()),
        "python3 with paho-mqtt is missing: scripts/test.sh installs it"
    );
    Broker::each_threads(&[], |broker| {
        paho_passes(broker, &[]);
    });
}
