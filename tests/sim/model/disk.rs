//! The broker persisting to a simulated disk (`midge::persist::storage::sim`): by the
//! seed, the machine crashes at any storage operation or between two turns, the disk
//! fills up, writes and syncs fail with EIO for a while, bits flip in what a start reads,
//! and compactions are asked for. After a crash the broker starts again through the real
//! recovery, and the model's promises hold across it: every message acknowledged to its
//! publisher reaches every persistent session subscribed before it (subscriptions whose
//! SUBACK came back, sessions whose CONNACK came back), QoS 2 once, in order.
//!
//! A start that a flipped bit refuses must name the file the bit was in; it is started
//! again (the bit reads right the next time, as after a transient fault).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use midge::config::Config;
use midge::persist::storage::sim::{Faults, SimStorage};
use midge::persist::SyncPolicy;
use midge::shard::clock::ManualClock;

use super::{Sim, World};

pub struct Disk {
    pub storage: SimStorage,
    config: Config,
    shards: usize,
    /// The step at which the fault episode under way ends.
    episode_ends: Option<u64>,
    /// Starts after a crash, and those a flipped bit refused (then started again).
    pub restarts: u64,
    pub refused: u64,
}

impl Disk {
    /// The broker on an empty simulated disk.
    pub(super) fn start(seed: u64, shards: usize, mut config: Config) -> (Sim, Disk) {
        config.persistence = true;
        config.persistence_location = Some("/sim".into());
        config.persistence_sync = SyncPolicy::Always;
        let storage = SimStorage::new(seed ^ 0xd15c);
        let clock = Arc::new(ManualClock::new());
        let sim = Sim::with_store(shards, config.clone(), &storage, clock)
            .expect("an empty store starts");
        let disk = Disk {
            storage,
            config,
            shards,
            episode_ends: None,
            restarts: 0,
            refused: 0,
        };
        (sim, disk)
    }
}

impl World {
    fn disk(&mut self) -> &mut Disk {
        self.disk.as_mut().expect("a simulated disk")
    }

    /// After a turn: if the machine crashed in it, it starts again (true). Otherwise, by
    /// chance, it crashes now or at a later storage operation, a fault episode begins or
    /// ends, or a compaction is asked for (as SIGUSR1 does).
    pub(super) fn disk_step(&mut self) -> bool {
        if self.disk().storage.crashed() {
            self.restart();
            return true;
        }
        let steps = self.steps;
        match self.rng.below(1000) {
            0 => {
                self.disk().storage.crash_now();
                self.restart();
                return true;
            }
            1..=2 => {
                let ops = 1 + self.rng.below(40) as u64;
                self.trace_disk(&format!("crash at storage operation {ops} from now"));
                self.disk().storage.crash_after(ops);
            }
            3..=5 if self.disk().episode_ends.is_none() => self.fault_episode(),
            6..=8 => {
                self.trace_disk("compaction asked for");
                let shared = self.sim.shards[0].shared();
                shared.compactions_asked.fetch_add(1, Ordering::AcqRel);
            }
            _ => {}
        }
        if self.disk().episode_ends.is_some_and(|end| steps >= end) {
            self.trace_disk("the disk is well again");
            self.disk().episode_ends = None;
            self.disk().storage.set_faults(Faults::default());
        }
        false
    }

    /// For 20 to 150 steps the disk is full, or fails writes, or fails syncs.
    fn fault_episode(&mut self) {
        let faults = match self.rng.below(3) {
            0 => Faults {
                capacity: Some(self.disk().storage.used() + self.rng.below(4096) as u64),
                ..Default::default()
            },
            1 => Faults {
                write_eio: 50 + self.rng.below(500) as u32,
                ..Default::default()
            },
            _ => Faults {
                sync_eio: 50 + self.rng.below(500) as u32,
                ..Default::default()
            },
        };
        let ends = self.steps + 20 + self.rng.below(130) as u64;
        self.trace_disk(&format!("{faults:?} until step {ends}"));
        let disk = self.disk();
        disk.storage.set_faults(faults);
        disk.episode_ends = Some(ends);
    }

    fn trace_disk(&self, what: &str) {
        if self.trace {
            eprintln!("{} disk: {what}", self.steps);
        }
    }

    /// The machine crashed: every connection is gone, and the broker starts again on what
    /// the disk kept (sometimes reading a flipped bit, which must stop the start naming the
    /// file, or be harmless).
    fn restart(&mut self) {
        self.trace_disk("crashed; starting again");
        for client in &mut self.clients {
            client.conn = None;
            client.connacked = false;
            client.subscribing.clear();
            client.inbox.clear();
            if !client.persistent {
                client.publishing.clear();
                client.awaiting_pubrel.clear();
            }
        }
        let flip = self.rng.chance(15);
        let clock = self.sim.clock.clone();
        let disk = self.disk.as_mut().expect("a simulated disk");
        disk.restarts += 1;
        disk.episode_ends = None;
        loop {
            disk.storage.restart();
            if self.trace {
                eprintln!("disk: {:?}", disk.storage.files());
                let dir = disk.config.persistence_dir().expect("persistence");
                if std::env::var_os("MIDGE_SIM_DUMP").is_some() {
                    use midge::persist::storage::Storage;
                    for (path, _) in disk.storage.files() {
                        if !path.to_string_lossy().ends_with(".journal") {
                            continue;
                        }
                        let bytes = bytes::Bytes::from(disk.storage.read(&path).unwrap());
                        eprintln!("dump {}", path.display());
                        let _ = midge::persist::format::read_each(&bytes, |r| {
                            eprintln!("dump   {r:?}");
                            Ok(())
                        });
                    }
                }
                let clock = midge::persist::WallClock::now();
                if let Ok(r) =
                    midge::persist::recover::recover(&disk.storage, &dir, &clock, false, None)
                {
                    for s in r.sessions {
                        let ids: Vec<u16> = s.in_flight.iter().map(|f| f.packet_id).collect();
                        eprintln!(
                            "disk: {} claim {} in flight {ids:?} queued {}",
                            s.client_id,
                            s.claim,
                            s.queued.len()
                        );
                    }
                }
            }
            let flipped_before = disk.storage.flipped().len();
            if flip {
                disk.storage.set_faults(Faults {
                    read_flip: 300,
                    ..Default::default()
                });
            }
            let started = Sim::with_store(
                disk.shards,
                disk.config.clone(),
                &disk.storage,
                clock.clone(),
            );
            let flipped = disk.storage.flipped()[flipped_before..].to_vec();
            disk.storage.set_faults(Faults::default());
            match started {
                Ok(sim) => {
                    if self.trace && !flipped.is_empty() {
                        eprintln!("{} disk: started despite flips at {flipped:?}", self.steps);
                    }
                    self.sim = sim;
                    return;
                }
                Err(e) => {
                    assert!(
                        !flipped.is_empty(),
                        "the broker does not start after a crash: {e}"
                    );
                    let named = (flipped.iter())
                        .any(|(path, _)| e.contains(path.to_string_lossy().as_ref()));
                    assert!(named, "a refused start ({e}) names no file of {flipped:?}");
                    if self.trace {
                        eprintln!("{} disk: start refused: {e}", self.steps);
                    }
                    disk.refused += 1;
                    // Started again; the bit reads right this time.
                    disk.storage.crash_now();
                }
            }
        }
    }

    /// Before the final check: the disk is well, nothing is set to crash, and time passes
    /// for a rewrite that waits for its pause.
    pub(super) fn disk_heals(&mut self) {
        let Some(disk) = &mut self.disk else {
            return;
        };
        disk.storage.set_faults(Faults::default());
        disk.storage.cancel_crash();
        disk.episode_ends = None;
        if disk.storage.crashed() {
            self.restart();
        }
        self.sim.clock.advance(Duration::from_millis(2100));
    }

    /// After the final check: one more crash and start, and every persistent session is
    /// there [MQTT-3.2.2-2] (checked at its CONNACK).
    pub(super) fn restart_and_check_sessions(&mut self) {
        let Some(disk) = &mut self.disk else {
            return;
        };
        disk.storage.crash_now();
        self.restart();
        let persistent: Vec<usize> = (0..self.clients.len())
            .filter(|&c| self.clients[c].persistent)
            .collect();
        for &c in &persistent {
            self.connect(c);
        }
        for _ in 0..50 {
            for shard in 0..self.sim.shards.len() {
                self.sim.step(shard);
            }
            for c in 0..self.clients.len() {
                self.read(c);
            }
            if persistent.iter().all(|&c| self.clients[c].connacked) {
                return;
            }
        }
        panic!("persistent clients were not answered after the last start");
    }
}
