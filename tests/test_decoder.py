"""Decoder geometry against brute force; SAEs applied at layers other than their own."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mlsae.analysis.decoder import decoder_vectors, max_cosine, mmcs, nearest_tokens, pair_histograms, token_directions
from mlsae.analysis.distributions import LayerDistributions
from mlsae.sae.config import SAEConfig
from mlsae.sae.model import MLSAE


def _vectors(n=300, d=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(n, d, generator=g)
    v[5] = v[7] * 3  # an exact duplicate direction: max cosine 1
    return v


def test_max_cosine_matches_dense_and_is_chunk_independent():
    v = _vectors()
    dense = F.normalize(v, dim=-1) @ F.normalize(v, dim=-1).T
    dense.fill_diagonal_(-2)
    for chunk in (7, 64, 1000):
        best, arg = max_cosine(v, chunk=chunk)
        torch.testing.assert_close(best, dense.max(1).values)
        assert arg[5] == 7 and arg[7] == 5 and best[5] == pytest.approx(1.0, abs=1e-5)
    other = _vectors(40, seed=1)
    cross = F.normalize(v, dim=-1) @ F.normalize(other, dim=-1).T
    torch.testing.assert_close(max_cosine(v, other, chunk=33)[0], cross.max(1).values)
    assert mmcs(v) == pytest.approx(float(dense.max(1).values.mean()), abs=1e-6)


def test_pair_histograms_count_every_pair_once():
    v = _vectors(n=90)
    mean_layer = torch.linspace(0, 3, 90, dtype=torch.float64)
    mean_layer[10] = float("nan")  # a dead latent: left out
    h = pair_histograms(v, mean_layer, cos_bins=20, dlayer_bins=6, chunk=16)
    keep = ~torch.isnan(mean_layer)
    u = F.normalize(v[keep], dim=-1)
    iu = torch.triu_indices(len(u), len(u), 1)
    cos = (u @ u.T)[iu[0], iu[1]]
    assert h.pairs == len(cos) == 89 * 88 // 2 and h.latents == 89
    np.testing.assert_allclose(h.cos_counts.numpy(), np.histogram(cos.clamp(-1, 1).numpy(), bins=20, range=(-1, 1))[0])
    assert h.joint_counts.sum() == h.pairs
    np.testing.assert_allclose(h.joint_counts.sum(0).numpy(), h.cos_counts.numpy())
    ml = mean_layer[keep]
    dl = (ml[iu[0]] - ml[iu[1]]).abs()
    by_row = h.mean_abs_cos_by_dlayer()
    assert by_row.shape == (6,) and ((by_row >= 0) & (by_row <= 1)).all()
    np.testing.assert_allclose(h.joint_counts.sum(1).numpy(),
                               np.histogram(dl.numpy(), bins=6, range=(0, float(ml.max() - ml.min())))[0])


def test_nearest_tokens_and_token_directions(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    dirs = token_directions(model)
    emb = model.get_input_embeddings().weight.detach()
    gain = model.gpt_neox.final_layer_norm.weight.detach()
    torch.testing.assert_close(dirs["input"], emb - emb.mean(-1, keepdim=True))
    unemb = model.get_output_embeddings().weight.detach() * gain
    torch.testing.assert_close(dirs["output"], unemb - unemb.mean(-1, keepdim=True))
    sae = MLSAE(SAEConfig(d_model=32, n_latents=50, k=4))
    vec = decoder_vectors(sae)
    assert torch.allclose(vec.norm(dim=-1), torch.ones(50))
    vec[3] = dirs["input"][9]  # a latent that is exactly token 9's embedding
    sims, ids = nearest_tokens(vec, dirs["input"], top=3, chunk=8)
    assert ids[3, 0] == 9 and sims[3, 0] == pytest.approx(1.0, abs=1e-5)
    ref = (F.normalize(vec, dim=-1) @ F.normalize(dirs["input"], dim=-1).T).topk(3, dim=1)
    torch.testing.assert_close(sims, ref.values)


def test_layer_statistics_helpers():
    counts = torch.tensor([[10.0, 0.0, 1.0], [0.0, 5.0, 1.0], [0.0, 5.0, 98.0]])  # [layer, latent]
    s = LayerDistributions(counts=counts, totals=counts.clone().double())
    assert s.n_active_layers.tolist() == [1, 2, 3]
    assert s.active_layers(0.05).tolist() == [1, 2, 1]  # latent 2: 1% at layers 0 and 1 does not count
    torch.testing.assert_close(s.distance_to_integer, torch.tensor([0.0, 0.5, 0.03], dtype=torch.float64))


def test_sae_applied_at_other_layers(tiny_model_dir):
    """A single-layer SAE evaluated / analysed at every layer: its own layer agrees with the default."""
    from mlsae.analysis.distributions import layer_distributions
    from mlsae.analysis.metrics import evaluate
    from mlsae.models.registry import load_model

    model, tok = load_model(str(tiny_model_dir))
    torch.manual_seed(0)
    sae = MLSAE(SAEConfig(d_model=32, n_latents=64, k=4, layers=[1]))
    batches = [torch.randint(2, len(tok), (2, 12)) for _ in range(2)]
    own = evaluate(model, tok, sae, batches, progress=False)
    every = evaluate(model, tok, sae, batches, layers=[0, 1, 2], progress=False)
    assert own.layers == [1] and every.layers == [0, 1, 2]
    assert every.fvu[1] == pytest.approx(own.fvu[0]) and every.delta_ce[1] == pytest.approx(own.delta_ce[0])
    stats = layer_distributions(model, tok, sae, batches, layers=[0, 1, 2], progress=False)
    assert stats.counts.shape == (3, 64) and stats.tokens == 48
    with pytest.raises(ValueError, match="out of range"):
        evaluate(model, tok, sae, batches, layers=[3], progress=False)
