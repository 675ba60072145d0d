#!/usr/bin/env bash
# Installs the Debian packages it is given, quietly, for scripts/_servers.sh and
# scripts/_browser.sh (each decides what is missing; this does the installing the same way for
# both): as root, else with sudo (never waiting on a password prompt without a terminal), the
# package lists refreshed only when an install without them fails, and no service of theirs
# started.
#
#   _debian.sh "WHAT THEY ARE FOR" "WHAT TO DO WITHOUT APT" PACKAGE...
#   (e.g. _debian.sh "the tests" "install them by hand." redis-server postgresql)
set -euo pipefail

purpose="$1"
by_hand="$2"
shift 2
missing=("$@")
[ "${#missing[@]}" -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
  echo "${missing[*]} (Debian packages) are needed for $purpose and this machine has no" \
    "apt-get: $by_hand" >&2
  exit 2
fi
if [ "$(id -u)" -eq 0 ]; then
  as_root=()
elif command -v sudo >/dev/null 2>&1; then
  # No terminal (CI): never wait on a password prompt.
  if [ -t 0 ]; then as_root=(sudo); else as_root=(sudo -n); fi
else
  echo "${missing[*]} from Debian's packages are needed for $purpose, this user is not root" \
    "and sudo is not installed: as root, run  apt-get install --no-install-recommends ${missing[*]}" >&2
  exit 2
fi

echo "Installing ${missing[*]} (Debian packages) for $purpose ..." >&2
log="$(mktemp -t styldod-apt.XXXXXX)"
policy=/usr/sbin/policy-rc.d
made_policy=""
cleanup() {
  if [ -n "$made_policy" ]; then "${as_root[@]}" rm -f "$policy"; fi
  rm -f "$log"
}
trap cleanup EXIT
# The packages' install scripts start their system-wide services (Redis on 6379, a "main"
# PostgreSQL cluster on 5432, D-Bus for Chromium...); the tests start their own servers, so
# keep those stopped, the way Debian's container images do.
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' | "${as_root[@]}" tee "$policy" >/dev/null
  "${as_root[@]}" chmod 755 "$policy"
  made_policy=1
fi
apt_install() {
  "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >>"$log" 2>&1
}
# The package lists may be missing or stale (a fresh machine): refresh them only if needed.
if ! apt_install; then
  if ! { "${as_root[@]}" apt-get update -qq >>"$log" 2>&1 && apt_install; }; then
    echo "Could not install ${missing[*]}; apt-get said:" >&2
    tail -n 20 "$log" >&2
    exit 2
  fi
fi
