"""How far the README's findings move when the zoo is trained again differently.

Zoo weights depend on the machine (CPU kernels, thread count): a fresh machine once turned zoo-m's
answer to the IOI prompt from " Mary" into " John". A seed replica (``zoo-m-seed1``: the same spec
with another initialisation seed) is a larger perturbation than any machine's rounding, so a finding
that holds for both seeds is one a reader elsewhere will see too. For each model of the default
series and its replicas this trains (or reuses, from ``$MLSAE_HOME``) the language model, the MLSAE
of the default preset and its statistics, and writes one table: every key number per seed and its
spread (max - min).

    .venv/bin/python scripts/zoo_spread.py            # default series x seeds 0 and 1 (~25 min, 2 cores)
    .venv/bin/python scripts/zoo_spread.py zoo-m      # one model
"""

from __future__ import annotations

import argparse
import json

import pandas as pd

from mlsae.analysis.distributions import headline_row
from mlsae.figures import plots
from mlsae.models.zoo import DEFAULT_ZOO, SPREAD_SEEDS, zoo_report
from mlsae.studies.experiment import Experiment


def key_numbers(name: str) -> dict:
    """The README's numbers for one zoo model: language model, reconstruction, headline, geometry."""
    lm = zoo_report(name)
    e = Experiment(model=name, preset="default", progress=False)
    s, r, g = e.distributions().summary(), e.evaluate(), e.geometry()
    top, p = lm["ioi_top5"][0]
    return {
        "held-out loss": lm["heldout_loss"], "IOI accuracy": lm["ioi_template_accuracy"],
        "IOI top-1": top, "IOI top-1 p": p, "FVU": r.mean("fvu"), "delta CE": r.mean("delta_ce"),
        **headline_row(s), "mean std of p(l|j)": s["mean_std_layer"],
        "mean adjacent cosine": float(g.cos_mean.mean()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*", default=list(DEFAULT_ZOO), help="base zoo models (default: the default series)")
    args = ap.parse_args()
    rows = []
    # the replicas first: the seed-0 models are usually in the cache already (regenerate-all made them)
    for seed in (*SPREAD_SEEDS, 0):
        for base in args.models:
            name = base if seed == 0 else f"{base}-seed{seed}"
            print(f"[spread] {name}", flush=True)
            rows.append({"model": base, "seed": seed, **key_numbers(name)})
            print(json.dumps(rows[-1]), flush=True)  # partial results survive an interrupted run
    table = pd.DataFrame(rows).sort_values(["model", "seed"], key=lambda c: c.map(args.models.index) if c.name == "model" else c)
    numeric = table.drop(columns=["IOI top-1"]).groupby("model", sort=False)
    spread = (numeric.max() - numeric.min()).drop(columns="seed").add_suffix(" spread")
    spread["IOI top-1 agrees"] = table.groupby("model", sort=False)["IOI top-1"].nunique() == 1
    plots.save_table(table, "spread", "zoo_seeds")
    plots.save_table(spread.reset_index(), "spread", "zoo_seed_spread")
    pd.set_option("display.width", 250)
    print(table.round(3).to_string(index=False))
    print(spread.round(3).to_string())
    print(json.dumps({"models": args.models, "seeds": [0, *SPREAD_SEEDS]}))


if __name__ == "__main__":
    main()
