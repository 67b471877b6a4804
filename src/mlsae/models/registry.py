"""Model registry: short names, Hugging Face ids, local folders and the offline zoo.

Every model is loaded through ``transformers``' ``from_pretrained``. Names resolve as follows
(first match wins):

1. a registry short name: ``pythia-70m`` ... ``pythia-1.4b`` (the ``EleutherAI/pythia-*-deduped``
   checkpoints the paper used) and ``gpt2`` (``openai-community/gpt2``, also found in the cache
   under its legacy id ``gpt2``), and
   ``gpt2-medium``, ``gpt2-large``, ``tinyllama-1.1b`` and ``llama-3.2-1b`` (other architecture
   families; their hub ids also resolve with known shapes);
2. an offline zoo name (``zoo-s/m/l``, ``micro-s/m/l`` in GPT-NeoX; ``zoo-gpt2-s/m``,
   ``zoo-llama-s/m``, ``micro-gpt2-s/m``, ``micro-llama-s/m``): built on this machine by
   :mod:`mlsae.models.zoo` on first use;
3. an existing local directory holding a ``save_pretrained`` model;
4. any Hugging Face id of the form ``org/name``.

Weights are never downloaded silently or slowly: a hub model is first looked up in the local
Hugging Face cache only; if it is missing and ``HF_HUB_OFFLINE`` is set we fail at once, else a
reachability probe with a hard timeout of a few seconds runs before any download is attempted.
Every failure is a :class:`ModelNotAvailableError` naming the repository, the cache folder in
use and the command that fetches the model on a machine with network.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mlsae.core import hub
from mlsae.core.cache import files_digest
from mlsae.core.progress import drop_benign_warnings, quiet_transformers

__all__ = [
    "ModelNotAvailableError",
    "ModelSource",
    "REGISTRY",
    "ZOO_NAMES",
    "hf_cache_dir",
    "is_available",
    "list_models",
    "load_model",
    "model_context",
    "model_shape",
    "resolve_model",
]

class ModelNotAvailableError(RuntimeError):
    """A model that is neither on this machine nor downloadable right now."""


@dataclass(frozen=True)
class _Entry:
    repo_id: str
    n_layers: int
    d_model: int
    description: str
    aliases: tuple[str, ...] = ()
    context: int = 2048  # positions the model was trained on (the longest usable seq_len)


# Short names -> hub checkpoints, with the shapes of PAPER.md §1.
REGISTRY: dict[str, _Entry] = {
    "pythia-70m": _Entry("EleutherAI/pythia-70m-deduped", 6, 512, "Pythia 70M (deduped), paper model"),
    "pythia-160m": _Entry("EleutherAI/pythia-160m-deduped", 12, 768, "Pythia 160M (deduped), paper model"),
    "pythia-410m": _Entry("EleutherAI/pythia-410m-deduped", 24, 1024, "Pythia 410M (deduped), paper model"),
    "pythia-1b": _Entry("EleutherAI/pythia-1b-deduped", 16, 2048, "Pythia 1B (deduped), paper model"),
    "pythia-1.4b": _Entry("EleutherAI/pythia-1.4b-deduped", 24, 2048, "Pythia 1.4B (deduped), paper model"),
    "gpt2": _Entry("openai-community/gpt2", 12, 768, "GPT-2 small", aliases=("gpt2",), context=1024),
    # Other architecture families (the model-family comparison, notebook 12).
    "gpt2-medium": _Entry("openai-community/gpt2-medium", 24, 1024, "GPT-2 medium", aliases=("gpt2-medium",), context=1024),
    "gpt2-large": _Entry("openai-community/gpt2-large", 36, 1280, "GPT-2 large", aliases=("gpt2-large",), context=1024),
    "tinyllama-1.1b": _Entry("TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T", 22, 2048,
                             "TinyLlama 1.1B (Llama architecture, 3T tokens)"),
    "llama-3.2-1b": _Entry("meta-llama/Llama-3.2-1B", 16, 2048, "Llama 3.2 1B (gated on the hub: accept the licence first)"),
}

# Shapes of hub ids given directly (also the non-deduped Pythia runs, which share the shapes).
_KNOWN_SHAPES: dict[str, tuple[int, int]] = {}
for _e in REGISTRY.values():
    for _rid in (_e.repo_id, *_e.aliases):
        _KNOWN_SHAPES[_rid.lower()] = (_e.n_layers, _e.d_model)
    if _e.repo_id.endswith("-deduped"):
        _KNOWN_SHAPES[_e.repo_id[: -len("-deduped")].lower()] = (_e.n_layers, _e.d_model)

# Offline zoo (mlsae.models.zoo); the list is static so that resolving a name never imports the zoo.
ZOO_NAMES: tuple[str, ...] = (
    "zoo-s", "zoo-m", "zoo-l", "zoo-xl", "micro-s", "micro-m", "micro-l",
    "zoo-s-seed1", "zoo-m-seed1", "zoo-l-seed1", "zoo-xl-seed1",
    "zoo-gpt2-s", "zoo-gpt2-m", "zoo-llama-s", "zoo-llama-m",
    "micro-gpt2-s", "micro-gpt2-m", "micro-llama-s", "micro-llama-m",
)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from. ``n_layers``/``d_model`` are filled in when known without loading."""

    kind: str  # "zoo" | "local" | "hub"
    repo_id_or_path: str
    name: str  # the name as given by the user (short name, hub id or path)
    n_layers: int | None = None
    d_model: int | None = None
    aliases: tuple[str, ...] = field(default=())  # other hub ids the same checkpoint is cached under

    @property
    def shape(self) -> tuple[int, int] | None:
        return (self.n_layers, self.d_model) if self.n_layers is not None and self.d_model is not None else None


# ---- resolution -------------------------------------------------------------------------------


def _zoo_names() -> tuple[str, ...]:
    try:
        from mlsae.models.zoo import ZOO  # lazy: the zoo is optional for resolving names
    except Exception:  # noqa: BLE001 - zoo missing or broken: the static names still resolve
        return ZOO_NAMES
    return tuple(dict.fromkeys((*ZOO_NAMES, *ZOO)))


def _zoo_shape(name: str) -> tuple[int, int] | None:
    """(n_layers, d_model) from the zoo's spec, if it exposes them."""
    try:
        from mlsae.models.zoo import ZOO  # the zoo pulls in its trainer and datasets: only for zoo names

        spec = ZOO[name]
    except Exception:  # noqa: BLE001
        return None

    def first(keys):
        for holder in (spec, getattr(spec, "config", None)):
            for k in keys:
                v = holder.get(k) if isinstance(holder, dict) else getattr(holder, k, None)
                if isinstance(v, int) and not isinstance(v, bool) and v > 0:
                    return v
        return None

    n = first(("n_layers", "num_hidden_layers", "num_layers", "n_layer"))
    d = first(("d_model", "hidden_size", "n_embd", "width"))
    return (n, d) if n is not None and d is not None else None


def _zoo_family(name: str) -> str:
    """Architecture family of a zoo model ("GPT-NeoX", "GPT-2", "Llama"), from its spec or its name."""
    try:
        from mlsae.models.zoo import FAMILY, ZOO  # the zoo pulls in its trainer and datasets: only for zoo names

        return FAMILY[ZOO[name].arch]
    except Exception:  # noqa: BLE001 - zoo missing, stubbed or without the field: go by the name
        return "GPT-2" if "-gpt2-" in name else "Llama" if "-llama-" in name else "GPT-NeoX"


def list_models() -> list[dict]:
    """The registry as rows (name, kind, source, n_layers, d_model, description), for docs and notebooks."""
    rows = [
        dict(name=k, kind="hub", source=e.repo_id, n_layers=e.n_layers, d_model=e.d_model, description=e.description)
        for k, e in REGISTRY.items()
    ]
    for z in _zoo_names():
        shape = _zoo_shape(z) or (None, None)
        family = _zoo_family(z)
        desc = (f"offline zoo: {family} trained here on generated text" if z.startswith("zoo-")
                else f"offline micro model for tests/CI ({family})")
        rows.append(dict(name=z, kind="zoo", source="mlsae.models.zoo", n_layers=shape[0], d_model=shape[1], description=desc))
    return rows


def _unknown(name: str, why: str) -> ValueError:
    known = [*REGISTRY, *_zoo_names()]
    close = difflib.get_close_matches(name.lower(), known, n=3, cutoff=0.6)
    hint = f"Did you mean {' or '.join(map(repr, close))}? " if close else ""
    return ValueError(
        f"unknown model {name!r}: {why}. {hint}Use a registry name (python -c 'from mlsae.models.registry import list_models; print(list_models())' "
        f"lists them: pythia-70m ... pythia-12b, gpt2, zoo-s ... zoo-xl, ...), a Hugging Face id such as "
        f"'EleutherAI/pythia-70m-deduped', or a local directory written by save_pretrained."
    )


def canonical_model_name(name: str) -> str:
    """The name a run records for ``name``: a local folder as its absolute path (``./model`` means another
    folder from another directory), anything else as given. Unknown names fail here (:func:`resolve_model`)."""
    src = resolve_model(name)
    return src.repo_id_or_path if src.kind == "local" else str(name).strip()


def check_device(device: str) -> None:
    """``device`` names a torch device this machine has; else a ValueError saying what to pass."""
    try:
        torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device {device!r} is not a torch device; use 'cpu', 'cuda' or 'cuda:N'") from None
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} but no CUDA device is available here; use device 'cpu' (--device cpu)")


def resolve_model(name: str) -> ModelSource:
    """Resolve ``name`` without loading anything (and without touching the network)."""
    if not isinstance(name, (str, os.PathLike)) or not str(name).strip():
        raise _unknown(str(name), "expected a non-empty string")
    name = str(name).strip()
    key = name.lower()
    if key in REGISTRY:
        e = REGISTRY[key]
        return ModelSource("hub", e.repo_id, key, e.n_layers, e.d_model, aliases=e.aliases)
    if key in _zoo_names():
        shape = _zoo_shape(key) or (None, None)
        return ModelSource("zoo", key, key, *shape)
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ValueError(f"local model directory {str(path)!r} has no config.json (expected a save_pretrained folder)")
        found = _config_shape(path)
        return ModelSource("local", str(path.resolve()), name, *(found or (None, None)))
    if path.exists():
        raise ValueError(f"{name!r} is a file, not a model directory (expected a save_pretrained folder)")
    if _HUB_ID.match(name) and not name.startswith((".", "~")):
        shape = _KNOWN_SHAPES.get(key) or (None, None)
        return ModelSource("hub", name, name, *shape)
    if name.startswith((".", "~", os.sep)) or os.sep in name:
        raise ValueError(f"local model directory {str(path)!r} does not exist")
    raise _unknown(name, "not a registry name, not an existing directory and not a Hugging Face id 'org/name'")


def _config_shape(path: Path) -> tuple[int, int] | None:
    try:
        from transformers import AutoConfig  # heavy: loaded where used

        cfg = AutoConfig.from_pretrained(str(path), local_files_only=True)
        return int(cfg.num_hidden_layers), int(cfg.hidden_size)
    except Exception:  # noqa: BLE001 - unknown config layout: shape simply unknown
        return None


def model_context(name: str) -> int | None:
    """The longest sequence ``name`` takes (its position table), without loading weights; ``None``
    if unknown here (then :func:`mlsae.models.residuals.max_positions` checks the loaded model)."""
    src = resolve_model(name)
    entry = REGISTRY.get(name) or next((e for e in REGISTRY.values() if e.repo_id == src.repo_id_or_path), None)
    if entry is not None:
        return entry.context
    if src.kind == "zoo":
        try:
            from mlsae.models.zoo import ZOO  # the zoo pulls in its trainer and datasets: only for zoo names

            return 1024 if ZOO[name].arch == "gpt2" else 2048  # as ZooSpec.config sets them
        except Exception:  # noqa: BLE001 - zoo missing or stubbed
            return None
    folder = Path(src.repo_id_or_path) if src.kind == "local" else _cached_snapshot(src)
    if folder is None:
        return None
    try:
        config = json.loads((Path(folder) / "config.json").read_text())
    except (OSError, TypeError, ValueError):
        return None
    return config.get("max_position_embeddings") or config.get("n_positions")


def model_shape(name: str) -> tuple[int, int] | None:
    """(n_layers, d_model) without loading weights or touching the network; ``None`` if unknown here. A hub
    model's cached ``config.json`` is what will be loaded, so it is read first; the registry's shape else."""
    src = resolve_model(name)
    if src.kind == "hub" and (cached := _cached_snapshot(src)) is not None:
        return _config_shape(cached)
    return src.shape


# ---- the Hugging Face cache -----------------------------------------------------------------


hf_cache_dir = hub.cache_dir


def _cached_snapshot(src: ModelSource) -> Path | None:
    """The snapshot folder of a fully cached hub model (config + weights), trying its aliases."""
    from huggingface_hub import try_to_load_from_cache  # heavy: loaded where used

    for rid in (src.repo_id_or_path, *src.aliases):
        try:
            cfg = try_to_load_from_cache(rid, "config.json")
        except Exception:  # noqa: BLE001 - malformed id etc.
            continue
        if not isinstance(cfg, str):
            continue
        if any(isinstance(try_to_load_from_cache(rid, f), str) for f in _WEIGHT_FILES):
            return Path(cfg).parent
    return None


def is_available(name: str) -> bool:
    """Whether ``name`` can be loaded here without network: zoo models always can (they are built
    locally), local folders when they exist, hub models when config and weights are cached.
    Unknown names raise ``ValueError`` (a typo should not silently drop a model)."""
    src = resolve_model(name)
    if src.kind in ("zoo", "local"):
        return True
    return _cached_snapshot(src) is not None


def _fetch_hint(src: ModelSource, reason: str) -> str:
    rid = src.repo_id_or_path
    cache = hf_cache_dir()
    home = os.environ.get("HF_HOME")
    return (
        (f"Hugging Face repository {rid!r}" if src.name == rid else f"model {src.name!r} (Hugging Face repository {rid!r})")
        + f" is not available: {reason}.\n"
        f"  Hugging Face cache in use: {cache}"
        + (f" (HF_HOME={home})" if home else " (HF_HOME unset; set HF_HOME or HF_HUB_CACHE to use another cache)")
        + "\n"
        f"  To fetch it, on a machine with network run\n"
        f"      hf download {rid}        (or: huggingface-cli download {rid})\n"
        f"  then copy that machine's cache folder (~/.cache/huggingface/hub, or $HF_HUB_CACHE) to {cache} here,\n"
        f"  or point HF_HOME / HF_HUB_CACHE at a copied cache before starting Python.\n"
        f"  Alternatively save the model with save_pretrained and pass the folder's path as the model name,\n"
        f"  or use an offline zoo model ({', '.join(ZOO_NAMES)})."
    )


# ---- loading ----------------------------------------------------------------------------------

_DTYPES = {
    "fp32": torch.float32, "float32": torch.float32, "float": torch.float32,
    "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
}


def _dtype(dtype) -> torch.dtype | str:
    # transformers v5 defaults to dtype="auto" (the checkpoint's dtype: fp16 for Pythia); we default to
    # fp32, which is exact for fp16/bf16 checkpoints, fast on CPU, and what autocast expects as master weights.
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str) and dtype.lower() == "auto":
        return "auto"
    if isinstance(dtype, str) and dtype.lower() in _DTYPES:
        return _DTYPES[dtype.lower()]
    raise ValueError(f"unknown dtype {dtype!r}; use a torch.dtype, 'auto' (the checkpoint's) or one of {sorted(_DTYPES)}")


def _from_pretrained(path: str, dtype, local_files_only: bool):
    """Local loads draw no "Loading weights" bar (one per cell otherwise); a download keeps its bars."""
    from transformers import AutoModelForCausalLM, AutoTokenizer  # heavy: loaded where used

    drop_benign_warnings()
    with quiet_transformers() if local_files_only else nullcontext():
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=local_files_only)
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=local_files_only)
    return model, tokenizer


def require_model(name: str) -> None:
    """Fail at once, loading nothing, when ``name`` is a hub model that is neither cached here nor downloadable
    (:class:`ModelNotAvailableError`, with what to fetch): what a run checks before its other inputs."""
    src = resolve_model(name)
    if src.kind == "hub" and _cached_snapshot(src) is None:
        _require_reachable(src)


def _require_reachable(src: ModelSource) -> None:
    """A hub model not in the cache: raise unless the hub is reachable and has it (then it can be downloaded)."""
    if hub.offline_requested():
        raise ModelNotAvailableError(_fetch_hint(src, "it is not in the local cache and HF_HUB_OFFLINE is set"))
    t0 = time.perf_counter()
    status, detail = hub.probe(f"models/{src.repo_id_or_path}")
    if status == "missing":
        raise ModelNotAvailableError(_fetch_hint(src, f"the hub has no repository of that name ({detail})"))
    if status != "ok":
        raise ModelNotAvailableError(
            _fetch_hint(src, f"it is not in the local cache and the hub cannot be reached ({detail}; "
                             f"reachability probe took {time.perf_counter() - t0:.1f} s)")
        )


def _load_hub(src: ModelSource, dtype):
    for rid in (src.repo_id_or_path, *src.aliases):
        try:
            return _from_pretrained(rid, dtype, local_files_only=True)
        except OSError:  # not (fully) cached under this id: try the next, then the hub
            continue
    _require_reachable(src)
    try:  # reachable: download into the cache (the only path that touches the network)
        return _from_pretrained(src.repo_id_or_path, dtype, local_files_only=False)
    except Exception as e:  # noqa: BLE001
        raise ModelNotAvailableError(_fetch_hint(src, f"the download failed ({type(e).__name__}: {e})")) from e


def load_model(name: str, device: str | torch.device = "cpu", dtype=None):
    """Load ``(model, tokenizer)`` for a registry name, hub id, local folder or zoo name.

    The model is an ``AutoModelForCausalLM`` in eval mode on ``device``. ``dtype``: a torch dtype,
    "fp32"/"fp16"/"bf16", or "auto" for the checkpoint's own dtype; the default ``None`` means fp32
    (unlike transformers v5, whose default is "auto": Pythia checkpoints are stored in fp16). The tokenizer gets ``pad_token = eos_token``
    when it has no pad token. Raises :class:`ModelNotAvailableError` within seconds for a hub
    model that is neither cached nor downloadable.
    """
    src = resolve_model(name)
    dtype = _dtype(dtype)
    if src.kind == "zoo":
        from mlsae.models.zoo import ensure_zoo_model  # lazy: trains the model on first use

        model, tokenizer = _from_pretrained(str(ensure_zoo_model(src.repo_id_or_path)), dtype, local_files_only=True)
    elif src.kind == "local":
        model, tokenizer = _from_pretrained(src.repo_id_or_path, dtype, local_files_only=True)
    else:
        model, tokenizer = _load_hub(src, dtype)
    model = model.to(device).eval()
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def model_identity(name: str) -> str:
    """What a model's weights are, without loading them (the rules: :mod:`mlsae.core.cache`)."""
    src = resolve_model(name)
    if src.kind == "zoo":
        from mlsae.models.zoo import ZOO  # the zoo pulls in its trainer and datasets: only for zoo names

        spec = ZOO.get(src.repo_id_or_path)
        return f"zoo:{src.repo_id_or_path}:{spec.digest() if spec is not None else 'unknown'}"
    if src.kind == "local":
        root = Path(src.repo_id_or_path)
        files = [p for p in sorted(root.iterdir()) if p.is_file() and (p.name == "config.json" or p.suffix in (".safetensors", ".bin"))]
        return f"local:{files_digest(files, root)}"
    return f"hub:{src.repo_id_or_path}@{hub.hub_commit(src.repo_id_or_path, src.aliases)}"
