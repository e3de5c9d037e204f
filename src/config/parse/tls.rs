//! The TLS options of a listener (`tls/`): Mosquitto's, with those midge cannot honour
//! refused with the reason (never ignored).

use super::table::{known, Known, Read};
use super::Line;
use crate::config::ConfigError;

pub(super) const OPTIONS: &[Known] = &[
    known(
        "cafile",
        "the CA certificates a client's certificate is checked against",
        Read::Tls(|t, line| {
            t.cafile = Some(line.path()?);
            Ok(())
        }),
    ),
    known(
        "capath",
        "a directory of CA certificates",
        Read::Tls(|t, line| {
            t.capath = Some(line.path()?);
            Ok(())
        }),
    ),
    known(
        "certfile",
        "the listener's certificate chain: with keyfile, the listener speaks TLS",
        Read::Tls(|t, line| {
            t.certfile = Some(line.path()?);
            Ok(())
        }),
    ),
    known(
        "keyfile",
        "the listener's private key",
        Read::Tls(|t, line| {
            t.keyfile = Some(line.path()?);
            Ok(())
        }),
    ),
    known(
        "crlfile",
        "revoked client certificates",
        Read::Tls(|t, line| {
            t.crlfile = Some(line.path()?);
            Ok(())
        }),
    ),
    known(
        "require_certificate",
        "clients must present a certificate",
        Read::Tls(|t, line| {
            t.require_certificate = line.boolean()?;
            Ok(())
        }),
    ),
    known(
        "use_identity_as_username",
        "a client certificate's CN is its user name",
        Read::Tls(|t, line| {
            t.use_identity_as_username = line.boolean()?;
            Ok(())
        }),
    ),
    known(
        "use_subject_as_username",
        "a client certificate's subject is its user name",
        Read::Tls(|t, line| {
            t.use_subject_as_username = line.boolean()?;
            Ok(())
        }),
    ),
    known(
        "ciphers",
        "TLS 1.2 cipher suites",
        Read::Tls(|t, line| {
            t.ciphers = Some(line.one("cipher list")?.to_string());
            Ok(())
        }),
    ),
    known(
        "ciphers_tls1.3",
        "TLS 1.3 cipher suites",
        Read::Tls(|t, line| {
            t.ciphers_tls13 = Some(line.one("cipher list")?.to_string());
            Ok(())
        }),
    ),
    known(
        "tls_version",
        "the lowest TLS version a listener speaks",
        Read::Tls(|t, line| {
            let version = crate::tls::TlsVersion::parse(line.one("version")?);
            t.tls_version = Some(version.map_err(|e| line.err(e))?);
            Ok(())
        }),
    ),
    known(
        "psk_hint",
        "refused: TLS-PSK (rustls has no PSK)",
        Read::Reader(|_, line| Err(no_psk(line))),
    ),
    known(
        "psk_file",
        "refused: TLS-PSK (rustls has no PSK)",
        Read::Reader(|_, line| Err(no_psk(line))),
    ),
    known(
        "tls_engine",
        "refused: OpenSSL engines",
        Read::Reader(|_, line| Err(not_yet(line))),
    ),
    known(
        "tls_keyform",
        "refused: OpenSSL engines",
        Read::Reader(|_, line| Err(not_yet(line))),
    ),
    known(
        "tls_engine_kpass_sha1",
        "refused: OpenSSL engines",
        Read::Reader(|_, line| Err(not_yet(line))),
    ),
    known(
        "ocsp_stapling",
        "refused: OCSP stapling",
        Read::Reader(|_, line| Err(not_yet(line))),
    ),
    known(
        "dhparamfile",
        "not used: midge's TLS has no DHE suites (a warning)",
        Read::Reader(|_, line| {
            line.warn(
                "dhparamfile is not used: midge's TLS has no DHE suites (ECDHE only); ignored.",
            );
            Ok(())
        }),
    ),
];

fn no_psk(line: &Line) -> ConfigError {
    line.err(format!(
        "{}: TLS-PSK is not available in midge (its TLS library, rustls, has no PSK); use certificates",
        line.option
    ))
}

fn not_yet(line: &Line) -> ConfigError {
    line.err(format!(
        "{} is not supported by midge yet; remove it to use midge's TLS defaults (TLS 1.2 and 1.3, forward-secret AEAD suites only)",
        line.option
    ))
}
