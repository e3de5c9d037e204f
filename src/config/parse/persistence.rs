//! The persistence options (`persist/`): Mosquitto's, and midge's `persistence_sync` and
//! `persistence_on_damage`.

use super::table::{known, Known, Read};

pub(super) const OPTIONS: &[Known] = &[
    known(
        "persistence",
        "keep sessions, queued and retained messages across a restart",
        Read::Broker(|c, line| {
            c.persistence = line.boolean()?;
            Ok(())
        }),
    ),
    known(
        "persistence_location",
        "the directory of the persistence file",
        Read::Broker(|c, line| {
            c.persistence_location = Some(line.text("directory")?.into());
            Ok(())
        }),
    ),
    known(
        "persistence_file",
        "the persistence file's name",
        Read::Broker(|c, line| {
            let name = line.text("file name")?;
            if name.contains('/') {
                return Err(line.err(format!(
                    "persistence_file: {name:?} is a file name, not a path (persistence_location gives the directory)"
                )));
            }
            c.persistence_file = name.to_string();
            Ok(())
        }),
    ),
    known(
        "persistence_sync",
        "midge's own: when the journal syncs (always, never, interval, or milliseconds)",
        Read::Broker(|c, line| {
            let value = line.one("policy")?;
            c.persistence_sync = crate::persist::SyncPolicy::parse(value).ok_or_else(|| {
                line.err(format!(
                    "persistence_sync: {value:?} is not always, never, interval or a number of milliseconds"
                ))
            })?;
            Ok(())
        }),
    ),
    known(
        "persistence_on_damage",
        "midge's own: stop, or set a damaged journal aside and start empty",
        Read::Broker(|c, line| {
            c.persistence_on_damage_set_aside = match line.one("stop or set_aside")? {
                "stop" => false,
                "set_aside" => true,
                other => {
                    return Err(line.err(format!(
                        "persistence_on_damage: {other:?} is neither stop nor set_aside"
                    )))
                }
            };
            Ok(())
        }),
    ),
    // Read (and checked) for Mosquitto's files: midge journals every change at once, so
    // they change nothing (README).
    known(
        "autosave_interval",
        "Mosquitto's seconds between saves: midge journals every change at once",
        Read::Broker(|_, line| {
            line.number(u32::MAX.into())?;
            Ok(())
        }),
    ),
    known(
        "autosave_on_changes",
        "Mosquitto's autosave_interval counted in changes: midge journals every change at once",
        Read::Broker(|_, line| {
            line.boolean()?;
            Ok(())
        }),
    ),
];
