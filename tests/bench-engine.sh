#!/usr/bin/env bash
# The workflow engine's benchmark (docs/BENCHMARKS.md, "Workflow engine"):
# 1,000 workflows of 10 no-op steps each on two test controllers (processes)
# sharing one PostgreSQL 15 of the rig; prints steps per second and pickup
# delays next to the goals. As root, Debian 12. Options (environment):
#   NAVETTE_ENGINE_BENCH_WORKFLOWS=1000 NAVETTE_ENGINE_BENCH_STEPS=10
#   NAVETTE_ENGINE_BENCH_RATE=0 (workflows created per second; 0: all at once)
#   NAVETTE_ENGINE_BENCH_STEPS_PER_CLAIM=32 (1: every step through the queue)
# Built with the test profile (what `cargo test` builds): no release build.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/setup.sh
exec cargo test -p navette-controller --locked --test engine -- bench
