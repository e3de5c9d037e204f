//! Topic names and topic filters (MQTT 5.0 §4.7, 3.1.1 §4.7) and shared subscription filters
//! (5.0 §4.8.2), and a direct filter-against-name matcher used by ACLs and as the trie's oracle.

/// Most levels a topic name or filter may have. Mosquitto refuses more than 200 `/`
/// (`TOPIC_HIERARCHY_LIMIT`), so 201 levels; the same bound keeps the trie's depth, and so
/// its recursion, small.
pub const TOPIC_LEVELS_MAX: usize = 201;

/// The prefix of a shared subscription filter.
pub const SHARE_PREFIX: &str = "$share/";

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("empty topic")]
    Empty,
    #[error("topic name contains a wildcard")]
    WildcardInName,
    #[error("'#' is not the last level of the filter")]
    MultiLevelNotLast,
    #[error("a wildcard shares its level with other characters")]
    WildcardNotWholeLevel,
    #[error("{levels} levels, more than {TOPIC_LEVELS_MAX}")]
    TooManyLevels { levels: usize },
    #[error("invalid share name in a $share filter")]
    InvalidShareName,
    #[error("$share filter without a topic filter")]
    EmptyShareFilter,
}

fn check_levels(topic: &str) -> Result<(), TopicError> {
    let levels = 1 + topic.bytes().filter(|&b| b == b'/').count();
    if levels > TOPIC_LEVELS_MAX {
        return Err(TopicError::TooManyLevels { levels });
    }
    Ok(())
}

/// Checks a topic name as a PUBLISH or will carries it.
pub fn validate_topic_name(topic: &str) -> Result<(), TopicError> {
    // [MQTT-4.7.3-1] at least one character.
    if topic.is_empty() {
        return Err(TopicError::Empty);
    }
    // [MQTT-4.7.0-1] no wildcard characters in a topic name.
    if topic.bytes().any(|b| b == b'+' || b == b'#') {
        return Err(TopicError::WildcardInName);
    }
    check_levels(topic)
}

/// Checks a topic filter (not a `$share/` one: see `parse_filter`).
pub fn validate_filter(filter: &str) -> Result<(), TopicError> {
    // [MQTT-4.7.3-1] at least one character.
    if filter.is_empty() {
        return Err(TopicError::Empty);
    }
    check_levels(filter)?;
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        let has_hash = level.contains('#');
        let has_plus = level.contains('+');
        // [MQTT-4.7.1-1] '#' alone in its level; [MQTT-4.7.1-2] '+' alone in its level.
        if (has_hash || has_plus) && level.len() != 1 {
            return Err(TopicError::WildcardNotWholeLevel);
        }
        // [MQTT-4.7.1-1] '#' is the last character of the filter.
        if has_hash && levels.peek().is_some() {
            return Err(TopicError::MultiLevelNotLast);
        }
    }
    Ok(())
}

/// A checked subscription filter, split into its share group (for `$share/{group}/{filter}`)
/// and the topic filter proper. Only `parse_filter` makes one, so holding one proves the
/// filter valid (the trie relies on that for its depth bound).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FilterRef<'a> {
    group: Option<&'a str>,
    filter: &'a str,
}

impl<'a> FilterRef<'a> {
    pub fn group(&self) -> Option<&'a str> {
        self.group
    }

    pub fn filter(&self) -> &'a str {
        self.filter
    }
}

/// Checks a filter from SUBSCRIBE or UNSUBSCRIBE, shared or not.
pub fn parse_filter(filter: &str) -> Result<FilterRef<'_>, TopicError> {
    let Some(rest) = filter.strip_prefix(SHARE_PREFIX) else {
        validate_filter(filter)?;
        return Ok(FilterRef {
            group: None,
            filter,
        });
    };
    let (group, topic_filter) = rest.split_once('/').ok_or(TopicError::EmptyShareFilter)?;
    // [MQTT-4.8.2-1] a ShareName of at least one character; [MQTT-4.8.2-2] without '/', '+'
    // or '#'.
    if group.is_empty() || group.contains(['+', '#']) {
        return Err(TopicError::InvalidShareName);
    }
    if topic_filter.is_empty() {
        return Err(TopicError::EmptyShareFilter);
    }
    validate_filter(topic_filter)?;
    Ok(FilterRef {
        group: Some(group),
        filter: topic_filter,
    })
}

/// Whether `filter` (valid, not shared) matches the topic name `topic` (valid).
pub fn matches(filter: &str, topic: &str) -> bool {
    // [MQTT-4.7.2-1] filters that start with a wildcard do not match names starting with '$'.
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut filter_levels = filter.split('/');
    let mut topic_levels = topic.split('/');
    loop {
        match (filter_levels.next(), topic_levels.next()) {
            // '#' matches the parent level and any number of child levels (§4.7.1.2).
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(f), Some(t)) if f == t => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(validate_topic_name("a/b/c").is_ok());
        assert!(validate_topic_name("/").is_ok());
        assert_eq!(validate_topic_name(""), Err(TopicError::Empty));
        assert_eq!(validate_topic_name("a/+"), Err(TopicError::WildcardInName));
        assert_eq!(validate_topic_name("a#"), Err(TopicError::WildcardInName));
        assert!(validate_topic_name(&"/".repeat(200)).is_ok());
        assert_eq!(
            validate_topic_name(&"/".repeat(201)),
            Err(TopicError::TooManyLevels { levels: 202 })
        );
    }

    #[test]
    fn filters() {
        for ok in ["#", "+", "a/#", "+/+", "/+", "a/+/c", "$SYS/#", "+/#"] {
            assert!(validate_filter(ok).is_ok(), "{ok}");
        }
        assert_eq!(validate_filter("a/#/b"), Err(TopicError::MultiLevelNotLast));
        assert_eq!(
            validate_filter("a#"),
            Err(TopicError::WildcardNotWholeLevel)
        );
        assert_eq!(
            validate_filter("a/b+"),
            Err(TopicError::WildcardNotWholeLevel)
        );
        assert_eq!(validate_filter(""), Err(TopicError::Empty));
    }

    #[test]
    fn shared_filters() {
        assert_eq!(
            parse_filter("$share/g/a/+"),
            Ok(FilterRef {
                group: Some("g"),
                filter: "a/+"
            })
        );
        assert_eq!(parse_filter("$share/g"), Err(TopicError::EmptyShareFilter));
        assert_eq!(parse_filter("$share/g/"), Err(TopicError::EmptyShareFilter));
        assert_eq!(parse_filter("$share//a"), Err(TopicError::InvalidShareName));
        assert_eq!(
            parse_filter("$share/g+/a"),
            Err(TopicError::InvalidShareName)
        );
        assert_eq!(
            parse_filter("$share/g/a#"),
            Err(TopicError::WildcardNotWholeLevel)
        );
        assert_eq!(
            parse_filter("$sharex/a"),
            Ok(FilterRef {
                group: None,
                filter: "$sharex/a"
            })
        );
    }

    #[test]
    fn matching() {
        assert!(matches("sport/tennis/player1/#", "sport/tennis/player1"));
        assert!(matches(
            "sport/tennis/player1/#",
            "sport/tennis/player1/ranking"
        ));
        assert!(matches("sport/#", "sport"));
        assert!(matches("#", "a/b"));
        assert!(matches("+/+", "/finance"));
        assert!(matches("/+", "/finance"));
        assert!(!matches("+", "/finance"));
        assert!(matches("sport/+", "sport/"));
        assert!(!matches("sport/+", "sport"));
        assert!(!matches("#", "$SYS/x"));
        assert!(!matches("+/monitor/Clients", "$SYS/monitor/Clients"));
        assert!(matches("$SYS/#", "$SYS/monitor/Clients"));
        assert!(matches("$SYS/monitor/+", "$SYS/monitor/Clients"));
    }
}
