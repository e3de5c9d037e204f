//! `-F` output formats of `midge-sub` (mosquitto_sub's): `%` fields of the message, `@`
//! time fields, backslash escapes, and `%j`/`%J` JSON.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::codec::Publish;

/// A time as `strftime` in local time.
fn local_time(format: &str, secs: u64) -> String {
    crate::os::strftime_local(format, secs).unwrap_or_default()
}

/// Validates a `-F` format; an unknown specifier is an error, as with mosquitto_sub.
pub fn check_format(format: &str) -> Result<(), String> {
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        match c {
            '%' => {
                Spec::read(&mut chars)?;
            }
            '@' | '\\' if chars.next().is_none() => {
                return Err("Error: Incomplete format specifier.".into());
            }
            _ => {}
        }
    }
    Ok(())
}

fn hex(bytes: &[u8], upper: bool) -> String {
    bytes
        .iter()
        .map(|b| {
            if upper {
                format!("{b:02X}")
            } else {
                format!("{b:02x}")
            }
        })
        .collect()
}

fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `%j` / `%J`: the message as JSON (`%J` embeds a JSON payload as JSON).
fn json(publish: &Publish, secs: u64, micros: u32, embed: bool) -> Result<String, String> {
    let tst = format!(
        "{}.{micros:06}Z{}",
        local_time("%Y-%m-%dT%H:%M:%S", secs),
        local_time("%z", secs)
    );
    let payload = if embed {
        let text = std::str::from_utf8(&publish.payload)
            .ok()
            .filter(|t| json_valid(t));
        text.map(str::to_string).ok_or_else(|| {
            format!(
                "Error: Message payload is not valid JSON on topic {}.",
                publish.topic
            )
        })?
    } else {
        json_string(&String::from_utf8_lossy(&publish.payload))
    };
    Ok(format!(
        "{{\"tst\":{},\"topic\":{},\"qos\":{},\"retain\":{},\"payloadlen\":{},\"payload\":{payload}}}",
        json_string(&tst),
        json_string(&publish.topic),
        publish.qos as u8,
        u8::from(publish.retain),
        publish.payload.len()
    ))
}

/// A `%[-][0][width][.precision]X` field specifier, as mosquitto_sub reads it: `-` aligns
/// left, `0` pads numbers with zeros, the width pads to at least that many bytes; the
/// precision is read and, as in mosquitto_sub for these fields, has no effect.
struct Spec {
    kind: char,
    left: bool,
    zero: bool,
    width: usize,
}

const KINDS: &str = "%ACDEFIjJlmpPqrRStUxX";

impl Spec {
    fn read(chars: &mut std::str::Chars) -> Result<Spec, String> {
        let mut spec = Spec {
            kind: '%',
            left: false,
            zero: false,
            width: 0,
        };
        let mut precision = false;
        loop {
            let c = chars
                .next()
                .ok_or_else(|| "Error: Incomplete format specifier.".to_string())?;
            match c {
                '-' if spec.width == 0 && !precision => spec.left = true,
                '0' if spec.width == 0 && !precision => spec.zero = true,
                '.' if !precision => precision = true,
                '0'..='9' if precision => {}
                '0'..='9' => {
                    spec.width = spec.width.saturating_mul(10) + c as usize - '0' as usize;
                    if spec.width > 65_535 {
                        return Err("Error: Format field width too large.".into());
                    }
                }
                c if KINDS.contains(c) => {
                    spec.kind = c;
                    return Ok(spec);
                }
                other => return Err(format!("Error: Invalid format specifier '{other}'.")),
            }
        }
    }

    /// Writes `value` padded to the width.
    fn pad(&self, value: &[u8], out: &mut Vec<u8>) {
        let fill = self.width.saturating_sub(value.len());
        let zero = self.zero && !self.left && value.iter().all(u8::is_ascii_digit);
        if !self.left {
            out.extend(std::iter::repeat_n(if zero { b'0' } else { b' ' }, fill));
        }
        out.extend_from_slice(value);
        if self.left {
            out.extend(std::iter::repeat_n(b' ', fill));
        }
    }
}

/// One `%` field of a message, unpadded.
fn field(kind: char, publish: &Publish, now: std::time::Duration) -> Result<Vec<u8>, String> {
    let secs = now.as_secs();
    let p = &publish.properties;
    let mut out: Vec<u8> = Vec::new();
    let text = |out: &mut Vec<u8>, s: &str| out.extend_from_slice(s.as_bytes());
    match kind {
        '%' => out.push(b'%'),
        'A' => text(
            &mut out,
            &p.topic_alias.map(|a| a.to_string()).unwrap_or_default(),
        ),
        'C' => text(&mut out, p.content_type.as_deref().unwrap_or("")),
        'D' => out.extend_from_slice(p.correlation_data.as_deref().unwrap_or(&[])),
        'E' => text(
            &mut out,
            &p.message_expiry_interval
                .map(|e| e.to_string())
                .unwrap_or_default(),
        ),
        'F' => text(
            &mut out,
            &p.payload_format_indicator
                .map(|e| e.to_string())
                .unwrap_or_default(),
        ),
        'I' => text(&mut out, &local_time("%Y-%m-%dT%H:%M:%S%z", secs)),
        'j' => text(&mut out, &json(publish, secs, now.subsec_micros(), false)?),
        'J' => text(&mut out, &json(publish, secs, now.subsec_micros(), true)?),
        'l' => text(&mut out, &publish.payload.len().to_string()),
        'm' => text(&mut out, &publish.packet_id.to_string()),
        'p' => out.extend_from_slice(&publish.payload),
        'P' => {
            let pairs: Vec<String> = p
                .user_properties
                .iter()
                .map(|(k, v)| format!("{k}:{v}"))
                .collect();
            text(&mut out, &pairs.join(" "));
        }
        'q' => text(&mut out, &(publish.qos as u8).to_string()),
        'r' => text(&mut out, if publish.retain { "1" } else { "0" }),
        'R' => text(&mut out, p.response_topic.as_deref().unwrap_or("")),
        'S' => {
            let ids: Vec<String> = p
                .subscription_identifiers
                .iter()
                .map(u32::to_string)
                .collect();
            text(&mut out, &ids.join(" "));
        }
        't' => text(&mut out, &publish.topic),
        'U' => text(&mut out, &format!("{secs}.{:09}", now.subsec_nanos())),
        'x' => text(&mut out, &hex(&publish.payload, false)),
        'X' => text(&mut out, &hex(&publish.payload, true)),
        other => return Err(format!("Error: Invalid format specifier '{other}'.")),
    }
    Ok(out)
}

/// Formats a received message by a `-F` format (checked by `check_format`).
pub fn format_message(format: &str, publish: &Publish) -> Result<Vec<u8>, String> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    let mut out: Vec<u8> = Vec::new();
    let mut chars = format.chars();
    let text = |out: &mut Vec<u8>, s: &str| out.extend_from_slice(s.as_bytes());
    while let Some(c) = chars.next() {
        match c {
            '%' => {
                let spec = Spec::read(&mut chars)?;
                let value = field(spec.kind, publish, now)?;
                spec.pad(&value, &mut out);
            }
            '@' => match chars.next() {
                Some('@') => out.push(b'@'),
                Some(spec) => text(&mut out, &local_time(&format!("%{spec}"), secs)),
                None => {}
            },
            '\\' => match chars.next() {
                Some('\\') => out.push(b'\\'),
                Some('0') => out.push(0),
                Some('a') => out.push(0x07),
                Some('e') => out.push(0x1b),
                Some('n') => out.push(b'\n'),
                Some('r') => out.push(b'\r'),
                Some('t') => out.push(b'\t'),
                Some('v') => out.push(0x0b),
                Some(other) => {
                    out.push(b'\\');
                    text(&mut out, other.encode_utf8(&mut [0; 4]));
                }
                None => {}
            },
            c => text(&mut out, c.encode_utf8(&mut [0; 4])),
        }
    }
    Ok(out)
}

/// Whether `text` is one JSON value (RFC 8259), for `%J`.
pub fn json_valid(text: &str) -> bool {
    fn ws(b: &[u8], mut i: usize) -> usize {
        while i < b.len() && matches!(b[i], b' ' | b'\t' | b'\n' | b'\r') {
            i += 1;
        }
        i
    }
    // Returns the index after the value, or None. `depth` bounds nesting.
    fn value(b: &[u8], i: usize, depth: usize) -> Option<usize> {
        if depth > 512 {
            return None;
        }
        let i = ws(b, i);
        match *b.get(i)? {
            b'{' => {
                let mut i = ws(b, i + 1);
                if b.get(i) == Some(&b'}') {
                    return Some(i + 1);
                }
                loop {
                    i = string(b, ws(b, i))?;
                    i = ws(b, i);
                    if b.get(i) != Some(&b':') {
                        return None;
                    }
                    i = ws(b, value(b, i + 1, depth + 1)?);
                    match b.get(i)? {
                        b',' => i += 1,
                        b'}' => return Some(i + 1),
                        _ => return None,
                    }
                }
            }
            b'[' => {
                let mut i = ws(b, i + 1);
                if b.get(i) == Some(&b']') {
                    return Some(i + 1);
                }
                loop {
                    i = ws(b, value(b, i, depth + 1)?);
                    match b.get(i)? {
                        b',' => i += 1,
                        b']' => return Some(i + 1),
                        _ => return None,
                    }
                }
            }
            b'"' => string(b, i),
            b't' => b[i..].starts_with(b"true").then_some(i + 4),
            b'f' => b[i..].starts_with(b"false").then_some(i + 5),
            b'n' => b[i..].starts_with(b"null").then_some(i + 4),
            _ => number(b, i),
        }
    }
    fn string(b: &[u8], i: usize) -> Option<usize> {
        if b.get(i) != Some(&b'"') {
            return None;
        }
        let mut i = i + 1;
        loop {
            match *b.get(i)? {
                b'"' => return Some(i + 1),
                b'\\' => match *b.get(i + 1)? {
                    b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => i += 2,
                    b'u' if b.get(i + 2..i + 6)?.iter().all(u8::is_ascii_hexdigit) => i += 6,
                    _ => return None,
                },
                c if c < 0x20 => return None,
                _ => i += 1,
            }
        }
    }
    fn number(b: &[u8], mut i: usize) -> Option<usize> {
        let digits = |b: &[u8], mut i: usize| {
            let start = i;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            (i > start).then_some(i)
        };
        if b.get(i) == Some(&b'-') {
            i += 1;
        }
        if b.get(i) == Some(&b'0') {
            i += 1;
        } else {
            i = digits(b, i)?;
        }
        if b.get(i) == Some(&b'.') {
            i = digits(b, i + 1)?;
        }
        if matches!(b.get(i), Some(b'e' | b'E')) {
            i += 1;
            if matches!(b.get(i), Some(b'+' | b'-')) {
                i += 1;
            }
            i = digits(b, i)?;
        }
        Some(i)
    }
    let b = text.as_bytes();
    value(b, 0, 0).is_some_and(|end| ws(b, end) == b.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{MqttStr, Properties, QoS};
    use bytes::Bytes;

    fn message(payload: &'static [u8]) -> Publish {
        Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: true,
            topic: MqttStr::from_static("a/b"),
            packet_id: 7,
            properties: Properties::default(),
            payload: Bytes::from_static(payload),
        }
    }

    #[test]
    fn formats() {
        let m = message(b"hi\"");
        let out = format_message("%t %p %l %m %q %r %x %X %%\\t@@", &m).unwrap();
        assert_eq!(out, b"a/b hi\" 3 7 1 1 686922 686922 %\t@");
        let json = String::from_utf8(format_message("%j", &m).unwrap()).unwrap();
        assert!(json.starts_with("{\"tst\":\""), "{json}");
        assert!(
            json.ends_with(
                "\"topic\":\"a/b\",\"qos\":1,\"retain\":1,\"payloadlen\":3,\"payload\":\"hi\\\"\"}"
            ),
            "{json}"
        );
        assert!(format_message("%J", &m).is_err());
        let j = String::from_utf8(format_message("%J", &message(b"{\"a\":[1,2.5e3]}")).unwrap())
            .unwrap();
        assert!(j.ends_with("\"payload\":{\"a\":[1,2.5e3]}}"), "{j}");
        assert_eq!(
            check_format("%c").unwrap_err(),
            "Error: Invalid format specifier 'c'."
        );
        assert!(check_format("%t %I %U").is_ok());
        // Width, alignment and zero padding, as mosquitto_sub 2.0 prints them.
        let out = format_message("[%10t][%-10t][%.3p][%08l][%5p]", &m).unwrap();
        assert_eq!(out, b"[       a/b][a/b       ][hi\"][00000003][  hi\"]");
        assert!(check_format("%-08.2t").is_ok());
        assert!(check_format("%5").is_err());
        assert!(check_format("%9999999t").is_err());
    }

    #[test]
    fn json_validation() {
        for ok in [
            "1",
            "-0.5e+2",
            "\"x\\u00e9\"",
            "[]",
            "{}",
            " {\"a\": [true, false, null]} ",
        ] {
            assert!(json_valid(ok), "{ok}");
        }
        for bad in [
            "", "01", "[1,]", "{\"a\"}", "tru", "\"\n\"", "1 2", "[[[[", "{'a':1}",
        ] {
            assert!(!json_valid(bad), "{bad}");
        }
    }
}
