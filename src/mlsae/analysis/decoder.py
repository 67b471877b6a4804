"""Geometry of SAE decoder vectors: MMCS, pairwise similarities, agreement, token embeddings.

Decoder vectors live in the SAE's standardised space (each input vector centred over its ``d``
entries and scaled to unit std, PAPER.md §1); with a tuned lens, in the lens's (final-layer)
basis. Every similarity here is a cosine between unit decoder vectors.

Everything is chunked over rows: memory is ``O(chunk * n_latents)``, never
``O(n_latents²)``, so 2^17 latents fit (a 1,024-row chunk against 131,072 columns is 512 MiB in
float32). Time is still quadratic: the full 2^17 case wants a GPU (``device='cuda'``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from mlsae.core.progress import bar
from mlsae.models.residuals import final_norm
from mlsae.sae.model import MLSAE

CHUNK = 1024


def decoder_vectors(sae: MLSAE) -> Tensor:
    """[latent, d] unit-norm decoder vectors, float32, detached."""
    return F.normalize(sae.W_dec.detach().T.float(), dim=-1)


def max_cosine(a: Tensor, b: Tensor | None = None, *, chunk: int = CHUNK, device: str = "cpu",
               progress: bool = False) -> tuple[Tensor, Tensor]:
    """For each row of ``a`` [n, d], the largest cosine similarity with any row of ``b`` [m, d]
    and its index. ``b=None`` compares ``a`` with itself, excluding each row's own entry."""
    self_compare = b is None
    a_n = F.normalize(a.float(), dim=-1).to(device)
    b_n = a_n if b is None else F.normalize(b.float(), dim=-1).to(device)
    best = torch.empty(len(a_n), device=device)
    arg = torch.empty(len(a_n), dtype=torch.long, device=device)
    for start in bar(range(0, len(a_n), chunk), desc="max cosine", progress=progress):
        sims = a_n[start:start + chunk] @ b_n.T  # [chunk, m]
        if self_compare:
            rows = torch.arange(len(sims), device=device)
            sims[rows, rows + start] = -2.0  # a vector is not its own neighbour
        best[start:start + chunk], arg[start:start + chunk] = sims.max(dim=1)
    return best.cpu(), arg.cpu()


def mmcs(a: Tensor, b: Tensor | None = None, **kw) -> float:
    """Mean max cosine similarity: within one dictionary (``b=None``) or from ``a`` to ``b``."""
    return float(max_cosine(a, b, **kw)[0].mean())


@dataclass
class PairHistograms:
    """Histograms over all unordered pairs (i < j) of decoder vectors."""

    cos_edges: Tensor  # [n_cos + 1]
    cos_counts: Tensor  # [n_cos] float64: pairs per cosine bin
    dlayer_edges: Tensor  # [n_dl + 1]
    joint_counts: Tensor  # [n_dl, n_cos] float64: pairs per (|mean layer difference|, cosine) bin
    pairs: int
    latents: int

    def mean_abs_cos_by_dlayer(self) -> Tensor:
        """[n_dl]: mean |cosine| of the pairs in each band of mean-layer difference (NaN if empty).
        Falling with the difference means latents that live at nearby layers share directions."""
        centres = ((self.cos_edges[:-1] + self.cos_edges[1:]) / 2).abs()
        rows = self.joint_counts.sum(1)
        return (self.joint_counts * centres).sum(1) / torch.where(rows > 0, rows, torch.full_like(rows, float("nan")))


def pair_histograms(vectors: Tensor, mean_layer: Tensor | None = None, *, cos_bins: int = 100,
                    dlayer_bins: int = 40, max_dlayer: float | None = None, chunk: int = CHUNK,
                    device: str = "cpu", progress: bool = False) -> PairHistograms:
    """Histogram of pairwise cosine similarity, and its 2-D histogram against the absolute
    difference in mean layer ``|E[L | i] - E[L | j]|`` (latents with NaN mean layer, i.e. dead,
    are left out of both). Pairs are streamed chunk by chunk; nothing quadratic is stored."""
    v = F.normalize(vectors.float(), dim=-1)
    span = float(max_dlayer or 1.0)  # the range of |E[L | i] - E[L | j]| the histogram covers
    if mean_layer is not None:
        ok = ~torch.isnan(mean_layer)
        v, mean_layer = v[ok], mean_layer[ok].float()
        span = float(max_dlayer or max(float(mean_layer.max() - mean_layer.min()), 1e-6))
    v = v.to(device)
    n = len(v)
    cos_edges = torch.linspace(-1, 1, cos_bins + 1, dtype=torch.float64)
    dl_edges = torch.linspace(0, span, dlayer_bins + 1, dtype=torch.float64)
    cos_counts = torch.zeros(cos_bins, dtype=torch.float64)
    joint = torch.zeros(dlayer_bins, cos_bins, dtype=torch.float64)
    for start in bar(range(0, n, chunk), desc="pairwise cosine", progress=progress):
        rows = torch.arange(start, min(start + chunk, n), device=device)
        sims = v[rows] @ v.T  # [chunk, n]
        upper = torch.arange(n, device=device)[None, :] > rows[:, None]  # each pair once
        c = sims[upper].clamp(-1, 1)
        cb = ((c + 1) / 2 * cos_bins).long().clamp_(0, cos_bins - 1)
        cos_counts += torch.bincount(cb, minlength=cos_bins).double().cpu()
        if mean_layer is not None:
            ml = mean_layer.to(device)
            dl = (ml[rows][:, None] - ml[None, :]).abs()[upper]
            db = (dl / span * dlayer_bins).long().clamp_(0, dlayer_bins - 1)
            joint += torch.bincount(db * cos_bins + cb, minlength=dlayer_bins * cos_bins).double().cpu().view(dlayer_bins, cos_bins)
    return PairHistograms(cos_edges, cos_counts, dl_edges, joint, n * (n - 1) // 2, n)


def token_directions(model) -> dict[str, Tensor]:
    """Input and output token embeddings as directions in the residual stream, [vocab, d].

    ``input``: rows of the embedding matrix. ``output``: rows of the unembedding, multiplied by
    the final norm's gain when it has one (the direction in the residual stream that raises that
    token's logit). Both are then centred over ``d``, as the SAE standardises its inputs.
    """
    emb = model.get_input_embeddings().weight.detach().float()
    unemb = model.get_output_embeddings().weight.detach().float()
    gain = getattr(final_norm(model), "weight", None)
    if gain is not None:
        unemb = unemb * gain.detach().float()
    centre = lambda w: w - w.mean(dim=-1, keepdim=True)  # noqa: E731
    return {"input": centre(emb), "output": centre(unemb)}


def nearest_tokens(vectors: Tensor, directions: Tensor, top: int = 5, *, chunk: int = CHUNK) -> tuple[Tensor, Tensor]:
    """For each decoder vector [latent, d], the ``top`` most cosine-similar token directions
    [vocab, d]: (similarities, token ids), each [latent, top]."""
    v = F.normalize(vectors.float(), dim=-1)
    t = F.normalize(directions.float(), dim=-1)
    sims, ids = [], []
    for start in range(0, len(v), chunk):
        s, i = (v[start:start + chunk] @ t.T).topk(top, dim=1)
        sims.append(s)
        ids.append(i)
    return torch.cat(sims), torch.cat(ids)
