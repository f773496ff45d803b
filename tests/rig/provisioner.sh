#!/bin/sh
# The rig's provisioner, run by the controller as its `[reinstall]
# provisioner` (contract 1, controller/src/reinstall/provisioner.rs):
#
#   provisioner.sh SPOOL_DIR   < request.json
#
# The rig's hosts are network namespaces driven by the test process, so
# this hands the request to the rig, as a provider's API takes it from a
# real provisioner: it writes the request (host, class, stack version,
# join token) to SPOOL_DIR/<reinstall id>.<attempt>.request and waits for
# the rig's answer in SPOOL_DIR/<reinstall id>.<attempt>.answer, whose
# first word is `accepted` (exit 0, the rest on standard output) or
# anything else (exit 1, the answer on standard error). The rig performs
# the reinstall itself (tests/rig/reinstall.rs). Run again for the same
# reinstall and attempt, it gives the same answer without a new request.
set -eu
spool=$1
case ${NAVETTE_REINSTALL_ID:-} in
  '' | */* | .*) echo "no usable NAVETTE_REINSTALL_ID in the environment" >&2; exit 2 ;;
esac
case ${NAVETTE_ATTEMPT:-} in
  '' | *[!0-9]*) echo "no usable NAVETTE_ATTEMPT in the environment" >&2; exit 2 ;;
esac
base="$spool/$NAVETTE_REINSTALL_ID.$NAVETTE_ATTEMPT"
if [ ! -e "$base.answer" ] && [ ! -e "$base.request" ]; then
  umask 077
  cat > "$base.request.tmp"
  mv "$base.request.tmp" "$base.request"
fi
waited=0
while [ ! -e "$base.answer" ]; do
  if [ "$waited" -ge 1200 ]; then
    echo "the rig did not answer $base.request within 120 s" >&2
    exit 3
  fi
  sleep 0.1
  waited=$((waited + 1))
done
answer=$(cat "$base.answer")
case $answer in
  accepted*) printf '%s\n' "$answer"; exit 0 ;;
  *) printf '%s\n' "$answer" >&2; exit 1 ;;
esac
