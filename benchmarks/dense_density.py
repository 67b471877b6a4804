"""Where the products over selected latents should switch from the sparse kernels to dense matmuls
(``mlsae.sae.kernels.DENSE_DENSITY``).

For each shape (rows n, d, columns m) and each k, times both paths of what one training step does with a
selection of k of m entries per row, interleaved within each repeat (medians): the decode forward and backward
(:class:`~mlsae.sae.kernels.SparseDecode` vs :class:`~mlsae.sae.kernels.DenseDecode`) and the encoder's
weight gradient with its per-latent sums (``kernels._select_grads``, both ways). Prints sparse / dense per k
(above 1: the dense path is faster) and the density k / m.

    python benchmarks/dense_density.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics

import torch
from common import timed

from mlsae.sae import kernels

# (label, n rows, d, m columns): AuxK at the pythia-70m shape with 10% dead (train_step.py), the zoo models'
# MLSAEs at R = 16 and 64 with 20% dead (a zoo-xl batch: 12 layers x 4,096 tokens)
SHAPES = [
    ("pythia-70m AuxK, 10% of 32,768 dead", 6_144, 512, 3_276),
    ("zoo-xl R=16 AuxK, 20% of 2,048 dead", 49_152, 128, 410),
    ("zoo-xl R=64 AuxK, 20% of 8,192 dead", 49_152, 128, 1_638),
    ("zoo-xl R=16 main top-k, 2,048 latents", 49_152, 128, 2_048),
]
KS = [8, 16, 32, 64, 128, 256]


def both_ways(n: int, d: int, m: int, k: int):
    """(sparse, dense) callables doing one selection's decode forward + backward and encoder-gradient work."""
    torch.manual_seed(0)
    idx = torch.rand(n, m).topk(k, dim=1).indices
    vals = torch.rand(n, k)
    W_rows = torch.randn(m, d, requires_grad=True)
    xb, g = torch.randn(n, d), torch.randn(n, d)

    def run(dense: bool):
        kernels.DENSE_DENSITY = 0.0 if dense else 2.0
        v = vals.clone().requires_grad_(True)
        kernels.sparse_decode(v, idx, W_rows).backward(g)
        kernels._select_grads(idx, vals, xb, m, True)
        W_rows.grad = None

    return (lambda: run(False)), (lambda: run(True))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    chosen = kernels.DENSE_DENSITY
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; DENSE_DENSITY = {chosen:.4f} (1/{1 / chosen:.0f})")
    for label, n, d, m in SHAPES:
        print(f"\n{label}: n {n:,}, d {d}, m {m:,}")
        print(f"{'k':>5} {'k / m':>8} {'sparse s':>9} {'dense s':>9} {'sparse / dense':>15}  path chosen")
        for k in (k for k in KS if k < m):
            sparse, dense = both_ways(n, d, m, k)
            sparse(), dense()  # warm-up
            ts, td = [], []
            for _ in range(args.repeats):
                ts.append(timed(sparse, "cpu"))
                td.append(timed(dense, "cpu"))
            kernels.DENSE_DENSITY = chosen
            s, t = statistics.median(ts), statistics.median(td)
            print(f"{k:5d} {k / m:8.4f} {s:9.4f} {t:9.4f} {s / t:15.2f}  "
                  f"{'dense' if kernels.use_dense(k, m) else 'sparse'}", flush=True)


if __name__ == "__main__":
    main()
