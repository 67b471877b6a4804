"""Train an MLSAE: text -> model -> residual streams of all layers -> (tuned lens) -> SAE.

Everything streams: a batch of token sequences is run through the frozen language model,
the output of every block is collected as ``[layer, token, d_model]`` (special tokens
dropped), optionally mapped by the tuned lens, and used for one SAE step. Nothing is stored
on disk but checkpoints and a metrics log.

Resuming is exact: the data order is a deterministic function of the seed, so a resumed run
skips the token batches it has already consumed and continues from the saved SAE, optimiser
and dead-latent counters, giving the same final weights as an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from torch import Tensor
from tqdm.auto import tqdm

from mlsae.activations import check_layers, residual_batches
from mlsae.data import load_text, token_batches
from mlsae.lens import residual_lens_for, sae_inputs
from mlsae.models import load_model
from mlsae.paths import atomic_dir, atomic_write_text, mlsae_home, safe_name
from mlsae.sae import MLSAE, SAEConfig

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class TrainConfig:
    """One MLSAE training run. Defaults are the paper's (PAPER.md §1); presets shrink them."""

    model: str = "pythia-70m"
    expansion_factor: int = 64
    k: int = 32
    k_aux: int = 256
    auxk_coef: float = 1 / 32
    dead_tokens: int = 10_000_000
    tuned_lens: bool = False
    layers: list[int] | None = None  # None: every layer (the MLSAE); [l]: a single-layer SAE
    data: str = "monology/pile-uncopyrighted"
    seq_len: int = 2048
    batch_size: int = 64  # sequences per optimiser step (x grad_accum)
    grad_accum: int = 1
    max_tokens: int = 1_000_000_000
    lr: float = 1e-4
    adam_eps: float = 6.25e-10
    seed: int = 42
    device: str = "cpu"
    autocast: str = "fp32"  # fp32 | bf16 | fp16 (fp16: CUDA only, with loss scaling)
    checkpoint_every: int = 500  # optimiser steps
    log_every: int = 10
    preset: str = "paper"
    # "unit": the paper's initialisation (unit-norm encoder rows, W_dec = W_enc^T). "fit": the same
    # directions, then the encoder scaled on the first batch (MLSAE.fit_encoder_scale_), which short
    # runs need (the offline presets use it; see PRESETS). Left out of the cache key when "unit".
    encoder_init: str = "unit"

    def __post_init__(self):
        if self.expansion_factor <= 0:
            raise ValueError(f"expansion_factor must be positive, got {self.expansion_factor}")
        if self.k <= 0:
            raise ValueError(f"k must be positive, got {self.k}")
        for name in ("seq_len", "batch_size", "grad_accum", "max_tokens", "checkpoint_every", "log_every"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.encoder_init not in ("unit", "fit"):
            raise ValueError(f"encoder_init must be 'unit' (the paper's) or 'fit', got {self.encoder_init!r}")
        if self.autocast not in DTYPES:
            raise ValueError(f"autocast must be one of {sorted(DTYPES)}, got {self.autocast!r}")
        if self.autocast == "fp16" and not self.device.startswith("cuda"):
            raise ValueError("autocast='fp16' needs a CUDA device; use 'bf16' or 'fp32' on CPU")

    @property
    def tokens_per_step(self) -> int:
        return self.seq_len * self.batch_size * self.grad_accum

    @property
    def total_steps(self) -> int:
        return max(1, self.max_tokens // self.tokens_per_step)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def cache_key(self) -> str:
        """A readable, stable name for this configuration's SAE in the shared cache.

        Everything that changes the trained weights is hashed; ``device``, logging and
        checkpoint cadence are not.
        """
        d = self.to_dict()
        for name in ("device", "checkpoint_every", "log_every", "preset"):
            d.pop(name)
        if d["encoder_init"] == "unit":  # keys of runs from before the option existed stay valid
            d.pop("encoder_init")
        digest = hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:10]
        where = "all" if self.layers is None else "L" + "-".join(map(str, self.layers))
        lens = "-lens" if self.tuned_lens else ""
        return f"{safe_name(self.model)}-x{self.expansion_factor}-k{self.k}-{where}{lens}-{digest}"


# Token budgets sized for the machine at hand. "paper" is PAPER.md §1 verbatim. The short offline
# runs (a few hundred steps, not the paper's 7,600) also fit the encoder's scale on the first batch:
# with the paper's unit-norm init, zoo-s at R=64 is still at FVU 1.06 after 262k tokens with k=32
# (10.1 with k=128), against 0.031 (0.011) with the fit.
PRESETS: dict[str, dict] = {
    "paper": {},
    "default": dict(
        data="offline", seq_len=128, batch_size=32, max_tokens=1_000_000, lr=1e-3, dead_tokens=500_000,
        checkpoint_every=100, encoder_init="fit",
    ),
    "tiny": dict(
        data="offline:micro", seq_len=64, batch_size=8, max_tokens=40_000, lr=2e-3, dead_tokens=20_000,
        k_aux=32, checkpoint_every=20, log_every=5, encoder_init="fit",
    ),
}


def config_from_preset(preset: str = "default", **overrides) -> TrainConfig:
    """A TrainConfig from a named preset, with explicit overrides applied on top."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    return TrainConfig(**{**PRESETS[preset], "preset": preset, **overrides})


# --------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------


@dataclass
class TrainResult:
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
    # Everything that can fail on bad input fails before anything is written.
    torch.manual_seed(cfg.seed)
    model, tokenizer = load_model(cfg.model, device=cfg.device)
    n_layers = model.config.num_hidden_layers
    layers = check_layers(cfg.layers, n_layers)
    d_model = model.config.hidden_size
    sae_cfg = SAEConfig.from_expansion_factor(
        d_model, cfg.expansion_factor, cfg.k, k_aux=cfg.k_aux, auxk_coef=cfg.auxk_coef,
        dead_tokens=cfg.dead_tokens, layers=layers,
    )
    dataset = load_text(cfg.data, split="train", streaming=True)  # an empty or missing data set fails here
    lens = residual_lens_for(cfg.model, model, tokenizer, data=cfg.data, seed=cfg.seed) if cfg.tuned_lens else None

    out_dir = Path(out_dir) if out_dir is not None else mlsae_home() / "saes" / cfg.cache_key()
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_dir, log_path = out_dir / "checkpoint", out_dir / "metrics.jsonl"
    atomic_write_text(out_dir / "train_config.json", json.dumps(cfg.to_dict(), indent=2))
    torch.manual_seed(cfg.seed)
    sae = MLSAE(sae_cfg).to(cfg.device)
    opt = torch.optim.Adam(sae.parameters(), lr=cfg.lr, eps=cfg.adam_eps)
    scaler = torch.amp.GradScaler("cuda") if cfg.autocast == "fp16" else None

    step, tokens, elapsed, metrics = 0, 0, 0.0, []
    if resume and (ckpt_dir / "state.json").exists():
        step, tokens, elapsed = _load_checkpoint(ckpt_dir, sae, opt, cfg)
        metrics = [m for m in _read_jsonl(log_path) if m["step"] <= step]
    atomic_write_text(log_path, "".join(json.dumps(m) + "\n" for m in metrics))

    batches = token_batches(dataset, tokenizer, cfg.seq_len, cfg.batch_size, max_tokens=cfg.total_steps * cfg.tokens_per_step)
    skipped = _skip(batches, step * cfg.grad_accum)
    if skipped < step * cfg.grad_accum:
        raise RuntimeError(f"cannot resume: the data ran out after {skipped} batches while skipping to step {step}")
    stream = residual_batches(model, tokenizer, batches)

    bar = tqdm(total=cfg.total_steps, initial=step, desc=f"MLSAE {cfg.model}", disable=not progress)
    started = time.perf_counter() - elapsed
    log_file = open(log_path, "a")
    try:
        while step < cfg.total_steps:
            opt.zero_grad(set_to_none=True)
            stats = _Accumulator()
            for _ in range(cfg.grad_accum):
                item = next(stream, None)
                if item is None:
                    break
                _, keep, resid = item
                x = sae_inputs(resid, keep, layers, lens)  # [layer, token, d]
                if not torch.isfinite(x).all():
                    raise FloatingPointError(_nan_message("activations", step, ckpt_dir))
                if step == 0 and stats.n == 0:  # a fresh run: b_pre (and the encoder scale) from the first batch
                    sae.init_b_pre_(x.flatten(0, 1))
                    if cfg.encoder_init == "fit":
                        sae.fit_encoder_scale_(x.flatten(0, 1))
                with torch.autocast(x.device.type, dtype=DTYPES[cfg.autocast], enabled=cfg.autocast != "fp32"):
                    out = sae(x)
                loss = out.loss / cfg.grad_accum
                if not torch.isfinite(loss):
                    raise FloatingPointError(_nan_message("loss", step, ckpt_dir))
                (scaler.scale(loss) if scaler else loss).backward()
                stats.add(out, x.shape[1])
            if stats.n == 0:
                break  # data exhausted
            if scaler:
                scaler.unscale_(opt)
            sae.project_decoder_grads_()
            if scaler:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
            sae.normalize_decoder_()
            step += 1
            tokens += stats.tokens
            bar.update(1)
            if step % cfg.log_every == 0 or step == cfg.total_steps:
                row = stats.summary(step, tokens, time.perf_counter() - started, sae)
                metrics.append(row)
                log_file.write(json.dumps(row) + "\n")
                log_file.flush()
                bar.set_postfix(loss=f"{row['loss']:.4f}", fvu=f"{row['fvu']:.3f}", dead=f"{row['dead_fraction']:.3f}")
            if step % cfg.checkpoint_every == 0 and step < cfg.total_steps:
                _save_checkpoint(ckpt_dir, sae, opt, step, tokens, time.perf_counter() - started)
    finally:
        log_file.close()
        bar.close()
    seconds = time.perf_counter() - started
    sae.save_pretrained(out_dir / "sae")
    atomic_write_text(
        out_dir / "train_summary.json",
        json.dumps({"steps": step, "tokens": tokens, "seconds": seconds, "cache_key": cfg.cache_key()}, indent=2),
    )
    return TrainResult(sae, out_dir, step, tokens, seconds, metrics)


def train_or_load(cfg: TrainConfig, *, progress: bool = True) -> tuple[MLSAE, Path]:
    """The SAE for ``cfg`` from the shared cache, training it first if it is not there yet."""
    out_dir = mlsae_home() / "saes" / cfg.cache_key()
    if (out_dir / "sae" / "config.json").exists():
        return MLSAE.from_pretrained(out_dir / "sae").to(cfg.device), out_dir
    result = train(cfg, out_dir, progress=progress)
    return result.sae, out_dir


class _Accumulator:
    """Sums per-micro-batch statistics for one optimiser step."""

    def __init__(self):
        self.n = 0
        self.tokens = 0
        self.loss = 0.0
        self.aux = 0.0
        self.fvu: Tensor | None = None

    def add(self, out, n_tokens: int) -> None:
        self.n += 1
        self.tokens += n_tokens
        self.loss += float(out.loss.detach())
        self.aux += float(out.aux_loss.detach())
        fvu = out.fvu_per_layer.detach().float().cpu()
        self.fvu = fvu if self.fvu is None else self.fvu + fvu

    def summary(self, step: int, tokens: int, seconds: float, sae: MLSAE) -> dict:
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


def _skip(batches: Iterator, n: int) -> int:
    done = 0
    for _ in range(n):
        if next(batches, None) is None:
            break
        done += 1
    return done


def _nan_message(what: str, step: int, ckpt_dir: Path) -> str:
    where = f"the last good checkpoint is kept at {ckpt_dir}" if (ckpt_dir / "state.json").exists() else "no checkpoint was written yet"
    return (
        f"non-finite {what} at step {step}; training stopped and {where}. Lower the learning rate, use "
        f"autocast='fp32', or check the model's activations."
    )


def _save_checkpoint(ckpt_dir: Path, sae: MLSAE, opt, step: int, tokens: int, elapsed: float) -> None:
    with atomic_dir(ckpt_dir) as tmp:
        sae.save_pretrained(tmp / "sae")
        torch.save(opt.state_dict(), tmp / "optimizer.pt")
        (tmp / "state.json").write_text(json.dumps({"step": step, "tokens": tokens, "seconds": elapsed}))


def _load_checkpoint(ckpt_dir: Path, sae: MLSAE, opt, cfg: TrainConfig) -> tuple[int, int, float]:
    saved = MLSAE.from_pretrained(ckpt_dir / "sae")
    if saved.cfg != sae.cfg:
        raise ValueError(f"checkpoint at {ckpt_dir} was written for a different SAE configuration; delete it or change out_dir")
    sae.load_state_dict(saved.state_dict())
    opt.load_state_dict(torch.load(ckpt_dir / "optimizer.pt", map_location=cfg.device))
    state = json.loads((ckpt_dir / "state.json").read_text())
    return state["step"], state["tokens"], state["seconds"]


def _read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

