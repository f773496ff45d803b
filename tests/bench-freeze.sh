#!/usr/bin/env bash
# The freeze window of Migrate by account size, under pgbench load, against
# a stop-copy-start move of the same account (docs/BENCHMARKS.md, "Freeze
# window by account size"); prints one table. As root, Debian 12.
#   BENCH_SIZES="100M 1G 5G" BENCH_RUNS=3
# Built with the dev profile (what `cargo build` builds): no release build.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/setup.sh
cargo build --workspace --bins --locked
NAVETTE_BIN_DIR="$PWD/target/debug" exec target/debug/navette-bench-freeze "$@"
