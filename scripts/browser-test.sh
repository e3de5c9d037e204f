#!/usr/bin/env bash
# A real browser against midge: MQTT.js (npm) in Debian's headless Chromium subscribes over
# ws:// and wss:// (tests/browser/page.html), midge-pub publishes, and the page must show
# the message (tests/browser/run.mjs reads it). Prints PASS/FAIL per URL; exits non-zero
# on any failure.
#
#   scripts/browser-test.sh
#
# Not part of scripts/test.sh: Chromium is a ~100 MB install that would slow every CI run.
# This installs what it needs (Debian's chromium, openssl and nodejs/npm; MQTT.js and
# puppeteer-core, pinned in tests/browser/package.json, into target/browser-test).
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v npm >/dev/null 2>&1 || missing+=(npm)
if [ "${#missing[@]}" -gt 0 ]; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi

work=target/browser-test
mkdir -p "$work"
cp tests/browser/page.html tests/browser/run.mjs tests/browser/package.json "$work/"
(cd "$work" && npm install --no-audit --no-fund --loglevel=error)
cargo build -q --bin midge --bin midge-pub

# A CA and a server certificate for localhost; Chromium is told the server key's hash.
pki=$(mktemp -d /tmp/midge-browser-pki.XXXXXX)
midge_pid=""
cleanup() {
  if [ -n "$midge_pid" ]; then kill "$midge_pid" 2>/dev/null || true; wait "$midge_pid" 2>/dev/null || true; fi
  rm -rf "$pki"
}
trap cleanup EXIT
scripts/test-pki.sh "$pki" "browser test CA"
spki=$(openssl x509 -in "$pki/server.pem" -pubkey -noout | openssl pkey -pubin -outform der |
  openssl dgst -sha256 -binary | base64)

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
plain=$(free_port) ws=$(free_port) wss=$(free_port)
cat >"$pki/midge.conf" <<EOF
user root
allow_anonymous true
listener $plain 127.0.0.1
listener $ws 127.0.0.1
protocol websockets
listener $wss 127.0.0.1
protocol websockets
certfile $pki/server.pem
keyfile $pki/server.key
EOF
target/debug/midge -c "$pki/midge.conf" 2>"$work/midge.log" &
midge_pid=$!
for _ in $(seq 1 500); do
  if python3 -c "import socket; socket.create_connection(('127.0.0.1',$wss),0.1)" 2>/dev/null; then break; fi
  sleep 0.01
done

if node "$work/run.mjs" "$PWD/target/debug/midge-pub" "$plain" "$spki" \
  "ws://127.0.0.1:$ws/mqtt" "wss://localhost:$wss/mqtt"; then
  echo "browser-test: passed"
else
  echo "browser-test: FAILED; midge's log:" >&2
  cat "$work/midge.log" >&2
  exit 1
fi
