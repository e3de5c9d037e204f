//! Mosquitto password files: `user:$7$iterations$salt$hash` (PBKDF2-HMAC-SHA512) and
//! `user:$6$salt$hash` (SHA-512 of password then salt), salt and hash in base64. Files made by
//! Debian's `mosquitto_passwd` work unchanged, and `midge-passwd` writes ones it accepts.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use hashbrown::HashMap;
use sha2::{Digest, Sha512};
use std::path::Path;

/// Mosquitto's defaults for new hashes.
pub const PBKDF2_ITERATIONS: u32 = 101;
pub const SALT_LEN: usize = 12;
const HASH_LEN: usize = 64;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PasswordHash {
    /// `$6$`: SHA-512(password || salt).
    Sha512 { salt: Vec<u8>, hash: Vec<u8> },
    /// `$7$`: PBKDF2-HMAC-SHA512.
    Pbkdf2Sha512 {
        iterations: u32,
        salt: Vec<u8>,
        hash: Vec<u8>,
    },
}

fn decode(field: &str) -> Result<Vec<u8>, String> {
    BASE64
        .decode(field)
        .map_err(|_| format!("{field:?} is not base64"))
}

/// Equal in time independent of where the first difference is.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl PasswordHash {
    /// A new `$7$` hash, as `mosquitto_passwd` makes by default.
    pub fn pbkdf2(password: &[u8], salt: &[u8], iterations: u32) -> Self {
        let mut hash = vec![0u8; HASH_LEN];
        pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, iterations, &mut hash);
        PasswordHash::Pbkdf2Sha512 {
            iterations,
            salt: salt.to_vec(),
            hash,
        }
    }

    /// A new `$6$` hash (`mosquitto_passwd -H sha512`).
    pub fn sha512(password: &[u8], salt: &[u8]) -> Self {
        let mut digest = Sha512::new();
        digest.update(password);
        digest.update(salt);
        PasswordHash::Sha512 {
            salt: salt.to_vec(),
            hash: digest.finalize().to_vec(),
        }
    }

    /// Parses the part after `user:`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let fields: Vec<&str> = text.split('$').collect();
        match fields.as_slice() {
            ["", "6", salt, hash] => Ok(PasswordHash::Sha512 {
                salt: decode(salt)?,
                hash: decode(hash)?,
            }),
            ["", "7", iterations, salt, hash] => {
                let iterations: u32 = iterations
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| format!("bad iteration count {iterations:?}"))?;
                Ok(PasswordHash::Pbkdf2Sha512 {
                    iterations,
                    salt: decode(salt)?,
                    hash: decode(hash)?,
                })
            }
            _ => Err("not a $6$ or $7$ password hash".into()),
        }
    }

    pub fn verify(&self, password: &[u8]) -> bool {
        let again = match self {
            PasswordHash::Sha512 { salt, .. } => PasswordHash::sha512(password, salt),
            PasswordHash::Pbkdf2Sha512 {
                iterations, salt, ..
            } => PasswordHash::pbkdf2(password, salt, *iterations),
        };
        constant_time_eq(self.hash(), again.hash())
    }

    fn hash(&self) -> &[u8] {
        match self {
            PasswordHash::Sha512 { hash, .. } | PasswordHash::Pbkdf2Sha512 { hash, .. } => hash,
        }
    }

    /// The text after `user:` in a password file.
    pub fn to_field(&self) -> String {
        match self {
            PasswordHash::Sha512 { salt, hash } => {
                format!("$6${}${}", BASE64.encode(salt), BASE64.encode(hash))
            }
            PasswordHash::Pbkdf2Sha512 {
                iterations,
                salt,
                hash,
            } => {
                format!(
                    "$7${iterations}${}${}",
                    BASE64.encode(salt),
                    BASE64.encode(hash)
                )
            }
        }
    }
}

/// A password file's users.
#[derive(Clone, Debug, Default)]
pub struct PasswordFile {
    users: HashMap<String, PasswordHash>,
}

impl PasswordFile {
    /// Reads a password file. Entries that cannot be used (no hash, a hash midge cannot
    /// read) are left out and logged with their line, as Mosquitto leaves them out: those
    /// users cannot log in, everyone else can. A file that cannot be read is an error.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let (file, rejected) = Self::parse(&text);
        for (line, why) in rejected {
            log::error!(
                "Error: {}:{line}: {why}; the entry is left out.",
                path.display()
            );
        }
        Ok(file)
    }

    /// Parses a file's text: the users, and the entries left out (line and why).
    pub fn parse(text: &str) -> (Self, Vec<(usize, String)>) {
        let mut users = HashMap::new();
        let mut rejected = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((user, hash)) = line.split_once(':') else {
                rejected.push((i + 1, format!("no password hash for user {line}")));
                continue;
            };
            match PasswordHash::parse(hash) {
                Ok(hash) if !user.is_empty() => {
                    users.insert(user.to_string(), hash);
                }
                Ok(_) => rejected.push((i + 1, "an empty user name".to_string())),
                Err(e) => rejected.push((i + 1, format!("user {user}: {e}"))),
            }
        }
        (PasswordFile { users }, rejected)
    }

    /// Whether `user` exists and `password` is theirs.
    pub fn check(&self, user: &str, password: &[u8]) -> bool {
        self.users.get(user).is_some_and(|h| h.verify(password))
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Made by Debian's mosquitto_passwd 2.0: `-c -b pw alice secret`, `-b -H sha512 pw bob hunter2`.
    const ALICE: &str = "$7$101$nDXg7LxqaRQLN9rZ$7FKBKxkj7y4KKpS/vchsgLbVcfWZz5Fwebz+Cj2KhnwpbkNGkOneIW0DIPSnu/Gy7bRv9K89/pc35LG4Yi5H/Q==";
    const BOB: &str = "$6$9fAExY/CFZmSAZIM$/pITWscGMWBXYs4R4JKwk0Q3l/CGTccRSJu9zdP24EWypsjGSoV7rHgDTXhdyr/ZSH5hcci8cLyoyaG5Q4aTQw==";

    #[test]
    fn mosquitto_hashes_verify_and_reencode() {
        let (file, rejected) = PasswordFile::parse(&format!("# users\nalice:{ALICE}\nbob:{BOB}\n"));
        assert!(rejected.is_empty());
        assert!(file.check("alice", b"secret"));
        assert!(!file.check("alice", b"Secret"));
        assert!(file.check("bob", b"hunter2"));
        assert!(!file.check("carol", b"secret"));
        for text in [ALICE, BOB] {
            assert_eq!(PasswordHash::parse(text).unwrap().to_field(), text);
        }
    }

    #[test]
    fn bad_entries_are_left_out_and_named() {
        let lines = |text: &str| -> Vec<usize> {
            PasswordFile::parse(text)
                .1
                .iter()
                .map(|(line, _)| *line)
                .collect()
        };
        assert_eq!(lines("alice:$7$101$abc$"), [1]);
        assert_eq!(lines("\nbob"), [2]);
        assert_eq!(lines("x:$7$0$AAAA$AAAA\nx:plain"), [1, 2]);
        let (file, rejected) = PasswordFile::parse(&format!("bad:\nbob:{BOB}\n:{BOB}\n"));
        assert_eq!(rejected.len(), 2);
        assert!(file.check("bob", b"hunter2"), "the good entry stays");
        assert!(!file.check("bad", b""));
    }

    #[test]
    fn new_hashes_verify() {
        let h = PasswordHash::pbkdf2(b"pw", b"0123456789ab", PBKDF2_ITERATIONS);
        assert!(h.verify(b"pw") && !h.verify(b"pW"));
        assert!(PasswordHash::parse(&h.to_field()).unwrap().verify(b"pw"));
    }
}
