//! The cluster tests' helpers: nodes of one cluster on a NATS server, clients, and waits
//! for what crosses between them.

use super::nats::Nats;
use super::{config_file, Broker, DEADLINE};
use bytes::Bytes;
use midge::client::{Client, ClientError, ConnectOptions};
use midge::codec::*;
use std::time::{Duration, Instant};

/// `n` nodes of one cluster (a name of their own, so that tests running at once on other
/// NATS servers or this one never meet), with two shards each.
pub fn nodes(nats: &Nats, n: usize, extra: &str) -> Vec<Broker> {
    nodes_of(nats, n, extra, 2)
}

/// As `nodes`, with `shards` shards each.
pub fn nodes_of(nats: &Nats, n: usize, extra: &str, shards: usize) -> Vec<Broker> {
    (0..n).map(|i| node(nats, i, extra, shards)).collect()
}

/// Kills the first of `nodes` (SIGKILL: no goodbye to NATS, no will, no journal sync) and
/// takes it out of the list.
pub fn kill_first(nodes: &mut Vec<Broker>) {
    let gone = nodes.remove(0);
    gone.signal(libc::SIGKILL);
}

/// Node `i` of `nodes` (`node<i>`) started again, as `nodes` configured it.
pub fn restart_node(nats: &Nats, i: usize, extra: &str) -> Broker {
    node(nats, i, extra, 2)
}

fn node(nats: &Nats, i: usize, extra: &str, shards: usize) -> Broker {
    let cluster = cluster_name(nats);
    let conf = config_file(
        &format!("cluster-{}-{i}", nats.port),
        &format!(
            "cluster_nats_url {}\ncluster_name {cluster}\ncluster_node_id node{i}\n{extra}",
            nats.url()
        ),
    );
    let broker = Broker::start(&["-c", &conf, "--threads", &shards.to_string()]);
    broker.wait_for_log(&format!("Cluster: connected to NATS as node node{i}."));
    broker
}

pub fn cluster_name(nats: &Nats) -> String {
    format!("t{}x{}", std::process::id(), nats.port)
}

pub fn options(port: u16, id: &str, version: ProtocolVersion) -> ConnectOptions {
    ConnectOptions {
        host: "127.0.0.1".into(),
        port,
        version,
        client_id: id.into(),
        nodelay: true,
        ..ConnectOptions::default()
    }
}

pub fn client(broker: &Broker, id: &str, version: ProtocolVersion) -> Client {
    Client::connect(&options(broker.port, id, version))
        .expect("connect")
        .0
}

pub fn subscribe(client: &mut Client, filters: &[(&str, QoS)]) {
    subscribe_with(client, filters, false);
}

pub fn subscribe_with(client: &mut Client, filters: &[(&str, QoS)], retain_as_published: bool) {
    let filters: Vec<(String, SubscriptionOptions)> = filters
        .iter()
        .map(|(f, qos)| {
            let options = SubscriptionOptions {
                qos: *qos,
                no_local: false,
                retain_as_published,
                retain_handling: RetainHandling::SendAtSubscribe,
            };
            (f.to_string(), options)
        })
        .collect();
    let ack =
        (client.subscribe(&filters, Properties::default(), &mut Vec::new())).expect("subscribe");
    assert!(ack.reasons.iter().all(|r| (*r as u8) < 0x80), "{ack:?}");
}

pub fn publish(client: &mut Client, topic: &str, payload: &str, qos: QoS) {
    let payload = Bytes::from(payload.to_string());
    (client.publish(
        topic,
        payload,
        qos,
        false,
        Properties::default(),
        &mut Vec::new(),
    ))
    .expect("publish");
}

/// The next PUBLISH within the deadline that is not a probe (`wait_for_interest`).
pub fn next(client: &mut Client) -> Publish {
    let until = Instant::now() + DEADLINE;
    loop {
        match client.recv(Some(until)).expect("receive") {
            Some(p) if p.topic.ends_with("/probe") => continue,
            Some(p) => return p,
            None => panic!("no message within {DEADLINE:?}"),
        }
    }
}

/// Waits until `client`'s connection is closed, and says how.
pub fn closed(client: &mut Client) -> ClientError {
    let until = Instant::now() + DEADLINE;
    loop {
        match client.recv(Some(until)) {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("still connected after {DEADLINE:?}"),
            Err(e) => return e,
        }
    }
}

/// Nothing but probes for `quiet`.
pub fn nothing_more(client: &mut Client, quiet: Duration) {
    let until = Instant::now() + quiet;
    while let Some(p) = client.recv(Some(until)).expect("receive") {
        assert!(p.topic.ends_with("/probe"), "unexpected {:?}", p.topic);
    }
}

/// Publishes probes on `topic` (ending in `/probe`) from `publisher` until `subscriber`
/// gets one: the subscriber's node has its NATS subscription in place (the node
/// subscribes on NATS as its clients subscribe, and SUBACK does not wait for NATS).
pub fn wait_for_interest(publisher: &mut Client, subscribers: &mut [&mut Client], topic: &str) {
    let before = wait_for_interest_after(publisher, subscribers, topic);
    assert!(before.is_empty(), "messages before any probe: {before:?}");
}

/// As `wait_for_interest`, giving back the payloads of other messages that came first.
pub fn wait_for_interest_after(
    publisher: &mut Client,
    subscribers: &mut [&mut Client],
    topic: &str,
) -> Vec<Bytes> {
    assert!(topic.ends_with("/probe"));
    let mut before = Vec::new();
    for subscriber in subscribers.iter_mut() {
        let until = Instant::now() + DEADLINE;
        loop {
            publish(publisher, topic, "probe", QoS::AtMostOnce);
            let wait = Instant::now() + Duration::from_millis(100);
            if let Some(p) = subscriber.recv(Some(wait)).expect("receive") {
                if p.topic.ends_with("/probe") {
                    break;
                }
                before.push(p.payload);
            }
            assert!(Instant::now() < until, "{topic} never crossed the cluster");
        }
    }
    before
}

/// The value of `$SYS` topic `topic` on the node `sys` reads, once it satisfies `wanted`.
pub fn wait_for_sys(sys: &mut Client, topic: &str, wanted: impl Fn(u64) -> bool) -> u64 {
    let until = Instant::now() + DEADLINE;
    loop {
        let p = (sys.recv(Some(until)).expect("receive"))
            .unwrap_or_else(|| panic!("{topic} never as wanted"));
        if p.topic.as_str() == topic {
            let value: u64 = std::str::from_utf8(&p.payload).unwrap().parse().unwrap();
            if wanted(value) {
                return value;
            }
        }
    }
}

/// Waits until the latest value of each `$SYS` topic in `wanted` that the node `sys`
/// reads is the one given (the node sends a value when it changes, so they are kept as
/// they come, in whatever order).
pub fn wait_for_sys_values(sys: &mut Client, wanted: &[(&str, u64)]) {
    let mut latest = std::collections::HashMap::new();
    let until = Instant::now() + DEADLINE;
    while wanted.iter().any(|(t, v)| latest.get(*t) != Some(v)) {
        let p = (sys.recv(Some(until)).expect("receive"))
            .unwrap_or_else(|| panic!("never {wanted:?}; last {latest:?}"));
        let value: u64 = std::str::from_utf8(&p.payload)
            .unwrap()
            .parse()
            .unwrap_or(u64::MAX);
        latest.insert(p.topic.to_string(), value);
    }
}

/// Publishes `n` numbered QoS 0 messages on `topic` from a thread of its own, one every
/// 200 µs, so that they are on their way while a test changes subscriptions.
pub fn stream(port: u16, topic: &'static str, n: usize) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let options = options(port, "streamer", ProtocolVersion::V311);
        let mut publisher = Client::connect(&options).expect("connect").0;
        for i in 0..n {
            publish(&mut publisher, topic, &i.to_string(), QoS::AtMostOnce);
            std::thread::sleep(Duration::from_micros(200));
        }
    })
}

/// The numbers of the messages `client` gets on `topic` until `last` or the deadline.
pub fn numbers_until(client: &mut Client, topic: &str, last: usize) -> Vec<usize> {
    let mut got = Vec::new();
    while got.last() != Some(&last) {
        let p = next(client);
        if p.topic.as_str() == topic {
            got.push(std::str::from_utf8(&p.payload).unwrap().parse().unwrap());
        }
    }
    got
}

/// `got` is every number from its first to `n - 1`, once each, in order (said briefly if
/// not: what is missing, repeated or out of place).
pub fn assert_each_once_in_order(got: Vec<usize>, n: usize) {
    let start = got[0];
    let missing: Vec<usize> = (start..n).filter(|i| !got.contains(i)).collect();
    let mut seen = std::collections::HashSet::new();
    let repeated: Vec<usize> = got.iter().copied().filter(|i| !seen.insert(*i)).collect();
    let out_of_order = got.windows(2).filter(|w| w[0] >= w[1]).count();
    assert!(
        missing.is_empty() && repeated.is_empty() && out_of_order == 0,
        "from {start}: missing {missing:?}, repeated {repeated:?}, {out_of_order} out of order"
    );
}

/// A bare connection to `nats`, its INFO line read.
fn nats_connected(nats: &Nats) -> (std::net::TcpStream, std::io::BufReader<std::net::TcpStream>) {
    use std::io::BufRead;
    let stream = std::net::TcpStream::connect(("127.0.0.1", nats.port)).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
    let mut info = String::new();
    reader.read_line(&mut info).unwrap();
    assert!(info.starts_with("INFO"), "{info}");
    (stream, reader)
}

/// Publishes `payload` on `subject` as a bare NATS client would (NATS's text protocol).
pub fn nats_publish(nats: &Nats, subject: &str, payload: &[u8]) {
    use std::io::{BufRead, Write};
    let (mut stream, mut reader) = nats_connected(nats);
    let mut out = format!(
        "CONNECT {{\"verbose\":false}}\r\nPUB {subject} {}\r\n",
        payload.len()
    )
    .into_bytes();
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\r\nPING\r\n");
    stream.write_all(&out).unwrap();
    let mut pong = String::new();
    reader.read_line(&mut pong).unwrap();
    assert_eq!(pong.trim(), "PONG");
}

/// The answer to a request on `subject`, as a bare NATS client would ask it (NATS's text
/// protocol): JetStream's API answers in JSON.
pub fn nats_request(nats: &Nats, subject: &str, payload: &[u8]) -> String {
    use std::io::{BufRead, Read, Write};
    let (mut stream, mut reader) = nats_connected(nats);
    let mut line = String::new();
    let mut out = format!(
        "CONNECT {{\"verbose\":false}}\r\nSUB test.answer 1\r\nPUB {subject} test.answer {}\r\n",
        payload.len()
    )
    .into_bytes();
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\r\n");
    stream.write_all(&out).unwrap();
    loop {
        line.clear();
        reader.read_line(&mut line).unwrap();
        if line.starts_with("PING") {
            stream.write_all(b"PONG\r\n").unwrap();
            continue;
        }
        if let Some(head) = line.strip_prefix("MSG ") {
            let len: usize = head.split_whitespace().last().unwrap().parse().unwrap();
            let mut body = vec![0; len + 2];
            reader.read_exact(&mut body).unwrap();
            body.truncate(len);
            return String::from_utf8(body).unwrap();
        }
        assert!(!line.is_empty(), "NATS closed the connection");
    }
}

/// A number field of a JSON answer (`"name":123`), the first of that name.
pub fn json_number(json: &str, name: &str) -> Option<u64> {
    let at = json.find(&format!("\"{name}\":"))? + name.len() + 3;
    let digits: String = json[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

pub fn servers_port(urls: &str) -> &str {
    urls.rsplit(':').next().unwrap_or("0")
}
