#!/usr/bin/env bash
# Fresh machine -> whole test suite: lint (ruff) and types (mypy, over src/), then unit tests and every notebook
# once under nbval against tests/references/. Arguments go to pytest (the checks before it always run).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export MLSAE_HOME=${MLSAE_HOME:-$PWD/.cache/mlsae-test}
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} TOKENIZERS_PARALLELISM=false MPLBACKEND=Agg
echo "[test] ruff check (pyproject.toml [tool.ruff])"
.venv/bin/ruff check .
echo "[test] mypy (pyproject.toml [tool.mypy])"
.venv/bin/mypy
exec .venv/bin/python -m pytest tests "$@"
