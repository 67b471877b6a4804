"""Time and memory of one MLSAE training step at the pythia-70m shape.

Compares, interleaved within each repeat (medians reported):
  (a) the project's step: MLSAE.forward (chunked top-k encoder, sparse decoder, AuxK over the dead
      latents) + backward + decoder-gradient projection + Adam + decoder renormalisation;
  (b) a straightforward dense step: mlsae.sae.model.dense_reference_loss (dense latents, dense decoder
      matmul, dense AuxK, plain autograd) + the same backward/projection/Adam/renorm;
  (c) one fp32 dense encoder matmul [n, d] x [d, n_latents], allocating its output (c) and into a
      preallocated buffer (c'); with --dtype bf16 also under autocast (c'').
Peak memory of (a) and (b) is measured in a fresh subprocess each: the rise of peak RSS (CPU) or of
peak allocated memory (CUDA) over the steady state after one warm-up step.

    python benchmarks/train_step.py [--device cuda] [--dtype bf16] [--repeats 5] [--dead-frac 0.1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from contextlib import nullcontext

import torch
from common import step_peak_increase, timed

from mlsae.sae.config import SAEConfig
from mlsae.sae.model import MLSAE, dense_reference_loss


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="bf16: torch.autocast forward")
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--tokens", type=int, default=1024, help="tokens per step (examples = layers * tokens)")
    p.add_argument("--d-model", type=int, default=512)
    p.add_argument("--expansion-factor", type=int, default=64)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--k-aux", type=int, default=256)
    p.add_argument("--dead-frac", type=float, default=0.1, help="fraction of latents marked dead")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    p.add_argument("--measure-memory", choices=["fast", "dense"], help=argparse.SUPPRESS)
    return p.parse_args(argv)


def setup(args, seed: int = 0):
    """Model, optimiser, batch and the dead-counter state to restore before every step."""
    torch.manual_seed(seed)
    cfg = SAEConfig.from_expansion_factor(args.d_model, args.expansion_factor, args.k, k_aux=args.k_aux)
    sae = MLSAE(cfg, device=args.device).train()
    layer_scale = torch.linspace(1, 4, args.layers, device=args.device)[:, None, None]
    x = torch.randn(args.layers, args.tokens, args.d_model, device=args.device) * layer_scale + 0.5
    sae.init_b_pre_(x)
    n_dead = int(args.dead_frac * cfg.n_latents)
    counters = torch.zeros(cfg.n_latents, dtype=torch.long, device=args.device)
    counters[torch.randperm(cfg.n_latents, device=args.device)[:n_dead]] = cfg.dead_tokens
    opt = torch.optim.Adam(sae.parameters(), lr=1e-4, eps=6.25e-10, fused=True)
    return sae, opt, x, counters


def train_step(sae, opt, x, counters, variant: str, autocast) -> None:
    with torch.no_grad():
        sae.tokens_since_fired.copy_(counters)  # same dead set every step
    with autocast():
        loss = sae(x).loss if variant == "fast" else dense_reference_loss(sae, x)[0]
    loss.backward()
    sae.project_decoder_grads_()
    opt.step()
    opt.zero_grad(set_to_none=True)
    sae.normalize_decoder_()


def make_autocast(args):
    if args.dtype == "bf16":
        return lambda: torch.autocast(torch.device(args.device).type, dtype=torch.bfloat16)
    return nullcontext


def _autocast_matmul(x, W, autocast):
    with autocast():
        return x @ W.t()


# --- memory (run in a fresh subprocess per variant) ------------------------------------------------


def measure_memory(args) -> dict:
    sae, opt, x, counters = setup(args)
    autocast = make_autocast(args)
    train_step(sae, opt, x, counters, args.measure_memory, autocast)  # allocates Adam state
    return step_peak_increase(lambda: train_step(sae, opt, x, counters, args.measure_memory, autocast), args.device)


def memory_in_subprocess(variant: str, argv: list[str]) -> dict:
    cmd = [sys.executable, __file__, *argv, "--measure-memory", variant]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


# --- main ------------------------------------------------------------------------------------------


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.measure_memory:
        print(json.dumps(measure_memory(args)))
        return

    sae, opt, x, counters = setup(args)
    autocast = make_autocast(args)
    n, d, m = args.layers * args.tokens, args.d_model, sae.cfg.n_latents
    x2d = torch.randn(n, d, device=args.device)
    W = torch.randn(m, d, device=args.device)
    buf = torch.empty(n, m, device=args.device)
    variants = {
        "a": lambda: train_step(sae, opt, x, counters, "fast", autocast),
        "b": lambda: train_step(sae, opt, x, counters, "dense", autocast),
        "c": lambda: x2d @ W.t(),
        "c_buf": lambda: torch.mm(x2d, W.t(), out=buf),
    }
    if args.dtype == "bf16":
        variants["c_amp"] = lambda: _autocast_matmul(x2d, W, autocast)
    print(
        f"shape: {args.layers} layers x {args.tokens} tokens = {n} examples, d={d}, n_latents={m}, "
        f"k={args.k}, k_aux={args.k_aux}, dead={args.dead_frac:.0%}, device={args.device}, "
        f"dtype={args.dtype}, threads={torch.get_num_threads()}"
    )
    for fn in variants.values():  # warm-up
        fn()
    times = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, fn in variants.items():
            times[name].append(timed(fn, args.device))
    med = {name: statistics.median(ts) for name, ts in times.items()}
    labels = {
        "a": "(a) project step",
        "b": "(b) dense reference step",
        "c": "(c) fp32 encoder matmul",
        "c_buf": "(c') same, into a buffer",
        "c_amp": "(c'') same, under autocast",
    }
    for name, label in labels.items():
        if name not in med:
            continue
        ts = ", ".join(f"{t:.3f}" for t in times[name])
        print(f"{label:28s} median {med[name]:7.3f} s   [{ts}]")
    print(f"(b)/(a) = {med['b'] / med['a']:.2f}x faster   (target >= 5)")
    print(f"(a)/(c) = {med['a'] / med['c']:.2f}   (a)/(c') = {med['a'] / med['c_buf']:.2f}   (target <= 1.5)")

    if not args.no_memory:
        mem_a = memory_in_subprocess("fast", argv)
        mem_b = memory_in_subprocess("dense", argv)
        print("peak memory increase over steady state during a step (incl. gradients):")
        print(f"(a) {mem_a['peak_increase_mib']:8.0f} MiB   (steady state {mem_a['base_mib']:.0f} MiB)")
        print(f"(b) {mem_b['peak_increase_mib']:8.0f} MiB   (steady state {mem_b['base_mib']:.0f} MiB)")
        print(f"(a)/(b) = {mem_a['peak_increase_mib'] / mem_b['peak_increase_mib']:.3f}   (target <= 0.5)")


if __name__ == "__main__":
    main()
