//! `ciphers` (TLS 1.2) and `ciphers_tls1.3`: OpenSSL cipher lists, mapped onto the suites
//! rustls offers. rustls offers only forward-secret AEAD suites, so a list may name them
//! (OpenSSL's names or IANA's), select them with the keywords that take every one of them
//! (`DEFAULT`, `HIGH`, `ALL`, ...), and exclude what rustls never offers (`!aNULL`, `!MD5`,
//! ...: already true); a suite or keyword that would choose anything else is an error
//! naming it, never ignored.

use rustls::crypto::ring::cipher_suite as suite;
use rustls::SupportedCipherSuite;

/// OpenSSL's name, IANA's name, the suite.
const TLS12: &[(&str, &str, SupportedCipherSuite)] = &[
    (
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
        suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    ),
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
        suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    ),
    (
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
        suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
    (
        "ECDHE-RSA-AES256-GCM-SHA384",
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
        suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    ),
    (
        "ECDHE-RSA-AES128-GCM-SHA256",
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
        suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    ),
    (
        "ECDHE-RSA-CHACHA20-POLY1305",
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
        suite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
];

/// TLS 1.3 suites have one name in both.
const TLS13: &[(&str, SupportedCipherSuite)] = &[
    ("TLS_AES_256_GCM_SHA384", suite::TLS13_AES_256_GCM_SHA384),
    ("TLS_AES_128_GCM_SHA256", suite::TLS13_AES_128_GCM_SHA256),
    (
        "TLS_CHACHA20_POLY1305_SHA256",
        suite::TLS13_CHACHA20_POLY1305_SHA256,
    ),
];

/// Keywords whose OpenSSL set includes every suite rustls offers.
const EVERYTHING: &[&str] = &[
    "DEFAULT", "ALL", "HIGH", "SECURE", "ECDHE", "EECDH", "kECDHE", "AEAD", "TLSv1.2",
];

/// Keywords that select part of them, by a piece of OpenSSL's name.
const SOME: &[(&str, &str)] = &[
    ("AESGCM", "-GCM-"),
    ("AES", "-AES"),
    ("AES128", "-AES128-"),
    ("AES256", "-AES256-"),
    ("CHACHA20", "-CHACHA20-"),
    ("ECDSA", "-ECDSA-"),
    ("aECDSA", "-ECDSA-"),
    ("aRSA", "-RSA-"),
    ("SHA256", "SHA256"),
    ("SHA384", "SHA384"),
];

/// Kinds of suite OpenSSL can exclude that rustls never offers: excluding them changes
/// nothing.
const NEVER_OFFERED: &[&str] = &[
    "aNULL", "eNULL", "NULL", "ADH", "AECDH", "LOW", "MEDIUM", "EXPORT", "EXP", "DES", "3DES",
    "RC4", "RC2", "MD5", "SHA1", "SHA", "IDEA", "SEED", "CAMELLIA", "ARIA", "PSK", "SRP", "DSS",
    "aDSS", "kRSA", "RSA", "DH", "DHE", "EDH", "kDHE", "CBC", "SSLv2", "SSLv3", "aECDH", "kECDH",
    "AESCCM", "AESCCM8", "CCM",
];

/// rustls's ring provider with the suites that an OpenSSL `ciphers` list (TLS 1.2) and a
/// `ciphers_tls1.3` list choose; a version whose list is not given keeps all its suites.
pub fn provider(
    tls12_list: Option<&str>,
    tls13_list: Option<&str>,
) -> Result<rustls::crypto::CryptoProvider, String> {
    let mut provider = rustls::crypto::ring::default_provider();
    let of = |version: &rustls::SupportedProtocolVersion| {
        (provider.cipher_suites.iter())
            .filter(|s| s.version() == version)
            .copied()
            .collect::<Vec<_>>()
    };
    let tls13 = match tls13_list {
        Some(list) => tls13(list)?,
        None => of(&rustls::version::TLS13),
    };
    let tls12 = match tls12_list {
        Some(list) => tls12(list)?,
        None => of(&rustls::version::TLS12),
    };
    provider.cipher_suites = tls13.into_iter().chain(tls12).collect();
    Ok(provider)
}

/// The TLS 1.2 suites an OpenSSL `ciphers` list selects, in the list's order.
pub fn tls12(list: &str) -> Result<Vec<SupportedCipherSuite>, String> {
    let mut chosen: Vec<SupportedCipherSuite> = Vec::new();
    for item in items(list) {
        if item.starts_with('@') || item.starts_with('+') {
            continue; // Ordering directives: rustls keeps the list's order.
        }
        if let Some(excluded) = item.strip_prefix(['!', '-']) {
            if NEVER_OFFERED.contains(&excluded) {
                continue;
            }
            let Some(set) = selected(excluded) else {
                return Err(format!(
                    "ciphers: excluding {excluded:?} is not understood by midge (name a suite, a kind such as AESGCM or CHACHA20, or a weak kind: aNULL, MD5, RC4, ...)"
                ));
            };
            chosen.retain(|c| !set.iter().any(|s| s.suite() == c.suite()));
            continue;
        }
        let Some(set) = selected(item) else {
            return Err(unknown("ciphers", item, TLS12.iter().map(|(o, _, _)| *o)));
        };
        for s in set {
            if !chosen.iter().any(|c| c.suite() == s.suite()) {
                chosen.push(s);
            }
        }
    }
    if chosen.is_empty() {
        return Err("ciphers: the list selects no suite midge offers".into());
    }
    Ok(chosen)
}

/// The suites a name or keyword stands for, if midge knows it.
fn selected(item: &str) -> Option<Vec<SupportedCipherSuite>> {
    if EVERYTHING.contains(&item) {
        return Some(TLS12.iter().map(|&(_, _, s)| s).collect());
    }
    if let Some((_, piece)) = SOME.iter().find(|(keyword, _)| *keyword == item) {
        // OpenSSL's names of the CHACHA20 suites end without their hash; IANA's have it.
        return Some(
            (TLS12.iter())
                .filter(|(name, iana, _)| name.contains(piece) || iana.ends_with(piece))
                .map(|&(_, _, s)| s)
                .collect(),
        );
    }
    (TLS12.iter())
        .find(|(name, iana, _)| *name == item || *iana == item)
        .map(|&(_, _, s)| vec![s])
}

/// The TLS 1.3 suites a `ciphers_tls1.3` list (colon-separated names) selects.
pub fn tls13(list: &str) -> Result<Vec<SupportedCipherSuite>, String> {
    let mut chosen = Vec::new();
    for item in items(list) {
        match TLS13.iter().find(|(name, _)| *name == item) {
            Some(&(_, s))
                if !chosen
                    .iter()
                    .any(|c: &SupportedCipherSuite| c.suite() == s.suite()) =>
            {
                chosen.push(s)
            }
            Some(_) => {}
            None => {
                return Err(unknown(
                    "ciphers_tls1.3",
                    item,
                    TLS13.iter().map(|(n, _)| *n),
                ))
            }
        }
    }
    if chosen.is_empty() {
        return Err("ciphers_tls1.3: the list selects no suite".into());
    }
    Ok(chosen)
}

fn items(list: &str) -> impl Iterator<Item = &str> {
    list.split([':', ',', ' ']).filter(|item| !item.is_empty())
}

fn unknown<'a>(option: &str, item: &str, offered: impl Iterator<Item = &'a str>) -> String {
    format!(
        "{option}: {item} is not offered by midge's TLS (rustls offers only forward-secret AEAD suites: {})",
        offered.collect::<Vec<_>>().join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(suites: &[SupportedCipherSuite]) -> Vec<String> {
        suites.iter().map(|s| format!("{:?}", s.suite())).collect()
    }

    #[test]
    fn openssl_lists_map_onto_rustls_suites() {
        // Mosquitto's documented example list: every suite rustls has.
        let all = tls12("DEFAULT:!aNULL:!eNULL:!LOW:!EXPORT:!SSLv2:@STRENGTH").unwrap();
        assert_eq!(all.len(), TLS12.len());
        let two =
            tls12("ECDHE-RSA-AES128-GCM-SHA256:TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384").unwrap();
        assert_eq!(
            names(&two),
            vec![
                "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
                "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384"
            ]
        );
        let without = tls12("HIGH:!ECDHE-RSA-CHACHA20-POLY1305").unwrap();
        assert_eq!(without.len(), TLS12.len() - 1);
        let e = tls12("ECDHE-RSA-AES256-SHA384").unwrap_err();
        assert!(e.contains("ECDHE-RSA-AES256-SHA384 is not offered"), "{e}");
        assert!(tls12("!aNULL").unwrap_err().contains("selects no suite"));
        assert!(tls12("EXPORT").is_err());
        assert_eq!(tls12("AESGCM").unwrap().len(), 4);
        assert_eq!(tls12("CHACHA20:ECDSA").unwrap().len(), 4);
        assert_eq!(tls13("TLS_CHACHA20_POLY1305_SHA256").unwrap().len(), 1);
        assert!(tls13("TLS_AES_128_CCM_SHA256")
            .unwrap_err()
            .contains("not offered"));
    }
}
