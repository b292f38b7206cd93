#!/usr/bin/env bash
# benches/compare.sh - throughput/latency comparison of tandem against direct Redis
# and twemproxy (nutcracker), all on loopback, driven by redis-benchmark.
#
# It starts its own processes on free 127.0.0.1 ports and keeps them for the whole
# run: a source redis-server (plus a target redis-server when a mirror mode runs),
# nutcracker with a one-server pool, and one tandem per mode. For every round, for
# every (test, pipeline depth), it runs redis-benchmark against each of them one
# after another (order rotated each round), flushing the database before every run.
# Results: a table per pipeline depth on stdout, plus benches/results/compare-*.csv
# (raw per-round numbers) and compare-*.txt (the table). See benches/README.md.
#
# Usage: benches/compare.sh [--rounds N] [--requests N] [--tests set,get,...]
#                           [--pipelines "1 16"] [--clients 50] [--modes off,...]
#                           [--quick] [--no-build] [--rss | --rss-only] [--force-modes]
#                           [--baseline PATH]
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TANDEM_BIN=${TANDEM_BIN:-$ROOT/target/release/tandem}
RESULTS_DIR=${RESULTS_DIR:-$ROOT/benches/results}

# ---------------------------------------------------------------------------------
# tandem modes. One entry per mode: NAME|STATUS|BACKENDS|YAML
#   STATUS   "available", or "unavailable: why" (skipped unless --force-modes).
#   BACKENDS "source" or "source+target" (a target redis-server is started and passed).
#   YAML     top-level config keys added to the generated config (\n = newline). The
#            script itself writes listen, admin and backends; do not repeat them.
# A mode is also skipped (with the reason printed) if `tandem check` rejects its
# config or tandem does not come up. Enable a mode by changing its STATUS.
MODES=(
  'off|available|source|mirror: {mode: "off"}'
  'async|available|source+target|mirror: {mode: async}'
  'sync|available|source+target|mirror: {mode: sync}'
  'async+compare5|available|source+target|mirror: {mode: async}\ncompare: {percent: 5}'
  'async+compare100|available|source+target|mirror: {mode: async}\ncompare: {percent: 100}'
  'off-auto|available|source|mirror: {mode: "off"}\nworkers: auto'
  'async-auto|available|source+target|mirror: {mode: async}\nworkers: auto'
)

# ---------------------------------------------------------------------------------
ROUNDS=3
TESTS=set,get,mset,incr,lpush
PIPELINES="1 16"
CLIENTS=50
DATASIZE=100
KEYSPACE=100000
REQUESTS=""            # empty: sized per pipeline depth (see requests_for)
REQ_P1=100000          # requests per run at -P 1   (~2-3 s per run on 2 shared cores)
REQ_PN=500000          # requests per run at -P > 1 (~1.5-5 s per run)
MSET_DIV_P1=2          # MSET carries 10 keys per command: fewer requests
MSET_DIV_PN=4
QUICK=0
BUILD=1
RSS=0
RSS_ONLY=0
FORCE_MODES=0
SEL_MODES=""
BASELINE=""
IDLE_CONNS=${IDLE_CONNS:-1000}
RUN_TIMEOUT=${RUN_TIMEOUT:-120}   # seconds, per redis-benchmark call

usage() {
  cat <<EOF
Usage: benches/compare.sh [options]
  --rounds N          rounds of alternation (default $ROUNDS); medians over rounds
  --requests N        requests per redis-benchmark run for every depth
                      (default: $REQ_P1 at -P 1, $REQ_PN deeper; MSET gets
                      N/$MSET_DIV_P1 at -P 1 and N/$MSET_DIV_PN deeper: 10 keys per command)
  --tests LIST        comma-separated redis-benchmark tests (default $TESTS)
  --pipelines "A B"   pipeline depths (default "$PIPELINES")
  --clients N         parallel connections (default $CLIENTS)
  --modes LIST        tandem modes to run (default: all in MODES; unavailable are skipped)
                      known: $(mode_names | paste -sd, -)
  --force-modes       also run modes whose STATUS is unavailable
  --quick             divide request counts by 10 (smoke test)
  --no-build          never run cargo build
  --rss               also measure tandem RSS (idle, $IDLE_CONNS idle clients, peak under SET -P 16)
  --rss-only          only the RSS measurement
  --baseline PATH     also run every mode with this tandem binary (named MODE@base), in
                      the same alternation: an A/B of two builds within one run
Environment: TANDEM_BIN, RESULTS_DIR, RUN_TIMEOUT (s, default 120), IDLE_CONNS (default 1000)
EOF
}

mode_field() { # entry index, field -> value
  local f
  IFS='|' read -r -a f <<<"${MODES[$1]}"
  case $2 in
    name) echo "${f[0]}" ;;
    status) echo "${f[1]}" ;;
    backends) echo "${f[2]}" ;;
    yaml) local IFS='|'; echo "${f[*]:3}" ;; # rejoin, should the YAML hold a '|'
  esac
}
mode_names() { local i; for i in "${!MODES[@]}"; do mode_field "$i" name; done; }
mode_index() { local i; for i in "${!MODES[@]}"; do [[ $(mode_field "$i" name) == "$1" ]] && { echo "$i"; return 0; }; done; return 1; }

while [[ $# -gt 0 ]]; do
  case $1 in
    --rounds) ROUNDS=$2; shift 2 ;;
    --requests) REQUESTS=$2; shift 2 ;;
    --tests) TESTS=$2; shift 2 ;;
    --pipelines) PIPELINES=$2; shift 2 ;;
    --clients) CLIENTS=$2; shift 2 ;;
    --modes) SEL_MODES=$2; shift 2 ;;
    --force-modes) FORCE_MODES=1; shift ;;
    --baseline) BASELINE=$2; shift 2 ;;
    --quick) QUICK=1; shift ;;
    --no-build) BUILD=0; shift ;;
    --rss) RSS=1; shift ;;
    --rss-only) RSS=1; RSS_ONLY=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "compare.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
done

is_uint() { [[ $1 =~ ^[1-9][0-9]*$ ]]; }
for v in "$ROUNDS" "$CLIENTS" ${REQUESTS:+"$REQUESTS"} $PIPELINES; do
  is_uint "$v" || { echo "compare.sh: not a positive integer: '$v'" >&2; exit 2; }
done
[[ -n ${PIPELINES// /} ]] || { echo "compare.sh: --pipelines is empty" >&2; exit 2; }
IFS=, read -r -a TEST_LIST <<<"$TESTS"
for t in "${TEST_LIST[@]}"; do
  [[ $t =~ ^[a-z_]+$ ]] || { echo "compare.sh: bad test name '$t'" >&2; exit 2; }
done
if [[ -z $SEL_MODES ]]; then SEL_MODES=$(mode_names | paste -sd, -); fi
IFS=, read -r -a MODE_LIST <<<"$SEL_MODES"
for m in "${MODE_LIST[@]}"; do
  mode_index "$m" >/dev/null || { echo "compare.sh: unknown mode '$m' (known: $(mode_names | paste -sd' ' -))" >&2; exit 2; }
done
# On a fresh Debian machine, install what the comparison runs (as scripts/test.sh does).
"$ROOT/scripts/need-packages.sh" redis-server:redis-server redis-cli:redis-tools \
  redis-benchmark:redis-tools nutcracker:nutcracker || { echo "compare.sh: could not install what it needs" >&2; exit 2; }
export PATH="$PATH:/usr/sbin"
for cmd in redis-server redis-cli redis-benchmark nutcracker python3 timeout; do
  command -v "$cmd" >/dev/null 2>&1 || { echo "compare.sh: $cmd not found" >&2; exit 2; }
done

# Shared helpers (logging, process bookkeeping and cleanup, ports, run sizes).
BENCH_NAME=compare
# shellcheck source=benches/lib.sh
source "$ROOT/benches/lib.sh"

# ---------------------------------------------------------------------------------
needs_build() {
  [[ -x $TANDEM_BIN ]] || return 0
  [[ -n $(find "$ROOT/src" "$ROOT/Cargo.toml" "$ROOT/Cargo.lock" -newer "$TANDEM_BIN" -print -quit 2>/dev/null) ]]
}
if [[ $BUILD == 1 ]] && needs_build; then
  log "building tandem (cargo build --release) ..."
  (cd "$ROOT" && cargo build --release >&2) || die "cargo build --release failed (--no-build benchmarks the existing binary as it is)"
fi
[[ -x $TANDEM_BIN ]] || die "no tandem binary at $TANDEM_BIN (run without --no-build)"
[[ -z $BASELINE || -x $BASELINE ]] || die "no tandem binary at $BASELINE (--baseline)"

# ---------------------------------------------------------------------------------
STAMP=$(date +%Y%m%d-%H%M%S)
mkdir -p "$RESULTS_DIR" || die "cannot create $RESULTS_DIR"
CSV=$RESULTS_DIR/compare-$STAMP.csv
TXT=$RESULTS_DIR/compare-$STAMP.txt
FAILLOG=$RESULTS_DIR/compare-$STAMP.failures.log

need_target=0
RUN_MODES=()   # mode indices to start
SKIPPED=()     # "mode: reason"
RSS_FAILED=0
NOT_STARTED=() # modes whose tandem did not come up (the run then exits 1)
if [[ $RSS_ONLY == 0 ]]; then
  for m in "${MODE_LIST[@]}"; do
    i=$(mode_index "$m")
    st=$(mode_field "$i" status)
    if [[ $st != available && $FORCE_MODES == 0 ]]; then
      SKIPPED+=("tandem-$m: skipped (${st#unavailable: }; see MODES in benches/compare.sh)")
      log "mode $m: skipped, marked ${st}"
      continue
    fi
    RUN_MODES+=("$i")
    [[ $(mode_field "$i" backends) == *target* ]] && need_target=1
  done
fi

read -r SRC_PORT TGT_PORT TW_PORT TW_STATS <<<"$(free_ports 4)"
log "temp dir $TMP; source redis on 127.0.0.1:$SRC_PORT"
start_redis source "$SRC_PORT"; SRC_PID=$R_PID
TGT_PID=""
if [[ $need_target == 1 ]]; then
  log "target redis on 127.0.0.1:$TGT_PORT"
  start_redis target "$TGT_PORT"; TGT_PID=$R_PID
fi

VALUE=$(head -c "$DATASIZE" /dev/zero | tr '\0' x)
flush_all() {
  rcli "$SRC_PORT" FLUSHALL >/dev/null || log "WARNING: FLUSHALL on source failed"
  if [[ -n $TGT_PID ]]; then rcli "$TGT_PORT" FLUSHALL >/dev/null || log "WARNING: FLUSHALL on target failed"; fi
}
# GET runs read existing values: fill the benchmark's keyspace (key:%012d, as
# redis-benchmark -r generates) with DATASIZE-byte values on source (and target).
POPULATE_LUA="for i=0,tonumber(ARGV[1])-1 do redis.call('SET', string.format('key:%012d', i), ARGV[2]) end return tonumber(ARGV[1])"
populate() {
  rcli "$SRC_PORT" EVAL "$POPULATE_LUA" 0 "$KEYSPACE" "$VALUE" >/dev/null || log "WARNING: populate source failed"
  if [[ -n $TGT_PID ]]; then rcli "$TGT_PORT" EVAL "$POPULATE_LUA" 0 "$KEYSPACE" "$VALUE" >/dev/null || log "WARNING: populate target failed"; fi
}

# ---- tandem ---------------------------------------------------------------------
# start_tandem INDEX [BIN SUFFIX] -> sets T_PORT T_PID T_ADMIN; returns 1 (reason in T_WHY)
# on failure. BIN defaults to TANDEM_BIN; SUFFIX is appended to the mode's name.
start_tandem() {
  local i=$1 bin=${2:-$TANDEM_BIN} name backends yaml conf out ports
  name=$(mode_field "$i" name)${3:-}
  backends=$(mode_field "$i" backends)
  yaml=$(mode_field "$i" yaml)
  read -r T_PORT T_ADMIN <<<"$(free_ports 2)"
  conf=$TMP/tandem-$name.yaml
  {
    echo "# generated by benches/compare.sh, mode $name"
    echo "listen: \"127.0.0.1:$T_PORT\""
    echo "admin: {listen: \"127.0.0.1:$T_ADMIN\"}"
    echo "backends:"
    echo "  source: {url: \"redis://127.0.0.1:$SRC_PORT\"}"
    [[ $backends == *target* ]] && echo "  target: {url: \"redis://127.0.0.1:$TGT_PORT\"}"
    printf '%b\n' "$yaml"
  } >"$conf"
  if ! out=$("$bin" check --config "$conf" 2>&1); then
    T_WHY="tandem rejected its config: $(echo "$out" | tr '\n' ' ')"
    return 1
  fi
  local args=(run --config "$conf" --listen "127.0.0.1:$T_PORT" --admin "127.0.0.1:$T_ADMIN"
    --source "redis://127.0.0.1:$SRC_PORT" --drain-timeout 1s)
  [[ $backends == *target* ]] && args+=(--target "redis://127.0.0.1:$TGT_PORT")
  "$bin" "${args[@]}" >"$TMP/tandem-$name.log" 2>&1 &
  T_PID=$!
  PIDS+=("$T_PID")
  if ! wait_ready "$T_PORT" "$T_PID" "tandem-$name"; then
    T_WHY="tandem did not come up: $(tail -5 "$TMP/tandem-$name.log" | tr '\n' ' ')"
    stop_pid "$T_PID"
    return 1
  fi
  return 0
}

# ---- RSS measurement --------------------------------------------------------------
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null; }
hwm_kb() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status" 2>/dev/null; }
mib() { awk -v k="$1" 'BEGIN { if (k == "") print "n/a"; else printf "%.1f MiB", k / 1024 }'; }

RSS_REPORT=""
measure_rss() {
  local off n16 ready pyp poller peakf rss0 rss1 rss2 peak hwm clients rc
  off=$(mode_index off) || { log "RSS: no 'off' mode"; return; }
  log "RSS: starting a fresh tandem (mode off)"
  if ! start_tandem "$off"; then
    RSS_REPORT="RSS: could not start tandem: $T_WHY"
    RSS_FAILED=1
    return
  fi
  sleep 0.5
  rss0=$(rss_kb "$T_PID")
  ready=$TMP/idle.ready
  rm -f "$ready"
  log "RSS: opening $IDLE_CONNS idle connections (PING each, keep open)"
  timeout 900 python3 - "$T_PORT" "$IDLE_CONNS" "$ready" <<'PY' >"$TMP/idle.log" 2>&1 &
import resource, socket, sys, time
port, n, ready = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
if soft < n + 64:
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, n + 64), hard))
socks = []
for _ in range(n):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    socks.append(s)
for s in socks:
    s.sendall(b"PING\r\n")
ok = 0
for s in socks:
    buf = b""
    while not buf.endswith(b"\r\n"):
        chunk = s.recv(64)
        if not chunk:
            break
        buf += chunk
    ok += buf == b"+PONG\r\n"
with open(ready, "w") as f:
    f.write(f"{ok}\n")
while True:          # keep the connections open until killed
    time.sleep(3600)
PY
  pyp=$!
  PIDS+=("$pyp")
  local i
  for ((i = 0; i < 600; i++)); do [[ -s $ready ]] && break; kill -0 "$pyp" 2>/dev/null || break; sleep 0.1; done
  if [[ ! -s $ready ]]; then
    RSS_REPORT="RSS: idle-connection helper failed: $(tail -3 "$TMP/idle.log" | tr '\n' ' ')"
    RSS_FAILED=1
    stop_pid "$pyp"; stop_pid "$T_PID"
    return
  fi
  local pongs
  pongs=$(cat "$ready")
  sleep 1
  rss1=$(rss_kb "$T_PID")
  clients=$(python3 -c 'import json,sys,urllib.request; print(json.load(urllib.request.urlopen(sys.argv[1], timeout=5))["clients"])' \
    "http://127.0.0.1:$T_ADMIN/status" 2>/dev/null || echo "?")
  n16=$(requests_for set 16)
  peakf=$TMP/rss.peak
  echo 0 >"$peakf"
  (
    peak=0
    while kill -0 "$T_PID" 2>/dev/null; do
      r=$(rss_kb "$T_PID"); r=${r:-0}
      ((r > peak)) && { peak=$r; echo "$peak" >"$peakf"; }
      sleep 0.2
    done
  ) &
  poller=$!
  PIDS+=("$poller")
  flush_all
  log "RSS: SET -P 16 -c $CLIENTS -n $n16 while sampling VmRSS every 200 ms"
  bounded "$RUN_TIMEOUT" redis-benchmark -h 127.0.0.1 -p "$T_PORT" -t set -n "$n16" -c "$CLIENTS" \
    -P 16 -d "$DATASIZE" -r "$KEYSPACE" --csv >"$TMP/rss.bench" 2>"$TMP/rss.bench.err"
  rc=$BG_RC
  sleep 0.3
  stop_pid "$poller"
  peak=$(cat "$peakf")
  hwm=$(hwm_kb "$T_PID")
  rss2=$(rss_kb "$T_PID")
  local rps
  rps=$(awk -F'","' 'NR == 2 {print $2}' "$TMP/rss.bench")
  stop_pid "$pyp"
  stop_pid "$T_PID"
  [[ $rc == 0 && $pongs == "$IDLE_CONNS" && $clients == "$IDLE_CONNS" ]] || RSS_FAILED=1
  RSS_REPORT=$(
    echo "tandem RSS (mode off, fresh process; VmRSS from /proc/PID/status)"
    echo "  idle, no clients:                         $(mib "$rss0")"
    echo "  $IDLE_CONNS idle clients (PONGs: $pongs, /status clients: $clients): $(mib "$rss1")"
    echo "  peak during SET -P 16 -c $CLIENTS -n $n16 (200 ms polling, idle clients still open): $(mib "$peak")  [VmHWM $(mib "$hwm")]"
    echo "  after the benchmark:                      $(mib "$rss2")"
    if [[ $rc != 0 ]]; then echo "  benchmark exit status $rc: $(tail -3 "$TMP/rss.bench.err" | tr '\n' ' ')"
    else echo "  benchmark: ${rps:-?} rps"; fi
  )
  log "RSS measurement done"
}

# ---- header -----------------------------------------------------------------------
TANDEM_VER=$("$TANDEM_BIN" --version 2>/dev/null | head -1)
GIT_REV=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo "?")
[[ -n $(git -C "$ROOT" status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null) ]] && GIT_REV="$GIT_REV+dirty"
REDIS_VER=$(redis-server --version | sed -n 's/.*v=\([^ ]*\).*/\1/p')
BENCH_VER=$(redis-benchmark --version 2>/dev/null | awk '{print $2}')
TW_VER=$(nutcracker --version 2>&1 | sed -n 's/.*nutcracker-\([0-9.]*\).*/\1/p' | head -1)
BIN_TIME=$(date -r "$TANDEM_BIN" '+%Y-%m-%d %H:%M:%S')
BIN_NOTE="binary built $BIN_TIME"
needs_build && BIN_NOTE="$BIN_NOTE; WARNING: src/ or Cargo.* changed since (--no-build?)"
[[ -n $BASELINE ]] && BIN_NOTE="$BIN_NOTE; MODE@base runs $BASELINE (built $(date -r "$BASELINE" "+%Y-%m-%d %H:%M:%S"))"
CPU=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)

# ---- RSS only ---------------------------------------------------------------------
if [[ $RSS_ONLY == 1 ]]; then
  measure_rss
  {
    echo "tandem RSS measurement - $(date '+%Y-%m-%d %H:%M:%S %z')"
    echo "host: nproc=$(nproc), CPU: ${CPU:-?}; ${TANDEM_VER:-tandem ?} (worktree git $GIT_REV; $BIN_NOTE)"
    echo
    echo "$RSS_REPORT"
  } | tee "$TXT"
  log "written: $TXT"
  exit "$RSS_FAILED"
fi

# ---- twemproxy ------------------------------------------------------------------
TW_CONF=$TMP/nutcracker.yml
cat >"$TW_CONF" <<EOF
bench:
  listen: 127.0.0.1:$TW_PORT
  hash: fnv1a_64
  distribution: ketama
  redis: true
  preconnect: true
  auto_eject_hosts: false
  server_connections: 1
  servers:
    - 127.0.0.1:$SRC_PORT:1
EOF
nutcracker -t -c "$TW_CONF" >"$TMP/nutcracker-test.log" 2>&1 || { cat "$TMP/nutcracker-test.log" >&2; die "nutcracker rejected its config"; }
log "twemproxy on 127.0.0.1:$TW_PORT (stats 127.0.0.1:$TW_STATS)"
nutcracker -c "$TW_CONF" -o "$TMP/nutcracker.log" -p "$TMP/nutcracker.pid" \
  -s "$TW_STATS" -a 127.0.0.1 >/dev/null 2>&1 &
TW_PID=$!
PIDS+=("$TW_PID")
wait_ready "$TW_PORT" "$TW_PID" twemproxy || { tail -20 "$TMP/nutcracker.log" >&2; die "nutcracker did not start"; }

# ---- targets ----------------------------------------------------------------------
T_NAMES=(direct twemproxy)
T_PORTS=("$SRC_PORT" "$TW_PORT")
T_PIDS=("$SRC_PID" "$TW_PID")
T_LOGS=("$TMP/source.log" "$TMP/nutcracker.log")
STARTS=()   # "index|binary|suffix"
for i in "${RUN_MODES[@]}"; do
  STARTS+=("$i|$TANDEM_BIN|")
  [[ -n $BASELINE ]] && STARTS+=("$i|$BASELINE|@base")
done
for st in "${STARTS[@]}"; do
  IFS='|' read -r i bin suffix <<<"$st"
  name=$(mode_field "$i" name)$suffix
  log "starting tandem-$name ($bin)"
  if start_tandem "$i" "$bin" "$suffix"; then
    log "tandem-$name on 127.0.0.1:$T_PORT (admin 127.0.0.1:$T_ADMIN)"
    T_NAMES+=("tandem-$name"); T_PORTS+=("$T_PORT"); T_PIDS+=("$T_PID"); T_LOGS+=("$TMP/tandem-$name.log")
  else
    log "mode $name: skipped: $T_WHY"
    SKIPPED+=("tandem-$name: skipped ($T_WHY)")
    NOT_STARTED+=("tandem-$name")
  fi
done
NT=${#T_NAMES[@]}
declare -A DEAD=() TIMEOUTS=()

# ---- benchmark loop -----------------------------------------------------------------
echo "round,pipeline,test,target,requests,clients,rps,avg_ms,min_ms,p50_ms,p95_ms,p99_ms,max_ms,wall_s,status,stderr_errors,redis_cpu_us,proxy_cpu_us,client_cpu_us" >"$CSV"

fail_note() { # target test pipeline round message
  {
    echo "=== $(date '+%H:%M:%S') round $4, $2 -P $3 against $1: $5"
    echo "--- redis-benchmark stdout (tail)"; tail -5 "$TMP/bench.out" 2>/dev/null
    echo "--- redis-benchmark stderr (tail)"; tail -20 "$TMP/bench.err" 2>/dev/null
  } >>"$FAILLOG"
}

CLK_TCK=$(getconf CLK_TCK 2>/dev/null || echo 100)
cpu_ticks() { # pid -> user+system clock ticks so far (0 for no pid)
  [[ -n $1 && -r /proc/$1/stat ]] || { echo 0; return; }
  awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"
}
child_ticks() { # this shell's reaped children: user+system clock ticks
  awk '{ sub(/^.*\) /, ""); print $14 + $15 }' "/proc/$$/stat"
}
per_req_us() { awk -v t="$1" -v n="$2" -v hz="$CLK_TCK" 'BEGIN { printf "%.2f", t * 1e6 / hz / n }'; }

run_one() { # target_index test pipeline round
  local ti=$1 test=$2 p=$3 r=$4 name=${T_NAMES[$1]} port=${T_PORTS[$1]} pid=${T_PIDS[$1]}
  local n rc t0 t1 wall line status errs
  n=$(requests_for "$test" "$p")
  if [[ -n ${DEAD[$name]:-} ]]; then
    echo "$r,$p,$test,$name,$n,$CLIENTS,,,,,,,,,skipped,0,,," >>"$CSV"
    return
  fi
  flush_all
  [[ $test == get ]] && populate
  # CPU time (clock ticks) of the servers, of the proxy in between (none for direct) and of
  # the benchmark client (this shell's reaped children), to show where the cores go.
  local redis0 proxy0 client0 redis1 proxy1 client1 cpu_redis cpu_proxy cpu_client
  redis0=$(( $(cpu_ticks "$SRC_PID") + $(cpu_ticks "$TGT_PID") ))
  proxy0=0; [[ $pid != "$SRC_PID" ]] && proxy0=$(cpu_ticks "$pid")
  client0=$(child_ticks)
  t0=$(date +%s.%N)
  bounded "$RUN_TIMEOUT" redis-benchmark -h 127.0.0.1 -p "$port" -t "$test" -n "$n" -c "$CLIENTS" \
    -P "$p" -d "$DATASIZE" -r "$KEYSPACE" --csv >"$TMP/bench.out" 2>"$TMP/bench.err"
  rc=$BG_RC
  t1=$(date +%s.%N)
  redis1=$(( $(cpu_ticks "$SRC_PID") + $(cpu_ticks "$TGT_PID") ))
  proxy1=0; [[ $pid != "$SRC_PID" ]] && proxy1=$(cpu_ticks "$pid")
  client1=$(child_ticks)
  cpu_redis=$(per_req_us $((redis1 - redis0)) "$n")
  cpu_proxy=$(per_req_us $((proxy1 - proxy0)) "$n")
  cpu_client=$(per_req_us $((client1 - client0)) "$n")
  wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')
  errs=$(grep -ci 'error' "$TMP/bench.err")
  line=$(grep -v '^"test"' "$TMP/bench.out" | grep '^"' | tail -1)
  if [[ $rc == 0 && -n $line ]]; then
    status=ok
    [[ $errs != 0 ]] && { status=ok-with-errors; fail_note "$name" "$test" "$p" "$r" "$errs error line(s) on stderr"; }
    # "TEST","rps","avg","min","p50","p95","p99","max"
    local f
    IFS=, read -r -a f <<<"${line//\"/}"
    echo "$r,$p,$test,$name,$n,$CLIENTS,${f[1]},${f[2]},${f[3]},${f[4]},${f[5]},${f[6]},${f[7]},$wall,$status,$errs,$cpu_redis,$cpu_proxy,$cpu_client" >>"$CSV"
    local extra=""
    [[ $errs != 0 ]] && extra="  [$errs error line(s) on stderr]"
    log "round $r/$ROUNDS  $(printf '%-6s P=%-3s %-22s %10.0f rps  p50 %6s ms  p99 %6s ms  (%ss)' \
      "$test" "$p" "$name" "${f[1]}" "${f[4]}" "${f[6]}" "$wall")$extra"
  else
    if [[ $rc == 124 || $rc == 137 ]]; then status=timeout; else status="error-rc$rc"; fi
    echo "$r,$p,$test,$name,$n,$CLIENTS,,,,,,,,$wall,$status,$errs,,," >>"$CSV"
    log "round $r/$ROUNDS  $test P=$p $name: FAILED ($status after ${wall}s): $(tail -2 "$TMP/bench.err" | tr '\n' ' ')"
    fail_note "$name" "$test" "$p" "$r" "$status (exit $rc) after ${wall}s; command: redis-benchmark -h 127.0.0.1 -p $port -t $test -n $n -c $CLIENTS -P $p -d $DATASIZE -r $KEYSPACE --csv"
    TIMEOUTS[$name]=$(( ${TIMEOUTS[$name]:-0} + 1 ))
    local why=""
    if ! kill -0 "$pid" 2>/dev/null; then why="process exited"
    elif [[ $(timeout 3 redis-cli -h 127.0.0.1 -p "$port" PING 2>/dev/null) != PONG ]]; then why="no PONG within 3 s"
    elif (( ${TIMEOUTS[$name]} >= 2 )); then why="${TIMEOUTS[$name]} failed runs"; fi
    if [[ -n $why ]]; then
      DEAD[$name]=$why
      log "$name disabled for the rest of the run: $why"
      { echo "--- $name disabled: $why; its log (tail):"; tail -30 "${T_LOGS[$ti]}"; } >>"$FAILLOG"
    fi
  fi
}

run_rounds

[[ $RSS == 1 ]] && measure_rss

# ---- report -------------------------------------------------------------------------
req_desc=""
for p in "${PIPE_LIST[@]}"; do
  req_desc+="P$p: $(requests_for set "$p")"
  [[ " ${TEST_LIST[*]} " == *" mset "* ]] && req_desc+=" (mset $(requests_for mset "$p"))"
  req_desc+=", "
done
req_desc=${req_desc%, }
{
  echo "tandem comparison benchmark - $(date '+%Y-%m-%d %H:%M:%S %z')"
  echo "host: nproc=$(nproc), CPU: ${CPU:-?}; load avg at start $LOAD0, at end $LOAD1"
  echo "versions: redis-server $REDIS_VER, redis-benchmark ${BENCH_VER:-?}, nutcracker ${TW_VER:-?}, ${TANDEM_VER:-tandem ?} (worktree git $GIT_REV; $BIN_NOTE)"
  echo "redis-benchmark -c $CLIENTS -d $DATASIZE -r $KEYSPACE; requests per run: $req_desc"
  echo "rounds: $ROUNDS (order of targets rotated each round; db flushed before every run; GET runs on a pre-filled keyspace)"
  echo "all processes on 127.0.0.1 of this machine, benchmark client included; wall time ${ELAPSED}s"
  echo "values are medians over rounds; ratio = rps / rps of direct (or twemproxy)"
  echo "CPU us/req: user+system CPU time per request of the redis-server(s), of the proxy, and of redis-benchmark;"
  echo "  with all of them sharing $(nproc) cores, throughput is bounded by cores / (their sum)"
  echo "NOTE: ratios are from this run only (same machine, same minutes); do not compare across runs."
  for s in "${SKIPPED[@]}"; do echo "$s"; done
  for n in "${!DEAD[@]}"; do echo "$n: disabled during the run (${DEAD[$n]}); see $(basename "$FAILLOG")"; done
  echo
  python3 - "$CSV" "$TESTS" "${T_NAMES[*]}" "$PIPELINES" <<'PY'
import csv, statistics, sys
path, tests, targets, pipes = sys.argv[1], sys.argv[2].split(","), sys.argv[3].split(), sys.argv[4].split()
rows = list(csv.DictReader(open(path)))
def med(vals):
    return statistics.median(vals) if vals else None
agg, fails = {}, {}
for r in rows:
    key = (r["pipeline"], r["test"], r["target"])
    if r["status"].startswith("ok"):
        agg.setdefault(key, []).append(r)
    else:
        fails.setdefault(key, []).append(r["status"])
def f(v, fmt):
    return "-" if v is None else fmt.format(v)
W = max([22] + [len(tg) for tg in targets])
for p in pipes:
    print(f"pipeline -P {p}")
    hdr = (f"{'test':<7} {'target':<{W}} {'rps':>10} {'p50 ms':>8} {'p99 ms':>8} {'vs direct':>10} {'vs twemproxy':>13}"
           f" {'CPU us/req: redis':>18} {'proxy':>6} {'client':>6}  n")
    print(hdr)
    print("-" * len(hdr))
    for t in tests:
        med_rps = {}
        for tg in targets:
            rs = agg.get((p, t, tg), [])
            med_rps[tg] = med([float(x["rps"]) for x in rs])
        for tg in targets:
            rs = agg.get((p, t, tg), [])
            rps = med_rps[tg]
            p50 = med([float(x["p50_ms"]) for x in rs])
            p99 = med([float(x["p99_ms"]) for x in rs])
            vd = rps / med_rps["direct"] if rps and med_rps.get("direct") else None
            vt = rps / med_rps["twemproxy"] if rps and med_rps.get("twemproxy") else None
            note = ""
            if (p, t, tg) in fails:
                note = "  failed: " + ",".join(fails[(p, t, tg)])
            cpu = [med([float(x[c]) for x in rs if x.get(c)]) for c in ("redis_cpu_us", "proxy_cpu_us", "client_cpu_us")]
            print(f"{t:<7} {tg:<{W}} {f(rps, '{:.0f}'):>10} {f(p50, '{:.3f}'):>8} {f(p99, '{:.3f}'):>8} "
                  f"{f(vd, '{:.2f}'):>10} {f(vt, '{:.2f}'):>13} {f(cpu[0], '{:.2f}'):>18} {f(cpu[1], '{:.2f}'):>6} "
                  f"{f(cpu[2], '{:.2f}'):>6}  {len(rs)}{note}")
        print()
PY
  if [[ -n $RSS_REPORT ]]; then echo "$RSS_REPORT"; echo; fi
  echo "raw per-round numbers: $CSV"
  [[ -s $FAILLOG ]] && echo "failures: $FAILLOG"
} | tee "$TXT"
log "written: $CSV and $TXT"
# A run with failures still prints its table, but does not pass for a good one.
if [[ -s $FAILLOG || ${#NOT_STARTED[@]} -gt 0 || $RSS_FAILED == 1 ]]; then
  [[ ${#NOT_STARTED[@]} -gt 0 ]] && log "FAILED: did not start: ${NOT_STARTED[*]}"
  [[ $RSS_FAILED == 1 ]] && log "FAILED: the RSS measurement (see its report above)"
  [[ -s $FAILLOG ]] && log "FAILED: $(grep -c '^===' "$FAILLOG") failed runs; see $FAILLOG"
  exit 1
fi
