//! Mosquitto ACL files: `topic [read|write|readwrite|deny] TOPIC` for anonymous clients (or,
//! after `user NAME`, for that user), and `pattern ...` for everyone with `%c` (client id) and
//! `%u` (user name) put in. Deny rules win; with an ACL file, what no rule grants is denied.

use crate::topic::matches;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Grant {
    Read,
    Write,
    ReadWrite,
    Deny,
}

#[derive(Clone, Debug)]
struct Rule {
    grant: Grant,
    topic: String,
}

#[derive(Clone, Debug, Default)]
pub struct Acl {
    anonymous: Vec<Rule>,
    users: hashbrown::HashMap<String, Vec<Rule>>,
    patterns: Vec<Rule>,
}

fn rule(args: &str) -> Result<Rule, String> {
    let (first, rest) = args
        .split_once(' ')
        .map_or((args, ""), |(a, b)| (a, b.trim()));
    let (grant, topic) = match first {
        "read" => (Grant::Read, rest),
        "write" => (Grant::Write, rest),
        "readwrite" => (Grant::ReadWrite, rest),
        "deny" => (Grant::Deny, rest),
        _ => (Grant::ReadWrite, args.trim()),
    };
    if topic.is_empty() {
        return Err("no topic".into());
    }
    Ok(Rule {
        grant,
        topic: topic.to_string(),
    })
}

/// Whether every topic `filter` can match is matched by `rule` (a subscription within what
/// the rule covers).
fn filter_within(rule: &str, filter: &str) -> bool {
    // [MQTT-4.7.2-1] a rule starting with a wildcard does not cover `$` topics ($SYS...):
    // those must be granted by name.
    if filter.starts_with('$') && (rule.starts_with('+') || rule.starts_with('#')) {
        return false;
    }
    let mut r = rule.split('/');
    let mut f = filter.split('/');
    loop {
        match (r.next(), f.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(level)) if level != "#" => {}
            (Some(a), Some(b)) if a == b && a != "+" && a != "#" => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

impl Acl {
    /// Parses an ACL file; an error names its line.
    pub fn parse(text: &str) -> Result<Self, (usize, String)> {
        let mut acl = Acl::default();
        let mut user: Option<String> = None;
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (keyword, args) = line
                .split_once(' ')
                .map_or((line, ""), |(a, b)| (a, b.trim()));
            match keyword {
                "user" if !args.is_empty() => user = Some(args.to_string()),
                "topic" => {
                    let rule = rule(args).map_err(|e| (i + 1, e))?;
                    match &user {
                        Some(u) => acl.users.entry(u.clone()).or_default().push(rule),
                        None => acl.anonymous.push(rule),
                    }
                }
                "pattern" => acl.patterns.push(rule(args).map_err(|e| (i + 1, e))?),
                _ => return Err((i + 1, format!("unknown ACL line {line:?}"))),
            }
        }
        Ok(acl)
    }

    pub fn load(path: &std::path::Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Self::parse(&text).map_err(|(line, e)| format!("{}:{line}: {e}", path.display()))
    }

    /// Calls `f` with each rule that applies to a client (patterns expanded; only those with
    /// `%c`/`%u` allocate) until `f` returns true; says whether it did.
    fn any_rule(
        &self,
        user: Option<&str>,
        client_id: &str,
        mut f: impl FnMut(Grant, &str) -> bool,
    ) -> bool {
        let own: &[Rule] = match user {
            Some(u) => self.users.get(u).map_or(&[][..], Vec::as_slice),
            None => &self.anonymous,
        };
        if own.iter().any(|r| f(r.grant, &r.topic)) {
            return true;
        }
        self.patterns.iter().any(|p| {
            // A pattern with %u does not apply to an anonymous client (as Mosquitto).
            if p.topic.contains("%u") && user.is_none() {
                return false;
            }
            if p.topic.contains('%') {
                let topic = p
                    .topic
                    .replace("%c", client_id)
                    .replace("%u", user.unwrap_or(""));
                f(p.grant, &topic)
            } else {
                f(p.grant, &p.topic)
            }
        })
    }

    /// May this client read (receive) or write (publish) `topic`?
    pub fn check_topic(
        &self,
        user: Option<&str>,
        client_id: &str,
        topic: &str,
        access: Access,
    ) -> bool {
        if wildcard_identity(user, client_id) {
            return false;
        }
        let denied = self.any_rule(user, client_id, |g, t| {
            g == Grant::Deny && matches(t, topic)
        });
        !denied
            && self.any_rule(user, client_id, |g, t| {
                grants(g, access) && matches(t, topic)
            })
    }

    /// May this client subscribe to `filter`: is all it could match readable?
    pub fn check_subscribe(&self, user: Option<&str>, client_id: &str, filter: &str) -> bool {
        if wildcard_identity(user, client_id) {
            return false;
        }
        let denied = self.any_rule(user, client_id, |g, t| {
            g == Grant::Deny && filter_within(t, filter)
        });
        !denied
            && self.any_rule(user, client_id, |g, t| {
                grants(g, Access::Read) && filter_within(t, filter)
            })
    }
}

/// A client id or user name with a wildcard would turn a `%c`/`%u` pattern into a wider rule
/// (`clients/#/...`): such a client is denied everything, as Mosquitto does
/// (`auth_plugin_deny_special_chars`, on by default).
fn wildcard_identity(user: Option<&str>, client_id: &str) -> bool {
    let special = |s: &str| s.contains(['+', '#']);
    special(client_id) || user.is_some_and(special)
}

fn grants(grant: Grant, access: Access) -> bool {
    matches!(
        (grant, access),
        (Grant::ReadWrite, _) | (Grant::Read, Access::Read) | (Grant::Write, Access::Write)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "# anonymous\ntopic read public/#\n\nuser alice\ntopic readwrite alice/#\ntopic deny alice/secret\ntopic write inbox/+\n\npattern readwrite clients/%c/#\npattern read users/%u/#\n";

    #[test]
    fn rules_users_patterns_and_deny() {
        let acl = Acl::parse(FILE).unwrap();
        let a = Some("alice");
        assert!(acl.check_topic(None, "x", "public/news", Access::Read));
        assert!(!acl.check_topic(None, "x", "public/news", Access::Write));
        assert!(acl.check_topic(a, "c1", "alice/notes", Access::Write));
        assert!(
            !acl.check_topic(a, "c1", "alice/secret", Access::Read),
            "deny wins"
        );
        assert!(acl.check_topic(a, "c1", "inbox/bob", Access::Write));
        assert!(!acl.check_topic(a, "c1", "inbox/bob", Access::Read));
        assert!(acl.check_topic(a, "c1", "clients/c1/x", Access::Read));
        assert!(!acl.check_topic(a, "c1", "clients/c2/x", Access::Read));
        assert!(acl.check_topic(a, "c1", "users/alice/x", Access::Read));
        assert!(
            !acl.check_topic(None, "c1", "users//x", Access::Read),
            "%u needs a user"
        );
        assert!(
            !acl.check_topic(a, "c1", "public/news", Access::Read),
            "anonymous rules are not alice's"
        );
    }

    #[test]
    fn subscriptions_must_stay_within_what_may_be_read() {
        let acl = Acl::parse(FILE).unwrap();
        let a = Some("alice");
        assert!(acl.check_subscribe(None, "x", "public/#"));
        assert!(acl.check_subscribe(None, "x", "public/+/x"));
        assert!(!acl.check_subscribe(None, "x", "#"));
        assert!(!acl.check_subscribe(None, "x", "+/news"));
        assert!(acl.check_subscribe(a, "c1", "alice/+"));
        assert!(!acl.check_subscribe(a, "c1", "alice/secret"));
        assert!(Acl::parse("topic\n").is_err());
        // `#` does not cover $SYS; a wildcard in a client id or user name gets nothing.
        let root = Acl::parse("user root\ntopic readwrite #\n").unwrap();
        assert!(!root.check_subscribe(Some("root"), "c", "$SYS/#"));
        assert!(!root.check_topic(Some("root"), "c", "$SYS/x", Access::Write));
        assert!(root.check_subscribe(Some("root"), "c", "a/#"));
        assert!(!acl.check_topic(a, "#", "clients/#/x", Access::Read));
        assert!(!acl.check_subscribe(a, "c+", "alice/x"));
        assert_eq!(Acl::parse("x\nbogus line\n").unwrap_err().0, 1);
    }
}
