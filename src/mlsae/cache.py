"""One cache for every computed artefact, keyed by everything that changes it.

A key is a hash of the artefact's own parameters, the *identity* of its inputs and the version of
the code that computes it:

* a model's identity is its weights, not its name: the zoo spec digest (which changes when the zoo
  is retrained differently), the resolved commit of a hub checkpoint in the Hugging Face cache, or
  a hash of a local folder's config and weight files;
* a text's identity is the offline generator's version and preset, a hash of local files, or the
  hub data set's name;
* :data:`VERSIONS` holds one number per kind of artefact: bump it when the code that computes that
  kind changes its result, and every cached copy is recomputed.

So a rebuilt zoo model, edited data or changed code never silently reuses what was computed from
the old one. Every result is stored in one format (:func:`mlsae.paths.save_result`: safetensors +
JSON metadata) with a readable ``.json`` beside it saying what it was made from.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable, TypeVar

from mlsae.hub import cached_commit
from mlsae.paths import atomic_write_text, run_lock

# Bump one of these when the code computing that kind of artefact changes its result.
VERSIONS = {"sae": 1, "lens": 1, "eval": 1, "distributions": 2, "examples": 1, "geometry": 1}

_DIGESTS: dict[tuple, str] = {}  # (path, size, mtime) -> content digest, for this process


def key(kind: str, fields: dict) -> str:
    """A short stable hash of ``fields`` and the code version of ``kind``."""
    if kind not in VERSIONS:
        raise ValueError(f"unknown artefact kind {kind!r}; known: {sorted(VERSIONS)}")
    text = json.dumps({"kind": kind, "version": VERSIONS[kind], **fields}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def model_identity(name: str) -> str:
    """What a model's weights are, without loading them (see the module docstring)."""
    from mlsae.models import resolve_model

    src = resolve_model(name)
    if src.kind == "zoo":
        from mlsae.zoo import ZOO

        spec = ZOO.get(src.repo_id_or_path)
        return f"zoo:{src.repo_id_or_path}:{spec.digest() if spec is not None else 'unknown'}"
    if src.kind == "local":
        root = Path(src.repo_id_or_path)
        files = [p for p in sorted(root.iterdir()) if p.is_file() and (p.name == "config.json" or p.suffix in (".safetensors", ".bin"))]
        return f"local:{_files_digest(files, root)}"
    return f"hub:{src.repo_id_or_path}@{_hub_commit(src.repo_id_or_path, src.aliases)}"


def data_identity(source: str) -> str:
    """What a text source is: offline generator version and preset, local file contents, or hub name and
    revision."""
    source = str(source)
    if source == "offline" or source.startswith("offline:"):
        from mlsae.text import PRESETS, TEXT_VERSION

        preset = source.partition(":")[2] or "default"
        return f"offline:{preset}:v{TEXT_VERSION}:{json.dumps(PRESETS.get(preset), sort_keys=True)}"
    path = Path(source).expanduser()
    if path.exists():
        files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")) if path.is_dir() else [path]
        return f"local:{_files_digest(files, path if path.is_dir() else path.parent)}"
    # a hub data set: its revision in the local hub cache (what is read offline), else the name alone (a
    # prepared datasets cache, or streaming from the Hub's main)
    commit = cached_commit(source.partition(":")[0], "dataset")
    return f"hub:{source}" + (f"@{commit}" if commit else "")


def _files_digest(files: list[Path], root: Path) -> str:
    h = hashlib.sha256()
    for p in files:
        st = p.stat()
        memo = (str(p.resolve()), st.st_size, st.st_mtime_ns)
        if memo not in _DIGESTS:
            fh = hashlib.sha256()
            with open(p, "rb") as f:
                while chunk := f.read(1 << 22):
                    fh.update(chunk)
            _DIGESTS[memo] = fh.hexdigest()
        h.update(f"{p.relative_to(root)}\0{_DIGESTS[memo]}\n".encode())
    return h.hexdigest()[:16]


def _hub_commit(repo_id: str, aliases: tuple[str, ...] = ()) -> str:
    """The commit ``main`` points to in the local Hugging Face cache, or ``"uncached"``."""
    for rid in (repo_id, *aliases):
        if (commit := cached_commit(rid)) is not None:
            return commit
    return "uncached"


R = TypeVar("R")


def path_for(folder: Path, kind: str, fields: dict) -> Path:
    """Where :func:`cached` keeps the artefact ``kind`` with these ``fields``."""
    return Path(folder) / f"{kind}-{key(kind, fields)}.safetensors"


def cached(folder: Path, kind: str, fields: dict, load: Callable[[Path], R], compute: Callable[[], R]) -> R:
    """``load(path)`` if this artefact was computed before, else ``compute()``, saved for next time.

    ``path`` is :func:`path_for` (a key over ``fields`` and the code version); ``<path>.json`` beside it
    records the fields. Two processes computing the same artefact: the second waits for the first
    and loads its result. ``compute()`` returns an object with ``save(path)``.
    """
    path = path_for(folder, kind, fields)
    if path.exists():
        return load(path)
    with run_lock(path):
        if path.exists():
            return load(path)
        result = compute()
        result.save(path)
        atomic_write_text(path.with_suffix(".json"), json.dumps(
            {"kind": kind, "version": VERSIONS[kind], **fields}, indent=2, sort_keys=True, default=str) + "\n")
    return result
