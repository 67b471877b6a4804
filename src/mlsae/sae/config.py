"""What an SAE is: the hyper-parameters a user chooses before the model's width is known
(:class:`SAEHyperparameters`, which a training run's config nests), the shape and hyper-parameters of one built
MLSAE (:class:`SAEConfig`, saved beside its weights) or crosscoder (:class:`CrosscoderConfig`) and the names of
its files."""

from __future__ import annotations

import math
import typing
from dataclasses import dataclass, fields
from typing import Any, Literal

WEIGHTS_FILE, CONFIG_FILE, PROVENANCE_FILE = "model.safetensors", "config.json", "provenance.json"
FORMAT, FORMAT_VERSION = "mlsae", 1  # what save_pretrained writes into config.json; read_sae refuses others
# The released MLSAEs (tim-lawson/mlsae) count dead latents in optimiser steps of 64 x 2048 tokens,
# and advance ``last_nonzero`` once per forward pass over one 2048-token sequence.
PAPER_TOKENS_PER_STEP, PAPER_TOKENS_PER_FORWARD = 64 * 2048, 2048


@dataclass
class SAEHyperparameters:
    """The SAE's part of a training run, defined once: :class:`mlsae.training.config.TrainConfig` nests it, and
    :meth:`sae_config` makes the :class:`SAEConfig` for a model of a given width. Defaults are the paper's."""

    # One comment per field: it is the field's --help in the CLI.
    expansion_factor: int = 64  # R: the SAE has R x d_model latents
    k: int = 32  # active latents per (token, layer) example (top-k)
    k_aux: int = 256  # latents in the auxiliary loss that revives dead latents (0 disables AuxK)
    auxk_coef: float = 1 / 32  # weight of that auxiliary loss
    dead_tokens: int = 10_000_000  # a latent silent for this many tokens counts as dead
    # "unit": the paper's initialisation (unit-norm encoder rows, W_dec = W_enc^T). "fit": the same
    # directions, then the encoder scaled on the first batch (MLSAE.fit_encoder_scale_), which short
    # runs need (the offline presets use it; see mlsae.core.presets).
    encoder_init: Literal["unit", "fit"] = "unit"  # unit: the paper's; fit: scaled on the first batch
    # The dictionary: "mlsae" (one encoder for every layer's vectors, the paper's) or "crosscoder" (one latent
    # vector per token, read from and written to every layer: mlsae.sae.crosscoder; k is then per token).
    architecture: Literal["mlsae", "crosscoder"] = "mlsae"  # mlsae: the paper's; crosscoder: one code per token
    n_latents: int | None = None  # the number of latents; None: R x d_model (a crosscoder at equal parameters: / layers)
    sparsity: Literal["topk", "l1"] = "topk"  # crosscoder only: topk (with AuxK), or l1 (decoder-norm weighted)
    l1_coef: float = 1.0  # crosscoder with sparsity l1: weight of sum_i f_i sum_l ||W_dec[l, i]||

    def __post_init__(self) -> None:
        if not isinstance(self.expansion_factor, int) or self.expansion_factor <= 0:
            raise ValueError(f"expansion_factor must be a positive integer, got {self.expansion_factor!r} "
                             "(the paper uses 1..256)")
        check_sparsity(self.k, self.k_aux, self.auxk_coef, self.dead_tokens)
        check_choices(self)
        if self.n_latents is not None and (isinstance(self.n_latents, bool) or not isinstance(self.n_latents, int)
                                           or self.n_latents <= 0):
            raise ValueError(f"n_latents must be a positive integer or None (R x d_model), got {self.n_latents!r}")
        if self.architecture == "mlsae" and self.sparsity != "topk":
            raise ValueError(f"sparsity={self.sparsity!r} is a crosscoder option; the MLSAE is top-k "
                             "(use architecture='crosscoder', or sparsity='topk')")
        if isinstance(self.l1_coef, bool) or not isinstance(self.l1_coef, (int, float)) or \
                not math.isfinite(self.l1_coef) or self.l1_coef < 0:
            raise ValueError(f"l1_coef must be a finite number >= 0, got {self.l1_coef!r}")

    def defaults_left(self) -> tuple[str, ...]:
        """The fields added with the crosscoder that still hold their defaults: a cache key leaves them out, so an
        MLSAE's key is the one it had before they existed."""
        return tuple(f.name for f in fields(self) if f.name in _CROSSCODER_FIELDS and getattr(self, f.name) == f.default)

    def sae_config(self, d_model: int, layers: list[int] | None = None) -> SAEConfig:
        """The :class:`SAEConfig` of these hyper-parameters for a model of width ``d_model``. A training run asks for
        at most as many AuxK latents as there are latents (a saved SAE may carry the paper's 256 on fewer: AuxK
        then takes every dead latent)."""
        sparsity: dict[str, Any] = dict(k_aux=self.k_aux, auxk_coef=self.auxk_coef, dead_tokens=self.dead_tokens,
                                        layers=layers)
        n_latents = self.n_latents if self.n_latents is not None else self.expansion_factor * d_model
        if self.architecture == "crosscoder":
            if not layers:
                raise ValueError("a crosscoder needs its layers (every layer it reads and writes); got none")
            cfg: SAEConfig = CrosscoderConfig(d_model=d_model, n_latents=n_latents, k=self.k, n_layers=len(layers),
                                              sparsity=self.sparsity, l1_coef=self.l1_coef, **sparsity)
        else:
            cfg = SAEConfig(d_model=d_model, n_latents=n_latents, k=self.k, **sparsity)
        if self.k_aux > cfg.n_latents:
            raise ValueError(f"k_aux={self.k_aux} exceeds the {cfg.n_latents} latents (R {self.expansion_factor} x "
                             f"d_model {d_model}): AuxK picks k_aux of them; use k_aux <= {cfg.n_latents} (--k-aux)")
        return cfg


@dataclass
class SAEConfig:
    """Shape and training hyperparameters of an MLSAE (defaults from PAPER.md §1)."""

    d_model: int
    n_latents: int
    k: int
    # The sparsity fields' defaults and rules are SAEHyperparameters's (one definition).
    k_aux: int = SAEHyperparameters.k_aux  # dead latents that reconstruct the residual error (0 disables AuxK)
    auxk_coef: float = SAEHyperparameters.auxk_coef
    dead_tokens: int = SAEHyperparameters.dead_tokens  # a latent is dead after this many tokens (not examples) unfired
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

    @property
    def input_width(self) -> int:
        """The width of one example the encoder reads: a residual vector (d_model) for the MLSAE."""
        return self.d_model


@dataclass
class CrosscoderConfig(SAEConfig):
    """An acausal crosscoder (:mod:`mlsae.sae.crosscoder`): one example is a token's vectors at all ``n_layers``
    layers, concatenated; ``k`` latents are active per token (for every layer at once)."""

    n_layers: int = 1  # layers read and written, in the order of ``layers``
    sparsity: Literal["topk", "l1"] = "topk"  # topk (with AuxK) or l1 (penalty sum_i f_i sum_l ||W_dec[l, i]||)
    l1_coef: float = 1.0
    architecture: Literal["crosscoder"] = "crosscoder"  # what config.json says, so a loader picks the class

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.n_layers, bool) or not isinstance(self.n_layers, int) or self.n_layers <= 0:
            raise ValueError(f"n_layers must be a positive integer, got {self.n_layers!r}")
        if self.layers is not None and len(self.layers) != self.n_layers:
            raise ValueError(f"a crosscoder over layers {self.layers} has n_layers={len(self.layers)}, "
                             f"not {self.n_layers}")
        check_choices(self)

    @property
    def input_width(self) -> int:
        """A token's vectors at every layer, concatenated: n_layers x d_model."""
        return self.n_layers * self.d_model


_CROSSCODER_FIELDS = ("architecture", "n_latents", "sparsity", "l1_coef")


def check_sparsity(k: int, k_aux: int, auxk_coef: float, dead_tokens: int) -> None:
    """The rules for the sparsity fields, defined once: SAEHyperparameters and SAEConfig (which a saved SAE builds
    without hyper-parameters) both check with this."""
    for name, value in (("k", k), ("k_aux", k_aux), ("dead_tokens", dead_tokens)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    if isinstance(auxk_coef, bool) or not isinstance(auxk_coef, (int, float)):
        raise ValueError(f"auxk_coef must be a number, got {auxk_coef!r} ({type(auxk_coef).__name__})")
    if k <= 0:
        raise ValueError(f"k must be positive, got k={k}: pick e.g. k=32")
    if k_aux < 0:
        raise ValueError(f"k_aux={k_aux} must be >= 0 (0 disables AuxK; the paper uses 256)")
    if not math.isfinite(auxk_coef) or auxk_coef < 0:
        raise ValueError(f"auxk_coef={auxk_coef} must be a finite number >= 0 (the paper uses 1/32)")
    if dead_tokens <= 0:
        raise ValueError(f"dead_tokens={dead_tokens} must be positive (the paper uses 10_000_000)")


def literal_choices(cls: type) -> dict[str, tuple]:
    """A dataclass's fields whose type is a ``Literal``, with their allowed values."""
    hints = typing.get_type_hints(cls)
    return {f.name: typing.get_args(hints[f.name]) for f in fields(cls) if typing.get_origin(hints[f.name]) is Literal}


def check_choices(record: Any) -> None:
    """Every ``Literal`` field of a config dataclass holds one of its values: one rule for every config."""
    for name, options in literal_choices(type(record)).items():
        if getattr(record, name) not in options:
            raise ValueError(f"{name} must be one of {', '.join(map(repr, options))}, got {getattr(record, name)!r}")
