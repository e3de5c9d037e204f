#!/usr/bin/env bash
# Fuzzes the packet decoder with cargo fuzz (libFuzzer) for a bounded time.
#   scripts/fuzz.sh [SECONDS]        default 120
# The stable toolchain runs it with RUSTC_BOOTSTRAP=1 (cargo fuzz needs -Z flags).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds=${1:-120}
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
mkdir -p corpus/decode
cp -n seeds/* corpus/decode/ 2>/dev/null || true
RUSTC_BOOTSTRAP=1 cargo fuzz run decode corpus/decode -- \
  -max_total_time="$seconds" -max_len=4200 -rss_limit_mb=1024
