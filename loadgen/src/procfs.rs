//! A broker's CPU time and memory, read from /proc (Linux).

/// CPU seconds a process has used, in user space and in the kernel.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CpuTimes {
    pub user_s: f64,
    pub system_s: f64,
}

impl CpuTimes {
    pub fn total_s(self) -> f64 {
        self.user_s + self.system_s
    }

    /// What was used since `start`.
    pub fn since(self, start: CpuTimes) -> CpuTimes {
        CpuTimes {
            user_s: self.user_s - start.user_s,
            system_s: self.system_s - start.system_s,
        }
    }
}

/// The CPU the process has used so far (utime and stime of `/proc/PID/stat`).
pub fn cpu_times(pid: u32) -> Option<CpuTimes> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some(CpuTimes {
        user_s: utime / ticks,
        system_s: stime / ticks,
    })
}

/// Resident memory in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_this_process() {
        let pid = std::process::id();
        let t = super::cpu_times(pid).unwrap();
        assert!(t.user_s >= 0.0 && t.system_s >= 0.0);
        assert!(super::rss_kib(pid).unwrap() > 0);
    }
}
