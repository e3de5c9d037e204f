//! Reloaded settings (SIGHUP): taken at the start of a turn (after waiting for a reload a
//! signal has just asked for) and applied to what a shard already has: clients the new
//! security settings refuse, and subscriptions the new ACL does not allow.

use super::io::Backend;
use super::trie_ops::TrieOp;
use super::Shard;
use crate::codec::ReasonCode;
use std::time::Duration;

/// How long a shard holds a turn for a reload a SIGHUP asked for (a reload reads a few
/// small files).
const RELOAD_WAIT_MAX: Duration = Duration::from_secs(2);

/// Whether a SIGHUP is pending for this process: sent, and not yet read by the reloading
/// thread (which counts it first: `server::watch_reload_signals`). `sigpending` reports
/// only signals the calling thread blocks; every thread blocks SIGHUP, and the mask is
/// blocked for the check anyway and put back as it was.
fn sighup_pending() -> bool {
    use crate::os::{pending_signals, thread_signal_mask, MaskChange, SignalSet};
    let hup = SignalSet::empty().with(libc::SIGHUP);
    let Ok(old) = thread_signal_mask(MaskChange::Block, &hup) else {
        return false;
    };
    let is = pending_signals().is_ok_and(|p| p.contains(libc::SIGHUP));
    let _ = thread_signal_mask(MaskChange::Set, &old);
    is
}

impl<B: Backend> Shard<B> {
    /// Applies reloaded settings, waiting first for a reload a SIGHUP has just asked for: a
    /// client that connects after a reload is judged by the new settings.
    pub(super) fn take_new_settings(&mut self) {
        self.wait_for_pending_reload();
        if let Some(config) = self.shared.new_config(self.id) {
            self.config = config;
            self.output.memory.limit = self.config.write_bytes_max();
            self.recheck_clients();
        }
    }

    /// A SIGHUP has arrived and its reload is still being read: hold what this turn brought
    /// in until it is applied, at most `RELOAD_WAIT_MAX`.
    fn wait_for_pending_reload(&self) {
        let signals = &self.shared.reload_signals;
        if !signals.pending() {
            return;
        }
        let until = std::time::Instant::now() + RELOAD_WAIT_MAX;
        while signals.pending() && std::time::Instant::now() < until {
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Before a CONNECT is judged: a SIGHUP already sent is either still pending or already
    /// counted (the reloading thread counts it before it reads it). While it is pending,
    /// wait for it to be read; then wait for its reload (together at most
    /// `RELOAD_WAIT_MAX`), so that a client connecting after `kill -HUP` returned meets the
    /// new settings. One `sigpending` per CONNECT.
    pub(super) fn take_settings_for_connect(&mut self) {
        if sighup_pending() {
            let until = std::time::Instant::now() + RELOAD_WAIT_MAX;
            while sighup_pending() && std::time::Instant::now() < until {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        self.take_new_settings();
    }

    /// After a reload: clients the new security settings would not let in are disconnected
    /// (anonymous ones when anonymous access ends, users removed from the password file or
    /// whose password changed, client ids outside `clientid_prefixes`), as Mosquitto does,
    /// and subscriptions the new ACL does not allow are revoked. The others carry on.
    pub(super) fn recheck_clients(&mut self) {
        let mut refused = Vec::new();
        let (sessions, changes) = self.sessions.values_recording();
        for session in sessions {
            let security = self.config.security(session.listener());
            // acl_strict_subscribe: subscriptions the new ACL no longer allows are revoked,
            // online or offline (deliveries are checked against the new ACL anyway).
            if let Some(acl) = security
                .acl
                .as_ref()
                .filter(|_| security.acl_strict_subscribe)
            {
                let (user, id) = (session.username(), &session.client_id);
                let revoked: Vec<compact_str::CompactString> = (session.subscriptions().keys())
                    .filter(|filter| {
                        crate::topic::parse_filter(filter)
                            .is_ok_and(|f| !acl.check_subscribe(user, id, f.filter()))
                    })
                    .cloned()
                    .collect();
                for filter in revoked {
                    log::info!(
                        "Subscription of {} to {filter} revoked by the reloaded ACL.",
                        session.client_id
                    );
                    session.unsubscribe(&filter, changes);
                    self.subs.trie.ops.push(TrieOp::Unsubscribe {
                        filter,
                        session: session.id,
                    });
                }
            }
            let Some(conn) = session.conn else { continue };
            let prefix_ok = self
                .config
                .clientid_prefixes
                .as_ref()
                .is_none_or(|p| session.client_id.starts_with(p.as_str()));
            let allowed = prefix_ok && security.lets_in(session.username(), session.password());
            if !allowed {
                refused.push((conn, session.client_id.clone()));
            }
        }
        for (conn, client_id) in refused {
            log::info!("Client {client_id} is no longer authorised after a reload, disconnecting.");
            self.disconnect_with(
                conn,
                ReasonCode::NotAuthorized,
                "not authorised after a reload",
            );
        }
    }
}
