# Sourced by scripts/demo and scripts/test: creates .venv and installs the project into it.
#
# What is installed is the committed lock (requirements/<extra>.lock: every transitive
# dependency at the exact version that was tested), then the project itself without
# dependencies, so a fresh machine runs what CI ran. STYLDOD_DEPS=latest installs the newest
# releases the ranges in pyproject.toml admit instead (scripts/test-latest). Re-installs only
# when pyproject.toml, the lock or the mode changed, so repeated runs start at once.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
EXTRA="${1:-dev}"
DEPS="${STYLDOD_DEPS:-locked}"
VENV="${STYLDOD_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
LOCK="$ROOT/requirements/$EXTRA.lock"
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "styldod-batch needs Python 3.11 or newer ($PY is $("$PY" --version 2>&1))" >&2
  exit 2
fi
if [ "$DEPS" = locked ] && [ ! -f "$LOCK" ]; then
  echo "no lock for the '$EXTRA' extra ($LOCK): run scripts/lock" >&2
  exit 2
fi
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
STAMP="$VENV/.styldod-installed"
WANT="$(cat "$ROOT/pyproject.toml" "$LOCK" 2>/dev/null | sha256sum | cut -d' ' -f1) $EXTRA $DEPS"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  echo "Installing styldod-batch and its dependencies ($DEPS) into $VENV ..." >&2
  pip_() {
    "$VENV/bin/python" -m pip --disable-pip-version-check "$@" 2>&1 \
      | { grep -v '^WARNING: Location' || true; } >&2
    return "${PIPESTATUS[0]}"
  }
  pip_ install --quiet --upgrade pip
  if [ "$DEPS" = latest ]; then
    pip_ install --quiet --upgrade --upgrade-strategy eager -e "$ROOT[$EXTRA]"
  else
    # The lock holds every dependency; the project goes in on top of it, adding none.
    pip_ install --quiet -r "$LOCK"
    pip_ install --quiet --no-deps -e "$ROOT"
  fi
  "$VENV/bin/python" -m pip check >&2
  "$VENV/bin/python" -c 'import styldod_batch, aiohttp, botocore' >/dev/null
  echo "$WANT" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
