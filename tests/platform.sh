#!/usr/bin/env bash
# Brings up a local Navette platform on this machine (as root, Debian 12):
# a controller and five hosts in network namespaces, with PostgreSQL 15/18,
# MariaDB, nginx with PHP, sample accounts with their sites and enrolled
# agents, and the platform's DNS; presses Test for alice and shows her site
# on the test host, then presses Migrate for erin under load (pgbench, an
# HTTP loop) and prints the freeze window and what each client saw. Prints
# what to type next and keeps running until Ctrl-C, then removes everything
# it created.
#   --check   bring it up, print, and tear it down at once
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
  echo "tests/platform.sh: run as root (hosts are network namespaces)" >&2
  exit 1
fi
bash tests/setup.sh
echo "Building Navette (the first build takes a few minutes)..."
cargo build --workspace --bins --locked --quiet
exec target/debug/navette-platform "$@"
