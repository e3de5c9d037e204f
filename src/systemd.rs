//! systemd's notify protocol (`sd_notify(3)`), without libsystemd: datagrams of
//! `KEY=VALUE` lines to the socket `$NOTIFY_SOCKET` names (a path, or `@name` for the
//! abstract namespace). `READY=1` once the listeners are open and persisted state is loaded,
//! `RELOADING=1` and `READY=1` around a reload, `STOPPING=1`, and `WATCHDOG=1` every half
//! `$WATCHDOG_USEC` while every shard is turning. Nothing happens when the variables are
//! not set (not started by systemd).

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

pub struct Notifier {
    socket: UnixDatagram,
    to: SocketAddr,
}

impl Notifier {
    /// The notifier `$NOTIFY_SOCKET` asks for, if any (an unusable one is logged).
    pub fn from_env() -> Option<Notifier> {
        let path = std::env::var_os("NOTIFY_SOCKET")?;
        let path = path.to_string_lossy().into_owned();
        match Notifier::new(&path) {
            Ok(notifier) => Some(notifier),
            Err(e) => {
                log::warn!("Warning: NOTIFY_SOCKET {path}: {e}; systemd is not told our state.");
                None
            }
        }
    }

    fn new(path: &str) -> std::io::Result<Notifier> {
        let to = match path.strip_prefix('@') {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                SocketAddr::from_abstract_name(name.as_bytes())?
            }
            None => SocketAddr::from_pathname(path)?,
        };
        Ok(Notifier {
            socket: UnixDatagram::unbound()?,
            to,
        })
    }

    /// Sends `state` (newline-separated assignments). A failure is logged, never fatal.
    pub fn notify(&self, state: &str) {
        if let Err(e) = self.socket.send_to_addr(state.as_bytes(), &self.to) {
            log::debug!("systemd notify {state:?} failed: {e}");
        }
    }

    pub fn ready(&self) {
        self.notify("READY=1\nSTATUS=Serving");
    }

    /// A reload begins (`MONOTONIC_USEC`, as `Type=notify-reload` wants it).
    pub fn reloading(&self) {
        let usec = crate::os::monotonic_micros();
        self.notify(&format!("RELOADING=1\nMONOTONIC_USEC={usec}"));
    }

    pub fn stopping(&self) {
        self.notify("STOPPING=1");
    }
}

/// How often to send `WATCHDOG=1`: half of `$WATCHDOG_USEC`, if it is set for this process
/// (`$WATCHDOG_PID`, when given, must be ours).
pub fn watchdog_interval() -> Option<Duration> {
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
            return None;
        }
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_reach_the_socket_named_by_path_or_abstract_name() {
        let dir = std::env::temp_dir().join(format!("midge-notify-{}", std::process::id()));
        let _ = std::fs::remove_file(&dir);
        let listener = UnixDatagram::bind(&dir).unwrap();
        let notifier = Notifier::new(dir.to_str().unwrap()).unwrap();
        notifier.ready();
        let mut buf = [0u8; 256];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=Serving");
        notifier.reloading();
        let n = listener.recv(&mut buf).unwrap();
        assert!(buf[..n].starts_with(b"RELOADING=1\nMONOTONIC_USEC="));
        let _ = std::fs::remove_file(&dir);

        use std::os::linux::net::SocketAddrExt;
        let name = format!("midge-notify-{}", std::process::id());
        let abstract_listener =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
                .unwrap();
        Notifier::new(&format!("@{name}")).unwrap().stopping();
        let n = abstract_listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");
    }
}
