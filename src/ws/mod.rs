//! WebSocket listeners (`protocol websockets`): MQTT in binary WebSocket messages, for
//! browsers. The HTTP upgrade is parsed with `httparse` within `websockets_headers_size`
//! bytes and answered with tungstenite's accept key; after it, frames are read and written
//! here (`frames.rs`: a binary frame's payload goes to the connection's input as it
//! arrives, unmasked, never gathered whole), so like TLS the layer sits per connection on
//! the shard between the backend and the codec, and under TLS for `wss://`.
//!
//! MQTT packets may be split across messages and messages may hold several packets: the
//! bytes go to the connection's input as one stream (MQTT 5.0 §6.0, 3.1.1 §6).

mod frames;

use bytes::{Bytes, BytesMut};

use frames::FrameReader;

/// Subprotocols a client may ask for, in the order midge prefers them.
const SUBPROTOCOLS: &[&str] = &["mqtt", "mqttv3.1"];

enum State {
    /// The HTTP upgrade request, until it is complete.
    Upgrading(BytesMut),
    Open(FrameReader),
}

pub struct WsLink {
    state: State,
    headers_max: usize,
    frame_max: usize,
}

/// What came of received bytes.
#[derive(Debug, Default)]
pub struct Received {
    /// The peer sent a close frame (answered): no more MQTT bytes will come.
    pub peer_closed: bool,
}

impl WsLink {
    /// `headers_max`: the largest upgrade request taken; `frame_max`: the largest frame
    /// (what the connection's packet limit allows).
    pub fn new(headers_max: usize, frame_max: usize) -> WsLink {
        WsLink {
            state: State::Upgrading(BytesMut::new()),
            headers_max,
            frame_max,
        }
    }

    /// The largest frame from now on (raised once CONNECT is accepted: before, a frame may
    /// be only as large as a CONNECT).
    pub fn set_frame_max(&mut self, frame_max: usize) {
        self.frame_max = frame_max;
    }

    /// Takes bytes from the peer: the MQTT bytes they carry are appended to `mqtt`, what
    /// must go back (the upgrade's answer, pongs, the close handshake) to `reply`. An error
    /// is a reason to close, with `reply` holding the answer to send first (an HTTP error).
    pub fn received(
        &mut self,
        data: &[u8],
        mqtt: &mut BytesMut,
        reply: &mut Vec<u8>,
    ) -> Result<Received, String> {
        let peer_closed = match &mut self.state {
            State::Upgrading(request) => {
                request.extend_from_slice(data);
                let Some((answer, rest)) = upgrade(request, self.headers_max, reply)? else {
                    return Ok(Received::default());
                };
                reply.extend_from_slice(answer.as_bytes());
                // Open before the frames after the request are read: an error in them is
                // answered with a close frame like any other.
                self.state = State::Open(FrameReader::new());
                let State::Open(frames) = &mut self.state else {
                    unreachable!("opened above")
                };
                frames.read(&rest, mqtt, reply, self.frame_max)?
            }
            State::Open(frames) => frames.read(data, mqtt, reply, self.frame_max)?,
        };
        Ok(Received { peer_closed })
    }

    /// MQTT bytes for the peer, as one binary frame appended to `out`. Nothing before the
    /// upgrade is done (no MQTT can be sent then), nor after the peer's close.
    pub fn frame(&mut self, mqtt: Bytes, out: &mut Vec<u8>) {
        if let State::Open(frames) = &self.state {
            if !frames.is_closed() {
                frames::put_binary(out, &mqtt);
            }
        }
    }

    /// A close frame, the last bytes of a connection midge closes (none if the peer's close
    /// was answered already): 1000 Normal closure, or why its frames were refused.
    pub fn close(&mut self, out: &mut Vec<u8>) {
        if let State::Open(frames) = &self.state {
            if !frames.is_closed() {
                frames::put_close(out, frames.failed().unwrap_or(1000));
            }
        }
    }
}

/// Parses the upgrade request in `request`: `None` while it is incomplete; the answer and
/// the bytes after the request once it is; an error (with an HTTP answer put in `reply`)
/// if it is too large or not a WebSocket upgrade for MQTT.
fn upgrade(
    request: &mut BytesMut,
    headers_max: usize,
    reply: &mut Vec<u8>,
) -> Result<Option<(String, Vec<u8>)>, String> {
    let mut refuse = |status: &str, why: String| {
        reply.extend_from_slice(
            format!("HTTP/1.1 {status}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
                .as_bytes(),
        );
        Err(why)
    };
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Request::new(&mut headers);
    let end = match parsed.parse(request) {
        Ok(httparse::Status::Complete(end)) => end,
        Ok(httparse::Status::Partial) if request.len() > headers_max => {
            return refuse(
                "431 Request Header Fields Too Large",
                format!("WebSocket upgrade request larger than websockets_headers_size ({headers_max} bytes)"),
            )
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return refuse("400 Bad Request", format!("WebSocket upgrade request: {e}")),
    };
    if end > headers_max {
        return refuse(
            "431 Request Header Fields Too Large",
            format!("WebSocket upgrade request larger than websockets_headers_size ({headers_max} bytes)"),
        );
    }
    match check_upgrade(&parsed) {
        Ok((key, protocol)) => Ok(Some((answer(&key, protocol), request[end..].to_vec()))),
        Err((status, why)) => refuse(status, why),
    }
}

/// A WebSocket upgrade for MQTT checked: its key and the subprotocol chosen (none if the
/// client named none), or the HTTP status refusing it and why.
fn check_upgrade(
    parsed: &httparse::Request<'_, '_>,
) -> Result<(String, Option<&'static str>), (&'static str, String)> {
    let header = |name: &str| {
        (parsed.headers.iter())
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .filter_map(|h| std::str::from_utf8(h.value).ok())
            .collect::<Vec<_>>()
            .join(",")
    };
    let has = |name: &str, token: &str| {
        header(name)
            .split(',')
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    if parsed.method != Some("GET") || !has("Upgrade", "websocket") || !has("Connection", "upgrade")
    {
        return Err(("400 Bad Request", "not a WebSocket upgrade request".into()));
    }
    if header("Sec-WebSocket-Version").trim() != "13" {
        return Err((
            "426 Upgrade Required\r\nSec-WebSocket-Version: 13",
            "WebSocket version other than 13".into(),
        ));
    }
    let key = header("Sec-WebSocket-Key");
    if key.trim().is_empty() {
        return Err(("400 Bad Request", "no Sec-WebSocket-Key".into()));
    }
    // A client that names subprotocols must name MQTT's; one that names none gets MQTT.
    let offered = header("Sec-WebSocket-Protocol");
    let protocol = if offered.trim().is_empty() {
        None
    } else {
        match SUBPROTOCOLS
            .iter()
            .find(|p| has("Sec-WebSocket-Protocol", p))
        {
            Some(p) => Some(*p),
            None => {
                return Err((
                    "400 Bad Request",
                    format!("WebSocket subprotocols {offered:?} do not include mqtt"),
                ))
            }
        }
    };
    Ok((key, protocol))
}

/// The 101 answer to an upgrade with `key`, naming `protocol`.
fn answer(key: &str, protocol: Option<&str>) -> String {
    let mut answer = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n",
        tungstenite::handshake::derive_accept_key(key.trim().as_bytes())
    );
    if let Some(protocol) = protocol {
        answer.push_str(&format!("Sec-WebSocket-Protocol: {protocol}\r\n"));
    }
    answer.push_str("\r\n");
    answer
}

#[cfg(test)]
mod tests {
    use super::*;

    const REQUEST: &str = "GET /mqtt HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n";

    #[test]
    fn the_upgrade_is_answered_with_the_accept_key_and_mqtt() {
        let mut link = WsLink::new(1024, 1 << 20);
        let (mut mqtt, mut reply) = (BytesMut::new(), Vec::new());
        // In two pieces: nothing until the request is whole.
        link.received(&REQUEST.as_bytes()[..20], &mut mqtt, &mut reply)
            .unwrap();
        assert!(reply.is_empty());
        link.received(&REQUEST.as_bytes()[20..], &mut mqtt, &mut reply)
            .unwrap();
        let answer = String::from_utf8(reply).unwrap();
        // RFC 6455 §1.3's example key and accept value.
        assert!(
            answer.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
            "{answer}"
        );
        assert!(answer.contains("Sec-WebSocket-Protocol: mqtt\r\n"));
    }

    #[test]
    fn oversized_or_foreign_requests_are_refused() {
        let mut reply = Vec::new();
        let mut link = WsLink::new(64, 1 << 20);
        let e = link
            .received(REQUEST.as_bytes(), &mut BytesMut::new(), &mut reply)
            .unwrap_err();
        assert!(e.contains("websockets_headers_size"), "{e}");
        assert!(reply.starts_with(b"HTTP/1.1 431"));
        let chat = REQUEST.replace("Protocol: mqtt", "Protocol: chat");
        let mut reply = Vec::new();
        let e = WsLink::new(1024, 1 << 20)
            .received(chat.as_bytes(), &mut BytesMut::new(), &mut reply)
            .unwrap_err();
        assert!(e.contains("do not include mqtt"), "{e}");
    }
}
