"""The lr schedule behind the offline presets: a grid of constant learning rates against warm-up-and-decay
schedules, the same tokens and steps, held-out FVU side by side (README, "Learning-rate schedule").

    python benchmarks/lr_schedule.py [--models zoo-m zoo-xl] [--preset default]

Every MLSAE of one model is trained on one pass of the model (:func:`mlsae.studies.experiment.train_together`)
into the shared store (``$MLSAE_HOME``). Each schedule is ``peak lr / warm-up fraction / decay fraction``; a
constant lr is ``lr/0/0``. Prints each one's FVU (mean over layers), its ratio to the grid's best constant lr
and the target (the preset's schedule within 3% of that best).
"""

from __future__ import annotations

import argparse

from common import parse_schedule as parse

GRID = ["3e-4/0/0", "1e-3/0/0", "3e-3/0/0", "1e-2/0/0"]
SCHEDULES = ["1e-2/0.05/0.2", "1e-2/0.05/0.95", "3e-3/0.05/0.95", "3e-2/0.05/0.95"]


def main() -> None:
    from mlsae.studies.experiment import Experiment, train_together

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["zoo-m", "zoo-xl"])
    parser.add_argument("--preset", default="default")
    parser.add_argument("--schedules", nargs="+", default=GRID + SCHEDULES, help="peak/warm-up/decay, e.g. 1e-2/0.05/0.2")
    args = parser.parse_args()
    for model in args.models:
        base = Experiment(model=model, preset=args.preset, progress=False)
        preset = (base.train_config().lr, base.train_config().lr_warmup, base.train_config().lr_decay)
        runs = {s: base.with_model(model, **parse(s)) for s in args.schedules}
        train_together(list(runs.values()))
        fvu = {s: e.evaluate(downstream=False).mean("fvu") for s, e in runs.items()}
        grid = [s for s in args.schedules if parse(s)["lr_warmup"] == parse(s)["lr_decay"] == 0]
        best = min(grid, key=fvu.get) if grid else None
        print(f"\n{model}, preset {args.preset} (its schedule: lr {preset[0]:g}, warm-up {preset[1]:g}, "
              f"decay {preset[2]:g}), held-out FVU (mean over layers):")
        for s in args.schedules:
            ratio = f"{fvu[s] / fvu[best]:6.3f}x the best constant" if best else ""
            print(f"  {s:18s} {fvu[s]:.4f}   {ratio}", flush=True)


if __name__ == "__main__":
    main()
