#!/usr/bin/env bash
# The GPU check (README, "On a GPU"): one short script, under 8 minutes on one GPU, after `bash scripts/setup.sh`.
#   bash benchmarks/gpu_check.sh [OUT_DIR]      (default: gpu_check_out/; every step's output is kept there)
# 1. the train-step benchmark at the pythia-70m and pythia-1b shapes on CUDA, fp32 and bf16 autocast, each
#    with its ratio to one dense encoder matmul;
# 2. tokens/s of a short real training run on a zoo model with --device cuda --autocast bf16;
# 3. the CUDA resume-tolerance test (tests/test_train.py, skipped on machines without CUDA);
# 4. data-parallel training with NCCL (benchmarks/distributed.py --device cuda) where 2 GPUs exist.
# Each step has its own time limit, so one slow step cannot take the rest with it.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-gpu_check_out}
mkdir -p "$out"
py=${PYTHON:-.venv/bin/python}
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false MPLBACKEND=Agg
export MLSAE_HOME=${MLSAE_HOME:-$PWD/$out/mlsae-home}
step() {  # step NAME SECONDS CMD...: run CMD with a time limit, its output to $out/NAME.log and the screen
  local name=$1 limit=$2; shift 2
  echo "== $name (limit ${limit}s): $*"
  timeout "$limit" "$@" 2>&1 | tee "$out/$name.log"
  echo "== $name: exit ${PIPESTATUS[0]}"
}
"$py" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name(0), torch.cuda.device_count(), 'GPU(s)')" \
  | tee "$out/device.log" || exit 1
cd benchmarks
step train_step_70m_fp32 60 "../$py" train_step.py --device cuda --repeats 5
step train_step_70m_bf16 60 "../$py" train_step.py --device cuda --dtype bf16 --repeats 5
step train_step_1b_fp32 90 "../$py" train_step.py --device cuda --layers 16 --d-model 2048 --repeats 3
step train_step_1b_bf16 90 "../$py" train_step.py --device cuda --layers 16 --d-model 2048 --dtype bf16 --repeats 3
cd ..
# zoo-s (the language model) is built on first use if $MLSAE_HOME lacks it: its own short training, inside the limit
step train_zoo_s_bf16 150 "$py" -m mlsae train --model zoo-s --preset default --device cuda --autocast bf16 \
  --max-tokens 1000000 --out "$out/train-zoo-s"
"$py" - "$out/train-zoo-s/train_summary.json" <<'PY' | tee "$out/tokens_per_second.log"
import json, sys
s = json.load(open(sys.argv[1]))
print(f"zoo-s MLSAE, cuda bf16: {s['tokens']:,} tokens in {s['wall_seconds']:.1f} s wall = {s['tokens'] / s['wall_seconds']:,.0f} tokens/s")
PY
step cuda_resume 90 "$py" -m pytest -q -p no:cacheprovider tests/test_train.py -k on_cuda
if [ "$("$py" -c 'import torch; print(torch.cuda.device_count())')" -ge 2 ]; then
  (cd benchmarks && step distributed_nccl 120 "../$py" distributed.py --device cuda --nproc 2 --repeats 1)
else
  echo "== distributed_nccl: skipped, one GPU" | tee "$out/distributed_nccl.log"
fi
echo "== done: logs in $out/"
