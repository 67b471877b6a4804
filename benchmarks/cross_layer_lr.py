"""The learning-rate grid behind notebook 13: each dictionary (the MLSAE and the two matched crosscoders,
:mod:`mlsae.studies.cross_layer`) at every lr of a grid, on the same tokens and steps, held-out FVU side by side.

    python benchmarks/cross_layer_lr.py [--models zoo-s zoo-m] [--lrs 3e-4 1e-3 3e-3 1e-2] [--preset default]

Each lr is the peak of the train preset's schedule (its warm-up and decay kept). Every SAE of one model is trained
on one pass of the model (:func:`mlsae.studies.experiment.train_together`) into the shared store
(``$MLSAE_HOME``), so the notebook reuses those at the preset's lr. Prints, per model and dictionary, the FVU at
each lr and the best (README, "Cross-layer dictionaries"; the preset's lr is in ``mlsae.core.presets``).
"""

from __future__ import annotations

import argparse


def main() -> None:
    from mlsae.studies.cross_layer import matched_dictionaries, n_layers_of
    from mlsae.studies.experiment import Experiment, train_together

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["zoo-s", "zoo-m"])
    parser.add_argument("--lrs", nargs="+", type=float, default=[3e-4, 1e-3, 3e-3, 1e-2])
    parser.add_argument("--preset", default="default")
    args = parser.parse_args()
    for model in args.models:
        exp = Experiment(model=model, preset=args.preset, progress=False)
        n_layers = n_layers_of(exp)
        grid = {lr: {name: e.with_model(model, lr=lr) for name, e in matched_dictionaries(exp, n_layers).items()}
                for lr in args.lrs}
        train_together([e for dicts in grid.values() for e in dicts.values()])
        names = list(next(iter(grid.values())))
        fvu = {name: {lr: grid[lr][name].evaluate(downstream=False).mean("fvu") for lr in args.lrs} for name in names}
        print(f"\n{model} ({n_layers} layers), held-out FVU (mean over layers) by lr:")
        print(f"{'dictionary':32s}" + "".join(f"{lr:>10.0e}" for lr in args.lrs) + "      best")
        for name in names:
            best = min(fvu[name], key=fvu[name].get)
            print(f"{name:32s}" + "".join(f"{fvu[name][lr]:10.4f}" for lr in args.lrs) + f"  {best:8.0e}", flush=True)


if __name__ == "__main__":
    main()
