"""Which layers a dictionary's latents use, for the MLSAE and the acausal crosscoder side by side.

The MLSAE's picture is its activation mass over layers, ``p(l | j)`` (:mod:`mlsae.analysis.distributions`,
measured on text). The crosscoder's is its decoder-norm distribution ``p_l(i) = ||W_dec[l, i]|| /
sum_l' ||W_dec[l', i]||`` (:meth:`mlsae.sae.crosscoder.Crosscoder.layer_distribution`), a property of the
weights: every token that activates latent ``i`` writes to the layers in those proportions, so its per-token
distribution over layers is the aggregated one and its "per-token vs aggregated" variance ratio is 1 by
construction. Both are put in one :class:`~mlsae.analysis.distributions.LayerDistributions` form here, so the
same mean layer, std, entropy and heatmaps apply.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mlsae.analysis.decoder import decoder_vectors, max_cosine
from mlsae.analysis.distributions import LayerDistributions
from mlsae.sae.crosscoder import Crosscoder
from mlsae.sae.model import MLSAE

# A latent is "layer-specific" when at least this share of its layer distribution sits at one layer (decoder
# norm for the crosscoder, activation mass for the MLSAE); "shared" otherwise. 0.8: with 2 layers the uniform
# share is 0.5, with 12 layers 0.083, so 0.8 is far from uniform at every depth of the default series.
LAYER_SPECIFIC_SHARE = 0.8


def decoder_norm_distributions(cc: Crosscoder) -> LayerDistributions:
    """The crosscoder's decoder-norm distribution as :class:`LayerDistributions` (``totals`` [layer, latent] =
    ``p_l(i)``). Latents dead at the end of training (``cc.dead_mask()``) are left out, as the MLSAE's latents
    that never fire are. No token statistics: they equal the aggregated ones by construction."""
    p = cc.layer_distribution().double()  # [latent, layer]
    alive = ~cc.dead_mask().cpu()
    totals = (p * alive[:, None]).t().contiguous()  # [layer, latent]; dead columns zero
    return LayerDistributions(counts=(totals > 0).double(), totals=totals)


def top_layer_share(stats: LayerDistributions) -> Tensor:
    """[latent]: the largest share of ``p(l | j)`` at any one layer (NaN for latents that never fire)."""
    share = stats.p_layer.max(0).values
    return torch.where(stats.alive, share, torch.full_like(share, float("nan")))


def layer_specific_fraction(stats: LayerDistributions, threshold: float = LAYER_SPECIFIC_SHARE) -> float:
    """The fraction of alive latents with at least ``threshold`` of their distribution at one layer."""
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold} (the default is {LAYER_SPECIFIC_SHARE})")
    share = top_layer_share(stats)[stats.alive]
    return float((share >= threshold).double().mean()) if share.numel() else float("nan")


def layer_agreement(mlsae: MLSAE, cc: Crosscoder, *, device: str = "cpu") -> Tensor:
    """[layer, MLSAE latent]: for each layer ``l`` of the crosscoder, each MLSAE latent's best cosine similarity
    with any crosscoder decoder direction at ``l`` (both in the standardised space of the residual stream)."""
    vectors = decoder_vectors(mlsae)  # [m, d]
    return torch.stack([max_cosine(vectors, directions, device=device)[0] for directions in cc.layer_directions()])
