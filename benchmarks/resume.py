"""Resume cost against the position resumed from: the stored stream position vs re-reading to it.

    python benchmarks/resume.py [--positions 10 100 1000] [--preset default]

For each position n (in batches of the preset: default 32 x 128 tokens), the time until the first
batch after n arrives, (a) from the stream position a checkpoint stores (``TokenStream.state_dict``;
what ``mlsae train`` does now) and (b) by re-reading and re-tokenising n batches (what it did before).
Prints both and the ratio of the largest to the smallest position for each: ~1 means the resume cost
does not grow with n.
"""

from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--positions", type=int, nargs="+", default=[10, 100, 1000])
    ap.add_argument("--preset", default="default")
    ap.add_argument("--model", default="zoo-s", help="whose tokenizer (the zoo's are built on demand)")
    args = ap.parse_args()

    from mlsae.core.presets import TRAIN_PRESETS
    from mlsae.data.sources import load_text
    from mlsae.data.tokens import token_batches
    from mlsae.models.registry import load_model

    p = TRAIN_PRESETS[args.preset]
    _, tokenizer = load_model(args.model)

    def stream(state=None):
        return token_batches(load_text(p["data"], split="train", streaming=True), tokenizer, p["seq_len"],
                             p["batch_size"], state=state)

    print(f"{args.preset} preset: batches of {p['batch_size']} x {p['seq_len']} tokens from {p['data']!r}")
    print(f"{'position':>10} {'stored position (s)':>20} {'re-read (s)':>12}")
    rows = []
    for n in args.positions:
        s = stream()
        for _ in range(n):
            next(s)
        state = json.loads(json.dumps(s.state_dict()))  # what a checkpoint holds
        t = time.perf_counter()
        first = next(stream(state))  # (a)
        stored = time.perf_counter() - t
        t = time.perf_counter()
        s = stream()
        for _ in range(n):  # (b): what a resume without a stored position has to do
            next(s)
        again = next(s)
        reread = time.perf_counter() - t
        assert again.equal(first), "the resumed stream must yield the same batch"
        rows.append((n, stored, reread))
        print(f"{n:>10} {stored:>20.3f} {reread:>12.3f}")
    (n0, s0, r0), (n1, s1, r1) = rows[0], rows[-1]
    print(f"position {n1} / position {n0}: stored position {s1 / s0:.2f}x, re-read {r1 / r0:.2f}x")
    print(f"at position {n1}: the stored position is {r1 / s1:.0f}x faster than re-reading")


if __name__ == "__main__":
    main()
