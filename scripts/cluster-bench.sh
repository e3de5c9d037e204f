#!/usr/bin/env bash
# What a cluster costs: the same p2p load (publishers on one node, subscribers on another)
# through two midge nodes on one nats-server, against one midge node alone, and against
# nats-server's own MQTT (publishers and subscribers on one server), in one run, on free
# loopback ports. Prints deliveries per second, p99, and deliveries per CPU-second summed
# over every process the load goes through (the midge nodes and NATS), with ratios.
# `two-nodes` stores QoS 1 in JetStream before each PUBACK (the default); `two-core` is the
# same with `cluster_messages core` (at most once between nodes).
#
#   scripts/cluster-bench.sh [--quick] [--repeat N] [--rate R] [--clients N]
#
# Needs Debian's nats-server (2.9: MQTT needs JetStream, on here in a temporary directory).
# Machines here are 2-core and noisy: read the ratios and the medians of --repeat.
set -euo pipefail
cd "$(dirname "$0")/.."

duration=8 warmup=2 repeat=1 rate=2000 clients=10
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) duration=3 warmup=1 ;;
    --repeat) repeat=$2; shift ;;
    --rate) rate=$2; shift ;;
    --clients) clients=$2; shift ;;
    *) echo "usage: scripts/cluster-bench.sh [--quick] [--repeat N] [--rate R] [--clients N]" >&2; exit 2 ;;
  esac
  shift
done
command -v nats-server >/dev/null || { echo "nats-server is needed (apt-get install nats-server)" >&2; exit 2; }
cargo build --release --quiet -p midge -p loadgen
midge=target/release/midge loadgen=target/release/loadgen
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; echo "nothing listens on $1" >&2; exit 1; }
# CPU seconds (user + system) of the processes given, from /proc.
cpu_s() { local t=0; for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; awk -v t="$t" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.3f", t / hz }'; }

# Each sets `started` to the process it started (not in a subshell: `pids` keeps them all,
# and the exit trap ends them).
start_nats() { # port [extra config]
  local port=$1 conf="$work/nats-$1.conf"
  printf 'listen: 127.0.0.1:%s\n%s\n' "$port" "${2:-}" > "$conf"
  nats-server -c "$conf" > "$work/nats-$port.log" 2>&1 &
  started=$!; pids+=("$started"); wait_port "$port"
}
start_midge() { # port [config text]
  local port=$1 conf="$work/midge-$1.conf"
  printf 'listener %s 127.0.0.1\nallow_anonymous true\n%s\n' "$port" "${2:-}" > "$conf"
  "$midge" -c "$conf" > "$work/midge-$port.log" 2>&1 &
  started=$!; pids+=("$started"); wait_port "$port"
}

# JetStream on, as a cluster runs (its retained messages live there).
nats_port=$(free_port); start_nats "$nats_port" "jetstream { store_dir: \"$work/cluster-js\" }"; nats=$started
cluster="bench$$"
a_port=$(free_port); start_midge "$a_port" "cluster_nats_url nats://127.0.0.1:$nats_port
cluster_name $cluster
cluster_node_id a"; a=$started
b_port=$(free_port); start_midge "$b_port" "cluster_nats_url nats://127.0.0.1:$nats_port
cluster_name $cluster
cluster_node_id b"; b=$started
# The same two nodes' setup with QoS 1/2 on core NATS (`cluster_messages core`, at most
# once between nodes): what the JetStream store before each PUBACK costs.
c_port=$(free_port); start_midge "$c_port" "cluster_nats_url nats://127.0.0.1:$nats_port
cluster_name ${cluster}core
cluster_node_id c
cluster_messages core"; c=$started
d_port=$(free_port); start_midge "$d_port" "cluster_nats_url nats://127.0.0.1:$nats_port
cluster_name ${cluster}core
cluster_node_id d
cluster_messages core"; d=$started
one_port=$(free_port); start_midge "$one_port"; one=$started
mq_nats_port=$(free_port); mqtt_port=$(free_port)
start_nats "$mq_nats_port" "server_name: bench
jetstream { store_dir: \"$work/js\" }
mqtt { listen: 127.0.0.1:$mqtt_port }"; mq_nats=$started
wait_port "$mqtt_port"

# One run: scenario label, qos, publishers' port, subscribers' port, then the pids whose
# CPU counts. Prints: label deliveries/s p99_ms cpu_s deliveries_per_cpu_s.
run() {
  local label=$1 qos=$2 pub=$3 sub=$4; shift 4
  local before after json
  before=$(cpu_s "$@")
  json=$("$loadgen" --port "$pub" --sub-port "$sub" --scenario p2p --clients "$clients" \
    --rate "$rate" --qos "$qos" --duration "$duration" --warmup "$warmup" --json 2>/dev/null || true)
  after=$(cpu_s "$@")
  python3 - "$label" "$before" "$after" "$warmup" "$duration" "$json" <<'PY'
import json, sys
label, before, after, warmup, duration = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
try:
    r = json.loads(sys.argv[6])[0]
except Exception:
    print(label, "failed"); sys.exit(0)
# The CPU of the whole run, scaled to the measured window (warmup and connects included
# in the run: an upper bound on the per-message cost).
cpu = (after - before) * duration / (duration + warmup)
d = r["delivery"]["received"]
print(label, round(r["deliveries_per_s"]), round(r["latency"]["p99_us"] / 1000, 3), round(cpu, 3), round(d / cpu) if cpu > 0 else 0, r["delivery"]["lost"])
PY
}

results="$work/results"
for round in $(seq "$repeat"); do
  for qos in 0 1; do
    run "one-node-q$qos" "$qos" "$one_port" "$one_port" "$one" >> "$results"
    run "two-nodes-q$qos" "$qos" "$a_port" "$b_port" "$a" "$b" "$nats" >> "$results"
    run "two-core-q$qos" "$qos" "$c_port" "$d_port" "$c" "$d" "$nats" >> "$results"
    run "nats-mqtt-q$qos" "$qos" "$mqtt_port" "$mqtt_port" "$mq_nats" >> "$results"
  done
done
python3 - "$results" "$rate" "$clients" <<'PY'
import sys, statistics
rows = {}
for line in open(sys.argv[1]):
    f = line.split()
    if len(f) < 6: continue
    rows.setdefault(f[0], []).append([float(x) for x in f[1:6]])
med = {k: [statistics.median(c) for c in zip(*v)] for k, v in rows.items()}
print(f"p2p, {sys.argv[3]} pairs x {sys.argv[2]} msgs/s, medians of {max(len(v) for v in rows.values())}")
print(f"{'setup':<16}{'deliv/s':>10}{'p99 ms':>9}{'CPU s':>8}{'deliv/CPU-s':>13}{'lost':>6}{'vs one node':>13}")
for qos in "01":
    base = med.get(f"one-node-q{qos}")
    for name in ("one-node", "two-nodes", "two-core", "nats-mqtt"):
        m = med.get(f"{name}-q{qos}")
        if not m: continue
        ratio = m[3] / base[3] if base and base[3] else 0
        print(f"{name+'-q'+qos:<16}{m[0]:>10.0f}{m[1]:>9.3f}{m[2]:>8.2f}{m[3]:>13.0f}{m[4]:>6.0f}{ratio:>13.2f}")
PY
