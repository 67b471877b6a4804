"""Train an MLSAE: text -> model -> residual streams of all layers -> (tuned lens) -> SAE.

Everything streams: a batch of token sequences is run through the frozen language model,
the output of every block is collected as ``[layer, token, d_model]`` (special tokens
dropped), optionally mapped by the tuned lens, and used for one SAE step. Nothing is stored
on disk but checkpoints and a metrics log.

Resuming is exact and costs no re-reading: a checkpoint holds the SAE, the optimiser, the loss
scaler, the dead-latent counters and the position of the token stream
(:meth:`mlsae.data.sources.TokenStream.state_dict`), so a resumed run continues where the last one stopped and
ends with the same weights as an uninterrupted run (on CPU, bit for bit; see README *Determinism*).

Under ``torchrun`` (or :func:`train_parallel`) the same code trains data-parallel; how the
ranks share the work is written down in :mod:`mlsae.training.distributed`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from mlsae.core.paths import atomic_dir, atomic_write_text, load_result, mlsae_home, run_lock, safe_name, save_result
from mlsae.core.presets import TRAIN_PRESETS, default_data
from mlsae.core.progress import bar as progress_bar
from mlsae.core.seeding import seed_everything
from mlsae.data.sources import load_text, token_batches
from mlsae.models.lens import IDENTITY
from mlsae.models.lens_training import lens_record, pretrained_lens_identity, residual_lens_for
from mlsae.models.registry import load_model
from mlsae.models.residuals import check_layers, check_seq_len, check_unique_layers, residual_batches
from mlsae.sae.model import CONFIG_FILE, MLSAE, SAEConfig
from mlsae.sae.pipeline import sae_inputs
from mlsae.training import distributed

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
    k_aux: int = 256  # latents in the auxiliary loss that revives dead latents
    auxk_coef: float = 1 / 32  # weight of that auxiliary loss
    dead_tokens: int = 10_000_000  # a latent silent for this many tokens counts as dead
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
    autocast: str = "fp32"  # fp32 | bf16 | fp16 (fp16: CUDA only, with loss scaling)
    checkpoint_every: int = 500  # optimiser steps between checkpoints (resume from the last)
    log_every: int = 10  # optimiser steps between lines of metrics.jsonl
    preset: str = "paper"  # the preset these values started from (paper | default | tiny)
    # "unit": the paper's initialisation (unit-norm encoder rows, W_dec = W_enc^T). "fit": the same
    # directions, then the encoder scaled on the first batch (MLSAE.fit_encoder_scale_), which short
    # runs need (the offline presets use it; see mlsae.core.presets).
    encoder_init: str = "unit"  # unit (the paper's) | fit (scaled on the first batch)
    tracker: str = "none"  # none | wandb: also log the metrics to Weights & Biases (WANDB_MODE=offline needs no network)
    deterministic: bool = False  # ask torch for deterministic algorithms (CUDA: repeatable runs, slower; CPU already is)

    def __post_init__(self):
        if self.expansion_factor <= 0:
            raise ValueError(f"expansion_factor must be positive, got {self.expansion_factor}")
        if self.k <= 0:
            raise ValueError(f"k must be positive, got {self.k}")
        for name in ("seq_len", "batch_size", "grad_accum", "max_tokens", "checkpoint_every", "log_every", "lens_tokens"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.max_tokens < self.tokens_per_step:  # one step is the least a run trains: never exceed a budget silently
            raise ValueError(
                f"max_tokens={self.max_tokens:,} is less than one training step ({self.batch_size} sequences x "
                f"{self.seq_len} positions x grad_accum {self.grad_accum} = {self.tokens_per_step:,} tokens); lower "
                f"batch_size or seq_len (e.g. --batch-size 8 --seq-len 256: 2,048-token steps) or raise max_tokens")
        if self.encoder_init not in ("unit", "fit"):
            raise ValueError(f"encoder_init must be 'unit' (the paper's) or 'fit', got {self.encoder_init!r}")
        if self.autocast not in DTYPES:
            raise ValueError(f"autocast must be one of {sorted(DTYPES)}, got {self.autocast!r}")
        if self.autocast == "fp16" and not self.device.startswith("cuda"):
            raise ValueError("autocast='fp16' needs a CUDA device; use 'bf16' or 'fp32' on CPU")
        for name in ("lr", "adam_eps"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be a positive finite number, got {value!r}")
        if not math.isfinite(self.auxk_coef) or self.auxk_coef < 0:
            raise ValueError(f"auxk_coef must be a finite number >= 0, got {self.auxk_coef!r}")
        if self.tracker not in ("none", "wandb"):
            raise ValueError(f"tracker must be 'none' or 'wandb', got {self.tracker!r}")
        if self.tracker == "wandb":
            import importlib.util

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
    def field_help(cls) -> dict[str, str]:
        """Each field's trailing comment in this class's source: the CLI's --help, written once."""
        import inspect
        import re

        found = (re.match(r"\s+(\w+): [^=]+=[^#]*#\s*(.+)$", line) for line in inspect.getsource(cls).splitlines())
        return {m.group(1): m.group(2).strip() for m in found if m}

    def sae_config(self, d_model: int, layers: list[int]) -> SAEConfig:
        """The SAE's own configuration: this run's SAE fields, for a model of width ``d_model``."""
        return SAEConfig.from_expansion_factor(d_model, self.expansion_factor, self.k, k_aux=self.k_aux,
                                               auxk_coef=self.auxk_coef, dead_tokens=self.dead_tokens, layers=layers)

    def lens_kwargs(self) -> dict:
        """What selects the tuned lens (:func:`mlsae.models.lens_training.residual_lens_for`): the one definition that
        training and every evaluation of this SAE share, so they can never map into different bases."""
        return dict(data=self.data, seed=self.seed, train_tokens=self.lens_tokens)

    def cache_key(self) -> str:
        """A readable, stable name for this configuration's SAE in the shared cache.

        Everything that changes the trained weights is hashed (:func:`mlsae.core.cache.key`), including the
        identity of the model's weights and of the text, not just their names; ``device``, logging and
        checkpoint cadence are not.
        """
        from mlsae.core.cache import key
        from mlsae.data.sources import data_identity
        from mlsae.models.registry import model_identity

        d = self.to_dict()
        for name in NOT_IN_WEIGHTS:
            d.pop(name)
        if not self.tuned_lens:
            d.pop("lens_tokens")
        elif (lens := pretrained_lens_identity(self.model)) is not None:  # the pretrained lens, not a budget
            d.pop("lens_tokens")
            d["lens_identity"] = lens
        d.update(model_identity=model_identity(self.model), data_identity=data_identity(self.data))
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
        from mlsae.models.registry import resolve_model

        values["data"] = default_data(overrides["model"], resolve_model(overrides["model"]).kind)
    if "seq_len" not in overrides and "model" in overrides:
        from mlsae.models.registry import model_context

        context = model_context(overrides["model"])
        if context is not None:
            values["seq_len"] = min(values.get("seq_len", TrainConfig.seq_len), context)
    return TrainConfig(**values)


# --------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    """What a training run returns: the SAE, its folder, steps, tokens, seconds and the logged metrics."""
    sae: MLSAE
    out_dir: Path
    steps: int
    tokens: int
    seconds: float
    metrics: list[dict]


def train(cfg: TrainConfig, out_dir: Path | None = None, *, resume: bool = True, progress: bool = True) -> TrainResult:
    """Train (or resume) an MLSAE and save it to ``out_dir/sae`` with ``save_pretrained``.

    ``out_dir`` defaults to ``$MLSAE_HOME/saes/<cfg.cache_key()>``.
    """
    return train_many([cfg], None if out_dir is None else [out_dir], resume=resume, progress=progress)[0]


def train_parallel(cfg: TrainConfig, nproc_per_node: int, out_dir: Path | None = None, *, resume: bool = True) -> Path:
    """Train ``cfg`` data-parallel in ``nproc_per_node`` processes on this machine, from Python: what
    ``torchrun --standalone --nproc-per-node N -m mlsae train ...`` does (see :mod:`mlsae.training.distributed`).
    Returns the run folder; load the SAE with ``MLSAE.from_pretrained(folder / "sae")``."""
    distributed.check_split(cfg.batch_size, nproc_per_node)
    out_dir = Path(out_dir) if out_dir is not None else mlsae_home() / "saes" / cfg.cache_key()
    distributed.spawn(_train_in_process, nproc_per_node, cfg.to_dict(), str(out_dir), resume)
    return out_dir


def _train_in_process(cfg: dict, out_dir: str, resume: bool) -> None:
    """What each process started by :func:`train_parallel` runs."""
    config = TrainConfig(**cfg)
    with distributed.process_group(config.device):
        train(config, Path(out_dir), resume=resume, progress=False)


# Fields that must agree for SAEs to share one pass of the language model over one token stream.
STREAM_FIELDS = ("model", "data", "seq_len", "batch_size", "grad_accum", "max_tokens", "device")


def train_many(cfgs: list[TrainConfig], out_dirs: list[Path] | None = None, *, resume: bool = True,
               progress: bool = True) -> list[TrainResult]:
    """Train several SAEs on the same token batches with **one** pass of the language model per batch.

    The configurations must agree on :data:`STREAM_FIELDS`; anything else (R, k, layers, lens, lr,
    seed, ...) may differ. Each SAE gets exactly the updates it would get trained alone by
    :func:`train` (same data, same initialisation, same order of operations: tested bit for bit),
    its own folder, log and checkpoints. ``seconds`` in each result is that SAE's own work plus the
    whole model pass, i.e. an estimate of its time trained alone; ``wall_seconds`` in
    ``train_summary.json`` is the shared wall-clock time.

    Launched by ``torchrun`` (several processes), every process calls this with the same arguments and
    trains its shard of each batch (:mod:`mlsae.training.distributed`); rank 0 writes the files.
    """
    if not cfgs:
        return []
    for name in STREAM_FIELDS:
        values = {json.dumps(getattr(c, name)) for c in cfgs}
        if len(values) > 1:
            raise ValueError(f"train_many needs one token stream, but the configurations differ in {name}: "
                             f"{sorted(values)}; train them in separate calls")
    group = distributed.group(cfgs[0].device)
    if group.active:
        distributed.check_split(cfgs[0].batch_size, group.world)
        device = distributed.local_device(cfgs[0].device)
        cfgs = [dataclasses.replace(c, device=device) for c in cfgs]
    out_dirs = [Path(d) for d in out_dirs] if out_dirs is not None else [mlsae_home() / "saes" / c.cache_key() for c in cfgs]
    if len(out_dirs) != len(cfgs) or len(set(out_dirs)) != len(out_dirs):
        raise ValueError("train_many needs one distinct out_dir per configuration")
    # Everything that can fail on bad input fails before anything is written.
    cfg0 = cfgs[0]
    progress = progress and group.main
    with group.main_first():  # rank 0 builds what the cache lacks (a zoo model, a lens); the others load it
        model, tokenizer = load_model(cfg0.model, device=cfg0.device)
        check_seq_len(cfg0.seq_len, model, cfg0.model)
        n_layers = model.config.num_hidden_layers
        layers = [check_layers(c.layers, n_layers) for c in cfgs]
        dataset = load_text(cfg0.data, split="train", streaming=True)  # an empty or missing data set fails here
        lenses = {}
        for c in cfgs:
            if c.tuned_lens and json.dumps(c.lens_kwargs()) not in lenses:
                lenses[json.dumps(c.lens_kwargs())] = residual_lens_for(c.model, model, tokenizer, **c.lens_kwargs(),
                                                                       progress=progress)
    # validated for every SAE before any folder is written
    sae_cfgs = [c.sae_config(model.config.hidden_size, l) for c, l in zip(cfgs, layers, strict=True)]
    with contextlib.ExitStack() as held:
        if group.main:
            for d in sorted(out_dirs):  # one process trains into a folder at a time
                held.enter_context(_take(run_lock(d), d))
        held.enter_context(distributed.stop_on_sigterm(group))
        fresh = [d for d in out_dirs if not d.exists()]
        try:
            results = _train_locked(cfgs, out_dirs, sae_cfgs, model, tokenizer, dataset, lenses, resume, progress,
                                    group)
        except BaseException:
            if group.main:  # a folder this call made and left with nothing to resume from goes again
                for d in fresh:
                    if not (d / "checkpoint" / "state.json").exists() and not (d / "sae" / CONFIG_FILE).exists():
                        shutil.rmtree(d, ignore_errors=True)
            raise
        group.barrier()  # rank 0's files are complete when any rank returns
        return results


def _take(lock, out_dir: Path):
    from filelock import Timeout

    try:
        return lock.acquire(timeout=0)
    except Timeout:
        raise RuntimeError(f"{out_dir} is being trained by another process (lock {lock.lock_file}); wait for it "
                           f"to finish, or train into another folder (--out)") from None


def _train_locked(cfgs, out_dirs, sae_cfgs, model, tokenizer, dataset, lenses, resume, progress,
                  group: distributed.Group) -> list[TrainResult]:
    cfg0 = cfgs[0]
    runs = [_Run(c, d, sc, lenses[json.dumps(c.lens_kwargs())] if c.tuned_lens else IDENTITY, resume, group)
            for c, d, sc in zip(cfgs, out_dirs, sae_cfgs, strict=True)]
    if len({(r.step, json.dumps(r.stream_state, sort_keys=True)) for r in runs}) > 1:
        # resumed from different checkpoints: no shared stream position
        for r in runs:
            r.close()
        return [train_many([r.cfg], [r.out_dir], resume=resume, progress=progress)[0] for r in runs]
    step, stream_state = runs[0].step, runs[0].stream_state

    tokens = token_batches(dataset, tokenizer, cfg0.seq_len, cfg0.batch_size,
                           max_tokens=cfg0.total_steps * cfg0.tokens_per_step, state=stream_state)
    stream = residual_batches(model, tokenizer, (group.shard(batch) for batch in tokens))
    what = cfg0.model if len(runs) == 1 else f"{len(runs)} SAEs on {cfg0.model}"
    bar = progress_bar(total=cfg0.total_steps, initial=step, desc=f"MLSAE {what}", progress=progress)
    started, model_seconds = time.perf_counter(), 0.0
    try:
        while step < cfg0.total_steps:
            for r in runs:
                r.begin_step()
            fed = 0
            for _ in range(cfg0.grad_accum):
                t = time.perf_counter()
                item = next(stream, None)
                model_seconds += time.perf_counter() - t
                if item is None:
                    break
                _, keep, resid = item
                for r in runs:
                    r.micro_step(resid, keep)
                fed += 1
            if fed == 0:
                break  # data exhausted
            step += 1
            for r in runs:
                r.end_step(model_seconds, tokens)
            bar.update(1)
            if len(runs) == 1 and runs[0].metrics and runs[0].metrics[-1]["step"] == step:
                row = runs[0].metrics[-1]
                bar.set_postfix(loss=f"{row['loss']:.4f}", fvu=f"{row['fvu']:.3f}", dead=f"{row['dead_fraction']:.3f}")
    except RuntimeError as err:
        if group.active and _lost_peer(err):
            raise RuntimeError(f"rank {group.rank} of {group.world}: lost contact with another training process "
                               f"({str(err).splitlines()[0][:200]}); {_kept(runs[0].ckpt_dir)}; rerun the same "
                               f"command to resume") from None
        raise
    finally:
        for r in runs:
            r.close()
        bar.close()
    wall = time.perf_counter() - started
    return [r.finish(model_seconds, wall) for r in runs]


def _lost_peer(err: RuntimeError) -> bool:
    """Whether a collective failed because another rank went away (gloo/NCCL say so in their own words)."""
    text = str(err).lower()
    return type(err).__name__ == "DistBackendError" or any(
        w in text for w in ("connection", "gloo", "nccl", "peer", "timed out", "broken pipe"))


def _kept(ckpt_dir: Path) -> str:
    state = ckpt_dir / "state.json"
    if state.exists():
        return f"the last complete checkpoint (step {json.loads(state.read_text())['step']}) is kept at {ckpt_dir}"
    return "no checkpoint was written yet"


class _Run:
    """One SAE being trained by :func:`train_many`: its folder, optimiser, counters, log and checkpoints.
    Every rank keeps one; only rank 0's writes files."""

    def __init__(self, cfg: TrainConfig, out_dir: Path, sae_cfg: SAEConfig, lens, resume: bool,
                 group: distributed.Group = distributed.SOLO):
        self.cfg, self.out_dir, self.layers, self.lens, self.group = cfg, out_dir, list(sae_cfg.layers or ()), lens, group
        self.ckpt_dir, self.log_path = out_dir / "checkpoint", out_dir / "metrics.jsonl"
        self.reduce = group.sum if group.active else None
        resuming = resume and (self.ckpt_dir / "state.json").exists()
        if resuming:
            _check_resume_config(self.ckpt_dir, cfg)  # before anything in the folder is rewritten
        seed_everything(cfg.seed, deterministic=cfg.deterministic)
        self.sae = MLSAE(sae_cfg).to(cfg.device)
        self.opt = torch.optim.Adam(self.sae.parameters(), lr=cfg.lr, eps=cfg.adam_eps)
        self.scaler = torch.amp.GradScaler("cuda") if cfg.autocast == "fp16" else None
        self.step, self.tokens, self.elapsed, self.metrics, self.stream_state = 0, 0, 0.0, [], None
        if resuming:
            self.step, self.tokens, self.elapsed, self.stream_state = _load_checkpoint(
                self.ckpt_dir, self.sae, self.opt, self.scaler)
            self.metrics = [m for m in _read_jsonl(self.log_path) if m["step"] <= self.step]
        group.broadcast_(self.sae.state_dict().values())  # every rank starts from rank 0's weights
        self.log_file, self.tracker = None, None
        if group.main:
            out_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(out_dir / "train_config.json", json.dumps(cfg.to_dict(), indent=2))
            atomic_write_text(self.log_path, "".join(json.dumps(m) + "\n" for m in self.metrics))
            self.log_file = open(self.log_path, "a")
            self.tracker = _wandb_run(cfg, out_dir) if cfg.tracker == "wandb" else None
        self.own_seconds = 0.0  # time in this SAE's own work, this session
        self.stats = _Accumulator(self.group)

    def begin_step(self) -> None:
        self.opt.zero_grad(set_to_none=True)
        self.stats = _Accumulator(self.group)

    def micro_step(self, resid: Tensor, keep: Tensor) -> None:
        t = time.perf_counter()
        cfg, sae = self.cfg, self.sae
        x = sae_inputs(resid, keep, self.layers, self.lens)  # [layer, token, d]
        if not torch.isfinite(x).all():
            raise FloatingPointError(_nan_message("activations", self.step, self.ckpt_dir))
        if self.step == 0 and self.stats.n == 0:  # a fresh run: b_pre (and the encoder scale) from the first batch
            first = self.group.gather(x)  # [layer, every rank's tokens, d]: the global batch
            sae.init_b_pre_(first.flatten(0, 1))
            if cfg.encoder_init == "fit":
                sae.fit_encoder_scale_(first.flatten(0, 1))
            self.group.broadcast_(sae.state_dict().values())
        with torch.autocast(x.device.type, dtype=DTYPES[cfg.autocast], enabled=cfg.autocast != "fp32"):
            out = sae(x, self.reduce)
        loss = out.loss / cfg.grad_accum
        if not torch.isfinite(loss):
            raise FloatingPointError(_nan_message("loss", self.step, self.ckpt_dir))
        (self.scaler.scale(loss) if self.scaler else loss).backward()
        self.stats.add(out, x.shape[1])
        self.own_seconds += time.perf_counter() - t

    def end_step(self, model_seconds: float, stream) -> None:
        """The optimiser step; then the log line and the checkpoint (with ``stream``'s position) when due."""
        t = time.perf_counter()
        cfg, sae, opt, scaler = self.cfg, self.sae, self.opt, self.scaler
        self.group.sum_grads_(sae.parameters())  # each rank's share of the global batch's gradient -> the whole
        if scaler:
            scaler.unscale_(opt)
        sae.project_decoder_grads_()
        if scaler:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        sae.normalize_decoder_()
        self.step += 1
        self.tokens += self.stats.tokens
        self.own_seconds += time.perf_counter() - t
        seconds = self.elapsed + self.own_seconds + model_seconds
        if self.step % cfg.log_every == 0 or self.step == cfg.total_steps:
            row = self.stats.summary(self.step, self.tokens, seconds, sae)
            self.metrics.append(row)
            if self.log_file is not None:
                self.log_file.write(json.dumps(row) + "\n")
                self.log_file.flush()
            if self.tracker is not None:
                self.tracker.log(_flat(row), step=self.step)
        if self.group.main and self.step % cfg.checkpoint_every == 0 and self.step < cfg.total_steps:
            _save_checkpoint(self.ckpt_dir, sae, opt, scaler, stream.state_dict(),
                             dict(step=self.step, tokens=self.tokens, seconds=seconds), cfg)

    def close(self) -> None:
        if self.log_file is not None:
            self.log_file.close()
        if self.tracker is not None:
            self.tracker.finish()
            self.tracker = None

    def finish(self, model_seconds: float, wall: float) -> TrainResult:
        seconds = self.elapsed + self.own_seconds + model_seconds
        if self.group.main:
            self.sae.save_pretrained(self.out_dir / "sae",
                                     provenance=provenance(self.cfg, self.step, self.tokens, self.metrics, self.group.world))
            atomic_write_text(self.out_dir / "train_summary.json", json.dumps(
                {"steps": self.step, "tokens": self.tokens, "seconds": seconds, "wall_seconds": wall,
                 "processes": self.group.world, "cache_key": self.cfg.cache_key()}, indent=2))
        return TrainResult(self.sae, self.out_dir, self.step, self.tokens, seconds, self.metrics)


def _wandb_run(cfg: TrainConfig, out_dir: Path):
    """A Weights & Biases run for one SAE (project ``$WANDB_PROJECT``, default ``mlsae``), named after its
    folder; metrics.jsonl stays the record the notebooks read."""
    import os

    import wandb

    return wandb.init(project=os.environ.get("WANDB_PROJECT", "mlsae"), name=out_dir.name, dir=str(out_dir),
                      config=cfg.to_dict(), reinit="create_new")


def _flat(row: dict) -> dict:
    """A metrics row for a tracker: per-layer lists become one scalar per layer."""
    out = {}
    for k, v in row.items():
        if isinstance(v, list):
            out.update({f"{k}/{i}": x for i, x in enumerate(v)})
        else:
            out[k] = v
    return out


def provenance(cfg: TrainConfig, steps: int, tokens: int, metrics: list[dict], processes: int = 1) -> dict:
    """What an SAE was trained on, saved beside its weights (``provenance.json`` and the model card):
    enough for ``mlsae eval RUN_DIR`` and for a reader to know where it came from."""
    from mlsae import __version__
    from mlsae.data.sources import data_identity
    from mlsae.models.registry import model_identity

    last = metrics[-1] if metrics else {}
    return {
        "model": cfg.model, "model_identity": model_identity(cfg.model), "layers": cfg.layers,
        "tuned_lens": cfg.tuned_lens, "lens": lens_record(cfg.model, **cfg.lens_kwargs()) if cfg.tuned_lens else None,
        "data": cfg.data, "data_identity": data_identity(cfg.data), "split": "train", "preset": cfg.preset,
        "steps": steps, "tokens": tokens, "seq_len": cfg.seq_len, "seed": cfg.seed, "processes": processes,
        "metrics": {k: last[k] for k in ("loss", "fvu", "dead_fraction") if k in last},
        "cache_key": cfg.cache_key(), "train_config": cfg.to_dict(),
        "mlsae_version": __version__, "git_commit": _git_commit(),
    }


def _git_commit() -> str | None:
    """The repository's commit when running from a checkout (``+dirty`` with local changes), else None."""
    from mlsae.core.paths import git_output, repository_root

    root = repository_root()
    if root is None:
        return None
    commit = (git_output(root, "rev-parse", "HEAD") or "").strip()
    if not commit:
        return None
    dirty = (git_output(root, "status", "--porcelain", "--untracked-files=no") or "").strip()
    return commit + ("+dirty" if dirty else "")


def train_or_load(cfg: TrainConfig, *, progress: bool = True) -> tuple[MLSAE, Path]:
    """The SAE for ``cfg`` from the shared cache, training it first if it is not there yet."""
    out_dir = mlsae_home() / "saes" / cfg.cache_key()
    if not (out_dir / "sae" / "config.json").exists():
        with run_lock(out_dir):  # another process training the same SAE: wait for it, then use its result
            if not (out_dir / "sae" / "config.json").exists():
                train(cfg, out_dir, progress=progress)
    return MLSAE.from_pretrained(out_dir / "sae").to(cfg.device), out_dir


def ensure_trained(cfgs: list[TrainConfig], *, progress: bool = True) -> None:
    """Train the SAEs of ``cfgs`` that the shared cache lacks, one model pass for each group that
    shares a token stream (:data:`STREAM_FIELDS`). Same weights as training each alone."""
    def missing(configs):
        return {c.cache_key(): c for c in configs if not (mlsae_home() / "saes" / c.cache_key() / "sae" / "config.json").exists()}

    todo = missing(cfgs)
    with contextlib.ExitStack() as held:
        for key in sorted(todo):  # another process training one of them: wait for it, then use its result
            held.enter_context(run_lock(mlsae_home() / "saes" / key))
        groups: dict[str, list[TrainConfig]] = {}
        for c in missing(todo.values()).values():
            groups.setdefault(json.dumps([getattr(c, f) for f in STREAM_FIELDS]), []).append(c)
        for group in groups.values():
            train_many(group, progress=progress)


class _Accumulator:
    """Sums per-micro-batch statistics for one optimiser step (over every rank: each holds a share)."""

    def __init__(self, group: distributed.Group = distributed.SOLO):
        self.group = group
        self.n = 0
        self.tokens = 0
        self.loss = 0.0
        self.aux = 0.0
        self.fvu: Tensor | None = None

    def add(self, out, n_tokens: int) -> None:
        self.n += 1
        if self.group.active:  # one all-reduce of a few numbers: [loss, aux, tokens, fvu per layer]
            shares = torch.cat([torch.stack([out.loss.detach().float(), out.aux_loss.detach().float(),
                                             out.loss.new_tensor(float(n_tokens))]), out.fvu_per_layer.float()])
            total = self.group.sum(shares).cpu()
            loss, aux, n_tokens, fvu = float(total[0]), float(total[1]), int(total[2]), total[3:]
        else:
            loss, aux = float(out.loss.detach()), float(out.aux_loss.detach())
            fvu = out.fvu_per_layer.detach().float().cpu()
        self.tokens += n_tokens
        self.loss += loss
        self.aux += aux
        self.fvu = fvu if self.fvu is None else self.fvu + fvu

    def summary(self, step: int, tokens: int, seconds: float, sae: MLSAE) -> dict:
        if self.fvu is None:
            raise RuntimeError("no micro-batch was added to this step")
        fvu = (self.fvu / self.n).tolist()
        return {
            "step": step,
            "tokens": tokens,
            "seconds": round(seconds, 3),
            "loss": self.loss / self.n,
            "aux_loss": self.aux / self.n,
            "fvu": sum(fvu) / len(fvu),
            "fvu_per_layer": fvu,
            "dead_fraction": float(sae.dead_mask().float().mean()),
        }


def _nan_message(what: str, step: int, ckpt_dir: Path) -> str:
    where = f"the last good checkpoint is kept at {ckpt_dir}" if (ckpt_dir / "state.json").exists() else "no checkpoint was written yet"
    return (
        f"non-finite {what} at step {step}; training stopped and {where}. Lower the learning rate, use "
        f"autocast='fp32', or check the model's activations."
    )


def _save_checkpoint(ckpt_dir: Path, sae: MLSAE, opt, scaler, stream: dict, state: dict, cfg: TrainConfig) -> None:
    """Everything a resume needs, written as one folder that appears whole or not at all: the SAE with its
    dead-latent counters, Adam, the loss scaler's state (fp16), the token stream's position, the config."""
    with atomic_dir(ckpt_dir) as tmp:
        sae.save_pretrained(tmp / "sae")
        _save_optimizer(opt, tmp / "optimizer.safetensors")
        save_result(tmp / "stream.safetensors", {"carry": torch.tensor(stream["carry"], dtype=torch.long)},
                    {"batches": stream["batches"], "position": stream["position"]})
        (tmp / "train_config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
        scaler_state = scaler.state_dict() if scaler is not None else None
        (tmp / "state.json").write_text(json.dumps({**state, "scaler": scaler_state}))


def _save_optimizer(opt, path: Path) -> None:
    """Adam's state in the one result format (:func:`mlsae.core.paths.save_result`): moments and step counts as
    tensors, the param groups as JSON. No pickle."""
    state = opt.state_dict()
    tensors = {f"state.{i}.{name}": value for i, slots in state["state"].items() for name, value in slots.items()}
    save_result(path, tensors, {"param_groups": state["param_groups"]})


def _load_optimizer(path: Path) -> dict:
    tensors, meta = load_result(path)
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        _, i, name = key.split(".", 2)
        state.setdefault(int(i), {})[name] = value
    groups = meta["param_groups"]
    for g in groups:
        g["betas"] = tuple(g["betas"])
    return {"state": state, "param_groups": groups}


def _check_resume_config(ckpt_dir: Path, cfg: TrainConfig) -> None:
    """Refuse to resume a checkpoint under other hyper-parameters (the checkpoint's would silently win)."""
    path = ckpt_dir / "train_config.json"
    _require_checkpoint_files(ckpt_dir)
    try:
        saved = json.loads(path.read_text())
    except ValueError:
        raise ValueError(f"{path}: not valid JSON; delete {ckpt_dir} to start this run over") from None
    now = cfg.to_dict()
    changed = [f"{k}: checkpoint {saved.get(k)!r}, now {now[k]!r}" for k in now
               if k not in NOT_IN_WEIGHTS and saved.get(k, now[k]) != now[k]]
    if changed:
        raise ValueError(f"cannot resume {ckpt_dir} with other settings ({'; '.join(changed)}): resume with the "
                         f"checkpoint's settings, or start over (--no-resume, or another --out)")


CHECKPOINT_FILES = ("sae/config.json", "sae/model.safetensors", "optimizer.safetensors", "stream.safetensors",
                    "train_config.json", "state.json")


def _require_checkpoint_files(ckpt_dir: Path) -> None:
    missing = [name for name in CHECKPOINT_FILES if not (ckpt_dir / name).is_file()]
    if missing:
        raise ValueError(f"{ckpt_dir}: not a complete checkpoint of this version of mlsae (missing "
                         f"{', '.join(missing)}); delete it to start this run over (--no-resume)")


def _load_checkpoint(ckpt_dir: Path, sae: MLSAE, opt, scaler) -> tuple[int, int, float, dict]:
    """Restore ``sae``, ``opt`` and ``scaler`` in place; returns step, tokens, seconds and the stream position."""
    _require_checkpoint_files(ckpt_dir)
    saved = MLSAE.from_pretrained(ckpt_dir / "sae")  # a torn model.safetensors is a clear ValueError there
    if saved.cfg != sae.cfg:
        raise ValueError(f"checkpoint at {ckpt_dir} was written for a different SAE configuration; delete it or change out_dir")
    sae.load_state_dict(saved.state_dict())
    path = ckpt_dir / "optimizer.safetensors"
    try:
        state = _load_optimizer(path)
    except Exception as err:  # a torn file, or anything that is not a plain state dict
        raise ValueError(f"{path}: cannot be read ({type(err).__name__}: {str(err)[:200]}); the checkpoint is "
                         f"incomplete. Delete {ckpt_dir} to start this run over (--no-resume)") from None
    opt.load_state_dict(state)  # moves the state to the parameters' device
    state = json.loads((ckpt_dir / "state.json").read_text())
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    try:
        tensors, meta = load_result(ckpt_dir / "stream.safetensors")
    except Exception as err:
        raise ValueError(f"{ckpt_dir / 'stream.safetensors'}: cannot be read ({type(err).__name__}); the checkpoint "
                         f"is incomplete. Delete {ckpt_dir} to start this run over (--no-resume)") from None
    stream = {**meta, "carry": tensors["carry"].tolist()}
    return state["step"], state["tokens"], state["seconds"], stream


def _read_jsonl(path: Path) -> list[dict]:
    """The rows of a metrics log; a torn last line (a kill while it was written) is dropped."""
    if not path.exists():
        return []
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    rows = []
    for i, line in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except ValueError:
            if i == len(lines) - 1:
                break  # the torn last line: the checkpoint's step bounds what is kept anyway
            raise ValueError(f"{path}: line {i + 1} is not JSON; delete the file to start its log over") from None
    return rows

