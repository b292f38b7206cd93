#!/usr/bin/env bash
# benches/backfill.sh - backfill throughput of `tandem backfill` against Redis's own
# `MIGRATE ... COPY KEYS` in batches, on the same machine in the same run.
#
# It starts a source and a target redis-server on free 127.0.0.1 ports, fills the source
# with N keys of SIZE bytes (DEBUG POPULATE, a TTL on every key), then for each round, in
# alternating order: empties the target and times
#   tandem:  tandem backfill --source ... --target ... (SCAN + MULTI{DUMP,PEXPIRETIME} +
#            RESTORE ABSTTL + the resurrection re-check)
#   migrate: redis-cli --scan on the source, then one redis-cli session sending
#            MIGRATE host port "" 0 timeout COPY KEYS k1 .. kB per batch of B keys
# and checks that the target holds N keys afterwards. Prints keys/s per round, medians, and
# the tandem/migrate ratio. Only ratios from one run mean anything on a shared machine.
#
# Usage: benches/backfill.sh [--keys 100000] [--size 1024] [--rounds 3] [--batch 1000] [--no-build]
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TANDEM_BIN=${TANDEM_BIN:-$ROOT/target/release/tandem}
KEYS=100000
SIZE=1024
ROUNDS=3
BATCH=1000
BUILD=1
while [ $# -gt 0 ]; do
  case "$1" in
    --keys) KEYS=$2; shift 2 ;;
    --size) SIZE=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    --batch) BATCH=$2; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done

"$ROOT/scripts/need-packages.sh" redis-server:redis-server redis-cli:redis-tools
if [ "$BUILD" = 1 ]; then (cd "$ROOT" && cargo build --release --quiet); fi

WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}
start_redis() { # port dir
  mkdir -p "$2"
  redis-server --port "$1" --bind 127.0.0.1 --save '' --appendonly no --dir "$2" \
    --enable-debug-command local --logfile "$2/log" >/dev/null 2>&1 &
  PIDS+=($!)
  for _ in $(seq 100); do redis-cli -p "$1" ping >/dev/null 2>&1 && return 0; sleep 0.05; done
  echo "redis-server on $1 did not start" >&2; exit 1
}

SRC=$(free_port); start_redis "$SRC" "$WORK/src"
TGT=$(free_port); start_redis "$TGT" "$WORK/tgt"

echo "filling the source with $KEYS keys of $SIZE bytes (TTL 1 h) ..."
redis-cli -p "$SRC" DEBUG POPULATE "$KEYS" key "$SIZE" >/dev/null
# A TTL on every key, so both tools have to carry expiries.
redis-cli -p "$SRC" EVAL "local c = '0' repeat local r = redis.call('SCAN', c, 'COUNT', 5000) c = r[1] for _, k in ipairs(r[2]) do redis.call('EXPIRE', k, 3600) end until c == '0' return 1" 0 >/dev/null

now_ms() { date +%s%3N; }

run_tandem() {
  "$TANDEM_BIN" backfill --source "redis://127.0.0.1:$SRC" --target "redis://127.0.0.1:$TGT" \
    --count "$BATCH" --checkpoint "$WORK/cp.json" --restart --no-progress --json >"$WORK/tandem.json" 2>"$WORK/tandem.err"
}
run_migrate() {
  redis-cli -p "$SRC" --scan >"$WORK/keys"
  xargs -n "$BATCH" <"$WORK/keys" | awk -v p="$TGT" '{ printf "MIGRATE 127.0.0.1 %s \"\" 0 60000 COPY KEYS %s\n", p, $0 }' \
    | redis-cli -p "$SRC" >"$WORK/migrate.out"
  if grep -qv '^OK$' "$WORK/migrate.out"; then echo "MIGRATE errors:"; sort "$WORK/migrate.out" | uniq -c | head; exit 1; fi
}

declare -A RATES
for r in $(seq "$ROUNDS"); do
  if [ $((r % 2)) = 1 ]; then order="tandem migrate"; else order="migrate tandem"; fi
  for tool in $order; do
    redis-cli -p "$TGT" FLUSHALL >/dev/null
    t0=$(now_ms)
    "run_$tool"
    t1=$(now_ms)
    n=$(redis-cli -p "$TGT" DBSIZE)
    if [ "$n" != "$KEYS" ]; then echo "$tool round $r: target holds $n keys, expected $KEYS" >&2; exit 1; fi
    rate=$(( KEYS * 1000 / (t1 - t0 > 0 ? t1 - t0 : 1) ))
    RATES[$tool]="${RATES[$tool]:-} $rate"
    printf "round %d  %-8s %7d keys in %5d ms  %7d keys/s\n" "$r" "$tool" "$KEYS" $((t1 - t0)) "$rate"
  done
done
# Spot-check TTLs survived: one key's absolute expiry on both sides.
k=$(redis-cli -p "$SRC" RANDOMKEY)
echo "expiry of $k: source $(redis-cli -p "$SRC" PEXPIRETIME "$k") target $(redis-cli -p "$TGT" PEXPIRETIME "$k")"

median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
mt=$(echo "${RATES[tandem]}" | median)
mm=$(echo "${RATES[migrate]}" | median)
echo
echo "median keys/s ($KEYS keys x $SIZE B, batch $BATCH, $ROUNDS rounds): tandem $mt  migrate $mm  ratio tandem/migrate $(python3 -c "print(round($mt/$mm, 2))")"
