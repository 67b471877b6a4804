"""What a trained SAE says it was trained on (``provenance.json`` and the model card): the model's and the
data's identity, the lens, the presets, the budget and the code's commit."""

from __future__ import annotations

import torch

from mlsae import __version__
from mlsae.core.paths import git_output, repository_root
from mlsae.models.lens_training import lens_record
from mlsae.training.config import TrainConfig


def provenance(cfg: TrainConfig, identity: dict, steps: int, tokens: int, metrics: list[dict],
               processes: int = 1, *, data_exhausted: bool = False) -> dict:
    """What an SAE was trained on, saved beside its weights (``provenance.json`` and the model card):
    enough for ``mlsae eval RUN_DIR`` and for a reader to know where it came from."""
    last = metrics[-1] if metrics else {}
    return {
        "model": cfg.model, "model_identity": identity["model_identity"], "layers": cfg.layers,
        "tuned_lens": cfg.lens.tuned_lens,
        "lens": lens_record(cfg.model, **cfg.lens_kwargs()) if cfg.lens.tuned_lens else None,
        "data": cfg.data, "data_identity": identity["data_identity"], "split": "train", "preset": cfg.preset,
        "steps": steps, "tokens": tokens, "seq_len": cfg.seq_len, "seed": cfg.seed, "processes": processes,
        # threads per process change float reduction orders, so the weights (1 vs N processes agree to ~1e-6 only
        # at equal threads per process; README "Training on several processes"); the budget may have outrun the text
        "threads": torch.get_num_threads(), "data_exhausted": data_exhausted,
        "metrics": {k: last[k] for k in ("loss", "fvu", "dead_fraction") if k in last},
        "cache_key": cfg.cache_key(identity), "train_config": cfg.to_dict(),
        "mlsae_version": __version__, "git_commit": _git_commit(),
    }


def _git_commit() -> str | None:
    """The repository's commit when running from a checkout (``+dirty`` with local changes), else None."""
    root = repository_root()
    if root is None:
        return None
    commit = (git_output(root, "rev-parse", "HEAD") or "").strip()
    if not commit:
        return None
    dirty = (git_output(root, "status", "--porcelain", "--untracked-files=no") or "").strip()
    return commit + ("+dirty" if dirty else "")
