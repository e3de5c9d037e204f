#!/usr/bin/env bash
# loadgen's HTML reports in a real browser: each page of a report directory is opened in
# Debian's headless Chromium and screenshotted (DIR/*.png, to look at), and the screenshot
# must show the plots' lines drawn (pixels of the first two series colours), not just text.
#
#   scripts/report-check.sh            makes a small report first (midge and Debian's
#                                      mosquitto, 2 s of p2p each, loadgen --report, then
#                                      loadgen --compare) in target/report-check
#   scripts/report-check.sh DIR        checks the pages of DIR (scripts/compare.sh --report DIR)
#
# Not part of scripts/test.sh (Chromium is a ~100 MB install; the pages' content is
# checked there by loadgen's e2e test). Installs Debian's chromium and mosquitto and PyPI's
# Pillow if missing. Prints PASS/FAIL per page; exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
export PATH="$PATH:/usr/sbin"
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v mosquitto >/dev/null 2>&1 || missing+=(mosquitto)
if [ "${#missing[@]}" -gt 0 ]; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi
python3 -c 'import PIL' 2>/dev/null ||
  python3 -m pip install --quiet --disable-pip-version-check 'pillow>=10,<12'

dir=${1:-}
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
if [ -z "$dir" ]; then
  dir=target/report-check
  rm -rf "$dir" && mkdir -p "$dir"
  cargo build --release -q -p midge -p loadgen
  free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
  for broker in midge mosquitto; do
    port=$(free_port)
    if [ "$broker" = midge ]; then
      target/release/midge -p "$port" >"$dir/$broker.log" 2>&1 &
    else
      mosquitto -p "$port" >"$dir/$broker.log" 2>&1 &
    fi
    pid=$!
    pids+=("$pid")
    # loadgen retries nothing: wait until the broker listens (bounded).
    python3 - "$port" <<'PY'
import socket, sys, time
until = time.monotonic() + 10
while True:
    try:
        socket.create_connection(("127.0.0.1", int(sys.argv[1])), 0.2).close()
        break
    except OSError:
        if time.monotonic() > until:
            sys.exit("the broker does not listen")
        time.sleep(0.05)
PY
    target/release/loadgen --port "$port" --scenario p2p --clients 4 --rate 1000 --warmup 1 \
      --duration 2 --broker-pid "$pid" --label "$broker" --title p2p-qos0 \
      --report "$dir/$broker-p2p-qos0-1.html" >/dev/null
    kill "$pid"; wait "$pid" 2>/dev/null || true
  done
  echo "made in report-check: no ratios, two brokers' runs" >"$dir/ratios.txt"
  target/release/loadgen --compare "$dir/index.html" --notes "$dir/ratios.txt" \
    "$dir/midge-p2p-qos0-1.hlog" "$dir/mosquitto-p2p-qos0-1.hlog"
fi

status=0
shopt -s nullglob
pages=("$dir"/*.html)
[ "${#pages[@]}" -gt 0 ] || { echo "no pages in $dir" >&2; exit 1; }
for page in "${pages[@]}"; do
  png=${page%.html}.png
  rm -f "$png"
  # --virtual-time-budget: let layout finish before the shot; tall enough for the plots.
  timeout 120 chromium --headless --no-sandbox --disable-gpu --hide-scrollbars \
    --virtual-time-budget=2000 --window-size=1100,3200 --screenshot="$png" \
    "file://$(realpath "$page")" >/dev/null 2>&1 || true
  if python3 - "$png" "$page" <<'PY'
import sys
from PIL import Image
png, page = sys.argv[1], sys.argv[2]
try:
    img = Image.open(png).convert("RGB")
except Exception as e:
    sys.exit(f"no screenshot: {e}")
# The series colours of loadgen's plots (plots.rs PALETTE): lines drawn in them show the
# SVG was rendered, plots and all. Every page has a first series; a comparison (index)
# has the second broker's, a run's page its send lag (a conn-storm's has neither).
colours = {"first series": (0, 114, 178)}
if page.endswith("index.html") or "conn-storm" not in page:
    colours["second series"] = (213, 94, 0)
near = lambda p, c: all(abs(a - b) <= 40 for a, b in zip(p, c))
counts = {name: 0 for name in colours}
for p in img.getdata():
    for name, c in colours.items():
        if near(p, c):
            counts[name] += 1
missing = [name for name, n in counts.items() if n < 300]
if missing:
    sys.exit(f"{page}: no plot lines in the screenshot ({counts})")
print(f"{page}: plot pixels {counts}")
PY
  then
    echo "PASS $page (screenshot $png)"
  else
    echo "FAIL $page"
    status=1
  fi
done
exit "$status"
