//! WebSocket listeners (`protocol websockets`): MQTT in binary WebSocket messages, for
//! browsers. The HTTP upgrade is parsed with `httparse` within `websockets_headers_size`
//! bytes and answered with tungstenite's accept key; after it, tungstenite's protocol layer
//! (`WebSocketContext`: framing, masking, ping/pong, close) runs over an in-memory pipe, so
//! like TLS it sits per connection on the shard between the backend and the codec, and
//! under TLS for `wss://`.
//!
//! MQTT packets may be split across messages and messages may hold several packets: the
//! bytes go to the connection's input as one stream (MQTT 5.0 §6.0, 3.1.1 §6).

use bytes::{Buf, Bytes, BytesMut};
use std::io::{self, Read, Write};
use tungstenite::protocol::{Message, Role, WebSocketConfig, WebSocketContext};

/// Subprotocols a client may ask for, in the order midge prefers them.
const SUBPROTOCOLS: &[&str] = &["mqtt", "mqttv3.1"];

/// What the WebSocket layer reads and writes: filled from the connection's bytes, drained
/// into what goes back. Never blocks: reading past its end is `WouldBlock`.
#[derive(Default)]
struct Pipe {
    input: BytesMut,
    output: Vec<u8>,
}

impl Pipe {
    /// Hands what was written over to `out`, allocation and all when `out` is empty, so the
    /// pipe keeps no buffer between turns.
    fn drain_output(&mut self, out: &mut Vec<u8>) {
        let output = std::mem::take(&mut self.output);
        if out.is_empty() {
            *out = output;
        } else {
            out.extend_from_slice(&output);
        }
    }
}

impl Read for Pipe {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.input.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(self.input.len());
        buf[..n].copy_from_slice(&self.input[..n]);
        self.input.advance(n);
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

enum State {
    /// The HTTP upgrade request, until it is complete.
    Upgrading(BytesMut),
    Open(Box<WebSocketContext>),
}

pub struct WsLink {
    state: State,
    pipe: Pipe,
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
    /// `headers_max`: the largest upgrade request taken; `frame_max`: the largest frame or
    /// message (what the connection's packet limit allows).
    pub fn new(headers_max: usize, frame_max: usize) -> WsLink {
        WsLink {
            state: State::Upgrading(BytesMut::new()),
            pipe: Pipe::default(),
            headers_max,
            frame_max,
        }
    }

    /// The largest frame or message from now on (raised once CONNECT is accepted: before,
    /// a frame may be only as large as a CONNECT).
    pub fn set_frame_max(&mut self, frame_max: usize) {
        self.frame_max = frame_max;
        if let State::Open(context) = &mut self.state {
            context.set_config(|config| {
                config.max_frame_size = Some(frame_max);
                config.max_message_size = Some(frame_max);
            });
        }
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
        if let State::Upgrading(request) = &mut self.state {
            request.extend_from_slice(data);
            let Some((answer, rest)) = upgrade(request, self.headers_max, reply)? else {
                return Ok(Received::default());
            };
            reply.extend_from_slice(answer.as_bytes());
            let config = WebSocketConfig::default()
                .read_buffer_size(4096)
                .write_buffer_size(0)
                .max_frame_size(Some(self.frame_max))
                .max_message_size(Some(self.frame_max));
            let context = WebSocketContext::from_partially_read(rest, Role::Server, Some(config));
            self.state = State::Open(Box::new(context));
        } else {
            self.pipe.input.extend_from_slice(data);
        }
        let State::Open(context) = &mut self.state else {
            unreachable!("opened above")
        };
        let mut received = Received::default();
        let result = loop {
            match context.read(&mut self.pipe) {
                Ok(Message::Binary(bytes)) => mqtt.extend_from_slice(&bytes),
                // [MQTT-6.0.0-1] MQTT travels in binary frames; anything else closes.
                Ok(Message::Text(_)) => {
                    break Err("a text frame (MQTT over WebSockets is binary only)".to_string())
                }
                Ok(Message::Close(_)) => {
                    received.peer_closed = true;
                    break Ok(());
                }
                // Pings are answered by tungstenite (the pong goes out with the flush).
                Ok(_) => {}
                Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    break Ok(())
                }
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                    received.peer_closed = true;
                    break Ok(());
                }
                Err(e) => break Err(format!("WebSocket: {e}")),
            }
        };
        let _ = context.flush(&mut self.pipe);
        self.pipe.drain_output(reply);
        // An idle connection keeps no buffer of a burst it once received.
        if self.pipe.input.is_empty() {
            self.pipe.input = BytesMut::new();
        }
        result.map(|()| received)
    }

    /// MQTT bytes for the peer, as one binary message appended to `out`. Nothing before the
    /// upgrade is done (no MQTT can be sent then).
    pub fn frame(&mut self, mqtt: Bytes, out: &mut Vec<u8>) {
        let State::Open(context) = &mut self.state else {
            return;
        };
        if let Err(e) = context.write(&mut self.pipe, Message::Binary(mqtt)) {
            log::debug!("WebSocket: a message could not be framed: {e}");
        }
        let _ = context.flush(&mut self.pipe);
        self.pipe.drain_output(out);
    }

    /// A close frame, the last bytes of a connection midge closes.
    pub fn close(&mut self, out: &mut Vec<u8>) {
        if let State::Open(context) = &mut self.state {
            let _ = context.close(&mut self.pipe, None);
            let _ = context.flush(&mut self.pipe);
            self.pipe.drain_output(out);
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
        return refuse("400 Bad Request", "not a WebSocket upgrade request".into());
    }
    if header("Sec-WebSocket-Version").trim() != "13" {
        return refuse(
            "426 Upgrade Required\r\nSec-WebSocket-Version: 13",
            "WebSocket version other than 13".into(),
        );
    }
    let key = header("Sec-WebSocket-Key");
    if key.trim().is_empty() {
        return refuse("400 Bad Request", "no Sec-WebSocket-Key".into());
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
                return refuse(
                    "400 Bad Request",
                    format!("WebSocket subprotocols {offered:?} do not include mqtt"),
                )
            }
        }
    };
    let mut answer = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n",
        tungstenite::handshake::derive_accept_key(key.trim().as_bytes())
    );
    if let Some(protocol) = protocol {
        answer.push_str(&format!("Sec-WebSocket-Protocol: {protocol}\r\n"));
    }
    answer.push_str("\r\n");
    Ok(Some((answer, request[end..].to_vec())))
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
