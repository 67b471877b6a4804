"""What a training run is: :class:`TrainConfig` (every hyper-parameter, validated where it is defined: the SAE's
in :class:`mlsae.sae.config.SAEHyperparameters`, the lens's in :class:`LensSettings`,
both nested here), the presets it is built from, and which fields select the token stream (:data:`STREAM_FIELDS`).

The CLI, the presets and the notebooks name every field flat (``k``, ``tuned_lens``, ``max_tokens``):
:meth:`TrainConfig.from_dict` routes such names to the nested record that defines them, and
:meth:`TrainConfig.flat` gives them back, so a field is declared once and spelled one way everywhere.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import math
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from simple_parsing.docstring import get_attribute_docstring

from mlsae.core.cache import key
from mlsae.core.paths import safe_name
from mlsae.core.presets import TRAIN_PRESETS, default_data
from mlsae.models.registry import canonical_model_name, check_device, model_context, resolve_model
from mlsae.models.residuals import check_seq_len, check_unique_layers
from mlsae.sae.config import SAEConfig, SAEHyperparameters, check_choices, literal_choices

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class LensSettings:
    """The lens part of a training run (:class:`TrainConfig` nests it), defined once."""

    # One comment per field: it is the field's --help in the CLI.
    tuned_lens: bool = False  # train behind the tuned lens (and map reconstructions back)
    lens_tokens: int = 400_000  # tokens a lens is trained on here, for a model without a pretrained lens

    def __post_init__(self) -> None:
        if not isinstance(self.tuned_lens, bool):
            raise ValueError(f"tuned_lens must be True or False, got {self.tuned_lens!r}")
        if isinstance(self.lens_tokens, bool) or not isinstance(self.lens_tokens, int) or self.lens_tokens <= 0:
            raise ValueError(f"lens_tokens must be positive, got {self.lens_tokens!r}")


# TrainConfig fields that do not touch the trained weights: left out of the cache key, and a resumed run
# may change them.
NOT_IN_WEIGHTS = ("device", "checkpoint_every", "log_every", "preset", "tracker", "deterministic")
# The lr schedule's fields: a cache key leaves them out at 0 (a constant lr), so a run keeps the key it had before
# they existed.
SCHEDULE_FIELDS = ("lr_warmup", "lr_decay")


def check_schedule(lr_warmup: float, lr_decay: float) -> None:
    """The lr schedule's rule (TrainConfig's and a notebook's parameters): two fractions of the run that fit in it."""
    for name, value in zip(SCHEDULE_FIELDS, (lr_warmup, lr_decay), strict=True):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise ValueError(f"{name} must be a fraction of the steps in [0, 1], got {value!r} "
                             "(e.g. --lr-warmup 0.05 --lr-decay 0.2; 0 turns it off)")
    if lr_warmup + lr_decay > 1:
        raise ValueError(f"lr_warmup + lr_decay = {lr_warmup} + {lr_decay} is more than the whole run; "
                         "make them sum to at most 1")


@dataclass
class TrainConfig:
    """One MLSAE training run. Defaults are the paper's (PAPER.md §1); presets shrink them."""

    # One comment per field: it is the field's --help in the CLI (generated from this class and the nested ones).
    model: str = "pythia-70m"  # registry name (pythia-70m, zoo-m, ...), Hugging Face id or local folder
    sae: SAEHyperparameters = field(default_factory=SAEHyperparameters)  # R, k, AuxK, dead latents, encoder init
    lens: LensSettings = field(default_factory=LensSettings)  # whether to train behind the tuned lens
    layers: list[int] | None = None  # comma-separated, e.g. 3: a single-layer SAE; default every layer (the MLSAE)
    data: str = "monology/pile-uncopyrighted"  # 'offline'; a folder of train.jsonl/.txt (test.* for eval; .zst/.gz too, or train/ shards: the Pile's layout), or one such file; or a Hugging Face data set
    seq_len: int = 2048  # tokens per sequence (at most the model's context)
    batch_size: int = 64  # sequences per optimiser step (x grad_accum)
    grad_accum: int = 1  # micro-batches per optimiser step
    max_tokens: int = 1_000_000_000  # training tokens (sequence positions)
    lr: float = 1e-4  # Adam learning rate (the peak, with a warm-up or decay)
    lr_warmup: float = 0.0  # fraction of the steps over which the lr rises linearly to lr (paper: 0)
    lr_decay: float = 0.0  # fraction of the steps, at the end, over which the lr falls linearly towards 0 (paper: 0)
    adam_eps: float = 6.25e-10  # Adam epsilon
    seed: int = 42  # initialisation and data order
    device: str = "cpu"  # cpu, cuda, cuda:1, ...
    autocast: Literal["fp32", "bf16", "fp16"] = "fp32"  # fp16: CUDA only, with loss scaling
    checkpoint_every: int = 500  # optimiser steps between checkpoints (resume from the last)
    log_every: int = 10  # optimiser steps between lines of metrics.jsonl
    preset: str = "paper"  # the preset these values started from (paper | default | tiny)
    tracker: Literal["none", "wandb"] = "none"  # wandb: also log the metrics to Weights & Biases (WANDB_MODE=offline needs no network)
    deterministic: bool = False  # ask torch for deterministic algorithms (CUDA: repeatable runs, slower; CPU already is)

    def __post_init__(self):
        for name, kind in (("sae", SAEHyperparameters), ("lens", LensSettings)):
            if not isinstance(getattr(self, name), kind):  # a dict from JSON: TrainConfig.from_dict routes it
                raise ValueError(f"TrainConfig.{name} must be a {kind.__name__}, got {type(getattr(self, name)).__name__}; "
                                 "build the config with TrainConfig.from_dict(...) or config_from_preset(...)")
        for name in ("seq_len", "batch_size", "grad_accum", "max_tokens", "checkpoint_every", "log_every", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed} (torch seeds are unsigned)")
        for name in ("seq_len", "batch_size", "grad_accum", "max_tokens", "checkpoint_every", "log_every"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.max_tokens < self.tokens_per_step:  # one step is the least a run trains: never exceed a budget silently
            raise ValueError(
                f"max_tokens={self.max_tokens:,} is less than one training step ({self.batch_size} sequences x "
                f"{self.seq_len} positions x grad_accum {self.grad_accum} = {self.tokens_per_step:,} tokens); lower "
                f"batch_size or seq_len (e.g. --batch-size 8 --seq-len 256: 2,048-token steps) or raise max_tokens")
        check_choices(self)  # every Literal field, by one rule
        if self.autocast == "fp16" and not self.device.startswith("cuda"):
            raise ValueError("autocast='fp16' needs a CUDA device; use 'bf16' or 'fp32' on CPU")
        for name in ("lr", "adam_eps"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be a positive finite number, got {value!r}")
        check_schedule(self.lr_warmup, self.lr_decay)
        if self.tracker == "wandb":
            if importlib.util.find_spec("wandb") is None:
                raise ValueError("tracker='wandb' but wandb is not installed: pip install -e '.[tracking]' "
                                 "(or use tracker='none'; metrics.jsonl is written either way)")
        if self.layers is not None:
            check_unique_layers(self.layers)
        check_device(self.device)
        self.model = canonical_model_name(self.model)  # a local folder by its absolute path; unknown names fail here

    @property
    def tokens_per_step(self) -> int:
        return self.seq_len * self.batch_size * self.grad_accum

    @property
    def total_steps(self) -> int:
        return max(1, self.max_tokens // self.tokens_per_step)

    def lr_at(self, step: int) -> float:
        """The learning rate of optimiser step ``step`` (0-based): linear warm-up, constant, linear decay. A pure
        function of the step, so a resumed run needs no scheduler state."""
        total = self.total_steps
        warm, decay = round(self.lr_warmup * total), round(self.lr_decay * total)
        factor = 1.0
        if warm and step < warm:
            factor = (step + 1) / warm
        if decay and step >= total - decay:
            factor = min(factor, (total - step) / decay)
        return self.lr * factor

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainConfig:
        """A config from flat field names (``k=4, tuned_lens=True``: the CLI's, the presets', a notebook's) or from
        :meth:`to_dict`'s nested form; an unknown name fails with the names there are."""
        top: dict[str, Any] = {}
        nested: dict[str, dict[str, Any]] = {name: {} for name in NESTED}
        for name, value in values.items():
            if name in NESTED:
                given = value if isinstance(value, Mapping) else dataclasses.asdict(value)
                nested[name].update(given)
            elif name in _OWNER:
                nested[_OWNER[name]][name] = value
            elif name in _TOP:
                top[name] = value
            else:
                raise ValueError(f"unknown training setting {name!r}; the settings are: {', '.join(flat_fields())}")
        for name, kind in NESTED.items():
            unknown = set(nested[name]) - {f.name for f in dataclasses.fields(kind)}
            if unknown:
                raise ValueError(f"unknown {name} setting(s) {sorted(unknown)} for {kind.__name__}")
        return cls(**top, sae=SAEHyperparameters(**nested["sae"]), lens=LensSettings(**nested["lens"]))

    def to_dict(self) -> dict:
        """The nested record (``{"sae": {...}, "lens": {...}, ...}``) that checkpoints and provenance store."""
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, Any]:
        """Every field by its flat name, one level (what :meth:`from_dict` takes and the cache key hashes)."""
        values = dataclasses.asdict(self)
        for name in NESTED:
            values.update(values.pop(name))
        return {name: values[name] for name in flat_fields()}

    @classmethod
    def choices(cls) -> dict[str, tuple]:
        """The fields whose type is a ``Literal`` (here and in the nested records), with their allowed values (the
        CLI's choices; :func:`mlsae.sae.config.check_choices` validates them)."""
        return {name: options for owner in (cls, *NESTED.values()) for name, options in literal_choices(owner).items()}

    @classmethod
    def field_help(cls) -> dict[str, str]:
        """Each field's trailing comment, read by simple-parsing as sparsify's and tuned-lens's CLIs read theirs:
        the CLI's --help, written once, beside the field (in this class or the nested one that defines it)."""
        found = {name: get_attribute_docstring(owner, name).comment_inline for name, (owner, _) in flat_fields().items()}
        return {name: text.strip() for name, text in found.items() if text}

    def sae_config(self, d_model: int, layers: list[int]) -> SAEConfig:
        """The SAE's own configuration: this run's SAE fields, for a model of width ``d_model``."""
        return self.sae.sae_config(d_model, layers)

    def lens_kwargs(self) -> dict:
        """What selects the tuned lens (:func:`mlsae.models.lens_training.residual_lens_for`): the one definition that
        training and every evaluation of this SAE share, so they can never map into different bases."""
        return dict(data=self.data, seed=self.seed, train_tokens=self.lens.lens_tokens)

    def cache_key(self, identity: dict) -> str:
        """A readable, stable name for this configuration's SAE in the shared cache: a pure function of the
        configuration and ``identity``, what its inputs are (:func:`mlsae.training.identity.identify`, computed
        once per run).

        Everything that changes the trained weights is hashed (:func:`mlsae.core.cache.key`), including the
        identity of the model's weights and of the text, not just their names; ``device``, logging and
        checkpoint cadence are not.
        """
        d = self.flat()  # flat, as before the nesting: the same settings keep the same key
        at_default = [name for name in SCHEDULE_FIELDS if getattr(self, name) == 0]  # a constant lr: the old key
        for name in (*NOT_IN_WEIGHTS, *self.sae.defaults_left(), *at_default):  # and the crosscoder's fields at theirs
            d.pop(name)
        if not self.lens.tuned_lens:
            d.pop("lens_tokens")
        elif identity.get("lens_identity") is not None:  # the pretrained lens, not a budget
            d.pop("lens_tokens")
            d["lens_identity"] = identity["lens_identity"]
        d.update(model_identity=identity["model_identity"], data_identity=identity["data_identity"])
        where = "all" if self.layers is None else "L" + "-".join(map(str, self.layers))
        lens = "-lens" if self.lens.tuned_lens else ""
        size = f"x{self.sae.expansion_factor}" if self.sae.n_latents is None else f"m{self.sae.n_latents}"
        kind = "" if self.sae.architecture == "mlsae" else f"-crosscoder{'-l1' if self.sae.sparsity == 'l1' else ''}"
        return f"{safe_name(self.model)}{kind}-{size}-k{self.sae.k}-{where}{lens}-{key('sae', d)}"


# The nested records and which flat names each defines.
NESTED: dict[str, type] = {"sae": SAEHyperparameters, "lens": LensSettings}
_OWNER = {f.name: name for name, kind in NESTED.items() for f in dataclasses.fields(kind)}
_TOP = tuple(f.name for f in dataclasses.fields(TrainConfig) if f.name not in NESTED)


@functools.cache
def flat_fields() -> dict[str, tuple[type, Any]]:
    """Every flat field name, in declaration order, with the class that declares it and its type (computed once:
    the classes do not change)."""
    hints = {owner: typing.get_type_hints(owner) for owner in (TrainConfig, *NESTED.values())}
    found: dict[str, tuple[type, Any]] = {}
    for f in dataclasses.fields(TrainConfig):
        owner = NESTED.get(f.name, TrainConfig)
        for g in dataclasses.fields(owner) if owner is not TrainConfig else [f]:
            found[g.name] = (owner, hints[owner][g.name])
    return found


def field_default(name: str) -> Any:
    """The declared default of a flat field (the CLI's help shows it)."""
    owner = flat_fields()[name][0]
    return next(f.default for f in dataclasses.fields(owner) if f.name == name)


def config_from_preset(preset: str = "default", **overrides) -> TrainConfig:
    """A TrainConfig from a named preset, with explicit overrides applied on top.

    Without ``data`` the model's own text (:func:`mlsae.core.presets.default_data`: the Pile for a hub model
    under every preset). A preset's ``seq_len`` longer than the model's context (GPT-2: 1024 positions, the ``paper``
    preset: 2048) is shortened to the context; an explicit ``seq_len`` is kept, and refused here when the registry
    knows the context is shorter (else :func:`train_many` checks it against the loaded model).
    """
    if preset not in TRAIN_PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(TRAIN_PRESETS)}")
    values = {**TRAIN_PRESETS[preset], "preset": preset, **overrides}
    if overrides.get("data") is None and "model" in overrides:
        values["data"] = default_data(overrides["model"], resolve_model(overrides["model"]).kind)
    if "model" in overrides:
        context = model_context(overrides["model"])
        if "seq_len" in overrides:  # said at once, before the budget is checked against it
            check_seq_len(overrides["seq_len"], context, overrides["model"])
        elif context is not None:
            values["seq_len"] = min(values.get("seq_len", field_default("seq_len")), context)
    return TrainConfig.from_dict(values)


# Fields that must agree for SAEs to share one pass of the language model over one token stream.
STREAM_FIELDS = ("model", "data", "seq_len", "batch_size", "grad_accum", "max_tokens", "device")
