"""Tuned lens: exact inverse, layer-index mapping, our own training loop, fail-fast loading."""

import time

import pytest
import torch
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM
from tuned_lens import TunedLens

from mlsae.models.lens import ResidualLens
from mlsae.models.lens_training import (
    LensNotAvailableError,
    lens_kl_per_layer,
    load_lens,
    load_pretrained_lens,
    save_lens,
    train_tuned_lens,
)
from mlsae.training.identity import sae_key


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


# ---- the pretrained lens of a hub model, from the tuned-lens space in the hub cache --------------------


@pytest.fixture
def pythia_stand_in(tmp_path, empty_hf_cache, monkeypatch):
    """A tiny GPT-NeoX as EleutherAI/pythia-70m-deduped in the hub cache, and the Pile stand-in for lens text."""
    from conftest import make_tiny_tokenizer, put_in_hub_cache, save_tiny_model_dir, write_pile_layout

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MLSAE_HOME", str(tmp_path / "home"))
    model_dir = save_tiny_model_dir(tmp_path / "neox", tokenizer=make_tiny_tokenizer())
    put_in_hub_cache(empty_hf_cache, "EleutherAI/pythia-70m-deduped", model_dir)
    return tmp_path, empty_hf_cache, write_pile_layout(tmp_path / "pile")


def _put_pretrained_lens(cache, model, tmp_path) -> TunedLens:
    """The tuned-lens space as `hf download AlignmentResearch/tuned-lens --repo-type space --include
    'lens/EleutherAI/pythia-70m-deduped/*'` leaves it: lens/<hub id>/config.json and params.pt."""
    from conftest import put_in_hub_cache

    lens = _random_lens(model)
    space = tmp_path / "space"
    lens.save(space / "lens" / "EleutherAI" / "pythia-70m-deduped")
    put_in_hub_cache(cache, "AlignmentResearch/tuned-lens", space, repo_type="space")
    return lens


def test_the_pretrained_lens_is_used_named_and_keyed(pythia_stand_in, capsys):
    """On main 0d8e133 the provenance described a locally trained lens and the cache key did not identify
    the pretrained one."""
    from conftest import HUB_SHA
    from mlsae.models.lens_training import lens_record, pretrained_lens_identity, residual_lens_for
    from mlsae.models.registry import load_model
    from mlsae.training.config import TrainConfig

    tmp_path, cache, pile = pythia_stand_in
    model, tokenizer = load_model("pythia-70m")
    cfg = TrainConfig.from_dict(dict(model="pythia-70m", data=str(pile), tuned_lens=True))
    assert pretrained_lens_identity("pythia-70m") is None
    key_without = sae_key(cfg)
    lens = _put_pretrained_lens(cache, model, tmp_path)
    identity = f"AlignmentResearch/tuned-lens@{HUB_SHA}:lens/EleutherAI/pythia-70m-deduped"
    assert pretrained_lens_identity("pythia-70m") == identity
    assert lens_record("pythia-70m", **cfg.lens_kwargs()) == {"source": "pretrained", "identity": identity}
    assert sae_key(cfg) != key_without  # the lens is part of what the SAE was trained behind
    assert sae_key(cfg) == sae_key(TrainConfig.from_dict(dict(model="pythia-70m", data=str(pile), tuned_lens=True, lens_tokens=7)))
    used = residual_lens_for("pythia-70m", model, tokenizer, **cfg.lens_kwargs(), progress=False)
    expected = ResidualLens.from_tuned_lens(lens)
    x = torch.randn(3, 5, 32)
    assert torch.equal(used(x), expected(x))  # [layer, token, d]: the pretrained translators, exactly
    assert not (tmp_path / "home" / "lenses").exists()  # nothing trained
    assert "no pretrained tuned lens" not in capsys.readouterr().out


def test_a_hub_model_without_its_pretrained_lens_says_so_before_training_one(pythia_stand_in, capsys):
    from mlsae.models.lens_training import lens_record, residual_lens_for
    from mlsae.models.registry import load_model

    tmp_path, cache, pile = pythia_stand_in
    model, tokenizer = load_model("pythia-70m")
    kwargs = dict(data=str(pile), seed=0, train_tokens=64)
    residual_lens_for("pythia-70m", model, tokenizer, **kwargs, seq_len=16, batch_size=2, progress=False)
    out = capsys.readouterr().out
    assert "no pretrained tuned lens for EleutherAI/pythia-70m-deduped on this machine" in out
    assert "hf download AlignmentResearch/tuned-lens --repo-type space --include 'lens/EleutherAI/pythia-70m-deduped/*'" in out
    assert lens_record("pythia-70m", **kwargs)["source"] == "trained here"
