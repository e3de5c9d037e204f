//! Mosquitto's log format: `<unix time>: <message>`. Connection lines are notice (info here),
//! per-packet lines debug (shown with `-v` or `log_type all`).

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

/// Starts logging to stderr, as Mosquitto does by default. Safe to call more than once.
pub fn init(verbose: bool) {
    let level = if verbose {
        log::LevelFilter::Debug
    } else {
        log::LevelFilter::Info
    };
    let _ = env_logger::Builder::new()
        .filter_level(level)
        .target(env_logger::Target::Stderr)
        .format(|buf, record| {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            writeln!(buf, "{now}: {}", record.args())
        })
        .try_init();
}
