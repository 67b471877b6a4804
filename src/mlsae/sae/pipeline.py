"""The one path from a model's residual stream to an SAE's inputs and latents.

token batches -> residual streams [layer, batch, pos, d_model] (special tokens dropped) -> lens ->
SAE inputs [layer, token, d_model] -> top-k latents [layer, token, k]. Training, evaluation, the
statistics and the example browser all take their inputs here, so they cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import NamedTuple

from torch import Tensor

from mlsae.core.progress import bar
from mlsae.models.lens import IDENTITY, Lens, as_lens
from mlsae.models.residuals import residual_batches
from mlsae.sae.config import CrosscoderConfig
from mlsae.sae.model import MLSAE


def sae_layers(sae: MLSAE, model) -> list[int]:
    """The model layers an SAE was trained on (every layer for an MLSAE)."""
    return list(sae.cfg.layers) if sae.cfg.layers is not None else list(range(model.config.num_hidden_layers))


def sae_inputs(resid: Tensor, keep: Tensor, layers: list[int], lens: Lens = IDENTITY) -> Tensor:
    """The SAE's examples from one batch: the selected layers of ``resid`` [layer, batch, pos, d] at the
    kept (non-special) tokens -> [len(layers), token, d] in float32, mapped by ``lens``.

    Always a new tensor: the clean residual stream is never modified.
    """
    return as_lens(lens)(resid[layers][:, keep].float(), layers)


class LatentBatch(NamedTuple):
    """One batch of latents and where its tokens are: token ``t`` of ``values``/``indices`` [layer, token, k]
    is the ``t``-th True entry of ``keep`` [batch, pos] in row-major order."""

    input_ids: Tensor  # [batch, pos]
    keep: Tensor  # [batch, pos]
    values: Tensor  # [layer, token, k]
    indices: Tensor  # [layer, token, k]


def latents(model, tokenizer, sae: MLSAE, batches: Iterable[Tensor], layers: list[int], lens: Lens = IDENTITY,
            progress: bool = False, desc: str = "latents") -> Iterator[LatentBatch]:
    """The SAE's top-k latents at ``layers``, batch by batch, streamed (never all tokens at once)."""
    if isinstance(sae.cfg, CrosscoderConfig):
        raise ValueError("a crosscoder has one code per token, not one per layer: its distribution over layers is its "
                         "decoder-norm distribution (Crosscoder.layer_distribution, "
                         "mlsae.analysis.cross_layer.decoder_norm_distributions); the activation statistics are the "
                         "MLSAE's")
    return _latents(model, tokenizer, sae, batches, layers, lens, progress, desc)


def _latents(model, tokenizer, sae, batches, layers, lens, progress, desc) -> Iterator[LatentBatch]:
    for ids, keep, resid in bar(residual_batches(model, tokenizer, batches), desc=desc, progress=progress):
        values, indices = sae.encode(sae_inputs(resid, keep, layers, lens).flatten(0, 1))
        n = len(layers)
        yield LatentBatch(ids, keep, values.view(n, -1, values.shape[-1]), indices.view(n, -1, indices.shape[-1]))
