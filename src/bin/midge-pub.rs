//! `midge-pub`: publishes one message (or each line of stdin) and exits, with
//! `mosquitto_pub`'s options, messages and exit codes.

use bytes::Bytes;
use std::io::{BufRead, Read};
use std::process::ExitCode;
use std::time::Duration;

use midge::client::cli::{self, value, Common};
use midge::client::Client;

const USAGE: &str = "\
midge-pub publishes a message on a topic and exits (mosquitto_pub's options).

Usage: midge-pub {[-h host] [--unix path] [-p port] [-u username] [-P password] -t topic | -L URL}
                 {-f file | -l | -n | -m message | -s}
                 [-c] [-k keepalive] [-q qos] [-r] [--repeat N] [--repeat-delay time]
                 [-x session-expiry] [-A bind_address] [--nodelay] [-i id] [-I id_prefix]
                 [-d] [--quiet] [-V mqttv5|mqttv311|mqttv31] [-D command identifier value]
                 [--will-topic topic [--will-payload payload] [--will-qos qos] [--will-retain]]
                 [{--cafile file | --capath dir | --tls-use-os-certs} [--cert file --key file]
                  [--insecure] [--tls-version tlsv1.3|tlsv1.2] [--ciphers list]]
       midge-pub --help
";

enum Source {
    Message(Bytes),
    Lines,
}

struct Options {
    common: Common,
    retain: bool,
    source: Option<Source>,
    repeat: u32,
    repeat_delay: Duration,
    /// `-M`: QoS 1/2 publishes sent before their acknowledgements come back.
    inflight_max: usize,
}

fn parse(args: &[String]) -> Result<Options, String> {
    let mut o = Options {
        common: Common::default(),
        retain: false,
        source: None,
        repeat: 1,
        repeat_delay: Duration::ZERO,
        inflight_max: 20,
    };
    let set = |o: &mut Options, source: Source| -> Result<(), String> {
        if o.source.is_some() {
            return Err("Error: Only one type of message can be sent at once.".into());
        }
        o.source = Some(source);
        Ok(())
    };
    let mut i = 0;
    while i < args.len() {
        if o.common.option(args, &mut i)? {
            continue;
        }
        match args[i].as_str() {
            "--help" => {
                print!("{USAGE}");
                std::process::exit(0);
            }
            "-m" | "--message" => {
                let m = value(args, &mut i, "message")?;
                set(
                    &mut o,
                    Source::Message(Bytes::copy_from_slice(m.as_bytes())),
                )?;
            }
            "-f" | "--file" => {
                let path = value(args, &mut i, "file")?;
                let data = std::fs::read(path)
                    .map_err(|e| format!("Error: Unable to read file \"{path}\": {e}."))?;
                set(&mut o, Source::Message(Bytes::from(data)))?;
            }
            "-s" | "--stdin-file" => {
                let mut data = Vec::new();
                std::io::stdin()
                    .read_to_end(&mut data)
                    .map_err(|e| format!("Error: Unable to read stdin: {e}."))?;
                set(&mut o, Source::Message(Bytes::from(data)))?;
            }
            "-l" | "--stdin-line" => set(&mut o, Source::Lines)?,
            "-n" | "--null-message" => set(&mut o, Source::Message(Bytes::new()))?,
            "-r" | "--retain" => o.retain = true,
            "--repeat" => {
                let n = value(args, &mut i, "count")?;
                o.repeat =
                    n.parse().ok().filter(|&n| n >= 1).ok_or_else(|| {
                        format!("Error: --repeat argument must be 1 or greater: {n}")
                    })?;
            }
            "--repeat-delay" => {
                let d = value(args, &mut i, "time")?;
                let secs: f64 = d
                    .parse()
                    .ok()
                    .filter(|s: &f64| s.is_finite() && *s >= 0.0)
                    .ok_or_else(|| {
                        format!("Error: --repeat-delay argument must be 0 or greater: {d}")
                    })?;
                o.repeat_delay = Duration::from_secs_f64(secs);
            }
            "-M" => {
                let m = value(args, &mut i, "max inflight")?;
                o.inflight_max = m
                    .parse()
                    .ok()
                    .filter(|&n| n >= 1)
                    .ok_or_else(|| format!("Error: Invalid max inflight \"{m}\"."))?;
            }
            other => return Err(format!("Error: Unknown option '{other}'.")),
        }
        i += 1;
    }
    if o.common.topics.is_empty() || o.source.is_none() {
        return Err("Error: Both topic and message must be supplied.".into());
    }
    if o.common.topics.len() > 1 {
        return Err("Error: Only one topic may be given.".into());
    }
    let topic = &o.common.topics[0];
    if midge::topic::validate_topic_name(topic).is_err() {
        return Err(format!(
            "Error: Invalid publish topic '{topic}', does it contain '+' or '#'?"
        ));
    }
    o.common.finish("midge-pub")?;
    Ok(o)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let o = match parse(&args) {
        Ok(o) => o,
        Err(message) => {
            eprintln!("{message}\n\nUse 'midge-pub --help' to see usage.");
            return ExitCode::from(1);
        }
    };
    let common = &o.common;
    let (mut client, _) = match Client::connect(&common.connect) {
        Ok(connected) => connected,
        Err(e) => {
            let (code, message) = cli::connect_failure(&e);
            common.error(&message);
            return ExitCode::from(code);
        }
    };
    let topic = &common.topics[0];
    let mut held = Vec::new();
    let mut failed = false;
    // Up to -M publishes are in flight at once; each one finished is checked.
    let mut settle = |client: &mut Client, outstanding: usize| -> Result<(), String> {
        let done = client
            .settle(outstanding, &mut held)
            .map_err(|e| format!("Error: {e}"))?;
        for (mid, reason) in done {
            if reason as u8 >= 0x80 {
                // 5.0: the broker refused it (0x87 Not authorized, say).
                common.error(&format!(
                    "Warning: Publish {mid} failed: {}.",
                    cli::reason_text(reason)
                ));
                failed = true;
            }
        }
        Ok(())
    };
    let window = o.inflight_max;
    let mut send = |client: &mut Client, payload: Bytes| -> Result<(), String> {
        settle(client, window - 1)?;
        client
            .start_publish(
                topic,
                payload,
                common.qos,
                o.retain,
                common.properties.publish.clone(),
            )
            .map_err(|e| format!("Error: {e}"))
    };
    let result = match &o.source {
        Some(Source::Message(payload)) => (1..=o.repeat).try_for_each(|n| {
            if n > 1 && !o.repeat_delay.is_zero() {
                std::thread::sleep(o.repeat_delay);
            }
            send(&mut client, payload.clone())
        }),
        Some(Source::Lines) => std::io::stdin().lock().lines().try_for_each(|line| {
            let line = line.map_err(|e| format!("Error: reading stdin: {e}"))?;
            send(&mut client, Bytes::from(line))
        }),
        None => Ok(()),
    };
    let result = result.and_then(|()| settle(&mut client, 0));
    if let Err(message) = result {
        common.error(&message);
        return ExitCode::from(1);
    }
    if let Err(e) = client.disconnect(common.properties.disconnect.clone()) {
        common.error(&format!("Error: {e}"));
        return ExitCode::from(1);
    }
    ExitCode::from(u8::from(failed))
}
