"""The Hugging Face Hub, asked carefully: never a hanging download.

Models (:mod:`mlsae.models.registry`) and data sets (:mod:`mlsae.data.sources`) look in the local cache first. When
something is missing they ask here whether the Hub is to be tried at all (offline flags), and if
so probe it with a hard time limit before any download starts.
"""

from __future__ import annotations

import os
import threading
import urllib.error
import urllib.request
from pathlib import Path

# Seconds the reachability probe may take before the Hub counts as unreachable.
PROBE_TIMEOUT_S = float(os.environ.get("MLSAE_HUB_PROBE_TIMEOUT", "4"))

_TRUE = {"1", "on", "yes", "true"}


def offline_requested() -> bool:
    """Whether the user asked for no network (HF_HUB_OFFLINE, HF_DATASETS_OFFLINE, TRANSFORMERS_OFFLINE),
    read at call time rather than when ``huggingface_hub`` was imported."""
    flags = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
    return any(os.environ.get(f, "").strip().lower() in _TRUE for f in flags)


def cache_dir() -> str:
    """The hub cache folder ``transformers`` actually uses in this process."""
    from huggingface_hub import constants  # heavy: loaded where used

    return str(constants.HF_HUB_CACHE)


def _repo_dir(repo_id: str, repo_type: str) -> Path:
    """A repository's folder in the hub cache, as ``huggingface_hub`` names it (``<type>s--org--name``)."""
    return Path(cache_dir()) / f"{repo_type}s--{repo_id.replace('/', '--')}"


def cached_commit(repo_id: str, repo_type: str = "model") -> str | None:
    """The commit ``main`` points to in the local hub cache (``<type>s--org--name/refs/main``), or None."""
    ref = _repo_dir(repo_id, repo_type) / "refs" / "main"
    return ref.read_text().strip() if ref.is_file() else None


def cached_snapshot(repo_id: str, repo_type: str = "model") -> tuple[Path, str] | None:
    """The local snapshot folder that ``refs/main`` names, and its commit; None when there is none. Reads
    only the cache's own layout (``refs/main`` -> ``snapshots/<commit>/``), so it never touches the network."""
    commit = cached_commit(repo_id, repo_type)
    if commit is None:
        return None
    folder = _repo_dir(repo_id, repo_type) / "snapshots" / commit
    return (folder, commit) if folder.is_dir() else None


def probe(api_path: str, timeout: float | None = None) -> tuple[str, str]:
    """Ask the Hub about ``api_path`` (e.g. ``models/EleutherAI/pythia-70m-deduped`` or
    ``datasets/monology/pile-uncopyrighted``) within ``timeout`` seconds.

    Returns ("ok" | "missing" | "unreachable", detail). The request runs in a daemon thread so that
    a hanging DNS lookup or proxy cannot block the caller beyond the timeout.
    """
    from huggingface_hub import constants  # heavy: loaded where used

    timeout = PROBE_TIMEOUT_S if timeout is None else timeout
    endpoint = os.environ.get("HF_ENDPOINT") or constants.ENDPOINT
    url = f"{endpoint.rstrip('/')}/api/{api_path}"
    result: list[tuple[str, str]] = []

    def run():
        try:
            req = urllib.request.Request(url, method="HEAD", headers={"User-Agent": "mlsae-probe"})
            with urllib.request.urlopen(req, timeout=timeout):
                result.append(("ok", url))
        except urllib.error.HTTPError as e:  # the server answered
            if e.code in (401, 403):  # gated or private: a token may still get it
                result.append(("ok", f"HTTP {e.code}"))
            elif e.code == 404:
                result.append(("missing", f"HTTP 404 from {url}"))
            else:
                result.append(("unreachable", f"HTTP {e.code} from {url}"))
        except Exception as e:  # noqa: BLE001 - DNS, refused, timeout, proxy ...
            result.append(("unreachable", f"{type(e).__name__}: {e}"))

    t = threading.Thread(target=run, name="mlsae-hub-probe", daemon=True)
    t.start()
    t.join(timeout + 0.5)
    return result[0] if result else ("unreachable", f"no answer from {url} within {timeout:.0f} s")


def hub_commit(repo_id: str, aliases: tuple[str, ...] = ()) -> str:
    """The commit ``main`` points to in the local Hugging Face cache, or ``"uncached"``."""
    for rid in (repo_id, *aliases):
        if (commit := cached_commit(rid)) is not None:
            return commit
    return "uncached"
