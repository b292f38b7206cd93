#!/usr/bin/env bash
# Soak test: N minutes of mixed session-store load through a release build of tandem while
# the target is blackholed, slowed down and restarted, the cutover flips 10/50/100/0 and the
# config is reloaded. At the end it prints ops, errors by kind, lost acknowledged writes
# (must be 0) and the mirror accounting per direction, and exits non-zero if a write was
# lost or the accounting does not balance. The driver is tests/soak.rs.
#
#   ./scripts/soak.sh                # 5 minutes
#   ./scripts/soak.sh --minutes 30
#
# Everything runs on free loopback ports: two redis-servers, a fault relay and tandem, all
# started by the driver and stopped by PID when it ends. The run stops by itself after N
# minutes plus a margin; if it does not, the whole process group it started is stopped.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
  sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
}

minutes=5
while [ $# -gt 0 ]; do
  case "$1" in
    --minutes) minutes="${2:-}"; shift 2 || { usage >&2; exit 2; } ;;
    --minutes=*) minutes="${1#*=}"; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "soak.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
done
if ! [[ "$minutes" =~ ^[0-9]+([.][0-9]+)?$ ]] || ! awk -v m="$minutes" 'BEGIN { exit !(m >= 0.1 && m <= 720) }'; then
  echo "soak.sh: --minutes must be a number from 0.1 to 720, got '$minutes'" >&2
  exit 2
fi
for bin in redis-server redis-cli; do
  if ! command -v "$bin" >/dev/null 2>&1; then
    echo "soak.sh: $bin not found; install redis-server and redis-tools (./scripts/test.sh does)" >&2
    exit 2
  fi
done

if [ ! -x target/release/tandem ]; then
  echo "soak.sh: building target/release/tandem"
  cargo build --release
fi
# Build the driver (and bring the release binary up to date) before the clock starts.
cargo test --release --test soak --no-run

export SOAK_MINUTES="$minutes"
export TANDEM_BIN="$PWD/target/release/tandem"
# The driver stops itself at the deadline; the final checks take at most a few minutes more.
limit=$(awk -v m="$minutes" 'BEGIN { printf "%d", m * 60 + 300 }')
echo "soak.sh: ${minutes} min of load (hard limit ${limit}s), tandem: $TANDEM_BIN"

# `timeout` runs the driver in a process group of its own and, past the limit, signals the
# whole group (cargo, the test binary, the redis-servers and tandem it started), then kills
# it 15 s later.
timeout --kill-after=15s "${limit}s" \
  cargo test --release --test soak -- --ignored --nocapture --test-threads=1 &
runner=$!
stop() {
  echo "soak.sh: interrupted; stopping the soak" >&2
  kill -TERM "$runner" 2>/dev/null || true
}
trap stop INT TERM
status=0
wait "$runner" || status=$?
# `wait` returns early when a trapped signal arrives: wait for the runner itself.
while kill -0 "$runner" 2>/dev/null; do
  wait "$runner" || status=$?
done
trap - INT TERM

if [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then
  echo "soak.sh: FAIL: the soak did not finish within ${limit}s and was stopped" >&2
elif [ "$status" -ne 0 ]; then
  echo "soak.sh: FAIL (exit status $status)" >&2
else
  echo "soak.sh: PASS"
fi
exit "$status"
