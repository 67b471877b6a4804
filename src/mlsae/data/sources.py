"""Text sources: every one is read through Hugging Face ``datasets``, and named by its identity.

``load_text`` accepts

* ``"offline"`` / ``"offline:<preset>"`` — the generated corpus of :mod:`mlsae.data.corpus`;
* a local directory holding ``<split>.jsonl`` / ``<split>.json`` / ``<split>.txt`` files (also
  ``<split>-*.jsonl`` shards, and a ``<split>/`` folder of files), each optionally compressed
  (``.zst``, ``.gz``, ``.bz2``, ``.xz``): the Pile's own layout (``train/00.jsonl.zst`` ...,
  ``val.jsonl.zst``, ``test.jsonl.zst``) is such a folder, and ``validation`` finds ``val``;
* a single local file of those kinds (used whatever the split);
* a Hugging Face Hub data set name such as ``"monology/pile-uncopyrighted"`` (optionally
  ``"name:config"``). Its files in the local hub cache (``hf download NAME --repo-type dataset
  --include 'test.jsonl.zst'``: ``refs/main`` -> ``snapshots/<commit>/``) are read first, only those
  of the split asked for, streamed; then a prepared ``datasets`` cache; else it is streamed from the
  Hub. Without network and without a local copy it fails within seconds, naming the data set, the
  cache folders and the command that fetches one split.

Compressed files are always streamed (read as they are decompressed, never unpacked to disk).

``.txt`` files follow the ``datasets`` convention: one document per line (blank lines skipped).
Tokens are cut from the text by :mod:`mlsae.data.tokens`.
"""

from __future__ import annotations

import codecs
import json
import os
from contextlib import contextmanager
from pathlib import Path

from mlsae.core import hub
from mlsae.core.cache import files_digest
from mlsae.data.corpus import PRESETS, TEXT_VERSION, offline_corpus

__all__ = ["DataUnavailableError", "data_identity", "load_text"]

_EXTS = {".jsonl": "json", ".json": "json", ".txt": "text"}
# Compressions ``datasets`` reads by file name (zstd through the ``zstandard`` package).
_COMPRESSED = (".zst", ".gz", ".bz2", ".xz")
# Other names a split goes by: the Pile calls its validation split "val".
_SPLIT_NAMES = {"validation": ("validation", "val", "valid"), "val": ("val", "validation", "valid")}


class DataUnavailableError(ConnectionError):
    """A Hub data set cannot be reached and is not in the local cache."""


# ---- load_text -------------------------------------------------------------------------------


def load_text(source: str = "offline", split: str = "train", streaming: bool = False, text_field: str = "text"):
    """A ``datasets.Dataset`` (or ``IterableDataset`` when ``streaming``) with a text column.

    Raises ``ValueError`` for an empty data set or a missing text column, ``FileNotFoundError``
    for a local path that does not exist or holds no file for ``split``, and
    :class:`DataUnavailableError` (a ``ConnectionError``) when a Hub data set cannot be reached.
    """
    source = str(source)
    if source == "offline" or source.startswith("offline:"):
        preset = source.partition(":")[2] or "default"
        files = _dir_files(offline_corpus(preset), split, label=source)
    elif _looks_local(source):
        path = Path(source).expanduser()
        if path.is_dir():
            files = _dir_files(path, split, label=source)
        elif path.is_file():
            files = [path]
        else:
            raise FileNotFoundError(f"no such file or directory: {source!r}")
    else:
        return _check(_load_hub(source, split, streaming), source, split, text_field)
    try:
        return _check(_load_local_files(files, streaming, label=source, split=split), source, split, text_field)
    except UnicodeDecodeError as err:
        bad = next((f for f in files if not _is_utf8(f)), files[0])
        raise ValueError(f"{bad} is not UTF-8 text ({err.reason} at byte {err.start} of a record); mlsae reads "
                         f"UTF-8: convert it, e.g. `iconv -f latin1 -t utf-8 {bad} > {bad}.utf8`") from None


def _is_utf8(path: Path) -> bool:
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                decoder.decode(chunk)
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return False
    return True


def _looks_local(source: str) -> bool:
    if os.path.exists(os.path.expanduser(source)):
        return True
    return (source.startswith((".", "/", "~")) or os.sep in source.rstrip("/").replace("/", "", 1)
            or _format(Path(source)) is not None)


def _format(path: Path) -> str | None:
    """The ``datasets`` builder for a file (``json``, ``text``), compressed or not; None for other files."""
    suffix = path.suffix
    if suffix in _COMPRESSED:
        suffix = Path(path.stem).suffix
    return _EXTS.get(suffix)


def _compressed(path: Path) -> bool:
    return path.suffix in _COMPRESSED


def _split_files(root: Path, split: str) -> list[Path]:
    for name in _SPLIT_NAMES.get(split, (split,)):
        files: list[Path] = []
        for pattern in (f"{name}.*", f"{name}-*", f"{name}_*", f"{name}/*"):
            files += [p for p in sorted(root.glob(pattern)) if p.is_file() and _format(p) and p not in files]
        if files:
            return files
    return []


def _dir_files(root: Path, split: str, label: str) -> list[Path]:
    files = _split_files(root, split)
    if not files:
        present = sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir() if not p.name.startswith("."))
        names = _SPLIT_NAMES.get(split, (split,))
        raise FileNotFoundError(
            f"{label!r}: no {split!r} file in {root} (looked for {' / '.join(names)} as <name>.jsonl, .json or "
            f".txt, optionally .zst/.gz compressed, <name>-*.jsonl shards and a <name>/ folder of such files; "
            f"found: {', '.join(present) or 'nothing'})"
        )
    return files


def _has_text(path: Path) -> bool:
    with open(path, "rb") as f:
        while chunk := f.read(1 << 16):
            if chunk.strip():
                return True
    return False


def _load_local_files(files: list[Path], streaming: bool, label: str, split: str = "train"):
    import datasets  # heavy: loaded where used

    builders = {_format(p) for p in files}
    if None in builders:
        raise ValueError(f"{label!r}: unsupported file type; use .jsonl, .json or .txt, optionally compressed "
                         f"(.zst, .gz, .bz2, .xz) ({[str(p) for p in files]})")
    if len(builders) > 1:
        raise ValueError(f"{label!r}: mixed .txt and .jsonl files for one split: {[p.name for p in files]}")
    compressed = any(_compressed(p) for p in files)
    if compressed:
        _require_decompressors(files, label)
    else:
        if not any(_has_text(p) for p in files):
            raise ValueError(f"data set {label!r} is empty: {', '.join(str(p) for p in files)} hold no text")
        files = [p for p in files if _has_text(p)]  # datasets' json reader chokes on empty files
    try:
        # compressed files are streamed: decompressed as they are read, never unpacked to disk
        # named after the split read, so that datasets' "Generating ... split" says which
        return datasets.load_dataset(builders.pop(), data_files={split: [str(p) for p in files]},
                                     split=split, streaming=streaming or compressed)
    except StopIteration as e:  # what datasets raises for a file with no records
        raise ValueError(f"data set {label!r} is empty") from e


def _require_decompressors(files: list[Path], label: str) -> None:
    """``datasets`` says only "Compression type zstd not supported" without ``zstandard``: name the package."""
    if any(p.suffix == ".zst" for p in files):
        try:
            import zstandard  # noqa: F401 - only whether it is there
        except ImportError:
            raise ImportError(f"{label!r} holds zstd-compressed files ({files[0].name}); reading them needs the "
                              "zstandard package: pip install zstandard (it is in mlsae's requirements.txt)") from None


def _check(ds, source: str, split: str, text_field: str):
    import datasets  # heavy: loaded where used

    columns = ds.column_names
    if columns is not None and text_field not in columns:
        raise ValueError(f"data set {source!r} ({split}) has no column {text_field!r}; columns: {columns}")
    if isinstance(ds, datasets.Dataset):
        if len(ds) == 0:
            raise ValueError(f"data set {source!r} ({split}) is empty")
        return ds
    # Streaming: peek at the first rows (cheap) for a missing column or a data set of blank texts.
    rows = 0
    for row in ds.take(1000):
        rows += 1
        if text_field not in row:
            raise ValueError(f"data set {source!r} ({split}) has no column {text_field!r}; columns: {sorted(row)}")
        if isinstance(row[text_field], str) and row[text_field].strip():
            return ds
    if rows < 1000:
        raise ValueError(f"data set {source!r} ({split}) is empty (no non-blank {text_field!r})")
    return ds


# ---- the Hub ---------------------------------------------------------------------------------


@contextmanager
def _offline_mode():
    """Make ``datasets``/``huggingface_hub`` behave as with ``HF_HUB_OFFLINE=1`` (cache only)."""
    import datasets.config  # heavy: loaded where used
    import huggingface_hub.constants as hc  # heavy: loaded where used

    saved = datasets.config.HF_HUB_OFFLINE, hc.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = hc.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, hc.HF_HUB_OFFLINE = saved


def _unavailable(name: str, config: str | None, split: str, why: str) -> DataUnavailableError:
    import datasets.config  # heavy: loaded where used

    hf_home = os.environ.get("HF_HOME", "~/.cache/huggingface (HF_HOME not set)")
    names = _SPLIT_NAMES.get(split, (split,))
    include = " ".join(f"--include '{n}.*' --include '{n}/*'" for n in names[:2])
    return DataUnavailableError(
        f"cannot load the Hugging Face data set {name!r} (split {split!r}): {why}, and no copy of that split is "
        f"on this machine (hub cache {hub.cache_dir()}, HF_HOME={hf_home}, prepared datasets cache "
        f"HF_DATASETS_CACHE={datasets.config.HF_DATASETS_CACHE}). Streaming needs network. To use it offline, on "
        f"a machine with network fetch the files of that split only, into the hub cache:\n"
        f"    hf download {name} --repo-type dataset {include}\n"
        f"(for the Pile's test split: hf download monology/pile-uncopyrighted --repo-type dataset --include "
        f"'test.jsonl.zst'), copy the cache folder here and run with HF_HUB_OFFLINE=1; or add --local-dir <dir> "
        f"and pass <dir> as the data source. Or use the offline default: source='offline'."
    )


def _load_hub(source: str, split: str, streaming: bool):
    import datasets  # heavy: loaded where used

    name, _, config_name = source.partition(":")
    config = config_name or None
    snapshot = hub.cached_snapshot(name, "dataset") if config is None else None
    # the files people download (hf download), read in place: only this split's, streamed
    if snapshot is not None and (files := _split_files(snapshot[0], split)):
        return _load_local_files(files, streaming=True, label=f"{source}@{snapshot[1][:12]} (hub cache)", split=split)
    offline = hub.offline_requested()
    why = "HF_HUB_OFFLINE/HF_DATASETS_OFFLINE is set"
    if not offline:
        status, detail = hub.probe(f"datasets/{name}")
        if status == "missing":
            raise _unavailable(name, config, split, f"the Hub has no data set of that name ({detail})")
        if status != "ok":
            offline, why = True, f"the Hub is unreachable ({detail})"
    if offline:
        try:
            with _offline_mode(), _quiet_datasets():
                ds = datasets.load_dataset(name, config, split=split)  # a prepared datasets (Arrow) cache
        except Exception as e:  # noqa: BLE001 - any failure here means: not usable offline
            raise _unavailable(name, config, split, why) from e
        return ds.to_iterable_dataset() if streaming else ds
    try:
        # Hub data sets are always streamed: nothing is downloaded up front.
        return datasets.load_dataset(name, config, split=split, streaming=True)
    except ConnectionError as e:
        raise _unavailable(name, config, split, f"the Hub did not answer ({e})") from e


@contextmanager
def _quiet_datasets():
    """``datasets`` logs "Using the latest cached version of the dataset..." as a warning when it reads a
    prepared cache offline (pink boxes in a notebook): expected here, so only errors pass for the call."""
    from datasets.utils import logging as ds_logging  # heavy: loaded where used

    was = ds_logging.get_verbosity()
    ds_logging.set_verbosity_error()
    try:
        yield
    finally:
        ds_logging.set_verbosity(was)


def data_identity(source: str) -> str:
    """What a text source is: offline generator version and preset, local file contents, or hub name and
    revision."""
    source = str(source)
    if source == "offline" or source.startswith("offline:"):
        preset = source.partition(":")[2] or "default"
        return f"offline:{preset}:v{TEXT_VERSION}:{json.dumps(PRESETS.get(preset), sort_keys=True)}"
    path = Path(source).expanduser()
    if path.exists():
        files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")) if path.is_dir() else [path]
        return f"local:{files_digest(files, path if path.is_dir() else path.parent)}"
    # a hub data set: its revision in the local hub cache (what is read offline), else the name alone (a
    # prepared datasets cache, or streaming from the Hub's main)
    commit = hub.cached_commit(source.partition(":")[0], "dataset")
    return f"hub:{source}" + (f"@{commit}" if commit else "")
