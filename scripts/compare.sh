#!/usr/bin/env bash
# midge against Debian's mosquitto: the same loadgen scenarios against each, in one run, on
# free loopback ports; prints both figures and their ratio, and keeps the raw JSON.
#
#   scripts/compare.sh [--quick] [--repeat N] [--pair A B] [--tls] [--ws] [--persist SYNC] [--bridge]
#                      [--report DIR] [--only NAME,...] [--threads N]
#
# --pair names the two brokers compared (default: midge mosquitto); each is one of midge
# (its default backend), midge-uring, midge-epoll (same build, backend forced), midge-batch
# (io_uring with io_batch_wait_us 50), midge-metrics (with `metrics_listener`, scraped every
# second during the run), midge-base (the binary $MIDGE_BASELINE, another build: before and
# after a change) or mosquitto.
#
# With --repeat N every scenario runs N times against each broker (alternating, and which
# goes first alternating by round: use an even N), and the table shows medians.
# With --tls both brokers serve one TLS listener with the same certificate and key (an EC
# P-256 CA and server certificate made here with openssl), and the scenarios are p2p QoS 0
# and 1 and a conn-storm (TLS handshakes per second, RSS per idle TLS connection).
# With --ws both serve MQTT over WebSockets (`protocol websockets`; with --tls too: wss),
# and the scenarios are p2p QoS 0 and 1.
# With --persist SYNC both keep persistent sessions on disk: midge with `persistence true`
# and `persistence_sync SYNC` (always, interval, a number of ms, never), Mosquitto with
# `persistence true`, `autosave_interval 1` and `autosave_on_changes true` (its database
# saved after every change: its nearest to acknowledged-means-on-disk), each in a fresh
# directory; the scenarios are p2p QoS 1 with persistent sessions (loadgen --persistent),
# at a fixed rate and as a ceiling search. --persist off runs the same scenarios with
# persistence off on both sides (the baseline).
# With --bridge each broker is an edge bridged (`topic # out 1`, clean session) to one
# Debian mosquitto started for the run: loadgen publishes to the edge and
# subscribes on the remote (`--sub-port`), so the figures are throughput through a bridge,
# midge -> mosquitto against mosquitto -> mosquitto; scenarios p2p QoS 0 and 1, fixed rate
# and ceiling. The edge's CPU is what --broker-pid reports. The remote shares core 1 with
# the edge, so that loadgen has core 0 to itself.
# With --report DIR every loadgen run also writes its page and interval log into DIR
# (loadgen --report: BROKER-SCENARIO-ROUND.html/.hlog), and DIR/index.html shows each
# scenario's runs of both brokers on the same axes under the ratios table (loadgen
# --compare). scripts/report-check.sh opens such pages in headless Chromium.
# With --threads N midge (and midge-base) run N shards, and no broker is pinned to a core
# (the default, 1, pins each broker to core 1 with one shard).
# With --only NAME,... only the scenarios named run (names as in the table, e.g. p2p-qos0):
# one scenario then gets a freshly started broker for every run, nothing run before it in
# the same process (a ceiling search leaves a broker's buffers grown).
# Pinning (2-core machines): each broker on core 1 (midge with one shard), loadgen on core 0.
# Figures move from run to run on a shared machine: compare the ratios.
set -euo pipefail
cd "$(dirname "$0")/.."

duration=8 warmup=2 repeat=1 tls=0 ws=0 persist="" bridge=0 report="" only="" threads=1
brokers=(midge mosquitto)
usage() { echo "usage: scripts/compare.sh [--quick] [--repeat N] [--pair A B] [--tls] [--ws] [--persist SYNC] [--bridge] [--report DIR] [--only NAME,...] [--threads N]  (A, B: midge midge-uring midge-epoll midge-batch midge-metrics midge-base mosquitto)" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) duration=3 warmup=1 ;;
    --repeat) repeat=$2; shift ;;
    --pair) [ $# -ge 3 ] || usage; brokers=("$2" "$3"); shift 2 ;;
    --tls) tls=1 ;;
    --ws) ws=1 ;;
    --persist) [ $# -ge 2 ] || usage; persist=$2; shift ;;
    --bridge) bridge=1 ;;
    --report) [ $# -ge 2 ] || usage; report=$2; shift ;;
    --only) [ $# -ge 2 ] || usage; only=$2; shift ;;
    --threads) [ $# -ge 2 ] || usage; threads=$2; shift ;;
    *) usage ;;
  esac
  shift
done
for b in "${brokers[@]}"; do
  case "$b" in midge|midge-uring|midge-epoll|midge-batch|midge-metrics|midge-base|mosquitto) ;; *) usage ;; esac
  if [ "$b" = midge-base ] && [ ! -x "${MIDGE_BASELINE:-}" ]; then
    echo "compare: midge-base needs MIDGE_BASELINE=path/to/another/midge" >&2; exit 2
  fi
done

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
export PATH="$PATH:/usr/sbin"
if ! command -v mosquitto >/dev/null 2>&1; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto
fi
cargo build --release -q -p midge -p loadgen
pin="taskset -c 1"
[ "$threads" = 1 ] || pin=""
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

out=target/compare/$(date +%Y%m%d-%H%M%S)
mkdir -p "$out"
if [ -n "$report" ]; then mkdir -p "$report"; fi
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
broker_pid="" remote_pid="" scraper_pid=""
stop_broker() {
  if [ -n "$scraper_pid" ]; then kill "$scraper_pid" 2>/dev/null || true; wait "$scraper_pid" 2>/dev/null || true; scraper_pid=""; fi
  if [ -n "$broker_pid" ]; then kill "$broker_pid" 2>/dev/null || true; wait "$broker_pid" 2>/dev/null || true; broker_pid=""; fi
}
stop_remote() { if [ -n "$remote_pid" ]; then kill "$remote_pid" 2>/dev/null || true; wait "$remote_pid" 2>/dev/null || true; remote_pid=""; fi; }
trap 'stop_broker; stop_remote' EXIT

if [ "$tls" = 1 ]; then
  # Readable by mosquitto once it drops root for its own user.
  pki=$(mktemp -d /tmp/midge-compare-pki.XXXXXX)
  chmod 755 "$pki"
  trap 'stop_broker; rm -rf "$pki"' EXIT
  scripts/test-pki.sh "$pki" "compare CA"
fi
layered_conf() { # port broker: one listener with the run's layers (and persistence)
  printf 'listener %s 127.0.0.1\nallow_anonymous true\n' "$1"
  if [ -n "$persist" ] && [ "$persist" != off ]; then
    # A fresh store for each start, writable by mosquitto once it drops root.
    store=$(mktemp -d "$out/store-$2.XXXXXX")
    chmod 777 "$store"
    printf 'persistence true\npersistence_location %s/\n' "$store"
    case "$2" in
      mosquitto) printf 'autosave_interval 1\nautosave_on_changes true\n' ;;
      *) printf 'persistence_sync %s\n' "$persist" ;;
    esac
  fi
  if [ "$ws" = 1 ]; then printf 'protocol websockets\n'; fi
  if [ "$tls" = 1 ]; then printf 'certfile %s\nkeyfile %s\n' "$pki/server.pem" "$pki/server.key"; fi
  # Debian's Mosquitto 2.0.11 exits ("Unable to start any listening sockets") when its only
  # listener is a WebSocket one: both brokers get an idle plain listener as well.
  if [ "$ws" = 1 ]; then printf 'listener %s 127.0.0.1\n' "$(free_port)"; fi
  if [ "$bridge" = 1 ]; then
    printf 'connection bench\naddress 127.0.0.1:%s\ntopic # out 1\ncleansession true\n' "$remote_port"
    printf 'notifications false\nrestart_timeout 1\n'
  fi
}

# --bridge: the edge forwards to the remote (a probe published on the edge arrives there).
wait_bridged() { # edge port
  python3 - "$1" "$remote_port" <<'PY'
import socket, sys, time
edge, remote = int(sys.argv[1]), int(sys.argv[2])
def connect(port, cid):
    s = socket.create_connection(("127.0.0.1", port), 5)
    s.sendall(bytes([0x10, 12 + len(cid)]) + b"\x00\x04MQTT\x04\x02\x00\x3c" + len(cid).to_bytes(2, "big") + cid)
    s.recv(4)
    return s
sub = connect(remote, b"bridge-probe-sub")
sub.sendall(b"\x82\x0c\x00\x01\x00\x07probe/#\x00")
sub.recv(5)
sub.settimeout(0.2)
pub = connect(edge, b"bridge-probe-pub")
until = time.time() + 20
while time.time() < until:
    pub.sendall(b"\x30\x09\x00\x07probe/x")
    try:
        if sub.recv(64):
            sys.exit(0)
    except socket.timeout:
        pass
sys.exit("compare: the edge's bridge never carried a message to the remote")
PY
}

start_broker() { # name port
  if [ "$tls" = 1 ] || [ "$ws" = 1 ] || [ -n "$persist" ] || [ "$bridge" = 1 ]; then
    layered_conf "$2" "$1" >"$out/$1-layered.conf"
    [ "$1" = midge-batch ] && printf 'io_batch_wait_us 50\n' >>"$out/$1-layered.conf"
    case "$1" in
      midge|midge-batch) $pin target/release/midge -c "$out/$1-layered.conf" --threads "$threads" 2>"$out/$1.log" & ;;
      midge-uring) $pin target/release/midge -c "$out/$1-layered.conf" --threads "$threads" --io uring 2>"$out/$1.log" & ;;
      midge-epoll) $pin target/release/midge -c "$out/$1-layered.conf" --threads "$threads" --io epoll 2>"$out/$1.log" & ;;
      midge-base) $pin "$MIDGE_BASELINE" -c "$out/$1-layered.conf" --threads "$threads" 2>"$out/$1.log" & ;;
      mosquitto) $pin mosquitto -c "$out/$1-layered.conf" >"$out/mosquitto.log" 2>&1 & ;;
    esac
  else
    case "$1" in
      midge) $pin target/release/midge -p "$2" --threads "$threads" 2>"$out/midge.log" & ;;
      midge-uring) $pin target/release/midge -p "$2" --threads "$threads" --io uring 2>"$out/midge-uring.log" & ;;
      midge-epoll) $pin target/release/midge -p "$2" --threads "$threads" --io epoll 2>"$out/midge-epoll.log" & ;;
      midge-batch)
        printf 'io_batch_wait_us 50\n' >"$out/midge-batch.conf"
        $pin target/release/midge -c "$out/midge-batch.conf" -p "$2" --threads "$threads" --io uring \
          2>"$out/midge-batch.log" & ;;
      midge-metrics)
        metrics_port=$(free_port)
        printf 'metrics_listener 127.0.0.1:%s\n' "$metrics_port" >"$out/midge-metrics.conf"
        $pin target/release/midge -c "$out/midge-metrics.conf" -p "$2" --threads "$threads" \
          2>"$out/midge-metrics.log" & ;;
      midge-base) $pin "$MIDGE_BASELINE" -p "$2" --threads "$threads" 2>"$out/midge-base.log" & ;;
      mosquitto) $pin mosquitto -p "$2" >"$out/mosquitto.log" 2>&1 & ;;
    esac
  fi
  broker_pid=$!
  if [ "$1" = midge-metrics ]; then
    # A Prometheus scraping every second for the whole run: one small process (on
    # loadgen's core), not a new interpreter per scrape.
    taskset -c 0 python3 - "http://127.0.0.1:$metrics_port/metrics" "$broker_pid" <<'PY' &
import os, sys, time, urllib.request
url, broker = sys.argv[1], int(sys.argv[2])
while True:
    try:
        os.kill(broker, 0)
    except OSError:
        break
    try:
        urllib.request.urlopen(url, timeout=2).read()
    except Exception:
        pass
    time.sleep(1)
PY
    scraper_pid=$!
  fi
  for _ in $(seq 1 500); do
    if python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$2),0.1)" 2>/dev/null; then
      if [ "$bridge" = 1 ]; then wait_bridged "$2"; fi
      return
    fi
    sleep 0.01
  done
  echo "compare: $1 does not listen on $2" >&2
  exit 1
}

# name | loadgen arguments
scenarios=(
  "p2p-qos0-ceiling|--scenario p2p --clients 10 --rate 5000 --qos 0 --ceiling --step 1.5 --p99-max 10"
  "p2p-qos0|--scenario p2p --clients 10 --rate 5000 --qos 0"
  "p2p-qos1|--scenario p2p --clients 10 --rate 2000 --qos 1"
  "fan-in|--scenario fan-in --clients 100 --rate 200 --qos 0"
  "fan-out-1000|--scenario fan-out --clients 1000 --publishers 1 --rate 50 --qos 0"
  "conn-storm|--scenario conn-storm --clients 5000 --idle 2"
)
tls_args=()
if [ "$tls" = 1 ]; then
  scenarios=(
    "p2p-qos0|--scenario p2p --clients 10 --rate 2000 --qos 0"
    "p2p-qos1|--scenario p2p --clients 10 --rate 1000 --qos 1"
    "conn-storm|--scenario conn-storm --clients 2000 --idle 2"
  )
  tls_args=(--tls --cafile "$pki/ca.pem")
fi
if [ "$ws" = 1 ]; then
  scenarios=(
    "p2p-qos0|--scenario p2p --clients 10 --rate 2000 --qos 0"
    "p2p-qos1|--scenario p2p --clients 10 --rate 1000 --qos 1"
    "conn-storm|--scenario conn-storm --clients 2000 --idle 2"
  )
  tls_args+=(--ws)
fi
if [ "$bridge" = 1 ]; then
  remote_port=$(free_port)
  # On the edge's core: loadgen keeps core 0 to itself (it falls behind when it shares it).
  taskset -c 1 mosquitto -p "$remote_port" >"$out/remote-mosquitto.log" 2>&1 &
  remote_pid=$!
  scenarios=(
    "p2p-qos0-ceiling|--scenario p2p --clients 10 --rate 500 --qos 0 --ceiling --step 1.5 --p99-max 10"
    "p2p-qos0|--scenario p2p --clients 10 --rate 2000 --qos 0"
    "p2p-qos1-ceiling|--scenario p2p --clients 10 --rate 250 --qos 1 --ceiling --step 1.5 --p99-max 10"
    "p2p-qos1|--scenario p2p --clients 10 --rate 1000 --qos 1"
  )
  tls_args+=(--sub-port "$remote_port")
fi
if [ -n "$persist" ]; then
  scenarios=(
    "p2p-qos1-ceiling|--scenario p2p --clients 10 --rate 500 --qos 1 --ceiling --step 1.5 --p99-max 10"
    "p2p-qos1|--scenario p2p --clients 10 --rate 1000 --qos 1"
  )
  tls_args+=(--persistent)
fi
if [ -n "$only" ]; then
  chosen=()
  IFS=, read -ra names <<<"$only"
  for name in "${names[@]}"; do
    found=0
    for entry in "${scenarios[@]}"; do
      if [ "${entry%%|*}" = "$name" ]; then chosen+=("$entry"); found=1; fi
    done
    if [ "$found" = 0 ]; then
      echo "compare: no scenario $name here (these: $(printf '%s ' "${scenarios[@]%%|*}"))" >&2
      exit 2
    fi
  done
  scenarios=("${chosen[@]}")
fi

for round in $(seq 1 "$repeat"); do
  # Rounds alternate which broker goes first: on this machine the second of a pair measured
  # up to 15 % more deliveries per CPU-second than the first in the same round, whichever
  # build it was. An even --repeat gives each the same number of first places.
  order=("${brokers[@]}")
  if [ $((round % 2)) = 0 ]; then
    order=("${brokers[1]}" "${brokers[0]}")
  fi
  for broker in "${order[@]}"; do
    port=$(free_port)
    start_broker "$broker" "$port"
    for entry in "${scenarios[@]}"; do
      name=${entry%%|*}
      args=${entry#*|}
      echo "compare: round $round, $broker, $name" >&2
      report_args=()
      if [ -n "$report" ]; then
        report_args=(--report "$report/$broker-$name-$round.html" --label "$broker" --title "$name")
      fi
      # shellcheck disable=SC2086
      target/release/loadgen --port "$port" --cpus 0 --warmup "$warmup" --duration "$duration" \
        --broker-pid "$broker_pid" --json "${tls_args[@]}" "${report_args[@]}" $args \
        >"$out/$broker-$name-$round.json" || true
    done
    stop_broker
  done
done

python3 - "$out" "$repeat" "${brokers[0]}" "${brokers[1]}" "${scenarios[@]}" <<'PY' | tee "$out/ratios.txt"
import json, statistics, sys
out, repeat, first, second, entries = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5:]

def runs(broker, name):
    """Each round's report (for a ceiling search: the highest step that held)."""
    found = []
    for r in range(1, repeat + 1):
        try:
            steps = json.load(open(f"{out}/{broker}-{name}-{r}.json"))
        except Exception as e:
            found.append({"errors": [f"no result: {e}"]})
            continue
        if name.endswith("-ceiling"):
            held = [s for s in steps if not s["errors"] and s["delivery"]["lost"] == 0
                    and not s["loadgen_behind"] and s["latency"]["p99_us"] <= 10_000]
            found.append(max(held, key=lambda s: s["offered_msgs_per_s"]) if held else {"errors": ["no rate held"]})
        else:
            found.append(steps[0])
    return found

def median(reports, get):
    values = [v for v in (get(r) for r in reports) if v is not None]
    return statistics.median(values) if values else None

rows = []
def row(name, metric, m, q, better):
    ratio = (m / q) if (m is not None and q) else None
    rows.append((name, metric, m, q, ratio, better))
for entry in entries:
    name = entry.split("|")[0]
    ms_, qs_ = runs(first, name), runs(second, name)
    med = lambda reports, get: median(reports, lambda r: get(r) if "delivery" in r or "latency" in r else None)
    lat = lambda p: (lambda r: r.get("latency", {}).get(p, 0) / 1000)
    if name.endswith("-ceiling"):
        row(name, "sustainable msgs/s", med(ms_, lambda r: r.get("offered_msgs_per_s")), med(qs_, lambda r: r.get("offered_msgs_per_s")), "higher")
        row(name, "p99 ms there", med(ms_, lat("p99_us")), med(qs_, lat("p99_us")), "lower")
    elif name == "conn-storm":
        row(name, "connects/s", med(ms_, lambda r: r.get("connects_per_s")), med(qs_, lambda r: r.get("connects_per_s")), "higher")
        row(name, "CONNACK p99 ms", med(ms_, lat("p99_us")), med(qs_, lat("p99_us")), "lower")
        row(name, "RSS bytes/conn", med(ms_, lambda r: r.get("rss_per_connection_bytes")), med(qs_, lambda r: r.get("rss_per_connection_bytes")), "lower")
    else:
        row(name, "deliveries/s", med(ms_, lambda r: r.get("deliveries_per_s")), med(qs_, lambda r: r.get("deliveries_per_s")), "higher")
        row(name, "lost", med(ms_, lambda r: r.get("delivery", {}).get("lost")), med(qs_, lambda r: r.get("delivery", {}).get("lost")), "lower")
        for p in ("p50_us", "p99_us", "max_us"):
            row(name, p.replace("_us", " ms"), med(ms_, lat(p)), med(qs_, lat(p)), "lower")
        row(name, "deliveries/CPU-s", med(ms_, lambda r: r.get("deliveries_per_cpu_s")), med(qs_, lambda r: r.get("deliveries_per_cpu_s")), "higher")
        # The kernel's share of the broker's CPU (on loopback it includes the receivers' TCP work).
        share = lambda r: (r.get("broker_system_cpu_s") / r["broker_cpu_s"]) if r.get("broker_cpu_s") and r.get("broker_system_cpu_s") is not None else None
        row(name, "system share of CPU", med(ms_, share), med(qs_, share), "lower")
    for broker, reports in ((first, ms_), (second, qs_)):
        behind = sum(1 for r in reports if r.get("loadgen_behind"))
        if behind:
            rows.append((name, f"note: loadgen fell behind in {behind} run(s) against {broker}", None, None, None, ""))
        for r in reports:
            for e in r.get("errors", [])[:2]:
                rows.append((name, f"error ({broker}): {e}", None, None, None, ""))
fmt = lambda v: "" if v is None else (f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3f}")
print(f"medians of {repeat} run(s) per broker")
print(f"{'scenario':<17} {'metric':<19} {first:>12} {second:>12} {'ratio':>11}  better")
for name, metric, m, q, ratio, better in rows:
    r = "" if ratio is None else f"{ratio:.2f}"
    print(f"{name:<17} {metric:<19} {fmt(m):>12} {fmt(q):>12} {r:>11}  {better}")
print(f"\nraw JSON: {out}/")
PY

if [ -n "$report" ]; then
  # One page: the ratios, then each scenario's runs of both brokers on the same axes (in
  # the order the scenarios ran).
  logs=()
  for entry in "${scenarios[@]}"; do
    for round in $(seq 1 "$repeat"); do
      for broker in "${brokers[@]}"; do
        log="$report/$broker-${entry%%|*}-$round.hlog"
        if [ -f "$log" ]; then logs+=("$log"); fi
      done
    done
  done
  grep -v '^raw JSON' "$out/ratios.txt" >"$report/ratios.txt"
  target/release/loadgen --compare "$report/index.html" --notes "$report/ratios.txt" "${logs[@]}"
  echo "report: $report/index.html"
fi
