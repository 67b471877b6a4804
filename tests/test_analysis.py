"""Distributions over layers: the streaming sparse accumulator against a dense brute force."""

import math

import pytest
import torch

from mlsae.analysis.distributions import LayerDistributionAccumulator, LayerDistributions


def _random_topk(n_layers=4, n_tokens=50, n_latents=40, k=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    indices = torch.stack([torch.stack([torch.randperm(n_latents, generator=g)[:k] for _ in range(n_tokens)])
                           for _ in range(n_layers)])  # [layer, token, k], distinct per row
    values = torch.rand(n_layers, n_tokens, k, generator=g)
    values[values < 0.2] = 0  # some selected-but-zero entries, as a ReLU'd top-k can have
    return values, indices


def _dense(values, indices, n_latents):
    L, T, k = values.shape
    a = torch.zeros(L, T, n_latents, dtype=torch.float64)
    a.scatter_(2, indices, values.double())
    return a  # [layer, token, latent]


def test_counts_totals_and_distributions_match_dense_definitions():
    values, indices = _random_topk()
    acc = LayerDistributionAccumulator(4, 40)
    acc.update(values[:, :20], indices[:, :20])  # two batches == one
    acc.update(values[:, 20:], indices[:, 20:])
    s = acc.stats
    a = _dense(values, indices, 40)
    torch.testing.assert_close(s.counts, (a > 0).sum(1).double())
    torch.testing.assert_close(s.totals, a.sum(1))
    p = a.sum(1) / a.sum(1).sum(0, keepdim=True)
    alive = a.sum((0, 1)) > 0
    torch.testing.assert_close(s.p_layer[:, alive], p[:, alive])
    l = torch.arange(4, dtype=torch.float64)[:, None]
    mean = (p * l).sum(0)
    var = (p * (l - mean) ** 2).sum(0)
    torch.testing.assert_close(s.mean_layer[alive], mean[alive])
    torch.testing.assert_close(s.var_layer[alive], var[alive])
    assert torch.isnan(s.mean_layer[~alive]).all()
    ent = -(p * torch.log(p.clamp_min(1e-30))).sum(0)
    torch.testing.assert_close(s.entropy[alive], ent[alive])
    torch.testing.assert_close(s.n_active_layers, ((a > 0).sum(1) > 0).sum(0))


def test_per_token_variance_matches_dense_over_firing_pairs_only():
    values, indices = _random_topk(seed=3)
    acc = LayerDistributionAccumulator(4, 40)
    acc.update(values, indices)
    a = _dense(values, indices, 40)  # [L, T, J]
    mass = a.sum(0)  # [T, J]
    firing = mass > 0
    p = a / mass.clamp_min(1e-30)
    l = torch.arange(4, dtype=torch.float64)[:, None, None]
    var = (p * l**2).sum(0) - (p * l).sum(0) ** 2
    s = acc.stats.summary()
    assert acc.stats.token_pairs == int(firing.sum())
    assert s.token_var == pytest.approx(float(var[firing].mean()), rel=1e-9)
    assert s.token_var_weighted == pytest.approx(float((var * mass)[firing].sum() / mass[firing].sum()), rel=1e-9)
    single = ((a > 0).sum(0) == 1) & firing
    assert s.single_layer_pair_fraction == pytest.approx(float(single.sum() / firing.sum()))
    agg = acc.stats.var_layer
    assert s.aggregate_var == pytest.approx(float(agg[~torch.isnan(agg)].mean()))
    assert s.honest_ratio == pytest.approx(s.aggregate_var / s.token_var)


def test_latent_active_at_one_layer_per_token_but_different_layers_gives_large_ratio():
    """The paper's phenomenon in miniature: per-token variance 0, aggregated variance large."""
    n_layers, n_tokens = 6, 60
    values = torch.zeros(n_layers, n_tokens, 1)
    indices = torch.zeros(n_layers, n_tokens, 1, dtype=torch.long)
    for t in range(n_tokens):
        values[t % n_layers, t, 0] = 1.0  # latent 0 fires at one layer per token, cycling
    acc = LayerDistributionAccumulator(n_layers, 3)
    acc.update(values, indices)
    s = acc.stats.summary()
    assert s.token_var == 0
    assert s.aggregate_var == pytest.approx(35 / 12)  # variance of uniform {0..5}
    assert math.isinf(s.honest_ratio)
    assert s.single_layer_pair_fraction == 1.0


def test_save_load_round_trip(tmp_path):
    values, indices = _random_topk(seed=5)
    acc = LayerDistributionAccumulator(4, 40)
    acc.update(values, indices)
    acc.stats.save(tmp_path / "d.safetensors")
    back = LayerDistributions.load(tmp_path / "d.safetensors")
    torch.testing.assert_close(back.counts, acc.stats.counts)
    assert back.summary().as_dict() == pytest.approx(acc.stats.summary().as_dict(), nan_ok=True)  # no full window: paper_* NaN


# ---- the paper's estimator (PAPER.md §3b) and the honest token-weighted decomposition ---------------


def _paper_dense(a: torch.Tensor, first_layer: int = 0) -> dict:
    """A dense copy of the authors' ``Metric.update`` for one window ``a`` [layer, token, latent]."""
    layers = torch.arange(a.shape[0], dtype=torch.float64) + first_layer

    def V(x):
        l = layers.view(-1, *([1] * (x.dim() - 1)))
        return (l**2 * x).sum(0) - ((l * x).sum(0)) ** 2

    probs = (a / a.sum(0)).nan_to_num(0.0)
    e_f = V(probs.mean(1)).mean()
    e_tf = V(probs).mean()
    var_l = V(probs.mean((1, 2)))
    return {"exp_var_l_f": float(e_f), "exp_var_l_tf": float(e_tf), "var_l": float(var_l),
            "rel_var_f": float(e_f / var_l), "rel_var_t": float(e_tf / e_f)}


def _paper_brute_force(a: torch.Tensor, window: int, first_layer: int = 0) -> dict:
    rows = [_paper_dense(a[:, i:i + window], first_layer) for i in range(0, a.shape[1] - window + 1, window)]
    out = {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}
    out["ratio"], out["windows"] = 1 / out["rel_var_t"], len(rows)
    return out


@pytest.mark.parametrize("first_layer", [0, 1])
def test_paper_estimator_matches_dense_copy_of_the_authors_code_per_window(first_layer):
    values, indices = _random_topk(n_layers=5, n_tokens=70, n_latents=30, k=4, seed=11)
    acc = LayerDistributionAccumulator(5, 30, window=16)
    for lo, hi in ((0, 7), (7, 40), (40, 70)):  # batches that straddle window boundaries
        acc.update(values[:, lo:hi], indices[:, lo:hi])
    got = acc.stats.paper_windows(first_layer)
    want = _paper_brute_force(_dense(values, indices, 30), 16, first_layer)
    assert got["windows"] == want["windows"] == 4  # 70 tokens: four full windows, the trailing 6 dropped
    for key in ("exp_var_l_tf", "exp_var_l_f", "var_l", "rel_var_f", "rel_var_t", "ratio"):
        assert got[key] == pytest.approx(want[key], rel=1e-9), key


@pytest.mark.parametrize("first_layer", [0, 1])
def test_paper_whole_set_matches_dense_and_factorises_into_honest_ratio_times_mu2_factor(first_layer):
    values, indices = _random_topk(n_layers=4, n_tokens=60, n_latents=25, k=3, seed=2)
    acc = LayerDistributionAccumulator(4, 25)
    acc.update(values, indices)
    s = acc.stats
    a = _dense(values, indices, 25)
    want = _paper_dense(a, first_layer)
    got = s.paper_whole_set(first_layer)
    for key in want:
        assert got[key] == pytest.approx(want[key], rel=1e-9), key
    # the exact identity: paper ratio = q-weighted honest ratio * (1 + E[q(1-q)mu^2] / E[q sigma^2])
    honest = s.token_weighted_summary(first_layer)
    assert got["ratio"] == pytest.approx(honest["q_weighted_ratio"] * honest["mu2_factor"], rel=1e-9)
    # and the token-weighted pieces against their dense definitions
    mass = a.sum(0)  # [T, J]
    firing = mass > 0
    p = (a / mass).nan_to_num(0.0)
    l = torch.arange(4, dtype=torch.float64)
    q = firing.double().mean(0)
    r = p.sum(1) / firing.sum(0).clamp_min(1)  # [L, J]: token-weighted distribution
    mu = (l[:, None] * r).sum(0)
    sigma2 = (l[:, None] ** 2 * r).sum(0) - mu**2
    per_token = (l[:, None, None] ** 2 * p).sum(0) - ((l[:, None, None] * p).sum(0)) ** 2
    vbar = (per_token * firing).sum(0) / firing.sum(0).clamp_min(1)
    w = s.token_weighted(first_layer)
    alive = firing.any(0)
    torch.testing.assert_close(w["q"], q)
    torch.testing.assert_close(w["mu"][alive], mu[alive] + first_layer)
    torch.testing.assert_close(w["sigma2"][alive], sigma2[alive])
    torch.testing.assert_close(w["vbar"][alive], vbar[alive])
    assert honest["q_weighted_ratio"] == pytest.approx(float((q * sigma2).sum() / (q * vbar).sum()), rel=1e-9)


def test_honest_estimators_are_invariant_to_numbering_the_layers_and_the_paper_one_is_not():
    values, indices = _random_topk(n_layers=6, n_tokens=64, n_latents=20, k=3, seed=7)
    acc = LayerDistributionAccumulator(6, 20, window=32)
    acc.update(values, indices)
    s = acc.stats
    h0, h1 = s.token_weighted_summary(0), s.token_weighted_summary(1)
    assert h0["q_weighted_ratio"] == pytest.approx(h1["q_weighted_ratio"], rel=1e-12)
    assert h0["aggregate_var_token_weighted"] == pytest.approx(h1["aggregate_var_token_weighted"], rel=1e-12)
    torch.testing.assert_close(s.token_weighted(1)["mu"], s.token_weighted(0)["mu"] + 1, equal_nan=True)
    # ... while the paper's ratio moves (non-firing tokens count as mass at layer "0", wherever that is)
    assert s.paper_windows(1)["ratio"] != pytest.approx(s.paper_windows(0)["ratio"], rel=1e-3)
    assert s.paper_whole_set(1)["ratio"] != pytest.approx(s.paper_whole_set(0)["ratio"], rel=1e-3)
    # the per-token term does not depend on the numbering (each firing column sums to one)
    assert s.paper_windows(1)["exp_var_l_tf"] == pytest.approx(s.paper_windows(0)["exp_var_l_tf"])


def test_closed_forms_one_layer_latent_and_uniform_latent():
    n_layers, T = 5, 40
    # latent 0 fires at layer 3 on a fraction q = 1/4 of the tokens; latent 1 fires at every layer
    # equally on every token; latent 2 never fires.
    values = torch.zeros(n_layers, T, 2)
    indices = torch.zeros(n_layers, T, 2, dtype=torch.long)
    indices[..., 1] = 1
    values[..., 1] = 2.0
    for t in range(0, T, 4):
        values[3, t, 0] = 1.5
    acc = LayerDistributionAccumulator(n_layers, 3, window=T)
    acc.update(values, indices)
    s = acc.stats
    uniform_var = (n_layers**2 - 1) / 12
    w = s.token_weighted()
    q = 0.25
    assert float(w["q"][0]) == q and float(w["q"][1]) == 1.0 and float(w["q"][2]) == 0.0
    assert float(w["mu"][0]) == 3 and float(w["sigma2"][0]) == 0 and float(w["vbar"][0]) == 0
    assert float(w["mu"][1]) == pytest.approx(2) and float(w["sigma2"][1]) == pytest.approx(uniform_var)
    assert float(w["vbar"][1]) == pytest.approx(uniform_var)
    assert float(s.var_layer[0]) == 0 and float(s.var_layer[1]) == pytest.approx(uniform_var)
    # the paper's terms, in closed form: V(M_0) = q (1 - q) * 3^2 (a pure layer-0 artefact), V(M_1) = uniform_var
    paper = s.paper_windows(0)
    assert paper["exp_var_l_f"] == pytest.approx((q * (1 - q) * 9 + uniform_var) / 3)
    assert paper["exp_var_l_tf"] == pytest.approx(uniform_var / 3)  # only latent 1's pairs have variance
    assert paper["ratio"] == pytest.approx(1 + q * (1 - q) * 9 / uniform_var)
    # the honest q-weighted ratio is exactly 1: no latent moves between layers from token to token
    assert s.token_weighted_summary()["q_weighted_ratio"] == pytest.approx(1.0)
    # today's ratio weighs latents equally but pairs by frequency: (uv / 2) / (40 uv / 50) = 0.625
    assert s.summary().honest_ratio == pytest.approx((uniform_var / 2) / (40 * uniform_var / 50))


def test_paper_estimator_survives_save_and_load(tmp_path):
    values, indices = _random_topk(n_tokens=80, seed=9)
    acc = LayerDistributionAccumulator(4, 40, window=32)
    acc.update(values, indices)
    acc.stats.save(tmp_path / "d.safetensors")
    back = LayerDistributions.load(tmp_path / "d.safetensors")
    assert back.window == 32 and back.paper_tf.shape == (2,)
    assert back.summary().as_dict() == pytest.approx(acc.stats.summary().as_dict(), nan_ok=True)


def test_window_must_be_positive():
    with pytest.raises(ValueError, match="window"):
        LayerDistributionAccumulator(2, 3, window=0)


def test_residual_geometry_saves_as_safetensors_not_pickle(tmp_path):
    from mlsae.analysis.distributions import ResidualGeometry

    g = ResidualGeometry(torch.rand(3, dtype=torch.float64), torch.rand(3, dtype=torch.float64), torch.rand(4), 1234)
    g.save(tmp_path / "g.safetensors")
    assert (tmp_path / "g.safetensors").read_bytes()[8:9] == b"{"  # a safetensors JSON header, not a pickle
    back = ResidualGeometry.load(tmp_path / "g.safetensors")
    assert back.tokens == 1234 and all(torch.equal(getattr(back, k), getattr(g, k)) for k in ("cos_mean", "cos_sem", "norm_mean"))


def test_the_summary_is_one_typed_record_with_the_tables_names():
    """One name per quantity: the summary's fields are what the tables and notebooks read, the headline columns
    come from those fields, and a statistic without per-token sums or a closed window says NaN, not a missing key."""
    import dataclasses

    from mlsae.analysis.distributions import HEADLINE_COLUMNS, LayerSummary, headline_row

    values, indices = _random_topk(seed=3)
    acc = LayerDistributionAccumulator(4, 40, window=10_000)  # no window closes
    acc.update(values, indices)
    s = acc.stats.summary()
    assert isinstance(s, LayerSummary) and set(HEADLINE_COLUMNS) <= {f.name for f in dataclasses.fields(s)}
    assert math.isnan(s.paper_ratio) and s.paper_windows == 0 and math.isfinite(s.honest_ratio)
    assert list(headline_row(s)) == list(HEADLINE_COLUMNS.values()) and headline_row(s)["honest ratio"] == s.honest_ratio
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.honest_ratio = 1.0  # type: ignore[misc]
