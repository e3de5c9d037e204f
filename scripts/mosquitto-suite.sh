#!/usr/bin/env bash
# Runs Mosquitto's own broker test suite (test/broker/ of eclipse/mosquitto, tag v2.0.11,
# the version Debian ships) against midge, as a Mosquitto user would: the suite starts
# `../../src/mosquitto`, and here that path is a wrapper that runs midge with the same
# arguments. Nothing of Mosquitto's is copied into this repository: the suite is read from
# a snapshot you fetch (a git directory or a checkout), laid out in a temporary directory.
#
#   scripts/mosquitto-suite.sh SNAPSHOT_DIR [TEST.py ...]
#
# Prints one line per test (result, category, seconds) and `N passed / M run`, plus the
# passes per category. Categories outside this suite's scope for now (plugins, dynamic
# security, bridges, TLS, persistence) are run and reported apart. Logs of each test are
# kept in the temporary directory printed at the end. Env: MIDGE_SUITE_JOBS (parallel
# tests, default 4), MIDGE_SUITE_TIMEOUT (seconds per test, default 60),
# MIDGE_SUITE_TAG (default v2.0.11), MIDGE_SUITE_IO (midge's --io backend; default: its own).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
snapshot=${1:?usage: scripts/mosquitto-suite.sh SNAPSHOT_DIR [TEST.py ...]}
shift
tag=${MIDGE_SUITE_TAG:-v2.0.11}

cargo build --release --bin midge --bin midge-passwd >&2
work=$(mktemp -d /tmp/midge-mosquitto-suite.XXXXXX)

# The test tree at the tag, from a git directory or a work tree.
if git --git-dir="$snapshot" rev-parse --verify -q "$tag^{commit}" >/dev/null 2>&1; then
    git --git-dir="$snapshot" archive "$tag" test | tar -x -C "$work"
elif git -C "$snapshot" rev-parse --verify -q "$tag^{commit}" >/dev/null 2>&1; then
    git -C "$snapshot" archive "$tag" test | tar -x -C "$work"
elif [ -d "$snapshot/test/broker" ]; then
    cp -r "$snapshot/test" "$work/"
else
    echo "no test/broker in $snapshot (nor tag $tag)" >&2
    exit 2
fi

# The tag's test certificates expire (v2.0.11's in February 2025): made again, under the same
# names, with the tag's own script, when the server's has (needs Debian's openssl).
ssl="$work/test/ssl"
if [ -f "$ssl/gen.sh" ] && ! openssl x509 -checkend 0 -noout -in "$ssl/server.crt" >/dev/null 2>&1; then
  echo "the suite's test certificates have expired: making them again with its test/ssl/gen.sh" >&2
  (cd "$ssl" && sh gen.sh >"$work/ssl-gen.log" 2>&1) || { echo "gen.sh failed: $work/ssl-gen.log" >&2; exit 2; }
fi

# The broker and password tool the suite calls, at the paths it calls them by.
mkdir -p "$work/src" "$work/apps/mosquitto_passwd"
printf '#!/bin/sh\nexec %q %s "$@"\n' "$root/target/release/midge" "${MIDGE_SUITE_IO:+--io $MIDGE_SUITE_IO}" \
  >"$work/src/mosquitto"
printf '#!/bin/sh\nexec %q "$@"\n' "$root/target/release/midge-passwd" \
    >"$work/apps/mosquitto_passwd/mosquitto_passwd"
chmod +x "$work/src/mosquitto" "$work/apps/mosquitto_passwd/mosquitto_passwd"

# Run as root, the broker drops to the user `mosquitto` (as Mosquitto would); the tests
# keep their persistence files in the test directory, so that user may write there (the
# suite expects to run as an ordinary user, who owns it).
chmod 755 "$work" "$work/test"
chmod 1777 "$work/test/broker"

export MIDGE_SUITE_DIR="$work/test/broker"
python3 - "$@" <<'EOF'
import os, re, subprocess, sys, time

broker_dir = os.environ["MIDGE_SUITE_DIR"]
jobs = int(os.environ.get("MIDGE_SUITE_JOBS", "4"))
timeout = float(os.environ.get("MIDGE_SUITE_TIMEOUT", "60"))

# The suite's own list (test.py): (ports, script). Files it names that the tag lacks are
# reported as missing, not failed.
listing = open(os.path.join(broker_dir, "test.py")).read()
tests = [(int(n), p[2:]) for n, p in re.findall(r"^\s*\((\d+),\s*'(\./[^']+)'\)", listing, re.M)]
if sys.argv[1:]:
    wanted = {os.path.basename(a) for a in sys.argv[1:]}
    tests = [t for t in tests if t[1] in wanted]

def category(name):
    try:
        source = open(os.path.join(broker_dir, name)).read()
    except OSError:
        source = ""
    if name.startswith("14-dynsec"):
        return "dynamic-security"
    if "plugin" in name or name.startswith("09-extended-auth") or name == "09-auth-bad-method.py":
        return "plugins"
    if name.startswith("06-bridge"):
        return "bridges"
    if name.startswith("08-"):
        return "tls"
    if "persist" in name or "persistence true" in source:
        return "persistence"
    return "core"

free_ports = list(range(21888, 21888 + 3 * jobs + 3))
queue = list(tests)
running = []
results = []
start = time.time()
while queue or running:
    while queue and len(running) < jobs:
        ports_needed, name = queue[0]
        if len(free_ports) < ports_needed:
            break
        queue.pop(0)
        path = os.path.join(broker_dir, name)
        if not os.path.exists(path):
            results.append((name, "missing", 0.0))
            continue
        ports = [free_ports.pop(0) for _ in range(ports_needed)]
        log = open(os.path.join(broker_dir, name + ".log"), "wb")
        proc = subprocess.Popen([sys.executable, name] + [str(p) for p in ports],
                                cwd=broker_dir, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        running.append((proc, name, ports, time.time(), log))
    time.sleep(0.05)
    for entry in list(running):
        proc, name, ports, began, log = entry
        elapsed = time.time() - began
        if proc.poll() is None and elapsed < timeout:
            continue
        if proc.returncode is None:
            # Our own test process group: the test and the broker it started.
            os.killpg(proc.pid, 9)
            proc.wait()
            outcome = "timeout"
        else:
            outcome = "pass" if proc.returncode == 0 else "FAIL"
            # A broker the test left behind would hold the port.
            try:
                os.killpg(proc.pid, 9)
            except ProcessLookupError:
                pass
        log.close()
        running.remove(entry)
        free_ports.extend(ports)
        results.append((name, outcome, elapsed))

results.sort()
by_cat = {}
for name, outcome, elapsed in results:
    cat = category(name)
    print(f"{outcome:8} {cat:17} {elapsed:6.1f}s  {name}")
    c = by_cat.setdefault(cat, [0, 0])
    c[1] += outcome != "missing"
    c[0] += outcome == "pass"
run = sum(c[1] for c in by_cat.values())
passed = sum(c[0] for c in by_cat.values())
print()
for cat, (p, n) in sorted(by_cat.items()):
    print(f"{cat:17} {p} passed / {n} run")
print(f"{passed} passed / {run} run in {time.time() - start:.0f} s")
print(f"logs: {broker_dir}/*.log")
EOF
