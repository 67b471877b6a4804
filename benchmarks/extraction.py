"""Residual-stream extraction versus a plain forward pass, measured side by side.

    python benchmarks/extraction.py                      # random GPT-NeoX with pythia-70m's shape
    python benchmarks/extraction.py --model zoo-s        # any registry name / hub id / local folder

Timings are interleaved (forward, extraction, extraction without the early stop, repeated) and
the median of each is reported, so load from other processes hits all methods alike. The target:
``residual_streams`` costs at most 10% more than ``model(input_ids)``; it should cost less, as the
final norm and the unembedding ([batch*pos, d] x [d, vocab], the largest matmul of a small model)
are skipped. Peak RSS above the pre-call level is measured for each method in a fresh child
process (the allocator keeps freed memory, so in-process deltas would depend on order).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import threading
import time

import torch

from mlsae.models.residuals import _residual_streams, residual_streams

METHODS = {
    "forward": "model(input_ids).logits (plain forward, default use_cache)",
    "extract": "residual_streams(model, input_ids) (stops after the last block)",
    "extract_no_stop": "same hooks, but the base model runs to the end (final norm computed)",
}


def build(args):
    if args.model:
        from mlsae.models.registry import load_model

        model, _ = load_model(args.model)
    else:
        from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

        torch.manual_seed(0)
        cfg = GPTNeoXConfig(  # pythia-70m's shape
            vocab_size=50304, hidden_size=512, num_hidden_layers=6, num_attention_heads=8,
            intermediate_size=2048, rotary_pct=0.25, max_position_embeddings=2048, use_parallel_residual=True,
        )
        model = GPTNeoXForCausalLM(cfg).eval()
    model.requires_grad_(False)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (args.batch, args.seq), generator=g)
    return model, ids


def run(method, model, ids):
    if method == "forward":
        with torch.no_grad():
            return model(ids).logits
    if method == "extract":
        return residual_streams(model, ids)
    if method == "extract_no_stop":
        return _residual_streams(model, ids, stop_early=False)
    raise ValueError(method)


def _rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def memory_child(args) -> None:
    """In a fresh process: peak RSS while running ``args.memory`` once, above the level before."""
    model, ids = build(args)
    gc.collect()
    base = _rss()
    peak = [base]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.001)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    out = run(args.memory, model, ids)
    done.set()
    t.join()
    peak[0] = max(peak[0], _rss())
    print(json.dumps({"peak_delta_mb": (peak[0] - base) / 2**20, "output_mb": out.numel() * out.element_size() / 2**20}))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="registry name, hub id or local folder (default: random pythia-70m shape)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-RSS children")
    p.add_argument("--memory", default=None, help=argparse.SUPPRESS)  # internal: child mode
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory:
        memory_child(args)
        return 0

    model, ids = build(args)
    n_layers, d = model.config.num_hidden_layers, model.config.hidden_size
    print(f"model: {args.model or 'random GPT-NeoX, pythia-70m shape'} ({n_layers} layers x d {d}, vocab {model.config.vocab_size}); "
          f"batch {args.batch} x {args.seq} tokens; torch threads {torch.get_num_threads()}")

    # correctness check before timing: extraction equals the no-stop variant
    torch.testing.assert_close(run("extract", model, ids), run("extract_no_stop", model, ids))
    for m in METHODS:  # warm-up
        run(m, model, ids)
    times = {m: [] for m in METHODS}
    order = list(METHODS)
    for r in range(args.repeats):
        for m in order[r % len(order):] + order[: r % len(order)]:  # rotate to spread any drift
            gc.collect()
            t0 = time.perf_counter()
            out = run(m, model, ids)
            times[m].append(time.perf_counter() - t0)
            del out
    med = {m: statistics.median(v) for m, v in times.items()}
    print(f"\nmedian of {args.repeats} interleaved repeats:")
    for m, desc in METHODS.items():
        print(f"  {m:16s} {med[m] * 1e3:9.1f} ms   [{min(times[m]) * 1e3:.1f} … {max(times[m]) * 1e3:.1f}]  {desc}")
    ratio = med["extract"] / med["forward"]
    print(f"\nratio extraction / forward = {ratio:.3f}  (target <= 1.10: {'OK' if ratio <= 1.10 else 'MISSED'})")
    print(f"ratio extraction / extraction without early stop = {med['extract'] / med['extract_no_stop']:.3f}")

    if not args.no_memory:
        print("\npeak RSS above the pre-call level (fresh process per method):")
        base_cmd = [sys.executable, os.path.abspath(__file__), "--batch", str(args.batch), "--seq", str(args.seq)]
        if args.model:
            base_cmd += ["--model", args.model]
        if args.threads:
            base_cmd += ["--threads", str(args.threads)]
        for m in METHODS:
            res = subprocess.run(base_cmd + ["--memory", m], capture_output=True, text=True, check=True)
            info = json.loads(res.stdout.strip().splitlines()[-1])
            print(f"  {m:16s} {info['peak_delta_mb']:8.1f} MiB   (its output tensor: {info['output_mb']:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
