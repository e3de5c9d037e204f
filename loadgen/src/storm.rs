//! The conn-storm scenario: N clients connect as fast as the broker accepts them (a bounded
//! number in flight per thread), CONNACK latency is measured from the start of each TCP
//! connect (with its TLS handshake with `--tls`, its WebSocket upgrade with `--ws`), and
//! then the connections idle so that the broker's memory per connection shows.

use hdrhistogram::Histogram;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::mqtt;
use crate::stats::latency_histogram;
use crate::tls::{BlockingStream, Tls};

pub struct StormResult {
    pub connected: u64,
    pub latency: Histogram<u64>,
    pub errors: Vec<String>,
    /// Kept open until the caller drops them (the idle phase).
    pub streams: Vec<BlockingStream>,
}

/// What the connections go over besides TCP: TLS (`--tls`), WebSockets (`--ws`, with the
/// Host header's value).
#[derive(Clone, Copy)]
pub struct Layers<'a> {
    pub tls: Option<&'a Tls>,
    pub ws_host: Option<&'a str>,
}

/// Connects `ids` (blocking sockets with a deadline: one thread runs `concurrency` at a time
/// by sending every CONNECT first and then reading every CONNACK). Stops at `deadline`,
/// saying how many were not tried: a broker that stops accepting ends the run, not hangs it.
pub fn connect_all(
    addr: SocketAddr,
    source_ips: &[IpAddr],
    ids: &[String],
    v5: bool,
    concurrency: usize,
    deadline: Instant,
    layers: Layers,
) -> StormResult {
    let Layers { tls, ws_host } = layers;
    let mut result = StormResult {
        connected: 0,
        latency: latency_histogram(),
        errors: Vec::new(),
        streams: Vec::with_capacity(ids.len()),
    };
    let mut tried = 0;
    for (batch_no, batch) in ids.chunks(concurrency.max(1)).enumerate() {
        let mut pending = Vec::with_capacity(batch.len());
        for (i, id) in batch.iter().enumerate() {
            let started = Instant::now();
            let index = batch_no * concurrency + i;
            // Each attempt waits at most until the deadline.
            let wait = deadline
                .saturating_duration_since(started)
                .min(CONNECT_WAIT);
            if wait.is_zero() {
                break;
            }
            tried += 1;
            // Without WebSockets the CONNECT goes at once; with them, after the upgrade's
            // answer (below), every upgrade request of the batch being sent first.
            let opened = connect_one(addr, source_ips, index, wait, tls).and_then(|mut s| {
                match ws_host {
                    Some(host) => s.request_upgrade(host)?,
                    None => send_connect(&mut s, id, v5)?,
                }
                Ok(s)
            });
            match opened {
                Ok(stream) => pending.push((stream, started, id)),
                Err(e) => result.errors.push(format!("{id}: {e}")),
            }
        }
        if ws_host.is_some() {
            pending = (pending.into_iter())
                .filter_map(|(stream, started, id)| {
                    let upgraded = stream.upgraded().and_then(|mut s| {
                        send_connect(&mut s, id, v5)?;
                        Ok(s)
                    });
                    match upgraded {
                        Ok(s) => Some((s, started, id)),
                        Err(e) => {
                            result.errors.push(format!("{id}: {e}"));
                            None
                        }
                    }
                })
                .collect();
        }
        for (mut stream, started, _) in pending {
            // Each CONNACK is waited for at most until the deadline too.
            let wait = deadline
                .saturating_duration_since(Instant::now())
                .min(CONNECT_WAIT);
            if wait.is_zero() || stream.tcp().set_read_timeout(Some(wait)).is_err() {
                result.errors.push("no CONNACK before the deadline".into());
                continue;
            }
            if await_connack(&mut stream, started, &mut result) {
                result.streams.push(stream);
            }
        }
        if Instant::now() >= deadline {
            break;
        }
    }
    if tried < ids.len() {
        // First, so that it survives when the caller keeps only the first few errors.
        result.errors.insert(
            0,
            format!(
                "stopped at the deadline (--storm-deadline): {} of {} clients not tried",
                ids.len() - tried,
                ids.len()
            ),
        );
    }
    result
}

/// Connects and disconnects clients at `rate` per second during the window (paced from the
/// window start, open loop), while other threads carry the traffic.
pub fn churn(
    shared: &crate::worker::Shared,
    source_ips: &[IpAddr],
    rate: f64,
    v5: bool,
    start: Instant,
    length: Duration,
) -> StormResult {
    let mut result = StormResult {
        connected: 0,
        latency: latency_histogram(),
        errors: Vec::new(),
        streams: Vec::new(),
    };
    let interval = Duration::from_secs_f64(1.0 / rate.max(0.001));
    let end = start + length;
    let mut due = start;
    let mut n = 0usize;
    while due < end && !shared.failed.load(std::sync::atomic::Ordering::Acquire) {
        let now = Instant::now();
        if now < due {
            std::thread::sleep(due - now);
        }
        let started = Instant::now();
        let id = format!("lg-churn-{}-{n}", std::process::id());
        let opened = (connect_one(
            shared.addr,
            source_ips,
            n,
            CONNECT_WAIT,
            shared.tls.as_ref(),
        ))
        .and_then(|stream| match &shared.ws_host {
            Some(host) => {
                let mut stream = stream;
                stream.request_upgrade(host)?;
                stream.upgraded()
            }
            None => Ok(stream),
        })
        .and_then(|mut stream| {
            send_connect(&mut stream, &id, v5)?;
            Ok(stream)
        });
        match opened {
            Ok(mut stream) => {
                if await_connack(&mut stream, started, &mut result) {
                    let mut bye = Vec::new();
                    mqtt::disconnect(&mut bye);
                    let _ = stream.write_all(&bye);
                }
            }
            Err(e) => result.errors.push(format!("churn connect: {e}")),
        }
        n += 1;
        due += interval;
    }
    result
}

/// Reads the CONNACK (its first four bytes carry the type and, in 3.1.1 and 5.0 alike, the
/// return code at offset 3); on success counts the connection and its latency since `started`.
fn await_connack(stream: &mut BlockingStream, started: Instant, result: &mut StormResult) -> bool {
    let mut ack = [0u8; 4];
    match stream.read_exact(&mut ack) {
        Ok(()) if ack[0] == 0x20 && ack[3] == 0 => {
            let _ = result
                .latency
                .record((started.elapsed().as_micros() as u64).max(1));
            result.connected += 1;
            true
        }
        Ok(()) => {
            result.errors.push(format!("CONNACK refused: {ack:02x?}"));
            false
        }
        Err(e) => {
            result.errors.push(format!("CONNACK: {e}"));
            false
        }
    }
}

/// Longest wait for one TCP connect or CONNACK.
const CONNECT_WAIT: Duration = Duration::from_secs(10);

/// A TCP connection to the broker (TLS with `tls`: the handshake happens with the first
/// write, so CONNACK latency includes it).
fn connect_one(
    addr: SocketAddr,
    source_ips: &[IpAddr],
    index: usize,
    wait: Duration,
    tls: Option<&Tls>,
) -> io::Result<BlockingStream> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    if !source_ips.is_empty() {
        socket.bind(&SocketAddr::new(source_ips[index % source_ips.len()], 0).into())?;
    }
    socket.connect_timeout(&addr.into(), wait)?;
    let tcp: TcpStream = socket.into();
    tcp.set_read_timeout(Some(wait))?;
    tcp.set_nodelay(true)?;
    match tls {
        Some(tls) => tls.blocking(tcp),
        None => Ok(BlockingStream::Plain(tcp)),
    }
}

fn send_connect(stream: &mut BlockingStream, id: &str, v5: bool) -> io::Result<()> {
    let mut connect = Vec::with_capacity(32);
    // Keepalive 0: idle connections must not need pings during the idle phase.
    mqtt::connect(&mut connect, id, v5, true, 0, 0);
    stream.write_all(&connect)
}
