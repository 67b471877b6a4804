"""Distributions over layers: the streaming sparse accumulator against a dense brute force."""

import math

import pytest
import torch

from mlsae.analysis import LayerDistributionAccumulator, LayerDistributions


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
    assert s["token_var"] == pytest.approx(float(var[firing].mean()), rel=1e-9)
    assert s["token_var_weighted"] == pytest.approx(float((var * mass)[firing].sum() / mass[firing].sum()), rel=1e-9)
    single = ((a > 0).sum(0) == 1) & firing
    assert s["single_layer_pair_fraction"] == pytest.approx(float(single.sum() / firing.sum()))
    agg = acc.stats.var_layer
    assert s["aggregate_var"] == pytest.approx(float(agg[~torch.isnan(agg)].mean()))
    assert s["variance_ratio"] == pytest.approx(s["aggregate_var"] / s["token_var"])


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
    assert s["token_var"] == 0
    assert s["aggregate_var"] == pytest.approx(35 / 12)  # variance of uniform {0..5}
    assert math.isinf(s["variance_ratio"])
    assert s["single_layer_pair_fraction"] == 1.0


def test_save_load_round_trip(tmp_path):
    values, indices = _random_topk(seed=5)
    acc = LayerDistributionAccumulator(4, 40)
    acc.update(values, indices)
    acc.stats.save(tmp_path / "d.safetensors")
    back = LayerDistributions.load(tmp_path / "d.safetensors")
    torch.testing.assert_close(back.counts, acc.stats.counts)
    assert back.summary() == pytest.approx(acc.stats.summary())
