"""The R x k sweep of notebook 06 with one pass of the language model for all SAEs, against one pass per SAE.

    python benchmarks/sweep_one_pass.py [--preset default] [--tokens 65536]

The grid is the notebook preset's (``default``: zoo-s, R in 1..64 at k = 32 and k in 16..128 at R = 64,
10 distinct SAEs). Each mode runs in its own subprocess, so wall time and peak resident memory are its
own: ``together`` is :func:`mlsae.training.train.train_many` (what notebooks 06 and 10 use), ``alone`` trains
every SAE by itself, one after the other (one subprocess each: the time is summed, the memory is the
largest). ``--tokens`` shortens every run (the notebook trains 500,000 tokens each); the ratio is per
token either way. The weights are identical in both modes (tests/test_train.py checks it bit for bit).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from common import peak_rss_mib, run_child


def configs(preset: str, tokens: int) -> list[dict]:
    from mlsae.core.presets import NOTEBOOK_PRESETS

    nb = NOTEBOOK_PRESETS[preset]
    grid, k = nb["sweep"], 32
    points = [(r, k) for r in grid["expansion_factors"]] + [(grid["k_expansion_factor"], kk) for kk in grid["ks"]]
    points = list(dict.fromkeys(points))  # a point in both sweeps is trained once
    return [dict(preset=nb["train"], model=grid["model"], expansion_factor=r, k=kk, max_tokens=tokens,
                 checkpoint_every=10**9) for r, kk in points]


def child(specs: list[dict]) -> dict:
    from mlsae.training.config import config_from_preset
    from mlsae.training.train import train_many

    cfgs = [config_from_preset(s.pop("preset"), **s) for s in specs]
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        train_many(cfgs, [Path(out) / str(i) for i in range(len(cfgs))], resume=False, progress=False)
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak_rss_mib": peak_rss_mib()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="default")
    ap.add_argument("--tokens", type=int, default=65_536)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return

    specs = configs(args.preset, args.tokens)
    run_child(__file__, specs[:1])  # builds the zoo model if the cache lacks it, outside the timed runs
    together = run_child(__file__, specs)
    alone = [run_child(__file__, [s]) for s in specs]
    print(f"{args.preset} sweep on {specs[0]['model']}: {len(specs)} SAEs, {args.tokens:,} training tokens each")
    print(f"  one pass for all:   {together['seconds']:7.1f} s  peak RSS {together['peak_rss_mib']:7.0f} MiB")
    for s, r in zip(specs, alone, strict=True):
        print(f"  alone R={s['expansion_factor']:>3} k={s['k']:>3}:  {r['seconds']:7.1f} s  peak RSS {r['peak_rss_mib']:7.0f} MiB")
    t_alone = sum(r["seconds"] for r in alone)
    m_alone = max(r["peak_rss_mib"] for r in alone)
    print(f"wall time, one pass per SAE / one pass for all = {t_alone / together['seconds']:.2f} "
          f"({t_alone:.1f} s vs {together['seconds']:.1f} s)")
    print(f"peak RSS, one pass for all / largest SAE alone = {together['peak_rss_mib'] / m_alone:.2f} "
          f"({together['peak_rss_mib']:.0f} vs {m_alone:.0f} MiB)")


if __name__ == "__main__":
    main()
