"""Tuned lens: exact inverse, layer-index mapping, our own training loop, fail-fast loading."""

import time

import pytest
import torch
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM
from tuned_lens import TunedLens

from mlsae.lens import ResidualLens
from mlsae.lens_training import (
    LensNotAvailableError,
    lens_kl_per_layer,
    load_lens,
    load_pretrained_lens,
    save_lens,
    train_tuned_lens,
)


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    cfg = GPTNeoXConfig(vocab_size=97, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64)
    return GPTNeoXForCausalLM(cfg).eval()


def _random_lens(model) -> TunedLens:
    lens = TunedLens.from_model(model)
    torch.manual_seed(1)
    with torch.no_grad():
        for t in lens:
            t.weight.normal_(0, 0.2)
            t.bias.normal_(0, 0.5)
    return lens


def test_inverse_of_transform_is_identity_for_every_layer(tiny_model):
    rl = ResidualLens.from_tuned_lens(_random_lens(tiny_model))
    h = torch.randn(3, 5, 7, 32)
    y = rl(h)
    assert (y - h).abs().max() > 0.1  # the map is not the identity
    torch.testing.assert_close(rl.inverse(y), h, atol=1e-4, rtol=1e-4)


def test_inverse_is_a_full_matrix_solve_not_a_diagonal_rescale(tiny_model):
    rl = ResidualLens.from_tuned_lens(_random_lens(tiny_model))
    h = torch.randn(3, 10, 32)
    y = rl(h)
    # A per-dimension scale would ignore the off-diagonal part of (I + A).
    diag = torch.diagonal(rl.weight, dim1=-2, dim2=-1)
    naive = (y - rl.bias[:, None]) / diag[:, None]
    assert (naive - h).abs().max() > 1e-2
    torch.testing.assert_close(rl.inverse(y), h, atol=1e-4, rtol=1e-4)


def test_clean_activations_are_never_modified(tiny_model):
    rl = ResidualLens.from_tuned_lens(_random_lens(tiny_model))
    h = torch.randn(3, 4, 32)
    before = h.clone()
    y = rl(h)
    rl.inverse(y)
    assert torch.equal(h, before)


def test_layer_mapping_block_output_uses_next_translator(tiny_model):
    """Our layer l is hidden_states[l+1]: translator l+1; the last layer's map is the identity."""
    lens = _random_lens(tiny_model)
    rl = ResidualLens.from_tuned_lens(lens)
    ids = torch.randint(0, 97, (2, 9))
    hs = tiny_model(ids, output_hidden_states=True).hidden_states
    for l in range(2):
        expected = lens.transform_hidden(hs[l + 1], l + 1)
        torch.testing.assert_close(rl(hs[l + 1][None], layers=[l])[0], expected, atol=1e-5, rtol=1e-5)
    last = torch.randn(1, 4, 32)
    torch.testing.assert_close(rl(last, layers=[2]), last)


def test_subset_of_layers_and_shape_errors(tiny_model):
    rl = ResidualLens.from_tuned_lens(_random_lens(tiny_model))
    h = torch.randn(1, 6, 32)
    torch.testing.assert_close(rl.inverse(rl(h, layers=[1]), layers=[1]), h, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="layer"):
        rl(torch.randn(2, 6, 32), layers=[1])
    with pytest.raises(ValueError, match="out of range"):
        rl(h, layers=[7])
    with pytest.raises(ValueError, match="d_model"):
        rl(torch.randn(3, 6, 16))


def test_own_training_loop_reduces_kl_and_round_trips_on_disk(tiny_model, tmp_path):
    torch.manual_seed(0)
    ids = torch.randint(0, 97, (4, 16))
    before = lens_kl_per_layer(tiny_model, TunedLens.from_model(tiny_model), ids)
    lens = train_tuned_lens(tiny_model, [ids] * 25, lr=1e-2, progress=False)
    after = lens_kl_per_layer(tiny_model, lens, ids)
    assert (after < before).all(), (before, after)
    save_lens(lens, tmp_path / "lens")
    loaded = load_lens(tiny_model, tmp_path / "lens")
    torch.testing.assert_close(lens_kl_per_layer(tiny_model, loaded, ids), after)


def test_missing_pretrained_lens_fails_fast_with_instructions(tiny_model, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(LensNotAvailableError, match="hf download"):
        load_pretrained_lens(tiny_model, "EleutherAI/pythia-70m-deduped")
    assert time.perf_counter() - start < 15
