"""Sparse kernels for TopK SAEs.

Exact top-k needs the dense pre-activations ``(x - b) @ W_enc.T`` ([n, n_latents]); everything
after them touches only the k selected latents per row (plus, for AuxK, the dead latents):

- ``topk_encode``: the pre-activation matmul in row chunks (memory is one chunk, not [n, n_latents]),
  an exact two-stage top-k (and AuxK's top-k among the dead latents from the same chunks), and a
  backward that is a sparse outer product over the selected latents.
- ``sparse_decode``: ``embedding_bag`` over the selected decoder columns, with a backward of its own
  (a sampled dense-dense product and ``scatter_rows``) that only reads and writes those columns.
- ``scatter_rows``: the transpose of ``embedding_bag`` (used for the encoder's weight gradient).

Where the selection is dense enough (k of m at or above :data:`DENSE_DENSITY`, e.g. AuxK's k_aux = 256 among a
few thousand dead latents, or the wide crosscoder's k), the same products run as dense matmuls over row chunks
of a [rows, m] matrix holding the selected entries (zeros elsewhere): a per-entry gather or scatter costs far
more than a matmul's multiply-add, so above that density the matmul over every entry is cheaper. Same values,
another order of summation (a matmul's blocked sum over tokens instead of a sorted sum per latent).

Plain-autograd references for each live in ``tests/test_kernels.py``; the dense reference of the
whole loss is ``mlsae.sae.model.dense_reference_loss``.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor

# Rows per pre-activation chunk are chosen so that one chunk holds about this many elements
# (2**26 fp32 = 256 MiB): big enough for an efficient matmul, small enough to cap memory. At the
# pythia-70m shape (32,768 latents) 2,048-row chunks run the matmuls 13% faster than 512-row ones
# (2**24), which re-read the whole encoder for every 512 rows.
CHUNK_ELEMS = 1 << 26

# Selected entries per row as a fraction of the columns (k / m) from which the products over them run as dense
# matmuls (module docstring); benchmarks/dense_density.py measures the break-even. On a 2-core AVX-512 Xeon
# (2026-12-08) sparse / dense was 0.88-0.97 at k / m ~ 0.06-0.08 and 1.2-1.9 from 0.08-0.125 on; zoo AuxK
# (256 of ~410 dead) runs 8x faster dense, the pythia-70m AuxK (256 of 3,276, 0.078) breaks even and stays sparse.
DENSE_DENSITY = 1 / 12


def use_dense(k: int, m: int) -> bool:
    """Whether ``k`` selected entries out of ``m`` per row are dense enough for the matmul paths."""
    return m > 0 and k >= DENSE_DENSITY * m


def _chunk_rows(m: int) -> int:
    """Rows of a [rows, m] chunk holding about :data:`CHUNK_ELEMS` elements."""
    return max(1, CHUNK_ELEMS // max(1, m))


def _dense_chunk(values: Tensor, indices: Tensor, m: int) -> Tensor:
    """[rows, m] zeros with ``values`` [rows, k] at ``indices`` (unique within a row)."""
    return values.new_zeros(values.shape[0], m).scatter_(1, indices, values)


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

    Optionally also the top ``k_aux`` of a set of columns (the dead latents, for AuxK), taken from the
    same chunks: they cost no extra matmul, and their backward is sparse too (only the selected
    entries carry a gradient; AuxK's part is scattered into the dead rows on its own).
    Under ``torch.autocast`` the matmul runs in the autocast dtype; outputs and gradients are in
    the dtype of ``W``.
    """

    @staticmethod
    def forward(ctx, x: Tensor, b: Tensor, W: Tensor, k: int, cols: Tensor, k_aux: int, chunk_rows: int):
        # x [n, d], b [d], W [m, d], cols [c] (long, possibly empty), k_aux <= c
        device = x.device.type
        mm_dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else W.dtype
        n, m = x.shape[0], W.shape[0]
        k_aux = k_aux if cols.numel() else 0
        with torch.autocast(device, enabled=False):
            xb = (x - b).to(W.dtype)  # [n, d]
            xq, Wt = xb.to(mm_dtype), W.to(mm_dtype).t()  # [n, d], [d, m]
            values = W.new_empty(n, k)
            indices = torch.empty(n, k, dtype=torch.long, device=x.device)
            aux_values = W.new_empty(n, k_aux)
            aux_indices = torch.empty(n, k_aux, dtype=torch.long, device=x.device)
            rows = min(chunk_rows, n)
            buf = torch.empty(rows, m, dtype=mm_dtype, device=x.device)  # reused
            col_buf = torch.empty(rows, cols.numel(), dtype=mm_dtype, device=x.device) if k_aux else None
            for i in range(0, n, chunk_rows):
                j = min(i + chunk_rows, n)
                pre = torch.mm(xq[i:j], Wt, out=buf[: j - i])  # [rows, m]
                v, idx = topk_rows(pre, k)
                values[i:j], indices[i:j] = v, idx
                if col_buf is not None:
                    pre_cols = torch.index_select(pre, 1, cols, out=col_buf[: j - i])  # [rows, c]
                    aux_values[i:j], aux_indices[i:j] = pre_cols.topk(k_aux, dim=1, sorted=False)
        ctx.save_for_backward(xb, W, indices, cols, aux_indices)
        ctx.mark_non_differentiable(indices, aux_indices)
        return values, indices, aux_values, aux_indices

    @staticmethod
    def backward(ctx, g_values: Tensor | None, _g_indices, g_aux: Tensor | None, _g_aux_indices):
        xb, W, indices, cols, aux_local = ctx.saved_tensors  # aux_local [n, k_aux] indexes cols
        m = W.shape[0]
        if g_values is None:
            g_values = torch.zeros_like(indices, dtype=W.dtype)
        g_values = g_values.to(W.dtype)
        g_aux = g_aux.to(W.dtype) if g_aux is not None and aux_local.shape[1] > 0 else None
        grad_x = grad_b = None
        # Per selection: the weight gradient G.T @ xb and the per-latent sums of G (for grad_b: d(x - b)/db = -I, so
        # grad_b = -sum_rows grad_x = -(per-latent grad sums) @ W, no [n, d]). AuxK's part lives in the dead rows, so it
        # is computed over the c dead columns and added (two small products are ~3x faster than one over k + k_aux).
        grad_W, per_latent = _select_grads(indices, g_values, xb, m, ctx.needs_input_grad[2])  # [m, d], [m]
        if g_aux is not None:
            aux_W, aux_sums = _select_grads(aux_local, g_aux, xb, cols.numel(), ctx.needs_input_grad[2])
            if grad_W is not None and aux_W is not None:
                grad_W.index_add_(0, cols, aux_W)
            per_latent.index_add_(0, cols, aux_sums)
        if ctx.needs_input_grad[1]:
            grad_b = -(per_latent @ W)
        if ctx.needs_input_grad[0]:
            grad_x = F.embedding_bag(indices, W, per_sample_weights=g_values, mode="sum")
            if g_aux is not None:
                grad_x = grad_x + F.embedding_bag(aux_local, W[cols], per_sample_weights=g_aux, mode="sum")
        return grad_x, grad_b, grad_W, None, None, None, None


def _select_grads(local: Tensor, g: Tensor, xb: Tensor, c: int, weight_grad: bool) -> tuple[Tensor | None, Tensor]:
    """For selected entries ``local`` [n, j] (columns of c) with gradients ``g`` [n, j]: the weight gradient
    ``G.T @ xb`` [c, d] (when asked) and the per-column sums ``G.sum(0)`` [c], G being the dense [n, c] matrix of g."""
    if not use_dense(local.shape[1], c):
        sums = torch.zeros(c, dtype=g.dtype, device=g.device).index_add_(0, local.reshape(-1), g.reshape(-1))
        return (scatter_rows(local, g, xb, c) if weight_grad else None), sums
    grad = xb.new_zeros(c, xb.shape[1]) if weight_grad else None
    sums = g.new_zeros(c)
    rows = _chunk_rows(c)
    for i in range(0, local.shape[0], rows):
        dense = _dense_chunk(g[i:i + rows], local[i:i + rows], c)  # [rows, c]
        if grad is not None:
            grad.addmm_(dense.t(), xb[i:i + rows])
        sums += dense.sum(0)
    return grad, sums


def topk_encode(
    x: Tensor, b: Tensor, W: Tensor, k: int, cols: Tensor | None = None, k_aux: int = 0,
    chunk_rows: int | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Pre-ReLU top-k of ``(x - b) @ W.T``, and the top ``k_aux`` among the columns ``cols``.

    x [n, d], b [d], W [m, d], cols [c] (optional latent indices, e.g. the dead ones).
    Returns values [n, k] (unordered), indices [n, k] (long), aux_values [n, min(k_aux, c)] and
    aux_indices (positions in ``cols``, so ``cols[aux_indices]`` are W's rows; [n, 0] when ``cols`` is
    None or empty).
    Differentiable in x, b, W through values and aux_values.
    """
    if cols is None:
        cols = torch.empty(0, dtype=torch.long, device=x.device)
    if chunk_rows is None:
        chunk_rows = _chunk_rows(W.shape[0])
    return TopKEncode.apply(x, b, W, k, cols, min(k_aux, cols.numel()), chunk_rows)


def sampled_dots(g: Tensor, W_rows: Tensor, indices: Tensor) -> Tensor:
    """``out[r, i] = <g[r], W_rows[indices[r, i]]>`` -> [n, k] without gathering the [n, k, d] rows.

    A sampled dense-dense product (``torch.sparse.sampled_addmm``, a CSR pattern of the indices): about
    10x faster than ``embedding_bag``'s backward for its per-sample weights.
    """
    n, k = indices.shape
    sorted_idx, perm = indices.sort(1)  # CSR wants each row's columns in order
    crow = torch.arange(0, n * k + 1, k, device=indices.device)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        pattern = torch.sparse_csr_tensor(crow, sorted_idx.reshape(-1), g.new_zeros(n * k), (n, W_rows.shape[0]),
                                          check_invariants=False)
    dots = torch.sparse.sampled_addmm(pattern, g, W_rows.t(), beta=0.0).values().view(n, k)
    return torch.empty_like(dots).scatter_(1, perm, dots)


class SparseDecode(torch.autograd.Function):
    """``embedding_bag`` forward; a backward from :func:`sampled_dots` and :func:`scatter_rows` (its own
    backward is ~5x slower: a per-entry gather of decoder rows and a sort of its own)."""

    @staticmethod
    def forward(ctx, values: Tensor, indices: Tensor, W_rows: Tensor) -> Tensor:
        ctx.save_for_backward(values, indices, W_rows)
        return F.embedding_bag(indices, W_rows, per_sample_weights=values, mode="sum")

    @staticmethod
    def backward(ctx, g: Tensor):
        values, indices, W_rows = ctx.saved_tensors
        g = g.contiguous()
        grad_values = sampled_dots(g, W_rows, indices) if ctx.needs_input_grad[0] else None
        grad_W = scatter_rows(indices, values, g, W_rows.shape[0]) if ctx.needs_input_grad[2] else None
        return grad_values, None, grad_W


class DenseDecode(torch.autograd.Function):
    """:class:`SparseDecode` for a dense selection (:func:`use_dense`): the selected entries of each row chunk as a
    dense [rows, m] matrix, then ``A @ W_rows`` forward, ``g @ W_rows.T`` (read at the indices) and ``A.T @ g``
    backward. Memory is one chunk (:data:`CHUNK_ELEMS`)."""

    @staticmethod
    def forward(ctx, values: Tensor, indices: Tensor, W_rows: Tensor) -> Tensor:
        ctx.save_for_backward(values, indices, W_rows)
        m = W_rows.shape[0]
        out = W_rows.new_empty(values.shape[0], W_rows.shape[1])
        rows = _chunk_rows(m)
        for i in range(0, values.shape[0], rows):
            torch.mm(_dense_chunk(values[i:i + rows], indices[i:i + rows], m), W_rows, out=out[i:i + rows])
        return out

    @staticmethod
    def backward(ctx, g: Tensor):
        values, indices, W_rows = ctx.saved_tensors
        m = W_rows.shape[0]
        grad_values = torch.empty_like(values) if ctx.needs_input_grad[0] else None
        grad_W = torch.zeros_like(W_rows) if ctx.needs_input_grad[2] else None
        rows = _chunk_rows(m)
        for i in range(0, values.shape[0], rows):
            j = min(i + rows, values.shape[0])
            if grad_values is not None:
                grad_values[i:j] = (g[i:j] @ W_rows.t()).gather(1, indices[i:j])
            if grad_W is not None:
                grad_W.addmm_(_dense_chunk(values[i:j], indices[i:j], m).t(), g[i:j])
        return grad_values, None, grad_W


def sparse_decode(values: Tensor, indices: Tensor, W_dec_rows: Tensor) -> Tensor:
    """``out[r] = sum_i values[r, i] * W_dec_rows[indices[r, i]]`` -> [n, d]; no bias.

    values, indices [n, k]; W_dec_rows [m, d] = W_dec.T, which should be contiguous (a transposed
    view is ~20x slower). Forward and backward touch only the selected rows (:class:`SparseDecode`), or, for a
    dense selection (:func:`use_dense`), run as chunked dense matmuls (:class:`DenseDecode`).
    """
    decode = DenseDecode if use_dense(indices.shape[1], W_dec_rows.shape[0]) else SparseDecode
    return decode.apply(values.to(W_dec_rows.dtype), indices, W_dec_rows)
