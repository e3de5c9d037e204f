#!/usr/bin/env bash
# midge against Debian's mosquitto: the same loadgen scenarios against each, in one run, on
# free loopback ports; prints both figures and their ratio, and keeps the raw JSON.
#
#   scripts/compare.sh [--quick]
#
# Pinning (2-core machines): each broker on core 1 (midge with one shard), loadgen on core 0.
# Figures move from run to run on a shared machine: compare the ratios.
set -euo pipefail
cd "$(dirname "$0")/.."

duration=8 warmup=2
if [ "${1:-}" = "--quick" ]; then duration=3 warmup=1; fi

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
export PATH="$PATH:/usr/sbin"
if ! command -v mosquitto >/dev/null 2>&1; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto
fi
cargo build --release -q -p midge -p loadgen
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

out=target/compare/$(date +%Y%m%d-%H%M%S)
mkdir -p "$out"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
broker_pid=""
stop_broker() { if [ -n "$broker_pid" ]; then kill "$broker_pid" 2>/dev/null || true; wait "$broker_pid" 2>/dev/null || true; broker_pid=""; fi; }
trap stop_broker EXIT

start_broker() { # name port
  case "$1" in
    midge) taskset -c 1 target/release/midge -p "$2" --threads 1 2>"$out/midge.log" & ;;
    mosquitto) taskset -c 1 mosquitto -p "$2" >"$out/mosquitto.log" 2>&1 & ;;
  esac
  broker_pid=$!
  for _ in $(seq 1 500); do
    if python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$2),0.1)" 2>/dev/null; then return; fi
    sleep 0.01
  done
  echo "compare: $1 does not listen on $2" >&2
  exit 1
}

# name | loadgen arguments
scenarios=(
  "p2p-qos0|--scenario p2p --clients 10 --rate 5000 --qos 0"
  "p2p-qos1|--scenario p2p --clients 10 --rate 2000 --qos 1"
  "fan-in|--scenario fan-in --clients 100 --rate 200 --qos 0"
  "fan-out-1000|--scenario fan-out --clients 1000 --publishers 1 --rate 50 --qos 0"
  "conn-storm|--scenario conn-storm --clients 5000 --idle 2"
)

for broker in midge mosquitto; do
  port=$(free_port)
  start_broker "$broker" "$port"
  for entry in "${scenarios[@]}"; do
    name=${entry%%|*}
    args=${entry#*|}
    echo "compare: $broker $name" >&2
    # shellcheck disable=SC2086
    target/release/loadgen --port "$port" --cpus 0 --warmup "$warmup" --duration "$duration" \
      --broker-pid "$broker_pid" --json $args >"$out/$broker-$name.json" || true
  done
  stop_broker
done

python3 - "$out" "${scenarios[@]}" <<'PY'
import json, sys
out, entries = sys.argv[1], sys.argv[2:]
def load(broker, name):
    try:
        return json.load(open(f"{out}/{broker}-{name}.json"))[0]
    except Exception as e:
        return {"errors": [f"no result: {e}"]}
rows = []
def row(name, metric, m, q, better):
    ratio = (m / q) if (m is not None and q) else None
    rows.append((name, metric, m, q, ratio, better))
for entry in entries:
    name = entry.split("|")[0]
    m, q = load("midge", name), load("mosquitto", name)
    if name == "conn-storm":
        row(name, "connects/s", m.get("connects_per_s"), q.get("connects_per_s"), "higher")
        row(name, "CONNACK p99 ms", m.get("latency", {}).get("p99_us", 0) / 1000, q.get("latency", {}).get("p99_us", 0) / 1000, "lower")
        row(name, "RSS bytes/conn", m.get("rss_per_connection_bytes"), q.get("rss_per_connection_bytes"), "lower")
    else:
        row(name, "deliveries/s", m.get("deliveries_per_s"), q.get("deliveries_per_s"), "higher")
        row(name, "lost", m.get("delivery", {}).get("lost"), q.get("delivery", {}).get("lost"), "lower")
        for p in ("p50_us", "p99_us", "max_us"):
            row(name, p.replace("_us", " ms"), m.get("latency", {}).get(p, 0) / 1000, q.get("latency", {}).get(p, 0) / 1000, "lower")
        row(name, "deliveries/CPU-s", m.get("deliveries_per_cpu_s"), q.get("deliveries_per_cpu_s"), "higher")
    for broker, r in (("midge", m), ("mosquitto", q)):
        if r.get("loadgen_behind"):
            rows.append((name, f"note: loadgen fell behind against {broker}", None, None, None, ""))
        for e in r.get("errors", [])[:3]:
            rows.append((name, f"error ({broker}): {e}", None, None, None, ""))
fmt = lambda v: "" if v is None else (f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3f}")
print(f"{'scenario':<14} {'metric':<18} {'midge':>14} {'mosquitto':>14} {'midge/mosq':>11}  better")
for name, metric, m, q, ratio, better in rows:
    r = "" if ratio is None else f"{ratio:.2f}"
    print(f"{name:<14} {metric:<18} {fmt(m):>14} {fmt(q):>14} {r:>11}  {better}")
print(f"\nraw JSON: {out}/")
PY
