"""One seeding helper for every trainer here (SAEs, the zoo's language models, tuned lenses).

What it buys, stated in README *Determinism*: on CPU, the same seed, code, versions and thread count
give bit-identical weights, and a resumed run the same weights as an uninterrupted one (tested). On
CUDA, kernels such as ``index_add_`` and ``embedding_bag``'s backward accumulate in a nondeterministic
order, so two runs agree only within a tolerance unless ``deterministic=True`` asks torch for
deterministic algorithms (slower; an operation that has none raises, naming it).
"""

from __future__ import annotations

import os


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python's ``random``, NumPy and torch on every device (``transformers.set_seed``); with
    ``deterministic``, also switch on ``torch.use_deterministic_algorithms`` (and the cuBLAS workspace
    setting it needs). The switch is process-wide and stays on."""
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    from transformers import set_seed  # heavy: loaded where used

    set_seed(seed, deterministic=deterministic)
