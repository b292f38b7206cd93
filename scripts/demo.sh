#!/usr/bin/env bash
# A migration demo on loopback: two redis-servers (source and target), tandem in front of
# them with async mirroring, a session-like workload, then a ramp 10% -> 50% -> 100% and a
# rollback to 0, printing what happens at each step. Cleans up every process it started.
#
#   ./scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
  echo "installing redis-server and redis-tools"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server redis-tools >/dev/null
fi
cargo build --release --quiet
BIN=target/release/tandem

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT INT TERM

SRC=$(free_port); DST=$(free_port); PROXY=$(free_port); ADMIN=$(free_port)
for port in "$SRC" "$DST"; do
  redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$WORK" --daemonize no >"$WORK/redis-$port.log" 2>&1 &
  PIDS+=($!)
done
for port in "$SRC" "$DST"; do
  for _ in $(seq 50); do redis-cli -p "$port" PING >/dev/null 2>&1 && break; sleep 0.1; done
done

cat >"$WORK/proxy.yaml" <<YAML
listen: 127.0.0.1:$PROXY
admin:
  listen: 127.0.0.1:$ADMIN
backends:
  source:
    url: redis://127.0.0.1:$SRC
  target:
    url: redis://127.0.0.1:$DST
mirror:
  mode: async
  journal: $WORK/repair.jsonl
cutover:
  percent: 0
YAML
say "source redis :$SRC, target redis :$DST, tandem :$PROXY (admin :$ADMIN), mirror async"
"$BIN" run --config "$WORK/proxy.yaml" >"$WORK/tandem.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do redis-cli -p "$PROXY" PING >/dev/null 2>&1 && break; sleep 0.1; done

cli() { redis-cli -p "$PROXY" "$@"; }
admin() { # METHOD PATH [JSON]
  python3 - "$ADMIN" "$1" "$2" "${3:-}" <<'PY'
import sys, urllib.request
port, method, path, body = sys.argv[1:5]
req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method, data=body.encode() or None)
print(urllib.request.urlopen(req).read().decode().strip())
PY
}
where() {
  printf '  keys on source: %s   keys on target: %s\n' "$(redis-cli -p "$SRC" DBSIZE)" "$(redis-cli -p "$DST" DBSIZE)"
  python3 - "$ADMIN" <<'PY'
import json, sys, urllib.request
s = json.load(urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/status"))
print(f"  cutover {s['cutover']['percent']}% ({s['cutover']['moved_slots']} of 16384 slots on the target), mirror {s['mirror']['mode']}")
for side, st in s["mirror"]["towards"].items():
    print(f"  mirrored to {side}: enqueued {st['enqueued']} applied {st['applied']} error {st['error']} diverged {st['diverged']} dropped {st['dropped']} in flight {st['in_flight']}")
PY
}
workload() { # $1 sessions: 80% GET / 20% SET, 1-4 KB values, 15-60 min TTLs
  redis-benchmark -p "$PROXY" -n "$1" -c 20 -r 5000 -d 2048 -t get -q >/dev/null
  redis-benchmark -p "$PROXY" -n $(( $1 / 4 )) -c 20 -r 5000 -d 2048 -t set -q >/dev/null
  for i in $(seq 1 200); do echo "SET session:$i user-$i-$(head -c 1024 /dev/zero | tr '\0' x) EX $(( 900 + i * 13 ))"; done | redis-cli -p "$PROXY" >/dev/null
}

say "1. shadow: cutover 0%, every write mirrored to the target"
workload 20000
where

for p in 10 50 100; do
  say "2. cutover to $p% (the flip waits for the mirror backlog, so no read is stale)"
  admin POST /cutover "{\"percent\": $p}"; echo
  workload 20000
  where
done
say "   a session key is served by the target and still mirrored to the source"
echo "  TTL via tandem: $(cli TTL session:7)   source: $(redis-cli -p "$SRC" TTL session:7)   target: $(redis-cli -p "$DST" TTL session:7)"

say "3. rollback: cutover back to 0% in one call; the source has every write"
admin POST /cutover '{"percent": 0}'; echo
cli SET written-after-rollback yes >/dev/null
echo "  written-after-rollback on source: $(redis-cli -p "$SRC" GET written-after-rollback)"
where
say "done: logs were in $WORK (removed on exit)"
