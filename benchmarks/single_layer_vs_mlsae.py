"""Training cost of one MLSAE against one SAE per layer (the reviewers' question), side by side.

    python benchmarks/single_layer_vs_mlsae.py [--model zoo-m] [--tokens 131072] [--expansion-factor 16]

Each training run goes through ``mlsae.training.train.train`` (the real pipeline: text -> model -> residual
streams -> SAE, Adam) in a fresh subprocess, so its wall time and peak resident memory are its own.
A further subprocess streams the same tokens through the model with no SAE: the memory baseline,
subtracted to give what the SAE itself adds. Prints the ratios (all single-layer SAEs together) /
MLSAE for time, for peak memory when the single-layer SAEs are trained one after the other, and
for the SAE memory they would hold if trained at once in one pass.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

from common import peak_rss_mib, run_child


def child(spec: dict) -> dict:
    """Runs in the subprocess: one training run (or the no-SAE baseline); returns time and peak RSS."""
    import torch

    from mlsae.training.config import config_from_preset
    from mlsae.training.train import train

    torch.manual_seed(0)
    cfg = config_from_preset(spec["preset"], model=spec["model"], expansion_factor=spec["expansion_factor"],
                             k=spec["k"], layers=spec["layers"], max_tokens=spec["tokens"], checkpoint_every=10**9)
    start = time.perf_counter()
    if spec["baseline"]:
        from mlsae.data.sources import load_text
        from mlsae.data.tokens import token_batches
        from mlsae.models.registry import load_model
        from mlsae.models.residuals import residual_batches

        model, tok = load_model(cfg.model)
        batches = token_batches(load_text(cfg.data, split="train", streaming=True), tok, cfg.seq_len, cfg.batch_size,
                                max_tokens=cfg.max_tokens)
        for _ in residual_batches(model, tok, batches):
            pass
    else:
        with tempfile.TemporaryDirectory() as out:
            train(cfg, out_dir=out, resume=False, progress=False)
    return {"seconds": time.perf_counter() - start, "peak_rss_mib": peak_rss_mib()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="zoo-m")
    ap.add_argument("--preset", default="default")
    ap.add_argument("--tokens", type=int, default=131_072)
    ap.add_argument("--expansion-factor", type=int, default=16)
    ap.add_argument("-k", type=int, default=32)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return

    from mlsae.models.registry import model_shape

    n_layers = model_shape(args.model)[0]
    base = dict(model=args.model, preset=args.preset, expansion_factor=args.expansion_factor, k=args.k, tokens=args.tokens)
    none = run_child(__file__, {**base, "layers": None, "baseline": True})
    multi = run_child(__file__, {**base, "layers": None, "baseline": False})
    singles = [run_child(__file__, {**base, "layers": [l], "baseline": False}) for l in range(n_layers)]
    print(f"{args.model}: {n_layers} layers, R={args.expansion_factor}, k={args.k}, {args.tokens:,} training tokens each")
    print(f"  model only (no SAE):      {none['seconds']:7.1f} s  peak RSS {none['peak_rss_mib']:7.0f} MiB")
    print(f"  MLSAE (all layers):       {multi['seconds']:7.1f} s  peak RSS {multi['peak_rss_mib']:7.0f} MiB")
    for l, s in enumerate(singles):
        print(f"  single-layer SAE, layer {l}: {s['seconds']:5.1f} s  peak RSS {s['peak_rss_mib']:7.0f} MiB")
    t_single = sum(s["seconds"] for s in singles)
    added = lambda r: max(r["peak_rss_mib"] - none["peak_rss_mib"], 0.0)  # noqa: E731 - what the SAE adds
    print(f"time: all single-layer SAEs / MLSAE = {t_single / multi['seconds']:.2f}")
    print(f"peak RSS, single-layer SAEs trained one after another / MLSAE = "
          f"{max(s['peak_rss_mib'] for s in singles) / multi['peak_rss_mib']:.2f}")
    if added(multi) > 0:
        print(f"SAE memory over the no-SAE baseline, all single-layer SAEs held at once / MLSAE = "
              f"{sum(added(s) for s in singles) / added(multi):.2f} ({sum(added(s) for s in singles):.0f} vs {added(multi):.0f} MiB)")


if __name__ == "__main__":
    main()
