//! What `midge-pub` and `midge-sub` share: the options of `mosquitto_pub`/`mosquitto_sub`
//! (read by hand, as Mosquitto does, since `-D` takes three or four values), their error
//! messages and exit codes. `-F` output formats are in `format.rs`.

use bytes::Bytes;

use super::{ClientError, ConnectOptions};
use crate::codec::{MqttStr, Properties, ProtocolVersion, QoS, ReasonCode, Will};

/// `-D` properties, by the packet they go in.
#[derive(Clone, Debug, Default)]
pub struct PropertySets {
    pub connect: Properties,
    pub publish: Properties,
    pub subscribe: Properties,
    pub unsubscribe: Properties,
    pub disconnect: Properties,
    pub will: Properties,
}

/// The options both tools take.
#[derive(Clone, Debug)]
pub struct Common {
    pub connect: ConnectOptions,
    pub id_prefix: Option<String>,
    pub qos: QoS,
    pub topics: Vec<String>,
    pub session_expiry: Option<u32>,
    pub quiet: bool,
    pub will_topic: Option<String>,
    pub will_payload: Option<String>,
    pub will_qos: QoS,
    pub will_retain: bool,
    pub properties: PropertySets,
    /// `-p` was given (TLS changes the default port to 8883 otherwise).
    pub port_given: bool,
    /// `-L mqtts://...`: TLS, with the system's CAs unless a CA is given.
    pub url_tls: bool,
}

/// The value after option `args[*i]`, moving past it.
pub fn value<'a>(args: &'a [String], i: &mut usize, what: &str) -> Result<&'a str, String> {
    let option = &args[*i];
    *i += 1;
    args.get(*i)
        .map(String::as_str)
        .ok_or_else(|| format!("Error: {option} argument given but no {what} specified."))
}

fn number<T: std::str::FromStr>(text: &str, option: &str) -> Result<T, String> {
    text.parse()
        .map_err(|_| format!("Error: Invalid {option} value {text:?}."))
}

pub fn qos(text: &str) -> Result<QoS, String> {
    text.parse::<u8>()
        .ok()
        .and_then(QoS::from_u8)
        .ok_or_else(|| format!("Error: Invalid QoS given: {text}"))
}

impl Default for Common {
    fn default() -> Self {
        Common {
            connect: ConnectOptions::default(),
            port_given: false,
            url_tls: false,
            id_prefix: None,
            qos: QoS::AtMostOnce,
            topics: Vec::new(),
            session_expiry: None,
            quiet: false,
            will_topic: None,
            will_payload: None,
            will_qos: QoS::AtMostOnce,
            will_retain: false,
            properties: PropertySets::default(),
        }
    }
}

impl Common {
    /// Reads option `args[*i]` (and its values) if it is a common one; `Ok(false)` if not.
    pub fn option(&mut self, args: &[String], i: &mut usize) -> Result<bool, String> {
        let c = &mut self.connect;
        match args[*i].as_str() {
            "-A" => c.bind = Some(value(args, i, "address")?.to_string()),
            "-c" | "--disable-clean-session" => c.clean = false,
            "-d" | "--debug" => c.debug = true,
            "-D" | "--property" => self.property(args, i)?,
            "-h" | "--host" => c.host = value(args, i, "host")?.to_string(),
            "-i" | "--id" => {
                let id = value(args, i, "id")?;
                if id.len() > 65535 {
                    return Err("Error: Client id too long.".into());
                }
                c.client_id = id.to_string();
            }
            "-I" | "--id-prefix" => self.id_prefix = Some(value(args, i, "id prefix")?.to_string()),
            "-k" | "--keepalive" => {
                let text = value(args, i, "keepalive")?;
                c.keepalive_s = number::<u16>(text, "keepalive")
                    .map_err(|_| format!("Error: Invalid keepalive given: {text}"))?;
                if c.keepalive_s > 0 && c.keepalive_s < 5 {
                    return Err(format!("Error: Invalid keepalive given: {text}"));
                }
            }
            "-L" | "--url" => self.url(value(args, i, "URL")?)?,
            "-p" | "--port" => {
                self.port_given = true;
                let text = value(args, i, "port")?;
                c.port = number::<u16>(text, "port")
                    .ok()
                    .filter(|&p| p > 0)
                    .ok_or_else(|| format!("Error: Invalid port given: {text}"))?;
            }
            "-P" | "--pw" => c.password = Some(value(args, i, "password")?.to_string()),
            "-q" | "--qos" => self.qos = qos(value(args, i, "QoS")?)?,
            "-t" | "--topic" => self.topics.push(value(args, i, "topic")?.to_string()),
            "-u" | "--username" => c.username = Some(value(args, i, "username")?.to_string()),
            "-V" | "--protocol-version" => {
                c.version = match value(args, i, "protocol version")? {
                    "mqttv31" | "31" => ProtocolVersion::V31,
                    "mqttv311" | "311" => ProtocolVersion::V311,
                    "mqttv5" | "5" => ProtocolVersion::V5,
                    other => {
                        return Err(format!(
                            "Error: Invalid protocol version argument given: {other}"
                        ))
                    }
                }
            }
            "-x" | "--session-expiry-interval" => {
                let text = value(args, i, "session expiry interval")?;
                self.session_expiry = Some(match text {
                    "-1" | "∞" => u32::MAX,
                    _ => number::<u32>(text, "session expiry interval")?,
                });
            }
            "--nodelay" => c.nodelay = true,
            "--quiet" => self.quiet = true,
            "--will-topic" => self.will_topic = Some(value(args, i, "will topic")?.to_string()),
            "--will-payload" => {
                self.will_payload = Some(value(args, i, "will payload")?.to_string())
            }
            "--will-qos" => self.will_qos = qos(value(args, i, "will QoS")?)?,
            "--will-retain" => self.will_retain = true,
            "--cafile" => c.tls.cafile = Some(value(args, i, "cafile")?.into()),
            "--capath" => c.tls.capath = Some(value(args, i, "capath")?.into()),
            "--cert" => c.tls.cert = Some(value(args, i, "certificate file")?.into()),
            "--key" => c.tls.key = Some(value(args, i, "key file")?.into()),
            "--insecure" => c.tls.insecure = true,
            "--tls-use-os-certs" => c.tls.os_certs = true,
            "--tls-version" => {
                let version = value(args, i, "TLS version")?;
                c.tls.version = Some(
                    crate::tls::TlsVersion::parse(version).map_err(|e| format!("Error: {e}."))?,
                );
            }
            "--ciphers" => c.tls.ciphers = Some(value(args, i, "cipher list")?.to_string()),
            "--tls-alpn"
            | "--tls-engine"
            | "--keyform"
            | "--tls-engine-kpass-sha1"
            | "--psk"
            | "--psk-identity" => {
                return Err(format!(
                    "Error: {} is not supported by midge's tools.",
                    args[*i]
                ))
            }
            "--unix" => c.unix = Some(value(args, i, "unix socket path")?.into()),
            "--proxy" => return Err(format!("Error: {} is not supported yet.", args[*i])),
            _ => return Ok(false),
        }
        *i += 1;
        Ok(true)
    }

    /// `-L mqtt://[user[:password]@]host[:port]/topic`.
    fn url(&mut self, url: &str) -> Result<(), String> {
        let bad = || format!("Error: Invalid URL for -L argument specified - {url}.");
        let rest = match url.split_once("://") {
            Some(("mqtt", rest)) => rest,
            Some(("mqtts", rest)) => {
                self.url_tls = true;
                rest
            }
            // midge's tools speak WebSockets too (Mosquitto's do not).
            Some(("ws", rest)) => {
                self.connect.websocket = true;
                rest
            }
            Some(("wss", rest)) => {
                self.connect.websocket = true;
                self.url_tls = true;
                rest
            }
            _ => return Err(bad()),
        };
        let (authority, topic) = rest.split_once('/').ok_or_else(bad)?;
        let hostport = match authority.rsplit_once('@') {
            Some((credentials, hostport)) => {
                let (user, password) = match credentials.split_once(':') {
                    Some((u, p)) => (u, Some(p)),
                    None => (credentials, None),
                };
                self.connect.username = Some(user.to_string());
                self.connect.password = password.map(str::to_string);
                hostport
            }
            None => authority,
        };
        match hostport.rsplit_once(':') {
            Some((host, port)) if !host.ends_with(']') || port.parse::<u16>().is_ok() => {
                self.connect.host = host.trim_matches(['[', ']']).to_string();
                self.connect.port = port.parse().map_err(|_| bad())?;
                self.port_given = true;
            }
            _ => self.connect.host = hostport.trim_matches(['[', ']']).to_string(),
        }
        if self.connect.host.is_empty() {
            return Err(bad());
        }
        if !topic.is_empty() {
            self.topics.push(topic.to_string());
        }
        Ok(())
    }

    /// `-D command identifier value [value]`: an MQTT 5.0 property for one packet type.
    fn property(&mut self, args: &[String], i: &mut usize) -> Result<(), String> {
        let usage =
            "Error: -D argument given but not enough values. Use -D command identifier value.";
        let command = args.get(*i + 1).ok_or(usage)?.to_lowercase();
        let identifier = args.get(*i + 2).ok_or(usage)?.as_str();
        let value = args.get(*i + 3).ok_or(usage)?.as_str();
        *i += 3;
        let sets = &mut self.properties;
        let p = match command.as_str() {
            "connect" => &mut sets.connect,
            "publish" => &mut sets.publish,
            "subscribe" => &mut sets.subscribe,
            "unsubscribe" => &mut sets.unsubscribe,
            "disconnect" => &mut sets.disconnect,
            "will" => &mut sets.will,
            other => {
                return Err(format!(
                    "Error: Invalid command {other} given in -D argument."
                ))
            }
        };
        let bad = || format!("Error: Invalid value {value:?} for property {identifier}.");
        let string = |s: &str| MqttStr::new(s).map_err(|_| bad());
        let allowed: &[&str] = match command.as_str() {
            "connect" => &[
                "session-expiry-interval",
                "receive-maximum",
                "maximum-packet-size",
                "topic-alias-maximum",
                "request-response-information",
                "request-problem-information",
                "user-property",
            ],
            "publish" => &[
                "payload-format-indicator",
                "message-expiry-interval",
                "topic-alias",
                "response-topic",
                "correlation-data",
                "content-type",
                "user-property",
            ],
            "will" => &[
                "will-delay-interval",
                "payload-format-indicator",
                "message-expiry-interval",
                "response-topic",
                "correlation-data",
                "content-type",
                "user-property",
            ],
            "subscribe" => &["subscription-identifier", "user-property"],
            "disconnect" => &["session-expiry-interval", "user-property"],
            _ => &["user-property"],
        };
        if !allowed.contains(&identifier) {
            return Err(format!(
                "Error: {identifier} property not allowed for {command} in -D argument."
            ));
        }
        match identifier {
            "payload-format-indicator" => {
                p.payload_format_indicator = Some(number(value, identifier)?)
            }
            "message-expiry-interval" => {
                p.message_expiry_interval = Some(number(value, identifier)?)
            }
            "session-expiry-interval" => {
                p.session_expiry_interval = Some(number(value, identifier)?)
            }
            "will-delay-interval" => p.will_delay_interval = Some(number(value, identifier)?),
            "maximum-packet-size" => p.maximum_packet_size = Some(number(value, identifier)?),
            "receive-maximum" => p.receive_maximum = Some(number(value, identifier)?),
            "topic-alias-maximum" => p.topic_alias_maximum = Some(number(value, identifier)?),
            "topic-alias" => p.topic_alias = Some(number(value, identifier)?),
            "subscription-identifier" => {
                p.subscription_identifiers.push(number(value, identifier)?)
            }
            "request-problem-information" => {
                p.request_problem_information = Some(number::<u8>(value, identifier)? != 0)
            }
            "request-response-information" => {
                p.request_response_information = Some(number::<u8>(value, identifier)? != 0)
            }
            "content-type" => p.content_type = Some(string(value)?),
            "response-topic" => p.response_topic = Some(string(value)?),
            "correlation-data" => {
                p.correlation_data = Some(Bytes::copy_from_slice(value.as_bytes()))
            }
            "user-property" => {
                let second = args.get(*i + 1).ok_or(usage)?;
                *i += 1;
                p.user_properties.push((string(value)?, string(second)?));
            }
            _ => unreachable!("checked against the allowed list"),
        }
        Ok(())
    }

    /// Checks the options together and completes the CONNECT settings.
    pub fn finish(&mut self, tool: &str) -> Result<(), String> {
        let v5 = self.connect.version == ProtocolVersion::V5;
        let tls = &mut self.connect.tls;
        if tls.cert.is_some() != tls.key.is_some() {
            return Err(
                "Error: Both certfile and keyfile must be provided if one of them is set.".into(),
            );
        }
        if self.url_tls && !tls.enabled() {
            tls.os_certs = true;
        }
        if !self.port_given {
            self.connect.port = match (self.connect.websocket, tls.enabled()) {
                (true, true) => 443,
                (true, false) => 80,
                (false, true) => 8883,
                (false, false) => self.connect.port,
            };
        }
        if let Some(prefix) = &self.id_prefix {
            self.connect.client_id = format!("{prefix}{}", std::process::id());
        }
        if self.connect.client_id.is_empty() {
            if !self.connect.clean {
                return Err(
                    "Error: You must provide a client id if you are using the -c option.".into(),
                );
            }
            if self.connect.version == ProtocolVersion::V31 {
                // 3.1 has no broker-assigned ids.
                self.connect.client_id = format!("{tool}-{}", std::process::id());
            }
        }
        if self.will_payload.is_some() && self.will_topic.is_none() {
            return Err("Error: Will payload given, but no will topic given.".into());
        }
        if let Some(topic) = &self.will_topic {
            if crate::topic::validate_topic_name(topic).is_err() {
                return Err(format!(
                    "Error: Invalid will topic '{topic}', does it contain '+' or '#'?"
                ));
            }
            self.connect.will = Some(Will {
                qos: self.will_qos,
                retain: self.will_retain,
                properties: self.properties.will.clone(),
                topic: MqttStr::new(topic).map_err(|e| format!("Error: will topic: {e}"))?,
                payload: Bytes::from(self.will_payload.clone().unwrap_or_default()),
            });
        }
        self.connect.properties = self.properties.connect.clone();
        if v5 {
            // -x, or with -c a session that does not expire.
            let expiry = self
                .session_expiry
                .or((!self.connect.clean).then_some(u32::MAX));
            if let Some(expiry) = expiry.filter(|&e| e > 0) {
                self.connect.properties.session_expiry_interval = Some(expiry);
            }
        }
        Ok(())
    }

    /// Prints an error unless `--quiet`.
    pub fn error(&self, message: &str) {
        if !self.quiet {
            eprintln!("{message}");
        }
    }
}

/// The exit code and message of a failed connection, as Mosquitto's clients give them:
/// a refusal exits with its CONNACK return code, anything else with 1.
pub fn connect_failure(error: &ClientError) -> (u8, String) {
    match error {
        ClientError::Refused(reason) => {
            let code = crate::codec::v3_return_code(*reason).max(1);
            (code, format!("Connection error: {error}"))
        }
        ClientError::Io(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            (1, "Error: Connection refused".into())
        }
        ClientError::Tls(_) => (1, format!("Unable to connect ({error}).")),
        // Closed before CONNACK (a TLS broker refusing the certificate, say): libmosquitto's
        // MOSQ_ERR_CONN_LOST.
        ClientError::Closed(None) => (7, "Error: The connection was lost.".into()),
        // Not MQTT from the other side (a plain client on a TLS port): MOSQ_ERR_PROTOCOL.
        ClientError::Protocol(_) => (
            2,
            "Error: A network protocol error occurred when communicating with the broker.".into(),
        ),
        other => (1, format!("Error: {other}")),
    }
}

/// Why a 5.0 acknowledgement refused something, in words.
pub fn reason_text(reason: ReasonCode) -> String {
    format!("{reason:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_and_urls() {
        let args: Vec<String> = [
            "-L",
            "mqtt://u:p@example.org:1884/a/b",
            "-D",
            "publish",
            "user-property",
            "k",
            "v",
            "-V",
            "5",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut c = Common::default();
        let mut i = 0;
        while i < args.len() {
            assert!(c.option(&args, &mut i).unwrap());
        }
        assert_eq!(
            (c.connect.host.as_str(), c.connect.port),
            ("example.org", 1884)
        );
        assert_eq!(c.connect.username.as_deref(), Some("u"));
        assert_eq!(c.topics, vec!["a/b"]);
        assert_eq!(c.properties.publish.user_properties.len(), 1);
        assert_eq!(c.connect.version, ProtocolVersion::V5);
        let mut i = 0;
        let bad: Vec<String> = vec![
            "-D".into(),
            "publish".into(),
            "session-expiry-interval".into(),
            "1".into(),
        ];
        assert!(Common::default()
            .option(&bad, &mut i)
            .unwrap_err()
            .contains("not allowed"));
        let mut c = Common::default();
        c.connect.clean = false;
        assert!(c.finish("t").unwrap_err().contains("client id"));
    }
}
