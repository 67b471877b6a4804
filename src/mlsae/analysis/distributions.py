"""Distributions of MLSAE latents over layers, and residual-stream geometry.

Notation (PAPER.md §3): ``a[l, t, j]`` is the post-ReLU activation of latent ``j`` at layer
``l`` for token ``t``; layers are numbered ``0 .. L-1``.

* Aggregated over tokens: ``counts[l, j]`` = tokens on which ``j`` fires at ``l``,
  ``totals[l, j] = sum_t a[l, t, j]``, ``p(l | j) = totals[l, j] / sum_l totals[l, j]``,
  with mean ``E[L | j]`` and variance ``Var(L | j)`` over ``l`` under ``p(l | j)``.
* For one token: ``p(l | t, j) = a[l, t, j] / sum_l a[l, t, j]`` and ``Var(L | t, j)``,
  defined for the pairs ``(t, j)`` where ``j`` fires at one layer or more for ``t``.
* Headline: ``E_j[Var(L | j)] / E_{t,j}[Var(L | t, j)]`` (aggregated over per-token; the paper's
  "two orders of magnitude"). The denominator averages over the pairs (t, j) with
  ``sum_l a[l, t, j] > 0`` (pairs that never fire are excluded, not counted as zero variance); the
  numerator averages over latents that fire at least once in the data (dead latents excluded). The
  activation-weighted denominator (each pair weighted by ``sum_l a[l, t, j]``) is reported too.

The paper's own estimator (PAPER.md §3b; the authors' ``mlsae/analysis/variances.py``) is not a
ratio of the variances above, and it is computed here too, exactly, next to the honest ones. Per
window of ``window`` consecutive analysed tokens (default 2048, one of their sequences), over **all**
``T * F`` (token, latent) pairs, with ``P[l, t, j] = a[l, t, j] / sum_l a[l, t, j]`` (0/0 := 0) and
``V(x) = sum_l l^2 x_l - (sum_l l x_l)^2`` applied even where ``sum_l x_l != 1``:

* ``exp_var_l_tf`` = mean over all pairs of ``V(P[:, t, j])`` (pairs that never fire count as 0);
* ``exp_var_l_f`` = mean over all latents of ``V(M[:, j])``, ``M[l, j] = (1/T) sum_t P[l, t, j]``;
* ``var_l = V(mean_{t,j} P)``; ``rel_var_f = exp_var_l_f / var_l``; ``rel_var_t = exp_var_l_tf / exp_var_l_f``;

each per window, then the mean over windows (a trailing partial window is dropped, as their
fixed-shape batches never have one). Their headline, "two orders of magnitude", is ``1 / rel_var_t``.
``M[:, j]`` sums to the firing fraction ``q_j``, so ``V(M[:, j]) = q_j sigma_j^2 + q_j (1 - q_j) mu_j^2``
with ``mu_j, sigma_j^2`` the mean and variance of the *token-weighted* distribution
``r_j = M[:, j] / q_j``: a token on which ``j`` does not fire counts as mass at layer 0. Hence, over the
whole set, exactly::

    paper ratio = [E_j q_j sigma_j^2 / E_j q_j vbar_j] * [1 + E_j q_j (1 - q_j) mu_j^2 / E_j q_j sigma_j^2]
                =  q-weighted honest ratio           *  the "mu^2 factor"

(``vbar_j`` = mean over the tokens where ``j`` fires of ``Var(L | t, j)``). The honest ratios are
invariant to renumbering the layers; the paper's is not (``first_layer`` 0 vs 1 is reported).

Everything streams from the SAE's sparse top-k output ``[layer, token, k]``: the only dense
arrays are ``[layer, n_latents]``; no ``[layer, token, n_latents]`` tensor is ever built.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from mlsae.core.paths import load_result, save_result
from mlsae.core.progress import bar
from mlsae.models.lens import IDENTITY, Lens, as_lens
from mlsae.models.residuals import check_layers, residual_batches
from mlsae.sae.model import MLSAE
from mlsae.sae.pipeline import latents, sae_layers

PAPER_WINDOW = 2048  # tokens per window of the paper's estimator: one of their 2048-token sequences
FIRST_LAYERS = (0, 1)  # layer numberings the paper's estimator is computed under (0: theirs)


def layer_variance(s0: Tensor, s1: Tensor, s2: Tensor, first_layer: float = 0.0, normalise: bool = True) -> Tensor:
    """Variance over layers from the moments ``s_n = sum_l l^n x_l`` (layers numbered from 0).

    ``normalise=True``: the variance of the distribution ``x / sum x`` (honest; ``first_layer`` has no
    effect). ``normalise=False``: the paper's ``V(x) = sum_l l^2 x_l - (sum_l l x_l)^2`` with the layers
    numbered from ``first_layer``, applied to ``x`` as it is, even where ``sum_l x_l != 1``.
    """
    c = first_layer
    m1, m2 = s1 + c * s0, s2 + 2 * c * s1 + c * c * s0
    if normalise:
        mean = m1 / s0
        return m2 / s0 - mean**2
    return m2 - m1**2


def _moments(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``sum_l l^n x[l, ...]`` for n = 0, 1, 2 over the first (layer) axis."""
    l = torch.arange(x.shape[0], dtype=x.dtype).view(-1, *([1] * (x.dim() - 1)))
    return x.sum(0), (l * x).sum(0), (l * l * x).sum(0)


def _paper_aggregate_terms(m: Tensor, first_layer: float) -> tuple[float, float]:
    """The paper's ``exp_var_l_f`` (mean over latents of ``V(M[:, j])``) and ``var_l`` (``V`` of the mean
    over latents) from ``M`` [layer, latent], layers numbered from ``first_layer``."""
    exp_f = float(layer_variance(*_moments(m), first_layer, normalise=False).mean())
    var_l = float(layer_variance(*_moments(m.mean(1)), first_layer, normalise=False))
    return exp_f, var_l


NAN = float("nan")


@dataclass(frozen=True)
class LayerSummary:
    """The scalars of :class:`LayerDistributions`, one name per quantity (the tables' and notebooks' names; the
    headline ones' column labels are :data:`HEADLINE_COLUMNS`). NaN where the statistics cannot give one (no
    per-token sums, no closed window of the paper's estimator). Layers are numbered from 0 unless a name says
    ``from1``."""

    n_layers: int
    n_latents: int
    tokens: int  # analysed tokens
    alive_latents: int  # latents that fired at least once
    mean_std_layer: float  # E_j[std of p(l | j)] over alive latents
    mean_std_layer_over_n_layers: float  # ... divided by the number of layers
    aggregate_var: float  # E_j[Var(L | j)] over alive latents (activation-weighted p(l | j))
    token_var: float  # E_{t,j}[Var(L | t, j)] over firing (token, latent) pairs
    token_var_weighted: float  # the same, weighted by the pair's activation mass
    honest_ratio: float  # aggregate_var / token_var: how many times larger
    token_pairs: int  # firing (token, latent) pairs
    single_layer_pair_fraction: float  # of those pairs, the share active at exactly one layer
    mean_active_layers: float  # E_j[layers at which j fires at least once]
    aggregate_var_token_weighted: float = NAN  # E_j[sigma_j^2], the token-weighted distribution's variance
    q_weighted_ratio: float = NAN  # E_j[q_j sigma_j^2] / E_j[q_j vbar_j]: the honest part of the paper's number
    mu2_factor: float = NAN  # 1 + E_j[q_j (1 - q_j) mu_j^2] / E_j[q_j sigma_j^2]: what numbering from 0 adds
    paper_windows: int = 0  # windows of the paper's estimator closed
    paper_exp_var_l_tf: float = NAN  # the paper's E[Var(L | t, f)], mean over windows
    paper_exp_var_l_f: float = NAN  # the paper's E[Var(L | f)], mean over windows
    paper_var_l: float = NAN  # the paper's Var(L), mean over windows
    paper_rel_var_f: float = NAN  # E[Var(L | f)] / Var(L), mean over windows
    paper_rel_var_t: float = NAN  # E[Var(L | t, f)] / E[Var(L | f)], mean over windows
    paper_ratio: float = NAN  # the authors' code as they ran it: 1 / mean rel_var_t
    paper_window: int = 0  # tokens per window
    paper_ratio_from1: float = NAN  # paper_ratio with layers numbered from 1
    paper_ratio_whole: float = NAN  # the paper's estimator on the whole set as one window (= q-weighted x mu2)
    paper_ratio_whole_from1: float = NAN  # ... with layers numbered from 1

    def as_dict(self) -> dict[str, float]:
        """Name -> value, for a table row (``pd.Series(summary.as_dict())``)."""
        return dataclasses.asdict(self)


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
    # Token-weighted statistics (None when built from counts and totals alone):
    p_sum: Tensor | None = None  # [layer, latent]: sum_t p(l | t, j) = T * M[l, j] over the whole set
    fire_tokens: Tensor | None = None  # [latent]: tokens on which j fires at one layer or more (T * q_j)
    latent_token_var_sum: Tensor | None = None  # [latent]: sum over those tokens of Var(L | t, j)
    # The paper's estimator per complete window of `window` tokens (module docstring):
    window: int = PAPER_WINDOW
    paper_tf: Tensor | None = None  # [window_index]: exp_var_l_tf (the same under every numbering)
    paper_f: Tensor | None = None  # [numbering, window_index]: exp_var_l_f, layers numbered from FIRST_LAYERS
    paper_var: Tensor | None = None  # [numbering, window_index]: var_l

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

    def summary(self) -> LayerSummary:
        """Every scalar of these statistics, one typed record (:class:`LayerSummary`)."""
        alive = self.alive
        agg = float(self.var_layer[alive].mean()) if alive.any() else NAN
        tok = self.token_var_sum / self.token_pairs if self.token_pairs else NAN
        tok_w = self.token_var_weighted_sum / self.token_weight_sum if self.token_weight_sum else NAN
        std = float(self.std_layer[alive].mean()) if alive.any() else NAN
        return LayerSummary(
            n_layers=self.n_layers, n_latents=self.counts.shape[1], tokens=self.tokens, alive_latents=int(alive.sum()),
            mean_std_layer=std, mean_std_layer_over_n_layers=std / self.n_layers,
            aggregate_var=agg, token_var=tok, token_var_weighted=tok_w,
            honest_ratio=agg / tok if tok > 0 else float("inf"), token_pairs=self.token_pairs,
            single_layer_pair_fraction=self.single_layer_pairs / self.token_pairs if self.token_pairs else NAN,
            mean_active_layers=float(self.n_active_layers[alive].double().mean()) if alive.any() else NAN,
            **self.token_weighted_summary(), **self.paper_summary(),
        )

    # ---- the token-weighted (honest) decomposition and the paper's estimator -------------------

    def _token_sums(self) -> tuple[Tensor, Tensor, Tensor] | None:
        """``(p_sum, fire_tokens, latent_token_var_sum)``, or None for statistics built from counts and totals."""
        if self.p_sum is None or self.fire_tokens is None or self.latent_token_var_sum is None:
            return None
        return self.p_sum, self.fire_tokens, self.latent_token_var_sum

    def _paper(self) -> tuple[Tensor, Tensor, Tensor] | None:
        """``(paper_tf, paper_f, paper_var)`` when at least one window was closed, else None."""
        if self.paper_tf is None or self.paper_f is None or self.paper_var is None or self.paper_tf.numel() == 0:
            return None
        return self.paper_tf, self.paper_f, self.paper_var

    def token_weighted(self, first_layer: float = 0.0) -> dict[str, Tensor]:
        """Per latent [latent]: firing fraction ``q``, mean ``mu`` and variance ``sigma2`` of the
        token-weighted distribution over layers ``r_j = M[:, j] / q_j``, and ``vbar``, the mean per-token
        variance over the tokens where ``j`` fires (NaN where ``j`` never fires)."""
        sums = self._token_sums()
        if sums is None:
            raise ValueError("these statistics were built without per-token sums; recompute them with layer_distributions()")
        p_sum, fire_tokens, latent_token_var_sum = sums
        s0, s1, s2 = _moments(p_sum)
        n = fire_tokens.clamp_min(1)
        nan = torch.full_like(s0, float("nan"))
        fired = fire_tokens > 0
        mu = torch.where(fired, s1 / s0.clamp_min(1e-300) + first_layer, nan)
        sigma2 = torch.where(fired, layer_variance(s0, s1, s2).clamp_min(0), nan)
        return {"q": fire_tokens / max(self.tokens, 1), "mu": mu, "sigma2": sigma2,
                "vbar": torch.where(fired, latent_token_var_sum / n, nan)}

    def token_weighted_summary(self, first_layer: float = 0.0) -> dict:
        """Honest, shift-invariant ratios, and the factor that turns the q-weighted one into the paper's."""
        sums = self._token_sums()
        if sums is None:
            return {}
        w = self.token_weighted(first_layer)
        fired = sums[1] > 0
        q, mu, sigma2, vbar = (w[k][fired] for k in ("q", "mu", "sigma2", "vbar"))
        q_sigma2, q_vbar = float((q * sigma2).sum()), float((q * vbar).sum())
        q_mu2 = float((q * (1 - q) * mu**2).sum())
        ratio = q_sigma2 / q_vbar if q_vbar > 0 else float("inf")
        factor = 1 + q_mu2 / q_sigma2 if q_sigma2 > 0 else float("nan")
        return {
            "aggregate_var_token_weighted": float(sigma2.mean()) if fired.any() else float("nan"),  # E_j[sigma_j^2]
            "q_weighted_ratio": ratio,  # E_j[q_j sigma_j^2] / E_j[q_j vbar_j]
            "mu2_factor": factor,  # 1 + E_j[q_j (1 - q_j) mu_j^2] / E_j[q_j sigma_j^2]
        }

    def paper_whole_set(self, first_layer: float = 0.0) -> dict:
        """The paper's estimator with the whole analysed set as one window (no per-window mean)."""
        if self.p_sum is None or self.tokens == 0:
            return {}
        n_latents = self.p_sum.shape[1]
        m = self.p_sum / self.tokens  # M [layer, latent]
        exp_f, var_l = _paper_aggregate_terms(m, first_layer)
        exp_tf = self.token_var_sum / (self.tokens * n_latents)
        return {"exp_var_l_tf": exp_tf, "exp_var_l_f": exp_f, "var_l": var_l, "rel_var_f": exp_f / var_l,
                "rel_var_t": exp_tf / exp_f, "ratio": exp_f / exp_tf if exp_tf > 0 else float("inf")}

    def paper_windows(self, first_layer: int = 0) -> dict:
        """The paper's estimator as their code reports it: per window, then the mean over windows."""
        paper = self._paper()
        if paper is None:
            return {"windows": 0}
        i = FIRST_LAYERS.index(first_layer)
        tf, f, v = paper[0], paper[1][i], paper[2][i]
        rel_t = (tf / f).mean()
        return {"windows": int(tf.numel()), "exp_var_l_tf": float(tf.mean()), "exp_var_l_f": float(f.mean()),
                "var_l": float(v.mean()), "rel_var_f": float((f / v).mean()), "rel_var_t": float(rel_t),
                "ratio": float(1 / rel_t)}

    def paper_summary(self) -> dict:
        """Flat keys for tables: ``paper_*`` at ``window`` tokens (layers from 0, as the paper), and its
        sensitivity to the window (``_whole``: one window of every token) and to numbering from 1."""
        if self.p_sum is None:
            return {}
        win, win1 = self.paper_windows(0), self.paper_windows(1)
        whole, whole1 = self.paper_whole_set(0), self.paper_whole_set(1)
        out = {f"paper_{k}": v for k, v in win.items()}
        out.update(paper_window=self.window, paper_ratio_from1=win1.get("ratio", float("nan")),
                   paper_ratio_whole=whole.get("ratio", float("nan")),
                   paper_ratio_whole_from1=whole1.get("ratio", float("nan")))
        out.setdefault("paper_ratio", float("nan"))
        return out

    def save(self, path: Path) -> None:
        """counts and totals as tensors, the scalar sums as metadata (:func:`mlsae.core.paths.save_result`)."""
        save_result(path, {k: getattr(self, k) for k in _TENSORS}, {k: getattr(self, k) for k in _SCALARS})

    @classmethod
    def load(cls, path: Path) -> LayerDistributions:
        tensors, meta = load_result(path)
        return cls(**tensors, **{k: v for k, v in meta.items() if k in _SCALARS})


_SCALARS = ("token_var_sum", "token_var_weighted_sum", "token_weight_sum", "token_pairs", "tokens",
            "single_layer_pairs", "window")
_TENSORS = ("counts", "totals", "p_sum", "fire_tokens", "latent_token_var_sum", "paper_tf", "paper_f", "paper_var")


# The headline under each estimator, for tables (notebooks 03, 06, 07, 12 and the README): summary key -> column.
# One label per quantity: every table takes its headline columns from here, never spells them itself.
HEADLINE_COLUMNS = {
    "honest_ratio": "honest ratio",  # E_j[Var(L|j)] (activation-weighted p(l|j)) / E_tj[Var(L|t,j)] over firing pairs
    "q_weighted_ratio": "q-weighted ratio",  # E_j[q sigma^2] / E_j[q vbar]: the honest part of the paper's number
    "mu2_factor": "mu2 factor",  # 1 + E_j[q(1-q) mu^2] / E_j[q sigma^2]: what numbering from layer 0 adds
    "paper_ratio_whole": "paper, whole set",  # = q-weighted ratio * mu2 factor, exactly
    "paper_ratio": "paper, windows",  # the authors' code as they ran it (1 / mean rel_var_t), `paper_window` tokens each
    "paper_ratio_from1": "paper, windows, layers from 1",
}


def headline_row(summary: LayerSummary) -> dict:
    """The headline columns of one :meth:`LayerDistributions.summary`."""
    return {col: getattr(summary, key) for key, col in HEADLINE_COLUMNS.items()}


class LayerDistributionAccumulator:
    """Streams sparse top-k activations into :class:`LayerDistributions`.

    Tokens are taken in the order given; every ``window`` of them closes one window of the paper's
    estimator (see the module docstring).
    """

    def __init__(self, n_layers: int, n_latents: int, window: int = PAPER_WINDOW):
        if window <= 0:
            raise ValueError(f"window must be a positive number of tokens, got {window}")
        self.n_latents = n_latents
        zeros = lambda *shape: torch.zeros(*shape, dtype=torch.float64)  # noqa: E731
        self.stats = LayerDistributions(
            counts=zeros(n_layers, n_latents), totals=zeros(n_layers, n_latents), p_sum=zeros(n_layers, n_latents),
            fire_tokens=zeros(n_latents), latent_token_var_sum=zeros(n_latents), window=window,
            paper_tf=zeros(0), paper_f=zeros(len(FIRST_LAYERS), 0), paper_var=zeros(len(FIRST_LAYERS), 0),
        )
        sums = self.stats._token_sums()
        assert sums is not None
        self._p_sum, self._fire_tokens, self._latent_token_var_sum = sums  # the same tensors, typed
        self._win_p = zeros(n_layers, n_latents)  # sum_t P[l, t, j] over the open window
        self._win_var, self._win_tokens = 0.0, 0

    def update(self, values: Tensor, indices: Tensor) -> None:
        """``values``, ``indices``: [layer, token, k] from the SAE's top-k encoder."""
        start, n_tokens = 0, values.shape[1]
        while start < n_tokens:  # split at window boundaries
            take = min(n_tokens - start, self.stats.window - self._win_tokens)
            self._update(values[:, start:start + take], indices[:, start:start + take])
            start += take
            if self._win_tokens == self.stats.window:
                self._close_window()

    def _update(self, values: Tensor, indices: Tensor) -> None:
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
        var = layer_variance(s0, s1, s2).clamp_min(0)
        s.token_var_sum += float(var.sum())
        s.token_var_weighted_sum += float((var * s0).sum())
        s.token_weight_sum += float(s0.sum())
        s.token_pairs += len(uniq)
        s.single_layer_pairs += int((n_at == 1).sum())

        # Token-weighted sums: p(l | t, j) of every firing entry, and per-latent token counts/variances.
        latent = uniq % self.n_latents
        p = a / s0[inv]
        self._p_sum.view(-1).index_add_(0, flat, p)
        self._fire_tokens.index_add_(0, latent, torch.ones_like(s0))
        self._latent_token_var_sum.index_add_(0, latent, var)
        self._win_p.view(-1).index_add_(0, flat, p)
        self._win_var += float(var.sum())
        self._win_tokens += n_tokens

    def _close_window(self) -> None:
        """One window of the paper's estimator, exactly as their ``Metric.update``."""
        s, t = self.stats, self._win_tokens
        m = self._win_p / t  # M [layer, latent]
        tf = torch.tensor([self._win_var / (t * self.n_latents)], dtype=torch.float64)
        terms = torch.tensor([_paper_aggregate_terms(m, c) for c in FIRST_LAYERS], dtype=torch.float64)  # [numbering, 2]
        f, v = terms[:, :1], terms[:, 1:]
        assert s.paper_tf is not None and s.paper_f is not None and s.paper_var is not None  # made in __init__
        s.paper_tf, s.paper_f, s.paper_var = torch.cat([s.paper_tf, tf]), torch.cat([s.paper_f, f], 1), torch.cat([s.paper_var, v], 1)
        self._win_p.zero_()
        self._win_var, self._win_tokens = 0.0, 0


@torch.no_grad()
def layer_distributions(
    model, tokenizer, sae: MLSAE, batches: Iterable[Tensor], *, lens: Lens = IDENTITY,
    layers: list[int] | None = None, progress: bool = True, window: int = PAPER_WINDOW
) -> LayerDistributions:
    """Distributions over layers of every latent, streamed over ``batches`` of input ids.

    ``layers``: where to apply the SAE (default: the layers it was trained on). Passing every layer
    for a single-layer SAE gives the paper's multi-layer figures for the baselines. ``window``: tokens
    per window of the paper's estimator.
    """
    layers = sae_layers(sae, model) if layers is None else check_layers(layers, model.config.num_hidden_layers)
    acc = LayerDistributionAccumulator(len(layers), sae.cfg.n_latents, window=window)
    for batch in latents(model, tokenizer, sae, batches, layers, lens, progress, "layer distributions"):
        acc.update(batch.values, batch.indices)
    return acc.stats


@torch.no_grad()
def prompt_distribution(
    model, tokenizer, sae: MLSAE, prompt: str, *, lens: Lens = IDENTITY, min_activation: float = 1e-3
) -> tuple[LayerDistributions, Tensor]:
    """Distributions over layers for one prompt, activations summed over its tokens.

    Returns the statistics and the indices of the latents whose maximum activation on the
    prompt is at least ``min_activation`` (PAPER.md §4 item 2 drops the others).
    """
    ids = tokenizer(prompt, return_tensors="pt").input_ids.to(next(model.parameters()).device)
    layers = sae_layers(sae, model)
    acc = LayerDistributionAccumulator(len(layers), sae.cfg.n_latents)
    acc_max = torch.zeros(sae.cfg.n_latents, dtype=torch.float64)
    for _, _, values, indices in latents(model, tokenizer, sae, [ids], layers, lens):  # one pass: stats and maxima
        acc.update(values, indices)
        acc_max.scatter_reduce_(0, indices.flatten().cpu(), values.flatten().double().cpu(), reduce="amax")
    return acc.stats, torch.nonzero(acc_max >= min_activation).flatten()


@dataclass
class ResidualGeometry:
    """Residual geometry per layer (notebook 05): cosine of centred vectors at adjacent layers, uncentred L2 norm."""
    cos_mean: Tensor  # [layer - 1]: mean cosine similarity of centred vectors at l and l+1
    cos_sem: Tensor  # [layer - 1]: standard error of that mean over tokens
    norm_mean: Tensor  # [layer]: mean L2 norm of the (uncentred) residual vector
    tokens: int

    def save(self, path: Path) -> None:
        save_result(path, {k: getattr(self, k) for k in ("cos_mean", "cos_sem", "norm_mean")}, {"tokens": self.tokens})

    @classmethod
    def load(cls, path: Path) -> ResidualGeometry:
        tensors, meta = load_result(path)
        return cls(**tensors, tokens=int(meta["tokens"]))


@torch.no_grad()
def residual_geometry(
    model, tokenizer, make_batches: Callable[[], Iterable[Tensor]], *, lens: Lens = IDENTITY, progress: bool = True
) -> ResidualGeometry:
    """Adjacent-layer cosine similarity of residual vectors centred by each layer's data-set mean.

    Two passes over ``make_batches()`` (a fresh iterator each time): the first computes each
    layer's mean vector, the second the per-token cosine similarities.
    """
    n_layers, lens = model.config.num_hidden_layers, as_lens(lens)
    layers = list(range(n_layers))
    total: Tensor | None = None  # [layer, d] summed residual vectors
    n, norm_sum = 0, torch.zeros(n_layers, dtype=torch.float64)

    def vectors(pass_name):
        for _, keep, resid in bar(residual_batches(model, tokenizer, make_batches()), desc=pass_name, progress=progress):
            yield lens(resid[:, keep].float(), layers)

    for x in vectors("residual means"):
        total = x.double().sum(1) if total is None else total + x.double().sum(1)
        norm_sum += x.norm(dim=-1).double().sum(1)
        n += x.shape[1]
    if n == 0 or total is None:
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


def latent_order(stats: LayerDistributions):
    """Alive latents sorted by mean layer (ties by index): the paper's column order (a numpy array)."""
    mean = stats.mean_layer.numpy()
    alive = np.flatnonzero(~np.isnan(mean))
    return alive[np.argsort(mean[alive], kind="stable")]
