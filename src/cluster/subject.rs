//! MQTT topics and filters as NATS subjects, reversibly and never as a wildcard by mistake.
//!
//! A subject is `<root>.m.<token>...`, one token per topic level. A token keeps ASCII
//! letters, digits, `-`, `_` and `$` as they are and writes every other byte (of the
//! level's UTF-8) as `~` and two upper-case hex digits; an empty level is `~` alone (a
//! token is never empty). So `.`, `*`, `>`, whitespace and `~` itself never reach NATS
//! bare: the topic `a/>` is the subject `<root>.m.a.~3E`, never a wildcard, and every
//! token decodes back to its level.
//!
//! A filter maps to the subjects that cover it: `+` is `*`, and `#` is both its parent
//! (`a/#` matches `a`) and `>` under it. A node's NATS subscriptions may cover more than
//! its filters (a filter too long for a subject is cut short and ends in `>`): what arrives
//! is matched again on the node's own trie, so covering more costs bytes, never a wrong
//! delivery.

/// The longest subject midge publishes or subscribes to. nats-server reads a protocol line
/// of at most 4096 bytes (`max_control_line`) by default; the line carries the subject,
/// the subscription id and lengths besides. A topic whose subject is longer goes on the
/// root's `long` subject, which every node subscribes to.
pub const SUBJECT_MAX: usize = 3000;

/// Whether `byte` stands for itself in a token.
fn plain(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'$')
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// Appends the token of one topic level.
fn push_token(subject: &mut String, level: &str) {
    if level.is_empty() {
        subject.push('~');
        return;
    }
    for &byte in level.as_bytes() {
        if plain(byte) {
            subject.push(byte as char);
        } else {
            subject.push('~');
            subject.push(HEX[usize::from(byte >> 4)] as char);
            subject.push(HEX[usize::from(byte & 0xF)] as char);
        }
    }
}

/// Messages are published under `<root>.m`; the retained messages are kept under
/// `<root>.r` (`retained.rs`), with the same tokens.
pub const MESSAGES: &str = "m";
pub const RETAINED: &str = "r";

/// The subject `topic` (a valid topic name) is published on under `root`, or `None` if it
/// would be longer than `SUBJECT_MAX` (then it goes on `long_subject`).
pub fn topic_subject(root: &str, topic: &str) -> Option<String> {
    topic_subject_in(root, MESSAGES, topic)
}

/// As `topic_subject`, under `<root>.<space>`.
pub fn topic_subject_in(root: &str, space: &str, topic: &str) -> Option<String> {
    let mut subject = String::with_capacity(root.len() + 3 + topic.len() + topic.len() / 4);
    subject.push_str(root);
    subject.push('.');
    subject.push_str(space);
    for level in topic.split('/') {
        subject.push('.');
        push_token(&mut subject, level);
        if subject.len() > SUBJECT_MAX {
            return None;
        }
    }
    Some(subject)
}

/// Where messages whose topic is too long for a subject go: under `<root>.m` (so that the
/// messages' stream republishes them there, `stored.rs`), as a token no level is written as.
pub fn long_subject(root: &str) -> String {
    format!("{root}.m.~~")
}

/// A node's fence in the messages' stream (`replay.rs`), as the stream republishes it:
/// under `<root>.m` (where the stream republishes), under the long subject's token (so no
/// topic's), named by the node's run.
pub fn fence_subject(root: &str, incarnation: u64) -> String {
    format!("{root}.m.~~.f.{incarnation:x}")
}

/// Whether `subject` is a fence (any node's): not a message.
pub fn is_fence(root: &str, subject: &str) -> bool {
    (subject.strip_prefix(root)).is_some_and(|rest| rest.starts_with(".m.~~."))
}

/// The level one token stands for; `None` if it is not a token `push_token` writes.
fn level_of(token: &str) -> Option<String> {
    if token == "~" {
        return Some(String::new());
    }
    let bytes = token.as_bytes();
    let mut level = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'~' => {
                let hex = token.get(i + 1..i + 3)?;
                let byte = u8::from_str_radix(hex, 16).ok()?;
                // Written only for bytes that are not plain, in upper case.
                if plain(byte) || hex.bytes().any(|h| h.is_ascii_lowercase()) {
                    return None;
                }
                level.push(byte);
                i += 3;
            }
            byte if plain(byte) => {
                level.push(byte);
                i += 1;
            }
            _ => return None,
        }
    }
    String::from_utf8(level).ok()
}

/// The topic a subject of `topic_subject(root, ..)` stands for; `None` for any other
/// subject.
pub fn topic_of(root: &str, subject: &str) -> Option<String> {
    let tokens = subject.strip_prefix(root)?.strip_prefix(".m.")?;
    let levels: Option<Vec<String>> = tokens.split('.').map(level_of).collect();
    Some(levels?.join("/"))
}

/// The subjects a node subscribes to for `filter` (a valid filter, not a shared
/// subscription's): one, or two for a filter ending in `#` (its parent level, and `>`
/// under it). Every topic the filter matches is published on one of them (or on
/// `long_subject`).
pub fn filter_subjects(root: &str, filter: &str) -> Vec<String> {
    filter_subjects_in(root, MESSAGES, filter)
}

/// As `filter_subjects`, under `<root>.<space>`.
pub fn filter_subjects_in(root: &str, space: &str, filter: &str) -> Vec<String> {
    let mut subject = String::with_capacity(root.len() + 3 + filter.len());
    subject.push_str(root);
    subject.push('.');
    subject.push_str(space);
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if *level == "#" {
            // `#` alone matches every topic: `>` (a topic has at least one level).
            if i == 0 {
                return vec![format!("{subject}.>")];
            }
            return vec![subject.clone(), format!("{subject}.>")];
        }
        let start = subject.len();
        subject.push('.');
        if *level == "+" {
            subject.push('*');
        } else {
            push_token(&mut subject, level);
        }
        if subject.len() > SUBJECT_MAX - 2 {
            // Too long: everything under the levels that fit (more than the filter).
            subject.truncate(start);
            return vec![format!("{subject}.>")];
        }
    }
    vec![subject]
}

/// The longest queue group name midge gives NATS; a longer one is its hash.
const QUEUE_MAX: usize = 200;

/// The NATS queue group of the share group `key` (`$share/{group}/{filter}`): escaped as a
/// token is, or if that is long, `~S` and the first 128 bits of its SHA-256 (two share
/// groups never meet in one queue group by chance, nor by a client's choice of names).
pub fn queue_group(key: &str) -> String {
    let mut name = String::with_capacity(key.len() + key.len() / 4);
    push_token(&mut name, key);
    if name.len() <= QUEUE_MAX {
        return name;
    }
    use sha2::Digest;
    let digest = sha2::Sha256::digest(key.as_bytes());
    let mut hashed = String::from("~S");
    for byte in &digest[..16] {
        hashed.push(HEX[usize::from(byte >> 4)] as char);
        hashed.push(HEX[usize::from(byte & 0xF)] as char);
    }
    hashed
}

/// Whether a NATS subscription `pattern` matches `subject` (NATS's rules: `*` one token,
/// `>` one or more at the end).
pub fn nats_matches(pattern: &str, subject: &str) -> bool {
    let mut tokens = subject.split('.');
    for want in pattern.split('.') {
        match (want, tokens.next()) {
            (">", Some(_)) => return true,
            (_, None) => return false,
            ("*", Some(_)) => {}
            (want, Some(token)) if want == token => {}
            _ => return false,
        }
    }
    tokens.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topic::matches;
    use proptest::prelude::*;

    const ROOT: &str = "midge.c1";

    #[test]
    fn tokens_escape_what_nats_would_read_as_syntax() {
        let s = |t| topic_subject(ROOT, t).unwrap();
        assert_eq!(s("a/b"), "midge.c1.m.a.b");
        assert_eq!(s("a/>"), "midge.c1.m.a.~3E");
        assert_eq!(s("a/*"), "midge.c1.m.a.~2A");
        assert_eq!(s("a.b c"), "midge.c1.m.a~2Eb~20c");
        assert_eq!(s("/a//"), "midge.c1.m.~.a.~.~");
        assert_eq!(s("$SYS/x"), "midge.c1.m.$SYS.x");
        assert_eq!(s("~"), "midge.c1.m.~7E");
        assert_eq!(s("é"), "midge.c1.m.~C3~A9");
    }

    #[test]
    fn filters_cover_their_topics() {
        let f = |t| filter_subjects(ROOT, t);
        assert_eq!(f("a/+/c"), ["midge.c1.m.a.*.c"]);
        assert_eq!(f("a/#"), ["midge.c1.m.a", "midge.c1.m.a.>"]);
        assert_eq!(f("#"), ["midge.c1.m.>"]);
        assert_eq!(f("+/#"), ["midge.c1.m.*", "midge.c1.m.*.>"]);
        assert_eq!(f("a/>"), ["midge.c1.m.a.~3E"]);
    }

    #[test]
    fn a_share_group_is_one_queue_group_token() {
        assert_eq!(queue_group("$share/g/a/#"), "$share~2Fg~2Fa~2F~23");
        let long = format!("$share/g/{}", "x/".repeat(150));
        let hashed = queue_group(&long);
        assert!(hashed.starts_with("~S") && hashed.len() == 34, "{hashed}");
        assert_ne!(hashed, queue_group(&format!("{long}y")));
    }

    #[test]
    fn a_subject_of_another_shape_is_no_topic() {
        for subject in [
            "other.m.a",
            "midge.c1.x.a",
            "midge.c1.m.a~",
            "midge.c1.m.~41",
            "midge.c1.m.a.~zz",
            "midge.c1.m.~3e",
        ] {
            assert_eq!(topic_of(ROOT, subject), None, "{subject}");
        }
    }

    #[test]
    fn a_topic_too_long_for_a_subject_has_none() {
        let long = "x/".repeat(SUBJECT_MAX);
        assert_eq!(topic_subject(ROOT, &long), None);
        let covering = filter_subjects(ROOT, &format!("{long}#"));
        assert_eq!(covering.len(), 1);
        assert!(covering[0].ends_with(".>") && covering[0].len() <= SUBJECT_MAX);
        // Its subject is under the messages' (the stream republishes there), and is no
        // topic's.
        let subject = long_subject(ROOT);
        assert!(subject.starts_with(&format!("{ROOT}.m.")));
        assert_eq!(topic_of(ROOT, &subject), None);
        // A fence is under it, no topic's, and not the long subject itself.
        let fence = fence_subject(ROOT, 0xab);
        assert!(is_fence(ROOT, &fence) && !is_fence(ROOT, &subject));
        assert_eq!(topic_of(ROOT, &fence), None);
    }

    fn level() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(String::new()),
            "[a-c]{1,3}",
            "[ .*>~$/é\\t_-]{1,3}".prop_map(|s| s.replace('/', "")),
            any::<String>().prop_map(|s| s.replace(['/', '+', '#', '\0'], "")),
        ]
    }

    fn topic() -> impl Strategy<Value = String> {
        proptest::collection::vec(level(), 1..5).prop_map(|l| l.join("/"))
    }

    fn filter() -> impl Strategy<Value = String> {
        (
            proptest::collection::vec(prop_oneof![level(), Just("+".to_string())], 0..4),
            any::<bool>(),
        )
            .prop_map(|(mut levels, hash)| {
                if hash || levels.is_empty() {
                    levels.push("#".into());
                }
                levels.join("/")
            })
    }

    proptest! {
        /// Every topic's subject decodes back to it, and carries no NATS syntax: no empty
        /// token, no token that is a wildcard, nothing NATS reads as a separator.
        #[test]
        fn a_topic_and_its_subject_map_both_ways(topic in topic()) {
            let subject = topic_subject(ROOT, &topic).unwrap();
            prop_assert_eq!(topic_of(ROOT, &subject), Some(topic.clone()));
            for token in subject.split('.') {
                prop_assert!(!token.is_empty());
                prop_assert!(token != "*" && token != ">");
                prop_assert!(!token.contains(['*', '>']) && !token.chars().any(char::is_whitespace));
            }
            prop_assert!(subject.is_ascii());
        }

        /// A filter's subjects cover every topic it matches (`#` its parent level too),
        /// and no subject is a wildcard where the filter has a literal level.
        #[test]
        fn a_filter_covers_every_topic_it_matches(filter in filter(), topic in topic()) {
            let subjects = filter_subjects(ROOT, &filter);
            let subject = topic_subject(ROOT, &topic).unwrap();
            let covered = subjects.iter().any(|p| nats_matches(p, &subject));
            if matches(&filter, &topic) {
                prop_assert!(covered, "{filter} matches {topic}: {subjects:?} do not cover {subject}");
            } else if !topic.starts_with('$') && !filter.contains(['+', '#']) {
                prop_assert!(!covered);
            }
        }

        /// Two subjects of one filter never overlap: a message reaches the node once per
        /// filter.
        #[test]
        fn a_filters_subjects_do_not_overlap(filter in filter(), topic in topic()) {
            let subject = topic_subject(ROOT, &topic).unwrap();
            let n = filter_subjects(ROOT, &filter).iter().filter(|p| nats_matches(p, &subject)).count();
            prop_assert!(n <= 1);
        }
    }
}
