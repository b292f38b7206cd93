#!/usr/bin/env bash
# benches/cluster.sh - throughput/latency of tandem in front of a Redis Cluster, against
# redis-benchmark talking to the same cluster directly in cluster mode, all on loopback.
#
# It starts its own 3-primary Redis Cluster (redis-server --cluster-enabled yes on free
# 127.0.0.1 ports, `redis-cli --cluster create ... --cluster-replicas 0`, then waits until
# every node reports cluster_state:ok) and one tandem whose only backend is
#   backends.source.url: redis+cluster://127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3
# Then, for every round, pipeline depth and test, it runs redis-benchmark
#   direct: redis-benchmark --cluster -h 127.0.0.1 -p P1 ...   (the client routes by slot)
#   tandem: redis-benchmark -h 127.0.0.1 -p TANDEM_PORT ...     (plain; tandem routes)
# one after the other (order alternated each round), flushing every node before each run
# (and filling the keyspace before GET runs). Results: a table per pipeline depth on stdout
# with medians over rounds and the tandem/direct ratio, plus benches/results/cluster-*.csv
# (raw per-round numbers) and cluster-*.txt (the table).
#
# Usage: benches/cluster.sh [--rounds N] [--requests N] [--tests set,get,...] [--quick]
#                           [--pipelines "1 16"] [--clients 50] [--threads 3]
#                           [--source-opts YAML] [--tandem-yaml YAML]
#                           [--wait-idle SECONDS] [--no-build]
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TANDEM_BIN=${TANDEM_BIN:-$ROOT/target/release/tandem}
RESULTS_DIR=${RESULTS_DIR:-$ROOT/benches/results}

ROUNDS=3
TESTS=set,get,incr,lpush,mset
PIPELINES="1 16"
CLIENTS=50
THREADS=3              # redis-benchmark --threads for BOTH targets (--cluster picks 1 per primary)
DATASIZE=100
KEYSPACE=100000
NODES=3
REQUESTS=""            # empty: sized per pipeline depth (see requests_for)
# redis-benchmark with threads (always so with --cluster) ends a run only on its next
# 250 ms timer tick after the last reply, so a run's rps is understated by up to
# 0.25 s / run time: runs are sized to take several seconds (~7 s direct on 2 cores).
REQ_P1=300000          # requests per run at -P 1
REQ_PN=1500000         # requests per run at -P > 1
MSET_DIV_P1=2          # MSET carries 10 keys per command: fewer requests
MSET_DIV_PN=4
QUICK=0
BUILD=1
WAIT_IDLE=0            # seconds to wait for running rustc/cargo processes before measuring
SOURCE_OPTS=""         # extra fields of backends.source, e.g. "pool_size: 4"
TANDEM_YAML=""         # extra top-level config (\n = newline)
RUN_TIMEOUT=${RUN_TIMEOUT:-120}   # seconds, per redis-benchmark call

usage() {
  cat <<EOF
Usage: benches/cluster.sh [options]
  --rounds N          rounds of alternation, at least 1 (default $ROUNDS); medians over rounds
  --requests N        requests per redis-benchmark run for every depth
                      (default: $REQ_P1 at -P 1, $REQ_PN deeper; MSET gets
                      N/$MSET_DIV_P1 at -P 1 and N/$MSET_DIV_PN deeper: 10 keys per command)
  --tests LIST        comma-separated redis-benchmark tests (default $TESTS)
  --pipelines "A B"   pipeline depths (default "$PIPELINES")
  --clients N         parallel connections (default $CLIENTS)
  --threads N         redis-benchmark --threads, the same for both targets (default $THREADS:
                      what --cluster picks by itself for $NODES primaries)
  --quick             divide request counts by 10 (smoke test)
  --source-opts YAML  extra fields for backends.source, e.g. "pool_size: 4, command_timeout: 5s"
  --tandem-yaml YAML  extra top-level config for tandem (\n = newline)
  --wait-idle S       before measuring, wait up to S seconds for running rustc/cargo
                      processes to finish (default 0: only warn)
  --no-build          never run cargo build
Environment: TANDEM_BIN, RESULTS_DIR, RUN_TIMEOUT (s, default 120)
EOF
}

while [[ $# -gt 0 ]]; do
  case $1 in
    --rounds) ROUNDS=${2-}; shift 2 || shift ;;
    --requests) REQUESTS=${2-}; shift 2 || shift ;;
    --tests) TESTS=${2-}; shift 2 || shift ;;
    --pipelines) PIPELINES=${2-}; shift 2 || shift ;;
    --clients) CLIENTS=${2-}; shift 2 || shift ;;
    --threads) THREADS=${2-}; shift 2 || shift ;;
    --source-opts) SOURCE_OPTS=${2-}; shift 2 || shift ;;
    --tandem-yaml) TANDEM_YAML=${2-}; shift 2 || shift ;;
    --wait-idle) WAIT_IDLE=${2-}; shift 2 || shift ;;
    --quick) QUICK=1; shift ;;
    --no-build) BUILD=0; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "cluster.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
done

is_uint() { [[ $1 =~ ^[1-9][0-9]*$ ]]; }
for v in "$ROUNDS" "$CLIENTS" "$THREADS" ${REQUESTS:+"$REQUESTS"} $PIPELINES; do
  is_uint "$v" || { echo "cluster.sh: not a positive integer: '$v'" >&2; exit 2; }
done
[[ $WAIT_IDLE =~ ^[0-9]+$ ]] || { echo "cluster.sh: --wait-idle: not a number of seconds: '$WAIT_IDLE'" >&2; exit 2; }
[[ -n ${PIPELINES// /} ]] || { echo "cluster.sh: --pipelines is empty" >&2; exit 2; }
IFS=, read -r -a TEST_LIST <<<"$TESTS"
[[ ${#TEST_LIST[@]} -gt 0 ]] || { echo "cluster.sh: --tests is empty" >&2; exit 2; }
for t in "${TEST_LIST[@]}"; do
  [[ $t =~ ^[a-z_0-9]+$ ]] || { echo "cluster.sh: bad test name '$t'" >&2; exit 2; }
done

"$ROOT/scripts/need-packages.sh" redis-server:redis-server redis-benchmark:redis-tools python3:python3
for cmd in redis-server redis-cli redis-benchmark python3 timeout; do
  command -v "$cmd" >/dev/null 2>&1 || { echo "cluster.sh: $cmd not found" >&2; exit 2; }
done

# Shared helpers (logging, process bookkeeping and cleanup, ports, run sizes).
BENCH_NAME=cluster
# shellcheck source=benches/lib.sh
source "$ROOT/benches/lib.sh"
# rustc / cargo processes running on this machine (someone else's build competes for
# the cores). By process name only.
busy_count() { echo $(( $(pgrep -xc rustc 2>/dev/null || true) + $(pgrep -xc cargo 2>/dev/null || true) )); }

# ---------------------------------------------------------------------------------
needs_build() {
  [[ -x $TANDEM_BIN ]] || return 0
  [[ -n $(find "$ROOT/src" "$ROOT/Cargo.toml" "$ROOT/Cargo.lock" -newer "$TANDEM_BIN" -print -quit 2>/dev/null) ]]
}
if [[ $BUILD == 1 ]] && needs_build; then
  [[ $(pgrep -xc cargo 2>/dev/null || true) -gt 0 ]] && log "another cargo is running; cargo waits for its lock on target/ if it builds this crate"
  log "building tandem (cargo build --release) ..."
  (cd "$ROOT" && cargo build --release >&2) || die "cargo build --release failed (--no-build benchmarks the existing binary as it is)"
fi
[[ -x $TANDEM_BIN ]] || die "no tandem binary at $TANDEM_BIN (run without --no-build)"

STAMP=$(date +%Y%m%d-%H%M%S)
mkdir -p "$RESULTS_DIR" || die "cannot create $RESULTS_DIR"
CSV=$RESULTS_DIR/cluster-$STAMP.csv
TXT=$RESULTS_DIR/cluster-$STAMP.txt
FAILLOG=$RESULTS_DIR/cluster-$STAMP.failures.log
NOTES=()   # lines for the report header

# ---- the cluster ------------------------------------------------------------------
# Client ports and cluster-bus ports are all picked free (the default bus port,
# port+10000, may be taken or beyond 65535).
read -r -a ALLP <<<"$(free_ports $((2 * NODES + 2)))"
NODE_PORTS=("${ALLP[@]:0:NODES}")
BUS_PORTS=("${ALLP[@]:NODES:NODES}")
T_PORT=${ALLP[2 * NODES]}
T_ADMIN=${ALLP[2 * NODES + 1]}
NODE_PIDS=()
log "temp dir $TMP; cluster nodes on 127.0.0.1:${NODE_PORTS[*]} (bus ${BUS_PORTS[*]})"
for ((i = 0; i < NODES; i++)); do
  p=${NODE_PORTS[$i]}
  mkdir -p "$TMP/node-$p"
  redis-server --port "$p" --bind 127.0.0.1 --save '' --appendonly no --protected-mode yes \
    --cluster-enabled yes --cluster-config-file "$TMP/nodes-$p.conf" --cluster-port "${BUS_PORTS[$i]}" \
    --cluster-node-timeout 5000 --dir "$TMP/node-$p" --daemonize no \
    --logfile "$TMP/node-$p.log" >/dev/null 2>&1 &
  NODE_PIDS+=("$!")
  PIDS+=("$!")
done
for ((i = 0; i < NODES; i++)); do
  wait_ready "${NODE_PORTS[$i]}" "${NODE_PIDS[$i]}" || { tail -20 "$TMP/node-${NODE_PORTS[$i]}.log" >&2; die "redis-server ${NODE_PORTS[$i]} did not start"; }
done
create_args=()
for p in "${NODE_PORTS[@]}"; do create_args+=("127.0.0.1:$p"); done
log "redis-cli --cluster create ${create_args[*]} --cluster-replicas 0 --cluster-yes"
bounded 60 redis-cli --cluster create "${create_args[@]}" --cluster-replicas 0 --cluster-yes \
  >"$TMP/cluster-create.log" 2>&1
[[ $BG_RC == 0 ]] || { tail -20 "$TMP/cluster-create.log" >&2; die "redis-cli --cluster create failed (exit $BG_RC)"; }

cluster_ok() { # every node: cluster_state:ok, all slots assigned, knows every node
  local p info
  for p in "${NODE_PORTS[@]}"; do
    info=$(rcli "$p" CLUSTER INFO 2>/dev/null | tr -d '\r')
    grep -qx 'cluster_state:ok' <<<"$info" || return 1
    grep -qx 'cluster_slots_ok:16384' <<<"$info" || return 1
    grep -qx "cluster_known_nodes:$NODES" <<<"$info" || return 1
  done
}
for ((i = 0; i < 300; i++)); do cluster_ok && break; sleep 0.1; done
cluster_ok || {
  for p in "${NODE_PORTS[@]}"; do echo "--- $p"; rcli "$p" CLUSTER INFO | head -8; done >&2
  die "the cluster did not reach cluster_state:ok on every node within 30 s"
}
log "cluster up: every node reports cluster_state:ok"
P1=${NODE_PORTS[0]}
CLUSTER_URL="redis+cluster://$(printf '127.0.0.1:%s,' "${NODE_PORTS[@]}" | sed 's/,$//')"

VALUE=$(head -c "$DATASIZE" /dev/zero | tr '\0' x)
flush_all() {
  local p
  for p in "${NODE_PORTS[@]}"; do rcli "$p" FLUSHALL >/dev/null || log "WARNING: FLUSHALL on $p failed"; done
}
reset_stats() { local p; for p in "${NODE_PORTS[@]}"; do rcli "$p" CONFIG RESETSTAT >/dev/null; done; }
node_keys() { # DBSIZE of every node, "a/b/c"
  local p out=""
  for p in "${NODE_PORTS[@]}"; do out+="$(rcli "$p" DBSIZE 2>/dev/null)/"; done
  echo "${out%/}"
}
hit_pct() { # GET hit rate over all nodes since the last reset_stats, in percent
  local p h=0 m=0 v x
  for p in "${NODE_PORTS[@]}"; do
    v=$(rcli "$p" INFO stats | tr -d '\r')
    x=$(sed -n 's/^keyspace_hits://p' <<<"$v"); h=$((h + ${x:-0}))
    x=$(sed -n 's/^keyspace_misses://p' <<<"$v"); m=$((m + ${x:-0}))
  done
  awk -v h="$h" -v m="$m" 'BEGIN { if (h + m == 0) print ""; else printf "%.1f", 100 * h / (h + m) }'
}

# Keys the two kinds of run use (redis-benchmark 7):
#   plain:     SET/GET key:%012d, INCR counter:%012d, LPUSH mylist, MSET 10 x key:%012d
#   --cluster: the same with ":{tag}" after the prefix (key:{tag}:%012d, mylist:{tag}),
#              where {tag} is replaced by a fixed hash tag of the FIRST slot of the primary
#              the client is connected to; so each primary sees one slot only.
# The tags are learnt here from a tiny SET run with -r 1, so that GET runs of the direct
# side can read a filled keyspace too.
declare -A NODE_TAGS=()  # port -> space-separated tags
probe_tags() {
  local p keys try missing
  for ((try = 1; try <= 3; try++)); do
    flush_all
    bounded 60 redis-benchmark --cluster -h 127.0.0.1 -p "$P1" --threads "$THREADS" -t set -n $((20000 * try)) \
      -c "$CLIENTS" -r 1 -d 10 --csv >"$TMP/tags.out" 2>&1
    missing=0
    for p in "${NODE_PORTS[@]}"; do
      keys=$(timeout 10 redis-cli -h 127.0.0.1 -p "$p" --scan --pattern 'key:{*}:*' 2>/dev/null)
      # a tag shorter than 3 characters keeps closing braces: key:{ab}}:000000000000
      NODE_TAGS[$p]=$(sed -n 's/^key:\({[^ ]*\):[0-9]\{12\}$/\1/p' <<<"$keys" | sort -u | paste -sd' ' -)
      [[ -n ${NODE_TAGS[$p]} ]] || missing=1
    done
    ((missing)) || break
  done
  flush_all
}
# Fill the keyspace GET reads, with DATASIZE-byte values.
#   direct: key:{tag}:%012d for each tag on its own node (one slot: a local Lua loop)
#   tandem: key:%012d over the whole cluster: every node runs the loop and keeps what it
#           owns (SETs of keys of other nodes fail inside pcall and are skipped)
POP_TAG_LUA="for i=0,tonumber(ARGV[1])-1 do redis.call('SET', string.format('key:%s:%012d', ARGV[3], i), ARGV[2]) end return tonumber(ARGV[1])"
POP_ALL_LUA="local n=0 for i=0,tonumber(ARGV[1])-1 do local r = redis.pcall('SET', string.format('key:%012d', i), ARGV[2]) if type(r) == 'table' and r.ok then n = n + 1 end end return n"
populate() { # direct|tandem
  local p tag n total=0
  for p in "${NODE_PORTS[@]}"; do
    if [[ $1 == direct ]]; then
      for tag in ${NODE_TAGS[$p]}; do
        timeout 60 redis-cli -h 127.0.0.1 -p "$p" EVAL "$POP_TAG_LUA" 0 "$KEYSPACE" "$VALUE" "$tag" >/dev/null \
          || log "WARNING: populate $p $tag failed"
      done
    else
      n=$(timeout 60 redis-cli -h 127.0.0.1 -p "$p" EVAL "$POP_ALL_LUA" 0 "$KEYSPACE" "$VALUE") \
        || log "WARNING: populate $p failed"
      total=$((total + ${n:-0}))
    fi
  done
  [[ $1 == tandem && $total != "$KEYSPACE" ]] && log "WARNING: populated $total keys, expected $KEYSPACE"
}

# Which tests run in cluster mode at all: a tiny direct run per test. One that fails or
# prints no result is skipped for the direct side (and so has no ratio).
declare -A DIRECT_UNSUPPORTED=()
probe_tests() {
  local t line err
  for t in "${TEST_LIST[@]}"; do
    flush_all
    bounded 60 redis-benchmark --cluster -h 127.0.0.1 -p "$P1" --threads "$THREADS" -t "$t" -n 1000 \
      -c "$CLIENTS" -r "$KEYSPACE" -d "$DATASIZE" --csv >"$TMP/probe.out" 2>"$TMP/probe.err"
    line=$(grep '^"' "$TMP/probe.out" | grep -v '^"test"' | tail -1)
    if [[ $BG_RC != 0 || -z $line ]]; then
      err=$(grep -hi -m1 'error' "$TMP/probe.out" "$TMP/probe.err")
      [[ -z $err && -z $line ]] && err="no result line (not a redis-benchmark test name?)"
      DIRECT_UNSUPPORTED[$t]="exit $BG_RC: ${err:-$(tail -1 "$TMP/probe.err")}"
      log "test $t cannot run with redis-benchmark --cluster: ${DIRECT_UNSUPPORTED[$t]}; skipped on the direct side"
      NOTES+=("$t: cannot run with redis-benchmark --cluster (${DIRECT_UNSUPPORTED[$t]}); direct side skipped, no ratio")
    fi
  done
  flush_all
}

# ---- tandem ---------------------------------------------------------------------
T_PID=""
T_WHY=""
start_tandem() { # -> 0 and T_PID set, or 1 with T_WHY
  local conf=$TMP/tandem.yaml out
  {
    echo "# generated by benches/cluster.sh"
    echo "listen: \"127.0.0.1:$T_PORT\""
    echo "admin: {listen: \"127.0.0.1:$T_ADMIN\"}"
    echo "backends:"
    echo "  source: {url: \"$CLUSTER_URL\"${SOURCE_OPTS:+, $SOURCE_OPTS}}"
    [[ -n $TANDEM_YAML ]] && printf '%b\n' "$TANDEM_YAML"
  } >"$conf"
  if ! out=$("$TANDEM_BIN" check --config "$conf" 2>&1); then
    T_WHY="tandem check rejected its config: $(echo "$out" | tr '\n' ' ')"
    return 1
  fi
  "$TANDEM_BIN" run --config "$conf" --drain-timeout 1s --no-watch >"$TMP/tandem.log" 2>&1 &
  T_PID=$!
  PIDS+=("$T_PID")
  if ! wait_ready "$T_PORT" "$T_PID"; then
    T_WHY="tandem did not answer PING: $(tail -5 "$TMP/tandem.log" | tr '\n' ' ')"
    stop_pid "$T_PID"; T_PID=""
    return 1
  fi
  # One real command through it before measuring: a key on each node's slots.
  local k r
  for k in a b c; do
    r=$(timeout 5 redis-cli -h 127.0.0.1 -p "$T_PORT" SET "probe:$k" 1 2>&1)
    [[ $r == OK ]] || { T_WHY="SET probe:$k through tandem answered: $r"; stop_pid "$T_PID"; T_PID=""; return 1; }
  done
  return 0
}

# ---- header -----------------------------------------------------------------------
TANDEM_VER=$("$TANDEM_BIN" --version 2>/dev/null | head -1)
GIT_REV=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo "?")
[[ -n $(git -C "$ROOT" status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null) ]] && GIT_REV="$GIT_REV+dirty"
REDIS_VER=$(redis-server --version | sed -n 's/.*v=\([^ ]*\).*/\1/p')
BENCH_VER=$(redis-benchmark --version 2>/dev/null | awk '{print $2}')
BIN_NOTE="binary built $(date -r "$TANDEM_BIN" '+%Y-%m-%d %H:%M:%S')"
needs_build && BIN_NOTE="$BIN_NOTE; WARNING: src/ or Cargo.* changed since (--no-build?)"
CPU=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)

probe_tags
for p in "${NODE_PORTS[@]}"; do
  [[ -n ${NODE_TAGS[$p]} ]] || log "WARNING: no redis-benchmark --cluster key seen on node $p; direct GET runs will read misses there"
done
log "redis-benchmark --cluster hash tags per node: $(for p in "${NODE_PORTS[@]}"; do printf '%s=%s ' "$p" "${NODE_TAGS[$p]:-?}"; done)"
probe_tests

T_NAMES=(direct)
T_PORTS=("$P1")
log "starting tandem on 127.0.0.1:$T_PORT (admin 127.0.0.1:$T_ADMIN), source $CLUSTER_URL"
if start_tandem; then
  T_NAMES+=(tandem); T_PORTS+=("$T_PORT")
  log "tandem up"
else
  log "tandem skipped: $T_WHY"
  NOTES+=("tandem: skipped ($T_WHY)")
fi
NT=${#T_NAMES[@]}
declare -A DEAD=() FAILS=()

# ---- wait for an idle machine -------------------------------------------------------
b=$(busy_count)
if ((b > 0)); then
  if ((WAIT_IDLE > 0)); then
    log "$b rustc/cargo process(es) running; waiting up to ${WAIT_IDLE}s for them to finish"
    end=$(($(date +%s) + WAIT_IDLE))
    while (($(busy_count) > 0 && $(date +%s) < end)); do sleep 5; done
  fi
  b=$(busy_count)
  ((b > 0)) && log "WARNING: $b rustc/cargo process(es) running: they compete for the cores (see the busy column)"
fi
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)

# ---- benchmark loop -----------------------------------------------------------------
echo "round,pipeline,test,target,requests,clients,threads,rps,avg_ms,min_ms,p50_ms,p95_ms,p99_ms,max_ms,wall_s,status,error,node_keys,get_hit_pct,busy,redis_cpu_us,proxy_cpu_us,client_cpu_us" >"$CSV"

fail_note() { # target test pipeline round message
  {
    echo "=== $(date '+%H:%M:%S') round $4, $2 -P $3 against $1: $5"
    echo "--- redis-benchmark stdout (tail)"; tail -8 "$TMP/bench.out" 2>/dev/null
    echo "--- redis-benchmark stderr (tail)"; tail -20 "$TMP/bench.err" 2>/dev/null
  } >>"$FAILLOG"
}

CLK_TCK=$(getconf CLK_TCK 2>/dev/null || echo 100)
cpu_ticks() { # pid -> user+system clock ticks so far (0 for no pid)
  [[ -n $1 && -r /proc/$1/stat ]] || { echo 0; return; }
  awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"
}
nodes_ticks() { local s=0 p; for p in "${NODE_PIDS[@]}"; do s=$((s + $(cpu_ticks "$p"))); done; echo "$s"; }
child_ticks() { # this shell's reaped children: user+system clock ticks
  awk '{ sub(/^.*\) /, ""); print $14 + $15 }' "/proc/$$/stat"
}
per_req_us() { awk -v t="$1" -v n="$2" -v hz="$CLK_TCK" 'BEGIN { printf "%.2f", t * 1e6 / hz / n }'; }

csv_field() { printf '%s' "$1" | tr ',\n\r"' ';   ' | sed 's/ *$//' | cut -c1-200; }

run_one() { # target_index test pipeline round
  local ti=$1 test=$2 p=$3 r=$4 name=${T_NAMES[$1]} port=${T_PORTS[$1]}
  local n rc t0 t1 wall line status err keys hits busy pre
  n=$(requests_for "$test" "$p")
  if [[ $name == direct && -n ${DIRECT_UNSUPPORTED[$test]:-} ]]; then
    echo "$r,$p,$test,$name,$n,$CLIENTS,$THREADS,,,,,,,,,unsupported,,,,,,," >>"$CSV"; return
  fi
  if [[ -n ${DEAD[$name]:-} ]] || (( ${FAILS[$name/$test/$p]:-0} >= 2 )); then
    echo "$r,$p,$test,$name,$n,$CLIENTS,$THREADS,,,,,,,,,skipped,,,,,,," >>"$CSV"; return
  fi
  flush_all
  [[ $test == get ]] && populate "$name"
  reset_stats
  pre=()
  [[ $name == direct ]] && pre=(--cluster)
  busy=$(busy_count)
  local redis0 proxy0 client0 redis1 proxy1 client1
  redis0=$(nodes_ticks)
  proxy0=0; [[ $name == tandem ]] && proxy0=$(cpu_ticks "$T_PID")
  client0=$(child_ticks)
  t0=$(date +%s.%N)
  bounded "$RUN_TIMEOUT" redis-benchmark "${pre[@]}" -h 127.0.0.1 -p "$port" --threads "$THREADS" \
    -t "$test" -n "$n" -c "$CLIENTS" -P "$p" -d "$DATASIZE" -r "$KEYSPACE" --csv >"$TMP/bench.out" 2>"$TMP/bench.err"
  rc=$BG_RC
  t1=$(date +%s.%N)
  redis1=$(nodes_ticks)
  proxy1=0; [[ $name == tandem ]] && proxy1=$(cpu_ticks "$T_PID")
  client1=$(child_ticks)
  local cpu_redis cpu_proxy="" cpu_client
  cpu_redis=$(per_req_us $((redis1 - redis0)) "$n")
  [[ $name == tandem ]] && cpu_proxy=$(per_req_us $((proxy1 - proxy0)) "$n")
  cpu_client=$(per_req_us $((client1 - client0)) "$n")
  wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')
  keys=$(node_keys)
  hits=""; [[ $test == get ]] && hits=$(hit_pct)
  # redis-benchmark 7 exits on the first error reply, printing "Error from server: ..."
  err=$(grep -hi -m1 'error' "$TMP/bench.out" "$TMP/bench.err" | head -1)
  line=$(grep '^"' "$TMP/bench.out" | grep -v '^"test"' | tail -1)
  if [[ $rc == 0 && -n $line && -z $err ]]; then
    status=ok
    # "TEST","rps","avg","min","p50","p95","p99","max"
    local f
    IFS=, read -r -a f <<<"${line//\"/}"
    echo "$r,$p,$test,$name,$n,$CLIENTS,$THREADS,${f[1]},${f[2]},${f[3]},${f[4]},${f[5]},${f[6]},${f[7]},$wall,$status,,$keys,$hits,$busy,$cpu_redis,$cpu_proxy,$cpu_client" >>"$CSV"
    log "round $r/$ROUNDS  $(printf '%-6s P=%-3s %-7s %10.0f rps  p50 %6s ms  p99 %6s ms  (%ss; keys/node %s%s%s)' \
      "$test" "$p" "$name" "${f[1]}" "${f[4]}" "${f[6]}" "$wall" "$keys" "${hits:+; GET hits $hits%}" \
      "$( ((busy > 0)) && echo "; $busy rustc/cargo running")")"
  else
    if [[ $rc == 124 || $rc == 137 ]]; then status=timeout
    elif [[ -n $err ]]; then status="error-rc$rc"
    elif [[ $rc == 0 ]]; then status=no-result
    else status="failed-rc$rc"; fi
    [[ -z $err ]] && err=$(tail -1 "$TMP/bench.err")
    echo "$r,$p,$test,$name,$n,$CLIENTS,$THREADS,,,,,,,,$wall,$status,$(csv_field "$err"),$keys,$hits,$busy,,," >>"$CSV"
    log "round $r/$ROUNDS  $test P=$p $name: FAILED ($status after ${wall}s): $err"
    fail_note "$name" "$test" "$p" "$r" "$status (exit $rc) after ${wall}s; command: redis-benchmark ${pre[*]} -h 127.0.0.1 -p $port --threads $THREADS -t $test -n $n -c $CLIENTS -P $p -d $DATASIZE -r $KEYSPACE --csv"
    FAILS[$name/$test/$p]=$(( ${FAILS[$name/$test/$p]:-0} + 1 ))
    (( ${FAILS[$name/$test/$p]} == 2 )) && log "$name: $test -P $p failed twice, not run again"
    local why=""
    if [[ $name == tandem ]] && ! kill -0 "$T_PID" 2>/dev/null; then why="process exited"
    elif [[ $name == direct ]] && ! cluster_ok; then why="cluster not ok"
    elif [[ $(timeout 3 redis-cli -h 127.0.0.1 -p "$port" PING 2>/dev/null) != PONG ]]; then why="no PONG within 3 s"; fi
    if [[ -n $why ]]; then
      DEAD[$name]=$why
      log "$name disabled for the rest of the run: $why"
      if [[ $name == tandem ]]; then
        { echo "--- tandem disabled: $why; its log (tail):"; tail -30 "$TMP/tandem.log"; } >>"$FAILLOG"
      fi
    fi
  fi
}

run_rounds

# tandem's own log: warnings and errors during the run.
T_LOGNOTE=""
if [[ -n $T_PID ]]; then
  kill -0 "$T_PID" 2>/dev/null || T_LOGNOTE="tandem exited during the run!"$'\n'
  nwarn=$(grep -cE '\b(WARN|ERROR)\b|"level":"(WARN|ERROR)"' "$TMP/tandem.log")
  # Counters from tandem's /metrics: redirects it had to follow, commands served, errors.
  mets=$(python3 -c 'import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())' \
    "http://127.0.0.1:$T_ADMIN/metrics" 2>/dev/null \
    | grep -E '^tandem_[a-z_]*(redirect|error|primaries|commands_served|backend_up|timeout|refused|reject)[a-z_]*[{ ]' \
    | grep -v '_bucket{' | head -30)
  [[ -n $mets ]] && T_LOGNOTE+="tandem /metrics at the end (redirects, errors):"$'\n'"$(sed 's/^/   /' <<<"$mets")"$'\n'
  T_LOGNOTE+="tandem log: $nwarn WARN/ERROR line(s)"
  if ((nwarn > 0)); then
    T_LOGNOTE+=", most frequent (numbers masked):"$'\n'
    T_LOGNOTE+=$(grep -E '\b(WARN|ERROR)\b|"level":"(WARN|ERROR)"' "$TMP/tandem.log" \
      | sed -E 's/^[0-9TZ:.+-]+ +//; s/[0-9]+/N/g' | sort | uniq -c | sort -rn | head -5 | cut -c1-220 | sed 's/^/   /')
    { echo "--- tandem log, WARN/ERROR lines (first 50)"; grep -E '\b(WARN|ERROR)\b|"level":"(WARN|ERROR)"' "$TMP/tandem.log" | head -50; } >>"$FAILLOG"
  fi
fi

# ---- report -------------------------------------------------------------------------
req_desc=""
for p in "${PIPE_LIST[@]}"; do
  req_desc+="P$p: $(requests_for set "$p")"
  [[ " ${TEST_LIST[*]} " == *" mset "* ]] && req_desc+=" (mset $(requests_for mset "$p"))"
  req_desc+=", "
done
req_desc=${req_desc%, }
{
  echo "tandem vs direct Redis Cluster benchmark - $(date '+%Y-%m-%d %H:%M:%S %z')"
  echo "host: nproc=$(nproc), CPU: ${CPU:-?}; load avg at start $LOAD0, at end $LOAD1"
  echo "versions: redis-server $REDIS_VER, redis-benchmark ${BENCH_VER:-?}, ${TANDEM_VER:-tandem ?} (worktree git $GIT_REV; $BIN_NOTE)"
  src_desc=$CLUSTER_URL; [[ -n $SOURCE_OPTS ]] && src_desc+=" ($SOURCE_OPTS)"
  echo "cluster: $NODES primaries, no replicas, 127.0.0.1:${NODE_PORTS[*]}; tandem source $src_desc"
  echo "redis-benchmark -c $CLIENTS --threads $THREADS -d $DATASIZE -r $KEYSPACE; requests per run: $req_desc"
  echo "  direct: redis-benchmark --cluster -h 127.0.0.1 -p $P1 ...; tandem: redis-benchmark -h 127.0.0.1 -p <tandem> ..."
  echo "rounds: $ROUNDS (order alternated each round; every node flushed before every run; GET runs read a filled keyspace)"
  echo "all processes on 127.0.0.1 of this machine, benchmark client included; wall time ${ELAPSED}s"
  echo "values are medians over rounds; ratio = median tandem rps / median direct rps (same run), [min-max of per-round ratios]"
  echo "CPU us/req: user+system CPU time per request of the $NODES redis-servers together, of tandem, and of redis-benchmark"
  echo "s/run: requests / rps. redis-benchmark with threads stops on 250 ms ticks, so rps is understated by up to 0.25/(s/run)"
  echo "key layout differs: --cluster puts every key of a primary's clients into ONE slot (key:{tag}:N, the primary's first"
  echo "  slot; LPUSH hits $NODES lists, one per primary); through tandem keys are key:N over all slots and LPUSH hits ONE"
  echo "  list (mylist, on one primary); MSET through tandem carries 10 keys of different slots"
  echo "NOTE: ratios are from this run only (same machine, same minutes); do not compare across runs."
  for s in "${NOTES[@]}"; do echo "$s"; done
  for n in "${!DEAD[@]}"; do echo "$n: disabled during the run (${DEAD[$n]}); see $(basename "$FAILLOG")"; done
  echo
  python3 - "$CSV" "$TESTS" "${T_NAMES[*]}" "$PIPELINES" <<'PY'
import csv, statistics, sys
path, tests, targets, pipes = sys.argv[1], sys.argv[2].split(","), sys.argv[3].split(), sys.argv[4].split()
rows = list(csv.DictReader(open(path)))
def med(vals):
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None
def fl(x):
    try:
        return float(x)
    except (TypeError, ValueError):
        return None
ok, other = {}, {}
for r in rows:
    key = (r["pipeline"], r["test"], r["target"])
    if r["status"] == "ok":
        ok.setdefault(key, []).append(r)
    else:
        other.setdefault(key, []).append(r)
def f(v, fmt):
    return "-" if v is None else fmt.format(v)
errors = []
for p in pipes:
    print(f"pipeline -P {p}")
    hdr = (f"{'test':<6} {'target':<7} {'rps':>9} {'p50 ms':>7} {'p99 ms':>7} {'s/run':>6} {'tandem/direct':>14} {'[per round]':>12}"
           f" {'CPU us/req: redis':>18} {'tandem':>6} {'client':>6} {'busy':>4}  n")
    print(hdr)
    print("-" * len(hdr))
    for t in tests:
        rps = {tg: med([fl(x["rps"]) for x in ok.get((p, t, tg), [])]) for tg in targets}
        # per-round ratios, from rounds where both succeeded
        byround = {}
        for tg in targets:
            for x in ok.get((p, t, tg), []):
                byround.setdefault(x["round"], {})[tg] = fl(x["rps"])
        rr = [v["tandem"] / v["direct"] for v in byround.values() if v.get("tandem") and v.get("direct")]
        for tg in targets:
            rs = ok.get((p, t, tg), [])
            note = ""
            bad = other.get((p, t, tg), [])
            if bad:
                st = sorted({b["status"] for b in bad})
                note = "  " + ",".join(st)
                for b in bad:
                    if b["error"]:
                        errors.append(f"-P {p} {t} {tg} round {b['round']}: {b['status']}: {b['error']}")
            ratio = rng = ""
            if tg == "tandem":
                ratio = f(rps["tandem"] / rps["direct"] if rps.get("tandem") and rps.get("direct") else None, "{:.2f}")
                rng = f"[{min(rr):.2f}-{max(rr):.2f}]" if rr else ""
            hits = med([fl(x["get_hit_pct"]) for x in rs])
            if t == "get" and hits is not None and hits < 99:
                note += f"  GET hits {hits:.0f}%"
            busy = sum(1 for x in rs if fl(x["busy"]))
            cpu = [med([fl(x[c]) for x in rs]) for c in ("redis_cpu_us", "proxy_cpu_us", "client_cpu_us")]
            print(f"{t:<6} {tg:<7} {f(rps[tg], '{:.0f}'):>9} {f(med([fl(x['p50_ms']) for x in rs]), '{:.3f}'):>7} "
                  f"{f(med([fl(x['p99_ms']) for x in rs]), '{:.3f}'):>7} "
                  f"{f(med([fl(x['requests']) / fl(x['rps']) for x in rs if fl(x['rps'])]), '{:.1f}'):>6} {ratio:>14} {rng:>12} "
                  f"{f(cpu[0], '{:.2f}'):>18} {f(cpu[1], '{:.2f}') if tg == 'tandem' else '':>6} {f(cpu[2], '{:.2f}'):>6} "
                  f"{busy if busy else '':>4}  {len(rs)}{note}")
    print()
print("busy = runs during which rustc/cargo processes were running; n = rounds that succeeded")
if errors:
    print()
    print("errors:")
    seen = set()
    for e in errors:
        if e not in seen:
            seen.add(e)
            print("  " + e)
PY
  [[ -n $T_LOGNOTE ]] && { echo; echo "$T_LOGNOTE"; }
  echo
  echo "raw per-round numbers: $CSV"
  [[ -s $FAILLOG ]] && echo "failures: $FAILLOG"
} | tee "$TXT"
log "written: $CSV and $TXT"
