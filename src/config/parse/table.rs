//! Every option midge reads, as one table: an option is one entry, with its name, what it
//! is for, and how its line is read into the settings (the `Read` variant also says where
//! it applies). The entries live beside the settings they fill (`listeners.rs`,
//! `security.rs`, `general.rs`, `persistence.rs`, `tls.rs`, `bridge/`, `cluster.rs`); this module puts
//! them together, finds an option by name, and suggests the nearest for a misspelling.

use super::{Line, Reader};
use crate::config::bridge::Bridge;
use crate::config::{Config, ConfigError, Listener, Security};
use crate::tls::TlsSettings;

/// One option: its name in `mosquitto.conf`, a line on what it does, and how it is read.
pub(super) struct Known {
    pub(super) name: &'static str,
    pub(super) about: &'static str,
    pub(super) read: Read,
}

type Into<T> = fn(&mut T, &Line) -> Result<(), ConfigError>;

/// How an option's line is read, and what it applies to.
pub(super) enum Read {
    /// A setting of the whole broker.
    Broker(Into<Config>),
    /// A setting of the listener above it (before any `listener` line: of the default
    /// listener, or of every listener that follows).
    Listener(Into<Listener>),
    /// A security setting: global, or the listener's with `per_listener_settings true`.
    Security(Into<Security>),
    /// A TLS setting of the listener above it.
    Tls(Into<TlsSettings>),
    /// A setting of the bridge of the `connection` line above it.
    Bridge(Into<Bridge>),
    /// Read with the reader's own state: which listener or bridge is current, what was
    /// said before, the include depth.
    Reader(Into<Reader>),
    /// Mosquitto's, read without being acted on yet: a warning, not an error.
    NotYet,
}

/// Shorthand for an entry.
pub(super) const fn known(name: &'static str, about: &'static str, read: Read) -> Known {
    Known { name, about, read }
}

/// Every table, in the order the README describes them.
const TABLES: &[&[Known]] = &[
    super::listeners::OPTIONS,
    super::security::OPTIONS,
    super::general::OPTIONS,
    super::persistence::OPTIONS,
    super::tls::OPTIONS,
    super::bridge::OPTIONS,
    super::cluster::OPTIONS,
    NOT_YET,
];

/// Mosquitto 2.0 options that midge reads but does not act on yet (plugins, `http_dir`
/// and a few tuning knobs). Plugin options (`plugin_opt_*`, `auth_opt_*`) take any suffix
/// (`find`).
const NOT_YET: &[Known] = &[
    known(
        "accept_protocol_versions",
        "Mosquitto 2.1: protocol versions a listener takes",
        Read::NotYet,
    ),
    known(
        "allow_duplicate_messages",
        "deprecated in Mosquitto 2.0",
        Read::NotYet,
    ),
    known(
        "auth_plugin",
        "an authentication plugin (Mosquitto's older interface)",
        Read::NotYet,
    ),
    known(
        "auth_plugin_deny_special_chars",
        "for auth plugins: refuse + and # in names",
        Read::NotYet,
    ),
    known(
        "enable_control_api",
        "Mosquitto 2.1: the $CONTROL API",
        Read::NotYet,
    ),
    known(
        "http_dir",
        "files a WebSockets listener serves over HTTP",
        Read::NotYet,
    ),
    known(
        "max_inflight_bytes",
        "bytes in flight per client",
        Read::NotYet,
    ),
    known("plugin", "a Mosquitto plugin", Read::NotYet),
    known(
        "queue_qos0_messages",
        "queue QoS 0 for offline persistent sessions",
        Read::NotYet,
    ),
    known("retry_interval", "removed in Mosquitto 2.0", Read::NotYet),
    known(
        "set_tcp_nodelay",
        "TCP_NODELAY on client sockets",
        Read::NotYet,
    ),
    known(
        "store_clean_interval",
        "removed in Mosquitto 2.0",
        Read::NotYet,
    ),
    known(
        "websockets_log_level",
        "libwebsockets' own log level",
        Read::NotYet,
    ),
];

/// Options read without being acted on whatever their suffix (a plugin's own options).
const NOT_YET_PREFIXES: &[&str] = &["plugin_opt_", "auth_opt_"];

static PLUGIN_OPTION: Known = known("plugin_opt_*", "an option of a plugin", Read::NotYet);

/// The entry of `name`, if midge knows the option.
pub(super) fn find(name: &str) -> Option<&'static Known> {
    let found = TABLES
        .iter()
        .flat_map(|t| t.iter())
        .find(|k| k.name == name);
    found.or_else(|| {
        (NOT_YET_PREFIXES.iter().any(|p| name.starts_with(p))).then_some(&PLUGIN_OPTION)
    })
}

/// Every option name, for the README check and the property test.
pub(super) fn names() -> impl Iterator<Item = &'static str> {
    TABLES.iter().flat_map(|t| t.iter()).map(|k| k.name)
}

/// Every option, as `midge --list-options` prints it: the name, what it does, and whether
/// midge acts on it.
pub fn listing() -> impl Iterator<Item = (&'static str, &'static str, bool)> {
    TABLES
        .iter()
        .flat_map(|t| t.iter())
        .map(|k| (k.name, k.about, !matches!(k.read, Read::NotYet)))
        .chain([(PLUGIN_OPTION.name, PLUGIN_OPTION.about, false)])
}

/// The known option nearest to `unknown`, if it is close enough to be a misspelling.
pub(super) fn suggest(unknown: &str) -> Option<&'static str> {
    let limit = (unknown.len() / 4).clamp(1, 3);
    names()
        .map(|name| (edit_distance(unknown, name), name))
        .filter(|&(d, _)| d <= limit)
        .min()
        .map(|(_, name)| name)
}

/// Levenshtein distance (insertions, deletions, substitutions), on bytes.
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, &ca) in a.iter().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (diagonal + usize::from(ca != cb))
                .min(above + 1)
                .min(row[j] + 1);
            diagonal = above;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn misspellings_get_the_right_name() {
        assert_eq!(
            suggest("max_inflight_mesages"),
            Some("max_inflight_messages")
        );
        assert_eq!(suggest("allow_anonymus"), Some("allow_anonymous"));
        assert_eq!(suggest("listner"), Some("listener"));
        assert_eq!(suggest("pasword_file"), Some("password_file"));
        assert_eq!(suggest("completely_different"), None);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn every_option_has_one_entry_and_says_what_it_does() {
        let mut seen = std::collections::HashSet::new();
        for table in TABLES {
            for known in *table {
                assert!(seen.insert(known.name), "{} has two entries", known.name);
                assert!(!known.about.is_empty(), "{} says nothing", known.name);
                assert_eq!(find(known.name).map(|k| k.about), Some(known.about));
            }
        }
        assert!(find("plugin_opt_anything").is_some());
        assert!(find("no_such_option").is_none());
    }

    /// Every option midge acts on is in the README, where a user looks for it.
    #[test]
    fn every_option_midge_acts_on_is_in_the_readme() {
        let readme = include_str!("../../../README.md");
        let missing: Vec<&str> = TABLES
            .iter()
            .flat_map(|t| t.iter())
            .filter(|k| !matches!(k.read, Read::NotYet))
            .map(|k| k.name)
            .filter(|name| {
                !readme.contains(&format!("`{name}")) && !readme.contains(&format!("<{name}>"))
            })
            .collect();
        assert!(missing.is_empty(), "not in README.md: {missing:?}");
    }
}
