#!/usr/bin/env bash
# benches/instructions.sh - instructions tandem executes per request (user space), counted by
# valgrind's callgrind under a redis-benchmark load.
#
# Throughput on a shared 2-core machine moves by 10-30% between runs; an instruction count
# does not (it misses cache and kernel effects, so it complements compare.sh, it does not
# replace it). Use it to see what a change to the per-command path costs, A/B between
# binaries: every binary is measured with the same fresh servers and the same load.
#
# For each binary, mirror mode and test: start a source redis-server (and a target one for a
# mirroring mode), start tandem under callgrind, warm up with 20,000 requests, zero the
# counters, run the measured requests, dump, and divide the instructions by the requests.
#
# Usage: benches/instructions.sh [--bin PATH]... [--tests set,get,mset] [--modes off,async]
#                                [--pipeline 16] [--requests 100000]
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BINS=()
TESTS=set,get,mset
MODES=off,async
PIPELINE=16
REQUESTS=100000
WARMUP=20000

usage() {
  cat <<EOF
Usage: benches/instructions.sh [options]
  --bin PATH        a tandem binary to measure; repeat to compare (default target/release/tandem)
  --tests LIST      redis-benchmark tests (default $TESTS)
  --modes LIST      off, async, sync (default $MODES)
  --pipeline N      redis-benchmark -P (default $PIPELINE)
  --requests N      measured requests per run (default $REQUESTS; $WARMUP more warm up first)
EOF
}

while [[ $# -gt 0 ]]; do
  case $1 in
    --bin) BINS+=("$2"); shift 2 ;;
    --tests) TESTS=$2; shift 2 ;;
    --modes) MODES=$2; shift 2 ;;
    --pipeline) PIPELINE=$2; shift 2 ;;
    --requests) REQUESTS=$2; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "instructions.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
done
[[ ${#BINS[@]} -eq 0 ]] && BINS=("$ROOT/target/release/tandem")
for b in "${BINS[@]}"; do
  [[ -x $b ]] || { echo "instructions.sh: $b is not an executable (cargo build --release?)" >&2; exit 2; }
done

"$ROOT/scripts/need-packages.sh" redis-server:redis-server redis-benchmark:redis-tools valgrind:valgrind \
  python3:python3
for cmd in redis-server redis-cli redis-benchmark valgrind callgrind_control python3 timeout; do
  command -v "$cmd" >/dev/null 2>&1 || { echo "instructions.sh: $cmd not found" >&2; exit 2; }
done

BENCH_NAME=instructions
# shellcheck source=benches/lib.sh
source "$ROOT/benches/lib.sh"

# One measurement (in this shell, so cleanup knows every process); sets RESULT to the
# instructions per request.
measure() { # bin mode test
  local bin=$1 mode=$2 test=$3 src tgt proxy admin s_pid t_pid=0 p_pid dump total
  read -r src tgt proxy admin <<<"$(free_ports 4)"
  start_redis source "$src"
  s_pid=$R_PID
  if [[ $mode != off ]]; then
    start_redis target "$tgt"
    t_pid=$R_PID
  fi
  {
    echo "listen: \"127.0.0.1:$proxy\""
    echo "admin: {listen: \"127.0.0.1:$admin\"}"
    echo "backends:"
    echo "  source: {url: \"redis://127.0.0.1:$src\"}"
    [[ $mode != off ]] && echo "  target: {url: \"redis://127.0.0.1:$tgt\"}"
    echo "mirror: {mode: \"$mode\"}"
  } >"$TMP/proxy.yaml"
  valgrind --tool=callgrind --callgrind-out-file="$TMP/cg.%p" \
    "$bin" run --config "$TMP/proxy.yaml" >"$TMP/tandem.log" 2>&1 &
  p_pid=$!
  PIDS+=("$p_pid")
  wait_ready "$proxy" "$p_pid" tandem || die "tandem under valgrind did not start (see $TMP/tandem.log)"
  local args=(-h 127.0.0.1 -p "$proxy" -c 50 -P "$PIPELINE" -d 100 -r 100000 -t "$test" -q)
  bounded 600 redis-benchmark "${args[@]}" -n "$WARMUP" >/dev/null 2>&1
  callgrind_control -z "$p_pid" >/dev/null 2>&1 || die "callgrind_control could not zero the counters of $p_pid"
  bounded 1200 redis-benchmark "${args[@]}" -n "$REQUESTS" >/dev/null 2>&1
  [[ $BG_RC -eq 0 ]] || die "redis-benchmark failed ($BG_RC)"
  callgrind_control -d "$p_pid" >/dev/null 2>&1 || die "callgrind_control could not dump the counters of $p_pid"
  dump="$TMP/cg.$p_pid.1"
  for _ in $(seq 100); do [[ -s $dump ]] && grep -q '^totals:' "$dump" && break; sleep 0.1; done
  total=$(awk '/^totals:/ {print $2; exit}' "$dump")
  stop_pid "$p_pid"
  stop_pid "$s_pid"
  [[ $t_pid != 0 ]] && stop_pid "$t_pid"
  rm -f "$TMP"/cg.*
  [[ -n $total ]] || die "no callgrind totals in $dump"
  RESULT=$((total / REQUESTS))
}

IFS=, read -r -a TEST_LIST <<<"$TESTS"
IFS=, read -r -a MODE_LIST <<<"$MODES"
log "callgrind: ${#BINS[@]} binaries x ${#MODE_LIST[@]} modes x ${#TEST_LIST[@]} tests, -P $PIPELINE, $REQUESTS requests each"
printf '%-8s %-6s %-40s %14s %10s\n' test mode binary "instr/request" "vs first"
for test in "${TEST_LIST[@]}"; do
  for mode in "${MODE_LIST[@]}"; do
    first=""
    for bin in "${BINS[@]}"; do
      measure "$bin" "$mode" "$test"
      [[ -z $first ]] && first=$RESULT
      printf '%-8s %-6s %-40s %14s %10s\n' "$test" "$mode" "$bin" "$RESULT" \
        "$(awk -v a="$RESULT" -v b="$first" 'BEGIN { printf "%.2f", a / b }')"
    done
  done
done
