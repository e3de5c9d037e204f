//! Reading midge's metrics (`metrics_listener`) in a test.

use super::{Broker, DEADLINE};
use std::io::{Read, Write};

/// `GET path` on the metrics port: the status line and the body.
pub fn get(port: u16, path: &str) -> (String, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    let (head, body) = reply.split_once("\r\n\r\n").expect("an HTTP reply");
    (head.lines().next().unwrap().to_string(), body.to_string())
}

pub fn metrics_port(broker: &Broker) -> u16 {
    let line = broker.wait_for_log("Serving metrics on http://");
    let addr = line.rsplit("http://").next().unwrap();
    addr.split(['/', ':']).nth(1).unwrap().parse().unwrap()
}

/// The value of the sample `name{labels}` (exactly as written).
pub fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Waits (up to the deadline) until the sample `series` satisfies `wanted`, and returns it.
pub fn wait_for_sample(port: u16, series: &str, wanted: impl Fn(f64) -> bool) -> f64 {
    let until = std::time::Instant::now() + DEADLINE;
    loop {
        let value = sample(&get(port, "/metrics").1, series);
        if let Some(v) = value.filter(|&v| wanted(v)) {
            return v;
        }
        assert!(
            std::time::Instant::now() < until,
            "{series} is {value:?} after {DEADLINE:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}
