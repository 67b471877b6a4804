"""Maximally activating examples of every (layer, latent) (PAPER.md §4 item 14).

For each layer ``l`` and latent ``j`` the ``n_examples`` largest activations ``a[l, t, j] > 0``
over the analysed tokens are kept, with where they occurred: the flat index
``seq * seq_len + pos`` into the analysed token ids, which are stored too (int32,
``[n_seq, seq_len]``) so that contexts can be shown later. Ties are broken by the earlier token.

Like :mod:`mlsae.analysis.distributions`, everything streams from the SAE's sparse top-k output
``[layer, token, k]``, merged batch by batch with one sort, group and rank pass (no Python loop
over latents); no ``[layer, token, n_latents]`` tensor is ever built. The per-token activations
of one latent across a context window are recomputed on demand by running the model and the SAE
on just the few sequences that hold its examples (:class:`ExampleBrowser`).
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from mlsae.core.paths import load_result, save_result
from mlsae.models.lens import IDENTITY, Lens, as_lens
from mlsae.models.residuals import check_layers, residual_streams, special_token_mask
from mlsae.sae.model import MLSAE
from mlsae.sae.pipeline import latents, sae_layers


@dataclass
class MaxExamples:
    """The top activations of every (layer, latent) and the token ids they were found in."""

    values: Tensor  # [layer, latent, n] float32, descending; 0 in empty slots
    tokens: Tensor  # [layer, latent, n] int64: seq * seq_len + pos, -1 in empty slots
    input_ids: Tensor  # [n_seq, seq_len] int32: the analysed tokens
    layers: list[int]  # model layer of each row
    n_tokens: int = 0  # analysed (non-special) tokens

    @property
    def n_layers(self) -> int:
        return self.values.shape[0]

    @property
    def n_latents(self) -> int:
        return self.values.shape[1]

    @property
    def n_examples(self) -> int:
        return self.values.shape[2]

    @property
    def seq_len(self) -> int:
        return self.input_ids.shape[1]

    def check(self, latent: int, layer: int | None = None) -> int | None:
        """Validate ``latent`` (and the model ``layer``); returns the row of ``layer``."""
        if isinstance(latent, bool) or not isinstance(latent, int) or not 0 <= latent < self.n_latents:
            raise ValueError(f"latent {latent!r} out of range: the SAE has {self.n_latents} latents (0 … {self.n_latents - 1})")
        if layer is None:
            return None
        if isinstance(layer, bool) or not isinstance(layer, int) or layer not in self.layers:
            raise ValueError(f"layer {layer!r} not analysed: the examples cover layers {self.layers}")
        return self.layers.index(layer)

    def top(self, latent: int, layer: int) -> list[tuple[float, int, int]]:
        """``(activation, seq, pos)`` of the stored examples, largest first (fewer if it rarely fires)."""
        row = self.check(latent, layer)
        v, t = self.values[row, latent], self.tokens[row, latent]
        return [(float(a), int(i) // self.seq_len, int(i) % self.seq_len) for a, i in zip(v, t, strict=True) if i >= 0]

    def save(self, path: Path) -> None:
        """Tensors, and ``layers`` and ``n_tokens`` as metadata (:func:`mlsae.core.paths.save_result`)."""
        save_result(path, {"values": self.values, "tokens": self.tokens, "input_ids": self.input_ids},
                    {"layers": self.layers, "n_tokens": self.n_tokens})

    @classmethod
    def load(cls, path: Path) -> MaxExamples:
        tensors, meta = load_result(path)
        return cls(**tensors, layers=meta["layers"], n_tokens=meta["n_tokens"])


class MaxExamplesAccumulator:
    """Streams sparse top-k activations into :class:`MaxExamples`."""

    def __init__(self, n_layers: int, n_latents: int, n_examples: int = 8, layers: Sequence[int] | None = None):
        if isinstance(n_examples, bool) or not isinstance(n_examples, int) or n_examples <= 0:
            raise ValueError(f"n_examples must be a positive int, got {n_examples!r}")
        self.n_latents, self.n = n_latents, n_examples
        self.layers = list(range(n_layers)) if layers is None else list(layers)
        self.values = torch.zeros(n_layers * n_latents, n_examples)  # [layer * latent, n]
        self.tokens = torch.full((n_layers * n_latents, n_examples), -1, dtype=torch.long)
        self.ids: list[Tensor] = []
        self.n_seq = self.n_tokens = 0

    def add_batch(self, input_ids: Tensor, keep: Tensor, values: Tensor, indices: Tensor) -> None:
        """One batch of :func:`mlsae.sae.pipeline.latents`: ids and keep [batch, pos], values/indices [layer, token, k]."""
        if self.ids and input_ids.shape[1] != self.ids[0].shape[1]:
            raise ValueError(f"every batch must have the same sequence length; got {input_ids.shape[1]} after "
                             f"{self.ids[0].shape[1]}")
        seq_len = input_ids.shape[1]
        positions = torch.nonzero(keep.flatten().cpu()).flatten() + self.n_seq * seq_len
        self.update(values, indices, positions)
        self.ids.append(input_ids.detach().to("cpu", torch.int32))
        self.n_seq += input_ids.shape[0]

    def update(self, values: Tensor, indices: Tensor, positions: Tensor) -> None:
        """Merge ``values``, ``indices`` [layer, token, k] found at global ``positions`` [token]."""
        n_layers, n_tokens, k = values.shape
        if positions.shape != (n_tokens,):
            raise ValueError(f"positions must be [token] = ({n_tokens},), got {tuple(positions.shape)}")
        values = values.detach().float().cpu()
        indices = indices.detach().long().cpu()
        fired = values > 0
        key = (torch.arange(n_layers).view(-1, 1, 1) * self.n_latents + indices)[fired]
        val = values[fired]
        tok = positions.cpu().long().view(1, -1, 1).expand(n_layers, n_tokens, k)[fired]
        self.n_tokens += n_tokens
        better = val > self.values[key, -1]  # can enter the top n (an equal value loses to the earlier token)
        key, val, tok = key[better], val[better], tok[better]
        if not len(key):
            return
        groups = torch.unique(key)
        old_v, old_t = self.values[groups], self.tokens[groups]
        valid = old_t >= 0
        # old entries first: with the stable sorts, equal values keep the earlier token ahead
        all_k = torch.cat([groups[:, None].expand(-1, self.n)[valid], key])
        all_v = torch.cat([old_v[valid], val])
        all_t = torch.cat([old_t[valid], tok])
        order = torch.sort(all_v, descending=True, stable=True).indices
        order = order[torch.sort(all_k[order], stable=True).indices]  # by group, each largest first
        all_k, all_v, all_t = all_k[order], all_v[order], all_t[order]
        _, counts = torch.unique_consecutive(all_k, return_counts=True)
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.arange(len(all_k)) - torch.repeat_interleave(starts, counts)
        top = rank < self.n
        self.values[groups] = 0
        self.tokens[groups] = -1
        self.values[all_k[top], rank[top]] = all_v[top]
        self.tokens[all_k[top], rank[top]] = all_t[top]

    @property
    def result(self) -> MaxExamples:
        n_layers = len(self.layers)
        ids = torch.cat(self.ids) if self.ids else torch.zeros(0, 0, dtype=torch.int32)
        return MaxExamples(values=self.values.view(n_layers, self.n_latents, self.n).clone(),
                           tokens=self.tokens.view(n_layers, self.n_latents, self.n).clone(),
                           input_ids=ids, layers=list(self.layers), n_tokens=self.n_tokens)


@torch.no_grad()
def max_examples(
    model, tokenizer, sae: MLSAE, batches: Iterable[Tensor], *, lens: Lens = IDENTITY,
    layers: list[int] | None = None, n_examples: int = 8, progress: bool = True,
) -> MaxExamples:
    """The top ``n_examples`` activations of every (layer, latent), streamed over ``batches`` of input ids.

    ``layers``: where to apply the SAE (default: the layers it was trained on).
    """
    layers = sae_layers(sae, model) if layers is None else check_layers(layers, model.config.num_hidden_layers)
    acc = MaxExamplesAccumulator(len(layers), sae.cfg.n_latents, n_examples, layers)
    for batch in latents(model, tokenizer, sae, batches, layers, lens, progress, "max examples"):
        acc.add_batch(*batch)
    if acc.n_seq == 0:
        raise ValueError("max_examples() got no tokens: the data set is empty")
    return acc.result


# ---- browsing: contexts, recomputed per-token activations, HTML and Markdown ---------------------


@dataclass
class Example:
    """One stored example of ``latent`` at model ``layer`` with a context window around it."""

    latent: int
    layer: int
    rank: int  # 0 = largest
    value: float  # the stored activation
    seq: int
    pos: int
    tokens: list[str]  # the context window's tokens as text
    acts: list[float]  # the latent's activation at ``layer`` on each window token (recomputed)
    focus: int  # index in ``tokens`` of the example's token


class ExampleBrowser:
    """Contexts and highlighted tokens of the stored examples; runs the model and SAE on demand.

    ``stats`` (a :class:`mlsae.analysis.distributions.LayerDistributions` over the same layers), when given, adds
    the latent's firing count and ``p(l | j)`` to the section headers.
    """

    def __init__(self, examples: MaxExamples, model, tokenizer, sae: MLSAE, *, lens: Lens = IDENTITY,
                 stats=None):
        if sae.cfg.n_latents != examples.n_latents:
            raise ValueError(f"the SAE has {sae.cfg.n_latents} latents but the examples {examples.n_latents}")
        self.ex, self.model, self.tokenizer, self.sae, self.lens, self.stats = examples, model, tokenizer, sae, as_lens(lens), stats

    @torch.no_grad()
    def token_activations(self, latent: int, layers: Sequence[int], seqs: Sequence[int]) -> Tensor:
        """Activation of ``latent`` at each model layer in ``layers`` on every token of the stored
        sequences ``seqs`` -> [len(layers), len(seqs), seq_len] (0 on special tokens), one forward pass."""
        self.ex.check(latent)
        layers = list(layers)
        device = next(self.model.parameters()).device
        ids = self.ex.input_ids[list(seqs)].long().to(device)
        x = self.lens(residual_streams(self.model, ids, layers=layers).float(), layers)  # [layer, seq, pos, d]
        values, indices = self.sae.encode(x.flatten(0, 2))
        a = (values * (indices == latent)).sum(-1).view(x.shape[:3])
        return (a * special_token_mask(ids, self.tokenizer)).cpu()

    def examples_for(self, latent: int, layer: int, context: int | tuple[int, int] = (12, 4)) -> list[Example]:
        """The stored examples of ``latent`` at model ``layer``, each with ``context`` = (before, after)
        tokens around it (an int: that many before, 4 after) and the recomputed activations."""
        return self._examples(latent, [layer], context)[layer]

    def _examples(self, latent: int, layers: Sequence[int], context) -> dict[int, list[Example]]:
        before, after = (context, 4) if isinstance(context, int) else context
        if before < 0 or after < 0:
            raise ValueError(f"context must be >= 0 tokens before and after, got {context!r}")
        tops = {l: self.ex.top(latent, l) for l in layers}  # validates latent and layers
        seqs = sorted({s for top in tops.values() for _, s, _ in top})
        acts = self.token_activations(latent, layers, seqs) if seqs else None
        out: dict[int, list[Example]] = {}
        for i, l in enumerate(layers):
            out[l] = []
            for rank, (value, s, p) in enumerate(tops[l]):
                lo, hi = max(p - before, 0), min(p + after + 1, self.ex.seq_len)
                ids = self.ex.input_ids[s, lo:hi].tolist()
                strings = self.tokenizer.batch_decode([[t] for t in ids])
                assert acts is not None  # seqs is non-empty whenever a layer has a top example
                row = acts[i, seqs.index(s), lo:hi].tolist()
                out[l].append(Example(latent, l, rank, value, s, p, strings, row, p - lo))
        return out

    def _header(self, latent: int, layer: int) -> str:
        if self.stats is None:
            return f"layer {layer}"
        row = self.ex.layers.index(layer)
        return (f"layer {layer}: fires on {int(self.stats.counts[row, latent]):,} tokens, "
                f"p(l | j) = {float(self.stats.p_layer[row, latent]):.3f}")

    def _title(self, latent: int) -> str:
        if self.stats is None:
            return f"latent {latent}"
        return (f"latent {latent}: mean layer {float(self.stats.mean_layer[latent]):.2f}, "
                f"std {float(self.stats.std_layer[latent]):.2f} layers, fires on "
                f"{int(self.stats.counts[:, latent].sum()):,} (token, layer) pairs")

    def html(self, latent: int, context: int | tuple[int, int] = (12, 4)) -> str:
        """One section per layer: the examples, each token's background proportional to the latent's
        activation there (scaled to that layer's top example), the example's token in bold."""
        by_layer = self._examples(latent, self.ex.layers, context)
        parts = [f"<div style='font-family: monospace; font-size: 12px'><h3>{html.escape(self._title(latent))}</h3>"]
        for l, examples in by_layer.items():
            parts.append(f"<h4 style='margin: 8px 0 2px'>{html.escape(self._header(latent, l))}</h4>")
            if not examples:
                parts.append("<div style='color: #888'>never fires at this layer</div>")
            scale = max((e.value for e in examples), default=1.0)
            for e in examples:
                spans = []
                for i, (t, a) in enumerate(zip(e.tokens, e.acts, strict=True)):
                    text = html.escape(_visible(t))
                    alpha = min(max(a / scale, 0.0), 1.0)
                    style = f"background: rgba(255, 110, 0, {alpha:.2f})" + ("; font-weight: bold" if i == e.focus else "")
                    spans.append(f"<span style='{style}' title='{a:.3f}'>{text}</span>")
                parts.append(f"<div style='white-space: pre; margin: 1px 0'><span style='color: #888'>"
                             f"{e.value:7.3f}  </span>{''.join(spans)}</div>")
        parts.append("</div>")
        return "\n".join(parts)

    def markdown(self, latents: Sequence[int], context: int | tuple[int, int] = (12, 4)) -> str:
        """Plain-text (Markdown) listing of the examples of ``latents``, the example's token in ⟦ ⟧."""
        lines = []
        for j in latents:
            lines += [f"## {self._title(j)}", ""]
            for l, examples in self._examples(j, self.ex.layers, context).items():
                lines += [f"### {self._header(j, l)}", ""]
                for e in examples or []:
                    text = "".join(f"⟦{_visible(t)}⟧" if i == e.focus else _visible(t) for i, t in enumerate(e.tokens))
                    lines.append(f"{e.rank + 1}. {e.value:.3f} (seq {e.seq}, pos {e.pos}): `` {text} ``")
                lines.append("" if examples else "never fires at this layer\n")
        return "\n".join(lines)


def _visible(token: str) -> str:
    return token.replace("\n", "↵").replace("\t", "⇥").replace("`", "ˋ")


# ---- which latents to show ----------------------------------------------------------------------


def frequent_latents(stats, min_frequency: float = 1e-3) -> Tensor:
    """Latents firing on at least ``min_frequency`` of the (token, layer) pairs [latent] bool."""
    return stats.counts.sum(0) >= min_frequency * stats.tokens * stats.n_layers


def spread_latent(stats, min_frequency: float = 1e-3) -> int:
    """The frequent latent with the largest std of ``p(l | j)`` over layers (lowest index on ties)."""
    std = torch.where(frequent_latents(stats, min_frequency), stats.std_layer.nan_to_num(-1.0), torch.tensor(-1.0).double())
    if float(std.max()) < 0:
        raise ValueError(f"no latent fires on at least {min_frequency} of the (token, layer) pairs")
    return int(torch.nonzero(std == std.max())[0])


def latents_per_layer(stats, min_frequency: float = 1e-3) -> dict[int, int]:
    """For each layer bucket ``b`` (``round(E[L | j]) == b``) the frequent latent with the most
    firings (lowest index on ties); buckets without one are left out."""
    freq = frequent_latents(stats, min_frequency)
    bucket = stats.mean_layer.nan_to_num(-1.0).round().long()
    count = stats.counts.sum(0)
    out = {}
    for b in range(stats.n_layers):
        mask = freq & (bucket == b)
        if mask.any():
            c = torch.where(mask, count, torch.tensor(-1.0).double())
            out[b] = int(torch.nonzero(c == c.max())[0])
    return out
