#!/usr/bin/env bash
# Navette's copies against rsync, tar, pg_dump/pg_restore and pgcopydb, side
# by side, between two hosts of the rig (as root, Debian 12). Builds release
# binaries first. The latest output is in docs/BENCHMARKS.md.
#   NAVETTE_BENCH_SMALL_FILES=40000 NAVETTE_BENCH_LARGE_MB=150 NAVETTE_BENCH_PGBENCH_SCALE=50
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/setup.sh
command -v pgcopydb >/dev/null 2>&1 || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgcopydb >/dev/null
cargo build --release --workspace --bins --locked
NAVETTE_BIN_DIR="$PWD/target/release" exec target/release/navette-bench "$@"
