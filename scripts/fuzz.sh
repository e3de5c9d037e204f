#!/usr/bin/env bash
# Fuzzes with cargo fuzz (libFuzzer) for a bounded time.
#   scripts/fuzz.sh [SECONDS] [TARGET]     default 120 seconds, target decode
# Targets: decode (the packet decoder), shard (two shards on the simulated backend fed
# arbitrary bytes from many clients; the shards' invariants checked after every step).
# The stable toolchain runs it with RUSTC_BOOTSTRAP=1 (cargo fuzz needs -Z flags).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds=${1:-120}
target=${2:-decode}
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
case "$target" in
  decode) seeds=seeds max_len=4200 ;;
  shard) seeds=seeds-shard max_len=8192 ;;
  *) echo "unknown target $target (decode, shard)" >&2; exit 2 ;;
esac
mkdir -p "corpus/$target"
cp -n "$seeds"/* "corpus/$target/" 2>/dev/null || true
RUSTC_BOOTSTRAP=1 cargo fuzz run "$target" "corpus/$target" -- \
  -max_total_time="$seconds" -max_len="$max_len" -rss_limit_mb=2048
