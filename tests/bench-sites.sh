#!/usr/bin/env bash
# The time from pressing Test to the account's site answering on the test
# host (docs/BENCHMARKS.md, "Sites on the test host"): the sample account
# (a PHP site reading one PostgreSQL and one MariaDB database) tested a few
# times; prints each run and the median and max. As root, Debian 12.
#   NAVETTE_SITES_BENCH_RUNS=5
# Built with the dev profile (what `cargo build` builds): no release build.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/setup.sh
cargo build --workspace --bins --locked
NAVETTE_BIN_DIR="$PWD/target/debug" exec target/debug/navette-bench-sites "$@"
