#!/usr/bin/env bash
# Runs the cargo-fuzz target `client_input` (arbitrary client bytes through request framing,
# command lookup, key routing, comparison rules, mirror effect rewriting and reply parsing)
# for a bounded time, on the stable toolchain (no sanitizer), installing cargo-fuzz if missing.
#
#   ./scripts/fuzz.sh            # 10 minutes
#   ./scripts/fuzz.sh 60         # seconds
# The corpus grows in fuzz/corpus/client_input (not committed); seeds are in fuzz/seeds/.
# A crash is saved under fuzz/artifacts/client_input/ and the script exits non-zero.
# `cargo test` runs the same entry point on random and mutated inputs (src/fuzzing.rs) on
# every run of the suite.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
SECONDS_TO_RUN=${1:-600}
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
mkdir -p corpus/client_input
exec cargo fuzz run -s none client_input corpus/client_input seeds/client_input -- \
  -max_total_time="$SECONDS_TO_RUN" -print_final_stats=1 -rss_limit_mb=1024
