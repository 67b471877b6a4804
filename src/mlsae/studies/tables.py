"""The studies behind the notebooks: each takes an :class:`~mlsae.studies.experiment.Experiment` (or its
statistics) and returns the rows of a table, so that a notebook is parameters, one call and a plot.

reconstruction table (02), the headline at the paper's R (03), sweeps (06), lens comparison (07), decoder MMCS and nearest tokens (08),
layer statistics (09), single-layer baselines (10), model families (12), language models (01).
"""

from __future__ import annotations

import numpy as np
import torch

from mlsae.analysis.decoder import decoder_vectors, max_cosine, mmcs
from mlsae.analysis.distributions import headline_row, latent_order
from mlsae.models.lm_eval import ioi_report
from mlsae.models.registry import load_model, resolve_model
from mlsae.models.zoo import zoo_report
from mlsae.studies.experiment import Experiment, train_together
from mlsae.studies.parameters import list_parameter, typed_parameter


def reconstruction_table(exp: Experiment, models: list[str], lens_options: tuple[bool, ...] = (False, True)) -> list[dict]:
    """PAPER.md §4 item 10: FVU, MSE, L0, L1, Delta CE, KL per model, with and without the lens; for a
    pretrained SAE, its one row (its own model and lens)."""
    if exp.pretrained_sae is not None:
        models, lens_options = [exp.model], (exp.tuned_lens,)
    experiments = [exp.with_model(m, tuned_lens=lens) for m in models for lens in lens_options]
    train_together(experiments)
    rows = []
    for e in experiments:
        r = e.evaluate()
        rows.append({"model": e.model, "tuned lens": e.tuned_lens, "layers": len(r.layers), "FVU": r.mean("fvu"),
                     "MSE": r.mean("mse"), "L0": r.mean("l0"), "L1": r.mean("l1"),
                     "delta CE": r.mean("delta_ce"), "KL": r.mean("kl"), "clean CE": r.clean_ce,
                     "dead fraction": r.dead_fraction})
    return rows


def paper_r_series(exp: Experiment, models: list[str] | str | None = None) -> list[str]:
    """Notebook 03's models for the headline at the paper's R: ``models`` (a list, or its JSON text) or the
    preset's ``paper_r`` list, every name checked at once; none when ``exp`` already runs at the paper's R."""
    models = list_parameter("paper_r_models", models, allow_empty=True)  # [] asks for none
    wanted = list(models) if models is not None else list(exp.settings["paper_r"]["models"])
    for m in wanted:
        resolve_model(m)  # an unknown name fails here, before any work
    return [] if exp.expansion_factor == exp.settings["paper_r"]["expansion_factor"] else wanted


def headline_by_expansion_factor(exp: Experiment, models: list[str]) -> list[dict]:
    """The headline estimators (and the held-out FVU and Delta CE) of each model's MLSAE at ``exp``'s R and at the paper's
    (PAPER.md §1: R = 64), all of one model trained on one pass of it."""
    rs = [exp.expansion_factor, exp.settings["paper_r"]["expansion_factor"]]
    points = [(m, r, exp.with_model(m, expansion_factor=r)) for m in models for r in rs]
    train_together([e for *_, e in points])
    rows = []
    for m, r, e in points:
        s = e.distributions().summary()
        result = e.evaluate()
        rows.append({"model": m, "R": r, "latents": e.train().cfg.n_latents, "layers": s.n_layers,
                     "FVU": result.mean("fvu"), "delta CE": result.mean("delta_ce"), **headline_row(s)})
    return rows


def sweep_points(exp: Experiment, expansion_factors, ks, k_expansion_factor: int) -> list[tuple[str, Experiment]]:
    """The (R, k) points of :func:`sweep` as validated experiments: list parameters parsed (JSON text too)
    and every point checked (k at most R * d_model) before anything is trained."""
    expansion_factors = list_parameter("expansion_factors", expansion_factors, int, positive=True)
    ks = list_parameter("ks", ks, int, positive=True)
    k_expansion_factor = typed_parameter("k_expansion_factor", k_expansion_factor, int)
    points = [("R", r, exp.k) for r in expansion_factors] + [("k", k_expansion_factor, k) for k in ks]
    return [(which, _all_dead_at_most(exp.with_model(exp.model, expansion_factor=r, k=k))) for which, r, k in points]


def _all_dead_at_most(exp: Experiment) -> Experiment:
    """``exp`` with AuxK's k_aux cut to its number of latents where the preset's is larger (R = 1 on zoo-s: 64
    latents, k_aux 256): AuxK then takes every dead latent, as it does whenever fewer than k_aux are dead."""
    k_aux = exp.train_config().sae.k_aux
    if exp.n_latents is None or k_aux <= exp.n_latents:
        return exp
    return exp.with_model(exp.model, k_aux=exp.n_latents)


def sweep(exp: Experiment, expansion_factors: list[int], ks: list[int], k_expansion_factor: int) -> list[dict]:
    """PAPER.md §4 item 9: R at ``exp.k``, and k at R = ``k_expansion_factor``, for ``exp.model``.

    One row per (R, k) point of each sweep (a point shared by both appears in both, trained once):
    FVU and Delta CE (held-out, mean over layers), mean std of ``p(l | j)``, the headline variance
    ratio, MMCS of the decoder and training time.
    """
    points = sweep_points(exp, expansion_factors, ks, k_expansion_factor)
    train_together([e for _, e in points])
    rows = []
    for which, e in points:
        r, k = e.expansion_factor, e.k
        result, summary = e.evaluate(), e.distributions().summary()
        rows.append({
            "sweep": which, "R": r, "k": k, "n_latents": e.train().cfg.n_latents,
            "FVU": result.mean("fvu"), "delta CE": result.mean("delta_ce"), "L0": result.mean("l0"),
            "dead fraction": result.dead_fraction, "mean std of p(l|j)": summary.mean_std_layer,
            **headline_row(summary),
            "MMCS": mmcs(decoder_vectors(e.train()), device=e.device),
            "train seconds": e.train_summary().get("seconds", float("nan")),
        })
    return rows


def lens_comparison(exp: Experiment, models: list[str]) -> list[dict]:
    """PAPER.md §4 item 8: the central quantities of each model without and with the tuned lens."""
    experiments = [exp.with_model(m, tuned_lens=lens) for m in models for lens in (False, True)]
    train_together(experiments)
    rows = []
    for e in experiments:
        s, r, g = e.distributions().summary(), e.evaluate(), e.geometry()
        rows.append({
            "model": e.model, "tuned lens": e.tuned_lens, "layers": s.n_layers, "FVU": r.mean("fvu"),
            "delta CE": r.mean("delta_ce"), "E_j Var(L|j)": s.aggregate_var, "E_tj Var(L|t,j)": s.token_var,
            **headline_row(s), "mean std of p(l|j)": s.mean_std_layer,
            "mean adjacent cosine": float(g.cos_mean.mean()),
        })
    return rows


def single_layer_baselines(exp: Experiment) -> dict:
    """PAPER.md §4 item 11: one SAE per layer (same R, k, data and tokens) against the MLSAE.

    Returns ``saes`` {layer: Experiment}, the matrices ``fvu`` and ``delta_ce`` [trained-on, evaluated-on]
    with the MLSAE as the last row, and the training seconds of each run.
    """
    n_layers = exp.load_lm()[0].config.num_hidden_layers
    every = list(range(n_layers))
    singles = {l: exp.with_model(exp.model, layers=[l]) for l in every}
    train_together([exp, *singles.values()])
    results = [singles[l].evaluate(layers=every) for l in every] + [exp.evaluate()]
    return {
        "saes": singles,
        "row_labels": [f"SAE trained on layer {l}" for l in every] + ["MLSAE (all layers)"],
        "fvu": np.array([r.fvu for r in results]),
        "delta_ce": np.array([r.delta_ce for r in results]),
        "seconds": {"MLSAE": exp.train_summary().get("seconds", float("nan")),
                    **{f"layer {l}": singles[l].train_summary().get("seconds", float("nan")) for l in every}},
        # weights, gradients and two Adam moments: what training holds per SAE, in MiB
        "train_state_mib": {"MLSAE": train_state_mib(exp.train()), **{f"layer {l}": train_state_mib(singles[l].train()) for l in every}},
    }


def train_state_mib(sae) -> float:
    """What training holds for one SAE, in MiB: weights, gradients and two Adam moments."""
    return 4 * sum(p.numel() * p.element_size() for p in sae.parameters()) / 2**20


# ---- language models (notebook 01) ---------------------------------------------------------------

REPORT_FIELDS = ("n_layers", "d_model", "n_params", "train_tokens", "train_time_s", "heldout_loss", "unigram_loss",
                 "ioi_top5", "ioi_template_accuracy")


def language_model_report(name: str, device: str = "cpu") -> dict:
    """The same summary for any registry model: the zoo's stored report, or, for other models,
    their shape and IOI behaviour (held-out and unigram losses need their training text, so they
    are ``None`` there)."""
    if resolve_model(name).kind == "zoo":
        report = zoo_report(name)
        return {k: report.get(k) for k in REPORT_FIELDS}
    model, tokenizer = load_model(name, device=device)
    ioi = ioi_report(model.cpu() if device == "cpu" else model, tokenizer)
    return {"n_layers": model.config.num_hidden_layers, "d_model": model.config.hidden_size,
            "n_params": sum(p.numel() for p in model.parameters()), "train_tokens": None, "train_time_s": None,
            "heldout_loss": None, "unigram_loss": None, "ioi_top5": ioi["ioi_top5"],
            "ioi_template_accuracy": ioi["ioi_template_accuracy"]}


def decoder_mmcs(exp: Experiment, models: list[str]) -> dict[str, float]:
    """Notebook 08: MMCS of each model's MLSAE decoder (mean over latents of the largest cosine
    similarity with another latent's decoder vector)."""
    return {m: float(max_cosine(decoder_vectors(exp.with_model(m).train()), device=exp.device)[0].mean()) for m in models}


def nearest_token_table(stats, near: dict, tokenizer, latents_shown: int) -> list[dict]:
    """Notebook 08: for ``latents_shown`` alive latents spread over depth (by mean layer), the tokens whose
    embedding/unembedding directions are nearest their decoder vector (``near``: name -> (sims, ids))."""
    mean = stats.mean_layer.numpy()
    order = latent_order(stats)
    shown = order[np.linspace(0, len(order) - 1, latents_shown).round().astype(int)]

    def show(sims, ids):
        return ", ".join(f"{tokenizer.decode([int(t)])!r} {s:.2f}" for s, t in zip(sims, ids, strict=True))

    return [{"latent": int(j), "mean layer": round(float(mean[j]), 2),
             **{f"nearest {n} tokens": show(s[j].tolist(), i[j].tolist()) for n, (s, i) in near.items()}}
            for j in shown]


def layer_statistics_table(stats: dict, min_share: float) -> list[dict]:
    """Notebook 09: per model, how integer-like and how concentrated the latents' layer distributions are."""
    rows = []
    for m, s in stats.items():
        alive = s.alive
        rows.append({"model": m, "layers": s.n_layers, "alive latents": int(alive.sum()),
                     "mean distance to integer": float(s.distance_to_integer[alive].mean()),
                     f"mean layers with >= {min_share:.0%} of firings": float(s.active_layers(min_share)[alive].double().mean()),
                     "mean layers with any firing": float(s.n_active_layers[alive].double().mean()),
                     "mean entropy / log L": float((s.entropy[alive] / torch.log(torch.tensor(float(s.n_layers)))).mean())})
    return rows


def family_table(exp: Experiment, families: dict[str, list[str]]) -> tuple[list[dict], dict]:
    """Notebook 12: the central quantities of every model of every family, and each model's residual
    geometry (keyed ``"family: model"``)."""
    rows, geoms = [], {}
    for family, models in families.items():
        for m in models:
            e = exp.with_model(m)
            s, g, r = e.distributions().summary(), e.geometry(), e.evaluate()
            geoms[f"{family}: {m}"] = g
            rows.append({"family": family, "model": m, "n_layers": s.n_layers, "d_model": int(e.load_lm()[0].config.hidden_size),
                         "params": sum(p.numel() for p in e.load_lm()[0].parameters()),
                         "aggregate_var": s.aggregate_var, "token_var": s.token_var,
                         **headline_row(s),
                         "mean_std_layer_over_n_layers": s.mean_std_layer_over_n_layers,
                         "adjacent_cos": float(g.cos_mean.mean()), "fvu": r.mean("fvu"),
                         "delta_ce": r.mean("delta_ce"), "clean_ce": r.clean_ce, "dead_fraction": r.dead_fraction})
    return rows, geoms
