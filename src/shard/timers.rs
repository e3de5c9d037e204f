//! What a shard does on its timer tick: connect timeouts and keepalives, due wills, session
//! expiry, `$SYS`, and giving freed memory back once the shard goes quiet.

use std::time::Duration;

use super::io::Backend;
use super::{close, Shard};

/// Tracks when a shard goes quiet after working: mimalloc gives freed pages back to the
/// system only when the thread that freed them allocates again, so a shard gone quiet after
/// a burst (a subscribe storm, a flood of retained messages) would hold that memory until
/// its next client speaks.
#[derive(Debug, Default)]
pub(in crate::shard) struct Quiet {
    worked_this_tick: bool,
    worked_since_release: bool,
}

impl Quiet {
    pub(super) fn worked(&mut self) {
        self.worked_this_tick = true;
    }

    /// At a tick: true when the shard worked since the last release but not during the tick
    /// just ended, so a busy shard never pays for a release, and a quiet one pays once.
    pub(super) fn tick(&mut self) -> bool {
        let release = !self.worked_this_tick && self.worked_since_release;
        self.worked_since_release =
            (self.worked_since_release || self.worked_this_tick) && !release;
        self.worked_this_tick = false;
        release
    }
}

impl<B: Backend> Shard<B> {
    pub(super) fn check_timers(&mut self) {
        let now = self.clock.now;
        let stamp = self.stamp();
        let connect_timeout = Duration::from_secs(self.config.connect_timeout_s);
        let idle_max = Some(self.config.client_idle_timeout_s)
            .filter(|&s| s > 0)
            .map(Duration::from_secs);
        let mut expired = Vec::new();
        for c in self.conns.iter().flatten() {
            if c.link().is_some() {
                // A bridge keeps its own deadlines (`shard/bridges/`).
                continue;
            }
            if c.session.is_none() && !c.awaits_session() {
                if c.last_rx.older_than(connect_timeout, stamp) {
                    expired.push((c.id, false));
                }
            } else if (c.waits_for_cluster_since()).is_some_and(|since| {
                since.older_than(crate::cluster::sessions::ANSWER_WAIT_MAX, stamp)
            }) {
                // The cluster's answer was lost (a shard's mailbox full for too long): the
                // client connects again.
                expired.push((c.id, false));
            } else if c.held.waits_for_broker() {
                // Not read until it reads what waits for it, or until its SUBSCRIBE is
                // handled: its silence is the broker's doing, not the client's (the keep
                // alive counts again once it is read; a peer that is gone fails the
                // socket's writes instead).
            } else if c.keepalive_s > 0 {
                // [MQTT-3.1.2-24] one and a half keep alive periods of silence.
                let limit = Duration::from_millis(u64::from(c.keepalive_s) * 1500);
                if c.last_rx.older_than(limit, stamp) {
                    expired.push((c.id, true));
                }
            } else if idle_max.is_some_and(|max| c.last_rx.older_than(max, stamp)) {
                // client_idle_timeout: keepalive 0 says nothing about a vanished peer.
                expired.push((c.id, true));
            }
        }
        for (conn, connected) in expired {
            if connected {
                self.keepalive_expired(conn);
            } else {
                self.connection_lost(conn, close::CloseReason::ConnectTimeout);
            }
        }
        if !self.links.is_empty() {
            self.check_bridges();
        }
        #[cfg(debug_assertions)]
        self.check_invariants();
        self.publish_due_wills(now);
        self.expire_sessions(now);
        self.end_overdue_replays(now);
        self.write_records();
        self.sys_tick(now);
        if self.clock.quiet.tick() {
            // All of it, not only pages past mimalloc's purge delay: its arenas wait ten
            // times that (100 ms), and a shard that stays quiet gets no later chance (a
            // session of 100,000 subscriptions ending kept 117 MB until the next burst).
            crate::os::release_freed_memory(true);
            self.backend.release_idle_memory();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Quiet;

    #[test]
    fn releases_once_per_quiet_spell_after_work() {
        let mut quiet = Quiet::default();
        assert!(!quiet.tick(), "nothing done yet");
        quiet.worked();
        assert!(!quiet.tick(), "busy during the tick");
        assert!(quiet.tick(), "a quiet tick after work");
        assert!(!quiet.tick(), "released already");
        quiet.worked();
        quiet.worked();
        assert!(!quiet.tick());
        quiet.worked();
        assert!(!quiet.tick(), "still busy");
        assert!(quiet.tick());
    }
}
