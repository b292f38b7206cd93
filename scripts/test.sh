#!/usr/bin/env bash
# Runs the whole test suite on a fresh Debian machine: installs redis-server, redis-tools
# (redis-cli, redis-benchmark) and procps (kill) when missing, then runs every test (unit,
# property and integration tests against real redis-server processes on loopback).
#
#   ./scripts/test.sh            # what a developer runs
#   CI=true ./scripts/test.sh    # what .ci/run runs (also checks fmt and clippy)
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || need+=(redis-tools)
# The harness signals tandem with kill(1), which is procps's (the shell's builtin is not a
# program); a bare Debian image has no procps.
[ -x /bin/kill ] || [ -x /usr/bin/kill ] || need+=(procps)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
  # Debian starts a system redis on 6379 after install; tests never use it.
fi
redis-server --version

if [ "${CI:-}" = "true" ]; then
  cargo fmt --all -- --check
  cargo clippy --all-targets -- -D warnings
fi
./scripts/check-deploy.sh
cargo test --lib --bins --tests -- --test-threads="${TEST_THREADS:-4}"
# The criterion benches, each run once as a smoke test (criterion takes no libtest flags).
cargo test --benches
