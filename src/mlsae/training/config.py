"""What a training run is: :class:`TrainConfig` (every hyper-parameter, validated where it is defined),
the presets it is built from, and which fields select the token stream (:data:`STREAM_FIELDS`)."""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import typing
from dataclasses import dataclass
from typing import Literal

import torch
from simple_parsing.docstring import get_attribute_docstring

from mlsae.core.cache import key
from mlsae.core.paths import safe_name
from mlsae.core.presets import TRAIN_PRESETS, default_data
from mlsae.models.registry import model_context, resolve_model
from mlsae.models.residuals import check_unique_layers
from mlsae.sae.config import SPARSITY_DEFAULTS, SAEConfig, check_sparsity

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


# TrainConfig fields that do not touch the trained weights: left out of the cache key, and a resumed run
# may change them.
NOT_IN_WEIGHTS = ("device", "checkpoint_every", "log_every", "preset", "tracker", "deterministic")


@dataclass
class TrainConfig:
    """One MLSAE training run. Defaults are the paper's (PAPER.md §1); presets shrink them."""

    # One comment per field: it is the field's --help in the CLI (generated from this class).
    model: str = "pythia-70m"  # registry name (pythia-70m, zoo-m, ...), Hugging Face id or local folder
    expansion_factor: int = 64  # R: the SAE has R x d_model latents
    k: int = 32  # active latents per (token, layer) example (top-k)
    # The sparsity fields are carried into SAEConfig (sae_config); their defaults and rules are defined there.
    k_aux: int = SPARSITY_DEFAULTS["k_aux"]  # latents in the auxiliary loss that revives dead latents
    auxk_coef: float = SPARSITY_DEFAULTS["auxk_coef"]  # weight of that auxiliary loss
    dead_tokens: int = SPARSITY_DEFAULTS["dead_tokens"]  # a latent silent for this many tokens counts as dead
    tuned_lens: bool = False  # train behind the tuned lens (and map reconstructions back)
    lens_tokens: int = 400_000  # tokens a lens is trained on here, for a model without a pretrained lens
    layers: list[int] | None = None  # comma-separated, e.g. 3: a single-layer SAE; default every layer (the MLSAE)
    data: str = "monology/pile-uncopyrighted"  # 'offline', a local folder or file, or a Hugging Face data set
    seq_len: int = 2048  # tokens per sequence (at most the model's context)
    batch_size: int = 64  # sequences per optimiser step (x grad_accum)
    grad_accum: int = 1  # micro-batches per optimiser step
    max_tokens: int = 1_000_000_000  # training tokens (sequence positions)
    lr: float = 1e-4  # Adam learning rate
    adam_eps: float = 6.25e-10  # Adam epsilon
    seed: int = 42  # initialisation and data order
    device: str = "cpu"  # cpu, cuda, cuda:1, ...
    autocast: Literal["fp32", "bf16", "fp16"] = "fp32"  # fp16: CUDA only, with loss scaling
    checkpoint_every: int = 500  # optimiser steps between checkpoints (resume from the last)
    log_every: int = 10  # optimiser steps between lines of metrics.jsonl
    preset: str = "paper"  # the preset these values started from (paper | default | tiny)
    # "unit": the paper's initialisation (unit-norm encoder rows, W_dec = W_enc^T). "fit": the same
    # directions, then the encoder scaled on the first batch (MLSAE.fit_encoder_scale_), which short
    # runs need (the offline presets use it; see mlsae.core.presets).
    encoder_init: Literal["unit", "fit"] = "unit"  # unit: the paper's; fit: scaled on the first batch
    tracker: Literal["none", "wandb"] = "none"  # wandb: also log the metrics to Weights & Biases (WANDB_MODE=offline needs no network)
    deterministic: bool = False  # ask torch for deterministic algorithms (CUDA: repeatable runs, slower; CPU already is)

    def __post_init__(self):
        if self.expansion_factor <= 0:
            raise ValueError(f"expansion_factor must be positive, got {self.expansion_factor}")
        check_sparsity(self.k, self.k_aux, self.auxk_coef, self.dead_tokens)
        for name in ("seq_len", "batch_size", "grad_accum", "max_tokens", "checkpoint_every", "log_every", "lens_tokens"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.max_tokens < self.tokens_per_step:  # one step is the least a run trains: never exceed a budget silently
            raise ValueError(
                f"max_tokens={self.max_tokens:,} is less than one training step ({self.batch_size} sequences x "
                f"{self.seq_len} positions x grad_accum {self.grad_accum} = {self.tokens_per_step:,} tokens); lower "
                f"batch_size or seq_len (e.g. --batch-size 8 --seq-len 256: 2,048-token steps) or raise max_tokens")
        for name, options in self.choices().items():  # every Literal field, checked by one rule
            if getattr(self, name) not in options:
                raise ValueError(f"{name} must be one of {', '.join(map(repr, options))}, got {getattr(self, name)!r}")
        if self.autocast == "fp16" and not self.device.startswith("cuda"):
            raise ValueError("autocast='fp16' needs a CUDA device; use 'bf16' or 'fp32' on CPU")
        for name in ("lr", "adam_eps"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be a positive finite number, got {value!r}")
        if self.tracker == "wandb":
            if importlib.util.find_spec("wandb") is None:
                raise ValueError("tracker='wandb' but wandb is not installed: pip install -e '.[tracking]' "
                                 "(or use tracker='none'; metrics.jsonl is written either way)")
        if self.layers is not None:
            check_unique_layers(self.layers)
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"device {self.device!r} but no CUDA device is available here; use device 'cpu' "
                             f"(--device cpu)")

    @property
    def tokens_per_step(self) -> int:
        return self.seq_len * self.batch_size * self.grad_accum

    @property
    def total_steps(self) -> int:
        return max(1, self.max_tokens // self.tokens_per_step)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def choices(cls) -> dict[str, tuple]:
        """The fields whose type is a ``Literal``, with their allowed values (validation and the CLI's choices)."""
        hints = typing.get_type_hints(cls)
        return {f.name: typing.get_args(hints[f.name]) for f in dataclasses.fields(cls)
                if typing.get_origin(hints[f.name]) is Literal}

    @classmethod
    def field_help(cls) -> dict[str, str]:
        """Each field's trailing comment, read by simple-parsing as sparsify's and tuned-lens's CLIs read theirs:
        the CLI's --help, written once, beside the field."""
        found = {f.name: get_attribute_docstring(cls, f.name).comment_inline for f in dataclasses.fields(cls)}
        return {name: text.strip() for name, text in found.items() if text}

    def sae_config(self, d_model: int, layers: list[int]) -> SAEConfig:
        """The SAE's own configuration: this run's SAE fields, for a model of width ``d_model``."""
        return SAEConfig.from_expansion_factor(d_model, self.expansion_factor, self.k, k_aux=self.k_aux,
                                               auxk_coef=self.auxk_coef, dead_tokens=self.dead_tokens, layers=layers)

    def lens_kwargs(self) -> dict:
        """What selects the tuned lens (:func:`mlsae.models.lens_training.residual_lens_for`): the one definition that
        training and every evaluation of this SAE share, so they can never map into different bases."""
        return dict(data=self.data, seed=self.seed, train_tokens=self.lens_tokens)

    def cache_key(self, identity: dict) -> str:
        """A readable, stable name for this configuration's SAE in the shared cache: a pure function of the
        configuration and ``identity``, what its inputs are (:func:`mlsae.training.identity.identify`, computed
        once per run).

        Everything that changes the trained weights is hashed (:func:`mlsae.core.cache.key`), including the
        identity of the model's weights and of the text, not just their names; ``device``, logging and
        checkpoint cadence are not.
        """
        d = self.to_dict()
        for name in NOT_IN_WEIGHTS:
            d.pop(name)
        if not self.tuned_lens:
            d.pop("lens_tokens")
        elif identity.get("lens_identity") is not None:  # the pretrained lens, not a budget
            d.pop("lens_tokens")
            d["lens_identity"] = identity["lens_identity"]
        d.update(model_identity=identity["model_identity"], data_identity=identity["data_identity"])
        where = "all" if self.layers is None else "L" + "-".join(map(str, self.layers))
        lens = "-lens" if self.tuned_lens else ""
        return f"{safe_name(self.model)}-x{self.expansion_factor}-k{self.k}-{where}{lens}-{key('sae', d)}"


def config_from_preset(preset: str = "default", **overrides) -> TrainConfig:
    """A TrainConfig from a named preset, with explicit overrides applied on top.

    Without ``data`` the model's own text (:func:`mlsae.core.presets.default_data`: the Pile for a hub model
    under every preset). A preset's ``seq_len`` longer than the model's context (GPT-2: 1024 positions, the ``paper``
    preset: 2048) is shortened to the context; an explicit ``seq_len`` is kept (and checked by
    :func:`train_many` against the loaded model).
    """
    if preset not in TRAIN_PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(TRAIN_PRESETS)}")
    values = {**TRAIN_PRESETS[preset], "preset": preset, **overrides}
    if overrides.get("data") is None and "model" in overrides:
        values["data"] = default_data(overrides["model"], resolve_model(overrides["model"]).kind)
    if "seq_len" not in overrides and "model" in overrides:
        context = model_context(overrides["model"])
        if context is not None:
            values["seq_len"] = min(values.get("seq_len", TrainConfig.seq_len), context)
    return TrainConfig(**values)


# Fields that must agree for SAEs to share one pass of the language model over one token stream.
STREAM_FIELDS = ("model", "data", "seq_len", "batch_size", "grad_accum", "max_tokens", "device")
