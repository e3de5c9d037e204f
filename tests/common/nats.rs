//! A NATS server for the cluster tests: Debian's `nats-server`, on a free loopback port,
//! ended when dropped.

use std::process::{Child, Command, Stdio};
use std::time::Instant;

use super::DEADLINE;

pub struct Nats {
    child: Child,
    pub port: u16,
}

impl Nats {
    /// Starts `nats-server` on a free loopback port and waits until it takes connections.
    pub fn start() -> Nats {
        let port = super::quiet_port();
        // What an earlier run left for the port is not this server's.
        let _ = std::fs::remove_dir_all(Nats::store(port));
        Nats::start_on(port)
    }

    fn store(port: u16) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("midge-test-nats-{port}"))
    }

    /// Starts `nats-server` on `port` (again, after `stop`), with JetStream on (its store
    /// kept under the port's name in the temporary directory: a server started again on
    /// the port finds what it held).
    pub fn start_on(port: u16) -> Nats {
        let store = Nats::store(port);
        Nats::spawn(port, &["-js", "-sd", &store.to_string_lossy()])
    }

    /// `n` NATS servers joined as one NATS cluster (routes between them all).
    pub fn start_cluster(n: usize) -> Vec<Nats> {
        let ports = super::quiet_ports(2 * n);
        let (client_ports, route_ports) = ports.split_at(n);
        let routes: Vec<String> = (route_ports.iter())
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect();
        let name = format!("c{}x{}", std::process::id(), client_ports[0]);
        (0..n)
            .map(|i| {
                let others: Vec<&str> = (0..n)
                    .filter(|&j| j != i)
                    .map(|j| routes[j].as_str())
                    .collect();
                Nats::spawn(
                    client_ports[i],
                    &[
                        "--cluster_name",
                        &name,
                        "--cluster",
                        &routes[i],
                        "--routes",
                        &others.join(","),
                    ],
                )
            })
            .collect()
    }

    fn spawn(port: u16, extra: &[&str]) -> Nats {
        let child = Command::new(super::program("nats-server"))
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "start nats-server (Debian's nats-server package; scripts/test.sh installs it)",
            );
        let until = Instant::now() + DEADLINE;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < until,
                "nats-server never listened on {port}"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Nats { child, port }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Ends the server (SIGKILL) and waits for it.
    pub fn stop(mut self) -> u16 {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.port
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
