//! The persistence options (`persist/`): Mosquitto's, and midge's `persistence_sync` and
//! `persistence_on_damage`.

use super::Line;
use crate::config::{Config, ConfigError};

pub(super) fn option(config: &mut Config, line: &Line) -> Result<(), ConfigError> {
    match line.option {
        "persistence" => config.persistence = line.boolean()?,
        "persistence_location" => {
            config.persistence_location = Some(line.text("directory")?.into())
        }
        "persistence_file" => {
            let name = line.text("file name")?;
            if name.contains('/') {
                return Err(line.err(format!(
                    "persistence_file: {name:?} is a file name, not a path (persistence_location gives the directory)"
                )));
            }
            config.persistence_file = name.to_string();
        }
        "persistence_sync" => {
            let value = line.one("policy")?;
            config.persistence_sync = crate::persist::SyncPolicy::parse(value).ok_or_else(|| {
                line.err(format!(
                    "persistence_sync: {value:?} is not always, never, interval or a number of milliseconds"
                ))
            })?
        }
        "persistence_on_damage" => {
            config.persistence_on_damage_set_aside = match line.one("stop or set_aside")? {
                "stop" => false,
                "set_aside" => true,
                other => {
                    return Err(line.err(format!(
                        "persistence_on_damage: {other:?} is neither stop nor set_aside"
                    )))
                }
            }
        }
        // Read (and checked) for Mosquitto's files: midge journals every change at once,
        // so they change nothing (README).
        "autosave_interval" => {
            line.number(u32::MAX.into())?;
        }
        "autosave_on_changes" => {
            line.boolean()?;
        }
        other => return Err(line.err(format!("{other} is not a persistence option"))),
    }
    Ok(())
}
