//! Debian's Mosquitto, started by a test (interop, and the database midge takes over).

use super::*;

/// Debian's mosquitto on a loopback port with `config` (its `listener` line is added).
pub struct Mosquitto {
    child: Child,
    pub port: u16,
}

impl Mosquitto {
    pub fn start(name: &str, config: &str) -> Mosquitto {
        Mosquitto::start_on(name, config, quiet_port())
    }

    /// As `start`, on `port` (a restart on the port it had).
    pub fn start_on(name: &str, config: &str, port: u16) -> Mosquitto {
        let conf = config_file(name, &format!("listener {port} 127.0.0.1\n{config}"));
        let child = Command::new(program("mosquitto"))
            .args(["-c", &conf])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start Debian's mosquitto");
        let until = Instant::now() + DEADLINE;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < until, "mosquitto does not listen");
            std::thread::sleep(Duration::from_millis(10));
        }
        Mosquitto { child, port }
    }

    /// SIGTERM (Mosquitto saves its database then) and the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        // SAFETY: kill(2) on the PID of the child this test started and has not reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let until = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < until, "mosquitto is still running");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
