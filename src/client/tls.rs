//! TLS and WebSockets for `midge-pub` and `midge-sub`. TLS with `mosquitto_pub`'s options: `--cafile`,
//! `--capath`, `--tls-use-os-certs` (any of them turns TLS on, as in Mosquitto), `--cert` and
//! `--key`, `--insecure` (the chain is still checked; only the host name is not),
//! `--tls-version` (the lowest version allowed, as in libmosquitto) and `--ciphers` (TLS 1.2
//! suites, OpenSSL's names).

use socket2::Socket;
use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore};

use super::ClientError;
use crate::tls::TlsVersion;

#[derive(Clone, Debug, Default)]
pub struct ClientTls {
    pub cafile: Option<PathBuf>,
    pub capath: Option<PathBuf>,
    pub os_certs: bool,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub insecure: bool,
    pub version: Option<TlsVersion>,
    /// `--ciphers`: an OpenSSL list of TLS 1.2 suites, as libmosquitto's `tls_ciphers`
    /// (TLS 1.3 keeps its suites).
    pub ciphers: Option<String>,
}

impl ClientTls {
    /// Whether TLS is on: a CA to check the broker against was given.
    pub fn enabled(&self) -> bool {
        self.cafile.is_some() || self.capath.is_some() || self.os_certs
    }

    /// The rustls configuration; errors are worded as `mosquitto_pub` words them: a file
    /// that is not there is a problem with the options, one that holds no usable
    /// certificate fails as the handshake would.
    pub fn config(&self) -> Result<Arc<ClientConfig>, ClientError> {
        for path in [&self.cafile, &self.cert, &self.key].into_iter().flatten() {
            if !path.exists() {
                return Err(ClientError::TlsOptions("File not found".into()));
            }
        }
        let problem = |what: String| ClientError::Tls(what);
        let mut roots = RootCertStore::empty();
        if let Some(cafile) = &self.cafile {
            for cert in read_certificates(cafile).map_err(problem)? {
                roots
                    .add(cert)
                    .map_err(|e| problem(format!("{}: {e}", cafile.display())))?;
            }
        }
        if let Some(dir) = &self.capath {
            let entries = std::fs::read_dir(dir)
                .map_err(|_| ClientError::TlsOptions("File not found".into()))?;
            for path in entries.filter_map(|e| e.ok().map(|e| e.path())) {
                // A capath also holds what is not a certificate (hash links, CRLs).
                for cert in read_certificates(&path).unwrap_or_default() {
                    let _ = roots.add(cert);
                }
            }
        }
        if self.os_certs {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                let _ = roots.add(cert);
            }
        }
        if roots.is_empty() {
            return Err(problem("no CA certificate found".into()));
        }
        // The lowest version, as libmosquitto's tls_version: tlsv1.2 allows 1.3 too.
        let versions: &[&'static rustls::SupportedProtocolVersion] = match self.version {
            Some(TlsVersion::V13) => &[&rustls::version::TLS13],
            Some(TlsVersion::V12) | None => &[&rustls::version::TLS13, &rustls::version::TLS12],
        };
        // A list OpenSSL would refuse fails as libmosquitto's connect does.
        let provider = crate::tls::ciphers::provider(self.ciphers.as_deref(), None)
            .map_err(|e| problem(format!("Unable to set TLS ciphers: {e}")))?;
        let provider = Arc::new(provider);
        let roots = Arc::new(roots);
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .map_err(|e| problem(e.to_string()))?;
        let builder = if self.insecure {
            let checked = WebPkiServerVerifier::builder_with_provider(roots, provider)
                .build()
                .map_err(|e| problem(e.to_string()))?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyName(checked)))
        } else {
            builder.with_root_certificates(roots)
        };
        let config = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                let chain = read_certificates(cert).map_err(problem)?;
                let key = PrivateKeyDer::from_pem_file(key)
                    .map_err(|_| problem(format!("cannot read the key in {}", key.display())))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| problem(e.to_string()))?
            }
            _ => builder.with_no_client_auth(),
        };
        Ok(Arc::new(config))
    }
}

fn read_certificates(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|_| format!("{} is not a PEM certificate file", path.display()))?;
    if certs.is_empty() {
        return Err(format!("no certificate in {}", path.display()));
    }
    Ok(certs)
}

/// `--insecure`: the broker's certificate must still chain to a trusted CA and be valid;
/// only its name is not compared with the host connected to.
#[derive(Debug)]
struct AnyName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        use rustls::CertificateError::{NotValidForName, NotValidForNameContext};
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                NotValidForName | NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// The connection to the broker: plain TCP, TLS over it, WebSockets over either.
pub enum Stream {
    /// A TCP or Unix socket.
    Plain(Socket),
    Tls(Box<rustls::StreamOwned<ClientConnection, Socket>>),
    Ws(Box<WsStream>),
}

/// MQTT bytes in binary WebSocket messages (`-L ws://`, `wss://`): written as one message
/// per write, read as the bytes of the messages in order.
pub struct WsStream {
    ws: tungstenite::WebSocket<Stream>,
    /// What is left of the last message read.
    pending: bytes::Bytes,
}

impl Stream {
    /// The WebSocket upgrade to `url` (path `/mqtt`, subprotocol `mqtt`) over `self`.
    pub fn websocket(self, url: &str) -> io::Result<Stream> {
        use tungstenite::client::IntoClientRequest;
        let mut request = url.into_client_request().map_err(io::Error::other)?;
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            "mqtt".parse().expect("a valid header value"),
        );
        let (ws, _) = tungstenite::client(request, self).map_err(|e| match e {
            tungstenite::HandshakeError::Failure(e) => io::Error::other(e),
            tungstenite::HandshakeError::Interrupted(_) => {
                io::Error::new(io::ErrorKind::TimedOut, "WebSocket upgrade timed out")
            }
        })?;
        Ok(Stream::Ws(Box::new(WsStream {
            ws,
            pending: bytes::Bytes::new(),
        })))
    }
}

impl Stream {
    /// Wraps `socket` in TLS for `host` and completes the handshake.
    pub fn tls(socket: Socket, config: Arc<ClientConfig>, host: &str) -> io::Result<Stream> {
        let name = ServerName::try_from(host.to_string())
            .map_err(|_| io::Error::other(format!("bad host name {host:?}")))?;
        let session = ClientConnection::new(config, name).map_err(io::Error::other)?;
        let mut stream = rustls::StreamOwned::new(session, socket);
        while stream.conn.is_handshaking() {
            stream.conn.complete_io(&mut stream.sock)?;
        }
        Ok(Stream::Tls(Box::new(stream)))
    }

    /// The socket under the layers.
    pub fn socket(&self) -> &Socket {
        match self {
            Stream::Plain(socket) => socket,
            Stream::Tls(tls) => &tls.sock,
            Stream::Ws(ws) => ws.ws.get_ref().socket(),
        }
    }

    /// Whether the broker is behind TLS or WebSockets (their errors mean it went away).
    pub fn layered(&self) -> bool {
        !matches!(self, Stream::Plain(_))
    }

    /// Ends the sending side: close_notify first on TLS.
    pub fn shutdown_write(&mut self) {
        match self {
            Stream::Tls(tls) => {
                tls.conn.send_close_notify();
                let _ = tls.flush();
            }
            Stream::Ws(ws) => {
                let _ = ws.ws.close(None);
                let _ = ws.ws.flush();
            }
            Stream::Plain(_) => {}
        }
        let _ = self.socket().shutdown(std::net::Shutdown::Write);
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(socket) => socket.read(buf),
            Stream::Tls(tls) => tls.read(buf),
            Stream::Ws(ws) => ws.read(buf),
        }
    }
}

impl Read for WsStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use tungstenite::{Error, Message};
        while self.pending.is_empty() {
            match self.ws.read() {
                Ok(Message::Binary(bytes)) => self.pending = bytes,
                Ok(Message::Close(_)) => return Ok(0),
                Ok(Message::Text(_)) => {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, "a text frame"))
                }
                // Pings: tungstenite queued the pong; it goes out now.
                Ok(_) => {
                    let _ = self.ws.flush();
                }
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

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(socket) => socket.write(buf),
            Stream::Tls(tls) => tls.write(buf),
            Stream::Ws(ws) => {
                let message = tungstenite::Message::Binary(bytes::Bytes::copy_from_slice(buf));
                ws.ws.send(message).map_err(io::Error::other)?;
                Ok(buf.len())
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(socket) => socket.flush(),
            Stream::Tls(tls) => tls.flush(),
            Stream::Ws(ws) => ws.ws.flush().map_err(io::Error::other),
        }
    }
}
