#!/usr/bin/env bash
# Fresh machine -> every figure under figures/, on the offline default (no network needed).
# Extra arguments go to `python -m mlsae figures`, e.g. --only 03 or -p model pythia-70m.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export TOKENIZERS_PARALLELISM=false MPLBACKEND=Agg
exec .venv/bin/python -m mlsae figures "$@"
