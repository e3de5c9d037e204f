//! The user name a client certificate gives (`use_identity_as_username`: its subject's
//! Common Name; `use_subject_as_username`: its whole subject as OpenSSL prints it in RFC 2253
//! form, which is what Mosquitto compares with its ACL and password files).

use rustls::pki_types::CertificateDer;
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::x509::{AttributeTypeAndValue, X509Name};

/// `chain` (a server's certificate, maybe with some of its issuers) followed by the issuers
/// it lacks found in `cas`, up to but not including a self-signed root: the chain OpenSSL
/// sends when certfile holds the leaf alone and cafile the intermediates.
pub fn complete_chain(
    mut chain: Vec<CertificateDer<'static>>,
    cas: &[CertificateDer<'static>],
) -> Vec<CertificateDer<'static>> {
    // (subject, issuer) of each CA, as raw DER names.
    let names = |der: &[u8]| {
        X509Certificate::from_der(der)
            .ok()
            .map(|(_, c)| (c.subject().as_raw().to_vec(), c.issuer().as_raw().to_vec()))
    };
    let ca_names: Vec<_> = cas.iter().map(|ca| names(ca)).collect();
    // A chain is short; the bound only guards against a loop in odd CA files.
    for _ in 0..8 {
        let Some((subject, issuer)) = chain.last().and_then(|last| names(last)) else {
            break;
        };
        if subject == issuer {
            break; // Self-signed: the root, which the client has.
        }
        let next = (cas.iter().zip(&ca_names)).find(|(ca, names)| {
            names.as_ref().is_some_and(|(s, i)| *s == issuer && s != i) && !chain.contains(ca)
        });
        match next {
            Some((ca, _)) => chain.push(ca.clone()),
            None => break,
        }
    }
    chain
}

/// The subject's (first) Common Name.
pub fn common_name(certificate_der: &[u8]) -> Option<String> {
    let (_, certificate) = X509Certificate::from_der(certificate_der).ok()?;
    let name = certificate.subject().iter_common_name().next()?;
    name.as_str().ok().map(str::to_string)
}

/// The subject as RFC 2253 writes it: the last RDN first, `,` between them, `+` within one.
pub fn subject(certificate_der: &[u8]) -> Option<String> {
    let (_, certificate) = X509Certificate::from_der(certificate_der).ok()?;
    Some(rfc2253(certificate.subject()))
}

fn rfc2253(name: &X509Name<'_>) -> String {
    let rdns: Vec<String> = name
        .iter_rdn()
        .map(|rdn| rdn.iter().map(attribute).collect::<Vec<_>>().join("+"))
        .collect();
    rdns.into_iter().rev().collect::<Vec<_>>().join(",")
}

fn attribute(attr: &AttributeTypeAndValue<'_>) -> String {
    let oid = attr.attr_type();
    let registry = x509_parser::objects::oid_registry();
    // OpenSSL's short names where it has them (CN, O, OU, C, ST, L, DC, emailAddress...).
    let kind = match oid.to_id_string().as_str() {
        "1.2.840.113549.1.9.1" => "emailAddress".to_string(),
        _ => x509_parser::objects::oid2abbrev(oid, registry)
            .map(str::to_string)
            .unwrap_or_else(|_| oid.to_id_string()),
    };
    match attr.as_str() {
        Ok(value) => format!("{kind}={}", escape(value)),
        // Not a string: RFC 2253's `#` and the DER bytes in hex.
        Err(_) => {
            let hex: String = attr
                .attr_value()
                .as_bytes()
                .iter()
                .map(|b| format!("{b:02X}"))
                .collect();
            format!("{kind}=#{hex}")
        }
    }
}

/// RFC 2253 §2.4: `,+"\<>;` escaped anywhere, `#` and space at the start, space at the end.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || (i == 0 && (c == '#' || c == ' '))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn rfc2253_escapes() {
        assert_eq!(escape("plain"), "plain");
        assert_eq!(escape("a,b+c"), "a\\,b\\+c");
        assert_eq!(escape("#x "), "\\#x\\ ");
    }
}
