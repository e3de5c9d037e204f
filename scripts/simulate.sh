#!/usr/bin/env bash
# The deterministic simulation of the broker (tests/simulation.rs) with random seeds, for a
# while: shards on the simulated backend, a random workload of clients, and a model of what
# they must see. CI runs a fixed set of seeds; this looks further.
#
#   scripts/simulate.sh [SECONDS] [SHARDS]     # default: 600 seconds, 2 shards
#   MIDGE_SIM_DISK=1 scripts/simulate.sh ...   # the broker persists to a simulated disk that
#                                              # crashes, fills up, fails writes and syncs and
#                                              # flips bits (tests/sim/model/disk.rs)
#   MIDGE_SIM_SEED=N scripts/simulate.sh       # replay one seed: prints a digest of every packet,
#                                              # the same in every run (MIDGE_SIM_TRACE=1 to trace it)
set -euo pipefail
cd "$(dirname "$0")/.."
export MIDGE_SIM_SECONDS="${1:-600}"
export MIDGE_SIM_SHARDS="${2:-2}"
exec cargo test --release --test simulation random_workloads_for_a_while -- --ignored --nocapture
