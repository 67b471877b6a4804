"""Everything a latent dashboard shows about every latent of an SAE, computed in two streamed passes.

This is a statistic over latents (like :mod:`mlsae.analysis.distributions` and :mod:`mlsae.analysis.examples`, whose
accumulators it reuses), so it lives in ``analysis``: a typed record with ``save``/``load`` that a study can cache, and
that the writers in :mod:`mlsae.interop` (the static site, the Neuronpedia-style export) turn into files without a
model. Keeping it out of ``interop`` also keeps the site testable on a synthetic record.

Pass 1 streams the batches once through :func:`mlsae.sae.pipeline.latents`: firing counts and summed activations per
(layer, latent), and the top ``n_examples`` per (layer, latent) (:class:`MaxExamplesAccumulator`). Pass 2 runs the
model once more over just the stored sequences that hold an example (:attr:`MaxExamples.input_ids`), a batch at a
time; each batch's sparse top-k codes ``[layer, token, k]`` (float32 values, int32 indices) are laid out by position
and every example's activations are looked up in them: the latent at the example's layer on each token of its context
window, and the latent at every layer on the example's token. Nothing is run per latent, no ``[token, n_latents]``
tensor is built, and the codes of one batch at a time are held.

Nearest tokens read the SAE's directions against the model's embeddings: input side, the cosine of each encoder row
``W_enc[j]`` with every input embedding; output side, the logits ``W_U @ W_dec[:, j]``. The SAE's directions live in
its standardised space (and, with a tuned lens, in the lens-transformed space), and the final norm is skipped, so
both are approximate, as is every dashboard's logit-lens reading of a residual-stream SAE.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from mlsae.analysis.distributions import LayerDistributions
from mlsae.analysis.examples import MaxExamples, MaxExamplesAccumulator
from mlsae.core.paths import load_result, save_result
from mlsae.models.lens import IDENTITY, IdentityLens, Lens, as_lens
from mlsae.models.residuals import check_layers
from mlsae.sae.model import MLSAE
from mlsae.sae.pipeline import latents, sae_layers

NEAREST_CHUNK_ELEMS = 1 << 24  # latents x vocabulary entries per chunk of the nearest-token products (64 MiB fp32)
LOOKUP_CHUNK = 4096  # examples per chunk of the code look-up


@dataclass
class DashboardData:
    """Per-latent statistics, examples and nearest tokens (see the module docstring). ``L`` analysed layers,
    ``m`` latents, ``n`` examples per (layer, latent), ``W = before + 1 + after`` window tokens, ``q`` nearest tokens.
    Empty example slots have ``example_seq == -1``; window tokens outside the sequence have id -1 and activation 0;
    the example's token is window index ``before``."""

    layers: list[int]  # model layer of each row
    n_tokens: int  # analysed (non-special) tokens
    counts: Tensor  # [L, m] float64: tokens on which latent j fires at layer l
    totals: Tensor  # [L, m] float64: its summed activation there
    example_values: Tensor  # [L, m, n] float32, descending; 0 in empty slots
    example_seq: Tensor  # [L, m, n] int64: index into the analysed sequences, -1 in empty slots
    example_pos: Tensor  # [L, m, n] int64: position in that sequence, -1 in empty slots
    window_ids: Tensor  # [L, m, n, W] int32: token ids of the context window, -1 outside the sequence
    window_acts: Tensor  # [L, m, n, W] float32: the latent at that layer on each window token
    token_layer_acts: Tensor  # [L, m, n, L] float32: the latent at every layer on the example's token
    input_ids: Tensor  # [m, q] int64: vocabulary tokens whose input embedding is closest (cosine) to W_enc[j]
    input_cos: Tensor  # [m, q] float32: those cosines, descending
    output_ids: Tensor  # [m, q] int64: tokens with the largest logit W_U @ W_dec[:, j]
    output_logits: Tensor  # [m, q] float32: those logits, descending
    bottom_ids: Tensor  # [m, q] int64: tokens with the smallest logit
    bottom_logits: Tensor  # [m, q] float32: those logits, ascending
    vocab: list[str]  # decoded string of every token id (window_ids and the nearest ids index it)
    context: tuple[int, int] = (12, 4)  # window tokens (before, after) the example's token
    info: dict = field(default_factory=dict)  # what was analysed: model, SAE shape, lens, ... (JSON values)

    @property
    def n_layers(self) -> int:
        return self.counts.shape[0]

    @property
    def n_latents(self) -> int:
        return self.counts.shape[1]

    @property
    def n_examples(self) -> int:
        return self.example_values.shape[2]

    @property
    def stats(self) -> LayerDistributions:
        """The counts and totals as :class:`LayerDistributions` (``p_layer``, ``mean_layer``, ``std_layer``)."""
        return LayerDistributions(counts=self.counts, totals=self.totals, tokens=self.n_tokens)

    @property
    def frequency(self) -> Tensor:
        """[m] float64: fraction of the analysed (token, layer) pairs on which the latent fires."""
        return self.counts.sum(0) / max(self.n_tokens * self.n_layers, 1)

    @property
    def layer_frequency(self) -> Tensor:
        """[L, m] float64: fraction of the analysed tokens on which the latent fires at each layer."""
        return self.counts / max(self.n_tokens, 1)

    def check(self) -> None:
        """Every shape agrees (a synthetic or loaded record is checked before a writer spends time on it)."""
        L, m = self.counts.shape
        n, W = self.example_values.shape[2], sum(self.context) + 1
        q = self.input_ids.shape[1]
        want = {"totals": (L, m), "example_values": (L, m, n), "example_seq": (L, m, n), "example_pos": (L, m, n),
                "window_ids": (L, m, n, W), "window_acts": (L, m, n, W), "token_layer_acts": (L, m, n, L),
                "input_ids": (m, q), "input_cos": (m, q), "output_ids": (m, q), "output_logits": (m, q),
                "bottom_ids": (m, q), "bottom_logits": (m, q)}
        bad = [f"{k} {tuple(getattr(self, k).shape)} (want {v})" for k, v in want.items()
               if tuple(getattr(self, k).shape) != v]
        if len(self.layers) != L:
            bad.append(f"layers has {len(self.layers)} entries for {L} rows")
        if bad:
            raise ValueError("DashboardData shapes disagree: " + "; ".join(bad))

    def save(self, path: Path) -> None:
        """Tensors, and the lists and dicts as metadata (:func:`mlsae.core.paths.save_result`)."""
        tensors = {k: getattr(self, k) for k in _TENSORS}
        save_result(path, tensors, {"layers": self.layers, "n_tokens": self.n_tokens, "vocab": self.vocab,
                                    "context": list(self.context), "info": self.info})

    @classmethod
    def load(cls, path: Path) -> DashboardData:
        tensors, meta = load_result(path)
        return cls(**tensors, layers=meta["layers"], n_tokens=meta["n_tokens"], vocab=meta["vocab"],
                   context=(int(meta["context"][0]), int(meta["context"][1])), info=meta["info"])


_TENSORS = ("counts", "totals", "example_values", "example_seq", "example_pos", "window_ids", "window_acts",
            "token_layer_acts", "input_ids", "input_cos", "output_ids", "output_logits", "bottom_ids", "bottom_logits")


def _check_context(context: int | tuple[int, int]) -> tuple[int, int]:
    before, after = (context, 4) if isinstance(context, int) else tuple(context)
    if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in (before, after)):
        raise ValueError(f"context must be (before, after) tokens, each an int >= 0, got {context!r}")
    return before, after


@torch.no_grad()
def dashboard_data(
    model, tokenizer, sae: MLSAE, batches: Iterable[Tensor], *, lens: Lens = IDENTITY, layers: list[int] | None = None,
    n_examples: int = 8, context: int | tuple[int, int] = (12, 4), n_nearest: int = 8, progress: bool = True,
) -> DashboardData:
    """:class:`DashboardData` of every latent over ``batches`` of input ids ([batch, seq] LongTensors, as
    :func:`mlsae.data.tokens.token_batches` yields).

    ``layers``: where to apply the SAE (default: the layers it was trained on); ``context``: window tokens (before,
    after) each example's token (an int: that many before, 4 after); ``n_nearest``: tokens per nearest-token list.
    """
    layers = sae_layers(sae, model) if layers is None else check_layers(layers, model.config.num_hidden_layers)
    before, after = _check_context(context)
    if isinstance(n_nearest, bool) or not isinstance(n_nearest, int) or n_nearest <= 0:
        raise ValueError(f"n_nearest must be a positive int, got {n_nearest!r}")
    lens = as_lens(lens)
    L, m = len(layers), sae.cfg.n_latents
    acc = MaxExamplesAccumulator(L, m, n_examples, layers)  # validates n_examples
    counts = torch.zeros(L * m, dtype=torch.float64)
    totals = torch.zeros(L * m, dtype=torch.float64)
    rows = 0
    for batch in latents(model, tokenizer, sae, batches, layers, lens, progress, "dashboard: examples"):
        acc.add_batch(*batch)
        rows = rows or batch.input_ids.shape[0]
        values, indices = batch.values.detach().double().cpu(), batch.indices.detach().long().cpu()
        fired = values > 0
        flat = (torch.arange(L).view(-1, 1, 1) * m + indices)[fired]
        counts.index_add_(0, flat, torch.ones_like(values[fired]))
        totals.index_add_(0, flat, values[fired])
    if acc.n_seq == 0:
        raise ValueError("dashboard_data() got no tokens: the data set is empty")
    ex = acc.result
    window_ids, window_acts, token_layer_acts = _example_activations(
        model, tokenizer, sae, ex, lens, before, after, rows, progress)
    vocab_size = _vocab_size(model, tokenizer)
    nearest = nearest_tokens(sae, model, n_nearest, vocab_size)
    vocab = tokenizer.batch_decode([[t] for t in range(vocab_size)])
    valid = ex.tokens >= 0
    seq = torch.where(valid, ex.tokens // ex.seq_len, -1)
    pos = torch.where(valid, ex.tokens % ex.seq_len, -1)
    info = {"model": str(getattr(model.config, "name_or_path", "") or type(model).__name__),
            "model_layers": int(model.config.num_hidden_layers), "d_model": sae.cfg.d_model, "n_latents": m,
            "k": sae.cfg.k, "layers": list(layers), "tokens": ex.n_tokens, "sequences": ex.input_ids.shape[0],
            "seq_len": ex.seq_len, "lens": _lens_name(lens)}
    return DashboardData(layers=list(layers), n_tokens=ex.n_tokens, counts=counts.view(L, m), totals=totals.view(L, m),
                         example_values=ex.values, example_seq=seq, example_pos=pos, window_ids=window_ids,
                         window_acts=window_acts, token_layer_acts=token_layer_acts, **nearest, vocab=vocab,
                         context=(before, after), info=info)


def _lens_name(lens: Lens) -> str:
    return "none (identity)" if isinstance(lens, IdentityLens) else f"tuned lens ({type(lens).__name__})"


def _vocab_size(model, tokenizer) -> int:
    """Token ids that both the tokenizer names and the model embeds (a model's table may be padded past the
    tokenizer's vocabulary; those rows are no token)."""
    return min(len(tokenizer), model.get_input_embeddings().weight.shape[0])


def _example_activations(model, tokenizer, sae: MLSAE, ex: MaxExamples, lens: Lens, before: int, after: int,
                         rows: int, progress: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Window token ids [L, m, n, W], the latent's activation at the example's layer on each window token
    [L, m, n, W] and at every layer on the example's token [L, m, n, L], from one pass over the sequences that
    hold an example, ``rows`` sequences per forward pass."""
    L, m, n = ex.values.shape
    P, W = ex.seq_len, before + 1 + after
    offsets = torch.arange(-before, after + 1)  # [W]
    window_ids = torch.full((L * m * n, W), -1, dtype=torch.int32)
    window_acts = torch.zeros(L * m * n, W)
    token_layer_acts = torch.zeros(L * m * n, L)
    slot = torch.nonzero(ex.tokens.flatten() >= 0).flatten()  # [Q] flat (row, latent, rank) of stored examples
    if not len(slot):
        return window_ids.view(L, m, n, W), window_acts.view(L, m, n, W), token_layer_acts.view(L, m, n, L)
    flat_tok = ex.tokens.flatten()[slot]
    seq, pos = flat_tok // P, flat_tok % P
    row, latent = slot // (m * n), (slot // n) % m
    at = pos[:, None] + offsets  # [Q, W]
    inside = (at >= 0) & (at < P)
    at = at.clamp(0, P - 1)
    window_ids[slot] = torch.where(inside, ex.input_ids[seq[:, None], at], -1).to(torch.int32)

    needed = torch.unique(seq)  # sorted sequence indices
    local = torch.full((ex.input_ids.shape[0],), -1, dtype=torch.long)
    groups = [needed[i:i + max(rows, 1)] for i in range(0, len(needed), max(rows, 1))]
    batches = (ex.input_ids[g].long() for g in groups)
    for g, batch in zip(groups, latents(model, tokenizer, sae, batches, ex.layers, lens, progress,
                                        "dashboard: contexts"), strict=True):
        codes_v, codes_i = _codes_by_position(batch.keep, batch.values, batch.indices)  # [L, B * P, k]
        local[g] = torch.arange(len(g))
        here = torch.nonzero(local[seq] >= 0).flatten()
        device = codes_v.device
        for c in range(0, len(here), LOOKUP_CHUNK):
            q = here[c:c + LOOKUP_CHUNK]
            base = (local[seq[q]] * P).to(device)  # [c]
            j = latent[q].to(device, torch.int32)
            flat = base[:, None] + at[q].to(device)  # [c, W]
            r = row[q].to(device)
            hit = codes_i[r[:, None], flat] == j[:, None, None]  # [c, W, k]
            acts = (codes_v[r[:, None], flat] * hit).sum(-1) * inside[q].to(device)
            window_acts[slot[q]] = acts.float().cpu()
            focus = base + pos[q].to(device)  # [c]
            hit_l = codes_i[:, focus] == j[None, :, None]  # [L, c, k]
            token_layer_acts[slot[q]] = (codes_v[:, focus] * hit_l).sum(-1).t().float().cpu()
        local[g] = -1
    return window_ids.view(L, m, n, W), window_acts.view(L, m, n, W), token_layer_acts.view(L, m, n, L)


def _codes_by_position(keep: Tensor, values: Tensor, indices: Tensor) -> tuple[Tensor, Tensor]:
    """The sparse codes ``values``, ``indices`` [L, token, k] of the kept tokens laid out at every position of the
    batch -> [L, batch * pos, k] (float32 values, int32 indices; 0 and -1 on special tokens)."""
    L, _, k = values.shape
    where = keep.flatten().to(values.device)
    v = values.new_zeros(L, where.numel(), k, dtype=torch.float32)
    i = torch.full((L, where.numel(), k), -1, dtype=torch.int32, device=values.device)
    v[:, where] = values.float()
    i[:, where] = indices.to(torch.int32)
    return v, i


@torch.no_grad()
def nearest_tokens(sae: MLSAE, model, n_nearest: int = 8, vocab_size: int | None = None) -> dict[str, Tensor]:
    """Per latent, the ``n_nearest`` vocabulary tokens: ``input_ids``/``input_cos`` (largest cosine of the input
    embedding with ``W_enc[j]``), ``output_ids``/``output_logits`` (largest ``W_U @ W_dec[:, j]``) and
    ``bottom_ids``/``bottom_logits`` (smallest), each [m, q], in chunks of latents so that no [vocab, m] product is
    held. Approximate readings: see the module docstring. ``vocab_size``: the first rows of the embeddings to use."""
    emb = model.get_input_embeddings().weight
    out_emb = model.get_output_embeddings()
    unemb = emb if out_emb is None else out_emb.weight  # a tied model has no separate unembedding
    V = min(emb.shape[0], unemb.shape[0]) if vocab_size is None else vocab_size
    q = min(n_nearest, V)
    device = sae.W_enc.device
    emb_n = torch.nn.functional.normalize(emb[:V].detach().to(device, torch.float32), dim=1)  # [V, d]
    W_U = unemb[:V].detach().to(device, torch.float32)  # [V, d]
    m = sae.cfg.n_latents
    chunk = max(1, NEAREST_CHUNK_ELEMS // V)
    out: dict[str, list[Tensor]] = {k: [] for k in ("input_ids", "input_cos", "output_ids", "output_logits",
                                                    "bottom_ids", "bottom_logits")}
    for lo in range(0, m, chunk):
        enc = torch.nn.functional.normalize(sae.W_enc[lo:lo + chunk].detach().float(), dim=1)  # [c, d]
        cos = enc @ emb_n.T  # [c, V]
        top = cos.topk(q, dim=1)
        out["input_ids"].append(top.indices.cpu())
        out["input_cos"].append(top.values.cpu())
        logits = sae.W_dec_rows[lo:lo + chunk].detach().float() @ W_U.T  # [c, V] = (W_U @ W_dec[:, j])^T
        top = logits.topk(q, dim=1)
        out["output_ids"].append(top.indices.cpu())
        out["output_logits"].append(top.values.cpu())
        bottom = logits.topk(q, dim=1, largest=False)
        out["bottom_ids"].append(bottom.indices.cpu())
        out["bottom_logits"].append(bottom.values.cpu())
    return {k: torch.cat(v) for k, v in out.items()}
