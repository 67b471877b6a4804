"""Distributions of MLSAE latents over layers, and residual-stream geometry.

Notation (PAPER.md §3): ``a[l, t, j]`` is the post-ReLU activation of latent ``j`` at layer
``l`` for token ``t``; layers are numbered ``0 .. L-1``.

* Aggregated over tokens: ``counts[l, j]`` = tokens on which ``j`` fires at ``l``,
  ``totals[l, j] = sum_t a[l, t, j]``, ``p(l | j) = totals[l, j] / sum_l totals[l, j]``,
  with mean ``E[L | j]`` and variance ``Var(L | j)`` over ``l`` under ``p(l | j)``.
* For one token: ``p(l | t, j) = a[l, t, j] / sum_l a[l, t, j]`` and ``Var(L | t, j)``,
  defined for the pairs ``(t, j)`` where ``j`` fires at one layer or more for ``t``.
* Headline: ``E_{t,j}[Var(L | t, j)] / E_j[Var(L | j)]``. The numerator averages over the
  pairs (t, j) with ``sum_l a[l, t, j] > 0`` (pairs that never fire are excluded, not counted as
  zero variance); the denominator averages over latents that fire at least once in the data
  (dead latents excluded). The activation-weighted numerator (each pair weighted by
  ``sum_l a[l, t, j]``) is reported too.

Everything streams from the SAE's sparse top-k output ``[layer, token, k]``: the only dense
arrays are ``[layer, n_latents]``; no ``[layer, token, n_latents]`` tensor is ever built.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import torch
from torch import Tensor
from tqdm.auto import tqdm

from mlsae.activations import check_layers, residual_batches
from mlsae.lens import ResidualLens, sae_inputs
from mlsae.sae import MLSAE


@dataclass
class LayerDistributions:
    """Sufficient statistics of latent activity over layers; everything else is derived."""

    counts: Tensor  # [layer, latent] float64: number of tokens on which the latent fires
    totals: Tensor  # [layer, latent] float64: summed activation
    token_var_sum: float = 0.0  # sum over firing (t, j) pairs of Var(L | t, j)
    token_var_weighted_sum: float = 0.0  # the same, each pair weighted by sum_l a[l, t, j]
    token_weight_sum: float = 0.0
    token_pairs: int = 0
    tokens: int = 0
    single_layer_pairs: int = 0  # pairs (t, j) active at exactly one layer
    extra: dict = field(default_factory=dict)

    @property
    def n_layers(self) -> int:
        return self.counts.shape[0]

    @property
    def alive(self) -> Tensor:
        """[latent] bool: fired at least once."""
        return self.totals.sum(0) > 0

    @property
    def p_layer(self) -> Tensor:
        """``p(l | j)`` [layer, latent]; columns of latents that never fire are zero."""
        mass = self.totals.sum(0, keepdim=True)
        return torch.where(mass > 0, self.totals / mass.clamp_min(1e-30), torch.zeros_like(self.totals))

    @property
    def mean_layer(self) -> Tensor:
        """``E[L | j]`` [latent] (NaN for dead latents)."""
        l = torch.arange(self.n_layers, dtype=torch.float64)[:, None]
        m = (self.p_layer * l).sum(0)
        return torch.where(self.alive, m, torch.full_like(m, float("nan")))

    @property
    def var_layer(self) -> Tensor:
        """``Var(L | j)`` [latent] in layers² (NaN for dead latents)."""
        l = torch.arange(self.n_layers, dtype=torch.float64)[:, None]
        p = self.p_layer
        v = (p * l**2).sum(0) - (p * l).sum(0) ** 2
        return torch.where(self.alive, v.clamp_min(0), torch.full_like(v, float("nan")))

    @property
    def std_layer(self) -> Tensor:
        return self.var_layer.sqrt()

    @property
    def entropy(self) -> Tensor:
        """Entropy of ``p(l | j)`` in nats [latent] (NaN for dead latents)."""
        p = self.p_layer
        h = -(p * torch.log(p.clamp_min(1e-30))).sum(0)
        return torch.where(self.alive, h, torch.full_like(h, float("nan")))

    @property
    def n_active_layers(self) -> Tensor:
        """Number of layers at which each latent fires on at least one token [latent]."""
        return (self.counts > 0).sum(0)

    def active_layers(self, min_share: float) -> Tensor:
        """Number of layers holding at least ``min_share`` of the latent's firings [latent].

        Over many tokens nearly every alive latent fires at every layer at least once, so
        :attr:`n_active_layers` saturates; a share threshold (e.g. 0.05) counts the layers that matter.
        """
        share = self.counts / self.counts.sum(0, keepdim=True).clamp_min(1)
        return ((share >= min_share) & (self.counts > 0)).sum(0)

    @property
    def distance_to_integer(self) -> Tensor:
        """``|E[L | j] - round(E[L | j])|`` [latent]: 0 for a latent centred on one layer, 0.5 between two."""
        m = self.mean_layer
        return (m - m.round()).abs()

    def summary(self) -> dict:
        alive = self.alive
        agg = float(self.var_layer[alive].mean()) if alive.any() else float("nan")
        tok = self.token_var_sum / self.token_pairs if self.token_pairs else float("nan")
        tok_w = self.token_var_weighted_sum / self.token_weight_sum if self.token_weight_sum else float("nan")
        std = float(self.std_layer[alive].mean()) if alive.any() else float("nan")
        return {
            "n_layers": self.n_layers,
            "n_latents": self.counts.shape[1],
            "tokens": self.tokens,
            "alive_latents": int(alive.sum()),
            "mean_std_layer": std,
            "mean_std_layer_over_n_layers": std / self.n_layers,
            "aggregate_var": agg,  # E_j[Var(L | j)] over alive latents
            "token_var": tok,  # E_{t,j}[Var(L | t, j)] over firing pairs
            "token_var_weighted": tok_w,
            "variance_ratio": agg / tok if tok > 0 else float("inf"),  # how many times larger
            "token_pairs": self.token_pairs,
            "single_layer_pair_fraction": self.single_layer_pairs / self.token_pairs if self.token_pairs else float("nan"),
            "mean_active_layers": float(self.n_active_layers[alive].double().mean()) if alive.any() else float("nan"),
        }

    def save(self, path: Path) -> None:
        """counts and totals as safetensors, the scalar sums in the metadata."""
        import json

        from safetensors.torch import save

        from mlsae.paths import atomic_write_bytes

        meta = {k: json.dumps(getattr(self, k)) for k in (
            "token_var_sum", "token_var_weighted_sum", "token_weight_sum", "token_pairs", "tokens", "single_layer_pairs", "extra")}
        atomic_write_bytes(Path(path), save({"counts": self.counts.contiguous(), "totals": self.totals.contiguous()}, metadata=meta))

    @classmethod
    def load(cls, path: Path) -> "LayerDistributions":
        import json

        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = {k: json.loads(v) for k, v in f.metadata().items()}
            return cls(counts=f.get_tensor("counts"), totals=f.get_tensor("totals"), **meta)


class LayerDistributionAccumulator:
    """Streams sparse top-k activations into :class:`LayerDistributions`."""

    def __init__(self, n_layers: int, n_latents: int):
        self.n_latents = n_latents
        self.stats = LayerDistributions(
            counts=torch.zeros(n_layers, n_latents, dtype=torch.float64),
            totals=torch.zeros(n_layers, n_latents, dtype=torch.float64),
        )

    def update(self, values: Tensor, indices: Tensor) -> None:
        """``values``, ``indices``: [layer, token, k] from the SAE's top-k encoder."""
        n_layers, n_tokens, k = values.shape
        s = self.stats
        values = values.detach().double().cpu()
        indices = indices.detach().cpu().long()
        fired = values > 0
        layer_of = torch.arange(n_layers).view(-1, 1, 1).expand_as(indices)
        flat = (layer_of * self.n_latents + indices)[fired]
        s.counts.view(-1).index_add_(0, flat, torch.ones_like(values[fired]))
        s.totals.view(-1).index_add_(0, flat, values[fired])
        s.tokens += n_tokens

        # Per-token distributions over layers: group (t, j) pairs, accumulate a, a*l, a*l^2.
        token_of = torch.arange(n_tokens).view(1, -1, 1).expand_as(indices)
        key = (token_of * self.n_latents + indices)[fired]
        a, l = values[fired], layer_of[fired].double()
        uniq, inv = torch.unique(key, return_inverse=True)
        s0 = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, inv, a)
        s1 = torch.zeros_like(s0).index_add_(0, inv, a * l)
        s2 = torch.zeros_like(s0).index_add_(0, inv, a * l * l)
        n_at = torch.zeros_like(s0).index_add_(0, inv, torch.ones_like(a))
        var = (s2 / s0 - (s1 / s0) ** 2).clamp_min(0)
        s.token_var_sum += float(var.sum())
        s.token_var_weighted_sum += float((var * s0).sum())
        s.token_weight_sum += float(s0.sum())
        s.token_pairs += len(uniq)
        s.single_layer_pairs += int((n_at == 1).sum())


@torch.no_grad()
def layer_distributions(
    model, tokenizer, sae: MLSAE, batches: Iterable[Tensor], *, lens: ResidualLens | None = None,
    layers: list[int] | None = None, progress: bool = True
) -> LayerDistributions:
    """Distributions over layers of every latent, streamed over ``batches`` of input ids.

    ``layers``: where to apply the SAE (default: the layers it was trained on). Passing every layer
    for a single-layer SAE gives the paper's multi-layer figures for the baselines.
    """
    layers = _sae_layers(sae, model) if layers is None else check_layers(layers, model.config.num_hidden_layers)
    acc = LayerDistributionAccumulator(len(layers), sae.cfg.n_latents)
    for values, indices in _latents(model, tokenizer, sae, batches, layers, lens, progress):
        acc.update(values, indices)
    return acc.stats


def _latents(model, tokenizer, sae, batches, layers, lens, progress=False):
    """Yield the SAE's top-k ``(values, indices)``, each [layer, token, k], batch by batch."""
    for _, _, values, indices in _latents_at(model, tokenizer, sae, batches, layers, lens, progress):
        yield values, indices


def _latents_at(model, tokenizer, sae, batches, layers, lens, progress=False, desc="layer distributions"):
    """:func:`_latents` with where the tokens are: yields ``(input_ids, keep, values, indices)``; token ``t``
    of ``values`` [layer, token, k] is the ``t``-th True entry of ``keep`` [batch, pos] in row-major order."""
    for ids, keep, resid in tqdm(residual_batches(model, tokenizer, batches), desc=desc, disable=not progress):
        values, indices = sae.encode(sae_inputs(resid, keep, layers, lens).flatten(0, 1))
        yield ids, keep, values.view(len(layers), -1, values.shape[-1]), indices.view(len(layers), -1, indices.shape[-1])


@torch.no_grad()
def prompt_distribution(
    model, tokenizer, sae: MLSAE, prompt: str, *, lens: ResidualLens | None = None, min_activation: float = 1e-3
) -> tuple[LayerDistributions, Tensor]:
    """Distributions over layers for one prompt, activations summed over its tokens.

    Returns the statistics and the indices of the latents whose maximum activation on the
    prompt is at least ``min_activation`` (PAPER.md §4 item 2 drops the others).
    """
    ids = tokenizer(prompt, return_tensors="pt").input_ids.to(next(model.parameters()).device)
    layers = _sae_layers(sae, model)
    acc = LayerDistributionAccumulator(len(layers), sae.cfg.n_latents)
    acc_max = torch.zeros(sae.cfg.n_latents, dtype=torch.float64)
    for values, indices in _latents(model, tokenizer, sae, [ids], layers, lens):  # one pass: stats and maxima
        acc.update(values, indices)
        acc_max.scatter_reduce_(0, indices.flatten().cpu(), values.flatten().double().cpu(), reduce="amax")
    return acc.stats, torch.nonzero(acc_max >= min_activation).flatten()


@dataclass
class ResidualGeometry:
    cos_mean: Tensor  # [layer - 1]: mean cosine similarity of centred vectors at l and l+1
    cos_sem: Tensor  # [layer - 1]: standard error of that mean over tokens
    norm_mean: Tensor  # [layer]: mean L2 norm of the (uncentred) residual vector
    tokens: int


@torch.no_grad()
def residual_geometry(
    model, tokenizer, make_batches: Callable[[], Iterable[Tensor]], *, lens: ResidualLens | None = None, progress: bool = True
) -> ResidualGeometry:
    """Adjacent-layer cosine similarity of residual vectors centred by each layer's data-set mean.

    Two passes over ``make_batches()`` (a fresh iterator each time): the first computes each
    layer's mean vector, the second the per-token cosine similarities.
    """
    n_layers = model.config.num_hidden_layers
    layers = list(range(n_layers))
    total, n, norm_sum = None, 0, torch.zeros(n_layers, dtype=torch.float64)

    def vectors(pass_name):
        for _, keep, resid in tqdm(residual_batches(model, tokenizer, make_batches()), desc=pass_name, disable=not progress):
            x = resid[:, keep].float()
            yield lens(x, layers) if lens is not None else x

    for x in vectors("residual means"):
        total = x.double().sum(1) if total is None else total + x.double().sum(1)
        norm_sum += x.norm(dim=-1).double().sum(1)
        n += x.shape[1]
    if n == 0:
        raise ValueError("residual_geometry() got no tokens: the data set is empty")
    mean = (total / n).float()  # [layer, d]
    s1 = torch.zeros(n_layers - 1, dtype=torch.float64)
    s2 = torch.zeros(n_layers - 1, dtype=torch.float64)
    for x in vectors("residual cosine"):
        c = torch.nn.functional.normalize(x - mean[:, None], dim=-1)
        cos = (c[:-1] * c[1:]).sum(-1).double()  # [layer - 1, token]
        s1 += cos.sum(1)
        s2 += (cos**2).sum(1)
    cos_mean = s1 / n
    cos_var = (s2 / n - cos_mean**2).clamp_min(0) * n / max(n - 1, 1)
    return ResidualGeometry(cos_mean, (cos_var / n).sqrt(), norm_sum / n, n)


def _sae_layers(sae: MLSAE, model) -> list[int]:
    return list(sae.cfg.layers) if sae.cfg.layers is not None else list(range(model.config.num_hidden_layers))
