//! Client ids as keys of the sessions bucket, and node ids as subject tokens.
//!
//! A key takes only `[-/_=.a-zA-Z0-9]`, and a client id is any UTF-8 string up to 65,535
//! bytes: letters, digits, `-` and `_` stay, every other byte is `=` and two hex digits, so
//! that two client ids never share a key. An escaped id longer than `KEY_MAX` would make a
//! long subject: its key is `==` and the SHA-256 of the client id instead (no escaped id
//! holds `==`).

use sha2::{Digest, Sha256};

/// The longest escaped key kept as it is.
const KEY_MAX: usize = 200;

/// The key of `client_id`'s owner in the sessions bucket.
pub fn client_key(client_id: &str) -> String {
    let mut key = String::with_capacity(client_id.len());
    for &b in client_id.as_bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            key.push(char::from(b));
        } else {
            key.push_str(&format!("={b:02X}"));
        }
        if key.len() > KEY_MAX {
            return hashed(client_id);
        }
    }
    key
}

/// `==` and the hex SHA-256 of `client_id`: an escaped key never holds `==` (an escape is
/// `=` and two hex digits).
fn hashed(client_id: &str) -> String {
    let digest = Sha256::digest(client_id.as_bytes());
    let mut key = String::from("==");
    for b in digest {
        key.push_str(&format!("{b:02x}"));
    }
    key
}

/// A node id as one subject token: as it is if it has only letters, digits, `-` and `_`
/// (a `cluster_node_id` always), else `~` and the hex of its bytes (a host name with dots).
pub fn node_token(node: &str) -> String {
    let plain = !node.is_empty()
        && (node.bytes()).all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if plain {
        return node.to_string();
    }
    let mut token = String::from("~");
    for b in node.bytes() {
        token.push_str(&format!("{b:02x}"));
    }
    token
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_key(key: &str) -> bool {
        !key.is_empty()
            && !key.starts_with('.')
            && !key.ends_with('.')
            && (key.bytes()).all(|b| b.is_ascii_alphanumeric() || b"-/_=.".contains(&b))
    }

    #[test]
    fn every_client_id_is_a_valid_key_and_no_two_share_one() {
        let ids = [
            "sensor-1", "a.b", "a=2Eb", "a/b", "", " ", "ünï", "*", ">", "a b", "==x",
        ];
        let mut seen = std::collections::HashSet::new();
        for id in ids {
            let key = client_key(id);
            assert!(id.is_empty() || is_key(&key), "{id:?} -> {key:?}");
            assert!(seen.insert(key.clone()), "{id:?} shares {key:?}");
        }
        assert_eq!(client_key("sensor-1_A"), "sensor-1_A");
        assert_eq!(client_key("a.b"), "a=2Eb");
        let long = "x".repeat(5000);
        let key = client_key(&long);
        assert!(key.starts_with("==") && key.len() == 66 && is_key(&key));
        assert_ne!(key, client_key(&"x".repeat(5001)));
    }

    #[test]
    fn node_ids_are_one_subject_token() {
        assert_eq!(node_token("node-1_a"), "node-1_a");
        let dotted = node_token("host.example.com");
        assert!(!dotted.contains('.') && dotted.starts_with('~'));
        assert_ne!(node_token("a.b"), node_token("a_b"));
    }
}
