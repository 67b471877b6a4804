#!/usr/bin/env bash
# Create (or reuse) ./.venv and install the locked environment (requirements.txt: every package, main + all
# extras, at an exact version; made from pyproject.toml by scripts/lock.sh) and this package.
# Idempotent: re-installs only when pyproject.toml or requirements.txt changed since the last successful run.
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
want=$(sha256sum pyproject.toml requirements.txt | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$VENV/bin/python" -c "import mlsae" 2>/dev/null; then
  echo "[setup] dependencies up to date"
else
  echo "[setup] installing the locked dependencies (torch==2.13.0 first, so no other build is pulled in)"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check torch==2.13.0
  # --no-deps: requirements.txt is complete, so nothing outside it can come in; pip check proves it complete.
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps -r requirements.txt
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps -e .
  "$VENV/bin/python" -m pip check --disable-pip-version-check
  "$VENV/bin/python" -m ipykernel install --sys-prefix --name python3 >/dev/null
  echo "$want" > "$stamp"
fi
