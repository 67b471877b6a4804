"""One training step of the acausal crosscoder against the MLSAE's, at both matchings (notebook 13), side by side.

    python benchmarks/crosscoder_step.py [--layers 6] [--tokens 1024] [--d-model 512] [--expansion-factor 16]
                                         [--k 32] [--dead-frac 0.1] [--repeats 5] [--device cpu]

Variants, interleaved within each repeat (medians reported); each step is the training loop's: forward (chunked
top-k encoder, sparse decoder, AuxK over the dead latents) + backward + decoder-gradient projection + Adam +
decoder renormalisation, with the same ``dead_frac`` of latents dead:

  MLSAE                  L * T examples of width d, n = R * d latents, k per example;
  crosscoder (latents)   T examples of width L * d, n latents, k = L * k per token (about the same multiply-adds);
  crosscoder (params)    T examples of width L * d, round(n / L) latents, k per token (the same parameter count);

and, for each, one dense fp32 encoder matmul of its own shape ([examples, width] x [width, latents]): the step's
cost in encoder matmuls. Peak memory of each step is measured in a fresh subprocess: the rise of peak RSS (CPU)
or of peak allocated memory (CUDA) over the steady state after one warm-up step.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

import torch
from common import step_peak_increase, timed

from mlsae.sae.architectures import build_sae
from mlsae.sae.config import CrosscoderConfig, SAEConfig

VARIANTS = ("MLSAE", "crosscoder (latents)", "crosscoder (params)")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--tokens", type=int, default=1024)
    p.add_argument("--d-model", type=int, default=512)
    p.add_argument("--expansion-factor", type=int, default=16)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--k-aux", type=int, default=256)
    p.add_argument("--dead-frac", type=float, default=0.1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--measure-memory", choices=VARIANTS, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def config(args, variant: str) -> SAEConfig:
    L, d, n = args.layers, args.d_model, args.expansion_factor * args.d_model
    if variant == "MLSAE":
        return SAEConfig(d_model=d, n_latents=n, k=args.k, k_aux=args.k_aux)
    m = n if variant == "crosscoder (latents)" else round(n / L)
    k = L * args.k if variant == "crosscoder (latents)" else args.k
    return CrosscoderConfig(d_model=d, n_latents=m, k=k, k_aux=min(args.k_aux, m // 2), n_layers=L,
                            layers=list(range(L)))


def setup(args, variant: str, seed: int = 0):
    """The SAE, its optimiser, a batch [layer, token, d] and the dead-counter state restored before every step."""
    torch.manual_seed(seed)
    cfg = config(args, variant)
    sae = build_sae(cfg, device=args.device).train()
    scale = torch.linspace(1, 4, args.layers, device=args.device)[:, None, None]
    x = torch.randn(args.layers, args.tokens, args.d_model, device=args.device) * scale + 0.5
    sae.init_b_pre_(x)
    counters = torch.zeros(cfg.n_latents, dtype=torch.long, device=args.device)
    counters[torch.randperm(cfg.n_latents, device=args.device)[: int(args.dead_frac * cfg.n_latents)]] = cfg.dead_tokens
    opt = torch.optim.Adam(sae.parameters(), lr=1e-4, eps=6.25e-10, fused=True)
    return sae, opt, x, counters


def step(sae, opt, x, counters) -> None:
    with torch.no_grad():
        sae.tokens_since_fired.copy_(counters)
    sae(x).loss.backward()
    sae.project_decoder_grads_()
    opt.step()
    opt.zero_grad(set_to_none=True)
    sae.normalize_decoder_()


def measure_memory(args) -> dict:
    sae, opt, x, counters = setup(args, args.measure_memory)
    step(sae, opt, x, counters)  # allocates Adam's state
    return step_peak_increase(lambda: step(sae, opt, x, counters), args.device)


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.measure_memory:
        print(json.dumps(measure_memory(args)))
        return
    runs = {v: setup(args, v) for v in VARIANTS}
    fns = {}
    for v, (sae, opt, x, counters) in runs.items():
        examples = args.layers * args.tokens if v == "MLSAE" else args.tokens
        a = torch.randn(examples, sae.cfg.input_width, device=args.device)
        W = torch.randn(sae.cfg.n_latents, sae.cfg.input_width, device=args.device)
        fns[v] = (lambda s=sae, o=opt, x=x, c=counters: step(s, o, x, c)), (lambda a=a, W=W: a @ W.t())
    print(f"shape: {args.layers} layers x {args.tokens} tokens, d={args.d_model}, R={args.expansion_factor} "
          f"(MLSAE n={runs['MLSAE'][0].cfg.n_latents}), k={args.k}, dead={args.dead_frac:.0%}, device={args.device}, "
          f"threads={torch.get_num_threads()}")
    for f_step, f_mm in fns.values():  # warm-up
        f_step(), f_mm()
    times = {v: ([], []) for v in VARIANTS}
    for _ in range(args.repeats):
        for v, (f_step, f_mm) in fns.items():
            times[v][0].append(timed(f_step, args.device))
            times[v][1].append(timed(f_mm, args.device))
    med = {v: (statistics.median(s), statistics.median(m)) for v, (s, m) in times.items()}
    base = med["MLSAE"][0]
    print(f"{'':22s} {'latents':>8s} {'k':>5s} {'params':>10s} {'step s':>8s} {'matmul s':>9s} {'step/matmul':>12s} "
          f"{'step / MLSAE':>13s}")
    for v in VARIANTS:
        cfg = runs[v][0].cfg
        params = sum(p.numel() for p in runs[v][0].parameters())
        s, m = med[v]
        print(f"{v:22s} {cfg.n_latents:8d} {cfg.k:5d} {params:10,d} {s:8.3f} {m:9.3f} {s / m:12.2f} {s / base:13.2f}")
    if not args.no_memory:
        print("peak memory increase over the steady state during a step (incl. gradients):")
        mem = {}
        for v in VARIANTS:
            out = subprocess.run([sys.executable, __file__, *argv, "--measure-memory", v], check=True,
                                 capture_output=True, text=True).stdout
            mem[v] = json.loads(out.strip().splitlines()[-1])
        for v in VARIANTS:
            print(f"{v:22s} {mem[v]['peak_increase_mib']:8.0f} MiB  (steady state {mem[v]['base_mib']:.0f} MiB)  "
                  f"/ MLSAE {mem[v]['peak_increase_mib'] / mem['MLSAE']['peak_increase_mib']:.2f}")


if __name__ == "__main__":
    main()
