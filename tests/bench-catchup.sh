#!/usr/bin/env bash
# A files catch-up pass of Migrate (docs/BENCHMARKS.md, "Files catch-up")
# over the bench's 40,000-file tree, when nothing changed and when 1% of
# the files changed, against `rsync -a` bringing its own copy of the same
# tree up to date; prints both side by side (each round, then the medians).
# As root, Debian 12.
#   NAVETTE_CATCHUP_BENCH_FILES=40000 NAVETTE_CATCHUP_BENCH_ROUNDS=3
# Release build of the agent's test (as tests/bench.sh builds release).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/setup.sh
export NAVETTE_CATCHUP_BENCH_FILES="${NAVETTE_CATCHUP_BENCH_FILES:-40000}"
export NAVETTE_CATCHUP_BENCH_ROUNDS="${NAVETTE_CATCHUP_BENCH_ROUNDS:-3}"
exec cargo test --release -p navette-agent --locked --test files_catchup_bench -- --nocapture "$@"
