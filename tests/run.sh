#!/usr/bin/env bash
# Runs Navette's whole test suite, as root on Debian 12:
#   1. installs what the tests need (tests/setup.sh, idempotent);
#   2. checks formatting and lints;
#   3. builds every binary and test once;
#   4. runs the unit tests and the end-to-end tests, which start real
#      controllers, agents, PostgreSQL 15/18 and MariaDB servers on hosts
#      made of network namespaces, and drive them with grpcurl.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "tests/run.sh: run as root (the rig creates network namespaces and starts database servers)" >&2
  exit 1
fi

bash tests/setup.sh

echo "== format"
cargo fmt --all -- --check

echo "== lints"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== build"
cargo build --workspace --bins --locked
cargo test --workspace --locked --no-run

echo "== tests"
# The end-to-end tests find the binaries built above in target/debug.
cargo test --workspace --locked -- --test-threads="${NAVETTE_TEST_THREADS:-3}"
