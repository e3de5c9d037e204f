//! TLS for loadgen's connections (`--tls`, with `--cafile` or `--insecure`), so brokers can
//! be measured over TLS: rustls driven by hand on the non-blocking sockets of the load
//! threads, and as a blocking stream for conn-storm (where the handshake is part of each
//! connection's CONNACK latency).

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

    pub fn non_blocking(&self, tcp: TcpStream) -> io::Result<Transport> {
        Ok(Transport::Tls(tcp, Box::new(self.session()?)))
    }
}

/// A load thread's connection: plaintext in and out, whatever is under it.
pub enum Transport {
    Plain(TcpStream),
    Tls(TcpStream, Box<ClientConnection>),
}

impl Transport {
    pub fn socket(&mut self) -> &mut TcpStream {
        match self {
            Transport::Plain(tcp) | Transport::Tls(tcp, _) => tcp,
        }
    }

    /// Appends what can be read now to `rbuf`; `Ok(true)` once the broker closed.
    pub fn read_into(&mut self, rbuf: &mut Vec<u8>) -> io::Result<bool> {
        let mut chunk = [0u8; 64 * 1024];
        match self {
            Transport::Plain(tcp) => loop {
                match tcp.read(&mut chunk) {
                    Ok(0) => return Ok(true),
                    Ok(n) => rbuf.extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            },
            Transport::Tls(tcp, session) => {
                let closed = loop {
                    match session.read_tls(tcp) {
                        Ok(0) => break true,
                        Ok(_) => {
                            let state = session.process_new_packets().map_err(io::Error::other)?;
                            let n = state.plaintext_bytes_to_read();
                            let start = rbuf.len();
                            rbuf.resize(start + n, 0);
                            session.reader().read_exact(&mut rbuf[start..])?;
                            if state.peer_has_closed() {
                                break true;
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break false,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                };
                // The handshake answers what it read.
                self.push()?;
                Ok(closed)
            }
        }
    }

    /// Takes some of `data`; `WouldBlock` when nothing could be taken.
    pub fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(tcp) => tcp.write(data),
            Transport::Tls(_, _) => {
                self.push()?;
                let Transport::Tls(_, session) = self else {
                    unreachable!("matched above")
                };
                let taken = session.writer().write(data)?;
                self.push()?;
                if taken == 0 {
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                Ok(taken)
            }
        }
    }

    /// Writes the records rustls holds, as far as the socket takes them.
    pub fn push(&mut self) -> io::Result<()> {
        let Transport::Tls(tcp, session) = self else {
            return Ok(());
        };
        while session.wants_write() {
            match session.write_tls(tcp) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                // Not connected yet: the write readiness event will come.
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// conn-storm's connections.
pub enum BlockingStream {
    Plain(StdTcpStream),
    Tls(Box<rustls::StreamOwned<ClientConnection, StdTcpStream>>),
}

impl BlockingStream {
    pub fn tcp(&self) -> &StdTcpStream {
        match self {
            BlockingStream::Plain(tcp) => tcp,
            BlockingStream::Tls(tls) => &tls.sock,
        }
    }
}

impl Read for BlockingStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            BlockingStream::Plain(tcp) => tcp.read(buf),
            BlockingStream::Tls(tls) => tls.read(buf),
        }
    }
}

impl Write for BlockingStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            BlockingStream::Plain(tcp) => tcp.write(buf),
            BlockingStream::Tls(tls) => tls.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            BlockingStream::Plain(tcp) => tcp.flush(),
            BlockingStream::Tls(tls) => tls.flush(),
        }
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
