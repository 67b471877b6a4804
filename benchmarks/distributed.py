"""Data-parallel training throughput: N processes (torchrun, gloo on CPU / NCCL on CUDA) against one
process on the same global batch.

    python benchmarks/distributed.py [--model zoo-s] [--preset default] [--tokens 262144] [--nproc 2]

All runs are ``mlsae train`` with the same configuration (same global batch, same tokens), started
as subprocesses; the throughput is training tokens over the run's own wall time (``wall_seconds`` in
``train_summary.json``: from the first batch to the last step, so start-up and model loading are out).
Three ways, interleaved over ``--repeats`` rounds (medians): one process with torch's default threads,
one process with one thread (``OMP_NUM_THREADS=1``, what torchrun gives each of its processes), and
N processes under torchrun. On this project's 2-core CI machine expect little: the processes share the
cores that one process already uses, and gloo adds an all-reduce of every gradient per step.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def train_run(args, out: Path, nproc: int, threads: int | None = None) -> dict:
    flags = ["--model", args.model, "--preset", args.preset, "--max-tokens", str(args.tokens),
             "--checkpoint-every", str(10**9), "--device", args.device, "--out", str(out), "--no-resume"]
    if nproc == 1:
        cmd = [sys.executable, "-m", "mlsae", "train", *flags]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
               "-m", "mlsae", "train", *flags]
    env = {**os.environ, "MLSAE_PROGRESS": "0"}
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    summary = json.loads((out / "train_summary.json").read_text())
    return {**summary, "tokens_per_second": summary["tokens"] / summary["wall_seconds"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="zoo-s")
    ap.add_argument("--preset", default="default")
    ap.add_argument("--tokens", type=int, default=262_144)
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    ways = {"1 process": (1, None), "1 process, 1 thread": (1, 1), f"{args.nproc} processes": (args.nproc, None)}
    results: dict[str, list[dict]] = {w: [] for w in ways}
    with tempfile.TemporaryDirectory() as tmp:
        train_run(args, Path(tmp) / "warm", 1)  # builds the zoo model if the cache lacks it; warms the disk cache
        for i in range(args.repeats):
            for way, (nproc, threads) in ways.items():
                results[way].append(train_run(args, Path(tmp) / f"{i}-{nproc}-{threads}", nproc, threads))
    median = {w: statistics.median(r["tokens_per_second"] for r in rs) for w, rs in results.items()}
    tokens = results["1 process"][0]["tokens"]
    print(f"{args.model}, {args.preset} preset, {tokens:,} training tokens, device {args.device}, "
          f"{os.cpu_count()} CPU cores, median of {args.repeats}")
    for way, rate in median.items():
        walls = ", ".join(f"{r['wall_seconds']:.1f}" for r in results[way])
        print(f"  {way:22s} {rate:9.0f} tokens/s  (wall {walls} s)")
    many = median[f"{args.nproc} processes"]
    print(f"throughput, {args.nproc} processes / 1 process = {many / median['1 process']:.2f}; "
          f"/ 1 process with 1 thread = {many / median['1 process, 1 thread']:.2f}")


if __name__ == "__main__":
    main()
