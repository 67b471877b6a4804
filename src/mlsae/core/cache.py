"""One cache for every computed artefact, keyed by everything that changes it.

A key is a hash of the artefact's own parameters, the *identity* of its inputs and the version of
the code that computes it:

* a model's identity (:func:`mlsae.models.registry.model_identity`) is its weights, not its name: the zoo spec digest (which changes when the zoo
  is retrained differently), the resolved commit of a hub checkpoint in the Hugging Face cache, or
  a hash of a local folder's config and weight files;
* a text's identity (:func:`mlsae.data.sources.data_identity`) is the offline generator's version and preset, a hash of local files, or the
  hub data set's name;
* :data:`VERSIONS` holds one number per kind of artefact: bump it when the code that computes that
  kind changes its result, and every cached copy is recomputed.

So a rebuilt zoo model, edited data or changed code never silently reuses what was computed from
the old one. Every result is stored in one format (:func:`mlsae.core.paths.save_result`: safetensors +
JSON metadata) with a readable ``.json`` beside it saying what it was made from.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, TypeVar

from mlsae.core.paths import atomic_write_text, run_lock

# Bump one of these when the code computing that kind of artefact changes its result.
VERSIONS = {"sae": 1, "lens": 1, "eval": 1, "distributions": 2, "examples": 1, "geometry": 1, "dashboard": 1}

_DIGESTS: dict[tuple, str] = {}  # (path, size, mtime) -> content digest, for this process


def key(kind: str, fields: dict) -> str:
    """A short stable hash of ``fields`` and the code version of ``kind``."""
    if kind not in VERSIONS:
        raise ValueError(f"unknown artefact kind {kind!r}; known: {sorted(VERSIONS)}")
    text = json.dumps({"kind": kind, "version": VERSIONS[kind], **fields}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def files_digest(files: list[Path], root: Path) -> str:
    """A digest of these files' paths (relative to ``root``) and contents; memoised by (path, size, mtime)."""
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


class Saveable(Protocol):
    """What :func:`cached` stores: a result that writes itself to one file."""

    def save(self, path: Path) -> None: ...


R = TypeVar("R", bound=Saveable)


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
