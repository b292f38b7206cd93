#!/usr/bin/env bash
# Runs the whole test suite on a fresh Debian machine: installs redis-server, redis-tools
# (redis-cli, redis-benchmark), nutcracker (twemproxy, for the benchmark harness) and procps
# (kill) when missing, then runs every test (unit, property and integration tests against
# real redis-server processes on loopback) and the benchmark harness in miniature.
#
#   ./scripts/test.sh            # what a developer runs
#   CI=true ./scripts/test.sh    # what .ci/run runs (also checks fmt and clippy)
set -euo pipefail
cd "$(dirname "$0")/.."

# kill(1) is procps's (the shell's builtin is not a program): the harness signals tandem
# with it, and a bare Debian image has no procps.
# python3: benches/compare.sh (free ports) and scripts/check-deploy.sh (its venv).
./scripts/need-packages.sh redis-server:redis-server redis-cli:redis-tools redis-benchmark:redis-tools \
  nutcracker:nutcracker kill:procps python3:python3
redis-server --version

if [ "${CI:-}" = "true" ]; then
  # A bare rustup toolchain may lack the two components the checks below run.
  if command -v rustup >/dev/null 2>&1; then rustup component add rustfmt clippy >/dev/null 2>&1 || true; fi
  cargo fmt --all -- --check
  cargo clippy --all-targets -- -D warnings
fi
./scripts/check-deploy.sh
cargo test --lib --bins --tests -- --test-threads="${TEST_THREADS:-4}"
# Again on two worker threads (the suite above runs the default single event loop): the tests
# where tasks racing on different threads would show.
TANDEM_TEST_WORKERS=2 cargo test --test dual_write --test reliability --test ramp -- \
  --test-threads="${TEST_THREADS:-4}"
# The criterion benches, each run once as a smoke test (criterion takes no libtest flags).
cargo test --benches
# The comparison harness end to end, in miniature (seconds): direct Redis, twemproxy and the
# debug tandem built above, mirror off (one thread and auto) and async + compare, and the RSS
# measurement. It exits
# non-zero if any run fails, a tandem does not start or an idle client goes unanswered.
TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
TANDEM_BIN="$TARGET_DIR/debug/tandem" RESULTS_DIR="$TARGET_DIR/bench-smoke" IDLE_CONNS=100 \
  benches/compare.sh --no-build --rounds 1 --requests 2000 --tests set,get,mset --pipelines "1 16" \
  --modes off,async+compare5,off-auto --rss >/dev/null
