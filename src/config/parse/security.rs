//! The security options: global, or each listener's with `per_listener_settings true`,
//! which must come before any listener and security option, as Mosquitto requires.

use std::path::Path;
use std::sync::Arc;

use super::table::{known, Known, Read};

pub(super) const OPTIONS: &[Known] = &[
    known(
        "per_listener_settings",
        "security options per listener rather than global",
        Read::Reader(|r, line| {
            let on = line.boolean()?;
            if on != r.config.per_listener_settings
                && (r.in_listener || r.default_listener || r.security_said)
            {
                return Err(line.err(
                    "per_listener_settings must come before any listener and security option",
                ));
            }
            r.config.per_listener_settings = on;
            Ok(())
        }),
    ),
    known(
        "allow_anonymous",
        "clients without a user name are let in",
        Read::Security(|s, line| {
            s.allow_anonymous = Some(line.boolean()?);
            Ok(())
        }),
    ),
    known(
        "acl_strict_subscribe",
        "midge's own: refuse a SUBSCRIBE unless the ACL lets the client read all it names",
        Read::Security(|s, line| {
            s.acl_strict_subscribe = line.boolean()?;
            Ok(())
        }),
    ),
    known(
        "allow_zero_length_clientid",
        "a client may connect with an empty client id (and is given one)",
        Read::Security(|s, line| {
            s.allow_zero_length_clientid = line.boolean()?;
            Ok(())
        }),
    ),
    known(
        "auto_id_prefix",
        "the prefix of the client ids the broker gives",
        Read::Security(|s, line| {
            s.auto_id_prefix = line.one("prefix")?.to_string();
            Ok(())
        }),
    ),
    known(
        "password_file",
        "user names and password hashes (mosquitto_passwd's format)",
        Read::Security(|s, line| {
            let path = line.text("path")?;
            let loaded = crate::auth::password::PasswordFile::load(Path::new(path))
                .map_err(|e| line.err(format!("password_file: {e}")))?;
            s.password_file = Some(Arc::new(loaded));
            Ok(())
        }),
    ),
    known(
        "acl_file",
        "which topics each user may read and write",
        Read::Security(|s, line| {
            let path = line.text("path")?;
            let acl = crate::auth::acl::Acl::load(Path::new(path))
                .map_err(|e| line.err(format!("acl_file: {e}")))?;
            s.acl = Some(Arc::new(acl));
            Ok(())
        }),
    ),
    known(
        "clientid_prefixes",
        "only client ids with this prefix may connect",
        Read::Broker(|c, line| {
            c.clientid_prefixes = Some(line.one("prefix")?.to_string());
            Ok(())
        }),
    ),
];
