#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, every test of the workspace.
# It installs what the tests need, so it passes on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }

step "toolchain components"
if command -v rustup >/dev/null 2>&1; then
  rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
  rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
fi

step "test dependencies"
# Interop tests use Debian's mosquitto clients and paho-mqtt from PyPI; loadgen's end-to-end
# tests measure Debian's mosquitto broker; a TLS test makes an RSA key with Debian's openssl;
# the cluster tests run nodes on Debian's nats-server.
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
if ! command -v mosquitto_pub >/dev/null 2>&1 || ! command -v mosquitto_sub >/dev/null 2>&1 \
  || ! { command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ]; } \
  || ! command -v openssl >/dev/null 2>&1 || ! command -v nats-server >/dev/null 2>&1; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto-clients mosquitto openssl \
    nats-server
fi
if ! python3 -c 'import paho.mqtt.client' >/dev/null 2>&1; then
  python3 -m pip install --quiet --disable-pip-version-check 'paho-mqtt>=2.0,<3'
fi

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo test"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# Every black-box test runs on both I/O backends: the whole workspace on io_uring (where
# this kernel offers it), then the broker's tests again on epoll. The tests pass the
# backend to every broker they start (MIDGE_TEST_IO, see tests/common).
cargo test --workspace --locked --lib --bins --tests --no-run -q
if uring_check=$(target/debug/midge --test-config --io uring 2>&1); then
  first=uring
else
  first=epoll
  printf '\nio_uring is not available on this machine, so both passes run on epoll:\n%s\n' "$uring_check"
fi
# Doc tests are left out: the crates have no doc examples, and a closing "0 passed" line
# would read as a run with no tests.
step "cargo test, I/O backend $first"
set +e
MIDGE_TEST_IO=$first cargo test --workspace --locked --no-fail-fast --lib --bins --tests 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
step "cargo test, I/O backend epoll (the broker's black-box tests)"
MIDGE_TEST_IO=epoll cargo test -p midge --locked --no-fail-fast --tests 2>&1 | tee -a "$log"
second=${PIPESTATUS[0]}
set -e
[ "$status" -eq 0 ] && status=$second
# Hostile clients, all at once, against midge with memory_limit set (short form; the
# long one and Mosquitto beside it: BENCHMARKS.md), on each backend.
step "hostile-clients soak (scripts/hostile-soak.py --quick)"
soak=passed
for io in $(printf "%s\n" "$first" epoll | sort -u); do
  python3 scripts/hostile-soak.py --brokers midge --quick --check --io "$io" \
    --midge target/debug/midge || soak=FAILED
done
if [ "$soak" != passed ] && [ "$status" -eq 0 ]; then status=1; fi
# The Debian package: built, installed on this machine, checked to answer, purged.
step "Debian package (scripts/deb.sh --check)"
if bash scripts/deb.sh --check; then deb=passed; else deb=FAILED; [ "$status" -eq 0 ] && status=1; fi
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "\ntests: %d passed, %d failed (both passes)\n", p, f }' "$log"
# What each failed test printed (its panic, the broker's last log lines), again at the end
# where a CI summary that keeps only the tail shows it.
if grep -q '^---- .* stdout ----$' "$log"; then
  printf '\nfailed tests, what they printed:\n'
  awk '/^---- .* stdout ----$/ { on = 1 } /^failures:$/ { on = 0 } on' "$log" | tail -n 150
fi
echo "Debian package check: $deb"
echo "Hostile-clients soak: $soak"
exit "$status"
