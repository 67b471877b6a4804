"""An MLSAE's shape and hyper-parameters (:class:`SAEConfig`) and the names of its files."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

WEIGHTS_FILE, CONFIG_FILE, PROVENANCE_FILE = "model.safetensors", "config.json", "provenance.json"
FORMAT = "mlsae"
# The released MLSAEs (tim-lawson/mlsae) count dead latents in optimiser steps of 64 x 2048 tokens,
# and advance ``last_nonzero`` once per forward pass over one 2048-token sequence.
PAPER_TOKENS_PER_STEP, PAPER_TOKENS_PER_FORWARD = 64 * 2048, 2048


@dataclass
class SAEConfig:
    """Shape and training hyperparameters of an MLSAE (defaults from PAPER.md §1)."""

    d_model: int
    n_latents: int
    k: int
    k_aux: int = 256  # dead latents that reconstruct the residual error (0 disables AuxK)
    auxk_coef: float = 1 / 32
    dead_tokens: int = 10_000_000  # a latent is dead after this many tokens (not examples) unfired
    dead_threshold: float = 1e-3  # "fired" means value > this
    standardize: bool = True
    layers: list[int] | None = None  # model layers trained on; one layer for a baseline SAE

    def __post_init__(self) -> None:
        if self.d_model <= 0:
            raise ValueError(f"d_model={self.d_model} must be positive: pass the residual width, e.g. 512")
        if self.n_latents <= 0:
            raise ValueError(
                f"n_latents={self.n_latents} must be positive: use expansion_factor * d_model, e.g. 64 * 512"
            )
        check_sparsity(self.k, self.k_aux, self.auxk_coef, self.dead_tokens)
        if self.k > self.n_latents:
            raise ValueError(f"k={self.k} must be in 1..n_latents={self.n_latents}: pick e.g. k=32")
        if self.layers is not None:
            self.layers = [int(layer) for layer in self.layers]

    @classmethod
    def from_expansion_factor(cls, d_model: int, expansion_factor: float, k: int, **kw) -> SAEConfig:
        """n_latents = expansion_factor * d_model (the paper's R)."""
        if expansion_factor <= 0:
            raise ValueError(f"expansion_factor={expansion_factor} must be positive (the paper uses 1..256)")
        n_latents = int(round(expansion_factor * d_model))
        return cls(d_model=d_model, n_latents=n_latents, k=k, **kw)

    @property
    def expansion_factor(self) -> float:
        return self.n_latents / self.d_model


def check_sparsity(k: int, k_aux: int, auxk_coef: float, dead_tokens: int) -> None:
    """The rules for the sparsity fields, defined once: SAEConfig and TrainConfig (which carries them into it)
    both check with this."""
    if k <= 0:
        raise ValueError(f"k must be positive, got k={k}: pick e.g. k=32")
    if k_aux < 0:
        raise ValueError(f"k_aux={k_aux} must be >= 0 (0 disables AuxK; the paper uses 256)")
    if not math.isfinite(auxk_coef) or auxk_coef < 0:
        raise ValueError(f"auxk_coef={auxk_coef} must be a finite number >= 0 (the paper uses 1/32)")
    if dead_tokens <= 0:
        raise ValueError(f"dead_tokens={dead_tokens} must be positive (the paper uses 10_000_000)")


# The sparsity fields' defaults (the paper's), for configurations that carry them into an SAEConfig.
SPARSITY_DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(SAEConfig)
                                     if f.name in ("k_aux", "auxk_coef", "dead_tokens")}
