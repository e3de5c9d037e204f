//! Reads `mosquitto.conf`: one option per line (`name value...`), `#` comments, `include_dir`.
//!
//! Listener options (`max_connections`, `mount_point`, `protocol`, ...) apply to the last
//! `listener` line above them. Before any `listener` line they set the default listener of
//! `port`/`bind_address` if the file has one, and otherwise the starting values of every
//! listener that follows. Security options are global unless `per_listener_settings true`,
//! which must come before any listener or security option, as Mosquitto requires.

mod bridge;
mod cluster;
mod general;
mod listeners;
mod persistence;
mod security;
mod table;
pub use table::listing as option_listing;
mod tls;

use std::path::Path;
use std::time::Duration;

use super::{Config, ConfigError, Listener, Security};
use table::Read;

/// `include_dir` nesting allowed (a directory including itself must not loop forever).
const INCLUDE_DEPTH_MAX: usize = 8;

impl Config {
    /// Reads `path` on top of the defaults. Warnings go to the log.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let mut reader = Reader::default();
        reader.file(path, 0)?;
        reader.finish(path)
    }

    /// Reads configuration text (as if from `path`) on top of the defaults.
    pub fn from_text(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let mut reader = Reader::default();
        reader.text(path, text, 0)?;
        reader.finish(path)
    }
}

#[derive(Default)]
struct Reader {
    config: Config,
    /// Listener options read before the first `listener` line.
    top: Listener,
    /// `port` or `bind_address` was given: `top` is a listener of its own.
    default_listener: bool,
    /// A `listener` line was read: listener options go to the last listener.
    in_listener: bool,
    log_type_said: bool,
    log_dest_said: bool,
    security_said: bool,
}

/// One line being read, for error messages and argument parsing.
struct Line<'a> {
    file: &'a Path,
    number: usize,
    option: &'a str,
    args: Vec<&'a str>,
    /// Everything after the option name (values that may hold spaces: paths, formats).
    rest: &'a str,
    /// How deep in `include_dir`s the line is.
    depth: usize,
}

impl Line<'_> {
    fn err(&self, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.to_path_buf(),
            line: self.number,
            message: message.into(),
        }
    }

    fn warn(&self, message: &str) {
        log::warn!(
            "Warning: {}:{}: {message}",
            self.file.display(),
            self.number
        );
    }

    fn one(&self, what: &str) -> Result<&str, ConfigError> {
        match self.args.as_slice() {
            [value] => Ok(value),
            _ => Err(self.err(format!("{} takes one {what}", self.option))),
        }
    }

    /// The rest of the line, which must not be empty.
    fn text(&self, what: &str) -> Result<&str, ConfigError> {
        if self.rest.is_empty() {
            return Err(self.err(format!("{} takes a {what}", self.option)));
        }
        Ok(self.rest)
    }

    /// A file or directory: the rest of the line (paths may hold spaces).
    fn path(&self) -> Result<std::path::PathBuf, ConfigError> {
        Ok(std::path::PathBuf::from(self.text("path")?))
    }

    fn number(&self, max: u64) -> Result<u64, ConfigError> {
        let value = self.one("number")?;
        value
            .parse::<u64>()
            .ok()
            .filter(|&n| n <= max)
            .ok_or_else(|| {
                self.err(format!(
                    "{}: {value:?} is not a number from 0 to {max}",
                    self.option
                ))
            })
    }

    /// A count where Mosquitto's -1 means no limit.
    fn limit(&self) -> Result<Option<usize>, ConfigError> {
        let value = self.one("number")?;
        match value.parse::<i64>() {
            Ok(n) if n < 0 => Ok(None),
            Ok(n) => Ok(Some(n as usize)),
            Err(_) => Err(self.err(format!("{}: {value:?} is not a number", self.option))),
        }
    }

    fn boolean(&self) -> Result<bool, ConfigError> {
        match self.one("value")? {
            "true" => Ok(true),
            "false" => Ok(false),
            other => Err(self.err(format!(
                "{}: {other:?} is neither true nor false",
                self.option
            ))),
        }
    }
}

/// Mosquitto's durations: a number and h, d, w, m (30 days) or y (365 days); midge also
/// takes s (seconds).
fn duration(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    let hour = 3600;
    let seconds = match unit {
        "s" => 1,
        "h" => hour,
        "d" => 24 * hour,
        "w" => 7 * 24 * hour,
        "m" => 30 * 24 * hour,
        "y" => 365 * 24 * hour,
        _ => return None,
    };
    Some(Duration::from_secs(n.checked_mul(seconds)?))
}

impl Reader {
    fn file(&mut self, path: &Path, depth: usize) -> Result<(), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            line: 0,
            message: format!("cannot read the file: {e}"),
        })?;
        self.text(path, &text, depth)
    }

    fn listener(&mut self) -> &mut Listener {
        if self.in_listener {
            if let Some(last) = self.config.listeners.last_mut() {
                return last;
            }
        }
        &mut self.top
    }

    fn security(&mut self) -> &mut Security {
        self.security_said = true;
        if self.config.per_listener_settings {
            &mut self.listener().security
        } else {
            &mut self.config.security
        }
    }

    fn text(&mut self, file: &Path, text: &str, depth: usize) -> Result<(), ConfigError> {
        for (index, raw) in text.lines().enumerate() {
            let trimmed = raw.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let (option, rest) = trimmed
                .split_once(char::is_whitespace)
                .map_or((trimmed, ""), |(o, r)| (o, r.trim()));
            let line = Line {
                file,
                number: index + 1,
                option,
                args: rest.split_whitespace().collect(),
                rest,
                depth,
            };
            self.option(&line)?;
        }
        Ok(())
    }

    /// One option's line, read as its entry says (`table.rs`).
    fn option(&mut self, line: &Line) -> Result<(), ConfigError> {
        let Some(known) = table::find(line.option) else {
            let hint = table::suggest(line.option)
                .map(|name| format!(" (did you mean {name}?)"))
                .unwrap_or_default();
            return Err(line.err(format!("unknown option {:?}{hint}", line.option)));
        };
        match known.read {
            Read::Broker(read) => read(&mut self.config, line),
            Read::Listener(read) => read(self.listener(), line),
            Read::Security(read) => read(self.security(), line),
            Read::Tls(read) => {
                let tls = &mut self.listener().tls_settings;
                read(tls, line)?;
                tls.origin = Some((line.file.to_path_buf(), line.number));
                Ok(())
            }
            Read::Bridge(read) => match self.config.bridges.last_mut() {
                Some(bridge) => read(bridge, line),
                None => Err(line.err(format!(
                    "{} is a bridge option: it must follow a connection line",
                    line.option
                ))),
            },
            Read::Reader(read) => read(self, line),
            Read::NotYet => {
                line.warn(&format!(
                    "{} is not supported by midge yet; ignored.",
                    line.option
                ));
                Ok(())
            }
        }
    }

    fn finish(mut self, path: &Path) -> Result<Config, ConfigError> {
        let mut config = self.config;
        bridge::check(&config, path)?;
        config.cluster.check().map_err(|message| {
            let (file, line) =
                (config.cluster.origin.clone()).unwrap_or_else(|| (path.to_path_buf(), 0));
            ConfigError {
                file,
                line,
                message,
            }
        })?;
        if self.default_listener {
            config.listeners.insert(0, self.top.clone());
        }
        config.local_only = config.listeners.is_empty();
        if config.local_only {
            // Listeners made later from -p start from the settings of the file.
            self.top.loopback = true;
            config.listener_defaults = self.top;
        }
        // Mosquitto 2: with a listener configured, anonymous clients are refused unless the
        // file says allow_anonymous true; in local only mode they are allowed.
        let anonymous = config.local_only;
        config.security.allow_anonymous.get_or_insert(anonymous);
        for listener in &mut config.listeners {
            listener.security.allow_anonymous.get_or_insert(anonymous);
        }
        // Certificates and keys are read now, so that a bad one stops the start (and
        // `--test-config`) with its name, never a listener opened without TLS.
        for listener in &mut config.listeners {
            if listener.tls_settings.any_given() {
                let (file, line) = (listener.tls_settings.origin.clone())
                    .unwrap_or_else(|| (path.to_path_buf(), 0));
                let tls = listener
                    .tls_settings
                    .load()
                    .map_err(|message| ConfigError {
                        file,
                        line,
                        message: format!(
                            "listener {}{}: {message}",
                            listener.port,
                            listener
                                .bind
                                .as_ref()
                                .map(|b| format!(" {b}"))
                                .unwrap_or_default()
                        ),
                    })?;
                listener.tls = Some(tls);
            }
        }
        if config.local_only && config.listener_defaults.tls_settings.any_given() {
            let (file, line) = (config.listener_defaults.tls_settings.origin.clone())
                .unwrap_or_else(|| (path.to_path_buf(), 0));
            return Err(ConfigError {
                file,
                line,
                message: "TLS options need a listener (local only mode has none)".into(),
            });
        }
        Ok(config)
    }
}
