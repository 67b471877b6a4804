"""mlsae: multi-layer sparse autoencoders over the residual stream.

Rooms, bottom to top (each imports only the rooms below it; ``tests/test_layers.py`` holds the rule):
``core`` (files, cache, hub, presets) -> ``data`` (text -> tokens) -> ``models`` (language models, residual
streams, lenses) -> ``sae`` (the MLSAE, its kernels, its inputs) -> ``training`` | ``analysis`` (statistics) ->
``studies`` (what the notebooks run); ``figures`` draws statistics and never sees a model.

The names below are the public API, imported on first use so that ``import mlsae`` (and ``python -m mlsae
--help``) does not load torch and transformers.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_PUBLIC = {
    "MLSAE": "mlsae.sae.model",
    "SAEConfig": "mlsae.sae.config",
    "load_model": "mlsae.models.registry",
    "resolve_model": "mlsae.models.registry",
    "load_text": "mlsae.data.sources",
    "token_batches": "mlsae.data.tokens",
    "TrainConfig": "mlsae.training.config",
    "config_from_preset": "mlsae.training.config",
    "train": "mlsae.training.train",
    "train_or_load": "mlsae.training.store",
    "evaluate": "mlsae.analysis.metrics",
    "layer_distributions": "mlsae.analysis.distributions",
    "Experiment": "mlsae.studies.experiment",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'mlsae' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
