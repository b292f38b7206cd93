#!/usr/bin/env bash
# The whole migration story on loopback, printing what happens at each step:
#   two redis-servers (the source already holds sessions, the target is empty), tandem in
#   front of them with async mirroring, a session-like workload running throughout
#   (80% GET / 20% SET, 1-4 KB values, 15-60 min TTLs), backfill of the existing keys,
#   verify, a ramp 10% -> 50% -> 100%, a rollback to 0%, and a final verify.
# Cleans up every process it started (by PID) and its temporary directory.
#
#   ./scripts/demo.sh              # DEMO_KEYS=20000 existing sessions by default
set -euo pipefail
cd "$(dirname "$0")/.."

KEYS=${DEMO_KEYS:-20000}
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
note() { printf '   %s\n' "$*"; }

./scripts/need-packages.sh redis-server:redis-server redis-cli:redis-tools python3:python3
echo "building tandem (cargo build --release) ..."
cargo build --release --quiet
BIN=$PWD/target/release/tandem

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

say "0. before: the application's sessions live on the source (127.0.0.1:$SRC); the target (127.0.0.1:$DST) is empty"
redis-cli -p "$SRC" EVAL "
  for i = 0, tonumber(ARGV[1]) - 1 do
    local size = 1024 + (i * 7919) % 3072
    redis.call('SET', 'session:' .. i, string.rep(string.char(97 + i % 26), size), 'EX', 900 + (i * 31) % 2700)
  end
  return tonumber(ARGV[1])" 0 "$KEYS" >/dev/null
note "source: $(redis-cli -p "$SRC" DBSIZE) session keys (1-4 KB, TTL 15-60 min); target: $(redis-cli -p "$DST" DBSIZE) keys"

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
"$BIN" check --config "$WORK/proxy.yaml"
"$BIN" run --config "$WORK/proxy.yaml" >"$WORK/tandem.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do redis-cli -p "$PROXY" PING >/dev/null 2>&1 && break; sleep 0.1; done
ctl() { "$BIN" ctl --config "$WORK/proxy.yaml" "$@"; }

say "1. the application now talks to tandem (127.0.0.1:$PROXY); every write is mirrored to the target"
# The workload: N connections, each a pipelined loop of 80% GET / 20% SET EX over the same
# session keys, until the stop file appears (or 10 minutes pass). Prints its totals at the end.
cat >"$WORK/workload.py" <<'PY'
import os, random, socket, sys, threading, time
port, keys, stop, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
totals = {"get": 0, "set": 0, "hits": 0, "errors": 0}
lock = threading.Lock()

def cmd(*args):
    parts = [b"*%d\r\n" % len(args)]
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(parts)

def read_reply(f):
    line = f.readline()
    kind, rest = line[:1], line[1:-2]
    if kind == b"$":
        n = int(rest)
        return (None if n < 0 else f.read(n + 2)[:-2]), False
    return rest, kind == b"-"

def worker(seed):
    rnd = random.Random(seed)
    s = socket.create_connection(("127.0.0.1", port))
    f = s.makefile("rb")
    n = {"get": 0, "set": 0, "hits": 0, "errors": 0}
    deadline = time.time() + 600
    while not os.path.exists(stop) and time.time() < deadline:
        batch, kinds = [], []
        for _ in range(20):
            k = "session:%d" % rnd.randrange(keys + keys // 10)
            if rnd.random() < 0.8:
                batch.append(cmd("GET", k)); kinds.append("get")
            else:
                v = bytes([97 + rnd.randrange(26)]) * rnd.randrange(1024, 4096)
                batch.append(cmd("SET", k, v, "EX", rnd.randrange(900, 3600))); kinds.append("set")
        s.sendall(b"".join(batch))
        for kind in kinds:
            value, err = read_reply(f)
            n[kind] += 1
            n["errors"] += err
            n["hits"] += kind == "get" and value is not None
        time.sleep(0.005)
    with lock:
        for k in totals:
            totals[k] += n[k]

threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
for t in threads: t.start()
for t in threads: t.join()
with open(out, "w") as fh:
    fh.write("%d GETs (%d hits), %d SETs, %d errors\n" % (totals["get"], totals["hits"], totals["set"], totals["errors"]))
PY
python3 "$WORK/workload.py" "$PROXY" "$KEYS" "$WORK/stop" "$WORK/workload.out" &
WORKLOAD=$!
PIDS+=("$WORKLOAD")
sleep 2
ctl status | sed 's/^/   /'
note "target now: $(redis-cli -p "$DST" DBSIZE) keys, only the ones written since mirroring started"

say "2. backfill: copy the sessions that existed before, with their TTLs, while the workload runs"
note "(keys the mirror already wrote are newer and are skipped; deleted keys are not resurrected)"
"$BIN" backfill --config "$WORK/proxy.yaml" --checkpoint "$WORK/backfill.json" --no-progress 2>&1 | sed 's/^/   /'
k=session:42
note "expiry of $k: source $(redis-cli -p "$SRC" PEXPIRETIME $k) ms, target $(redis-cli -p "$DST" PEXPIRETIME $k) ms (absolute, same on both)"

say "3. verify: both keyspaces, type, value and TTL (within 1 s), while the workload runs"
"$BIN" verify --config "$WORK/proxy.yaml" --no-progress --report "$WORK/diff.json" | sed 's/^/   /' || true

for p in 10 50 100; do
  say "4. cutover to $p%: the flip waits until the mirror backlog is applied, so no read is stale"
  ctl cutover "$p" | sed 's/^/   /'
  sleep 2
  ctl status | grep -E 'cutover|to target|to source' | sed 's/^/   /'
done
note "a session key now: served by the target, still mirrored to the source"
note "TTL via tandem: $(redis-cli -p "$PROXY" TTL session:7)  source: $(redis-cli -p "$SRC" TTL session:7)  target: $(redis-cli -p "$DST" TTL session:7)"

say "5. rollback: one command takes every key back to the source, which received every write"
ctl rollback | sed 's/^/   /'
sleep 2
ctl status | grep -E 'cutover' | sed 's/^/   /'

say "6. stop the workload and verify again"
touch "$WORK/stop"
wait "$WORKLOAD" || true
note "workload: $(cat "$WORK/workload.out")"
ctl status | grep -E 'to target|to source' | sed 's/^/   /'
"$BIN" verify --config "$WORK/proxy.yaml" --no-progress | sed 's/^/   /' && note "the stores agree: safe to go on (or to roll back) at any step"
say "done (logs were in $WORK, removed on exit)"
