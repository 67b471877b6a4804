"""Checkpoints: one folder written whole (the SAE, Adam, the loss scaler, the token stream's position and the
config), read back exactly, and refused with one clear message when incomplete or written under other
settings. No pickle: every tensor is in the one result format (:func:`mlsae.core.paths.save_result`)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from mlsae.core.paths import atomic_dir, load_result, save_result
from mlsae.sae.model import MLSAE
from mlsae.training.config import NESTED, NOT_IN_WEIGHTS, TrainConfig


def save_checkpoint(ckpt_dir: Path, sae: MLSAE, opt, scaler, stream: dict, state: dict, cfg: TrainConfig) -> None:
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


# The one fix for a checkpoint that cannot be resumed (the folder's other files are rewritten by the new run).
START_OVER = "start this run over: --no-resume (CLI) or resume=False (Python), or train into another folder (--out)"


def check_resume_config(ckpt_dir: Path, cfg: TrainConfig) -> None:
    """Refuse to resume a checkpoint under other hyper-parameters (the checkpoint's would silently win)."""
    _require_checkpoint_files(ckpt_dir)
    changed = changed_settings(ckpt_dir / "train_config.json", cfg)
    if changed:
        raise ValueError(f"cannot resume {ckpt_dir} with other settings ({'; '.join(changed)}): resume with the "
                         f"checkpoint's settings, or {START_OVER}")


def changed_settings(path: Path, cfg: TrainConfig) -> list[str]:
    """The settings that change the weights (not :data:`NOT_IN_WEIGHTS`) in which the run whose ``train_config.json``
    is ``path`` differs from ``cfg``, as ``"name: checkpoint X, now Y"``."""
    try:
        saved = json.loads(path.read_text())
    except ValueError:
        raise ValueError(f"{path}: not valid JSON; {START_OVER}") from None
    if not isinstance(saved, dict):
        raise ValueError(f"{path}: not a training config of this version of mlsae; {START_OVER}")
    # compared by flat names (so a change names the field: k, not sae), as stored: not re-validated here, where the
    # saved device or tracker need not exist
    before = {k: v for k, v in saved.items() if k not in NESTED}
    for name in NESTED:
        before.update(saved.get(name) or {})
    now = cfg.flat()  # a field the checkpoint predates is not a change
    return [f"{k}: checkpoint {before[k]!r}, now {now[k]!r}" for k in now
            if k in before and k not in NOT_IN_WEIGHTS and before[k] != now[k]]


CHECKPOINT_FILES = ("sae/config.json", "sae/model.safetensors", "optimizer.safetensors", "stream.safetensors",
                    "train_config.json", "state.json")


def _require_checkpoint_files(ckpt_dir: Path) -> None:
    missing = [name for name in CHECKPOINT_FILES if not (ckpt_dir / name).is_file()]
    if missing:
        raise ValueError(f"{ckpt_dir}: not a complete checkpoint of this version of mlsae (missing "
                         f"{', '.join(missing)}); {START_OVER}")


def load_checkpoint(ckpt_dir: Path, sae: MLSAE, opt, scaler) -> tuple[int, int, float, dict]:
    """Restore ``sae``, ``opt`` and ``scaler`` in place; returns step, tokens, seconds and the stream position."""
    _require_checkpoint_files(ckpt_dir)
    try:
        saved = type(sae).from_pretrained(ckpt_dir / "sae")
    except (ValueError, OSError) as err:  # a torn model.safetensors or config.json
        raise _torn(ckpt_dir / "sae", ckpt_dir, err) from None
    if saved.cfg != sae.cfg:
        raise ValueError(f"checkpoint at {ckpt_dir} was written for a different SAE configuration; {START_OVER}")
    sae.load_state_dict(saved.state_dict())
    path = ckpt_dir / "optimizer.safetensors"
    try:
        state = _load_optimizer(path)
    except Exception as err:  # a torn file, or anything that is not a plain state dict
        raise _torn(path, ckpt_dir, err) from None
    opt.load_state_dict(state)  # moves the state to the parameters' device
    state = json.loads((ckpt_dir / "state.json").read_text())
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    try:
        tensors, meta = load_result(ckpt_dir / "stream.safetensors")
    except Exception as err:
        raise _torn(ckpt_dir / "stream.safetensors", ckpt_dir, err) from None
    stream = {**meta, "carry": tensors["carry"].tolist()}
    return state["step"], state["tokens"], state["seconds"], stream


def _torn(path: Path, ckpt_dir: Path, err: Exception) -> ValueError:
    """One message for every unreadable checkpoint file: what failed (the reason's first line, whole) and the one
    fix, starting the run over (``--no-resume`` in the CLI, ``resume=False`` in Python; nothing else is lost)."""
    reason = (str(err).strip().splitlines() or [""])[0].split("; ")[0]  # what failed, not the reader's own advice
    return ValueError(f"{path}: cannot be read ({type(err).__name__}: {reason}), so the checkpoint at {ckpt_dir} is "
                      f"incomplete; {START_OVER}")


def read_jsonl(path: Path) -> list[dict]:
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
