//! The TLS options of a listener (`tls/`): Mosquitto's, with those midge cannot honour
//! refused with the reason (never ignored).

use super::{Line, Reader};
use crate::config::ConfigError;

impl Reader {
    /// A TLS option, for the listener above it.
    pub(super) fn tls_option(&mut self, line: &Line) -> Result<(), ConfigError> {
        match line.option {
            "psk_hint" | "psk_file" => {
                return Err(line.err(format!(
                    "{}: TLS-PSK is not available in midge (its TLS library, rustls, has no PSK); use certificates",
                    line.option
                )))
            }
            "tls_engine" | "tls_keyform" | "tls_engine_kpass_sha1" | "ocsp_stapling" => {
                return Err(line.err(format!(
                    "{} is not supported by midge yet; remove it to use midge's TLS defaults (TLS 1.2 and 1.3, forward-secret AEAD suites only)",
                    line.option
                )))
            }
            "dhparamfile" => {
                line.warn(
                    "dhparamfile is not used: midge's TLS has no DHE suites (ECDHE only); ignored.",
                );
                return Ok(());
            }
            _ => {}
        }
        let tls = &mut self.listener().tls_settings;
        match line.option {
            "cafile" => tls.cafile = Some(line.path()?),
            "capath" => tls.capath = Some(line.path()?),
            "certfile" => tls.certfile = Some(line.path()?),
            "keyfile" => tls.keyfile = Some(line.path()?),
            "crlfile" => tls.crlfile = Some(line.path()?),
            "require_certificate" => tls.require_certificate = line.boolean()?,
            "use_identity_as_username" => tls.use_identity_as_username = line.boolean()?,
            "use_subject_as_username" => tls.use_subject_as_username = line.boolean()?,
            "ciphers" => tls.ciphers = Some(line.one("cipher list")?.to_string()),
            "ciphers_tls1.3" => tls.ciphers_tls13 = Some(line.one("cipher list")?.to_string()),
            _ => {
                let version = crate::tls::TlsVersion::parse(line.one("version")?);
                tls.tls_version = Some(version.map_err(|e| line.err(e))?);
            }
        }
        tls.origin = Some((line.file.to_path_buf(), line.number));
        Ok(())
    }
}
