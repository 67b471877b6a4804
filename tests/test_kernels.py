"""The sparse kernels against plain-autograd dense references (values and gradients)."""

import pytest
import torch

from mlsae.sae import kernels
from mlsae.sae.kernels import scatter_rows, sparse_decode, topk_encode, topk_rows


@pytest.fixture(params=["sparse", "dense", "dense, small chunks"])
def path(request, monkeypatch):
    """Each product over the selected entries both ways: the sparse kernels (a density that never counts as dense)
    and the dense matmuls (every selection dense), the latter also over chunks of a few rows."""
    monkeypatch.setattr(kernels, "DENSE_DENSITY", 2.0 if request.param == "sparse" else 0.0)
    if request.param == "dense, small chunks":
        monkeypatch.setattr(kernels, "CHUNK_ELEMS", 100)
    return request.param


def _same_topk(values, indices, pre, k, tol=0.0):
    """values/indices are a valid top-k of pre: right values at those indices, same multiset as torch.topk.

    ``tol`` allows for a chunked matmul rounding differently from the full one."""
    assert values.shape == indices.shape == (pre.shape[0], k)
    torch.testing.assert_close(pre.gather(1, indices), values, rtol=tol, atol=tol)
    assert (indices.sort(1).values.diff(dim=1) > 0).all(), "indices repeat within a row"
    ref = pre.topk(k, dim=1).values
    torch.testing.assert_close(values.sort(1, descending=True).values, ref, rtol=tol, atol=tol)


@pytest.mark.parametrize("m", [4096, 1000, 64])  # block path, not divisible, too small for blocks
def test_topk_rows_exact(m):
    torch.manual_seed(0)
    pre = torch.randn(37, m)
    values, indices = topk_rows(pre, 8)
    _same_topk(values, indices, pre, 8)


def test_topk_rows_ties():
    torch.manual_seed(0)
    pre = torch.randint(0, 5, (20, 2048)).float()  # many exact ties
    values, indices = topk_rows(pre, 16)
    _same_topk(values, indices, pre, 16)


def test_scatter_rows_matches_index_add():
    torch.manual_seed(0)
    n, k, d, m = 50, 4, 6, 30
    idx = torch.randint(0, m, (n, k))
    w, src = torch.randn(n, k, dtype=torch.float64), torch.randn(n, d, dtype=torch.float64)
    outer = (w[:, :, None] * src[:, None]).reshape(-1, d)  # [n*k, d]
    ref = torch.zeros(m, d, dtype=torch.float64).index_add_(0, idx.reshape(-1), outer)
    torch.testing.assert_close(scatter_rows(idx, w, src, m), ref)


def _encode_reference(x, b, W, k, cols, k_aux):
    """Dense: every pre-activation, torch.topk over all latents and over the columns ``cols``."""
    pre = (x - b) @ W.t()
    values, indices = pre.topk(k, dim=1)
    aux_values, local = pre[:, cols].topk(k_aux, dim=1)
    return values, indices, aux_values, cols[local]


def _align(got_indices, ref_indices):
    """[n, k] positions of the kernel's (unordered) indices in the reference's (sorted) ones."""
    return (got_indices.unsqueeze(2) == ref_indices.unsqueeze(1)).float().argmax(2)


@pytest.mark.parametrize("chunk_rows", [7, 1000])
def test_topk_encode_matches_autograd(chunk_rows, path):
    torch.manual_seed(0)
    n, d, m, k, k_aux = 45, 12, 256, 5, 3
    dt = torch.float64
    x = torch.randn(n, d, dtype=dt, requires_grad=True)
    b = torch.randn(d, dtype=dt, requires_grad=True)
    W = torch.randn(m, d, dtype=dt, requires_grad=True)
    cols = torch.tensor([3, 17, 100, 101, 180, 255])
    g_val, g_aux = torch.randn(n, k, dtype=dt), torch.randn(n, k_aux, dtype=dt)

    values, indices, aux_values, aux_indices = topk_encode(x, b, W, k, cols, k_aux, chunk_rows=chunk_rows)
    with torch.no_grad():
        pre = (x - b) @ W.t()
        _same_topk(values, indices, pre, k, tol=1e-12)
        aux_indices = cols[aux_indices]  # positions in cols -> latents
        _same_topk(aux_values, aux_indices, pre.masked_fill(~torch.isin(torch.arange(m), cols), -torch.inf),
                   k_aux, tol=1e-12)
    ((values * g_val).sum() + (aux_values * g_aux).sum()).backward()
    grads = [t.grad.clone() for t in (x, b, W)]

    for t in (x, b, W):
        t.grad = None
    ref_v, ref_i, ref_av, ref_ai = _encode_reference(x, b, W, k, cols, k_aux)
    loss = (ref_v.gather(1, _align(indices, ref_i)) * g_val).sum()
    loss = loss + (ref_av.gather(1, _align(aux_indices, ref_ai)) * g_aux).sum()
    loss.backward()
    for got, t in zip(grads, (x, b, W), strict=True):
        torch.testing.assert_close(got, t.grad)


def test_topk_encode_k_aux_capped_by_columns():
    torch.manual_seed(0)
    x, b, W = torch.randn(10, 8), torch.zeros(8), torch.randn(64, 8)
    cols = torch.tensor([1, 5])
    _, _, aux_values, aux_indices = topk_encode(x, b, W, 3, cols, k_aux=16)
    assert aux_values.shape == aux_indices.shape == (10, 2)
    assert (aux_indices.sort(1).values == torch.arange(2)).all()


def test_topk_encode_without_cols_and_no_grad():
    torch.manual_seed(0)
    x, b, W = torch.randn(10, 8), torch.zeros(8), torch.randn(64, 8)
    with torch.no_grad():
        values, indices, aux_values, aux_indices = topk_encode(x, b, W, 3)
        assert aux_values.shape == aux_indices.shape == (10, 0)
        _same_topk(values, indices, x @ W.t(), 3, tol=1e-5)
        # dead columns but k_aux 0: no AuxK selection
        assert topk_encode(x, b, W, 3, torch.tensor([2, 4]), k_aux=0)[2].shape == (10, 0)


def test_topk_encode_bf16_autocast():
    torch.manual_seed(0)
    x, b = torch.randn(30, 16), torch.zeros(16)
    W = torch.randn(128, 16, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        values, indices, _, _ = topk_encode(x, b, W, 4)
    assert values.dtype == torch.float32
    exact = (x @ W.detach().t()).gather(1, indices)
    torch.testing.assert_close(values, exact, rtol=2e-2, atol=5e-2)
    values.sum().backward()
    assert W.grad.dtype == torch.float32 and W.grad.isfinite().all()


def test_sparse_decode_matches_dense(path):
    torch.manual_seed(0)
    n, k, d, m = 20, 3, 7, 40
    dt = torch.float64
    idx = torch.stack([torch.randperm(m)[:k] for _ in range(n)])
    v = torch.rand(n, k, dtype=dt, requires_grad=True)
    W_rows = torch.randn(m, d, dtype=dt, requires_grad=True)
    g = torch.randn(n, d, dtype=dt)
    (sparse_decode(v, idx, W_rows) * g).sum().backward()
    grads = v.grad.clone(), W_rows.grad.clone()
    v.grad = W_rows.grad = None
    z = torch.zeros(n, m, dtype=dt).scatter(1, idx, v)
    ((z @ W_rows) * g).sum().backward()
    torch.testing.assert_close(grads[0], v.grad)
    torch.testing.assert_close(grads[1], W_rows.grad)


def test_dense_density_picks_the_path():
    assert not kernels.use_dense(32, 32_768)  # the main top-k at the pythia-70m shape: sparse
    assert not kernels.use_dense(256, 3_276)  # AuxK over 10% dead latents there: break-even, sparse
    assert kernels.use_dense(256, 410)  # AuxK over 20% dead of a zoo-xl R = 16 MLSAE: dense
    assert kernels.use_dense(k=256, m=256 * 12) and not kernels.use_dense(k=255, m=256 * 12)  # the threshold
    assert not kernels.use_dense(4, 0)
