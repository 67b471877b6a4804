"""Sparse kernels for TopK SAEs.

Exact top-k needs the dense pre-activations ``(x - b) @ W_enc.T`` ([n, n_latents]); everything
after them touches only the k selected latents per row (plus, for AuxK, the dead latents):

- ``topk_encode``: the pre-activation matmul in row chunks (memory is one chunk, not [n, n_latents]),
  an exact two-stage top-k, and a backward that is a sparse outer product over the selected latents.
- ``sparse_decode``: ``embedding_bag`` over the selected decoder columns; its native backward
  only reads and writes those columns.
- ``scatter_rows``: the transpose of ``embedding_bag`` (used for the encoder's weight gradient).

Plain-autograd references for each live in ``tests/test_kernels.py``; the dense reference of the
whole loss is ``mlsae.sae.model.dense_reference_loss``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# Rows per pre-activation chunk are chosen so that one chunk holds about this many elements
# (2**24 fp32 = 64 MiB): big enough for an efficient matmul, small enough to cap memory.
CHUNK_ELEMS = 1 << 24


def topk_rows(pre: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Exact, unordered top-k of each row of ``pre`` [n, m] -> (values [n, k], indices [n, k]).

    Two stages, about twice as fast as ``torch.topk`` on CPU when k << m: split each row into
    blocks of s, keep the k blocks with the largest maxima, take the top-k of their k*s entries.
    Exact: an entry outside those blocks is below k block maxima, so it is not in the top-k
    (up to ties, where an equal value is chosen instead).
    """
    n, m = pre.shape
    s = next((s for s in (64, 32, 16) if m % s == 0 and 4 * k * s <= m), 0)
    if s == 0 or not pre.is_contiguous():
        return pre.topk(k, dim=1, sorted=False)
    blocks = pre.view(n, m // s, s)
    _, block_idx = blocks.amax(2).topk(k, dim=1, sorted=False)  # [n, k]
    cand = blocks.gather(1, block_idx.unsqueeze(2).expand(-1, -1, s)).view(n, k * s)
    values, cand_idx = cand.topk(k, dim=1, sorted=False)  # [n, k]
    indices = block_idx.gather(1, cand_idx // s) * s + cand_idx % s
    return values, indices


def scatter_rows(indices: Tensor, weights: Tensor, src: Tensor, n_rows: int) -> Tensor:
    """``out[j] = sum over (r, i) with indices[r, i] == j of weights[r, i] * src[r]`` -> [n_rows, d].

    The transpose of ``embedding_bag``: sort the (r, i) pairs by j and run ``embedding_bag`` over the
    rows of ``src`` with one bag per j. Never materialises the [n*k, d] outer products.
    """
    flat = indices.reshape(-1)
    order = flat.argsort()
    counts = torch.bincount(flat, minlength=n_rows)
    offsets = counts.cumsum(0) - counts
    rows = order // indices.shape[1]
    w = weights.reshape(-1)[order].to(src.dtype)
    return F.embedding_bag(rows, src, offsets, mode="sum", per_sample_weights=w)


class TopKEncode(torch.autograd.Function):
    """Top-k of ``(x - b) @ W.T`` per row, with a backward that touches only the selected latents.

    Optionally also returns the dense pre-activations of a small set of columns (the dead latents,
    for AuxK), gathered from the same chunks so that they cost no extra matmul.
    Under ``torch.autocast`` the matmul runs in the autocast dtype; outputs and gradients are in
    the dtype of ``W``.
    """

    @staticmethod
    def forward(ctx, x: Tensor, b: Tensor, W: Tensor, k: int, cols: Tensor, chunk_rows: int):
        # x [n, d], b [d], W [m, d], cols [c] (long, possibly empty)
        device = x.device.type
        mm_dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else W.dtype
        n, m = x.shape[0], W.shape[0]
        with torch.autocast(device, enabled=False):
            xb = (x - b).to(W.dtype)  # [n, d]
            xq, Wt = xb.to(mm_dtype), W.to(mm_dtype).t()  # [n, d], [d, m]
            values = W.new_empty(n, k)
            indices = torch.empty(n, k, dtype=torch.long, device=x.device)
            pre_cols = torch.empty(n, cols.numel(), dtype=mm_dtype, device=x.device)
            buf = torch.empty(min(chunk_rows, n), m, dtype=mm_dtype, device=x.device)  # reused
            for i in range(0, n, chunk_rows):
                j = min(i + chunk_rows, n)
                pre = torch.mm(xq[i:j], Wt, out=buf[: j - i])  # [rows, m]
                v, idx = topk_rows(pre, k)
                values[i:j], indices[i:j] = v, idx
                if cols.numel():
                    torch.index_select(pre, 1, cols, out=pre_cols[i:j])
        pre_cols = pre_cols.to(W.dtype)
        ctx.save_for_backward(xb, W, indices, cols)
        ctx.mark_non_differentiable(indices)
        return values, indices, pre_cols

    @staticmethod
    def backward(ctx, g_values: Tensor | None, _g_indices, g_cols: Tensor | None):
        xb, W, indices, cols = ctx.saved_tensors
        m = W.shape[0]
        if g_values is None:
            g_values = torch.zeros_like(indices, dtype=W.dtype)
        g_values = g_values.to(W.dtype)
        g_cols = g_cols if g_cols is not None and cols.numel() > 0 else None  # [n, n_dead] or nothing to add
        grad_x = grad_b = grad_W = None
        if ctx.needs_input_grad[2]:
            grad_W = scatter_rows(indices, g_values, xb, m)  # [m, d]
            if g_cols is not None:
                grad_W.index_add_(0, cols, g_cols.t().to(W.dtype) @ xb)
        if ctx.needs_input_grad[1]:
            # d(x - b)/db = -I, so grad_b = -sum_rows grad_x = -(per-latent grad sums) @ W: no [n, d].
            per_latent = torch.zeros(m, dtype=W.dtype, device=W.device)
            per_latent.index_add_(0, indices.reshape(-1), g_values.reshape(-1))
            if g_cols is not None:
                per_latent.index_add_(0, cols, g_cols.sum(0).to(W.dtype))
            grad_b = -(per_latent @ W)
        if ctx.needs_input_grad[0]:
            grad_x = F.embedding_bag(indices, W, per_sample_weights=g_values, mode="sum")
            if g_cols is not None:
                grad_x = grad_x + g_cols.to(W.dtype) @ W[cols]
        return grad_x, grad_b, grad_W, None, None, None


def topk_encode(
    x: Tensor, b: Tensor, W: Tensor, k: int, cols: Tensor | None = None, chunk_rows: int | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Pre-ReLU top-k of ``(x - b) @ W.T``.

    x [n, d], b [d], W [m, d], cols [c] (optional latent indices, e.g. the dead ones).
    Returns values [n, k] (unordered), indices [n, k] (long), pre_cols [n, c] (the pre-activations
    of ``cols``; [n, 0] when ``cols`` is None). Differentiable in x, b, W through values and pre_cols.
    """
    if cols is None:
        cols = torch.empty(0, dtype=torch.long, device=x.device)
    if chunk_rows is None:
        chunk_rows = max(1, CHUNK_ELEMS // W.shape[0])
    return TopKEncode.apply(x, b, W, k, cols, chunk_rows)


def sparse_decode(values: Tensor, indices: Tensor, W_dec_rows: Tensor) -> Tensor:
    """``out[r] = sum_i values[r, i] * W_dec_rows[indices[r, i]]`` -> [n, d]; no bias.

    values, indices [n, k]; W_dec_rows [m, d] = W_dec.T, which should be contiguous (a transposed
    view is ~20x slower). ``embedding_bag``: its backward touches only the selected rows.
    """
    return F.embedding_bag(indices, W_dec_rows, per_sample_weights=values.to(W_dec_rows.dtype), mode="sum")
