"""Maximally activating examples: the streaming top-n merge against a dense brute force."""

import pytest
import torch

from conftest import make_micro_setup
from mlsae.analysis.examples import ExampleBrowser, MaxExamples, MaxExamplesAccumulator, max_examples
from mlsae.models.residuals import residual_streams, special_token_mask


def _brute_top(a, n):
    """a [layer, token, latent] dense -> (values, tokens) [layer, latent, n]: largest first, ties to the
    earlier token, only a > 0, empty slots (0, -1)."""
    L, T, J = a.shape
    values = torch.zeros(L, J, n)
    tokens = torch.full((L, J, n), -1, dtype=torch.long)
    for l in range(L):
        for j in range(J):
            col = a[l, :, j]
            order = sorted((t for t in range(T) if col[t] > 0), key=lambda t: (-float(col[t]), t))[:n]
            values[l, j, : len(order)] = col[order].float()
            tokens[l, j, : len(order)] = torch.tensor(order, dtype=torch.long)
    return values, tokens


def _random_topk(n_layers=3, n_tokens=60, n_latents=12, k=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    indices = torch.stack([torch.stack([torch.randperm(n_latents, generator=g)[:k] for _ in range(n_tokens)])
                           for _ in range(n_layers)])
    values = (torch.rand(n_layers, n_tokens, k, generator=g) * 8).floor() / 8  # many exact ties
    return values, indices


@pytest.mark.parametrize("n", [1, 3, 8])
def test_streaming_merge_matches_brute_force_including_ties(n):
    values, indices = _random_topk()
    acc = MaxExamplesAccumulator(3, 12, n)
    for lo, hi in [(0, 7), (7, 30), (30, 31), (31, 60)]:  # uneven batches, one of a single token
        acc.update(values[:, lo:hi], indices[:, lo:hi], torch.arange(lo, hi))
    dense = torch.zeros(3, 60, 12).scatter_(2, indices, values)
    want_v, want_t = _brute_top(dense, n)
    got = acc.result
    assert torch.equal(got.values, want_v)
    assert torch.equal(got.tokens, want_t)
    assert got.n_tokens == 60


@pytest.fixture(scope="module")
def micro():
    return make_micro_setup()


@torch.no_grad()
def _dense_activations(model, tokenizer, sae, batches):
    """a [layer, token, latent] over every token of every batch, the slow way; 0 on special tokens."""
    rows = []
    for ids in batches:
        resid = residual_streams(model, ids)  # [layer, batch, pos, d]
        L, B, P, d = resid.shape
        values, indices = sae.encode(resid.reshape(-1, d))
        a = torch.zeros(values.shape[0], sae.cfg.n_latents).scatter_(1, indices, values).view(L, B * P, -1)
        rows.append(a * special_token_mask(ids, tokenizer).reshape(1, -1, 1))
    return torch.cat(rows, 1)


def test_max_examples_on_a_micro_model_match_dense_brute_force(micro):
    model, tokenizer, sae, batches = micro
    ex = max_examples(model, tokenizer, sae, batches, n_examples=5, progress=False)
    want_v, want_t = _brute_top(_dense_activations(model, tokenizer, sae, batches), 5)
    assert ex.layers == [0, 1, 2] and ex.input_ids.dtype == torch.int32
    assert torch.equal(ex.input_ids.long(), torch.cat(batches))
    assert ex.n_tokens == int(sum(special_token_mask(b, tokenizer).sum() for b in batches))
    assert torch.equal(ex.tokens, want_t)
    torch.testing.assert_close(ex.values, want_v, rtol=1e-5, atol=1e-6)
    assert (ex.values[..., 0] > 0).sum() > 100  # most (layer, latent) pairs fire somewhere


def test_browser_recomputes_the_stored_activations_and_renders(micro):
    model, tokenizer, sae, batches = micro
    ex = max_examples(model, tokenizer, sae, batches, n_examples=4, progress=False)
    latent = int(torch.argmax((ex.tokens[..., -1] >= 0).sum(0)))  # one with full example lists
    browser = ExampleBrowser(ex, model, tokenizer, sae)
    examples = browser.examples_for(latent, 2, context=(5, 2))
    assert [(e.value, e.seq, e.pos) for e in examples] == ex.top(latent, 2)
    for e in examples:
        assert len(e.tokens) == len(e.acts) <= 8 and e.focus == min(e.pos, 5)
        assert e.acts[e.focus] == pytest.approx(e.value, rel=1e-5)
        assert max(e.acts) <= examples[0].value + 1e-6
        assert e.tokens[e.focus] == tokenizer.decode([int(ex.input_ids[e.seq, e.pos])])
    page = browser.html(latent)
    assert page.count("<h4") == 3 and "font-weight: bold" in page
    text = browser.markdown([latent, 0])
    assert text.count("## latent") == 2 and "⟦" in text


def test_examples_on_a_subset_of_layers(micro):
    model, tokenizer, sae, batches = micro
    ex = max_examples(model, tokenizer, sae, batches[:1], layers=[1], n_examples=2, progress=False)
    full = max_examples(model, tokenizer, sae, batches[:1], n_examples=2, progress=False)
    assert ex.layers == [1] and torch.equal(ex.tokens[0], full.tokens[1])
    with pytest.raises(ValueError, match=r"layer 0 not analysed: the examples cover layers \[1\]"):
        ex.top(3, 0)


def test_save_load_round_trip(tmp_path, micro):
    model, tokenizer, sae, batches = micro
    ex = max_examples(model, tokenizer, sae, batches, n_examples=3, progress=False)
    ex.save(tmp_path / "ex.safetensors")
    back = MaxExamples.load(tmp_path / "ex.safetensors")
    for name in ("values", "tokens", "input_ids"):
        assert torch.equal(getattr(back, name), getattr(ex, name))
    assert (back.layers, back.n_tokens, back.n_examples) == (ex.layers, ex.n_tokens, 3)
    assert back.top(5, 1) == ex.top(5, 1)


def test_bad_inputs_say_what_is_wrong(micro):
    model, tokenizer, sae, batches = micro
    ex = max_examples(model, tokenizer, sae, batches[:1], n_examples=2, progress=False)
    with pytest.raises(ValueError, match=r"latent 64 out of range: the SAE has 64 latents \(0 … 63\)"):
        ex.top(64, 0)
    with pytest.raises(ValueError, match=r"latent -1 out of range"):
        ExampleBrowser(ex, model, tokenizer, sae).examples_for(-1, 0)
    with pytest.raises(ValueError, match="layer 3 not analysed"):
        ex.top(0, 3)
    with pytest.raises(ValueError, match="n_examples must be a positive int, got 0"):
        MaxExamplesAccumulator(3, 64, 0)
    with pytest.raises(ValueError, match="same sequence length"):
        max_examples(model, tokenizer, sae, [batches[0], batches[1][:, :8]], progress=False)
    with pytest.raises(ValueError, match="no tokens"):
        max_examples(model, tokenizer, sae, [], progress=False)
