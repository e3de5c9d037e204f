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
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Self::parse(&text).map_err(|(line, e)| format!("{}:{line}: {e}", path.display()))
    }

    /// Parses a file's text; an error names its line.
    pub fn parse(text: &str) -> Result<Self, (usize, String)> {
        let mut users = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let (user, hash) = line
                .split_once(':')
                .ok_or((i + 1, "no ':' between user and hash".to_string()))?;
            let hash = PasswordHash::parse(hash).map_err(|e| (i + 1, e))?;
            users.insert(user.to_string(), hash);
        }
        Ok(PasswordFile { users })
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
        let file = PasswordFile::parse(&format!("# users\nalice:{ALICE}\nbob:{BOB}\n")).unwrap();
        assert!(file.check("alice", b"secret"));
        assert!(!file.check("alice", b"Secret"));
        assert!(file.check("bob", b"hunter2"));
        assert!(!file.check("carol", b"secret"));
        for text in [ALICE, BOB] {
            assert_eq!(PasswordHash::parse(text).unwrap().to_field(), text);
        }
    }

    #[test]
    fn bad_lines_are_named() {
        assert_eq!(PasswordFile::parse("alice:$7$101$abc$").unwrap_err().0, 1);
        assert_eq!(PasswordFile::parse("\nbob").unwrap_err().0, 2);
        assert!(PasswordFile::parse("x:$7$0$AAAA$AAAA").is_err());
        assert!(PasswordFile::parse("x:plain").is_err());
    }

    #[test]
    fn new_hashes_verify() {
        let h = PasswordHash::pbkdf2(b"pw", b"0123456789ab", PBKDF2_ITERATIONS);
        assert!(h.verify(b"pw") && !h.verify(b"pW"));
        assert!(PasswordHash::parse(&h.to_field()).unwrap().verify(b"pw"));
    }
}
