"""Tuned-lens transformations of the residual stream, and their exact inverse.

A tuned lens (Belrose et al. 2023, library ``tuned-lens``) holds one affine translator per
layer, ``f(h) = h + A h + b = (I + A) h + b``, trained so that the final norm and unembedding
applied to ``f(h)`` predict the model's own output. The MLSAE variant applies ``f`` to each
layer's residual vector before the SAE and the exact inverse ``(I + A)^-1 (y - b)`` to the
reconstruction, so that downstream losses are measured in the model's own basis.

Layer-index mapping (the one pitfall that silently breaks everything)
--------------------------------------------------------------------
``tuned_lens`` translator ``i`` was trained on ``hidden_states[i]``, the state *entering*
block ``i`` (transformers' convention: ``hidden_states[0]`` is the token embeddings). This
project's layer ``l`` is the *output* of block ``l``, which is ``hidden_states[l + 1]``.
Therefore:

* our layer ``l < L - 1``  ->  translator ``l + 1``;
* our layer ``L - 1`` (the last block's output) is already in the final layer's basis,
  so its map is the identity. (Translator 0, for the embeddings, is never used.)

:class:`ResidualLens` stores the maps already re-indexed to our layers, so callers never
have to think about this again. Getting a lens (pretrained, or trained here and cached) is
:mod:`mlsae.models.lens_training`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn
from tuned_lens import TunedLens

from mlsae.core.paths import load_result, save_result


class ResidualLens(nn.Module):
    """Per-layer affine maps ``y = x M_l^T + b_l`` (``M_l = I + A_l``) with exact inverses.

    ``weight[l]`` is ``M_l`` [d, d] and ``bias[l]`` is ``b_l`` [d] for *our* layer ``l``
    (block outputs; see the module docstring for the mapping from tuned-lens indices).
    The inverse is a full linear solve against an LU factorisation kept in float64; it is
    never a per-dimension rescaling.
    """

    weight: Tensor  # [layer, d, d]
    bias: Tensor  # [layer, d]
    _lu: Tensor  # [layer, d, d] float64; buffers are annotated here, as nn.Module's attribute lookup cannot say
    _pivots: Tensor  # [layer, d]

    def __init__(self, weight: Tensor, bias: Tensor):
        super().__init__()
        if weight.ndim != 3 or weight.shape[1] != weight.shape[2] or bias.shape != weight.shape[:2]:
            raise ValueError(
                f"ResidualLens needs weight [layer, d, d] and bias [layer, d]; got {tuple(weight.shape)} "
                f"and {tuple(bias.shape)}"
            )
        self.register_buffer("weight", weight.detach().clone().float())
        self.register_buffer("bias", bias.detach().clone().float())
        lu, pivots = torch.linalg.lu_factor(weight.detach().double())
        self.register_buffer("_lu", lu, persistent=False)
        self.register_buffer("_pivots", pivots, persistent=False)

    @property
    def n_layers(self) -> int:
        return self.weight.shape[0]

    def save(self, path: Path) -> None:
        """``weight`` and ``bias`` (:func:`mlsae.core.paths.save_result`; no pickle, unlike tuned-lens' params.pt)."""
        save_result(path, {"weight": self.weight, "bias": self.bias}, {"format": "mlsae.ResidualLens"})

    @classmethod
    def load(cls, path: Path) -> ResidualLens:
        tensors, _ = load_result(path)
        return cls(tensors["weight"], tensors["bias"])

    @classmethod
    def from_tuned_lens(cls, lens: TunedLens) -> ResidualLens:
        """Re-index a ``TunedLens`` with one translator per block to our block-output layers."""
        n_layers = len(lens)
        d = lens[0].weight.shape[0]
        eye = torch.eye(d)
        weight = torch.empty(n_layers, d, d)
        bias = torch.zeros(n_layers, d)
        with torch.no_grad():
            for layer in range(n_layers - 1):
                translator = lens[layer + 1]
                weight[layer] = eye + translator.weight.float()
                if translator.bias is not None:
                    bias[layer] = translator.bias.float()
            weight[n_layers - 1] = eye
        return cls(weight, bias)

    def _check(self, x: Tensor, layers: list[int] | None) -> list[int]:
        layers = list(range(self.n_layers)) if layers is None else list(layers)
        if x.shape[0] != len(layers):
            raise ValueError(f"expected x of shape [layer={len(layers)}, ..., d]; got {tuple(x.shape)}")
        if x.shape[-1] != self.weight.shape[-1]:
            raise ValueError(f"lens d_model is {self.weight.shape[-1]}, activations have {x.shape[-1]}")
        bad = [l for l in layers if not 0 <= l < self.n_layers]
        if bad:
            raise ValueError(f"layers {bad} out of range for a lens with {self.n_layers} layers")
        return layers

    def forward(self, x: Tensor, layers: list[int] | None = None) -> Tensor:
        """``x`` [layer, ..., d] in the model's basis -> [layer, ..., d] in the final layer's basis.

        Returns a new tensor; the clean activations are never modified in place.
        """
        layers = self._check(x, layers)
        out = torch.empty_like(x)
        for i, layer in enumerate(layers):
            w = self.weight[layer].to(x.dtype)
            out[i] = x[i] @ w.T + self.bias[layer].to(x.dtype)
        return out

    def inverse(self, y: Tensor, layers: list[int] | None = None) -> Tensor:
        """Exact inverse of :meth:`forward`: solves ``M_l h = y - b_l`` for every vector."""
        layers = self._check(y, layers)
        out = torch.empty_like(y)
        for i, layer in enumerate(layers):
            rhs = (y[i].double() - self.bias[layer].double()).reshape(-1, y.shape[-1]).T  # [d, n]
            h = torch.linalg.lu_solve(self._lu[layer], self._pivots[layer], rhs)
            out[i] = h.T.reshape(y[i].shape).to(y.dtype)
        return out


class IdentityLens(nn.Module):
    """No lens: the SAE works in the model's own basis. A value like :class:`ResidualLens`, so that
    callers apply ``lens(x, layers)`` and ``lens.inverse(y, layers)`` without branching on ``None``."""

    def forward(self, x: Tensor, layers: list[int] | None = None) -> Tensor:
        return x

    def inverse(self, y: Tensor, layers: list[int] | None = None) -> Tensor:
        return y


IDENTITY = IdentityLens()
Lens = ResidualLens | IdentityLens


def as_lens(lens: Lens | None) -> Lens:
    """``None`` (what callers from before the identity lens pass) -> :data:`IDENTITY`."""
    return IDENTITY if lens is None else lens
