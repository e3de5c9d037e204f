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

/// Makes sure this process may open `needed` file descriptors: raises the soft
/// `RLIMIT_NOFILE` towards the hard limit if it must, and says clearly when even that is
/// too low (instead of connections failing one by one later). Returns the limit in force.
pub fn ensure_fd_limit(needed: u64) -> Result<u64, String> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write the plain struct passed to them.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(format!(
            "cannot read RLIMIT_NOFILE: {}",
            std::io::Error::last_os_error()
        ));
    }
    if limit.rlim_cur >= needed {
        return Ok(limit.rlim_cur);
    }
    let raised = libc::rlimit {
        rlim_cur: needed.min(limit.rlim_max),
        rlim_max: limit.rlim_max,
    };
    // SAFETY: as above.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 && raised.rlim_cur >= needed {
        return Ok(raised.rlim_cur);
    }
    Err(format!(
        "this run needs about {needed} file descriptors, and loadgen may open {} (hard limit {}): raise it (ulimit -n {needed}) or use fewer clients",
        limit.rlim_cur, limit.rlim_max
    ))
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
        assert!(super::ensure_fd_limit(16).is_ok());
        let impossible = super::ensure_fd_limit(u64::MAX).unwrap_err();
        assert!(impossible.contains("file descriptors"), "{impossible}");
        assert!(super::rss_kib(pid).unwrap() > 0);
    }
}
