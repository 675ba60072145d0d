# Sourced by scripts/demo and scripts/test: creates .venv and installs the project into it.
# Re-installs only when pyproject.toml changed, so repeated runs start at once.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${STYLDOD_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "styldod-batch needs Python 3.11 or newer ($PY is $("$PY" --version 2>&1))" >&2
  exit 2
fi
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
STAMP="$VENV/.styldod-installed"
WANT="$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1) ${1:-dev}"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  echo "Installing styldod-batch and its dependencies into $VENV ..." >&2
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip 2>&1 \
    | grep -v '^WARNING: Location' >&2 || true
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e "$ROOT[${1:-dev}]" 2>&1 \
    | grep -v '^WARNING: Location' >&2 || true
  "$VENV/bin/python" -c 'import styldod_batch, aiohttp, botocore' >/dev/null
  echo "$WANT" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
