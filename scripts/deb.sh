#!/usr/bin/env bash
# midge's Debian package, built with cargo-deb from the [package.metadata.deb] table in
# Cargo.toml (cargo-deb is installed first if this machine lacks it). The release build
# keeps line tables for profiling; the package's binaries are stripped.
#
#   scripts/deb.sh           builds target/debian/midge_<version>-1_<arch>.deb
#   scripts/deb.sh --check   builds it, installs it on this machine (root, or sudo), checks
#                            the installation and that the installed broker answers with
#                            the installed configuration and keeps a retained message across
#                            a restart as the midge user, then purges the package again.
#
# The check starts the broker itself (systemd is not needed): a drop-in in
# /etc/midge/conf.d moves it from port 1883 to a free loopback port for the test, so a
# broker already on 1883 does not matter. It stops only the process it started.
set -euo pipefail
cd "$(dirname "$0")/.."

check=false
case "${1:-}" in
  --check) check=true ;;
  "") ;;
  *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# dpkg-shlibdeps (Debian's dpkg-dev) works out the package's library dependencies
# ("$auto": libc6 at the version the binaries need).
if ! command -v dpkg-shlibdeps >/dev/null 2>&1; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends dpkg-dev
fi
# cargo-deb: installed where cargo installs tools, pinned so a new release cannot change
# the package under us.
if ! cargo deb --version >/dev/null 2>&1; then
  cargo install --quiet --locked cargo-deb --version '^3.8'
fi
deb=$(cargo deb --locked --strip | tail -n 1)
[ -f "$deb" ] || { echo "cargo deb did not say where the package is" >&2; exit 1; }
echo "package: $deb"
$check || exit 0

# ---- install and check ---------------------------------------------------------------
fail() { echo "deb check FAILED: $*" >&2; exit 1; }
dropin=/etc/midge/conf.d/zz-deb-check.conf
log=$(mktemp)
pid=
cleanup() {
  if [ -n "$pid" ]; then as_root kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  as_root rm -f "$dropin"
  as_root env DEBIAN_FRONTEND=noninteractive dpkg --purge midge >/dev/null 2>&1 || true
  rm -f "$log"
}
if dpkg-query -W -f='${Status}' midge 2>/dev/null | grep -q 'ok installed'; then
  echo "deb check refused: a midge package is installed here already, and the check would" >&2
  echo "replace it and purge it afterwards; remove it first (dpkg --purge midge)." >&2
  exit 1
fi
trap cleanup EXIT

# The package depends on adduser (for its postinst); dpkg alone does not fetch it.
if ! dpkg-query -W -f='${Status}' adduser 2>/dev/null | grep -q 'ok installed'; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq adduser
fi
as_root env DEBIAN_FRONTEND=noninteractive dpkg -i "$deb"

for f in /usr/bin/midge /usr/bin/midge-pub /usr/bin/midge-sub /usr/bin/midge-passwd; do
  [ -x "$f" ] || fail "$f is not installed"
done
dpkg-deb -f "$deb" Depends | grep -q 'libc6' \
  || fail "the package does not name its libc6 dependency (dpkg-shlibdeps?)"
[ -f /etc/midge/midge.conf ] || fail "/etc/midge/midge.conf is missing"
[ -d /etc/midge/conf.d ] || fail "/etc/midge/conf.d is missing"
dpkg-query -W -f='${Conffiles}\n' midge | grep -q ' /etc/midge/midge.conf ' \
  || fail "/etc/midge/midge.conf is not a conffile (an upgrade would overwrite edits)"
unit=$(dpkg -L midge | grep '/systemd/system/midge.service$') || fail "no systemd unit"
getent passwd midge >/dev/null || fail "no midge user"
[ "$(stat -c %U /var/lib/midge)" = midge ] || fail "/var/lib/midge is not midge's"
if command -v systemd-analyze >/dev/null 2>&1; then
  # Offline: the unit's syntax and the commands it names.
  systemd-analyze verify --man=no "$unit" || fail "systemd-analyze verify $unit"
fi
# The default configuration passes its own check and is local only.
/usr/bin/midge --test-config -c /etc/midge/midge.conf | tee "$log"
grep -q '1883' "$log" || fail "the default configuration does not listen on 1883"
if grep -E 'listen' "$log" | grep -vqE '127\.0\.0\.1|::1|localhost|loopback'; then
  fail "the default configuration listens beyond the loopback interface"
fi

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
printf 'listener %s 127.0.0.1\nallow_anonymous true\n' "$port" | as_root tee "$dropin" >/dev/null

start_broker() {
  : >"$log"
  # As root, as an init system would start it without the unit: it drops to midge.
  if [ "$(id -u)" -eq 0 ]; then
    /usr/bin/midge -c /etc/midge/midge.conf >"$log" 2>&1 &
  else
    sudo /usr/bin/midge -c /etc/midge/midge.conf >"$log" 2>&1 &
  fi
  pid=$!
  local until=$((SECONDS + 20))
  until /usr/bin/midge-pub -p "$port" -t deb/ping -n -q 0 2>/dev/null; do
    kill -0 "$pid" 2>/dev/null || { cat "$log"; fail "the installed broker exited"; }
    [ "$SECONDS" -lt "$until" ] || { cat "$log"; fail "the installed broker does not answer"; }
    sleep 0.1
  done
}
stop_broker() {
  as_root kill -TERM "$pid"
  wait "$pid" || true
  pid=
}

start_broker
/usr/bin/midge-pub -p "$port" -t deb/check -m "kept across restarts" -q 1 -r \
  || fail "publishing to the installed broker"
got=$(/usr/bin/midge-sub -p "$port" -t deb/check -C 1 -W 10) || fail "subscribing"
[ "$got" = "kept across restarts" ] || fail "got '$got'"
# midge itself, or sudo's child (read from /proc: minimal machines have no ps).
broker=$pid
if [ "$(id -u)" -ne 0 ]; then read -r broker _ <"/proc/$pid/task/$pid/children"; fi
uid=$(awk '/^Uid:/ { print $2 }' "/proc/$broker/status")
[ "$uid" = "$(id -u midge)" ] || fail "the broker runs as uid $uid, not as midge"
stop_broker
grep -q 'midge version .* terminating' "$log" || { cat "$log"; fail "no clean stop"; }
[ -n "$(find /var/lib/midge -type f -user midge)" ] \
  || fail "nothing persisted in /var/lib/midge by the midge user"
start_broker
got=$(/usr/bin/midge-sub -p "$port" -t deb/check -C 1 -W 10) || fail "subscribing after the restart"
[ "$got" = "kept across restarts" ] || fail "after the restart, got '$got'"
stop_broker
echo "deb check passed: $deb installs, runs as midge from /etc/midge/midge.conf, answers and persists"
