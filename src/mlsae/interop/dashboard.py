"""A static latent dashboard: a folder of HTML, CSS, JavaScript and data that opens in a browser as a file or from any
web server, with no model, no server code and nothing from the network.

The numbers come from :func:`mlsae.analysis.latent_records.dashboard_data` (a statistic, so it lives in ``analysis``
and can be cached and tested without a browser); this module only writes them as a site, so the site can be tested
on a synthetic :class:`DashboardData` too. ``index.html`` lists every latent (firing frequency, mean layer, layer std,
a small bar of ``p(l | j)``; sortable, searchable by id, paginated); ``latent.html#<id>`` shows one latent: its
distribution over layers, frequencies per layer, nearest tokens and top examples per layer.

Layout (:func:`write_dashboard`): ``index.html``, ``latent.html``, ``assets/app.js``, ``assets/style.css`` (package
data, copied from ``site/``), ``data/index.js`` (``window.MLSAE_INDEX = {...};``, every latent's summary),
``data/latents/chunk-NNNN.js`` (``mlsaeChunk(N, {...});``, :data:`CHUNK_SIZE` latents each, loaded only when a latent
page needs one) and :data:`MARKER`, which says the folder is a dashboard (so rewriting replaces it, and no other
folder is ever replaced). Data are JavaScript loaded by ``<script>`` tags, not JSON read with ``fetch()``: Chromium
refuses ``fetch()`` of ``file://`` URLs. Floats are written to 4 significant digits.
"""

from __future__ import annotations

import gc
import json
import math
import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from mlsae.analysis.latent_records import DashboardData, dashboard_data
from mlsae.core.paths import atomic_dir

__all__ = ["CHUNK_SIZE", "DashboardData", "DashboardSite", "dashboard_data", "write_dashboard"]

FORMAT, VERSION = "mlsae-dashboard", 1
MARKER = "mlsae-dashboard.json"
CHUNK_SIZE = 64  # latents per data/latents/chunk-NNNN.js: one latent page loads one chunk
SITE_FILES = ("index.html", "latent.html", "assets/app.js", "assets/style.css")
DIGITS = 4  # significant digits of every float written


@dataclass(frozen=True)
class DashboardSite:
    """What :func:`write_dashboard` wrote."""

    folder: Path
    n_latents: int
    n_files: int
    n_bytes: int
    n_chunks: int

    @property
    def index(self) -> Path:
        return self.folder / "index.html"


def round_sig(x: Tensor | np.ndarray, digits: int = DIGITS) -> np.ndarray:
    """``x`` rounded to ``digits`` significant digits, as float64 whose shortest repr is that decimal (so JSON holds
    ``1.234``, never ``1.2340000000000002``). NaN and infinities pass through."""
    a = np.asarray(x.detach().cpu().double().numpy() if isinstance(x, Tensor) else x, dtype=np.float64)
    out = np.where(a == 0, 0.0, a)  # no negative zero
    ok = np.isfinite(a) & (a != 0)
    if not ok.any():
        return out
    exp = digits - 1 - np.floor(np.log10(np.abs(a[ok]))).astype(np.int64)  # decimal places to keep
    v, res = a[ok], np.empty(int(ok.sum()))
    pos = exp >= 0  # divide by an exact power of ten, or multiply by one: both correctly rounded
    res[pos] = np.round(v[pos] * 10.0 ** exp[pos]) / 10.0 ** exp[pos]
    res[~pos] = np.round(v[~pos] / 10.0 ** (-exp[~pos])) * 10.0 ** (-exp[~pos])
    out[ok] = res
    return out


def _nullable(values: np.ndarray) -> list:
    """A float list with NaN as None (JSON null): the mean layer of a latent that never fires."""
    return [None if math.isnan(v) else v for v in values.tolist()]


def _dumps_numbers(obj) -> str:
    """Compact JSON of numbers only (no strings inside), each ``0.0`` in a list written as ``0`` (most activations
    in a context window are zero; plain string replacements, as a regular expression takes seconds here)."""
    s = json.dumps(obj, separators=(",", ":"), allow_nan=False)
    for old, new in ((",0.0,", ",0,"), (",0.0,", ",0,"), ("[0.0,", "[0,"), (",0.0]", ",0]"), ("[0.0]", "[0]")):
        s = s.replace(old, new)  # ",0.0,0.0," needs the first replacement twice (matches do not overlap)
    return s


def _dumps(obj) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _check_out(out: Path) -> None:
    """Refuse to replace anything but an earlier dashboard (or an empty folder)."""
    if not out.exists():
        return
    if not out.is_dir():
        raise FileExistsError(f"{out} is a file, not a dashboard folder; choose another folder for the dashboard")
    if not (out / MARKER).is_file() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not a dashboard written by write_dashboard (no {MARKER}): it is "
                              "left alone; choose another folder, or remove it yourself")


def _header(data: DashboardData, meta: dict) -> list[list[str]]:
    """The index page's ``[key, value]`` rows: what was analysed (from ``data.info``), then ``meta`` (which wins)."""
    info = data.info
    layers = data.layers
    span = f"{layers[0]}–{layers[-1]}" if layers == list(range(layers[0], layers[-1] + 1)) and len(layers) > 1 else \
        ", ".join(map(str, layers))
    rows: dict[str, str] = {}
    if info.get("model"):
        rows["model"] = str(info["model"])
    if "d_model" in info:
        rows["SAE"] = f"d_model {info['d_model']} → {data.n_latents:,} latents, k = {info.get('k', '?')}"
    else:
        rows["SAE"] = f"{data.n_latents:,} latents"
    rows["layers"] = f"{span} ({len(layers)})"
    rows["tokens analysed"] = f"{data.n_tokens:,}" + (f" in {info['sequences']:,} sequences of {info['seq_len']}"
                                                      if "sequences" in info and "seq_len" in info else "")
    rows["lens"] = str(info.get("lens", "—"))
    rows["alive latents"] = f"{int((data.counts.sum(0) > 0).sum()):,} of {data.n_latents:,}"
    for k, v in meta.items():
        rows[str(k)] = v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)
    return [[k, v] for k, v in rows.items()]


def _index(data: DashboardData, title: str, meta: dict, n_chunks: int, digits: int) -> dict:
    stats = data.stats
    p = round_sig(stats.p_layer.t())  # [m, L]
    return {"format": FORMAT, "version": VERSION, "title": title, "meta": _header(data, meta),
            "n_latents": data.n_latents, "layers": list(data.layers), "n_tokens": data.n_tokens,
            "chunk_size": CHUNK_SIZE, "n_chunks": n_chunks, "chunk_digits": digits, "context": list(data.context),
            "n_examples": data.n_examples, "freq": round_sig(data.frequency).tolist(),
            "mean": _nullable(round_sig(stats.mean_layer)), "std": _nullable(round_sig(stats.std_layer)),
            "p": p.tolist()}


def _chunk(data: DashboardData, lo: int, hi: int) -> str:
    """The JSON of latents ``lo`` … ``hi - 1``: a token table and one record per latent (``assets/app.js`` says
    the layout)."""
    sl = slice(lo, hi)
    ids = data.window_ids[:, sl].long()  # [L, c, n, W]
    near = [data.input_ids[sl], data.output_ids[sl], data.bottom_ids[sl]]  # [c, q] each
    used = torch.cat([ids[ids >= 0].flatten()] + [t.flatten().long() for t in near])
    table = torch.unique(used)
    remap = torch.full((int(table.max()) + 1 if len(table) else 1,), -1, dtype=torch.long)
    remap[table] = torch.arange(len(table))
    wid = torch.where(ids >= 0, remap[ids.clamp_min(0)], -1).tolist()  # indices into the chunk's token table
    near_ids = [remap[t.long()].tolist() for t in near]
    near_vals = [round_sig(t).tolist() for t in (data.input_cos[sl], data.output_logits[sl], data.bottom_logits[sl])]
    values = round_sig(data.example_values[:, sl]).tolist()  # [L, c, n]
    seq, pos = data.example_seq[:, sl].tolist(), data.example_pos[:, sl].tolist()
    acts = round_sig(data.window_acts[:, sl]).tolist()  # [L, c, n, W]
    layer_acts = round_sig(data.token_layer_acts[:, sl]).tolist()  # [L, c, n, L]
    lf = round_sig(data.layer_frequency[:, sl].t()).tolist()  # [c, L]
    L, n = data.n_layers, data.n_examples
    records = []
    for c in range(hi - lo):
        ex = [[[values[r][c][s], seq[r][c][s], pos[r][c][s], wid[r][c][s], acts[r][c][s], layer_acts[r][c][s]]
               for s in range(n) if seq[r][c][s] >= 0] for r in range(L)]
        records.append({"id": lo + c, "lf": lf[c], "ex": ex,
                        **{k: [list(pair) for pair in zip(near_ids[i][c], near_vals[i][c], strict=True)]
                           for i, k in enumerate(("ni", "no", "nb"))}})
    tokens = [data.vocab[t] if t < len(data.vocab) else f"<{t}>" for t in table.tolist()]
    return f'{{"first":{lo},"tokens":{_dumps(tokens)},"latents":{_dumps_numbers(records)}}}'


def write_dashboard(data: DashboardData, out: str | Path, *, title: str = "MLSAE latents",
                    meta: dict | None = None) -> DashboardSite:
    """Write ``data`` as a static site into ``out``, atomically (built next to it, renamed into place). An existing
    ``out`` is replaced only if it is a dashboard this function wrote (it holds :data:`MARKER`) or an empty folder;
    anything else is refused before any work. ``meta``: extra ``{name: value}`` rows for the index page's header."""
    out = Path(out).expanduser()
    _check_out(out)
    data.check()
    meta = dict(meta or {})
    n_chunks = max(1, math.ceil(data.n_latents / CHUNK_SIZE))
    digits = max(4, len(str(n_chunks - 1)))
    site = resources.files("mlsae.interop").joinpath("site")
    with atomic_dir(out) as tmp:
        for name in SITE_FILES:
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            with site.joinpath(name).open("rb") as src, open(tmp / name, "wb") as dst:
                shutil.copyfileobj(src, dst)
        (tmp / "data" / "latents").mkdir(parents=True)
        index = _index(data, title, meta, n_chunks, digits)
        (tmp / "data" / "index.js").write_text(f"window.MLSAE_INDEX = {_dumps(index)};\n", encoding="utf-8")
        collecting = gc.isenabled()
        gc.disable()  # millions of short-lived lists, none cyclic: the collector's passes would double the time
        try:
            for c in range(n_chunks):
                lo, hi = c * CHUNK_SIZE, min((c + 1) * CHUNK_SIZE, data.n_latents)
                text = f"mlsaeChunk({c}, {_chunk(data, lo, hi)});\n"
                (tmp / "data" / "latents" / f"chunk-{c:0{digits}d}.js").write_text(text, encoding="utf-8")
        finally:
            if collecting:
                gc.enable()
        (tmp / MARKER).write_text(json.dumps({"format": FORMAT, "version": VERSION, "title": title,
                                              "n_latents": data.n_latents, "chunk_size": CHUNK_SIZE}, indent=1) + "\n")
    files = [p for p in out.rglob("*") if p.is_file()]
    return DashboardSite(folder=out, n_latents=data.n_latents, n_files=len(files),
                         n_bytes=sum(p.stat().st_size for p in files), n_chunks=n_chunks)
