//! Starting and stopping the broker: listening sockets for every shard, the shared state,
//! one pinned thread per shard.

use socket2::{Domain, Protocol, Socket, Type};
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::config::Config;
use crate::retain::RetainStore;
use crate::router::Mailboxes;
use crate::shard::io::epoll::Epoll;
use crate::shard::io::Waker;
use crate::shard::{Shard, Shared};
use crate::topic::{SubscriptionTree, TreeWriter};

/// Messages one shard's mailbox holds before senders must hold or drop.
const MAILBOX_CAPACITY: usize = 16 * 1024;

pub struct Server {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    /// The addresses actually bound (port 0 resolved).
    pub addrs: Vec<SocketAddr>,
}

/// A listening socket that other shards may bind too (`SO_REUSEPORT`: the kernel spreads
/// new connections across them).
fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
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
        let shards = match config.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        if config.local_only {
            log::info!("Starting in local only mode. Connections will only be possible from clients running on this machine.");
            log::info!(
                "Create a configuration file which defines a listener to allow remote access."
            );
        }
        // Bind the first shard's sockets, resolving port 0 (one port for every address
        // configured with 0, so that tests can ask for any free port).
        let mut first = Vec::new();
        let mut addrs = Vec::new();
        let mut chosen_port = None;
        for listener in &config.listeners {
            let mut addr = listener.addr;
            if addr.port() == 0 {
                if let Some(port) = chosen_port {
                    addr.set_port(port);
                }
            }
            match bind(addr) {
                Ok(socket) => {
                    let bound = socket.local_addr()?;
                    if addr.port() == 0 {
                        chosen_port = Some(bound.port());
                    }
                    let family = if bound.is_ipv4() { "ipv4" } else { "ipv6" };
                    log::info!("Opening {family} listen socket on port {}.", bound.port());
                    addrs.push(bound);
                    first.push(socket);
                }
                Err(e) if addr.is_ipv6() && config.local_only => {
                    log::warn!("Warning: no IPv6 loopback listener on {addr}: {e}");
                }
                Err(e) => {
                    log::error!("Error: cannot listen on {addr}: {e}");
                    return Err(e);
                }
            }
        }
        if first.is_empty() {
            return Err(io::Error::other("no listener could be opened"));
        }
        let mut backends = Vec::with_capacity(shards);
        backends.push(Epoll::new(first)?);
        for _ in 1..shards {
            let sockets = addrs
                .iter()
                .map(|&addr| bind(addr))
                .collect::<io::Result<Vec<_>>>()?;
            backends.push(Epoll::new(sockets)?);
        }
        let wakers: Vec<Arc<dyn Waker>> = backends.iter().map(|b| b.waker()).collect();
        let (mailboxes, receivers) = Mailboxes::new(MAILBOX_CAPACITY, wakers);
        let trie = SubscriptionTree::new();
        let shared = Arc::new(Shared {
            trie_writer: Mutex::new(TreeWriter::new(trie.clone())),
            trie,
            retained: Mutex::new(RetainStore::default()),
            registry: Mutex::new(Default::default()),
            mailboxes,
            next_session: AtomicU64::new(1),
            connections: Default::default(),
            auth_methods,
            shutdown: AtomicBool::new(false),
            stats: (0..shards).map(|_| Default::default()).collect(),
            config,
        });
        let cores = core_affinity::get_core_ids().unwrap_or_default();
        let mut threads = Vec::with_capacity(shards);
        for (id, (backend, receiver)) in backends.into_iter().zip(receivers).enumerate() {
            let shared = shared.clone();
            let core = cores.get(id % cores.len().max(1)).copied();
            let thread = std::thread::Builder::new()
                .name(format!("midge-shard-{id}"))
                .spawn(move || {
                    if let Some(core) = core {
                        core_affinity::set_for_current(core);
                    }
                    Shard::new(id, shared, backend, receiver).run();
                })?;
            threads.push(thread);
        }
        Ok(Server {
            shared,
            threads,
            addrs,
        })
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
        for thread in self.threads {
            let _ = thread.join();
        }
    }

    /// Waits for the shards to stop (after `Stopper::stop`).
    pub fn join(self) {
        for thread in self.threads {
            let _ = thread.join();
        }
    }
}

#[derive(Clone)]
pub struct Stopper(Arc<Shared>);

impl Stopper {
    pub fn stop(&self) {
        self.0.shutdown.store(true, Ordering::Release);
        for shard in 0..self.0.mailboxes.shards() {
            self.0.mailboxes.wake(shard);
        }
    }
}
