"""Residual streams (block outputs, no final norm) and splicing a stream back into the model."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from conftest import make_tiny_neox, make_tiny_tokenizer
from mlsae.models.residuals import (
    final_norm,
    logits_from_layer,
    residual_batches,
    residual_streams,
    special_token_mask,
    transformer_blocks,
)

VOCAB = 61


def _gpt2():
    torch.manual_seed(1)
    return GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=3, n_head=4, n_positions=64)).eval()


def _llama():
    torch.manual_seed(2)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


ARCHS = {
    "neox-parallel": lambda: make_tiny_neox(VOCAB, use_parallel_residual=True),
    "neox-sequential": lambda: make_tiny_neox(VOCAB, seed=3, use_parallel_residual=False),
    "gpt2": _gpt2,
    "llama": _llama,
}


@pytest.fixture(scope="module", params=list(ARCHS))
def model(request):
    return ARCHS[request.param]()


@pytest.fixture(scope="module")
def ids():
    g = torch.Generator().manual_seed(0)
    return torch.randint(2, VOCAB, (3, 11), generator=g)


def _hidden_states(model, ids, mask=None):
    with torch.no_grad():
        return model(ids, attention_mask=mask, output_hidden_states=True).hidden_states


# ---- residual_streams ------------------------------------------------------------------------------


def test_block_outputs_match_hidden_states_and_final_norm_is_not_applied(model, ids):
    resid = residual_streams(model, ids)
    n, d = model.config.num_hidden_layers, model.config.hidden_size
    assert resid.shape == (n, *ids.shape, d) and not resid.requires_grad
    hs = _hidden_states(model, ids)
    assert len(hs) == n + 1
    for l in range(n - 1):
        torch.testing.assert_close(resid[l], hs[l + 1], atol=1e-5, rtol=1e-5)
    # hidden_states[L] is the normed last block output; our last layer is the raw one
    with torch.no_grad():
        torch.testing.assert_close(final_norm(model)(resid[-1]), hs[n], atol=1e-5, rtol=1e-5)
    assert (resid[-1] - hs[n]).abs().max() > 1e-2


def test_only_the_base_model_runs_and_it_stops_after_the_last_needed_block(model, ids):
    calls = []
    head = model.get_output_embeddings()
    handles = [m.register_forward_hook(lambda *a, _n=name: calls.append(_n))
               for name, m in [("norm", final_norm(model)), ("head", head),
                               *[(f"block{i}", b) for i, b in enumerate(transformer_blocks(model))]]]
    try:
        residual_streams(model, ids)
        assert calls == ["block0", "block1", "block2"]  # no final norm, no unembedding
        calls.clear()
        sub = residual_streams(model, ids, layers=[1, 0])
        assert calls == ["block0", "block1"]  # stops after block 1
    finally:
        for h in handles:
            h.remove()
    full = residual_streams(model, ids)
    torch.testing.assert_close(sub, full[[1, 0]])
    with pytest.raises(ValueError, match="out of range"):
        residual_streams(model, ids, layers=[3])


def test_padding_with_attention_mask(model):
    g = torch.Generator().manual_seed(1)
    a, b = torch.randint(2, VOCAB, (9,), generator=g), torch.randint(2, VOCAB, (5,), generator=g)
    ids = torch.zeros(2, 9, dtype=torch.long)
    mask = torch.zeros(2, 9, dtype=torch.long)
    ids[0], mask[0] = a, 1
    ids[1, :5], mask[1, :5] = b, 1  # right padding with token 0
    resid = residual_streams(model, ids, mask)
    hs = _hidden_states(model, ids, mask)
    for l in range(model.config.num_hidden_layers - 1):
        torch.testing.assert_close(resid[l], hs[l + 1], atol=1e-5, rtol=1e-5)
    # the real tokens of a padded row see exactly what they would see alone
    alone = residual_streams(model, b[None])
    torch.testing.assert_close(resid[:, 1, :5], alone[:, 0], atol=1e-5, rtol=1e-5)


def test_gradients_when_asked(model, ids):
    emb = model.get_input_embeddings().weight
    resid = residual_streams(model, ids, no_grad=False)
    assert resid.requires_grad
    resid[-1].sum().backward()
    assert emb.grad is not None and emb.grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)
    torch.testing.assert_close(resid.detach(), residual_streams(model, ids))


def test_input_validation_and_unknown_architecture(model, ids):
    with pytest.raises(ValueError, match=r"\[batch, pos\]"):
        residual_streams(model, ids[0])
    with pytest.raises(ValueError, match="attention_mask"):
        residual_streams(model, ids, torch.ones(1, 2))
    with pytest.raises(TypeError, match="transformer blocks"):
        transformer_blocks(torch.nn.Linear(2, 2))


def test_transformer_blocks_per_architecture():
    m = _gpt2()
    assert transformer_blocks(m) is m.transformer.h and transformer_blocks(m.transformer) is m.transformer.h
    m = _llama()
    assert transformer_blocks(m) is m.model.layers
    m = make_tiny_neox(VOCAB)
    assert transformer_blocks(m) is m.gpt_neox.layers and final_norm(m) is m.gpt_neox.final_layer_norm


# ---- special tokens ----------------------------------------------------------------------------------


def test_special_token_mask_excludes_bos_eos_pad_unk():
    tok = make_tiny_tokenizer()
    tok.add_special_tokens({"pad_token": "<pad>"})
    words = tok("the cat sat", add_special_tokens=False).input_ids
    ids = torch.tensor([[tok.bos_token_id, *words, tok.eos_token_id, tok.pad_token_id, tok.unk_token_id]])
    keep = special_token_mask(ids, tok)
    assert keep.dtype == torch.bool and keep.shape == ids.shape
    assert keep.tolist() == [[False, True, True, True, False, False, False]]


def test_residual_batches_keep_mask_and_inputs(ids):
    model = make_tiny_neox(VOCAB)
    tok = make_tiny_tokenizer()
    batch = ids.clone()
    batch[0, 0] = tok.bos_token_id
    mask = torch.ones_like(batch)
    mask[1, -3:] = 0
    out = list(residual_batches(model, tok, [batch, {"input_ids": batch, "attention_mask": mask}, batch[0]]))
    assert len(out) == 3
    (i0, k0, r0), (_, k1, r1), (i2, k2, r2) = out
    assert torch.equal(i0, batch) and r0.shape == (3, *batch.shape, 32)
    assert not k0[0, 0] and k0.sum() == batch.numel() - 1
    assert k1.sum() == batch.numel() - 1 - 3 and not k1[1, -3:].any()
    assert i2.shape == (1, batch.shape[1]) and r2.shape == (3, 1, batch.shape[1], 32)
    torch.testing.assert_close(r2[:, 0], r0[:, 0])


# ---- logits_from_layer --------------------------------------------------------------------------------


def test_splicing_the_unchanged_stream_reproduces_the_forward_pass(model, ids):
    resid = residual_streams(model, ids)
    with torch.no_grad():
        clean = model(ids).logits
    blocks = list(transformer_blocks(model))
    for layer in range(model.config.num_hidden_layers):
        torch.testing.assert_close(logits_from_layer(model, layer, resid[layer], ids), clean, atol=1e-5, rtol=1e-5)
    assert list(transformer_blocks(model)) == blocks  # restored


def test_splicing_with_padding_mask(model):
    ids = torch.randint(2, VOCAB, (2, 8), generator=torch.Generator().manual_seed(5))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    resid = residual_streams(model, ids, mask)
    with torch.no_grad():
        clean = model(ids, attention_mask=mask).logits
    for layer in range(model.config.num_hidden_layers):
        got = logits_from_layer(model, layer, resid[layer], ids, mask)
        torch.testing.assert_close(got[mask.bool()], clean[mask.bool()], atol=1e-5, rtol=1e-5)


def test_earlier_blocks_are_not_computed(model, ids):
    resid = residual_streams(model, ids)
    calls = []
    blocks = transformer_blocks(model)
    handles = [b.register_forward_hook(lambda *a, _i=i: calls.append(_i)) for i, b in enumerate(blocks)]
    try:
        logits_from_layer(model, 1, resid[1], ids)
    finally:
        for h in handles:
            h.remove()
    assert calls == [2]


def test_a_perturbation_changes_logits_from_its_position_on(model, ids):
    resid = residual_streams(model, ids)
    clean = logits_from_layer(model, 0, resid[0], ids)
    perturbed = resid[0].clone()
    perturbed[:, 4] += 3.0 * torch.randn(perturbed.shape[-1], generator=torch.Generator().manual_seed(0))
    out = logits_from_layer(model, 0, perturbed, ids)
    torch.testing.assert_close(out[:, :4], clean[:, :4], atol=1e-5, rtol=1e-5)  # causal: earlier positions untouched
    assert (out[:, 4:] - clean[:, 4:]).abs().amax(dim=-1).min() > 1e-4  # every later position changes
    assert torch.equal(resid[0], residual_streams(model, ids)[0])  # the clean stream is not modified


def test_bad_layer_or_shape_errors_and_blocks_restored_after_failure(model, ids):
    n = model.config.num_hidden_layers
    resid = residual_streams(model, ids)
    for bad in (-1, n, 1.0, True, "0"):
        with pytest.raises(ValueError, match="out of range"):
            logits_from_layer(model, bad, resid[0], ids)
    with pytest.raises(ValueError, match="d_model"):
        logits_from_layer(model, 0, resid[0][:, :-1], ids)
    with pytest.raises(ValueError, match="d_model"):
        logits_from_layer(model, 0, resid, ids)
    blocks = transformer_blocks(model)
    before = list(blocks)

    def boom(*a):
        raise RuntimeError("boom")

    h = blocks[n - 1].register_forward_hook(boom)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            logits_from_layer(model, 1, resid[1], ids)
    finally:
        h.remove()
    assert list(blocks) == before
