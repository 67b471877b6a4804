"""An MLSAE's files: ours (``save_pretrained``) and the authors' released layouts (a ``tim-lawson/mlsae-*``
TopKSAE, or the autoencoder inside a ``-tfm`` MLSAETransformer), read into one form; the folder a source
names (a run, an SAE folder, a hub id); provenance and the model card. No model code: :mod:`mlsae.sae.model`
builds the module from what is read here."""

from __future__ import annotations

import json
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

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
    CrosscoderConfig,
    SAEConfig,
)


def write_sae(path: str | Path, cfg: SAEConfig, tensors: dict[str, Tensor], provenance: dict | None = None,
              card: str | None = None) -> None:
    """``model.safetensors`` + ``config.json`` (with ``provenance``, ``provenance.json``; with ``card``, the model
    card ``README.md``) written into the folder ``path`` atomically: an existing folder is replaced only once the
    new one is complete."""
    tensors = {name: t.detach().cpu().contiguous() for name, t in tensors.items()}
    config = {"format": FORMAT, "format_version": FORMAT_VERSION, **asdict(cfg)}
    with atomic_dir(Path(path)) as tmp:
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": FORMAT})
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        if provenance:
            (tmp / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2, default=str) + "\n")
        if card is not None:
            (tmp / "README.md").write_text(card)


def read_sae(path: str | Path, tokens_per_step: int = PAPER_TOKENS_PER_STEP,
             tokens_per_forward: int = PAPER_TOKENS_PER_FORWARD, **hub: Any) -> tuple[SAEConfig, dict[str, Tensor]]:
    """``(cfg, tensors)`` of the SAE in ``path``: ``tensors`` holds ``W_enc`` [m, d], ``W_dec`` [d, m], ``b_pre``
    [d] and, when saved, ``tokens_since_fired`` [m], each checked against ``cfg``. The layouts read:
    :meth:`mlsae.sae.model.MLSAE.from_pretrained`; ``hub``: :func:`local_folder`'s revision and download options."""
    path = check_sae_files(local_folder(path, **hub))
    config_path, weights_path = path / CONFIG_FILE, path / WEIGHTS_FILE
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
        kind = CrosscoderConfig if raw.get("architecture") == "crosscoder" else SAEConfig
        known = {f.name for f in fields(kind)}
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
            cfg = kind(**{key: raw[key] for key in raw if key in known})
        except (TypeError, ValueError) as err:
            raise ValueError(f"{config_path}: {err}") from None
        names = {"W_enc": "W_enc", "W_dec": "W_dec", "b_pre": "b_pre"}
        fired = tensors.get("tokens_since_fired")
    where = f"{weights_path} (tensors autoencoder.*)" if layout == "tfm" else str(weights_path)
    d, m = cfg.input_width, cfg.n_latents  # a crosscoder's example is its layers' vectors, concatenated
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


def check_sae_files(path: Path) -> Path:
    """``path`` if it holds an SAE's two files; else the error naming the one missing."""
    for p in (path / CONFIG_FILE, path / WEIGHTS_FILE):
        if not p.is_file():
            raise FileNotFoundError(f"{p}: missing; expected a directory written by MLSAE.save_pretrained "
                                    "or a released MLSAE (config.json + model.safetensors)")
    return path


def read_provenance(path: str | Path) -> dict:
    """What a saved SAE says it was trained on (``{}`` for a folder saved without it)."""
    file = Path(path) / PROVENANCE_FILE
    return json.loads(file.read_text()) if file.is_file() else {}


def sae_folder(source: str | Path) -> Path:
    """The folder of the MLSAE that ``source`` names: a training run (its ``sae/``), an SAE folder (ours or a
    released one) or a hub id in the local cache; fails at once, naming what is missing."""
    folder = local_folder(source)
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


def is_hub_id(source: str | Path) -> bool:
    """Whether ``source`` names a hub repository (``org/name``) rather than a local folder: it does not exist
    here, does not start like a path (``.``, ``/``, ``~``) and has exactly one ``/``."""
    text = str(source)
    return not (Path(text).expanduser().exists() or text.startswith((".", "/", "~")) or text.count("/") != 1)


def local_folder(source: str | Path, *, revision: str | None = None, cache_dir: str | Path | None = None,
                 force_download: bool = False, local_files_only: bool = False, token: str | bool | None = None) -> Path:
    """A local folder as it is, or the snapshot of hub repo ``source`` at ``revision`` (a branch, a tag or a
    commit; default ``main``): from the local cache first, downloaded unless offline (``HF_HUB_OFFLINE``,
    ``local_files_only``). Fails at once naming the repository, the revision and how to fetch it."""
    if not is_hub_id(source):
        if revision is not None:
            raise ValueError(f"{source}: a local folder has no revisions (revision={revision!r} is for hub ids "
                             "such as tim-lawson/mlsae-pythia-70m-deduped-x64-k32)")
        return Path(source).expanduser()
    from huggingface_hub import snapshot_download  # heavy: loaded where used

    text, at = str(source), "" if revision is None else f" at revision {revision!r}"

    def snapshot(**kw) -> Path:
        return Path(str(snapshot_download(text, revision=revision, cache_dir=cache_dir, token=token, **kw)))

    if not force_download:
        try:
            return snapshot(local_files_only=True)
        except Exception:  # noqa: BLE001 - not cached (or not at that revision): try the hub unless told not to
            pass
    if local_files_only or hub.offline_requested():
        raise FileNotFoundError(f"{text}: no such folder, and the hub repo{at} is not in the local cache "
                                f"(HF_HUB_OFFLINE is set or local_files_only=True); fetch it with `hf download "
                                f"{text}{'' if revision is None else ' --revision ' + revision}`")
    try:
        return snapshot(force_download=force_download)
    except Exception as err:  # noqa: BLE001
        raise FileNotFoundError(f"{text}: no such folder, and the hub repo{at} could not be fetched "
                                f"({type(err).__name__}: {err})") from None


MODEL_CARD_TEMPLATE = """---
{{ card_data }}
---

{{ body }}
Paper: {{ paper_url }}
"""


def model_card_body(cfg: SAEConfig, provenance: dict | None) -> str:
    """The model card's text below its metadata: what the SAE is and, from ``provenance``, what it was trained on.
    The card itself (metadata, template) is the Hub mixin's: :meth:`mlsae.sae.model.MLSAE.generate_model_card`."""
    p = provenance or {}
    layers = "every layer (a multi-layer SAE)" if cfg.layers is None else f"layers {cfg.layers}"
    if isinstance(cfg, CrosscoderConfig):
        layers = f"layers {cfg.layers} (an acausal crosscoder: one code per token, read from and written to each)"
    shape = f"{cfg.n_latents} (R = {cfg.n_latents // cfg.d_model}), k = {cfg.k}, d_model = {cfg.d_model}"
    if not p:
        return (f"# Multi-layer SAE\n\nA top-k sparse autoencoder on the residual stream of {layers}: {shape} latents. "
                "Saved without provenance (what it was trained on is not recorded).\n\n"
                "Load with `MLSAE.from_pretrained(path_or_repo)`.\n")
    lens = f"yes ({p.get('lens')})" if p.get("tuned_lens") else "no"
    metrics = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in (p.get("metrics") or {}).items())
    rows = [("model", f"`{p.get('model')}`"), ("model weights", f"`{p.get('model_identity')}`"),
            ("layers", layers), ("tuned lens", lens), ("data", f"`{p.get('data')}` ({p.get('split', 'train')} split), "
                                                                f"`{p.get('data_identity')}`"),
            ("latents", shape),
            ("preset", f"`{p.get('preset')}`"), ("tokens seen", f"{p.get('tokens'):,}" if p.get("tokens") else "?"),
            ("training", f"{p.get('steps', '?')} steps, seed {p.get('seed', '?')}, {p.get('processes', 1)} process(es)"),
            ("final training metrics", metrics or "?"), ("cache key", f"`{p.get('cache_key')}`"),
            ("mlsae", f"{p.get('mlsae_version')} (git {p.get('git_commit') or 'unknown'})")]
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    return (f"# Multi-layer SAE for `{p.get('model')}`\n\n"
            f"A top-k sparse autoencoder trained on the residual stream of {layers} of `{p.get('model')}` "
            f"with `mlsae`, a reproduction of *Residual Stream Analysis with Multi-Layer SAEs* (ICLR 2025).\n\n"
            f"| | |\n| --- | --- |\n{table}\n\n"
            "Load with `MLSAE.from_pretrained(path_or_repo, revision=...)`; evaluate with "
            "`python -m mlsae eval <run folder>`; use it in SAELens with `python -m mlsae export <run> --format saelens`.\n")
