"""An MLSAE's files: ours (``save_pretrained``) and the authors' released layouts (a ``tim-lawson/mlsae-*``
TopKSAE, or the autoencoder inside a ``-tfm`` MLSAETransformer), read into one form; the folder a source
names (a run, an SAE folder, a hub id); provenance and the model card. No model code: :mod:`mlsae.sae.model`
builds the module from what is read here."""

from __future__ import annotations

import json
from dataclasses import asdict, fields
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from mlsae.core import hub
from mlsae.core.paths import atomic_dir
from mlsae.sae.config import (
    CONFIG_FILE,
    FORMAT,
    FORMAT_VERSION,
    PAPER_TOKENS_PER_FORWARD,
    PAPER_TOKENS_PER_STEP,
    PROVENANCE_FILE,
    WEIGHTS_FILE,
    SAEConfig,
)


def write_sae(path: str | Path, cfg: SAEConfig, tensors: dict[str, Tensor], provenance: dict | None = None) -> None:
    """``model.safetensors`` + ``config.json`` (and with ``provenance``, ``provenance.json`` and a model card)
    written into the folder ``path`` atomically."""
    tensors = {name: t.detach().cpu().contiguous() for name, t in tensors.items()}
    config = {"format": FORMAT, "format_version": FORMAT_VERSION, **asdict(cfg)}
    with atomic_dir(Path(path)) as tmp:
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": FORMAT})
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        if provenance is not None:
            (tmp / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2, default=str) + "\n")
            (tmp / "README.md").write_text(model_card(cfg, provenance))


def read_sae(path: str | Path, tokens_per_step: int = PAPER_TOKENS_PER_STEP,
             tokens_per_forward: int = PAPER_TOKENS_PER_FORWARD) -> tuple[SAEConfig, dict[str, Tensor]]:
    """``(cfg, tensors)`` of the SAE in ``path``: ``tensors`` holds ``W_enc`` [m, d], ``W_dec`` [d, m], ``b_pre``
    [d] and, when saved, ``tokens_since_fired`` [m], each checked against ``cfg``. The layouts read:
    :meth:`mlsae.sae.model.MLSAE.from_pretrained`."""
    path = _local_or_hub(path)
    config_path, weights_path = path / CONFIG_FILE, path / WEIGHTS_FILE
    for p in (config_path, weights_path):
        if not p.is_file():
            raise FileNotFoundError(
                f"{p}: missing; expected a directory written by MLSAE.save_pretrained "
                "or a released MLSAE (config.json + model.safetensors)"
            )
    raw = _read_config(config_path)
    layout = released_layout(raw)
    prefix = "autoencoder." if layout == "tfm" else ""
    try:
        with safe_open(str(weights_path), framework="pt") as f:
            shapes = {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
            wanted = {"encoder.weight", "decoder.weight", "pre_encoder_bias", "last_nonzero"} if layout else \
                {"W_enc", "W_dec", "b_pre", "tokens_since_fired"}
            tensors = {key[len(prefix):]: f.get_tensor(key) for key in shapes if key[len(prefix):] in wanted
                       and key.startswith(prefix)}
    except Exception as err:  # safetensors raises its own error type for a torn or foreign file
        raise ValueError(
            f"{weights_path}: cannot be read ({err}); the file is truncated or not a safetensors file, e.g. "
            "from a run killed while writing. Delete its folder and train again (a training run resumes "
            "from its last complete checkpoint)"
        ) from None
    if layout:  # released (tim-lawson/mlsae TopKSAE, or the autoencoder inside an MLSAETransformer)
        if layout == "tfm":
            tokens_per_forward = raw.get("batch_size", 1) * raw.get("max_length", 2048)
            tokens_per_step = tokens_per_forward * raw.get("accumulate_grad_batches", 64)
        try:
            d_model, n_latents = _shape(raw, layout, shapes[prefix + "encoder.weight"] if layout == "tfm" else None)
            dead_steps = raw.get("dead_steps_threshold")
            cfg = SAEConfig(
                d_model=d_model,
                n_latents=n_latents,
                k=raw["k"],
                k_aux=raw.get("auxk") or 0,
                dead_tokens=dead_steps * tokens_per_step if dead_steps else raw["dead_tokens_threshold"],
                dead_threshold=raw.get("dead_threshold", 1e-3),
                standardize=raw.get("standardize", True),
                layers=raw.get("layers"),
            )
        except KeyError as err:
            raise ValueError(f"{config_path}: released-MLSAE config (or {weights_path}) lacks {err}") from None
        names = {"W_enc": "encoder.weight", "W_dec": "decoder.weight", "b_pre": "pre_encoder_bias"}
        counter = tensors.get("last_nonzero")
        fired = None if counter is None else counter.long() * tokens_per_forward
    else:
        known = {f.name for f in fields(SAEConfig)}
        unknown = set(raw) - known - {"format", "format_version"}
        if unknown:
            raise ValueError(f"{config_path}: unknown config keys {sorted(unknown)}")
        if raw.get("format", FORMAT) != FORMAT or raw.get("format_version", FORMAT_VERSION) != FORMAT_VERSION:
            raise ValueError(f"{config_path}: format {raw.get('format')!r} version {raw.get('format_version')!r}; this "
                             f"mlsae ({FORMAT!r} version {FORMAT_VERSION}) reads only its own: a newer file needs a newer "
                             "mlsae (pip install -U), an older one is not read (train it again)")
        extra = sorted(set(shapes) - {"W_enc", "W_dec", "b_pre", "tokens_since_fired"})
        if extra:
            raise ValueError(f"{weights_path}: tensors this format does not have: {extra[:8]}; not an MLSAE written "
                             "by save_pretrained (for a released layout, its config.json says which)")
        try:
            cfg = SAEConfig(**{key: raw[key] for key in raw if key in known})
        except (TypeError, ValueError) as err:
            raise ValueError(f"{config_path}: {err}") from None
        names = {"W_enc": "W_enc", "W_dec": "W_dec", "b_pre": "b_pre"}
        fired = tensors.get("tokens_since_fired")
    where = f"{weights_path} (tensors autoencoder.*)" if layout == "tfm" else str(weights_path)
    d, m = cfg.d_model, cfg.n_latents
    shapes_wanted = {"W_enc": (m, d), "W_dec": (d, m), "b_pre": (d,)}
    out: dict[str, Tensor] = {}
    for attr, key in names.items():
        if key not in tensors:
            raise ValueError(f"{where}: missing tensor {prefix + key!r} (has {sorted(shapes)[:12]})")
        if tuple(tensors[key].shape) != shapes_wanted[attr]:
            raise ValueError(
                f"{where}: {key!r} has shape {tuple(tensors[key].shape)}, expected {shapes_wanted[attr]} "
                f"from {config_path} (d_model={d}, n_latents={m})"
            )
        if not torch.isfinite(tensors[key]).all():
            raise ValueError(f"{where}: {key!r} holds NaN or infinite values (a diverged run); this SAE cannot be "
                             "used: train it again (e.g. with a lower lr)")
        out[attr] = tensors[key]
    if fired is not None:
        if tuple(fired.shape) != (m,):
            raise ValueError(f"{where}: dead-latent counter has shape {tuple(fired.shape)}, expected ({m},)")
        out["tokens_since_fired"] = fired
    return cfg, out


def read_provenance(path: str | Path) -> dict:
    """What a saved SAE says it was trained on (``{}`` for a folder saved without it)."""
    file = Path(path) / PROVENANCE_FILE
    return json.loads(file.read_text()) if file.is_file() else {}


def sae_folder(source: str | Path) -> Path:
    """The folder of the MLSAE that ``source`` names: a training run (its ``sae/``), an SAE folder (ours or a
    released one) or a hub id in the local cache; fails at once, naming what is missing."""
    folder = _local_or_hub(source)
    if (folder / "sae" / CONFIG_FILE).is_file():
        folder = folder / "sae"
    if not (folder / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{source}: no MLSAE there (no {CONFIG_FILE} in {folder}); give a run folder, an "
                                "SAE folder (config.json + model.safetensors) or a hub id such as "
                                "tim-lawson/mlsae-pythia-70m-deduped-x64-k32")
    return folder


def released_layout(raw: dict) -> str | None:
    """Which released layout a ``config.json`` is in: ``"sae"`` (a ``tim-lawson/mlsae-*`` TopKSAE: ``n_inputs``,
    ``n_latents``), ``"tfm"`` (a ``-tfm`` MLSAETransformer: ``model_name``, ``expansion_factor``, weights under
    ``autoencoder.``), or ``None`` for ours."""
    if "n_inputs" in raw:
        return "sae"
    if "model_name" in raw and "expansion_factor" in raw:
        return "tfm"
    return None


def _read_config(config_path: Path) -> dict:
    try:
        return json.loads(Path(config_path).read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{config_path}: not valid JSON ({err})") from err


def sae_shape(folder: Path) -> tuple[int, int, int]:
    """``(d_model, n_latents, k)`` from an SAE folder (ours or a released layout), without loading its weights."""
    raw = _read_config(Path(folder) / CONFIG_FILE)
    layout = released_layout(raw)
    encoder = None
    if layout == "tfm":
        with safe_open(str(Path(folder) / WEIGHTS_FILE), framework="pt") as f:
            encoder = tuple(f.get_slice("autoencoder.encoder.weight").get_shape())
    return (*_shape(raw, layout, encoder), int(raw["k"]))


def _shape(raw: dict, layout: str | None, encoder: tuple | None) -> tuple[int, int]:
    """``(d_model, n_latents)`` as a config states them; a ``-tfm`` config states R only, and its encoder's shape
    ``[n_latents, d_model]`` the width."""
    if layout == "tfm":
        assert encoder is not None
        return int(encoder[1]), int(encoder[1] * raw["expansion_factor"])
    d_model = raw["n_inputs"] if layout == "sae" else raw["d_model"]
    return int(d_model), int(raw["n_latents"])


def released_facts(folder: Path) -> dict:
    """What a released ``-tfm`` checkpoint's config says about how it was trained: its model (``model_name``)
    and whether a tuned lens came first; ``{}`` for other layouts (ours say it in ``provenance.json``)."""
    raw = _read_config(Path(folder) / CONFIG_FILE)
    if released_layout(raw) != "tfm":
        return {}
    return {"model": raw["model_name"], "tuned_lens": bool(raw.get("tuned_lens", False))}


def _local_or_hub(path: str | Path) -> Path:
    """A local folder, or the snapshot of hub repo ``path`` (cache first; download unless offline)."""
    local = Path(path).expanduser()
    text = str(path)
    if local.exists() or text.startswith((".", "/", "~")) or text.count("/") != 1:
        return local
    from huggingface_hub import snapshot_download  # heavy: loaded where used

    try:
        return Path(snapshot_download(text, local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached: try the hub unless told not to
        if hub.offline_requested():
            raise FileNotFoundError(f"{text}: no such folder, and the hub repo is not in the local cache "
                                    f"(HF_HUB_OFFLINE is set); fetch it with `hf download {text}`") from None
        try:
            return Path(snapshot_download(text))
        except Exception as err:  # noqa: BLE001
            raise FileNotFoundError(f"{text}: no such folder, and the hub repo could not be fetched "
                                    f"({type(err).__name__}: {err})") from None


def model_card(cfg: SAEConfig, provenance: dict) -> str:
    """A Hugging Face model card (``README.md``) stating what the SAE is and what it was trained on."""
    p = provenance
    layers = "every layer (a multi-layer SAE)" if cfg.layers is None else f"layers {cfg.layers}"
    lens = f"yes ({p.get('lens')})" if p.get("tuned_lens") else "no"
    metrics = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in (p.get("metrics") or {}).items())
    rows = [("model", f"`{p.get('model')}`"), ("model weights", f"`{p.get('model_identity')}`"),
            ("layers", layers), ("tuned lens", lens), ("data", f"`{p.get('data')}` ({p.get('split', 'train')} split), "
                                                                f"`{p.get('data_identity')}`"),
            ("latents", f"{cfg.n_latents} (R = {cfg.n_latents // cfg.d_model}), k = {cfg.k}, d_model = {cfg.d_model}"),
            ("preset", f"`{p.get('preset')}`"), ("tokens seen", f"{p.get('tokens'):,}" if p.get("tokens") else "?"),
            ("training", f"{p.get('steps', '?')} steps, seed {p.get('seed', '?')}, {p.get('processes', 1)} process(es)"),
            ("final training metrics", metrics or "?"), ("cache key", f"`{p.get('cache_key')}`"),
            ("mlsae", f"{p.get('mlsae_version')} (git {p.get('git_commit') or 'unknown'})")]
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    return (f"---\nlibrary_name: mlsae\ntags:\n- sparse-autoencoder\n- interpretability\n---\n\n"
            f"# Multi-layer SAE for `{p.get('model')}`\n\n"
            f"A top-k sparse autoencoder trained on the residual stream of {layers} of `{p.get('model')}` "
            f"with `mlsae`, a reproduction of *Residual Stream Analysis with Multi-Layer SAEs* (ICLR 2025).\n\n"
            f"| | |\n| --- | --- |\n{table}\n\n"
            f"Load with `MLSAE.from_pretrained(path)`; evaluate with `python -m mlsae eval <run folder>`.\n")
