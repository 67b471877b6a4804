"""One experiment = one (model, R, k, lens) setting; what every notebook starts from.

An :class:`Experiment` validates its parameters before doing any work (so a bad papermill
``-p`` fails in the first cell). Work is called by name: :meth:`Experiment.train` trains (or loads) the SAE
and prepares its lens, and each statistic (:meth:`~Experiment.evaluate`, :meth:`~Experiment.distributions`,
...) calls it first; the properties ``sae`` and ``lens`` only read what exists. Everything expensive is
cached under ``$MLSAE_HOME`` keyed by the configuration, so notebooks run in order train each SAE once, and
a notebook run alone trains what it needs. :meth:`Experiment.load_lm` is a method for the same reason: it builds
a zoo model the cache lacks, as :func:`mlsae.models.registry.load_model` does.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from torch import Tensor

from mlsae.analysis.distributions import (
    PAPER_WINDOW,
    LayerDistributions,
    ResidualGeometry,
    layer_distributions,
    prompt_distribution,
    residual_geometry,
)
from mlsae.analysis.examples import MaxExamples, max_examples
from mlsae.analysis.metrics import EvalResult, evaluate
from mlsae.core.cache import cached
from mlsae.core.paths import mlsae_home, safe_name
from mlsae.core.presets import TRAIN_PRESETS, default_data
from mlsae.data.sources import data_identity, load_text
from mlsae.data.tokens import token_batches
from mlsae.interop.dashboard import DashboardData, dashboard_data, write_dashboard
from mlsae.models.lens import IDENTITY, IdentityLens, ResidualLens
from mlsae.models.lens_training import lens_fields, residual_lens_for
from mlsae.models.registry import (
    canonical_model_name,
    check_device,
    is_available,
    load_model,
    model_context,
    model_identity,
    model_shape,
    resolve_model,
)
from mlsae.models.residuals import check_unique_layers
from mlsae.sae.architectures import load_sae
from mlsae.sae.config import CONFIG_FILE, SAEHyperparameters
from mlsae.sae.io import sae_folder, sae_shape
from mlsae.sae.model import MLSAE
from mlsae.sae.origin import check_model_of_sae, lens_of_sae, model_of_sae
from mlsae.studies.parameters import from_json_text, list_parameter, preset_settings, typed_parameter
from mlsae.training.config import TrainConfig, check_schedule, config_from_preset
from mlsae.training.identity import sae_key
from mlsae.training.store import ensure_trained, train_or_load

IOI_PROMPT = "When Mary and John went to the store, John gave a drink to"


def _named_set(base: str, chosen, preset) -> str:
    """``base`` when ``chosen`` is the preset's set of models, else ``base`` plus a name for ``chosen``."""
    if chosen == preset:
        return base
    names = "+".join(safe_name(m) for m in chosen) if isinstance(chosen, list) else ""
    if names and len(names) <= 60:
        return f"{base}-{names}"
    return f"{base}-set-{hashlib.sha1(json.dumps(chosen, sort_keys=True).encode()).hexdigest()[:10]}"


class Experiment:
    """One setting as a notebook's ``parameters`` cell gives it (``None``: "from the preset"), validated and
    resolved at construction: every attribute below holds its final, typed value before any work."""

    PARAMETERS = ("model", "preset", "expansion_factor", "k", "tuned_lens", "layers", "data", "train_tokens",
                  "eval_tokens", "analysis_tokens", "seq_len", "batch_size", "seed", "device", "progress",
                  "pretrained_sae", "architecture", "n_latents", "k_aux", "lr", "lr_warmup", "lr_decay")

    def __init__(
        self,
        model: str | None = None,  # registry name, Hugging Face id or local folder; None: the preset's
        preset: str = "default",
        expansion_factor: int | None = None,  # R; None: the preset's
        k: int = 32,
        tuned_lens: bool = False,
        layers: list[int] | None = None,  # None: every layer
        data: str | None = None,  # None: the model's own text (presets.default_data)
        train_tokens: int | None = None,  # None: the train preset's budget
        eval_tokens: int | None = None,
        analysis_tokens: int | None = None,
        seq_len: int | None = None,  # positions per sequence (training and held-out text); None: the preset's, cut to the context
        batch_size: int | None = None,  # sequences per batch (training and held-out text); None: the presets'
        seed: int = 42,
        device: str = "cpu",
        progress: bool = True,
        pretrained_sae: str | None = None,  # analyse this MLSAE (run folder, SAE folder, hub id) instead of training one
        architecture: str = "mlsae",  # or "crosscoder" (mlsae.sae.crosscoder; k is then per token)
        n_latents: int | None = None,  # None: expansion_factor x d_model
        k_aux: int | None = None,  # AuxK latents; None: the train preset's
        lr: float | None = None,  # None: the train preset's (the peak, under a schedule)
        lr_warmup: float | None = None,  # fraction of the steps; None: the train preset's (0: none)
        lr_decay: float | None = None,  # fraction of the steps, at the end; None: the train preset's (0: none)
    ):
        self.preset: str = typed_parameter("preset", preset, str)
        p = preset_settings(self.preset)
        self.layers, self.train_tokens, self.batch_size, self.progress = layers, train_tokens, batch_size, progress
        self.pretrained_sae = pretrained_sae
        self._sae_folder: Path | None = None
        self._sae: MLSAE | None = None
        self._lm: tuple[Any, Any] | None = None
        self._lens: ResidualLens | IdentityLens | None = None
        sae_d_model = None
        if pretrained_sae is not None:  # its shape, and its model when not given, before any work
            self._sae_folder = sae_folder(typed_parameter("pretrained_sae", pretrained_sae, str))
            model = model or model_of_sae(pretrained_sae, self._sae_folder)
            check_model_of_sae(pretrained_sae, self._sae_folder, model)
            sae_d_model, n_latents, k = sae_shape(self._sae_folder)
            if n_latents % sae_d_model:
                raise ValueError(f"{pretrained_sae}: {n_latents} latents is not a multiple of d_model {sae_d_model}")
            expansion_factor = n_latents // sae_d_model
            sae_lens = lens_of_sae(pretrained_sae, self._sae_folder)
            if tuned_lens is True and not sae_lens:
                raise ValueError(f"{pretrained_sae} was trained on the plain residual stream, not through a "
                                 "tuned lens; drop tuned_lens=True")
            tuned_lens = sae_lens  # analysed as it was trained
        self.model: str = canonical_model_name(typed_parameter("model", model if model is not None else p["model"], str))
        ef = p["expansion_factor"] if expansion_factor is None else expansion_factor
        self.expansion_factor: int = typed_parameter("expansion_factor", ef, int)
        self.k: int = typed_parameter("k", k, int)
        self.tuned_lens: bool = typed_parameter("tuned_lens", tuned_lens, bool)
        self.seed: int = typed_parameter("seed", seed, int)
        self.architecture: str = typed_parameter("architecture", architecture, str)
        if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float)) or lr <= 0):
            raise ValueError(f"parameter lr={lr!r} should be a positive number (e.g. -p lr 0.001) or None")
        self.lr: float | None = None if lr is None else float(lr)
        preset_train = TRAIN_PRESETS[p["train"]]
        check_schedule(preset_train.get("lr_warmup", TrainConfig.lr_warmup) if lr_warmup is None else lr_warmup,
                       preset_train.get("lr_decay", TrainConfig.lr_decay) if lr_decay is None else lr_decay)
        self.lr_warmup: float | None = lr_warmup
        self.lr_decay: float | None = lr_decay
        given_latents = None if n_latents is None else typed_parameter("n_latents", n_latents, int)
        self.k_aux: int | None = None if k_aux is None else typed_parameter("k_aux", k_aux, int)
        self.device: str = typed_parameter("device", device, str)
        given = dict(train_tokens=train_tokens, eval_tokens=eval_tokens, analysis_tokens=analysis_tokens,
                     seq_len=seq_len, batch_size=batch_size)
        for name, value in given.items():
            if value is not None and (typed_parameter(name, value, int) <= 0):
                raise ValueError(f"{name} must be a positive number, got {value}")
        self.eval_tokens: int = eval_tokens or p["eval_tokens"]
        self.analysis_tokens: int = analysis_tokens or p["analysis_tokens"]
        SAEHyperparameters(expansion_factor=self.expansion_factor, k=self.k, n_latents=given_latents,  # their rules,
                           architecture=self.architecture,  # defined once, before any work
                           k_aux=SAEHyperparameters.k_aux if k_aux is None else k_aux)

        source = resolve_model(self.model)  # unknown names fail here, before any work
        self.data: str = data or default_data(self.model, source.kind)
        self._given_seq_len = seq_len  # what with_model passes on (another model has another context)
        context = model_context(self.model)
        if seq_len is None:
            seq_len = min(p["seq_len"], context) if context else p["seq_len"]
        elif context and seq_len > context:
            raise ValueError(f"seq_len={seq_len} exceeds {self.model}'s context of {context} positions")
        self.seq_len: int = seq_len
        shape = model_shape(self.model)  # (n_layers, d_model) without loading weights, or None
        # the SAE's width, known before any work (None: a model whose shape the registry cannot tell)
        width = sae_d_model if sae_d_model is not None else shape[1] if shape is not None else None
        self.n_latents: int | None = given_latents if given_latents is not None else \
            None if width is None else self.expansion_factor * width
        self._given_latents = given_latents
        if shape is not None and sae_d_model is not None and sae_d_model != shape[1]:
            raise ValueError(f"{self.pretrained_sae} reads {sae_d_model}-dimensional vectors but "
                             f"{self.model} has d_model {shape[1]}; pass the model it was trained on (-p model ...)")
        if shape is not None:
            n_layers, d_model = shape
            if self.n_latents is not None and self.k > self.n_latents:
                raise ValueError(
                    f"k={self.k} exceeds the number of latents {self.n_latents} "
                    f"(expansion_factor {self.expansion_factor} x d_model {d_model}, or n_latents); lower k or raise "
                    "expansion_factor"
                )
            if self.layers is not None and any(not 0 <= l < n_layers for l in self.layers):
                raise ValueError(f"layers {self.layers} out of range for {self.model} with {n_layers} layers")
        if self.layers is not None:
            check_unique_layers(self.layers)
        check_device(self.device)

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.PARAMETERS)
        return f"Experiment({shown})"

    # ---- naming and variants ---------------------------------------------------------------

    @property
    def slug_without_model(self) -> str:
        """File-name stem for figures that span several models."""
        return f"{self.preset}-x{self.expansion_factor}-k{self.k}" + ("-lens" if self.tuned_lens else "")

    def series_slug(self, models: list[str], base: str | None = None) -> str:
        """File-name stem for figures over the models ``models``: ``base`` (default
        :attr:`slug_without_model`) for the preset's series, and the model names (or their hash, when
        long) appended for any other set, so a series with an extra model never takes the preset's name."""
        return _named_set(base or self.slug_without_model, sorted(models), sorted(self.settings["models"]))

    def families_slug(self, families: dict[str, list[str]]) -> str:
        """File-name stem for notebook 12's figures: as :meth:`series_slug`, for families of models."""
        label = {f: sorted(ms) for f, ms in families.items()}
        preset = {f: sorted(ms) for f, ms in self.settings["families"].items()}
        return _named_set(self.slug_without_model, label, preset)

    @property
    def slug(self) -> str:
        """File-name stem for figures of this model."""
        where = "" if self.layers is None else "-L" + "-".join(map(str, self.layers))
        lens = "-lens" if self.tuned_lens else ""
        pretrained = "" if self.pretrained_sae is None else "-pretrained"  # never a trained SAE's figure name
        kind = "" if self.architecture == "mlsae" else f"-{self.architecture}"
        size = f"x{self.expansion_factor}" if self._given_latents is None else f"m{self._given_latents}"
        return f"{safe_name(self.model)}{kind}-{size}-k{self.k}{where}{lens}{pretrained}"

    def with_model(self, model: str, **changes) -> Experiment:
        """The same experiment for another model (or other changes), validated afresh."""
        keep = {name: getattr(self, name) for name in self.PARAMETERS}
        keep.update(model=model, data=None if model != self.model else self.data, seq_len=self._given_seq_len,
                    pretrained_sae=self.pretrained_sae if model == self.model else None,
                    n_latents=self._given_latents if model == self.model else None)  # another width: R decides
        keep.update(changes)
        return Experiment(**keep)

    # ---- the pieces, built lazily and cached ------------------------------------------------

    @property
    def settings(self) -> dict:
        return preset_settings(self.preset)

    def load_lm(self) -> tuple[Any, Any]:
        """(model, tokenizer), loaded through the registry once and kept. A method, not a property: a zoo model
        missing from the cache is trained here first (minutes), and a missing hub model raises."""
        if self._lm is None:
            self._lm = load_model(self.model, device=self.device)
        return self._lm

    def prepare_lens(self):
        """The tuned lens the SAE works behind (loaded, or trained once and cached when this machine has none),
        or the identity lens (no lens). Called by :meth:`train` and the statistics; then :attr:`lens` has it."""
        if self._lens is None:
            if not self.tuned_lens:
                self._lens = IDENTITY
            else:
                model, tokenizer = self.load_lm()  # the lens the SAE was trained in: the same TrainConfig chooses it
                self._lens = residual_lens_for(self.model, model, tokenizer, **self.train_config().lens_kwargs(),
                                               progress=self.progress)
        return self._lens

    @property
    def lens(self):
        """The lens :meth:`prepare_lens` made; reading it never trains one."""
        if self._lens is None:
            raise RuntimeError("Experiment.lens: no lens prepared yet; call exp.prepare_lens() (exp.train() and every "
                               "statistic do)")
        return self._lens

    def train_config(self):
        overrides = dict(
            model=self.model, expansion_factor=self.expansion_factor, k=self.k, tuned_lens=self.tuned_lens,
            layers=self.layers, data=self.data, seed=self.seed, device=self.device, architecture=self.architecture,
        )
        if self._given_latents is not None:
            overrides["n_latents"] = self._given_latents
        if self.lr is not None:
            overrides["lr"] = self.lr
        if self.k_aux is not None:
            overrides["k_aux"] = self.k_aux
        for name in ("lr_warmup", "lr_decay"):
            if getattr(self, name) is not None:
                overrides[name] = getattr(self, name)
        if self.train_tokens:
            overrides["max_tokens"] = self.train_tokens
        if self._given_seq_len is not None:
            overrides["seq_len"] = self.seq_len
        if self.batch_size is not None:
            overrides["batch_size"] = self.batch_size
        return config_from_preset(self.settings["train"], **overrides)

    def train(self) -> MLSAE:
        """The SAE, in eval mode: ``pretrained_sae`` loaded, or trained from :meth:`train_config` unless the shared
        store has it (once, cached: a second call, or another notebook, loads it), with its lens prepared."""
        if self._sae is None:
            if self._sae_folder is None:  # trained here (or found in the store), already on device
                self._sae = train_or_load(self.train_config(), progress=self.progress)[0].eval()
            else:
                self._sae = self._load_sae()
        self.prepare_lens()
        return self._sae

    @property
    def sae(self) -> MLSAE:
        """The SAE :meth:`train` gave, or the one the store already holds; reading it never trains."""
        if self._sae is None:
            self._sae = self._load_sae()
        return self._sae

    def _load_sae(self) -> MLSAE:
        """The pretrained SAE, or the one in the store (never trained here), on ``device``, in eval mode."""
        folder = self._sae_folder or self.out_dir / "sae"
        if not (folder / CONFIG_FILE).is_file():
            raise RuntimeError(f"Experiment.sae: {self.model}'s SAE is not trained yet ({folder} is missing); call "
                               "exp.train() first (every statistic does)")
        return load_sae(folder).to(self.device).eval()

    @property
    def out_dir(self) -> Path:
        """Where this SAE's statistics are cached: its training run's folder, or for a pretrained SAE a folder
        named after it and keyed by the contents of its files."""
        if self.pretrained_sae is not None:
            digest = data_identity(str(self._sae_folder)).partition(":")[2]
            return mlsae_home() / "saes" / f"pretrained-{safe_name(self.pretrained_sae)}-{digest}"
        return mlsae_home() / "saes" / sae_key(self.train_config())

    def train_summary(self) -> dict:
        """Steps, tokens and wall-clock seconds of the training run that produced the cached SAE ({} when it was
        not trained here, or not yet: this reads, never trains)."""
        if self.pretrained_sae is not None:
            return {}
        path = self.out_dir / "train_summary.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def training_log(self) -> list[dict]:
        """The training run's metrics, a row per logged step ([] when it was not trained here, or not yet)."""
        if self.pretrained_sae is not None:
            return []
        path = self.out_dir / "metrics.jsonl"
        return [json.loads(l) for l in path.read_text().splitlines() if l.strip()] if path.exists() else []

    def batches(self, tokens: int, split: str = "test") -> Iterator[Tensor]:
        """Token batches [batch, seq_len] of held-out text (``split='test'``)."""
        _, tokenizer = self.load_lm()
        dataset = load_text(self.data, split=split, streaming=True)
        return token_batches(dataset, tokenizer, self.seq_len, self.eval_batch_size, max_tokens=tokens)

    @property
    def eval_batch_size(self) -> int:
        """Sequences per batch of held-out text: ``batch_size`` when given, else the notebook preset's."""
        return self.batch_size or self.settings["batch_size"]

    # ---- statistics, cached next to the SAE --------------------------------------------------

    def _stream_fields(self, tokens: int) -> dict:
        """What selects the held-out token stream a statistic is computed on (part of its cache key)."""
        return dict(tokens=tokens, data=data_identity(self.data), seq_len=self.seq_len,
                    batch_size=self.eval_batch_size)

    def evaluate(self, downstream: bool = True, layers: list[int] | None = None):
        """Metrics on held-out text; ``layers`` applies the SAE elsewhere than where it was trained."""
        fields = dict(self._stream_fields(self.eval_tokens), downstream=downstream, layers=layers)
        return cached(self.out_dir, "eval", fields, EvalResult.load, lambda: evaluate(
            *self.load_lm(), self.train(), self.batches(self.eval_tokens), lens=self.prepare_lens(), downstream=downstream, layers=layers,
            progress=self.progress))

    def distributions(self, layers: list[int] | None = None, window: int | None = None):
        """Distributions over layers; ``layers`` (e.g. every layer for a single-layer SAE) as in :meth:`evaluate`;
        ``window``: tokens per window of the paper's estimator (default 2048, theirs)."""
        window = window or PAPER_WINDOW
        fields = dict(self._stream_fields(self.analysis_tokens), layers=layers, window=window)
        return cached(self.out_dir, "distributions", fields, LayerDistributions.load, lambda: layer_distributions(
            *self.load_lm(), self.train(), self.batches(self.analysis_tokens), lens=self.prepare_lens(), layers=layers,
            progress=self.progress, window=window))

    def prompt_distribution(self, prompt: str = IOI_PROMPT):
        """One prompt's distributions over layers (computed each time: one forward pass)."""
        model, tokenizer = self.load_lm()
        return prompt_distribution(model, tokenizer, self.train(), prompt, lens=self.prepare_lens())

    def check_examples(self, latent: int | None, n_examples: int) -> None:
        """Notebook 11's own parameters, checked in its first cell (before the SAE is trained): ``latent`` within
        the SAE's latents (when the shape is known here) and ``n_examples`` a positive integer."""
        typed_parameter("n_examples", n_examples, int)
        if n_examples <= 0:
            raise ValueError(f"n_examples must be positive, got {n_examples} (e.g. -p n_examples 8)")
        if latent is not None:
            typed_parameter("latent", latent, int)
            if latent < 0 or (self.n_latents is not None and latent >= self.n_latents):
                known = f"this SAE has {self.n_latents} latents (0 ... {self.n_latents - 1})" if self.n_latents else \
                    "latents are numbered from 0"
                raise ValueError(f"latent {latent} out of range: {known}; leave latent=None for the most spread one")

    def max_examples(self, n_examples: int = 8):
        """PAPER.md §4 item 14: the top ``n_examples`` activations of every (layer, latent) and the
        analysed token ids (:class:`mlsae.analysis.examples.MaxExamples`), cached next to the SAE."""
        fields = dict(self._stream_fields(self.analysis_tokens), n_examples=n_examples)
        return cached(self.out_dir, "examples", fields, MaxExamples.load, lambda: max_examples(
            *self.load_lm(), self.train(), self.batches(self.analysis_tokens), lens=self.prepare_lens(), n_examples=n_examples,
            progress=self.progress))

    def dashboard(self, out: str | Path | None = None, n_examples: int = 8):
        """The latent dashboard of this SAE, a static site (:func:`mlsae.interop.dashboard.write_dashboard`): its data
        (every latent's distribution over layers, top examples per layer, nearest tokens) cached next to the SAE,
        the site written into ``out`` (default: ``<out_dir>/dashboard``). Returns the
        :class:`~mlsae.interop.dashboard.DashboardSite`; open its ``index`` in a browser."""
        typed_parameter("n_examples", n_examples, int)
        fields = dict(self._stream_fields(self.analysis_tokens), n_examples=n_examples)
        data = cached(self.out_dir, "dashboard", fields, DashboardData.load, lambda: dashboard_data(
            *self.load_lm(), self.train(), self.batches(self.analysis_tokens), lens=self.prepare_lens(),
            n_examples=n_examples, progress=self.progress))
        return write_dashboard(data, Path(out) if out is not None else self.out_dir / "dashboard",
                               title=f"{self.model}: MLSAE latents", meta={"experiment": self.slug})

    def geometry_fields(self) -> dict:
        """What :meth:`geometry` depends on (its cache key): the model's weights, the text and the lens."""
        lens = lens_fields(self.model, **self.train_config().lens_kwargs()) if self.tuned_lens else None
        return dict(self._stream_fields(self.eval_tokens), model=model_identity(self.model), lens=lens)

    def geometry(self):
        """Adjacent-layer cosine similarity and norms of the residual stream (no SAE involved)."""
        return cached(mlsae_home() / "geometry" / safe_name(self.model), "geometry", self.geometry_fields(), ResidualGeometry.load,
                      lambda: residual_geometry(*self.load_lm(), lambda: self.batches(self.eval_tokens), lens=self.prepare_lens(),
                                                progress=self.progress))


def train_together(experiments: list[Experiment]) -> None:
    """Train the SAEs these experiments need and the cache lacks, one pass of each language model for
    all SAEs that share its token stream (e.g. with and without the lens, a sweep, the single-layer
    baselines); identical weights to training each alone (:func:`mlsae.training.train.train_many`)."""
    todo = [e for e in experiments if e.pretrained_sae is None]  # a pretrained SAE is loaded, never trained
    if todo:
        ensure_trained([e.train_config() for e in todo], progress=todo[0].progress)


def series_models(exp: Experiment, models: list[str] | str | None = None) -> list[str]:
    """The model-size series for ``exp``: ``models`` (a list, or its JSON text) or the preset's, those
    loadable here, plus ``exp.model``; ordered by depth then width. An unknown name fails at once; hub
    models that are not cached are left out (and said so), zoo models are always available."""
    models = list_parameter("models", models)
    for m in models or ():
        resolve_model(m)  # an unknown name fails here, before any work
    wanted = list(models) if models is not None else list(exp.settings["models"])
    if exp.model not in wanted:
        wanted.append(exp.model)
    missing = [m for m in wanted if m != exp.model and not is_available(m)]
    if missing:
        print(f"not on this machine, left out of the series: {', '.join(missing)}")
    present = [m for m in wanted if m not in missing]
    return sorted(present, key=lambda m: model_shape(m) or (0, 0))


def family_models(exp: Experiment, families: dict[str, list[str]] | str | None = None) -> dict[str, list[str]]:
    """Notebook 12's families: ``families`` (a dict, or its JSON text) or the preset's, every name checked
    at once, those not on this machine left out (and said so), each family ordered by depth then width."""
    families = from_json_text("families", families, "a mapping", """-p families '{"GPT-2": ["gpt2"]}'""")
    wanted = families if families is not None else exp.settings["families"]
    if not isinstance(wanted, dict) or not wanted:
        raise ValueError(f"parameter families={wanted!r} should map a family name to a list of models")
    wanted = {f: list_parameter(f"families[{f!r}]", ms) for f, ms in wanted.items()}
    for m in (m for ms in wanted.values() for m in ms):
        resolve_model(m)  # an unknown name fails here, before any work
    missing = [m for ms in wanted.values() for m in ms if not is_available(m)]
    if missing:
        print(f"not on this machine, left out: {', '.join(missing)}")
    present = {f: sorted((m for m in ms if m not in missing), key=lambda m: model_shape(m) or (0, 0))
               for f, ms in wanted.items()}
    return {f: ms for f, ms in present.items() if ms}
