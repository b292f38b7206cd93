# benches/lib.sh - what the benchmark scripts share: logging, the bookkeeping that stops
# exactly the processes a script started (by PID, newest first, on any exit), free loopback
# ports, run sizes, and bounded background runs. Sourced by compare.sh and cluster.sh after
# their option parsing; set BENCH_NAME first (it names the temporary directory).
# shellcheck shell=bash
exec 3>&2 # progress goes to the original stderr, even from inside redirected calls
log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&3; }
die() { log "ERROR: $*"; exit 1; }

requests_for() { # test pipeline -> requests per run
  local n
  if [[ -n $REQUESTS ]]; then n=$REQUESTS
  elif [[ $2 -le 1 ]]; then n=$REQ_P1
  else n=$REQ_PN; fi
  if [[ $1 == mset ]]; then
    if [[ $2 -le 1 ]]; then n=$((n / MSET_DIV_P1)); else n=$((n / MSET_DIV_PN)); fi
  fi
  [[ $QUICK == 1 ]] && n=$((n / 10))
  ((n < 100)) && n=100
  echo "$n"
}

# ---------------------------------------------------------------------------------
# Process bookkeeping: every PID this script starts goes into PIDS; cleanup kills
# exactly those (newest first), never anything by name.
PIDS=()
TMP=$(mktemp -d "${TMPDIR:-/tmp}/tandem-${BENCH_NAME:-bench}.XXXXXX")

cleanup() {
  local rc=$? i pid
  trap - EXIT INT TERM
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
    pid=${PIDS[$i]}
    kill -TERM "$pid" 2>/dev/null
  done
  for ((i = 0; i < 50; i++)); do # up to 5 s for a graceful exit
    local alive=0
    for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    ((alive)) || break
    sleep 0.1
  done
  for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null; done
  wait 2>/dev/null
  rm -rf "$TMP"
  exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT
trap 'log "terminated"; exit 143' TERM

forget_pid() { # remove a PID from PIDS after stopping it ourselves
  local keep=() p
  for p in "${PIDS[@]}"; do [[ $p == "$1" ]] || keep+=("$p"); done
  PIDS=("${keep[@]}")
}
stop_pid() {
  local pid=$1 i
  kill -TERM "$pid" 2>/dev/null
  for ((i = 0; i < 50; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  forget_pid "$pid"
}

# N distinct free loopback ports (all sockets held open together, then released).
free_ports() {
  python3 - "$1" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
}

rcli() { timeout 10 redis-cli -h 127.0.0.1 -p "$1" "${@:2}"; }

wait_ready() { # port pid [name] -> 0 when PING answers PONG; 1 if the process died / 20 s
  local i
  for ((i = 0; i < 200; i++)); do
    kill -0 "$2" 2>/dev/null || return 1
    [[ $(timeout 2 redis-cli -h 127.0.0.1 -p "$1" PING 2>/dev/null) == PONG ]] && return 0
    sleep 0.1
  done
  return 1
}

# A throwaway redis-server (no persistence) on 127.0.0.1:port, logging to $TMP/name.log;
# returns once it answers PING, with its pid in R_PID (and in PIDS, for cleanup).
start_redis() { # name port
  redis-server --port "$2" --bind 127.0.0.1 --save '' --appendonly no \
    --protected-mode yes --daemonize no --logfile "$TMP/$1.log" >/dev/null 2>&1 &
  R_PID=$!
  PIDS+=("$R_PID")
  wait_ready "$2" "$R_PID" "$1" || { tail -20 "$TMP/$1.log" >&2; die "$1 redis-server did not start"; }
}

# Runs a command under `timeout` in the background and waits for it, so that a
# signal to this script is handled at once (cleanup then kills it). Sets BG_RC.
bounded() { # seconds cmd...
  timeout -k 5 "$1" "${@:2}" &
  local pid=$!
  PIDS+=("$pid")
  BG_RC=0
  wait "$pid" || BG_RC=$?
  forget_pid "$pid"
}

# Every round runs every pipeline depth and test against every target, the targets'
# order rotating by one each round, through the script's `run_one TARGET_INDEX TEST
# PIPELINE ROUND`. Reads ROUNDS, PIPELINES, TEST_LIST, NT, T_NAMES; sets PIPE_LIST,
# ELAPSED (seconds) and LOAD1 (load averages at the end).
run_rounds() {
  local r p test k total
  read -r -a PIPE_LIST <<<"$PIPELINES"
  total=$((ROUNDS * ${#TEST_LIST[@]} * ${#PIPE_LIST[@]} * NT))
  log "plan: $ROUNDS rounds x ${#TEST_LIST[@]} tests x ${#PIPE_LIST[@]} depths x $NT targets = $total runs (targets: ${T_NAMES[*]})"
  local start
  start=$(date +%s)
  for ((r = 1; r <= ROUNDS; r++)); do
    for p in "${PIPE_LIST[@]}"; do
      for test in "${TEST_LIST[@]}"; do
        for ((k = 0; k < NT; k++)); do
          run_one $(((k + r - 1) % NT)) "$test" "$p" "$r"
        done
      done
    done
  done
  ELAPSED=$(($(date +%s) - start))
  LOAD1=$(cut -d' ' -f1-3 /proc/loadavg)
}
