"""The shared store of trained SAEs under ``$MLSAE_HOME/saes``: train what is missing (once, under a lock,
one model pass per token stream), else load it."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from mlsae.core.paths import mlsae_home, run_lock
from mlsae.sae.architectures import load_sae
from mlsae.sae.model import MLSAE
from mlsae.training.config import STREAM_FIELDS, TrainConfig
from mlsae.training.identity import sae_key
from mlsae.training.train import train, train_many


def train_or_load(cfg: TrainConfig, *, progress: bool = True) -> tuple[MLSAE, Path]:
    """The SAE for ``cfg`` from the shared cache, training it first if it is not there yet."""
    out_dir = mlsae_home() / "saes" / sae_key(cfg)
    if not (out_dir / "sae" / "config.json").exists():
        with run_lock(out_dir):  # another process training the same SAE: wait for it, then use its result
            if not (out_dir / "sae" / "config.json").exists():
                train(cfg, out_dir, progress=progress)
    return load_sae(out_dir / "sae").to(cfg.device), out_dir


def ensure_trained(cfgs: list[TrainConfig], *, progress: bool = True) -> None:
    """Train the SAEs of ``cfgs`` that the shared cache lacks, one model pass for each group that
    shares a token stream (:data:`STREAM_FIELDS`). Same weights as training each alone."""
    def missing(configs):
        keys = {sae_key(c): c for c in configs}
        return {k: c for k, c in keys.items() if not (mlsae_home() / "saes" / k / "sae" / "config.json").exists()}

    todo = missing(cfgs)
    with contextlib.ExitStack() as held:
        for key in sorted(todo):  # another process training one of them: wait for it, then use its result
            held.enter_context(run_lock(mlsae_home() / "saes" / key))
        groups: dict[str, list[TrainConfig]] = {}
        for c in missing(todo.values()).values():
            groups.setdefault(json.dumps([getattr(c, f) for f in STREAM_FIELDS]), []).append(c)
        for group in groups.values():
            train_many(group, progress=progress)
