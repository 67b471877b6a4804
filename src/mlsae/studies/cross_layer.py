"""Notebook 13: the MLSAE, the acausal crosscoder and one SAE per layer on the same residual streams.

The matchings (README, "Cross-layer dictionaries"), for an MLSAE with ``n`` latents and ``k`` active latents per
(token, layer) on a model with ``L`` layers:

* **equal latents**: the crosscoder has ``n`` latents and ``k_cc = L * k`` active per token, so both spend
  ``L * k`` active latents per token summed over layers, and about the same multiply-adds per token
  (``T * L * d * n`` in each encoder); the crosscoder has ``L`` times the weights.
* **equal parameters**: ``round(n / L)`` latents (each has ``L`` times the MLSAE's weights per latent) and ``k``
  active per token, so each layer's reconstruction uses ``k`` latents, as each of the MLSAE's does; AuxK then
  takes at most half the latents (``k_aux = min(k_aux, n_cc // 2)``).

Every dictionary is trained on the same tokens for the same steps (one pass of the model feeds them all,
:func:`mlsae.training.train.train_many`), all at the experiment's learning rate and schedule (the train preset's
unless given; ``benchmarks/cross_layer_lr.py`` runs each dictionary over a grid of peak lrs).
"""

from __future__ import annotations

import math

import numpy as np

from mlsae.analysis.cross_layer import (
    LAYER_SPECIFIC_SHARE,
    decoder_norm_distributions,
    layer_agreement,
    layer_specific_fraction,
)
from mlsae.analysis.distributions import LayerDistributions
from mlsae.models.registry import model_shape
from mlsae.sae.crosscoder import Crosscoder
from mlsae.studies.experiment import Experiment, train_together
from mlsae.studies.tables import train_state_mib

MLSAE, EQUAL_LATENTS, EQUAL_PARAMETERS, SINGLE = ("MLSAE", "crosscoder, equal latents", "crosscoder, equal parameters",
                                                  "single-layer SAEs")
DICTIONARIES = (MLSAE, EQUAL_LATENTS, EQUAL_PARAMETERS, SINGLE)


def n_layers_of(exp: Experiment) -> int:
    """The model's depth, from the registry when it knows it (no weights loaded), else from the model."""
    shape = model_shape(exp.model)
    return shape[0] if shape is not None else exp.load_lm()[0].config.num_hidden_layers


def matched_dictionaries(exp: Experiment, n_layers: int) -> dict[str, Experiment]:
    """The MLSAE of ``exp`` and the two crosscoders matched to it (module docstring), at ``exp``'s lr and schedule: the MLSAE is ``exp``
itself, so notebook 13 reuses notebook 02's."""
    if exp.architecture != "mlsae" or exp.layers is not None:
        raise ValueError("matched_dictionaries starts from an MLSAE over every layer (architecture='mlsae', layers=None)")
    if exp.n_latents is None:
        raise ValueError(f"{exp.model}: the registry does not know its width, so the matchings cannot be sized; "
                         "pass n_latents")
    n_b = max(1, round(exp.n_latents / n_layers))
    k_aux = exp.train_config().sae.k_aux
    return {
        MLSAE: exp,
        EQUAL_LATENTS: exp.with_model(exp.model, architecture="crosscoder", k=n_layers * exp.k),
        EQUAL_PARAMETERS: exp.with_model(exp.model, architecture="crosscoder", n_latents=n_b, k=min(exp.k, n_b),
                                         k_aux=min(k_aux, n_b // 2)),
    }


def single_layer_saes(exp: Experiment, n_layers: int) -> dict[int, Experiment]:
    """One SAE per layer, with the MLSAE's R, k, lr, data and tokens (notebook 10's)."""
    return {layer: exp.with_model(exp.model, layers=[layer]) for layer in range(n_layers)}


def _params(sae) -> int:
    return sum(p.numel() for p in sae.parameters())


def cross_layer_comparison(exp: Experiment, models: list[str]) -> dict:
    """For each model of ``models``: the MLSAE, the two crosscoders and the single-layer SAEs, trained together,
    evaluated on held-out text (per-layer FVU, Delta CE and KL, spliced one layer at a time in the model's basis),
    with the layer picture of the MLSAE (activation mass) and of each crosscoder (decoder norms).

    Returns ``rows`` (one per model and dictionary), ``per_layer`` (one per model, dictionary and layer),
    ``stats`` {model: {label: LayerDistributions}}, ``agreement`` {model: {crosscoder: [layer, MLSAE latent]}},
    ``mean_layer`` {model: the MLSAE latents' mean layer} and ``ratios`` {model: the MLSAE's variance ratios}.
    """
    rows: list[dict] = []
    per_layer: list[dict] = []
    stats: dict[str, dict[str, LayerDistributions]] = {}
    agreement: dict[str, dict[str, np.ndarray]] = {}
    mean_layer: dict[str, np.ndarray] = {}
    ratios: dict[str, dict[str, float]] = {}
    for model in models:
        base = exp.with_model(model)
        n_layers = n_layers_of(base)
        dicts = matched_dictionaries(base, n_layers)
        singles = single_layer_saes(dicts[MLSAE], n_layers)
        train_together([*dicts.values(), *singles.values()])
        mlsae = dicts[MLSAE].train()
        activation = dicts[MLSAE].distributions()
        summary = activation.summary()
        stats[model] = {"MLSAE: activation mass p(l | j)": activation}
        agreement[model], mean_layer[model] = {}, activation.mean_layer.numpy()
        ratios[model] = {"honest": summary.honest_ratio, "paper": summary.paper_ratio}
        for name, e in dicts.items():
            sae, result = e.train(), e.evaluate()
            layer_stats = activation
            if isinstance(sae, Crosscoder):
                layer_stats = decoder_norm_distributions(sae)
                stats[model][f"{name}: decoder-norm share p_l(i)"] = layer_stats
                agreement[model][name] = layer_agreement(mlsae, sae, device=e.device).numpy()
            alive = layer_stats.alive
            rows.append({
                "model": model, "layers": n_layers, "dictionary": name, "latents": sae.cfg.n_latents,
                "k per token": sae.cfg.k * (n_layers if name == MLSAE else 1), "parameters": _params(sae),
                "lr": e.train_config().lr, "FVU": result.mean("fvu"), "delta CE": result.mean("delta_ce"),
                "KL": result.mean("kl"), "dead fraction": result.dead_fraction,
                "mean layer std": float(layer_stats.std_layer[alive].mean()),
                "mean entropy / log L": float(layer_stats.entropy[alive].mean()) / math.log(n_layers)
                if n_layers > 1 else float("nan"),
                f"layer-specific (>= {LAYER_SPECIFIC_SHARE:.0%} at one layer)": layer_specific_fraction(layer_stats),
                "train seconds": e.train_summary().get("seconds", float("nan")),
                "training state (MiB)": train_state_mib(sae),
            })
            per_layer += [{"model": model, "dictionary": name, "layer": layer, "FVU": result.fvu[i],
                           "delta CE": result.delta_ce[i], "KL": result.kl[i]}
                          for i, layer in enumerate(result.layers)]
        results = {layer: e.evaluate() for layer, e in singles.items()}
        saes = {layer: e.train() for layer, e in singles.items()}
        rows.append({
            "model": model, "layers": n_layers, "dictionary": SINGLE,
            "latents": sum(s.cfg.n_latents for s in saes.values()), "k per token": n_layers * exp.k,
            "parameters": sum(_params(s) for s in saes.values()), "lr": dicts[MLSAE].train_config().lr,
            "FVU": float(np.mean([r.fvu[0] for r in results.values()])),
            "delta CE": float(np.mean([r.delta_ce[0] for r in results.values()])),
            "KL": float(np.mean([r.kl[0] for r in results.values()])),
            "dead fraction": float(np.mean([r.dead_fraction for r in results.values()])),
            "mean layer std": 0.0, "mean entropy / log L": 0.0,
            f"layer-specific (>= {LAYER_SPECIFIC_SHARE:.0%} at one layer)": 1.0,
            "train seconds": sum(e.train_summary().get("seconds", float("nan")) for e in singles.values()),
            "training state (MiB)": sum(train_state_mib(s) for s in saes.values()),
        })
        per_layer += [{"model": model, "dictionary": SINGLE, "layer": layer, "FVU": r.fvu[0],
                       "delta CE": r.delta_ce[0], "KL": r.kl[0]} for layer, r in results.items()]
    return {"rows": rows, "per_layer": per_layer, "stats": stats, "agreement": agreement, "mean_layer": mean_layer,
            "ratios": ratios}
