//! `midge-sub`: subscribes and prints what arrives, with `mosquitto_sub`'s options, output
//! formats (`-v`, `-N`, `-F`), messages and exit codes.

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use midge::client::cli::{self, value, Common};
use midge::client::format;
use midge::client::{Client, ClientError};
use midge::codec::{Properties, Publish, QoS, RetainHandling, SubscriptionOptions};

const USAGE: &str = "\
midge-sub subscribes to topics and prints the messages it receives (mosquitto_sub's options).

Usage: midge-sub {[-h host] [--unix path] [-p port] [-u username] [-P password] -t topic | -L URL [-t topic]}
                 [-c] [-k keepalive] [-q qos] [-x session-expiry-interval]
                 [-C msg_count] [-E] [-R] [--retained-only] [--remove-retained] [-T filter_out]
                 [-U topic ...] [-F format] [-W timeout_secs] [-A bind_address] [--nodelay]
                 [-i id] [-I id_prefix] [-d] [-N] [--quiet] [-v] [-V mqttv5|mqttv311|mqttv31]
                 [--will-topic topic [--will-payload payload] [--will-qos qos] [--will-retain]]
                 [-D command identifier value]
                 [{--cafile file | --capath dir | --tls-use-os-certs} [--cert file --key file]
                  [--insecure] [--tls-version tlsv1.3|tlsv1.2] [--ciphers list]]
       midge-sub --help
";

/// mosquitto_sub's exit code when -W runs out.
const TIMED_OUT: u8 = 27;

#[derive(Default)]
struct Options {
    common: Common,
    count: Option<u64>,
    exit_after_subscribe: bool,
    no_retained: bool,
    retained_only: bool,
    remove_retained: bool,
    filter_out: Vec<String>,
    unsubscribe: Vec<String>,
    format: Option<String>,
    timeout: Option<Duration>,
    no_newline: bool,
    verbose: bool,
    /// `--random-filter`: the share of messages to print, in percent.
    random_filter: Option<f64>,
}

fn parse(args: &[String]) -> Result<Options, String> {
    let mut o = Options::default();
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
            "-C" => {
                let n = value(args, &mut i, "count")?;
                o.count = Some(
                    n.parse()
                        .ok()
                        .filter(|&n| n > 0)
                        .ok_or_else(|| format!("Error: Invalid message count \"{n}\"."))?,
                );
            }
            "-E" => o.exit_after_subscribe = true,
            "-R" => o.no_retained = true,
            "--retained-only" => o.retained_only = true,
            "--remove-retained" => o.remove_retained = true,
            "-T" | "--filter-out" => {
                let filter = value(args, &mut i, "topic filter")?;
                if midge::topic::parse_filter(filter).is_err() {
                    return Err(format!("Error: Invalid filter topic '{filter}', are all '+' and '#' wildcards correct?"));
                }
                o.filter_out.push(filter.to_string());
            }
            "-U" | "--unsubscribe" => o
                .unsubscribe
                .push(value(args, &mut i, "unsubscribe topic")?.to_string()),
            "-F" => {
                let format = value(args, &mut i, "format")?;
                format::check_format(format)?;
                o.format = Some(format.to_string());
            }
            "-W" => {
                let w = value(args, &mut i, "timeout")?;
                let secs: u64 = w
                    .parse()
                    .ok()
                    .filter(|&s| s > 0)
                    .ok_or_else(|| format!("Error: Invalid timeout \"{w}\"."))?;
                o.timeout = Some(Duration::from_secs(secs));
            }
            "-N" => o.no_newline = true,
            "-v" | "--verbose" => o.verbose = true,
            "--pretty" => {}
            "--random-filter" => {
                let p = value(args, &mut i, "percentage")?;
                let share: f64 = p
                    .parse()
                    .ok()
                    .filter(|s: &f64| (0.1..=100.0).contains(s))
                    .ok_or_else(|| {
                        format!("Error: Invalid --random-filter value \"{p}\" (0.1 to 100).")
                    })?;
                o.random_filter = Some(share);
            }
            other => return Err(format!("Error: Unknown option '{other}'.")),
        }
        i += 1;
    }
    if o.common.topics.is_empty() && o.unsubscribe.is_empty() {
        return Err("Error: You must specify a topic to subscribe to.".into());
    }
    for topic in &o.common.topics {
        if midge::topic::parse_filter(topic).is_err() {
            return Err(format!(
                "Error: Invalid subscription topic '{topic}', are all '+' and '#' wildcards correct?"
            ));
        }
    }
    o.common.finish("midge-sub")?;
    Ok(o)
}

/// Prints one message the way mosquitto_sub does.
fn print(o: &Options, publish: &Publish, out: &mut impl Write) -> Result<(), String> {
    let mut line = match &o.format {
        Some(format) => format::format_message(format, publish)?,
        None => {
            let mut line = Vec::new();
            if o.verbose {
                line.extend_from_slice(publish.topic.as_bytes());
                line.push(b' ');
                if publish.payload.is_empty() {
                    line.extend_from_slice(b"(null)");
                }
            }
            line.extend_from_slice(&publish.payload);
            line
        }
    };
    if !o.no_newline {
        line.push(b'\n');
    }
    out.write_all(&line)
        .and_then(|()| out.flush())
        .map_err(|e| format!("Error: writing output: {e}"))
}

/// Subscribes to the topics asked for; messages that arrive meanwhile go to `held`. An
/// error if every subscription was refused; a warning for each refused.
fn subscribe(
    client: &mut Client,
    common: &cli::Common,
    held: &mut Vec<midge::codec::Publish>,
) -> Result<(), (u8, String)> {
    if common.topics.is_empty() {
        return Ok(());
    }
    let options = SubscriptionOptions {
        qos: common.qos,
        no_local: false,
        retain_as_published: false,
        retain_handling: RetainHandling::SendAtSubscribe,
    };
    let filters: Vec<(String, SubscriptionOptions)> =
        common.topics.iter().map(|t| (t.clone(), options)).collect();
    let ack = client
        .subscribe(&filters, common.properties.subscribe.clone(), held)
        .map_err(|e| (1, format!("Error: {e}")))?;
    if ack.reasons.iter().all(|r| *r as u8 >= 0x80) {
        return Err((1, "All subscription requests were denied.".into()));
    }
    for (reason, (topic, _)) in ack.reasons.iter().zip(&filters) {
        if *reason as u8 >= 0x80 {
            common.error(&format!("Warning: Subscription to {topic} denied."));
        }
    }
    Ok(())
}

/// Whether `publish` is shown, as -T, -N, -R and --random-filter say; with
/// --remove-retained, a retained one is cleared from the broker (an empty retained
/// message on its topic).
fn shown_at_all(
    o: &Options,
    client: &mut Client,
    publish: &midge::codec::Publish,
    random: &mut Random,
) -> Result<bool, (u8, String)> {
    if o.filter_out
        .iter()
        .any(|f| midge::topic::matches(f, &publish.topic))
    {
        return Ok(false);
    }
    if o.remove_retained && publish.retain {
        let topic = publish.topic.to_string();
        client
            .publish(
                &topic,
                bytes::Bytes::new(),
                QoS::AtMostOnce,
                true,
                Properties::default(),
                &mut Vec::new(),
            )
            .map_err(|e| (1, format!("Error: {e}")))?;
    }
    if o.no_retained && publish.retain {
        return Ok(false);
    }
    Ok(!o
        .random_filter
        .is_some_and(|share| random.percent() >= share))
}

fn run(o: &Options) -> Result<u8, (u8, String)> {
    let common = &o.common;
    let (mut client, _) = Client::connect(&common.connect).map_err(|e| cli::connect_failure(&e))?;
    let failed = |e: ClientError| (1, format!("Error: {e}"));
    let mut held = Vec::new();
    subscribe(&mut client, common, &mut held)?;
    if !o.unsubscribe.is_empty() {
        client
            .unsubscribe(
                &o.unsubscribe,
                common.properties.unsubscribe.clone(),
                &mut held,
            )
            .map_err(failed)?;
    }
    if o.exit_after_subscribe {
        client
            .disconnect(common.properties.disconnect.clone())
            .map_err(failed)?;
        return Ok(0);
    }
    let deadline = o.timeout.map(|t| Instant::now() + t);
    let mut shown = 0u64;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut held = held.into_iter();
    let mut random = Random::seeded();
    loop {
        let publish = match held.next() {
            Some(p) => p,
            None => match client.recv(deadline).map_err(failed)? {
                Some(p) => p,
                None => {
                    common.error("Timed out");
                    return Ok(TIMED_OUT);
                }
            },
        };
        if o.retained_only && !publish.retain {
            break;
        }
        if !shown_at_all(o, &mut client, &publish, &mut random)? {
            continue;
        }
        print(o, &publish, &mut out).map_err(|e| (1, e))?;
        shown += 1;
        if o.count.is_some_and(|n| shown >= n) {
            break;
        }
    }
    client
        .disconnect(common.properties.disconnect.clone())
        .map_err(failed)?;
    Ok(0)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let o = match parse(&args) {
        Ok(o) => o,
        Err(message) => {
            eprintln!("{message}\n\nUse 'midge-sub --help' to see usage.");
            return ExitCode::from(1);
        }
    };
    match run(&o) {
        Ok(code) => ExitCode::from(code),
        Err((code, message)) => {
            o.common.error(&message);
            ExitCode::from(code)
        }
    }
}

/// xorshift64*: enough randomness to sample messages for `--random-filter`.
struct Random(u64);

impl Random {
    fn seeded() -> Random {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Random((nanos ^ u64::from(std::process::id()) << 32) | 1)
    }

    /// A number in [0, 100).
    fn percent(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let n = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d);
        (n >> 11) as f64 / (1u64 << 53) as f64 * 100.0
    }
}
