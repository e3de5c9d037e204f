//! TLS and WebSockets for loadgen's connections (`--tls`, with `--cafile` or `--insecure`;
//! `--ws`), so brokers can be measured over them: rustls and tungstenite's protocol layer
//! driven by hand on the non-blocking sockets of the load threads, and TLS as a blocking
//! stream for conn-storm (where the handshake is part of each connection's CONNACK
//! latency).

use std::io::{self, Read, Write};
use std::net::TcpStream as StdTcpStream;
use std::sync::Arc;

use mio::net::TcpStream;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct};

/// Plaintext rustls may hold for a connection before `write` pushes back, so the load
/// threads' backlog limit still applies over TLS.
const BUFFER_LIMIT: usize = 256 * 1024;

#[derive(Clone)]
pub struct Tls {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
}

impl Tls {
    /// `cafile` to check the broker's certificate, or none of that with `insecure`.
    pub fn new(host: &str, cafile: Option<&str>, insecure: bool) -> Result<Tls, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let config = match (cafile, insecure) {
            (_, true) => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoCheck(provider)))
                .with_no_client_auth(),
            (Some(cafile), false) => {
                let mut roots = rustls::RootCertStore::empty();
                let certs = CertificateDer::pem_file_iter(cafile)
                    .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| format!("--cafile {cafile}: {e:?}"))?;
                for cert in certs {
                    roots
                        .add(cert)
                        .map_err(|e| format!("--cafile {cafile}: {e}"))?;
                }
                builder.with_root_certificates(roots).with_no_client_auth()
            }
            (None, false) => return Err("--tls needs --cafile (or --insecure)".into()),
        };
        let name = ServerName::try_from(host.to_string())
            .map_err(|_| format!("{host:?} is not a host name or address for TLS"))?;
        Ok(Tls {
            config: Arc::new(config),
            name,
        })
    }

    fn session(&self) -> io::Result<ClientConnection> {
        let mut session = ClientConnection::new(self.config.clone(), self.name.clone())
            .map_err(io::Error::other)?;
        session.set_buffer_limit(Some(BUFFER_LIMIT));
        Ok(session)
    }

    /// A blocking stream; the handshake happens with the first write.
    pub fn blocking(&self, tcp: StdTcpStream) -> io::Result<BlockingStream> {
        Ok(BlockingStream::Tls(Box::new(rustls::StreamOwned::new(
            self.session()?,
            tcp,
        ))))
    }
}

/// A load thread's connection: MQTT bytes in and out, over TCP, TLS (`--tls`) and/or
/// WebSockets (`--ws`).
pub struct Transport {
    tcp: TcpStream,
    tls: Option<Box<ClientConnection>>,
    ws: Option<Box<WsClient>>,
    /// Bytes for the socket it has not taken yet (without TLS, which buffers its own).
    raw_out: Vec<u8>,
}

/// The client side of a WebSocket: the upgrade, then tungstenite's framing (masked, as a
/// client must) over an in-memory pipe.
struct WsClient {
    context: tungstenite::protocol::WebSocketContext,
    pipe: Pipe,
    /// The upgrade's answer, until it is complete.
    answer: Option<Vec<u8>>,
}

#[derive(Default)]
struct Pipe {
    input: Vec<u8>,
    output: Vec<u8>,
}

impl Read for Pipe {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.input.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(self.input.len());
        buf[..n].copy_from_slice(&self.input[..n]);
        self.input.drain(..n);
        Ok(n)
    }
}

impl Write for Pipe {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.output.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Transport {
    pub fn new(tcp: TcpStream, tls: Option<&Tls>, ws_host: Option<&str>) -> io::Result<Transport> {
        let mut transport = Transport {
            tcp,
            tls: tls.map(|t| t.session().map(Box::new)).transpose()?,
            ws: None,
            raw_out: Vec::new(),
        };
        if let Some(host) = ws_host {
            transport.lower_write(upgrade_request(host).as_bytes())?;
            transport.ws = Some(Box::new(WsClient {
                context: tungstenite::protocol::WebSocketContext::new(
                    tungstenite::protocol::Role::Client,
                    Some(ws_config()),
                ),
                pipe: Pipe::default(),
                answer: Some(Vec::new()),
            }));
        }
        Ok(transport)
    }

    pub fn socket(&mut self) -> &mut TcpStream {
        &mut self.tcp
    }

    /// Appends the MQTT bytes that can be read now to `rbuf`; `Ok(true)` once the broker
    /// closed.
    pub fn read_into(&mut self, rbuf: &mut Vec<u8>) -> io::Result<bool> {
        let mut lower = Vec::new();
        let target = if self.ws.is_some() {
            &mut lower
        } else {
            &mut *rbuf
        };
        let closed = match &mut self.tls {
            None => read_plain(&mut self.tcp, target)?,
            Some(session) => read_tls(&mut self.tcp, session, target)?,
        };
        let mut answer = Vec::new();
        let mut result = Ok(closed);
        if let Some(ws) = &mut self.ws {
            result = ws
                .received(&lower, rbuf, &mut answer)
                .map(|peer_closed| closed || peer_closed);
        }
        if !answer.is_empty() {
            self.lower_write(&answer)?;
        }
        // The handshake, or the WebSocket layer, may have something to send back.
        self.push()?;
        result
    }

    /// Takes some of `data`; `WouldBlock` when nothing could be taken.
    pub fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.push()?;
        if self.raw_out.len() > BUFFER_LIMIT {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        if let Some(ws) = &mut self.ws {
            // [RFC 6455 §4.1] nothing but the request before the upgrade's answer.
            if ws.answer.is_some() {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let message = tungstenite::Message::Binary(bytes::Bytes::copy_from_slice(data));
            ws.context
                .write(&mut ws.pipe, message)
                .map_err(io::Error::other)?;
            let _ = ws.context.flush(&mut ws.pipe);
            let framed = std::mem::take(&mut ws.pipe.output);
            self.lower_write(&framed)?;
            self.push()?;
            return Ok(data.len());
        }
        let taken = match &mut self.tls {
            None => return self.tcp.write(data),
            Some(session) => session.writer().write(data)?,
        };
        self.push()?;
        if taken == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(taken)
    }

    /// Bytes below the WebSocket layer: into TLS, or queued for the socket.
    fn lower_write(&mut self, bytes: &[u8]) -> io::Result<()> {
        match &mut self.tls {
            // The WebSocket layer's frames are whole: TLS takes them all (past its limit
            // if it must; the caller's backlog check holds the next ones back).
            Some(session) => {
                session.set_buffer_limit(None);
                session.writer().write_all(bytes)?;
                session.set_buffer_limit(Some(BUFFER_LIMIT));
            }
            None => self.raw_out.extend_from_slice(bytes),
        }
        Ok(())
    }

    /// Writes what is waiting for the socket, as far as it takes it.
    pub fn push(&mut self) -> io::Result<()> {
        if let Some(session) = &mut self.tls {
            while session.wants_write() {
                match session.write_tls(&mut self.tcp) {
                    Ok(_) => {}
                    Err(e) if would_wait(&e) => return Ok(()),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            return Ok(());
        }
        while !self.raw_out.is_empty() {
            match self.tcp.write(&self.raw_out) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.raw_out.drain(..n);
                }
                Err(e) if would_wait(&e) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Not yet: the socket is full, or (just opened) not connected yet.
fn would_wait(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::NotConnected
    )
}

fn read_plain(tcp: &mut TcpStream, into: &mut Vec<u8>) -> io::Result<bool> {
    let mut chunk = [0u8; 64 * 1024];
    loop {
        match tcp.read(&mut chunk) {
            Ok(0) => return Ok(true),
            Ok(n) => into.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

fn read_tls(
    tcp: &mut TcpStream,
    session: &mut ClientConnection,
    into: &mut Vec<u8>,
) -> io::Result<bool> {
    loop {
        match session.read_tls(tcp) {
            Ok(0) => return Ok(true),
            Ok(_) => {
                let state = session.process_new_packets().map_err(io::Error::other)?;
                let n = state.plaintext_bytes_to_read();
                let start = into.len();
                into.resize(start + n, 0);
                session.reader().read_exact(&mut into[start..])?;
                if state.peer_has_closed() {
                    return Ok(true);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// The WebSocket upgrade request: path `/mqtt`, subprotocol `mqtt`.
fn upgrade_request(host: &str) -> String {
    let key = tungstenite::handshake::client::generate_key();
    format!(
        "GET /mqtt HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n"
    )
}

/// Where the upgrade's answer in `head` ends, once it is all there; an error if the broker
/// refused the upgrade.
fn upgrade_answer_end(head: &[u8]) -> io::Result<Option<usize>> {
    let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    if !head.starts_with(b"HTTP/1.1 101") {
        let status = String::from_utf8_lossy(&head[..head.len().min(40)]).into_owned();
        return Err(io::Error::other(format!(
            "WebSocket upgrade refused: {status:?}"
        )));
    }
    Ok(Some(end + 4))
}

fn ws_config() -> tungstenite::protocol::WebSocketConfig {
    tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(64 * 1024)
        .write_buffer_size(0)
}

impl WsClient {
    /// Bytes from below: the upgrade's answer first, then frames whose MQTT bytes go to
    /// `mqtt`; what the layer answers (pongs, the close) to `answer`. True once closed.
    fn received(
        &mut self,
        bytes: &[u8],
        mqtt: &mut Vec<u8>,
        answer: &mut Vec<u8>,
    ) -> io::Result<bool> {
        let mut bytes = bytes.to_vec();
        if let Some(head) = &mut self.answer {
            head.extend_from_slice(&bytes);
            let Some(end) = upgrade_answer_end(head)? else {
                return Ok(false);
            };
            bytes = head.split_off(end);
            self.answer = None;
        }
        self.pipe.input.extend_from_slice(&bytes);
        let mut closed = false;
        loop {
            match self.context.read(&mut self.pipe) {
                Ok(tungstenite::Message::Binary(data)) => mqtt.extend_from_slice(&data),
                Ok(tungstenite::Message::Close(_)) => {
                    closed = true;
                    break;
                }
                Ok(_) => {}
                Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                    closed = true;
                    break;
                }
                Err(e) => return Err(io::Error::other(e)),
            }
        }
        let _ = self.context.flush(&mut self.pipe);
        answer.append(&mut self.pipe.output);
        Ok(closed)
    }
}

/// conn-storm's and churn's connections.
pub enum BlockingStream {
    Plain(StdTcpStream),
    Tls(Box<rustls::StreamOwned<ClientConnection, StdTcpStream>>),
    /// MQTT in binary WebSocket messages, after `upgraded`.
    Ws(Box<BlockingWs>),
}

pub struct BlockingWs {
    ws: tungstenite::WebSocket<BlockingStream>,
    /// What is left of the last message read.
    pending: bytes::Bytes,
}

impl BlockingStream {
    pub fn tcp(&self) -> &StdTcpStream {
        match self {
            BlockingStream::Plain(tcp) => tcp,
            BlockingStream::Tls(tls) => &tls.sock,
            BlockingStream::Ws(ws) => ws.ws.get_ref().tcp(),
        }
    }

    /// Sends the WebSocket upgrade request; `upgraded` reads the answer. (A client sends
    /// nothing more until the answer [RFC 6455 §4.1], so a storm sends every request of a
    /// batch first.)
    pub fn request_upgrade(&mut self, host: &str) -> io::Result<()> {
        self.write_all(upgrade_request(host).as_bytes())
    }

    /// Reads the upgrade's answer: the stream then carries MQTT in binary messages.
    pub fn upgraded(mut self) -> io::Result<BlockingStream> {
        let mut head = Vec::new();
        let mut chunk = [0u8; 512];
        let end = loop {
            if let Some(end) = upgrade_answer_end(&head)? {
                break end;
            }
            if head.len() > 16 * 1024 {
                return Err(io::Error::other("WebSocket upgrade answer too long"));
            }
            match self.read(&mut chunk)? {
                0 => return Err(io::ErrorKind::UnexpectedEof.into()),
                n => head.extend_from_slice(&chunk[..n]),
            }
        };
        let ws = tungstenite::WebSocket::from_partially_read(
            self,
            head.split_off(end),
            tungstenite::protocol::Role::Client,
            Some(ws_config()),
        );
        Ok(BlockingStream::Ws(Box::new(BlockingWs {
            ws,
            pending: bytes::Bytes::new(),
        })))
    }
}

impl Read for BlockingStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            BlockingStream::Plain(tcp) => tcp.read(buf),
            BlockingStream::Tls(tls) => tls.read(buf),
            BlockingStream::Ws(ws) => ws.read(buf),
        }
    }
}

impl Write for BlockingStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            BlockingStream::Plain(tcp) => tcp.write(buf),
            BlockingStream::Tls(tls) => tls.write(buf),
            BlockingStream::Ws(ws) => {
                let message = tungstenite::Message::Binary(bytes::Bytes::copy_from_slice(buf));
                ws.ws.send(message).map_err(io::Error::other)?;
                Ok(buf.len())
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            BlockingStream::Plain(tcp) => tcp.flush(),
            BlockingStream::Tls(tls) => tls.flush(),
            BlockingStream::Ws(ws) => ws.ws.flush().map_err(io::Error::other),
        }
    }
}

impl Read for BlockingWs {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use tungstenite::{Error, Message};
        while self.pending.is_empty() {
            match self.ws.read() {
                Ok(Message::Binary(bytes)) => self.pending = bytes,
                Ok(Message::Close(_)) => return Ok(0),
                // Pings: tungstenite queued the pong; it goes with the next write.
                Ok(_) => {}
                Err(Error::Io(e)) => return Err(e),
                Err(Error::ConnectionClosed | Error::AlreadyClosed) => return Ok(0),
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
            }
        }
        let n = buf.len().min(self.pending.len());
        buf[..n].copy_from_slice(&self.pending.split_to(n));
        Ok(n)
    }
}

/// `--insecure`: any certificate is taken (a load test of a broker with a throwaway one);
/// signatures are still checked, so the handshake costs what a real one does.
#[derive(Debug)]
struct NoCheck(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoCheck {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
