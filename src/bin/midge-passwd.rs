//! `midge-passwd`: manages Mosquitto password files, with `mosquitto_passwd`'s options and
//! exit codes. Writes `$7$` (PBKDF2-SHA512, 101 iterations) unless told `-H sha512`.

use midge::auth::password::{PasswordHash, PBKDF2_ITERATIONS, SALT_LEN};
use std::io::{BufRead, IsTerminal, Read, Write};
use std::path::Path;
use std::process::ExitCode;

const USAGE: &str = "midge-passwd is a tool for managing password files for midge (and mosquitto).

Usage: midge-passwd [-H sha512 | -H sha512-pbkdf2] [-I iterations] [-c | -D] passwordfile username
       midge-passwd [-H sha512 | -H sha512-pbkdf2] [-I iterations] [-c] -b passwordfile username password
       midge-passwd -U passwordfile
 -b : run in batch mode to allow passing passwords on the command line.
 -c : create a new password file. This will overwrite existing files.
 -D : delete the username rather than adding/updating its password.
 -H : specify the hashing algorithm. Defaults to sha512-pbkdf2, which is recommended.
      Mosquitto 1.6 and earlier don't support sha512-pbkdf2.
 -I : specify the number of iterations for sha512-pbkdf2 (default 101).
 -U : update a plain text password file to use hashed passwords.";

struct Options {
    create: bool,
    delete: bool,
    batch: bool,
    update: bool,
    pbkdf2: bool,
    iterations: u32,
    args: Vec<String>,
}

fn parse(argv: &[String]) -> Result<Options, String> {
    let mut o = Options {
        create: false,
        delete: false,
        batch: false,
        update: false,
        pbkdf2: true,
        iterations: PBKDF2_ITERATIONS,
        args: Vec::new(),
    };
    let mut it = argv.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "-c" => o.create = true,
            "-D" => o.delete = true,
            "-b" => o.batch = true,
            "-U" => o.update = true,
            "-H" => match it.next().map(String::as_str) {
                Some("sha512") => o.pbkdf2 = false,
                Some("sha512-pbkdf2") => o.pbkdf2 = true,
                other => {
                    return Err(format!(
                        "Error: Unknown hash type '{}'",
                        other.unwrap_or("")
                    ))
                }
            },
            "-I" => {
                o.iterations = it
                    .next()
                    .and_then(|n| n.parse().ok())
                    .filter(|&n| n > 0)
                    .ok_or("Error: -I needs a positive number of iterations")?
            }
            flag if flag.starts_with('-') && flag.len() > 1 => {
                return Err(format!("Error: Unknown option '{flag}'"))
            }
            _ => o.args.push(arg.clone()),
        }
    }
    if o.create && o.delete {
        return Err("Error: -c and -D cannot be used together.".into());
    }
    let wanted = if o.update {
        1
    } else if o.batch {
        3
    } else {
        2
    };
    if o.args.len() != wanted {
        return Err(USAGE.into());
    }
    Ok(o)
}

fn salt() -> Result<[u8; SALT_LEN], String> {
    let mut salt = [0u8; SALT_LEN];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut salt))
        .map_err(|e| format!("Error: no random salt: {e}"))?;
    Ok(salt)
}

fn hash(o: &Options, password: &str) -> Result<String, String> {
    let salt = salt()?;
    let h = if o.pbkdf2 {
        PasswordHash::pbkdf2(password.as_bytes(), &salt, o.iterations)
    } else {
        PasswordHash::sha512(password.as_bytes(), &salt)
    };
    Ok(h.to_field())
}

/// Reads a password twice from the terminal without echo (or once per line from a pipe).
fn prompt_password() -> Result<String, String> {
    let stdin = std::io::stdin();
    let tty = stdin.is_terminal();
    let read = |prompt: &str| -> Result<String, String> {
        eprint!("{prompt}");
        let _ = std::io::stderr().flush();
        let mut line = String::new();
        stdin
            .lock()
            .read_line(&mut line)
            .map_err(|e| format!("Error: {e}"))?;
        if tty {
            eprintln!();
        }
        Ok(line.trim_end_matches(['\n', '\r']).to_string())
    };
    let echo = EchoOff::new(tty);
    let first = read("Password: ")?;
    let second = read("Reenter password: ")?;
    drop(echo);
    if first != second {
        return Err("Error: Passwords do not match.".into());
    }
    Ok(first)
}

/// Turns terminal echo off while it lives.
struct EchoOff(Option<midge::os::Terminal>);

impl EchoOff {
    fn new(tty: bool) -> Self {
        EchoOff(if tty {
            midge::os::stdin_echo_off()
        } else {
            None
        })
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        if let Some(saved) = &self.0 {
            midge::os::restore_terminal(saved);
        }
    }
}

/// Writes `lines` to `path` through a temporary file, so a failure leaves the old file whole.
fn write_file(path: &Path, lines: &[String]) -> Result<(), String> {
    let tmp = path.with_extension("midge-passwd.tmp");
    let mut text = lines.join("\n");
    text.push('\n');
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| format!("Error: unable to write {}: {e}", path.display()))
}

fn run(o: Options) -> Result<(), String> {
    let path = Path::new(&o.args[0]);
    let existing: Vec<String> = if o.create {
        Vec::new()
    } else {
        std::fs::read_to_string(path)
            .map_err(|e| {
                format!(
                    "Error: Unable to open file {} for reading. {e}.",
                    path.display()
                )
            })?
            .lines()
            .map(str::to_string)
            .collect()
    };
    if o.update {
        let mut out = Vec::with_capacity(existing.len());
        for line in existing {
            match line.split_once(':') {
                Some((user, password)) if !password.starts_with('$') => {
                    out.push(format!("{user}:{}", hash(&o, password)?))
                }
                _ => out.push(line),
            }
        }
        return write_file(path, &out);
    }
    let user = &o.args[1];
    if user.contains(':') {
        return Err("Error: Username must not contain the ':' character.".into());
    }
    let prefix = format!("{user}:");
    let mut lines: Vec<String> = existing
        .into_iter()
        .filter(|l| !l.starts_with(&prefix))
        .collect();
    if o.delete {
        return write_file(path, &lines);
    }
    let password = if o.batch {
        o.args[2].clone()
    } else {
        prompt_password()?
    };
    lines.push(format!("{user}:{}", hash(&o, &password)?));
    write_file(path, &lines)
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    match parse(&argv).and_then(run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("{message}");
            ExitCode::FAILURE
        }
    }
}
