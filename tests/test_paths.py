"""The one place artefacts are written: atomically, built once under a lock, readable like the zoo."""

from __future__ import annotations

import os
import stat

import pytest

from mlsae.core.paths import atomic_dir, atomic_write_text, build_once, run_lock
from mlsae.sae.config import SAEConfig
from mlsae.sae.model import MLSAE


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield 0o022
    os.umask(old)


def test_every_result_gets_the_permissions_of_the_zoo_files(tmp_path, umask_022):
    """mkstemp/mkdtemp make files 0600 and folders 0700; a shared MLSAE_HOME needs them readable."""
    atomic_write_text(tmp_path / "eval.json", "{}")
    assert _mode(tmp_path / "eval.json") == 0o644
    with atomic_dir(tmp_path / "artefact") as tmp:
        (tmp / "inner").mkdir()
        (tmp / "inner" / "weights.bin").write_bytes(b"x")
    assert _mode(tmp_path / "artefact") == _mode(tmp_path / "artefact" / "inner") == 0o755
    assert _mode(tmp_path / "artefact" / "inner" / "weights.bin") == 0o644
    sae = MLSAE(SAEConfig(d_model=4, n_latents=8, k=2))
    sae.save_pretrained(tmp_path / "sae")
    zoo_like = build_once(tmp_path / "zoo-x", lambda: False, lambda tmp: (tmp / "config.json").write_text("{}"))
    assert _mode(tmp_path / "sae") == _mode(zoo_like) == 0o755
    assert _mode(tmp_path / "sae" / "model.safetensors") == _mode(zoo_like / "config.json") == 0o644


def test_build_once_builds_only_when_needed_and_never_leaves_half_a_folder(tmp_path):
    calls = []
    final = tmp_path / "thing"

    def build(tmp):
        calls.append(tmp)
        (tmp / "done").write_text("1")

    ready = lambda: (final / "done").is_file()  # noqa: E731
    assert build_once(final, ready, build) == final and len(calls) == 1
    build_once(final, ready, build)
    assert len(calls) == 1  # found, not rebuilt

    def crash(tmp):
        (tmp / "half").write_text("x")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        build_once(tmp_path / "other", lambda: False, crash)
    assert not (tmp_path / "other").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".other")] == []


def test_build_once_holds_the_lock_another_process_would_wait_for(tmp_path):
    from filelock import FileLock, Timeout

    final = tmp_path / "locked"
    seen = []

    def build(tmp):
        other = FileLock(run_lock(final).lock_file, is_singleton=False)  # as another process would open it
        with pytest.raises(Timeout):
            other.acquire(timeout=0)
        seen.append(True)

    build_once(final, lambda: False, build)
    assert seen == [True]
