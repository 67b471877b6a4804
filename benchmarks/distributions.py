"""Distribution-over-layers statistics at the pythia-70m shape: throughput and peak memory.

    python benchmarks/distributions.py [--tokens 1000000] [--device cpu]

A randomly initialised GPT-NeoX with pythia-70m's shape (6 layers, d_model 512, vocab 50304) and a
random MLSAE with R = 64 (32768 latents), k = 32 run the full streaming pipeline of
``mlsae.analysis.distributions.layer_distributions`` (residual streams -> top-k latents -> counts, totals and
per-token variances) over ``--tokens`` random tokens. Prints tokens per second, the time split
between the language model and the SAE, and the process's peak resident memory (target: < 4 GB).
"""

from __future__ import annotations

import argparse
import resource
import time

import torch
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

from mlsae.analysis.distributions import LayerDistributionAccumulator
from mlsae.models.residuals import residual_streams
from mlsae.sae.config import SAEConfig
from mlsae.sae.model import MLSAE


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=1_000_000)
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    torch.manual_seed(0)
    cfg = GPTNeoXConfig(vocab_size=50304, hidden_size=512, num_hidden_layers=6, num_attention_heads=8,
                        intermediate_size=2048, rotary_pct=0.25, max_position_embeddings=2048)
    model = GPTNeoXForCausalLM(cfg).eval().to(args.device)
    sae = MLSAE(SAEConfig.from_expansion_factor(512, 64, 32)).eval().to(args.device)
    acc = LayerDistributionAccumulator(6, sae.cfg.n_latents)
    baseline = peak_rss_gib()

    per_batch = args.seq_len * args.batch_size
    n_batches = max(1, args.tokens // per_batch)
    t_lm = t_sae = t_acc = 0.0
    start = time.perf_counter()
    with torch.no_grad():
        for i in range(n_batches):
            ids = torch.randint(0, cfg.vocab_size, (args.batch_size, args.seq_len), device=args.device)
            t0 = time.perf_counter()
            resid = residual_streams(model, ids)  # [layer, batch, pos, d]
            t1 = time.perf_counter()
            values, indices = sae.encode(resid.flatten(0, 2).float())  # [layer*token, k]
            t2 = time.perf_counter()
            acc.update(values.view(6, -1, 32), indices.view(6, -1, 32))
            t3 = time.perf_counter()
            t_lm, t_sae, t_acc = t_lm + t1 - t0, t_sae + t2 - t1, t_acc + t3 - t2
            if (i + 1) % max(1, n_batches // 10) == 0:
                done = (i + 1) * per_batch
                print(f"  {done:>9,} tokens  {done / (time.perf_counter() - start):7.0f} tok/s  "
                      f"peak RSS {peak_rss_gib():.2f} GiB", flush=True)
    total = time.perf_counter() - start
    tokens = n_batches * per_batch
    s = acc.stats.summary()
    print(f"tokens: {tokens:,}  (6 layers x 32768 latents, k 32, {args.device})")
    print(f"throughput: {tokens / total:.0f} tokens/s  ({total:.1f} s)")
    print(f"time split: language model {t_lm / total:.0%}, SAE encoder {t_sae / total:.0%}, statistics {t_acc / total:.0%}")
    print(f"peak RSS: {peak_rss_gib():.2f} GiB (after model set-up {baseline:.2f} GiB); target < 4 GiB: "
          f"{'met' if peak_rss_gib() < 4 else 'NOT met'}")
    print(f"sanity: {s['alive_latents']} latents fired, token pairs {s['token_pairs']:,}")


if __name__ == "__main__":
    main()
