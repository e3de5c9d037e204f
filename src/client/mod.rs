//! A small blocking MQTT client on the project's codec, for `midge-pub` and `midge-sub`:
//! connect, publish with the QoS 1/2 handshakes, subscribe, receive (answering the broker's
//! QoS 1/2 and keeping the connection alive), disconnect.

pub mod cli;
pub mod format;
pub mod tls;

use bytes::{Bytes, BytesMut};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::codec::{
    ConnAck, Connect, Decoder, Disconnect, MqttStr, Packet, Properties, ProtocolVersion,
    PubResponse, Publish, QoS, ReasonCode, SubAck, Subscribe, SubscriptionOptions, UnsubAck,
    Unsubscribe, Will,
};

/// The largest packet the client takes from a broker.
const PACKET_SIZE_MAX: usize = 268_435_460;

#[derive(Debug)]
pub enum ClientError {
    /// The connection could not be made or broke.
    Io(io::Error),
    /// The broker refused the connection with this reason.
    Refused(ReasonCode),
    /// The broker broke the protocol, or sent what the client could not decode.
    Protocol(String),
    /// The broker closed the connection (with a 5.0 DISCONNECT reason, if it sent one).
    Closed(Option<ReasonCode>),
    /// The TLS handshake failed on this side (the broker's certificate, say).
    Tls(String),
    /// A TLS option could not be used (a file that is not there).
    TlsOptions(String),
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Io(e) => write!(f, "{e}"),
            ClientError::Refused(reason) => write!(f, "Connection Refused: {}.", refusal(*reason)),
            ClientError::Protocol(what) => write!(f, "protocol error: {what}"),
            ClientError::Closed(Some(reason)) => {
                write!(f, "disconnected by the broker: {reason:?}")
            }
            ClientError::Closed(None) => write!(f, "the connection was lost"),
            ClientError::Tls(_) => write!(f, "A TLS error occurred."),
            ClientError::TlsOptions(what) => write!(f, "Problem setting TLS options: {what}."),
        }
    }
}

impl From<io::Error> for ClientError {
    fn from(e: io::Error) -> Self {
        ClientError::Io(e)
    }
}

/// `text` as an MQTT string (at most 65,535 bytes, no NUL), or an error naming `what`.
fn mqtt_str(what: &str, text: &str) -> Result<MqttStr, ClientError> {
    MqttStr::new(text).map_err(|e| ClientError::Protocol(format!("{what} {text:?}: {e}")))
}

/// Mosquitto's words for a refused CONNECT.
fn refusal(reason: ReasonCode) -> &'static str {
    match reason {
        ReasonCode::UnsupportedProtocolVersion => "unacceptable protocol version",
        ReasonCode::ClientIdentifierNotValid => "identifier rejected",
        ReasonCode::ServerUnavailable | ReasonCode::ServerBusy => "broker unavailable",
        ReasonCode::BadUserNameOrPassword => "bad user name or password",
        ReasonCode::NotAuthorized => "not authorised",
        _ => "refused",
    }
}

/// What a client connects with.
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    pub host: String,
    pub port: u16,
    /// `-A`: the local address to connect from.
    pub bind: Option<String>,
    pub version: ProtocolVersion,
    pub client_id: String,
    pub keepalive_s: u16,
    pub clean: bool,
    pub username: Option<String>,
    pub password: Option<String>,
    pub will: Option<Will>,
    pub properties: Properties,
    pub nodelay: bool,
    /// `-d`: print each packet sent and received, as Mosquitto's clients do.
    pub debug: bool,
    pub tls: tls::ClientTls,
    /// `-L ws://` or `wss://`: MQTT over WebSockets (path `/mqtt`).
    pub websocket: bool,
    /// `--unix PATH`: a Unix socket instead of `host` and `port`.
    pub unix: Option<PathBuf>,
}

impl Default for ConnectOptions {
    /// Mosquitto's clients' defaults: localhost:1883, MQTT 3.1.1, keepalive 60 s, a clean
    /// session, no credentials.
    fn default() -> Self {
        ConnectOptions {
            host: "localhost".into(),
            port: 1883,
            bind: None,
            version: ProtocolVersion::V311,
            client_id: String::new(),
            keepalive_s: 60,
            clean: true,
            username: None,
            password: None,
            will: None,
            properties: Properties::default(),
            nodelay: false,
            debug: false,
            tls: Default::default(),
            websocket: false,
            unix: None,
        }
    }
}

pub struct Client {
    stream: tls::Stream,
    pub version: ProtocolVersion,
    decoder: Decoder,
    inbuf: BytesMut,
    next_packet_id: u16,
    keepalive: Duration,
    last_sent: Instant,
    /// When the PINGREQ still waiting for its PINGRESP went out.
    ping_sent: Option<Instant>,
    /// Outgoing QoS 1/2 publishes waiting for their acknowledgement, by packet id.
    outgoing: hashbrown::HashMap<u16, QoS>,
    /// QoS 2 packet ids received and not yet released (so a resend is not shown twice).
    incoming_qos2: hashbrown::HashSet<u16>,
    debug: bool,
    name: String,
}

/// The connection to the broker: its Unix socket (`--unix`), or TCP to `host` and `port`.
fn connect_socket(options: &ConnectOptions) -> io::Result<socket2::Socket> {
    if let Some(path) = &options.unix {
        return Ok(std::os::unix::net::UnixStream::connect(path)?.into());
    }
    let tcp = connect_tcp(options)?;
    tcp.set_nodelay(options.nodelay)?;
    Ok(tcp.into())
}

fn connect_tcp(options: &ConnectOptions) -> io::Result<TcpStream> {
    let addrs: Vec<SocketAddr> = (options.host.as_str(), options.port)
        .to_socket_addrs()?
        .collect();
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no address for the host");
    for addr in addrs {
        let attempt = match &options.bind {
            None => TcpStream::connect_timeout(&addr, Duration::from_secs(10)),
            Some(bind) => (|| {
                let local: std::net::IpAddr = bind
                    .parse()
                    .map_err(|_| io::Error::other(format!("bad bind address {bind:?}")))?;
                let socket = socket2::Socket::new(
                    socket2::Domain::for_address(addr),
                    socket2::Type::STREAM,
                    None,
                )?;
                socket.bind(&SocketAddr::new(local, 0).into())?;
                socket.connect_timeout(&addr.into(), Duration::from_secs(10))?;
                Ok(socket.into())
            })(),
        };
        match attempt {
            Ok(stream) => return Ok(stream),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// The connection to the broker `options` name: TCP, with TLS and WebSocket if asked.
fn open_stream(options: &ConnectOptions) -> Result<tls::Stream, ClientError> {
    let socket = connect_socket(options)?;
    let stream = if options.tls.enabled() {
        let config = options.tls.config().inspect_err(|e| {
            if let (true, ClientError::Tls(why)) = (options.debug, e) {
                eprintln!("Error: {why}");
            }
        })?;
        socket.set_read_timeout(Some(Duration::from_secs(30)))?;
        tls::Stream::tls(socket, config, &options.host).map_err(|e| {
            if options.debug {
                eprintln!("TLS: {e}");
            }
            ClientError::Tls(e.to_string())
        })?
    } else {
        tls::Stream::Plain(socket)
    };
    if !options.websocket {
        return Ok(stream);
    }
    let scheme = if options.tls.enabled() { "wss" } else { "ws" };
    let host = match options.host.parse::<std::net::Ipv6Addr>() {
        Ok(_) => format!("[{}]", options.host),
        Err(_) => options.host.clone(),
    };
    let url = format!("{scheme}://{host}:{}/mqtt", options.port);
    stream
        .socket()
        .set_read_timeout(Some(Duration::from_secs(30)))?;
    stream
        .websocket(&url)
        .map_err(|e| ClientError::Protocol(format!("WebSocket upgrade to {url} failed: {e}")))
}

/// The CONNECT `options` ask for; an error if a string in them is not a valid MQTT string.
fn connect_packet(options: &ConnectOptions) -> Result<Connect, ClientError> {
    Ok(Connect {
        version: options.version,
        bridge: false,
        clean_start: options.clean,
        keep_alive: options.keepalive_s,
        properties: options.properties.clone(),
        client_id: mqtt_str("client id", &options.client_id)?,
        will: options.will.clone(),
        username: options
            .username
            .as_deref()
            .map(|u| mqtt_str("user name", u))
            .transpose()?,
        password: options
            .password
            .as_ref()
            .map(|p| Bytes::copy_from_slice(p.as_bytes())),
    })
}

impl Client {
    /// Connects and waits for CONNACK; a refusal is an error carrying its reason.
    pub fn connect(options: &ConnectOptions) -> Result<(Client, ConnAck), ClientError> {
        let stream = open_stream(options)?;
        let name = if options.client_id.is_empty() {
            "null".to_string()
        } else {
            options.client_id.clone()
        };
        let mut client = Client {
            stream,
            version: options.version,
            decoder: Decoder::client(options.version, PACKET_SIZE_MAX),
            inbuf: BytesMut::with_capacity(4096),
            next_packet_id: 0,
            keepalive: Duration::from_secs(options.keepalive_s.into()),
            last_sent: Instant::now(),
            ping_sent: None,
            outgoing: Default::default(),
            incoming_qos2: Default::default(),
            debug: options.debug,
            name,
        };
        client.send(&Packet::Connect(Box::new(connect_packet(options)?)))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        match client.next_packet(Some(deadline))? {
            Some(Packet::ConnAck(ack)) => {
                client.debug_line(&format!(
                    "received CONNACK ({})",
                    client.reason_number(ack.reason)
                ));
                if ack.reason != ReasonCode::Success {
                    return Err(ClientError::Refused(ack.reason));
                }
                if let Some(id) = &ack.properties.assigned_client_identifier {
                    client.name = id.to_string();
                }
                Ok((client, ack))
            }
            Some(other) => Err(ClientError::Protocol(format!(
                "expected CONNACK, got {}",
                other.name()
            ))),
            None => Err(ClientError::Protocol("no CONNACK in time".into())),
        }
    }

    fn reason_number(&self, reason: ReasonCode) -> u8 {
        if self.version == ProtocolVersion::V5 {
            reason as u8
        } else {
            crate::codec::v3_return_code(reason)
        }
    }

    fn debug_line(&self, what: &str) {
        if self.debug {
            println!("Client {} {what}", self.name);
        }
    }

    pub fn send(&mut self, packet: &Packet) -> Result<(), ClientError> {
        let bytes = packet
            .to_bytes(self.version)
            .map_err(|e| ClientError::Protocol(format!("cannot encode {}: {e}", packet.name())))?;
        if self.debug {
            let detail = match packet {
                Packet::Publish(p) => format!(" {}", p.summary()),
                Packet::PubAck(r) | Packet::PubRec(r) | Packet::PubRel(r) | Packet::PubComp(r) => {
                    format!(" (m{})", r.packet_id)
                }
                _ => String::new(),
            };
            self.debug_line(&format!("sending {}{detail}", packet.name()));
        }
        self.stream.write_all(&bytes)?;
        self.last_sent = Instant::now();
        Ok(())
    }

    /// A packet identifier not used by an outgoing publish still waiting. [MQTT-2.2.1-3]
    fn packet_id(&mut self) -> u16 {
        loop {
            self.next_packet_id = self.next_packet_id.wrapping_add(1).max(1);
            if !self.outgoing.contains_key(&self.next_packet_id) {
                return self.next_packet_id;
            }
        }
    }

    /// The next packet from the broker, sending PINGREQ when the keep alive asks for one;
    /// `None` when `deadline` passes first.
    fn next_packet(&mut self, deadline: Option<Instant>) -> Result<Option<Packet>, ClientError> {
        loop {
            match self.decoder.decode_from(&mut self.inbuf) {
                Ok(Some(packet)) => return Ok(Some(packet)),
                Ok(None) => {}
                Err(e) => return Err(ClientError::Protocol(e.to_string())),
            }
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                return Ok(None);
            }
            // A broker that does not answer a PINGREQ within the keep alive is gone (as
            // libmosquitto decides).
            if self
                .ping_sent
                .is_some_and(|at| now.duration_since(at) >= self.keepalive)
            {
                return Err(ClientError::Protocol(
                    "no PINGRESP within the keep alive".into(),
                ));
            }
            let ping_at = (!self.keepalive.is_zero()).then(|| self.last_sent + self.keepalive);
            if ping_at.is_some_and(|at| now >= at) && self.ping_sent.is_none() {
                self.send(&Packet::PingReq)?;
                self.ping_sent = Some(now);
                continue;
            }
            let wait = [deadline, ping_at]
                .into_iter()
                .flatten()
                .map(|at| at.saturating_duration_since(now))
                .min()
                .unwrap_or(Duration::from_secs(3600))
                .max(Duration::from_millis(1));
            self.stream.socket().set_read_timeout(Some(wait))?;
            let mut chunk = [0u8; 16 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(ClientError::Closed(None)),
                Ok(n) => self.inbuf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) => {}
                // TLS: the broker's alert (a refused certificate) or a close without
                // close_notify: the connection is gone, as Mosquitto's clients say.
                Err(e)
                    if self.stream.layered()
                        && matches!(
                            e.kind(),
                            io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof
                        ) =>
                {
                    return Err(ClientError::Closed(None))
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Waits for a packet of the kind `want` picks; messages arriving meanwhile are
    /// acknowledged and kept for `recv` in `held`.
    fn wait_for<T>(
        &mut self,
        held: &mut Vec<Publish>,
        mut want: impl FnMut(&Packet) -> Option<T>,
    ) -> Result<T, ClientError> {
        loop {
            let Some(packet) = self.next_packet(None)? else {
                continue;
            };
            if let Some(found) = want(&packet) {
                self.debug_line(&format!("received {}", packet.name()));
                return Ok(found);
            }
            if let Some(publish) = self.handle(packet)? {
                held.push(publish);
            }
        }
    }

    /// Publishes and, for QoS 1/2, waits until the broker has acknowledged it. Returns the
    /// broker's reason code (5.0 may refuse with one).
    pub fn publish(
        &mut self,
        topic: &str,
        payload: Bytes,
        qos: QoS,
        retain: bool,
        properties: Properties,
        held: &mut Vec<Publish>,
    ) -> Result<ReasonCode, ClientError> {
        self.start_publish(topic, payload, qos, retain, properties)?;
        let done = self.settle(0, held)?;
        Ok(done
            .first()
            .map_or(ReasonCode::Success, |&(_, reason)| reason))
    }

    /// Sends a PUBLISH without waiting for its acknowledgement (see `settle`).
    pub fn start_publish(
        &mut self,
        topic: &str,
        payload: Bytes,
        qos: QoS,
        retain: bool,
        properties: Properties,
    ) -> Result<(), ClientError> {
        let packet_id = if qos == QoS::AtMostOnce {
            0
        } else {
            self.packet_id()
        };
        let topic = mqtt_str("topic", topic)?;
        self.send(&Packet::Publish(Publish {
            dup: false,
            qos,
            retain,
            topic,
            packet_id,
            properties,
            payload,
        }))?;
        if qos != QoS::AtMostOnce {
            self.outgoing.insert(packet_id, qos);
        }
        Ok(())
    }

    /// QoS 1/2 publishes not yet fully acknowledged.
    pub fn outstanding(&self) -> usize {
        self.outgoing.len()
    }

    /// Runs the acknowledgements of outgoing QoS 1/2 publishes (PUBREL for each PUBREC)
    /// until at most `max_outstanding` remain; returns the finished ones with the broker's
    /// reason codes. Messages arriving meanwhile go to `held`.
    pub fn settle(
        &mut self,
        max_outstanding: usize,
        held: &mut Vec<Publish>,
    ) -> Result<Vec<(u16, ReasonCode)>, ClientError> {
        self.settle_until(max_outstanding, None, held)
    }

    /// As `settle`, giving up at `deadline` (with what finished by then).
    pub fn settle_until(
        &mut self,
        max_outstanding: usize,
        deadline: Option<Instant>,
        held: &mut Vec<Publish>,
    ) -> Result<Vec<(u16, ReasonCode)>, ClientError> {
        let mut done = Vec::new();
        while self.outgoing.len() > max_outstanding {
            let Some(packet) = self.next_packet(deadline)? else {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                continue;
            };
            let sent = |r: &PubResponse, qos| self.outgoing.get(&r.packet_id) == Some(&qos);
            match packet {
                Packet::PubAck(r) if sent(&r, QoS::AtLeastOnce) => {
                    self.debug_line(&format!("received PUBACK (m{})", r.packet_id));
                    self.outgoing.remove(&r.packet_id);
                    done.push((r.packet_id, r.reason));
                }
                Packet::PubRec(r) if sent(&r, QoS::ExactlyOnce) => {
                    self.debug_line(&format!("received PUBREC (m{})", r.packet_id));
                    if r.reason as u8 >= 0x80 {
                        self.outgoing.remove(&r.packet_id);
                        done.push((r.packet_id, r.reason));
                    } else {
                        self.send(&Packet::PubRel(PubResponse::new(r.packet_id)))?;
                    }
                }
                Packet::PubComp(r) if sent(&r, QoS::ExactlyOnce) => {
                    self.debug_line(&format!("received PUBCOMP (m{})", r.packet_id));
                    self.outgoing.remove(&r.packet_id);
                    done.push((r.packet_id, r.reason));
                }
                other => {
                    if let Some(publish) = self.handle(other)? {
                        held.push(publish);
                    }
                }
            }
        }
        Ok(done)
    }

    pub fn subscribe(
        &mut self,
        filters: &[(String, SubscriptionOptions)],
        properties: Properties,
        held: &mut Vec<Publish>,
    ) -> Result<SubAck, ClientError> {
        let packet_id = self.packet_id();
        let filters = filters
            .iter()
            .map(|(f, o)| mqtt_str("filter", f).map(|f| (f, *o)))
            .collect::<Result<_, _>>()?;
        self.send(&Packet::Subscribe(Subscribe {
            packet_id,
            properties,
            filters,
        }))?;
        self.wait_for(held, |p| match p {
            Packet::SubAck(ack) if ack.packet_id == packet_id => Some(ack.clone()),
            _ => None,
        })
    }

    pub fn unsubscribe(
        &mut self,
        filters: &[String],
        properties: Properties,
        held: &mut Vec<Publish>,
    ) -> Result<UnsubAck, ClientError> {
        let packet_id = self.packet_id();
        let filters = filters
            .iter()
            .map(|f| mqtt_str("filter", f))
            .collect::<Result<_, _>>()?;
        self.send(&Packet::Unsubscribe(Unsubscribe {
            packet_id,
            properties,
            filters,
        }))?;
        self.wait_for(held, |p| match p {
            Packet::UnsubAck(ack) if ack.packet_id == packet_id => Some(ack.clone()),
            _ => None,
        })
    }

    /// Answers what the broker sent; returns a message to show (once: a QoS 2 resend before
    /// PUBREL is not shown again).
    fn handle(&mut self, packet: Packet) -> Result<Option<Publish>, ClientError> {
        match packet {
            Packet::Publish(publish) => {
                self.debug_line(&format!("received PUBLISH {}", publish.summary()));
                match publish.qos {
                    QoS::AtMostOnce => Ok(Some(publish)),
                    QoS::AtLeastOnce => {
                        self.send(&Packet::PubAck(PubResponse::new(publish.packet_id)))?;
                        Ok(Some(publish))
                    }
                    QoS::ExactlyOnce => {
                        let first = self.incoming_qos2.insert(publish.packet_id);
                        self.send(&Packet::PubRec(PubResponse::new(publish.packet_id)))?;
                        Ok(first.then_some(publish))
                    }
                }
            }
            Packet::PubRel(r) => {
                self.incoming_qos2.remove(&r.packet_id);
                self.send(&Packet::PubComp(PubResponse::new(r.packet_id)))?;
                Ok(None)
            }
            Packet::Disconnect(d) => {
                self.debug_line("received DISCONNECT");
                Err(ClientError::Closed(Some(d.reason)))
            }
            Packet::PingResp => {
                self.ping_sent = None;
                self.debug_line("received PINGRESP");
                Ok(None)
            }
            other => {
                self.debug_line(&format!("received {}", other.name()));
                Ok(None)
            }
        }
    }

    /// The next message from the broker, or `None` if `deadline` passes first.
    pub fn recv(&mut self, deadline: Option<Instant>) -> Result<Option<Publish>, ClientError> {
        loop {
            let Some(packet) = self.next_packet(deadline)? else {
                return Ok(None);
            };
            if let Some(publish) = self.handle(packet)? {
                return Ok(Some(publish));
            }
        }
    }

    /// Sends DISCONNECT (with these 5.0 properties) and closes.
    pub fn disconnect(mut self, properties: Properties) -> Result<(), ClientError> {
        let mut disconnect = Disconnect::with_reason(ReasonCode::Success);
        disconnect.properties = properties;
        self.send(&Packet::Disconnect(disconnect))?;
        self.stream.shutdown_write();
        // Wait briefly for the broker to close, so nothing sent is cut off by a reset.
        let _ = self
            .stream
            .socket()
            .set_read_timeout(Some(Duration::from_secs(1)));
        let mut sink = [0u8; 512];
        while matches!(self.stream.read(&mut sink), Ok(n) if n > 0) {}
        Ok(())
    }
}
