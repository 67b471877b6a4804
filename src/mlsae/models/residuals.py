"""Residual streams: read them out of a transformer, and splice modified ones back in.

The residual stream at layer ``l`` is the *output* of transformer block ``l`` (``l = 0 … L-1``):
the token embeddings are not a layer and the model's final norm is not applied (PAPER.md §1).
In ``transformers``' terms block ``l``'s output is ``hidden_states[l + 1]`` for ``l < L - 1``;
``hidden_states[L]`` is the *normed* output of the last block.

Data flows text -> tokens -> residual streams; this module depends on ``torch`` (and duck-typed
``transformers`` models and tokenizers) only, never on the SAE, lens or training code.

Supported architectures: GPT-NeoX / Pythia (``gpt_neox.layers``), GPT-2 (``transformer.h``) and the
Llama family (``model.layers``: Llama, Mistral, Qwen2, ...), i.e. any model whose base model
holds its blocks in a ``layers`` or ``h`` ``ModuleList`` and whose blocks return the hidden state
(a tensor, or a tuple whose first element is the hidden state).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import nullcontext
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "final_norm",
    "logits_from_layer",
    "residual_batches",
    "residual_streams",
    "special_token_mask",
    "transformer_blocks",
]

_BLOCK_ATTRS = ("layers", "h")  # GPT-NeoX / Llama family, GPT-2
_NORM_ATTRS = ("final_layer_norm", "ln_f", "norm")  # GPT-NeoX, GPT-2, Llama family


def _base(model: nn.Module) -> nn.Module:
    base = getattr(model, "base_model", None)
    return base if isinstance(base, nn.Module) else model


def transformer_blocks(model: nn.Module) -> nn.ModuleList:
    """The ``ModuleList`` of transformer blocks of ``model`` (a ``*ForCausalLM`` or its base model)."""
    base = _base(model)
    for attr in _BLOCK_ATTRS:
        blocks = getattr(base, attr, None)
        if isinstance(blocks, nn.ModuleList) and len(blocks) > 0:
            return blocks
    raise TypeError(
        f"cannot find the transformer blocks of {type(model).__name__} (base model {type(base).__name__}): "
        f"supported are GPT-NeoX/Pythia (gpt_neox.layers), GPT-2 (transformer.h) and Llama-family models "
        f"(model.layers), i.e. a base model with a non-empty ModuleList named one of {_BLOCK_ATTRS}"
    )


def final_norm(model: nn.Module) -> nn.Module:
    """The norm the model applies after its last block (not part of the residual stream)."""
    base = _base(model)
    for attr in _NORM_ATTRS:
        norm = getattr(base, attr, None)
        if isinstance(norm, nn.Module):
            return norm
    raise TypeError(f"cannot find the final norm of {type(model).__name__}; looked for {_NORM_ATTRS} on {type(base).__name__}")


def _d_model(model: nn.Module) -> int:
    embeddings: Any = getattr(model, "get_input_embeddings", None)  # a transformers model has it
    emb = embeddings() if embeddings is not None else None
    if isinstance(emb, nn.Embedding):
        return emb.embedding_dim
    config: Any = model.config  # a transformers PretrainedConfig
    return int(config.hidden_size)


def _check_ids(input_ids: Tensor, attention_mask: Tensor | None) -> None:
    if not isinstance(input_ids, Tensor) or input_ids.ndim != 2:
        shape = tuple(input_ids.shape) if isinstance(input_ids, Tensor) else type(input_ids).__name__
        raise ValueError(f"input_ids must be a [batch, pos] tensor, got {shape}")
    if input_ids.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"input_ids must be an integer tensor, got {input_ids.dtype}")
    if attention_mask is not None and tuple(attention_mask.shape) != tuple(input_ids.shape):
        raise ValueError(f"attention_mask shape {tuple(attention_mask.shape)} != input_ids shape {tuple(input_ids.shape)}")


def _hidden(output) -> Tensor:
    # transformers v5 blocks return the hidden state; older versions returned (hidden, ...) tuples
    return output[0] if isinstance(output, (tuple, list)) else output


class _StopForward(Exception):
    """Raised from the last needed block's hook so the final norm and LM head never run."""


def residual_streams(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    *,
    layers: Sequence[int] | None = None,
    no_grad: bool = True,
) -> Tensor:
    """The output of every transformer block: ``[layer, batch, pos, d_model]``.

    Only the base model runs, and it stops right after the last block that is needed, so the
    final norm and the unembedding are never computed. ``layers`` (default: all) selects and
    orders the layers returned (index ``i`` of the result is ``layers[i]``); the forward pass
    then stops after block ``max(layers)``. Runs under ``torch.no_grad`` unless ``no_grad=False``.
    """
    return _residual_streams(model, input_ids, attention_mask, layers=layers, no_grad=no_grad, stop_early=True)


def check_layers(layers: Sequence[int] | None, n_layers: int) -> list[int]:
    """``layers`` as a list of valid block indices (``None``: all of them), or a clear ValueError."""
    if layers is None:
        return list(range(n_layers))
    layers = [layers] if isinstance(layers, int) else list(layers)
    if not layers:
        raise ValueError("layers is empty")
    bad = [l for l in layers if isinstance(l, bool) or not isinstance(l, int) or not 0 <= l < n_layers]
    if bad:
        raise ValueError(f"layers {bad} out of range: the model has {n_layers} layers (0 … {n_layers - 1})")
    return check_unique_layers(layers)


def check_unique_layers(layers: Sequence[int]) -> list[int]:
    """``layers`` as a list, or a clear ValueError if one layer is named twice (it would train on it twice)."""
    layers = list(layers)
    if len(set(layers)) != len(layers):
        raise ValueError(f"layers {layers} name a layer more than once; list each layer once, e.g. "
                         f"{sorted(set(layers))}")
    return layers


def max_positions(model: nn.Module) -> int | None:
    """The longest sequence the model's position table covers (``None`` if its config does not say)."""
    cfg = model.config
    for key in ("n_positions", "max_position_embeddings"):
        value = getattr(cfg, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_seq_len(seq_len: int, limit: int | None, name: str) -> None:
    """A clear error, before any work, for sequences longer than the model's context of ``limit`` positions
    (:func:`max_positions` of a loaded model, or the registry's ``model_context``; None: unknown)."""
    if limit is not None and seq_len > limit:
        raise ValueError(f"seq_len {seq_len} is longer than {name}'s context of {limit} positions; "
                         f"use seq_len {limit} or less (--seq-len {limit})")


def _residual_streams(model, input_ids, attention_mask=None, *, layers=None, no_grad=True, stop_early=True) -> Tensor:
    _check_ids(input_ids, attention_mask)
    blocks = transformer_blocks(model)
    sel = check_layers(layers, len(blocks))
    last = max(sel)
    slots: dict[int, list[int]] = {}
    for i, l in enumerate(sel):
        slots.setdefault(l, []).append(i)
    out: list = [None]  # preallocated [layer, batch, pos, d] (no_grad) or a list of tensors
    grads = not no_grad

    def make_hook(l: int):
        def hook(module, args, output):
            h = _hidden(output)
            if grads:
                for i in slots[l]:
                    out[i] = h
            else:
                if out[0] is None:
                    out[0] = h.new_empty((len(sel), *h.shape))
                for i in slots[l]:
                    out[0][i].copy_(h)
            if stop_early and l == last:
                raise _StopForward

        return hook

    if grads:
        out = [None] * len(sel)
    handles = [blocks[l].register_forward_hook(make_hook(l)) for l in slots]
    try:
        with torch.no_grad() if no_grad else nullcontext():
            _base(model)(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    except _StopForward:
        pass
    finally:
        for h in handles:
            h.remove()
    if grads:
        if any(t is None for t in out):
            raise RuntimeError("the transformer blocks' hooks did not fire; is this a supported architecture?")
        return torch.stack(out)
    if out[0] is None:
        raise RuntimeError("the transformer blocks' hooks did not fire; is this a supported architecture?")
    return out[0]


def special_token_mask(input_ids: Tensor, tokenizer) -> Tensor:
    """Bool ``[batch, pos]``: True where the token is NOT special (BOS/EOS/PAD/UNK or any other
    entry of ``tokenizer.all_special_ids``). Special tokens carry no information and are excluded."""
    ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    for attr in ("bos_token_id", "eos_token_id", "pad_token_id"):
        v = getattr(tokenizer, attr, None)
        if isinstance(v, int):
            ids.add(v)
    if not ids:
        return torch.ones_like(input_ids, dtype=torch.bool)
    special = torch.tensor(sorted(ids), dtype=input_ids.dtype, device=input_ids.device)
    return ~torch.isin(input_ids, special)


def _model_device(model: nn.Module) -> torch.device:
    dev = getattr(model, "device", None)
    if isinstance(dev, torch.device):
        return dev
    return next(model.parameters()).device


def residual_batches(
    model: nn.Module, tokenizer, batches: Iterable[Tensor | Mapping[str, Tensor]], *, layers: Sequence[int] | None = None
) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """For each batch of input ids yield ``(input_ids, keep, resid)``, all on the model's device.

    ``batches`` holds ``[batch, pos]`` id tensors (a 1-D tensor is one sequence), or mappings with
    ``input_ids`` and optionally ``attention_mask``. ``keep`` [batch, pos] is True on tokens that are
    neither special nor padding (``attention_mask == 0``); ``resid`` is :func:`residual_streams`.
    """
    device = _model_device(model)
    for batch in batches:
        mask = None
        if isinstance(batch, Mapping):
            ids, mask = batch["input_ids"], batch.get("attention_mask")
        else:
            ids = batch
        ids = torch.as_tensor(ids).to(device)
        if ids.ndim == 1:
            ids = ids[None]
            mask = mask[None] if mask is not None and mask.ndim == 1 else mask
        if mask is not None:
            mask = torch.as_tensor(mask).to(device)
        keep = special_token_mask(ids, tokenizer)
        if mask is not None:
            keep &= mask.bool()
        yield ids, keep, residual_streams(model, ids, mask, layers=layers)


# ---- splicing ----------------------------------------------------------------------------------


class _Skip(nn.Module):
    """Stands in for a block before the spliced layer: passes the hidden state through unchanged."""

    def forward(self, *args, **kwargs):
        return args[0] if args else kwargs["hidden_states"]


class _Emit(nn.Module):
    """Stands in for the spliced block: returns the given residual stream."""

    def __init__(self, resid: Tensor):
        super().__init__()
        self.resid = resid

    def forward(self, *args, **kwargs):
        h = args[0] if args else kwargs["hidden_states"]
        return self.resid.to(device=h.device, dtype=h.dtype)


def logits_from_layer(
    model: nn.Module,
    layer: int,
    resid: Tensor,
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    *,
    no_grad: bool = True,
) -> Tensor:
    """Logits ``[batch, pos, vocab]`` of the model with block ``layer``'s output replaced by ``resid``.

    ``resid`` is ``[batch, pos, d_model]`` in the model's own basis. Blocks ``0 … layer`` are not
    computed: while this runs they are swapped for a pass-through and for a module returning
    ``resid`` (restored afterwards, also on error), so only blocks ``layer+1 …``, the final norm
    and the unembedding run. ``input_ids`` and ``attention_mask`` are still needed for the
    attention mask and positions. Not thread-safe on the same model object.
    """
    _check_ids(input_ids, attention_mask)
    blocks = transformer_blocks(model)
    n = len(blocks)
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < n:
        raise ValueError(f"layer {layer!r} out of range: the model has {n} layers (0 … {n - 1})")
    d = _d_model(model)
    expected = (*input_ids.shape, d)
    if not isinstance(resid, Tensor) or tuple(resid.shape) != expected:
        got = tuple(resid.shape) if isinstance(resid, Tensor) else type(resid).__name__
        raise ValueError(f"resid must be [batch, pos, d_model] = {expected} to match input_ids, got {got}")
    originals = [blocks[i] for i in range(layer + 1)]
    try:
        for i in range(layer):
            blocks[i] = _Skip()
        blocks[layer] = _Emit(resid)
        with torch.no_grad() if no_grad else nullcontext():
            out = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    finally:
        for i, block in enumerate(originals):
            blocks[i] = block
    return out.logits
