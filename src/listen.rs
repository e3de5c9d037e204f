//! Listening sockets. A TCP listener is bound once per shard (`SO_REUSEPORT`: the kernel
//! spreads new connections across them); a Unix socket is bound once and every shard
//! accepts from the same socket.

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Connections waiting to be accepted, per listening socket.
const BACKLOG: i32 = 1024;

/// Who may connect to a Unix socket listener: its owner and group, as Mosquitto leaves it
/// (it binds under umask 0007). Others cannot, whatever the broker's umask.
pub const UNIX_SOCKET_MODE: u32 = 0o770;

/// How long a start waits for a TCP port another socket holds: a broker just killed may
/// hold its listening socket a moment longer (its io_uring ring being torn down, which
/// resets the connections queued on it); a broker still running holds it for good.
const PORT_FREE_WAIT: Duration = Duration::from_secs(3);

/// Fails with `AddrInUse` if another socket listens on `addr` (an address of one of the
/// configured listeners), after waiting up to `PORT_FREE_WAIT` for it to go, said once in
/// the log. The shards' own sockets share a port (`SO_REUSEPORT`), but another process
/// must not join them, and a restarted broker must not take connections into a socket
/// that is going away; Mosquitto refuses to start on a port in use.
pub fn wait_for_port(addr: SocketAddr, interface: Option<&str>) -> io::Result<()> {
    if addr.port() == 0 {
        return Ok(()); // A port of the system's choosing: free by definition.
    }
    let until = Instant::now() + PORT_FREE_WAIT;
    let mut waited = false;
    loop {
        match bind_alone(addr, interface) {
            Err(e) if e.kind() == io::ErrorKind::AddrInUse && Instant::now() < until => {
                if !waited {
                    log::warn!(
                        "Warning: port {} is in use; waiting up to {} s for it to be free.",
                        addr.port(),
                        PORT_FREE_WAIT.as_secs()
                    );
                    waited = true;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e),
            Ok(()) => {
                if waited {
                    log::info!(target: "information", "Port {} is free.", addr.port());
                }
                return Ok(());
            }
        }
    }
}

/// Binds (and closes) a socket on `addr` that shares it with no other socket: only a
/// port nobody listens on takes it (`SO_REUSEADDR` still lets an earlier broker's closed
/// connections linger).
fn bind_alone(addr: SocketAddr, interface: Option<&str>) -> io::Result<()> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    if let Some(interface) = interface {
        socket.bind_device(Some(interface.as_bytes()))?;
    }
    socket.bind(&addr.into())
}

/// A TCP listening socket that other shards may bind too; `interface` is `bind_interface`.
pub fn tcp(addr: SocketAddr, interface: Option<&str>) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    if let Some(interface) = interface {
        socket.bind_device(Some(interface.as_bytes()))?;
    }
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// A Unix socket listener at `path` (mode `UNIX_SOCKET_MODE`). A socket file left behind by
/// a broker that is gone is replaced, as Mosquitto does; unlike Mosquitto, a path that is
/// not a socket, or a socket another process still answers on, is an error rather than
/// unlinked.
pub fn unix(path: &Path) -> io::Result<(UnixListener, SocketFile)> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "the path exists and is not a socket",
            ))
        }
        Ok(_) if UnixStream::connect(path).is_ok() => {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                "another process listens on it",
            ))
        }
        Ok(_) => std::fs::remove_file(path)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let socket = Socket::new(Domain::UNIX, Type::STREAM, None)?;
    socket.bind(&SockAddr::unix(path)?)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(UNIX_SOCKET_MODE))?;
    socket.listen(BACKLOG)?;
    let meta = std::fs::symlink_metadata(path)?;
    let file = SocketFile {
        path: path.to_path_buf(),
        identity: (meta.dev(), meta.ino()),
    };
    Ok((socket.into(), file))
}

/// The file of a Unix socket listener, removed when the broker stops (as Mosquitto does),
/// unless something else has taken its path meanwhile.
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
    /// Device and inode at bind.
    identity: (u64, u64),
}

impl SocketFile {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let ours = std::fs::symlink_metadata(&self.path)
            .is_ok_and(|meta| (meta.dev(), meta.ino()) == self.identity);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}
