//! Starting and stopping the broker: listening sockets for every shard, the shared state,
//! one pinned thread per shard.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::cluster::Cluster;
use crate::config::{Config, CpuAffinity, IoBackend};
use crate::limits::SHARDS_MAX;
use crate::listen::{self, SocketFile};
use crate::os;
use crate::shard::io::epoll::Epoll;
use crate::shard::io::uring::{self, Uring};
use crate::shard::io::{Io, ListenSocket, Waker};
use crate::shard::{ReloadSignals, Shard, Shared};

pub struct Server {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    /// The TCP addresses actually bound (port 0 resolved).
    pub addrs: Vec<SocketAddr>,
    /// Unix socket listeners' files, removed when the server is dropped.
    pub unix_sockets: Vec<SocketFile>,
}

impl Server {
    pub fn start(config: Config) -> io::Result<Server> {
        Server::start_with_auth(config, Vec::new())
    }

    /// Starts with these enhanced authentication methods available to 5.0 clients.
    pub fn start_with_auth(
        config: Config,
        auth_methods: Vec<Arc<dyn crate::auth::AuthMethod>>,
    ) -> io::Result<Server> {
        Server::start_with(config, auth_methods, Arc::default())
    }

    /// Starts with `reload_signals`: the SIGHUPs a handler counts and the reloads the
    /// reloading thread counts once applied (`Shared::reload_signals`).
    pub fn start_with(
        config: Config,
        auth_methods: Vec<Arc<dyn crate::auth::AuthMethod>>,
        reload_signals: Arc<ReloadSignals>,
    ) -> io::Result<Server> {
        let shards = shard_count(&config);
        if config.local_only {
            log_local_only();
        }
        let Listening {
            first,
            addrs,
            unix_sockets,
            listener_of_socket,
            rebind,
        } = Listening::open(&config)?;
        let backends = shard_backends(&config, first, &rebind, shards)?;
        log::debug!("Shards use the {} backend.", backends[0].name());
        if let Some(user) = &config.user {
            drop_privileges(user, &unix_sockets)?;
        }
        // Read as the user the broker runs as, who must be able to write it too.
        let storage = Arc::new(crate::persist::storage::Os);
        let mut store = crate::persist::start::open(&config, shards, storage)?;
        let wakers: Vec<Arc<dyn Waker>> = backends.iter().map(|b| b.waker()).collect();
        let (shared, receivers) = Shared::new(
            config,
            wakers,
            listener_of_socket,
            auth_methods,
            reload_signals,
        );
        if let Some(store) = &store {
            store.share(&shared);
        }
        let (restored, restored_all) = std::sync::mpsc::channel();
        let config = shared.config.load_full();
        if config.cluster.enabled() {
            let cluster = Cluster::start(config.cluster.clone(), shared.mailboxes.clone())?;
            let _ = shared.cluster.set(cluster);
        }
        let cores = pinned_cores(&config.cpu_affinity);
        let mut bridges_of = bridges_by_shard(&config, store.as_ref(), shards);
        // No shard serves a client before every shard has its sessions and bridges (whose
        // subscriptions a first PUBLISH must find).
        let ready = Arc::new(std::sync::Barrier::new(shards));
        let mut threads = Vec::with_capacity(shards);
        for (id, (backend, receiver)) in backends.into_iter().zip(receivers).enumerate() {
            let start = ShardStart {
                id,
                shared: shared.clone(),
                backend,
                receiver,
                core: cores.get(id % cores.len().max(1)).copied(),
                part: store.as_mut().and_then(|s| s.take_shard(id)),
                bridges: std::mem::take(&mut bridges_of[id]),
                restored: restored.clone(),
                ready: ready.clone(),
            };
            threads.push(start.spawn()?);
        }
        // Sessions are back on their shards before the broker counts as started.
        all_restored(&restored_all, shards, &config)?;
        if let Some(store) = store {
            store.finish();
        }
        if let Some(addr) = config.metrics_listener {
            let bound = crate::sys::metrics::serve(addr, shared.clone())
                .map_err(|e| io::Error::new(e.kind(), format!("metrics_listener {addr}: {e}")))?;
            log::info!("Serving metrics on http://{bound}/metrics.");
        }
        Ok(Server {
            shared,
            threads,
            addrs,
            unix_sockets,
        })
    }

    /// Takes what a reload may change from `fresh` (a new read of the configuration) and
    /// hands it to the shards. Returns what could not change without a restart.
    pub fn reload(&self, fresh: Config) -> Vec<String> {
        reload(&self.shared, fresh)
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// A handle that stops the server from another thread (a signal handler thread).
    pub fn stopper(&self) -> Stopper {
        Stopper(self.shared.clone())
    }

    /// Asks every shard to stop, and waits for them.
    pub fn shutdown(self) {
        self.stopper().stop();
        self.join();
    }

    /// Waits for the shards to stop (after `Stopper::stop`), then stops the cluster's link.
    pub fn join(self) {
        for thread in self.threads {
            let _ = thread.join();
        }
        if let Some(cluster) = self.shared.cluster.get() {
            cluster.shut_down();
        }
    }
}

#[derive(Clone)]
pub struct Stopper(Arc<Shared>);

impl Stopper {
    /// See `Server::reload`.
    pub fn reload(&self, fresh: Config) -> Vec<String> {
        reload(&self.0, fresh)
    }

    /// SIGUSR1, as in Mosquitto ("save the database now"): every shard rewrites its
    /// journal from its live state on its next turn.
    pub fn compact(&self) {
        self.0.compactions_asked.fetch_add(1, Ordering::AcqRel);
        for shard in 0..self.0.mailboxes.shards() {
            self.0.mailboxes.wake(shard);
        }
    }

    /// Whether the broker is stopping.
    pub fn stopping(&self) -> bool {
        self.0.shutdown.load(Ordering::Acquire)
    }

    /// Each shard's loop turns so far (see `Shared::loop_turns`).
    pub fn loop_turns(&self) -> Vec<u64> {
        self.0.loop_turns()
    }

    pub fn stop(&self) {
        self.0.shutdown.store(true, Ordering::Release);
        for shard in 0..self.0.mailboxes.shards() {
            self.0.mailboxes.wake(shard);
        }
    }
}

/// The first shard's listening sockets, with what the others need to have theirs.
struct Listening {
    first: Vec<ListenSocket>,
    /// The TCP addresses bound (port 0 resolved: one free port per listener, shared by its
    /// addresses).
    addrs: Vec<SocketAddr>,
    unix_sockets: Vec<SocketFile>,
    /// Per socket: its configured listener.
    listener_of_socket: Vec<usize>,
    /// Per socket: how another shard gets its own (a TCP address and `bind_interface` to
    /// bind again; `None`: a Unix socket, shared).
    rebind: Vec<Option<(SocketAddr, Option<String>)>>,
}

impl Listening {
    fn open(config: &Config) -> io::Result<Listening> {
        let mut listening = Listening {
            first: Vec::new(),
            addrs: Vec::new(),
            unix_sockets: Vec::new(),
            listener_of_socket: Vec::new(),
            rebind: Vec::new(),
        };
        for (index, listener) in config.listeners.iter().enumerate() {
            if let Some(why) = listener.not_opened {
                log::warn!(
                    "Warning: not opening the listener on port {}: {why}.",
                    listener.port
                );
                continue;
            }
            match &listener.unix_socket {
                Some(path) => listening.open_unix(index, path)?,
                None => listening.open_tcp(index, listener)?,
            }
        }
        if listening.first.is_empty() {
            return Err(io::Error::other("no listener could be opened"));
        }
        Ok(listening)
    }

    fn open_unix(&mut self, index: usize, path: &str) -> io::Result<()> {
        log::info!(target: "information", "Opening unix listen socket on path {path}.");
        let (socket, file) = listen::unix(path.as_ref()).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot listen on unix socket {path}: {e}"),
            )
        })?;
        self.first.push(ListenSocket::Unix(socket));
        self.unix_sockets.push(file);
        self.listener_of_socket.push(index);
        self.rebind.push(None);
        Ok(())
    }

    fn open_tcp(&mut self, index: usize, listener: &crate::config::Listener) -> io::Result<()> {
        let interface = listener.bind_interface.as_deref();
        let mut chosen_port = None;
        let listener_addrs = listener.addrs().inspect_err(|e| {
            log::error!("Error: listener on port {}: {e}", listener.port);
        })?;
        for mut addr in listener_addrs {
            if let (0, Some(port)) = (addr.port(), chosen_port) {
                addr.set_port(port);
            }
            let opened =
                listen::wait_for_port(addr, interface).and_then(|()| listen::tcp(addr, interface));
            match opened {
                Ok(socket) => {
                    let bound = socket.local_addr()?;
                    chosen_port = Some(bound.port());
                    // Mosquitto names a WebSocket listener's sockets "websockets".
                    let family = match (listener.websockets, bound.is_ipv4()) {
                        (true, _) => "websockets",
                        (false, true) => "ipv4",
                        (false, false) => "ipv6",
                    };
                    log::info!(target: "information", "Opening {family} listen socket on port {}.", bound.port());
                    self.addrs.push(bound);
                    self.first.push(socket.into());
                    self.listener_of_socket.push(index);
                    self.rebind
                        .push(Some((bound, interface.map(str::to_string))));
                }
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                    // Said as Mosquitto says it ("Error: Address already in use"), with a
                    // non-zero exit.
                    return Err(io::Error::new(e.kind(), "Address already in use"));
                }
                Err(e) if addr.is_ipv6() && (listener.loopback || listener.bind.is_none()) => {
                    log::warn!("Warning: no IPv6 listener on {addr}: {e}");
                }
                Err(e) => {
                    log::error!("Error: cannot listen on {addr}: {e}");
                    return Err(e);
                }
            }
        }
        Ok(())
    }
}

/// One backend per shard, each with its own listening sockets: the first shard's are the
/// ones opened (`first`); the others bind their TCP addresses again (`SO_REUSEPORT`) and
/// share the Unix sockets.
fn shard_backends(
    config: &Config,
    first: Vec<ListenSocket>,
    rebind: &[Option<(SocketAddr, Option<String>)>],
    shards: usize,
) -> io::Result<Vec<Io>> {
    let use_uring = choose_io_backend(config.io_backend)? == "uring";
    let backend = |sockets| -> io::Result<Io> {
        Ok(if use_uring {
            Io::Uring(Uring::new(sockets, config.io_batch_wait_us)?)
        } else {
            Io::Epoll(Epoll::new(sockets)?)
        })
    };
    let mut backends = Vec::with_capacity(shards);
    for _ in 1..shards {
        let sockets = (first.iter().zip(rebind))
            .map(|(socket, rebind)| match rebind {
                Some((addr, interface)) => listen::tcp(*addr, interface.as_deref()).map(Into::into),
                None => socket.try_clone(),
            })
            .collect::<io::Result<Vec<_>>>()?;
        backends.push(backend(sockets)?);
    }
    backends.insert(0, backend(first)?);
    Ok(backends)
}

/// The cores shards are pinned to (`cpu_affinity`): none when it is off.
fn pinned_cores(affinity: &CpuAffinity) -> Vec<core_affinity::CoreId> {
    match affinity {
        CpuAffinity::Auto => core_affinity::get_core_ids().unwrap_or_default(),
        CpuAffinity::Off => Vec::new(),
        CpuAffinity::Cores(list) => list
            .iter()
            .map(|&id| core_affinity::CoreId { id })
            .collect(),
    }
}

/// Each bridge runs on one shard: the one its stored local session is on, or in turn.
fn bridges_by_shard(
    config: &Config,
    store: Option<&crate::persist::start::Store>,
    shards: usize,
) -> Vec<Vec<usize>> {
    let mut bridges_of: Vec<Vec<usize>> = vec![Vec::new(); shards];
    for (index, bridge) in config.bridges.iter().enumerate() {
        let (_, local_id) = crate::bridge::client_ids(bridge);
        let held = store.and_then(|s| s.holder_of(&local_id));
        bridges_of[held.unwrap_or(index % shards)].push(index);
    }
    bridges_of
}

/// What a shard's thread starts with.
struct ShardStart {
    id: usize,
    shared: Arc<Shared>,
    backend: Io,
    receiver: crossbeam_channel::Receiver<crate::router::ShardMsg>,
    /// `cpu_affinity`: the core it is pinned to, unless turned off.
    core: Option<core_affinity::CoreId>,
    /// Its part of the persisted state.
    part: Option<crate::persist::start::ShardStore>,
    bridges: Vec<usize>,
    /// Told whether the shard's new journal was written.
    restored: std::sync::mpsc::Sender<bool>,
    /// Where every shard waits until all have their sessions and bridges.
    ready: Arc<std::sync::Barrier>,
}

impl ShardStart {
    fn spawn(self) -> io::Result<JoinHandle<()>> {
        let id = self.id;
        std::thread::Builder::new()
            .name(format!("midge-shard-{id}"))
            .spawn(move || {
                if let Some(core) = self.core {
                    core_affinity::set_for_current(core);
                }
                let run = || {
                    let mut shard = Shard::new(id, self.shared, self.backend, self.receiver);
                    let mut written = true;
                    if let Some(part) = self.part {
                        written = shard.restore_from(part);
                    }
                    let _ = self.restored.send(written);
                    if !written {
                        return; // The broker does not start (`start_with`).
                    }
                    shard.start_bridges(&self.bridges);
                    shard.start_backend();
                    self.ready.wait();
                    shard.run()
                };
                if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)) {
                    abort_on_shard_panic(id, panic.as_ref());
                }
            })
    }
}

/// A shard that panicked takes the whole process down, on purpose. Its sessions, its
/// connections and its mailbox cannot be recovered from outside it (the other shards' trie
/// entries, registry records and queued handoffs point at it), and a broker that goes on
/// with one shard dead accepts connections it never serves. Aborting lets the service
/// manager (systemd's `Restart=on-failure`) start a whole broker again at once.
fn abort_on_shard_panic(shard: usize, panic: &(dyn std::any::Any + Send)) -> ! {
    let what = panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)");
    log::error!("Error: shard {shard} panicked ({what}); aborting the broker.");
    log::logger().flush();
    std::process::abort();
}

/// Blocks SIGHUP in the calling thread and every thread it starts (the binary's main
/// thread, before any other): no thread takes it with a handler. It stays pending until
/// the reloading thread has counted it (`ReloadSignals::taken`) and only then reads it
/// from a signalfd (`watch_reload_signals`), so at every moment a SIGHUP already sent is
/// either pending (`sigpending`) or counted: a shard about to judge a CONNECT sees one or
/// the other (`shard/reload.rs`), whichever core runs what.
pub fn block_reload_signals() {
    let hup = os::SignalSet::empty().with(libc::SIGHUP);
    let _ = os::thread_signal_mask(os::MaskChange::Block, &hup);
}

/// The reloading thread's loop, on a thread started after `block_reload_signals`: waits
/// for SIGHUP on a signalfd, counts it in `signals.taken` *before* reading it (taking it
/// off the pending set), then calls `reload` and records it applied. Runs until the
/// process ends.
pub fn watch_reload_signals(
    signals: Arc<ReloadSignals>,
    mut reload: impl FnMut(),
) -> io::Result<()> {
    let fd = os::signalfd(&os::SignalSet::empty().with(libc::SIGHUP))?;
    loop {
        if let Err(e) = os::wait_readable(&fd, None) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let taken = signals.taken.fetch_add(1, Ordering::AcqRel) + 1;
        // One signalfd_siginfo: several SIGHUPs sent meanwhile are one pending signal, and
        // one reload covers them.
        let _ = os::read(&fd, &mut [0u8; 128]);
        reload();
        signals.applied.fetch_max(taken, Ordering::AcqRel);
    }
}

/// The backend the shards use, "uring" or "epoll": `auto` takes io_uring where the kernel
/// offers all it needs and otherwise says why, once, and uses epoll; `uring` without it is
/// an error.
pub fn choose_io_backend(choice: IoBackend) -> io::Result<&'static str> {
    match choice {
        IoBackend::Epoll => Ok("epoll"),
        IoBackend::Uring => match uring::available() {
            Ok(()) => Ok("uring"),
            Err(why) => Err(io::Error::other(format!(
                "io_backend uring: {why} (io_backend epoll or auto runs without it)"
            ))),
        },
        IoBackend::Auto => match uring::available() {
            Ok(()) => Ok("uring"),
            Err(why) => {
                log::info!(target: "information", "io_uring is not available ({why}); using epoll.");
                Ok("epoll")
            }
        },
    }
}

/// See `Server::reload`.
fn reload(shared: &Shared, fresh: Config) -> Vec<String> {
    let current = shared.config.load_full();
    let (config, warnings) = current.reloaded(fresh);
    shared.reload(config);
    warnings
}

/// `user`: when running as root, become this user (and its primary group) once the
/// listeners are open, as Mosquitto does: `root` stays root; the default `mosquitto`, if
/// there is no such user, falls back to `nobody`; any other missing user is an error. Not
/// root: nothing to do. Unix socket files go to that user and group first, so that they
/// end as Mosquitto's do (it binds them after dropping privileges).
fn drop_privileges(user: &str, unix_sockets: &[SocketFile]) -> io::Result<()> {
    if !os::is_root() || user == "root" {
        return Ok(());
    }
    let mut user = user;
    let (uid, gid) = match os::user_ids(user)? {
        Some(ids) => ids,
        None if user == "mosquitto" => {
            log::warn!("Warning: Unable to drop privileges to 'mosquitto' because this user does not exist. Trying 'nobody' instead.");
            user = "nobody";
            os::user_ids(user)?
                .ok_or_else(|| io::Error::other("Unable to drop privileges to 'nobody' either"))?
        }
        None => {
            return Err(io::Error::other(format!(
                "Unable to drop privileges to '{user}' because this user does not exist."
            )))
        }
    };
    for file in unix_sockets {
        std::os::unix::fs::chown(file.path(), Some(uid), Some(gid))?;
    }
    os::become_user(user, uid, gid)?;
    log::info!(target: "information", "Running as user {user} (uid {uid}).");
    Ok(())
}

/// The number of shards: `threads`, or one per core (up to `SHARDS_MAX`).
fn shard_count(config: &Config) -> usize {
    match config.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get().min(SHARDS_MAX)),
        n => n,
    }
}

/// Mosquitto's lines for a broker started without a configuration.
fn log_local_only() {
    log::info!(target: "information", "Starting in local only mode. Connections will only be possible from clients running on this machine.");
    log::info!(
        target: "information",
        "Create a configuration file which defines a listener to allow remote access."
    );
}

/// Waits until each of the `shards` has its sessions back and its new journal written; an
/// error if one could not write it.
fn all_restored(
    restored: &std::sync::mpsc::Receiver<bool>,
    shards: usize,
    config: &Config,
) -> io::Result<()> {
    let mut written = true;
    for _ in 0..shards {
        written &= restored.recv().unwrap_or(false);
    }
    if written {
        return Ok(());
    }
    // The files read hold the store until the new journals do: they stay.
    Err(io::Error::other(format!(
        "persistence: cannot write the new journals in {} (the line above says why); the store was left as it is",
        config.persistence_dir().map_or_else(String::new, |d| d.display().to_string())
    )))
}
