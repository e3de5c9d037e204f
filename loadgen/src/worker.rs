//! One load thread: an event loop over its share of the clients. Publishers send on a fixed
//! schedule (open loop): message k of a publisher is due at `epoch + (k + offset) / rate`,
//! carries that intended time, and is sent as soon as the loop gets to it even if late, so a
//! stalled broker shows up as latency, never as a quietly lower rate.

use hdrhistogram::Histogram;
use mio::net::TcpStream;

use crate::tls::Transport;
use mio::{Events, Interest, Poll, Token};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::mqtt;
use crate::plan::ClientPlan;
use crate::stats::{self, latency_histogram, Streams, Timeline};

/// Bytes waiting to be written to one connection before its publisher stops sending (the
/// broker is not reading): the delay then shows as latency.
const WRITE_BACKLOG_MAX: usize = 8 << 20;
/// Most messages one publisher sends in one loop turn, so reads are not starved.
const SENDS_PER_TURN: u64 = 1024;
const KEEPALIVE_S: u16 = 60;
const TIMER: Token = Token(usize::MAX);

/// A one-shot timerfd.
struct Timer {
    fd: std::os::fd::RawFd,
}

impl Timer {
    fn new() -> io::Result<Timer> {
        // SAFETY: plain syscall; the descriptor is owned by the returned Timer.
        let fd = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Timer { fd })
    }

    /// Fires once after `after` (at least 1 µs: a zero value would disarm it).
    fn arm(&self, after: Duration) {
        let after = after.max(Duration::from_micros(1));
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: after.as_secs() as libc::time_t,
                tv_nsec: after.subsec_nanos() as libc::c_long,
            },
        };
        // SAFETY: `fd` is a timerfd this Timer owns; `spec` is a valid itimerspec.
        unsafe { libc::timerfd_settime(self.fd, 0, &spec, std::ptr::null_mut()) };
    }

    fn clear(&self) {
        let mut expirations = [0u8; 8];
        // SAFETY: reads at most 8 bytes into a buffer of 8 from a descriptor this Timer owns.
        unsafe { libc::read(self.fd, expirations.as_mut_ptr().cast(), 8) };
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        // SAFETY: closes the descriptor this Timer owns, once.
        unsafe { libc::close(self.fd) };
    }
}

/// State shared by the load threads and the main thread.
pub struct Shared {
    pub addr: SocketAddr,
    /// `--sub-port`: where subscribers connect (another broker, bridged from `addr`).
    pub sub_addr: SocketAddr,
    /// `--tls`: every connection speaks TLS.
    pub tls: Option<crate::tls::Tls>,
    /// `--ws`: every connection is a WebSocket, upgraded with this Host.
    pub ws_host: Option<String>,
    pub source_ips: Vec<IpAddr>,
    pub v5: bool,
    pub persistent: bool,
    pub payload: usize,
    pub inflight: usize,
    pub rate: f64,
    /// Number of publishers in the run (for staggering their schedules).
    pub publishers: u32,
    /// Messages each publisher sends in all, and the first one of the measured window.
    pub total_seq: u64,
    pub window_start_seq: u64,
    /// Clients connected and subscribed, over all threads.
    pub ready: AtomicUsize,
    /// Time zero of every schedule, set by the main thread once all clients are ready.
    pub epoch: OnceLock<Instant>,
    pub stop: AtomicBool,
    pub failed: AtomicBool,
    pub sent: AtomicU64,
    pub received: AtomicU64,
    /// Latencies of the current second, for the progress line.
    pub live: Mutex<Histogram<u64>>,
    /// `--report`: keep per-second histograms over this many seconds (0: none).
    pub timeline_s: usize,
}

pub struct WorkerResult {
    pub streams: Streams,
    pub latency: Histogram<u64>,
    /// How late the loop was in sending a message it was free to send (microseconds).
    pub send_lag: Histogram<u64>,
    pub sent_in_window: u64,
    /// Per-second histograms, with `--report`.
    pub timeline: Option<Timeline>,
    pub errors: Vec<String>,
}

#[derive(PartialEq, Eq)]
enum State {
    Connecting,
    Subscribing,
    Ready,
    Closed,
}

struct Client {
    plan: ClientPlan,
    stream: Transport,
    state: State,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    written: usize,
    next_seq: u64,
    /// Stagger of this publisher's schedule, as a fraction of one interval.
    offset: f64,
    inflight: usize,
    next_packet_id: u16,
    last_ping: Instant,
}

impl Client {
    fn packet_id(&mut self) -> u16 {
        self.next_packet_id = self.next_packet_id.wrapping_add(1).max(1);
        self.next_packet_id
    }

    fn backlog(&self) -> usize {
        self.wbuf.len() - self.written
    }
}

fn open(shared: &Shared, index: usize, subscriber_only: bool) -> io::Result<Transport> {
    let addr = if subscriber_only {
        shared.sub_addr
    } else {
        shared.addr
    };
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    if !shared.source_ips.is_empty() {
        let ip = shared.source_ips[index % shared.source_ips.len()];
        socket.bind(&SocketAddr::new(ip, 0).into())?;
    }
    socket.set_tcp_nodelay(true)?;
    socket.set_nonblocking(true)?;
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    let tcp = TcpStream::from_std(socket.into());
    Transport::new(tcp, shared.tls.as_ref(), shared.ws_host.as_deref())
}

pub fn run(shared: Arc<Shared>, plans: Vec<(usize, ClientPlan)>) -> WorkerResult {
    let mut result = WorkerResult {
        streams: Streams::new(),
        latency: latency_histogram(),
        send_lag: latency_histogram(),
        sent_in_window: 0,
        timeline: (shared.timeline_s > 0).then(|| Timeline::new(shared.timeline_s)),
        errors: Vec::new(),
    };
    let setup = Poll::new()
        .map_err(|e| format!("poll: {e}"))
        .and_then(|poll| {
            let clients = connect_clients(&shared, plans, &poll)?;
            let timer = timer_on(&poll)?;
            Ok((poll, clients, timer))
        });
    let (mut poll, mut clients, timer) = match setup {
        Ok(setup) => setup,
        Err(e) => {
            result.errors.push(e);
            shared.failed.store(true, Ordering::Release);
            return result;
        }
    };
    let mut events = Events::with_capacity(1024);
    let mut payload = vec![0u8; shared.payload];
    let mut ready_reported = false;
    let mut live = latency_histogram();
    let mut last_live = Instant::now();
    let interval_ns = 1e9 / shared.rate;
    loop {
        if shared.stop.load(Ordering::Acquire) || shared.failed.load(Ordering::Acquire) {
            break;
        }
        timer.arm(until_next_due(&shared, &clients, interval_ns));
        if let Err(e) = poll.poll(&mut events, Some(Duration::from_millis(5))) {
            if e.kind() != io::ErrorKind::Interrupted {
                result.errors.push(format!("poll: {e}"));
                break;
            }
        }
        for event in events.iter() {
            if event.token() == TIMER {
                timer.clear();
                continue;
            }
            let c = &mut clients[event.token().0];
            if event.is_readable() || event.is_read_closed() || event.is_error() {
                if let Err(e) = read(&shared, c, &mut result, &mut live) {
                    result.errors.push(format!("{}: {e}", c.plan.client_id));
                    c.state = State::Closed;
                    shared.failed.store(true, Ordering::Release);
                }
            }
        }
        if !ready_reported && clients.iter().all(|c| c.state == State::Ready) {
            shared.ready.fetch_add(clients.len(), Ordering::AcqRel);
            ready_reported = true;
        }
        if let Some(&epoch) = shared.epoch.get() {
            let now = Instant::now();
            for c in clients.iter_mut() {
                send_due(
                    &shared,
                    c,
                    epoch,
                    now,
                    interval_ns,
                    &mut payload,
                    &mut result,
                );
            }
        }
        let now = Instant::now();
        ping_and_flush(&shared, &mut clients, now, &mut result);
        if now.duration_since(last_live) > Duration::from_millis(100) {
            if let Ok(mut shared_live) = shared.live.lock() {
                let _ = shared_live.add(&live);
            }
            live.reset();
            last_live = now;
        }
    }
    for c in clients.iter_mut() {
        mqtt::disconnect(&mut c.wbuf);
        let _ = flush(c);
    }
    result
}

/// Connects every client of `plans` (without waiting for CONNACK: its CONNECT is in its
/// write buffer) and registers it with `poll`.
fn connect_clients(
    shared: &Shared,
    plans: Vec<(usize, ClientPlan)>,
    poll: &Poll,
) -> Result<Vec<Client>, String> {
    let publishers = f64::from(shared.publishers.max(1));
    let mut clients: Vec<Client> = Vec::with_capacity(plans.len());
    for (index, plan) in plans {
        let subscriber_only = plan.publish.is_none();
        let mut stream = open(shared, index, subscriber_only)
            .map_err(|e| format!("connect {}: {e}", plan.client_id))?;
        let token = Token(clients.len());
        (poll.registry())
            .register(
                stream.socket(),
                token,
                Interest::READABLE | Interest::WRITABLE,
            )
            .map_err(|e| format!("register: {e}"))?;
        let mut wbuf = Vec::new();
        let expiry = if shared.persistent { 300 } else { 0 };
        mqtt::connect(
            &mut wbuf,
            &plan.client_id,
            shared.v5,
            !shared.persistent,
            KEEPALIVE_S,
            expiry,
        );
        let offset = plan
            .publish
            .as_ref()
            .map_or(0.0, |(_, p, _)| f64::from(*p) / publishers);
        clients.push(Client {
            plan,
            stream,
            state: State::Connecting,
            rbuf: Vec::with_capacity(16 * 1024),
            wbuf,
            written: 0,
            next_seq: 0,
            offset,
            inflight: 0,
            next_packet_id: 0,
            last_ping: Instant::now(),
        });
    }
    Ok(clients)
}

/// epoll's own timeout is in milliseconds: too coarse for schedules of thousands of
/// messages a second. A timerfd, registered with `poll`, wakes the loop when the next
/// message is due, to the microsecond.
fn timer_on(poll: &Poll) -> Result<Timer, String> {
    let timer = Timer::new().map_err(|e| format!("timerfd: {e}"))?;
    (poll.registry())
        .register(
            &mut mio::unix::SourceFd(&timer.fd),
            TIMER,
            Interest::READABLE,
        )
        .map_err(|e| format!("register timerfd: {e}"))?;
    Ok(timer)
}

/// Until the next message of any publisher is due (at most 5 ms, to notice the start and
/// the stop).
fn until_next_due(shared: &Shared, clients: &[Client], interval_ns: f64) -> Duration {
    let mut timeout = Duration::from_millis(5);
    let now = Instant::now();
    if let Some(&epoch) = shared.epoch.get() {
        for c in clients {
            if c.state == State::Ready && c.plan.publish.is_some() && c.next_seq < shared.total_seq
            {
                let due = epoch
                    + Duration::from_nanos(((c.next_seq as f64 + c.offset) * interval_ns) as u64);
                timeout = timeout.min(due.saturating_duration_since(now));
            }
        }
    }
    timeout
}

/// A PINGREQ from each client quiet for half its keepalive, and what each has to write
/// written; a client that cannot write fails the run.
fn ping_and_flush(
    shared: &Shared,
    clients: &mut [Client],
    now: Instant,
    result: &mut WorkerResult,
) {
    for c in clients.iter_mut() {
        if c.state != State::Closed
            && now.duration_since(c.last_ping) > Duration::from_secs(u64::from(KEEPALIVE_S) / 2)
        {
            mqtt::pingreq(&mut c.wbuf);
            c.last_ping = now;
        }
        if let Err(e) = flush(c) {
            result
                .errors
                .push(format!("{}: write: {e}", c.plan.client_id));
            c.state = State::Closed;
            shared.failed.store(true, Ordering::Release);
        }
    }
}

/// Sends what is due for a publisher: every message whose time has come, unless the inflight
/// window or the unwritten backlog holds it back (then it goes later, still stamped with its
/// intended time).
fn send_due(
    shared: &Shared,
    c: &mut Client,
    epoch: Instant,
    now: Instant,
    interval_ns: f64,
    payload: &mut [u8],
    result: &mut WorkerResult,
) {
    let Some((topic, publisher, qos)) = c.plan.publish.clone() else {
        return;
    };
    if c.state != State::Ready {
        return;
    }
    let now_ns = now.duration_since(epoch).as_nanos() as u64;
    for _ in 0..SENDS_PER_TURN {
        if c.next_seq >= shared.total_seq {
            return;
        }
        let intended_ns = ((c.next_seq as f64 + c.offset) * interval_ns) as u64;
        if intended_ns > now_ns {
            return;
        }
        if (qos > 0 && c.inflight >= shared.inflight) || c.backlog() > WRITE_BACKLOG_MAX {
            return;
        }
        let seq = c.next_seq;
        stats::write_header(payload, publisher, seq, intended_ns);
        let packet_id = if qos > 0 { c.packet_id() } else { 0 };
        mqtt::publish(&mut c.wbuf, &topic, qos, packet_id, payload, shared.v5);
        if qos > 0 {
            c.inflight += 1;
        }
        c.next_seq += 1;
        shared.sent.fetch_add(1, Ordering::Relaxed);
        let lag_us = ((now_ns - intended_ns) / 1000).max(1);
        if seq >= shared.window_start_seq {
            result.sent_in_window += 1;
            let _ = result.send_lag.record(lag_us);
        }
        if let Some(timeline) = &mut result.timeline {
            timeline.send_lag(now_ns, lag_us);
        }
    }
}

fn flush(c: &mut Client) -> io::Result<()> {
    // TLS records taken earlier but not yet written go first.
    c.stream.push()?;
    while c.written < c.wbuf.len() {
        match c.stream.write(&c.wbuf[c.written..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => c.written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // Not connected yet: the write readiness event will come.
            Err(e) if e.kind() == io::ErrorKind::NotConnected => break,
            Err(e) => return Err(e),
        }
    }
    if c.written == c.wbuf.len() {
        c.wbuf.clear();
        c.written = 0;
    } else if c.written > 1 << 20 {
        c.wbuf.drain(..c.written);
        c.written = 0;
    }
    Ok(())
}

fn read(
    shared: &Shared,
    c: &mut Client,
    result: &mut WorkerResult,
    live: &mut Histogram<u64>,
) -> Result<(), String> {
    let closed = c
        .stream
        .read_into(&mut c.rbuf)
        .map_err(|e| format!("read: {e}"))?;
    if closed {
        if shared.stop.load(Ordering::Acquire) {
            return Ok(());
        }
        return Err("the broker closed the connection".into());
    }
    let mut at = 0;
    while let Some(f) = mqtt::frame(&c.rbuf[at..])? {
        let (start, end) = (at + f.body_start, at + f.end);
        handle(shared, c, f.packet_type, f.flags, start, end, result, live)?;
        at = end;
    }
    c.rbuf.drain(..at);
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn handle(
    shared: &Shared,
    c: &mut Client,
    packet_type: u8,
    flags: u8,
    start: usize,
    end: usize,
    result: &mut WorkerResult,
    live: &mut Histogram<u64>,
) -> Result<(), String> {
    match packet_type {
        mqtt::CONNACK => {
            let code = c.rbuf.get(start + 1).copied().unwrap_or(0xFF);
            if code != 0 {
                return Err(format!("CONNACK refused with code {code}"));
            }
            match c.plan.subscribe.clone() {
                Some((filter, _, qos)) => {
                    let id = c.packet_id();
                    mqtt::subscribe(&mut c.wbuf, id, &filter, qos, shared.v5);
                    c.state = State::Subscribing;
                }
                None => c.state = State::Ready,
            }
        }
        mqtt::SUBACK => {
            let props = if shared.v5 { 1 } else { 0 };
            let code = c.rbuf.get(start + 2 + props).copied().unwrap_or(0xFF);
            if code >= 0x80 {
                return Err(format!("SUBACK refused with code {code:#x}"));
            }
            c.state = State::Ready;
        }
        mqtt::PUBLISH => {
            let now = Instant::now();
            let incoming = mqtt::parse_publish(flags, &c.rbuf[start..end], shared.v5)?;
            let (qos, packet_id) = (incoming.qos, incoming.packet_id);
            let (publisher, seq, intended_ns) =
                stats::read_header(incoming.payload).ok_or("a PUBLISH without loadgen's header")?;
            let group = c.plan.subscribe.as_ref().map_or(0, |(_, g, _)| *g);
            result
                .streams
                .entry((group, publisher))
                .or_default()
                .record(seq);
            shared.received.fetch_add(1, Ordering::Relaxed);
            if let Some(&epoch) = shared.epoch.get() {
                let now_ns = now.duration_since(epoch).as_nanos() as u64;
                let latency_us = (now_ns.saturating_sub(intended_ns) / 1000).max(1);
                if seq >= shared.window_start_seq {
                    let _ = result.latency.record(latency_us);
                }
                if let Some(timeline) = &mut result.timeline {
                    timeline.latency(now_ns, latency_us);
                }
                let _ = live.record(latency_us);
            }
            match qos {
                1 => mqtt::ack(&mut c.wbuf, mqtt::PUBACK, packet_id),
                2 => mqtt::ack(&mut c.wbuf, mqtt::PUBREC, packet_id),
                _ => {}
            }
        }
        mqtt::PUBACK | mqtt::PUBCOMP => c.inflight = c.inflight.saturating_sub(1),
        mqtt::PUBREC => {
            let id = mqtt::packet_id(&c.rbuf[start..end]).ok_or("short PUBREC")?;
            mqtt::ack(&mut c.wbuf, mqtt::PUBREL, id);
        }
        mqtt::PUBREL => {
            let id = mqtt::packet_id(&c.rbuf[start..end]).ok_or("short PUBREL")?;
            mqtt::ack(&mut c.wbuf, mqtt::PUBCOMP, id);
        }
        mqtt::PINGRESP => {}
        mqtt::DISCONNECT => return Err("the broker sent DISCONNECT".into()),
        other => return Err(format!("unexpected packet type {other}")),
    }
    Ok(())
}
