#!/usr/bin/env bash
# Create (or reuse) ./.venv and install the pinned dependencies and this package.
# Idempotent: re-installs only when pyproject.toml changed since the last successful run.
# Override the interpreter with PYTHON=..., the venv location with MLSAE_VENV=...
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${MLSAE_VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating virtual environment in $VENV"
  "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.mlsae-installed"
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$VENV/bin/python" -c "import mlsae" 2>/dev/null; then
  echo "[setup] dependencies up to date"
else
  echo "[setup] installing pinned dependencies (torch==2.13.0 first, so no other build is pulled in)"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check torch==2.13.0
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e .
  "$VENV/bin/python" -m ipykernel install --sys-prefix --name python3 >/dev/null
  echo "$want" > "$stamp"
fi
