#!/usr/bin/env bash
# Fresh machine -> whole test suite (unit tests, then every notebook once under nbval against tests/references/).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export MLSAE_HOME=${MLSAE_HOME:-$PWD/.cache/mlsae-test}
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} TOKENIZERS_PARALLELISM=false MPLBACKEND=Agg
exec .venv/bin/python -m pytest tests "$@"
