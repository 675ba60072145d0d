#!/usr/bin/env bash
# Called by scripts/test: the tests start real Redis and PostgreSQL servers (tests/servers.py),
# so their binaries must be on the machine. Installs what is missing from Debian's packages
# (scripts/_debian.sh), quietly; does nothing (in a few milliseconds) when both are already
# there.
set -euo pipefail

missing=()
[ -x /usr/bin/redis-server ] || command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing+=(postgresql)
[ "${#missing[@]}" -eq 0 ] && exit 0

exec "$(dirname "$0")/_debian.sh" "the tests" \
  "install them by hand (redis-server and PostgreSQL's initdb/postgres on PATH or in /usr/lib/postgresql/*/bin)." \
  "${missing[@]}"
