"""Train an MLSAE: text -> model -> residual streams of all layers -> (tuned lens) -> SAE.

Everything streams: a batch of token sequences is run through the frozen language model,
the output of every block is collected as ``[layer, token, d_model]`` (special tokens
dropped), optionally mapped by the tuned lens, and used for one SAE step. Nothing is stored
on disk but checkpoints and a metrics log.

Resuming is exact and costs no re-reading: a checkpoint holds the SAE, the optimiser, the loss
scaler, the dead-latent counters and the position of the token stream
(:meth:`mlsae.data.tokens.TokenStream.state_dict`), so a resumed run continues where the last one stopped and
ends with the same weights as an uninterrupted run (on CPU, bit for bit; see README *Determinism*).

Under ``torchrun`` (or :func:`train_parallel`) the same code trains data-parallel; how the
ranks share the work is written down in :mod:`mlsae.training.distributed`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from filelock import Timeout
from torch import Tensor

from mlsae.core.paths import atomic_write_text, check_writable, mlsae_home, run_lock
from mlsae.core.progress import bar as progress_bar
from mlsae.core.seeding import seed_everything
from mlsae.data.sources import load_text
from mlsae.data.tokens import token_batches
from mlsae.models.lens import IDENTITY
from mlsae.models.lens_training import residual_lens_for
from mlsae.models.registry import load_model, model_context, model_shape, require_model
from mlsae.models.residuals import check_layers, check_seq_len, max_positions, residual_batches
from mlsae.sae.architectures import build_sae, load_sae
from mlsae.sae.config import CONFIG_FILE, SAEConfig
from mlsae.sae.model import MLSAE
from mlsae.sae.pipeline import sae_inputs
from mlsae.training import distributed
from mlsae.training.checkpoint import (
    changed_settings,
    check_resume_config,
    load_checkpoint,
    read_jsonl,
    save_checkpoint,
)
from mlsae.training.config import DTYPES, STREAM_FIELDS, TrainConfig
from mlsae.training.identity import identify, sae_key
from mlsae.training.provenance import provenance


@dataclass
class TrainResult:
    """What a training run returns: the SAE, its folder, steps, tokens, seconds and the logged metrics."""
    sae: MLSAE
    out_dir: Path
    steps: int
    tokens: int
    seconds: float
    metrics: list[dict]
    data_exhausted: bool = False  # the text ran out before the budget (max_tokens): fewer steps than asked


def train(cfg: TrainConfig, out_dir: Path | None = None, *, resume: bool = True, progress: bool = True) -> TrainResult:
    """Train (or resume) an MLSAE and save it to ``out_dir/sae`` with ``save_pretrained``.

    ``out_dir`` defaults to the shared store, ``$MLSAE_HOME/saes/<sae_key(cfg)>``.
    """
    return train_many([cfg], None if out_dir is None else [out_dir], resume=resume, progress=progress)[0]


def train_parallel(cfg: TrainConfig, nproc_per_node: int, out_dir: Path | None = None, *, resume: bool = True) -> Path:
    """Train ``cfg`` data-parallel in ``nproc_per_node`` processes on this machine, from Python: what
    ``torchrun --standalone --nproc-per-node N -m mlsae train ...`` does (see :mod:`mlsae.training.distributed`).
    Returns the run folder; load the SAE with ``MLSAE.from_pretrained(folder / "sae")``."""
    distributed.check_split(cfg.batch_size, nproc_per_node)
    out_dir = Path(out_dir) if out_dir is not None else mlsae_home() / "saes" / sae_key(cfg)
    distributed.spawn(_train_in_process, nproc_per_node, cfg.to_dict(), str(out_dir), resume)
    return out_dir


def _train_in_process(cfg: dict, out_dir: str, resume: bool) -> None:
    """What each process started by :func:`train_parallel` runs."""
    config = TrainConfig.from_dict(cfg)
    with distributed.process_group(config.device):
        train(config, Path(out_dir), resume=resume, progress=False)


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
    identities = [identify(c) for c in cfgs]  # what the inputs are, read once: the keys and the provenance say it
    out_dirs = ([Path(d) for d in out_dirs] if out_dirs is not None
                else [mlsae_home() / "saes" / c.cache_key(i) for c, i in zip(cfgs, identities, strict=True)])
    if len(out_dirs) != len(cfgs) or len(set(out_dirs)) != len(out_dirs):
        raise ValueError("train_many needs one distinct out_dir per configuration")
    # Everything that can fail on bad input fails before anything is written, and what is knowable without the
    # model (its registry shape and context, the data, the folders) before the model is loaded or built.
    progress = progress and group.main
    dataset = _check_before_work(cfgs, out_dirs)
    with contextlib.ExitStack() as held:
        if group.main:
            for d in sorted(out_dirs):  # one process trains into a folder at a time; another waits, then looks again
                held.enter_context(_take(run_lock(d), d))
        group.barrier()
        done = [_finished(c, d) if resume else None for c, d in zip(cfgs, out_dirs, strict=True)]
        todo = [i for i, r in enumerate(done) if r is None]
        if todo:
            held.enter_context(distributed.stop_on_sigterm(group))
            trained = iter(_train_folders([cfgs[i] for i in todo], [identities[i] for i in todo],
                                          [out_dirs[i] for i in todo], dataset, resume, progress, group))
            done = [r if r is not None else next(trained) for r in done]
        group.barrier()  # rank 0's files are complete when any rank returns
        return [r for r in done if r is not None]


def _train_folders(cfgs, identities, out_dirs, dataset, resume, progress, group) -> list[TrainResult]:
    """Load the model (and lenses) once, then train every SAE in its folder (the locks are held by the caller);
    a folder this call made and left with nothing to resume from is removed on failure."""
    cfg0 = cfgs[0]
    with group.main_first():  # rank 0 builds what the cache lacks (a zoo model, a lens); the others load it
        model, tokenizer = load_model(cfg0.model, device=cfg0.device)
        check_seq_len(cfg0.seq_len, max_positions(model), cfg0.model)
        n_layers = model.config.num_hidden_layers
        layers = [check_layers(c.layers, n_layers) for c in cfgs]
        lenses = {}
        for c in cfgs:
            if c.lens.tuned_lens and json.dumps(c.lens_kwargs()) not in lenses:
                lenses[json.dumps(c.lens_kwargs())] = residual_lens_for(c.model, model, tokenizer, **c.lens_kwargs(),
                                                                       progress=progress)
    # validated for every SAE before any folder is written
    sae_cfgs = [c.sae_config(model.config.hidden_size, l) for c, l in zip(cfgs, layers, strict=True)]
    fresh = [d for d in out_dirs if not d.exists()]
    try:
        return _train_locked(cfgs, identities, out_dirs, sae_cfgs, model, tokenizer, dataset, lenses, resume,
                             progress, group)
    except BaseException:
        if group.main:  # a folder this call made and left with nothing to resume from goes again
            for d in fresh:
                if not (d / "checkpoint" / "state.json").exists() and not (d / "sae" / CONFIG_FILE).exists():
                    shutil.rmtree(d, ignore_errors=True)
        raise


def _finished(cfg: TrainConfig, out_dir: Path) -> TrainResult | None:
    """The finished run in ``out_dir`` (its SAE and ``train_summary.json`` written), left as it is, or None. A
    finished run with other settings is refused: nothing in it is rewritten unless asked (``--no-resume``)."""
    summary_path, sae_dir = out_dir / "train_summary.json", out_dir / "sae"
    if not (summary_path.is_file() and (sae_dir / CONFIG_FILE).is_file() and (out_dir / "train_config.json").is_file()):
        return None
    changed = changed_settings(out_dir / "train_config.json", cfg)
    if changed:
        raise ValueError(f"{out_dir} holds a finished run with other settings ({'; '.join(changed)}); train into "
                         f"another folder (--out), or train over it (--no-resume in the CLI, resume=False in Python)")
    summary = json.loads(summary_path.read_text())
    print(f"already trained: {out_dir} ({summary['steps']:,} steps, {summary['tokens']:,} tokens); its files are "
          f"left as they are (--no-resume trains it again)", file=sys.stderr, flush=True)
    return TrainResult(load_sae(sae_dir).to(cfg.device), out_dir, summary["steps"], summary["tokens"],
                       summary["seconds"], read_jsonl(out_dir / "metrics.jsonl"), summary.get("data_exhausted", False))


def _check_before_work(cfgs: list[TrainConfig], out_dirs: list[Path]):
    """The checks that need neither the model's weights nor any training (a zoo model missing from the cache takes
    minutes to build): the sequence length, layers and k against the registry's shape and context, the data, and
    whether each output folder can be written. Returns the (streaming) data set."""
    cfg0 = cfgs[0]
    require_model(cfg0.model)  # a hub model neither cached nor downloadable: what to fetch, first
    check_seq_len(cfg0.seq_len, model_context(cfg0.model), cfg0.model)
    shape = model_shape(cfg0.model)
    if shape is not None:
        n_layers, d_model = shape
        for c in cfgs:
            c.sae_config(d_model, check_layers(c.layers, n_layers))  # k and k_aux against the number of latents
    for d in out_dirs:
        check_writable(d, "the run folder (--out; default $MLSAE_HOME/saes)")
    return load_text(cfg0.data, split="train", streaming=True)  # a missing, empty or undecodable data set fails here


def _take(lock, out_dir: Path):
    """Take the folder's lock; when another process holds it, say so and wait (as the notebooks' cache does),
    then the caller looks at what that process left."""
    try:
        return lock.acquire(timeout=0)
    except Timeout:
        print(f"{out_dir} is being trained by another process (lock {lock.lock_file}); waiting for it to finish "
              f"(Ctrl-C stops waiting; --out trains into another folder)", file=sys.stderr, flush=True)
        return lock.acquire()


def _train_locked(cfgs, identities, out_dirs, sae_cfgs, model, tokenizer, dataset, lenses, resume, progress,
                  group: distributed.Group) -> list[TrainResult]:
    cfg0 = cfgs[0]
    runs = [_Run(c, i, d, sc, lenses[json.dumps(c.lens_kwargs())] if c.lens.tuned_lens else IDENTITY, resume, group)
            for c, i, d, sc in zip(cfgs, identities, out_dirs, sae_cfgs, strict=True)]
    if len({(r.step, json.dumps(r.stream_state, sort_keys=True)) for r in runs}) > 1:
        # resumed from different checkpoints: no shared stream position
        for r in runs:
            r.close()
        return [train_many([r.cfg], [r.out_dir], resume=resume, progress=progress)[0] for r in runs]
    step, stream_state = runs[0].step, runs[0].stream_state

    tokens = token_batches(dataset, tokenizer, cfg0.seq_len, cfg0.batch_size,
                           max_tokens=cfg0.total_steps * cfg0.tokens_per_step, state=stream_state)
    stream = residual_batches(model, tokenizer, (group.shard(batch) for batch in tokens))
    name = Path(cfg0.model).name if Path(cfg0.model).is_absolute() else cfg0.model  # a local folder: its name
    what = name if len(runs) == 1 else f"{len(runs)} SAEs, {name}"
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
    exhausted = step < cfg0.total_steps
    if exhausted and group.main:
        print(f"warning: {cfg0.data} ran out after {step:,} of {cfg0.total_steps:,} steps ({runs[0].tokens:,} tokens "
              f"trained of the {cfg0.max_tokens:,} asked); the SAE is saved as trained so far and its provenance says "
              f"so (data_exhausted). Give more text, or a smaller --max-tokens", file=sys.stderr, flush=True)
    return [r.finish(model_seconds, wall, exhausted) for r in runs]


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

    def __init__(self, cfg: TrainConfig, identity: dict, out_dir: Path, sae_cfg: SAEConfig, lens, resume: bool,
                 group: distributed.Group = distributed.SOLO):
        self.identity = identity  # what the inputs are (training.identity.identify), read once per run
        self.cfg, self.out_dir, self.layers, self.lens, self.group = cfg, out_dir, list(sae_cfg.layers or ()), lens, group
        self.ckpt_dir, self.log_path = out_dir / "checkpoint", out_dir / "metrics.jsonl"
        self.reduce = group.sum if group.active else None
        resuming = resume and (self.ckpt_dir / "state.json").exists()
        if resuming:
            check_resume_config(self.ckpt_dir, cfg)  # before anything in the folder is rewritten
        seed_everything(cfg.seed, deterministic=cfg.deterministic)
        self.sae = build_sae(sae_cfg).to(cfg.device)
        self.opt = torch.optim.Adam(self.sae.parameters(), lr=cfg.lr, eps=cfg.adam_eps)
        self.scaler = torch.amp.GradScaler("cuda") if cfg.autocast == "fp16" else None
        self.step, self.tokens, self.elapsed, self.metrics, self.stream_state = 0, 0, 0.0, [], None
        if resuming:
            self.step, self.tokens, self.elapsed, self.stream_state = load_checkpoint(
                self.ckpt_dir, self.sae, self.opt, self.scaler)
            self.metrics = [m for m in read_jsonl(self.log_path) if m["step"] <= self.step]
            if group.main:
                print(f"resuming {out_dir} from its checkpoint at step {self.step:,} of {cfg.total_steps:,} "
                      f"({self.tokens:,} tokens trained)", file=sys.stderr, flush=True)
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
            sae.init_b_pre_(first)
            if cfg.sae.encoder_init == "fit":
                sae.fit_encoder_scale_(first)
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
        for group in opt.param_groups:
            group["lr"] = cfg.lr_at(self.step)
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
            save_checkpoint(self.ckpt_dir, sae, opt, scaler, stream.state_dict(),
                             dict(step=self.step, tokens=self.tokens, seconds=seconds), cfg)

    def close(self) -> None:
        if self.log_file is not None:
            self.log_file.close()
        if self.tracker is not None:
            self.tracker.finish()
            self.tracker = None

    def finish(self, model_seconds: float, wall: float, exhausted: bool = False) -> TrainResult:
        seconds = self.elapsed + self.own_seconds + model_seconds
        if self.group.main:
            self.sae.save_pretrained(self.out_dir / "sae",
                                     provenance=provenance(self.cfg, self.identity, self.step, self.tokens, self.metrics,
                                                           self.group.world, data_exhausted=exhausted))
            atomic_write_text(self.out_dir / "train_summary.json", json.dumps(
                {"steps": self.step, "tokens": self.tokens, "seconds": seconds, "wall_seconds": wall,
                 "processes": self.group.world, "threads": torch.get_num_threads(), "data_exhausted": exhausted,
                 "cache_key": self.cfg.cache_key(self.identity)}, indent=2))
        return TrainResult(self.sae, self.out_dir, self.step, self.tokens, seconds, self.metrics, exhausted)


def _wandb_run(cfg: TrainConfig, out_dir: Path):
    """A Weights & Biases run for one SAE (project ``$WANDB_PROJECT``, default ``mlsae``), named after its
    folder; metrics.jsonl stays the record the notebooks read."""
    import wandb  # the optional 'tracking' extra: only when tracker='wandb'

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
