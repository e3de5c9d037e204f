//! TLS listeners, on rustls: sans-I/O, so a connection's records are opened and sealed on its
//! shard, between the backend (which moves ciphertext, epoll or io_uring alike) and the codec
//! (`link.rs`). No OpenSSL: Mosquitto's option names, rustls underneath.
//!
//! A listener is a TLS listener when it has `certfile` and `keyfile`. `require_certificate`
//! asks for a client certificate signed by `cafile`/`capath` (checked against `crlfile`);
//! without it no client certificate is asked for, as in Mosquitto.

pub mod ciphers;
pub mod identity;
pub mod link;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

/// `tls_version`: the lowest version a listener accepts (as in Mosquitto 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsVersion {
    V12,
    V13,
}

impl TlsVersion {
    /// Mosquitto's names; tlsv1.1 and older are refused with the reason.
    pub fn parse(name: &str) -> Result<TlsVersion, String> {
        match name {
            "tlsv1.3" => Ok(TlsVersion::V13),
            "tlsv1.2" => Ok(TlsVersion::V12),
            "tlsv1.1" | "tlsv1" | "tlsv1.0" => Err(format!(
                "tls_version {name} is not offered by midge: TLS before 1.2 is insecure (use tlsv1.2 or tlsv1.3)"
            )),
            other => Err(format!(
                "tls_version: {other:?} is not one of tlsv1.2, tlsv1.3"
            )),
        }
    }
}

/// A listener's TLS options, as read from the configuration.
#[derive(Clone, Debug, Default)]
pub struct TlsSettings {
    pub cafile: Option<PathBuf>,
    pub capath: Option<PathBuf>,
    pub certfile: Option<PathBuf>,
    pub keyfile: Option<PathBuf>,
    pub crlfile: Option<PathBuf>,
    pub require_certificate: bool,
    /// The client certificate's Common Name is the user name (no password check).
    pub use_identity_as_username: bool,
    /// The client certificate's whole subject (RFC 2253) is the user name.
    pub use_subject_as_username: bool,
    pub tls_version: Option<TlsVersion>,
    /// `ciphers` (TLS 1.2) and `ciphers_tls1.3`: OpenSSL cipher lists (`ciphers.rs`).
    pub ciphers: Option<String>,
    pub ciphers_tls13: Option<String>,
    /// Where the last of these options was read (file, line), for errors found later.
    pub origin: Option<(PathBuf, usize)>,
}

/// A TLS listener: its settings and the rustls configuration made from them.
#[derive(Clone, Debug)]
pub struct TlsListener {
    pub settings: TlsSettings,
    pub server: Arc<ServerConfig>,
}

impl TlsSettings {
    /// Whether any TLS option was given (then `certfile` and `keyfile` must be).
    pub fn any_given(&self) -> bool {
        self.cafile.is_some()
            || self.capath.is_some()
            || self.certfile.is_some()
            || self.keyfile.is_some()
            || self.crlfile.is_some()
            || self.require_certificate
            || self.use_identity_as_username
            || self.use_subject_as_username
            || self.tls_version.is_some()
            || self.ciphers.is_some()
            || self.ciphers_tls13.is_some()
    }

    /// Reads the certificates and key and makes the listener's rustls configuration.
    pub fn load(&self) -> Result<TlsListener, String> {
        let (Some(certfile), Some(keyfile)) = (&self.certfile, &self.keyfile) else {
            return Err("a TLS listener needs both certfile and keyfile".into());
        };
        let chain = certificates(certfile).map_err(|e| format!("certfile {e}"))?;
        // As OpenSSL does for Mosquitto: intermediates missing from certfile are sent from
        // cafile/capath, so a leaf-only certfile signed by an intermediate still verifies.
        let chain = identity::complete_chain(chain, &self.ca_certificates()?);
        let key = PrivateKeyDer::from_pem_file(keyfile)
            .map_err(|e| format!("keyfile {}: {}", keyfile.display(), pem_error(e)))?;
        let versions: &[&'static rustls::SupportedProtocolVersion] = match self.tls_version {
            Some(TlsVersion::V13) => &[&rustls::version::TLS13],
            _ => &[&rustls::version::TLS13, &rustls::version::TLS12],
        };
        let provider = Arc::new(self.provider()?);
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .map_err(|e| format!("TLS versions: {e}"))?;
        let builder = if self.require_certificate {
            let roots = Arc::new(self.roots()?);
            let mut verifier = WebPkiClientVerifier::builder_with_provider(roots, provider);
            if let Some(crlfile) = &self.crlfile {
                verifier = verifier.with_crls(revocation_lists(crlfile)?);
            }
            let verifier = verifier
                .build()
                .map_err(|e| format!("client certificate verification: {e}"))?;
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let server = builder.with_single_cert(chain, key).map_err(|e| {
            format!(
                "certfile {} with keyfile {}: {e}",
                certfile.display(),
                keyfile.display()
            )
        })?;
        Ok(TlsListener {
            settings: self.clone(),
            server: Arc::new(server),
        })
    }

    /// rustls's ring provider with the suites `ciphers` and `ciphers_tls1.3` choose.
    fn provider(&self) -> Result<rustls::crypto::CryptoProvider, String> {
        ciphers::provider(self.ciphers.as_deref(), self.ciphers_tls13.as_deref())
    }

    /// The certificates of `cafile` and of every certificate file in `capath`.
    fn ca_certificates(&self) -> Result<Vec<CertificateDer<'static>>, String> {
        let mut files: Vec<PathBuf> = self.cafile.iter().cloned().collect();
        if let Some(dir) = &self.capath {
            let entries =
                std::fs::read_dir(dir).map_err(|e| format!("capath {}: {e}", dir.display()))?;
            let mut found: Vec<PathBuf> = entries
                .filter_map(|entry| entry.ok().map(|e| e.path()))
                .filter(|path| path.is_file())
                .collect();
            found.sort();
            files.extend(found);
        }
        let mut all = Vec::new();
        for file in &files {
            // capath holds other files too (OpenSSL's hash links point at the same ones):
            // only files that fail in cafile are errors.
            match certificates(file).map_err(|e| format!("cafile {e}")) {
                Ok(certs) => all.extend(certs),
                Err(e) if Some(file) == self.cafile.as_ref() => return Err(e),
                Err(_) => {}
            }
        }
        Ok(all)
    }

    /// The CAs client certificates must chain to: `cafile` and `capath`.
    fn roots(&self) -> Result<RootCertStore, String> {
        let mut roots = RootCertStore::empty();
        for cert in self.ca_certificates()? {
            roots
                .add(cert)
                .map_err(|e| format!("a CA certificate of cafile/capath: {e}"))?;
        }
        if roots.is_empty() {
            return Err(
                "require_certificate true needs cafile or capath with at least one CA certificate"
                    .into(),
            );
        }
        Ok(roots)
    }
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {}", path.display(), pem_error(e)))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate in the file", path.display()));
    }
    Ok(certs)
}

fn revocation_lists(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, String> {
    let crls = CertificateRevocationListDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("crlfile {}: {}", path.display(), pem_error(e)))?;
    if crls.is_empty() {
        return Err(format!(
            "crlfile {}: no revocation list in the file",
            path.display()
        ));
    }
    Ok(crls)
}

fn pem_error(e: rustls::pki_types::pem::Error) -> String {
    match e {
        rustls::pki_types::pem::Error::Io(e) => format!("cannot read the file: {e}"),
        rustls::pki_types::pem::Error::NoItemsFound => {
            "nothing of the right kind in the file (PEM expected)".into()
        }
        other => format!("not a valid PEM file: {other:?}"),
    }
}
