"""What a training run's inputs are, read from disk once per run: the model's weights, the text and the
pretrained lens (when it is used), by content or revision, not by name (rules: :mod:`mlsae.core.cache`).
``TrainConfig.cache_key(identity)`` is then a pure function, and the provenance says the same."""

from __future__ import annotations

from mlsae.data.sources import data_identity
from mlsae.models.lens_training import pretrained_lens_identity
from mlsae.models.registry import model_identity
from mlsae.training.config import TrainConfig


def identify(cfg: TrainConfig) -> dict:
    """``{"model_identity", "data_identity", "lens_identity"}`` of ``cfg``'s inputs (the lens: the pretrained one's
    identity when ``cfg.lens.tuned_lens`` and one is on this machine, else None)."""
    lens = pretrained_lens_identity(cfg.model) if cfg.lens.tuned_lens else None
    return {"model_identity": model_identity(cfg.model), "data_identity": data_identity(cfg.data),
            "lens_identity": lens}


def sae_key(cfg: TrainConfig) -> str:
    """``cfg``'s folder name in the shared store: its cache key under the identity of its inputs now."""
    return cfg.cache_key(identify(cfg))
