#!/usr/bin/env bash
# How long a rerouted address is unreachable as a client on the internet
# sees it (docs/BENCHMARKS.md, "Rerouting a server's addresses"): IPv4 and
# IPv6, shared layer 2 and routed by the provider's stand-in, moved to the
# transit host and back several times; prints each move, the median and
# max per mode and family, and the stand-in's delay beside them. As root,
# Debian 12.
#   NAVETTE_ADDRESS_BENCH_ROUNDS=5               (10 moves per address)
#   NAVETTE_ADDRESS_BENCH_PROVIDER_DELAY_MS=0    (real providers: 40000-60000)
# Built with the dev profile (what `cargo build` builds): no release build.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/setup.sh
cargo build --workspace --bins --locked
NAVETTE_BIN_DIR="$PWD/target/debug" exec target/debug/navette-bench-addresses "$@"
