"""Where the project keeps what it generates: offline text, the model zoo, lenses, SAEs.

Everything lives under one root so that a user can relocate or wipe it in one place:
``$MLSAE_HOME`` if set, else ``~/.cache/mlsae``.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

from filelock import FileLock
from safetensors import safe_open
from safetensors.torch import save


def repository_root() -> Path | None:
    """The checkout this package runs from (an editable install), or ``None`` when installed elsewhere."""
    root = Path(__file__).resolve().parents[3]  # src/mlsae/core/paths.py -> the checkout
    return root if (root / "pyproject.toml").is_file() and (root / "notebooks").is_dir() else None


def git_output(folder: Path, *args: str) -> str | None:
    """``git -C folder <args>``'s output, or None when git, the checkout or the object is missing."""
    try:
        out = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def mlsae_home() -> Path:
    """The root of everything generated (``$MLSAE_HOME``, default ``~/.cache/mlsae``). Reading it creates
    nothing: every writer makes the folders it writes into."""
    return Path(os.environ.get("MLSAE_HOME", Path.home() / ".cache" / "mlsae")).expanduser()


def _where(path: Path) -> str:
    """Which setting chose the folder ``path`` is in, and so how a user moves it."""
    resolved = Path(path).resolve()
    for root, how in ((mlsae_home(), "point $MLSAE_HOME at another disk"),
                      (Path(os.environ.get("MLSAE_FIGURES", "/nonexistent")), "point $MLSAE_FIGURES elsewhere")):
        if resolved.is_relative_to(root.resolve()):
            return how
    return "write somewhere else (for training runs: --out)"


_DISK_ERRORS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up",
                errno.EROFS: "the file system is read-only", errno.EACCES: "this user may not write there",
                errno.EPERM: "this user may not write there"}


def disk_error(err: OSError, path: Path) -> OSError:
    """``err`` from writing ``path``, reworded to name the folder and the fix (a bare ``[Errno 28]`` says neither);
    other errors unchanged."""
    why = _DISK_ERRORS.get(err.errno or 0)
    if why is None:
        return err
    fix = "free some space there, or " if err.errno in (errno.ENOSPC, errno.EDQUOT) else ""
    return OSError(err.errno, f"cannot write {path}: {why} ({err.strerror}); {fix}{_where(path)}. "
                              "Nothing already written was changed")


def _reraise(err: OSError, path: Path) -> NoReturn:
    reworded = disk_error(err, path)
    if reworded is err:
        raise err
    raise reworded from err


def check_writable(path: Path, what: str) -> None:
    """Whether ``path`` (existing or to be made) can be written, checked before any work: a ValueError naming it
    (``what`` says which setting gave it) when its nearest existing folder is not writable."""
    path = Path(path).expanduser()
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is None:
        return
    if not existing.is_dir():
        raise ValueError(f"{what} {path} cannot be made: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{what} {path} cannot be written: {existing} is not writable for this user; "
                         f"{_where(path)}")


@contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Build a directory under a temporary name and rename it into place on success.

    A crash or Ctrl-C leaves no half-written artefact at ``final``; an existing ``final`` is
    replaced only once the new one is complete.
    """
    final = Path(final)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    except OSError as err:
        _reraise(err, final)
    try:
        yield tmp
        share_permissions(tmp)
        if final.exists():
            old = final.with_name(f".{final.name}.old.{os.getpid()}")
            os.replace(final, old)
            os.replace(tmp, final)
            _rmtree(old)
        else:
            os.replace(tmp, final)
    except OSError as err:
        _rmtree(tmp)
        _reraise(err, final)
    except BaseException:
        _rmtree(tmp)
        raise


def safe_name(name: str) -> str:
    """A model name, hub id or path as one file-name component (``EleutherAI/pythia-70m`` ->
    ``EleutherAI_pythia-70m``), for cache keys and figure names."""
    return "".join(c if c.isalnum() or c in "-._" else "_" for c in str(name)).strip("_") or "model"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and rename, so readers never see half a file."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as err:
        _reraise(err, path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private (0600); results are shared like the zoo
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        _reraise(err, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename: never half a file."""
    atomic_write_bytes(path, text.encode("utf-8"))


def save_result(path: Path, tensors: dict, meta: dict) -> None:
    """The one on-disk format of every cached result: tensors in a safetensors file, everything else as
    JSON in its metadata (one entry per field), written atomically. No pickle."""
    tensors = {k: t.detach().cpu().contiguous() for k, t in tensors.items() if t is not None}
    atomic_write_bytes(Path(path), save(tensors, metadata={k: json.dumps(v) for k, v in meta.items()}))


def load_result(path: Path) -> tuple[dict, dict]:
    """``(tensors, meta)`` as :func:`save_result` wrote them; a torn or foreign file is a ValueError naming it."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, {k: json.loads(v) for k, v in (f.metadata() or {}).items()}
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error types
        raise ValueError(f"{path} is not a readable result file ({type(err).__name__}: {err}); delete it and it is "
                         "computed again") from None


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def share_permissions(root: Path) -> None:
    """Give a freshly built folder the usual permissions (``mkdtemp``/``mkstemp`` make it private:
    0700/0600), so that a shared ``MLSAE_HOME`` stays readable; the umask is honoured."""
    umask = _umask()
    root = Path(root)
    for p in [root, *root.rglob("*")]:
        os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~umask)


def build_once(final: Path, ready: Callable[[], bool], build: Callable[[Path], object]) -> Path:
    """``final``, built by ``build(tmp)`` into a temporary folder renamed into place, unless ``ready()``.

    Under :func:`run_lock`, so a second process waits for the first and then finds the result instead of
    building it again; a crash leaves no half-built ``final`` (:func:`atomic_dir`).
    """
    if not ready():
        with run_lock(final):
            if not ready():
                with atomic_dir(final) as tmp:
                    build(tmp)
    return final


def _rmtree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def lock_file(path: Path) -> Path:
    """Where :func:`run_lock` keeps the lock of folder ``path``: ``<parent>/.locks/<name>.lock``, out of the
    listing of the folders it guards. Lock files stay after use on purpose: deleting a file that another
    process may already have opened to wait on would let a third process take a second lock on a new file."""
    path = Path(path).resolve()
    return path.parent / ".locks" / f"{path.name}.lock"


def run_lock(path: Path):
    """The inter-process lock guarding the folder ``path`` (file :func:`lock_file`), on ``filelock``.

    One instance per path in a process, so the same process may take it again (re-entrant), while
    another process waits (``with lock:``) or gives up (``lock.acquire(timeout=0)`` raises
    ``filelock.Timeout``).
    """
    file = lock_file(path)
    file.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(file), is_singleton=True, thread_local=False)
