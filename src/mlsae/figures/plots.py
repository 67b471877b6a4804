"""Figures: matplotlib/seaborn, labelled axes, colour bars, saved as PDF and PNG.

Every function takes statistics (never models) and returns a ``Figure``; :func:`save_figure`
writes it under ``figures/<notebook>/<name>.{pdf,png}`` atomically.
"""

from __future__ import annotations

import functools
import io
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
from matplotlib import ticker
from matplotlib.colors import LogNorm, PowerNorm
from matplotlib.figure import Figure
from matplotlib.rcsetup import cycler

from mlsae.analysis.distributions import LayerDistributions, LayerSummary, ResidualGeometry, latent_order
from mlsae.core.paths import atomic_write_bytes, atomic_write_text, repository_root


def theme() -> dict:
    """The figures' look (seaborn's ``paper`` context, ``ticks`` style, ``deep`` palette) as matplotlib settings,
    applied while a figure is drawn (:func:`_themed`), so importing this module changes no one else's plots."""
    return {**sns.axes_style("ticks"), **sns.plotting_context("paper", font_scale=1.0),
            "axes.prop_cycle": cycler(color=sns.color_palette("deep"))}


def _themed(draw: Callable[..., Figure]) -> Callable[..., Figure]:
    # Only the theme's own keys are set and put back: plt.rc_context restores every setting, which undoes what
    # Jupyter's inline backend set up when the first figure was made, and later figures never show.
    @functools.wraps(draw)
    def drawn(*args, **kwargs) -> Figure:
        settings = theme()
        before = {key: plt.rcParams[key] for key in settings}
        plt.rcParams.update(settings)
        try:
            return draw(*args, **kwargs)
        finally:
            plt.rcParams.update(before)

    return drawn


def figures_root(default_run: bool = True) -> Path:
    """Where figures go: ``$MLSAE_FIGURES`` when set (an explicit ask; the test suite points it at a
    temporary folder); else the committed ``figures/`` for a default run and ``outputs/figures/`` for any
    other, so that a run with other parameters never overwrites what the README shows. Both sit in the
    repository, or in the working directory when the package is installed without one."""
    if os.environ.get("MLSAE_FIGURES"):
        return Path(os.environ["MLSAE_FIGURES"]).expanduser()
    base = repository_root() or Path.cwd()
    return base / "figures" if default_run else base / "outputs" / "figures"


@dataclass(frozen=True)
class Figures:
    """One notebook's figure folder: ``<root>/<notebook>/``."""

    notebook: str
    root: Path

    def figure(self, fig: Figure, name: str) -> list[Path]:
        return save_figure(fig, self.notebook, name, self.root)

    def table(self, table, name: str) -> list[Path]:
        return save_table(table, self.notebook, name, self.root)

    def markdown(self, text: str, name: str) -> Path:
        path = self.root / self.notebook / f"{name}.md"
        atomic_write_text(path, text)
        return path


def save_figure(fig: Figure, notebook: str, name: str, root: Path | None = None) -> list[Path]:
    """Write ``fig`` as ``<root>/<notebook>/<name>.pdf`` and ``.png`` (rename-into-place)."""
    root = figures_root() if root is None else root
    paths = []
    # No timestamps in the files, so that regenerating unchanged figures changes no bytes.
    for ext, kw in (("pdf", {"metadata": {"CreationDate": None}}), ("png", {"dpi": 150, "metadata": {"Software": None}})):
        buf = io.BytesIO()
        fig.savefig(buf, format=ext, bbox_inches="tight", **kw)
        path = root / notebook / f"{name}.{ext}"
        atomic_write_bytes(path, buf.getvalue())
        paths.append(path)
    return paths


def save_table(table, notebook: str, name: str, root: Path | None = None) -> list[Path]:
    """Write a pandas table as CSV and Markdown next to the figures."""
    root = figures_root() if root is None else root
    paths = [root / notebook / f"{name}.csv", root / notebook / f"{name}.md"]
    atomic_write_text(paths[0], table.to_csv(index=False))
    atomic_write_text(paths[1], _markdown(table))
    return paths


def _markdown(table) -> str:
    cols = list(table.columns)
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines) + "\n"


@_themed
def training_curves(log: list[dict], title: str = "") -> Figure:
    """Loss, mean FVU (and per layer) and dead fraction against training tokens."""
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.0), constrained_layout=True)
    if not log:
        fig.suptitle("no training log (SAE loaded from a checkpoint without one)")
        return fig
    tokens = np.array([r["tokens"] for r in log])
    axes[0].plot(tokens, [r["loss"] for r in log])
    axes[0].set_ylabel("training loss")
    per_layer = np.array([r["fvu_per_layer"] for r in log])
    colors = plt.cm.viridis(np.linspace(0, 1, per_layer.shape[1]))
    for l in range(per_layer.shape[1]):
        axes[1].plot(tokens, per_layer[:, l], color=colors[l], lw=0.8)
    axes[1].plot(tokens, [r["fvu"] for r in log], color="k", lw=1.5, label="mean over layers")
    axes[1].set_ylabel("FVU (training batch)")
    axes[1].set_yscale("log")
    sm = plt.cm.ScalarMappable(cmap="viridis", norm=plt.Normalize(0, per_layer.shape[1] - 1))
    fig.colorbar(sm, ax=axes[1], label="layer")
    axes[1].legend(fontsize=7)
    axes[2].plot(tokens, [r["dead_fraction"] for r in log])
    axes[2].set_ylabel("fraction of dead latents")
    for ax in axes:
        ax.set_xlabel("training tokens")
    if title:
        fig.suptitle(title)
    return fig


@_themed
def layer_heatmaps(stats: LayerDistributions, title: str = "", latents: np.ndarray | None = None) -> Figure:
    """``p(l | j)``, counts and totals as layers x latents heatmaps, latents sorted by mean layer."""
    order = latent_order(stats) if latents is None else latents[np.argsort(stats.mean_layer.numpy()[latents], kind="stable")]
    # counts and totals span orders of magnitude (a few frequent latents): on a linear scale the panels are almost
    # black, so they use a power norm (gamma 0.25, as the authors' heatmaps), p(l | j) a linear one
    panels = [
        (stats.p_layer.numpy()[:, order], "p(layer | latent)", "viridis", None),
        (stats.counts.numpy()[:, order], "count (tokens; power 0.25)", "magma", PowerNorm(0.25)),
        (stats.totals.numpy()[:, order], "total activation (power 0.25)", "magma", PowerNorm(0.25)),
    ]
    fig, axes = plt.subplots(3, 1, figsize=(10, 1.2 + 0.45 * stats.n_layers * 3), sharex=True, constrained_layout=True)
    for ax, (data, label, cmap, norm) in zip(axes, panels, strict=True):
        im = ax.imshow(data, aspect="auto", interpolation="nearest", cmap=cmap, norm=norm)
        ax.set_ylabel("layer")
        ax.set_yticks(range(stats.n_layers))
        fig.colorbar(im, ax=ax, label=label, pad=0.01)
    axes[-1].set_xlabel(f"latent (sorted by mean layer; {len(order)} shown)")
    if title:
        axes[0].set_title(title)
    return fig


@_themed
def variance_comparison(summaries: dict[str, LayerSummary]) -> Figure:
    """Per-token versus aggregated variance of the distribution over layers, per model (log scale)."""
    names = list(summaries)
    agg = [summaries[n].aggregate_var for n in names]
    tok = [summaries[n].token_var for n in names]
    x = np.arange(len(names))
    # at least as wide as the legend: narrower, constrained_layout collapses the axes (and warns) for one model
    fig, ax = plt.subplots(figsize=(max(4.5, 1.5 + 1.3 * len(names)), 3.2), constrained_layout=True)
    ax.bar(x - 0.2, agg, 0.4, label="aggregated over tokens: E_j[Var(L | j)]")
    ax.bar(x + 0.2, tok, 0.4, label="single token: E_{t,j}[Var(L | t, j)]")
    for xi, a, t in zip(x, agg, tok, strict=True):
        if t > 0:
            ax.annotate(f"ratio {a / t:.1f}x", (xi, a), ha="center", va="bottom", fontsize=8)
    ax.set_yscale("log")
    ax.set_ylim(top=ax.get_ylim()[1] * 4)  # head room for the legend above the bars
    ax.set_xticks(x, names)
    ax.set_ylabel("variance of layer index (layers²)")
    ax.legend(fontsize=7, loc="upper left")
    return fig


@_themed
def headline_estimators(rows: dict[str, dict], paper_value: float = 100.0) -> Figure:
    """The headline ratio per model under each estimator (``rows``: model -> :func:`analysis.headline_row`),
    log scale, with the paper's reported ~100x as a line."""
    names = list(rows)
    cols = [c for c in next(iter(rows.values())) if c != "mu2 factor"]
    x = np.arange(len(names))
    width = 0.8 / len(cols)
    fig, ax = plt.subplots(figsize=(2.5 + 1.6 * len(names), 3.6), constrained_layout=True)
    for i, col in enumerate(cols):
        vals = [rows[n][col] for n in names]
        ax.bar(x - 0.4 + (i + 0.5) * width, vals, width, label=col)
    ax.axhline(paper_value, color="k", ls="--", lw=1)
    ax.annotate(f"paper reports ~{paper_value:.0f}x (Pythia, the Pile)", (0.01, paper_value), xycoords=("axes fraction", "data"),
                xytext=(3, 2), textcoords="offset points", va="bottom", fontsize=7)  # clear of the frame
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_yscale("log")
    ax.set_xticks(x, names)
    ax.set_ylabel("aggregated / per-token variance (x)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig


@_themed
def residual_similarity(geoms: dict[str, ResidualGeometry]) -> Figure:
    """Adjacent-layer cosine similarity of centred residual vectors, and mean L2 norm per layer."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.3), constrained_layout=True)
    for name, g in geoms.items():
        n = len(g.norm_mean)
        rel = (np.arange(n - 1) + 0.5) / max(n - 1, 1)
        a.errorbar(rel, g.cos_mean.numpy(), yerr=g.cos_sem.numpy(), marker="o", ms=3, capsize=2, label=name)
        b.plot(np.arange(n) / max(n - 1, 1), g.norm_mean.numpy(), marker="o", ms=3, label=name)
    a.set_xlabel("relative depth of layer pair (l, l+1)")
    a.set_ylabel("mean cosine similarity\n(centred residual vectors)")
    b.set_xlabel("relative depth of layer")
    b.set_ylabel("mean L2 norm of residual vector")
    b.set_yscale("log")
    a.legend(fontsize=7)
    return fig


@_themed
def latent_layer_profile(stats: LayerDistributions, latent: int, top: Sequence[float] | None = None,
                         title: str = "") -> Figure:
    """One latent over layers: ``p(l | j)``, the number of tokens it fires on, and (``top``, one value
    per layer) its largest activation at each layer."""
    panels = [(stats.p_layer[:, latent].numpy(), "p(layer | latent)"),
              (stats.counts[:, latent].numpy(), "count (tokens)")]
    if top is not None:
        panels.append((np.asarray(top, dtype=float), "top activation"))
    fig, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels) + 0.6, 2.8), constrained_layout=True)
    layers = np.arange(stats.n_layers)
    for ax, (data, label) in zip(axes, panels, strict=True):
        ax.bar(layers, data, color="C1")
        ax.set_xticks(layers)
        ax.set_xlabel("layer")
        ax.set_ylabel(label)
    fig.suptitle(title or f"latent {latent}")
    return fig


@_themed
def lm_losses(reports: dict[str, dict]) -> Figure:
    """Held-out next-token loss of each model next to its unigram baseline (nats per token)."""
    names = [n for n in reports if reports[n].get("heldout_loss") is not None]
    fig, ax = plt.subplots(figsize=(1.5 + 1.2 * max(len(names), 1), 3.2), constrained_layout=True)
    x = np.arange(len(names))
    ax.bar(x - 0.2, [reports[n]["unigram_loss"] for n in names], 0.4, label="unigram baseline", color="0.7")
    ax.bar(x + 0.2, [reports[n]["heldout_loss"] for n in names], 0.4, label="model")
    ax.set_xticks(x, [f"{n}\n{reports[n]['n_layers']}x{reports[n]['d_model']}" for n in names])
    ax.set_ylabel("held-out loss (nats / token)")
    ax.legend(fontsize=7)
    return fig


# (row key, y-axis label, log scale) of the panels of family_trend
FAMILY_METRICS = (
    ("honest ratio", "ratio E_j[Var(L | j)]\n/ E_t,j[Var(L | t, j)]", True),
    ("mean_std_layer_over_n_layers", "mean std of p(l | j)\n/ number of layers", False),
    ("adjacent_cos", "mean adjacent-layer cosine\n(centred residual vectors)", False),
    ("fvu", "FVU (mean over layers)", False),
)


@_themed
def family_trend(rows, x: str = "n_layers", xlabel: str = "number of layers of the model", logx: bool = False,
                 metrics=FAMILY_METRICS) -> Figure:
    """The central quantities against model size, one line per architecture family.

    ``rows``: dicts (or a pandas table) with ``family``, the ``x`` key and the keys of ``metrics``
    (default :data:`FAMILY_METRICS`: headline variance ratio, mean std of ``p(l | j)`` over the
    number of layers, mean adjacent-layer cosine similarity, mean FVU); one panel per metric.
    """
    rows = rows.to_dict("records") if hasattr(rows, "to_dict") else list(rows)
    families = list(dict.fromkeys(r["family"] for r in rows))
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.3 * len(metrics), 3.0), constrained_layout=True, squeeze=False)
    markers = "osD^v<>"
    for i, family in enumerate(families):
        mine = sorted((r for r in rows if r["family"] == family), key=lambda r: r[x])
        for ax, (key, _, _) in zip(axes[0], metrics, strict=True):
            ax.plot([r[x] for r in mine], [r[key] for r in mine], marker=markers[i % len(markers)], label=family)
    for ax, (_, ylabel, logy) in zip(axes[0], metrics, strict=True):
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if logy:
            ax.set_yscale("log")
            for set_formatter in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
                set_formatter(ticker.LogFormatter(labelOnlyBase=False))  # 1.5, not 1.5 x 10^0
        if logx:
            ax.set_xscale("log", base=2)
        else:
            ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    axes[0][0].legend(fontsize=7, title="architecture", title_fontsize=7)
    return fig


@_themed
def trend(xs: Sequence, ys: dict[str, Sequence], xlabel: str, ylabel: str, logx: bool = False) -> Figure:
    """A small line plot of one or more series against a model-size or hyper-parameter axis."""
    fig, ax = plt.subplots(figsize=(4.5, 3.2), constrained_layout=True)
    for label, y in ys.items():
        ax.plot(xs, y, marker="o", label=label)
    if logx:
        ax.set_xscale("log", base=2)
    elif all(float(x).is_integer() for x in xs):  # layers, R, k: no 4.5-layer ticks
        ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if len(ys) > 1:
        ax.legend(fontsize=7)
    return fig


@_themed
def sweep_curves(rows: Sequence[dict], metrics: Sequence[str] = ("FVU", "delta CE", "mean std of p(l|j)", "MMCS")) -> Figure:
    """Sweep results: one row of panels against R (at fixed k), one against k (at fixed R)."""
    sweeps = [s for s in ("R", "k") if any(r["sweep"] == s for r in rows)]
    fig, axes = plt.subplots(len(sweeps), len(metrics), figsize=(3.0 * len(metrics), 2.7 * len(sweeps)),
                             constrained_layout=True, squeeze=False)
    for i, s in enumerate(sweeps):
        pts = sorted((r for r in rows if r["sweep"] == s), key=lambda r: r[s])
        fixed = "k" if s == "R" else "R"
        for ax, m in zip(axes[i], metrics, strict=True):
            ax.plot([r[s] for r in pts], [r[m] for r in pts], marker="o")
            ax.set_xscale("log", base=2)
            ax.set_xlabel(f"{'expansion factor R' if s == 'R' else 'k (active latents)'}  ({fixed} = {pts[0][fixed]})")
            ax.set_ylabel(m)
            if m in ("FVU", "delta CE"):
                ax.set_yscale("log")
    return fig


@_themed
def heatmaps_side_by_side(stats: dict[str, LayerDistributions]) -> Figure:
    """``p(l | j)`` of several runs (e.g. without and with the tuned lens), latents sorted by mean layer."""
    fig, axes = plt.subplots(len(stats), 1, figsize=(10, 0.9 + 0.5 * sum(s.n_layers for s in stats.values())),
                             constrained_layout=True, squeeze=False)
    for ax, (label, s) in zip(axes[:, 0], stats.items(), strict=True):
        order = latent_order(s)
        im = ax.imshow(s.p_layer.numpy()[:, order], aspect="auto", interpolation="nearest", cmap="viridis", vmin=0, vmax=1)
        ax.set_yticks(range(s.n_layers))
        ax.set_ylabel("layer")
        ax.set_title(label, fontsize=9)
        ax.set_xlabel(f"latent (sorted by mean layer; {len(order)} alive)")
        fig.colorbar(im, ax=ax, label="p(layer | latent)", pad=0.01)
    return fig


@_themed
def layer_statistics(stats: dict[str, LayerDistributions], min_share: float = 0.05) -> Figure:
    """PAPER.md §4 items 5 and 12, per model: mean layer (relative depth), its distance to the nearest
    integer, the number of layers holding at least ``min_share`` of a latent's firings, and the
    entropy of ``p(l | j)`` divided by its maximum ``log L``."""
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.0), constrained_layout=True)
    for name, s in stats.items():
        alive = s.alive
        L = s.n_layers
        kw = dict(histtype="step", density=True, lw=1.3, label=f"{name} ({L} layers)")
        axes[0].hist((s.mean_layer[alive] / max(L - 1, 1)).numpy(), bins=40, range=(0, 1), **kw)
        axes[1].hist(s.distance_to_integer[alive].numpy(), bins=25, range=(0, 0.5), **kw)
        axes[2].hist(s.active_layers(min_share)[alive].numpy(), bins=np.arange(0.5, L + 1), **kw)
        axes[3].hist((s.entropy[alive] / np.log(L)).numpy(), bins=30, range=(0, 1), **kw)
    axes[0].set_xlabel("mean layer E[L | j] / (L - 1)")
    axes[1].set_xlabel("|E[L | j] - nearest integer|  (layers)")
    axes[2].set_xlabel(f"layers with >= {min_share:.0%} of the latent's firings")
    axes[2].xaxis.get_major_locator().set_params(integer=True)
    axes[3].set_xlabel("entropy of p(l | j) / log L")
    for ax in axes:
        ax.set_ylabel("density of latents")
    axes[0].legend(fontsize=7)
    return fig


@_themed
def pair_histograms(hist, title: str = "") -> Figure:
    """Histogram of pairwise decoder cosine similarity, and its 2-D histogram against the
    difference in mean layer (log colour scale, with the mean absolute cosine per row overlaid)."""
    ce, de = hist.cos_edges.numpy(), hist.dlayer_edges.numpy()
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.4), constrained_layout=True)
    a.stairs(hist.cos_counts.numpy(), ce, fill=True, alpha=0.7)
    a.set_yscale("log")
    a.set_xlabel("cosine similarity of decoder vectors")
    a.set_ylabel(f"pairs (of {hist.pairs:,})")
    joint = hist.joint_counts.numpy()
    im = b.pcolormesh(ce, de, np.where(joint > 0, joint, np.nan), norm=LogNorm(), cmap="magma", shading="flat")
    b.plot(hist.mean_abs_cos_by_dlayer().numpy(), (de[:-1] + de[1:]) / 2, color="cyan", lw=1.2, label="mean |cosine| per row")
    b.set_xlabel("cosine similarity of decoder vectors")
    b.set_ylabel("|difference in mean layer|  (layers)")
    b.legend(fontsize=7, loc="upper right")
    fig.colorbar(im, ax=b, label="pairs")
    if title:
        fig.suptitle(title)
    return fig


@_themed
def embedding_alignment(mean_layer: np.ndarray, best: dict[str, np.ndarray], n_layers: int) -> Figure:
    """Each latent's largest cosine similarity with any input / output token direction, against its
    mean layer: mean and interquartile range over latents in bins of mean layer."""
    fig, ax = plt.subplots(figsize=(5, 3.3), constrained_layout=True)
    edges = np.linspace(0, max(n_layers - 1, 1), 2 * n_layers)
    ok = ~np.isnan(mean_layer)
    centres = (edges[:-1] + edges[1:]) / 2
    for label, cos in best.items():
        idx = np.clip(np.digitize(mean_layer[ok], edges) - 1, 0, len(centres) - 1)
        stats = [(np.mean(v), *np.percentile(v, [25, 75])) if len(v) else (np.nan,) * 3
                 for v in (cos[ok][idx == i] for i in range(len(centres)))]
        m, lo, hi = map(np.array, zip(*stats, strict=True))
        ax.plot(centres, m, marker="o", ms=3, label=f"{label} embeddings")
        ax.fill_between(centres, lo, hi, alpha=0.2)
    ax.set_xlabel("mean layer of the latent E[L | j]")
    ax.set_ylabel("max cosine similarity with\nany token direction")
    ax.legend(fontsize=7)
    return fig


@_themed
def layer_matrix(matrix: np.ndarray, row_labels: Sequence[str], label: str, log: bool = False) -> Figure:
    """A [trained-on, evaluated-on] matrix with values written in the cells and a colour bar."""
    fig, ax = plt.subplots(figsize=(1.6 + 0.8 * matrix.shape[1], 0.9 + 0.45 * matrix.shape[0]), constrained_layout=True)
    norm = LogNorm(vmin=max(np.nanmin(matrix[matrix > 0]), 1e-6), vmax=np.nanmax(matrix)) if log and (matrix > 0).any() else None
    im = ax.imshow(np.where(matrix > 0, matrix, np.nan) if log else matrix, cmap="rocket_r", norm=norm, aspect="auto")
    for (i, j), v in np.ndenumerate(matrix):
        ax.text(j, i, f"{v:.3g}", ha="center", va="center", fontsize=7, color="0.5")
    ax.set_xticks(range(matrix.shape[1]))
    ax.set_yticks(range(len(row_labels)), row_labels)
    ax.set_xlabel("evaluated on layer")
    ax.axhline(len(row_labels) - 1.5, color="k", lw=1)
    fig.colorbar(im, ax=ax, label=label)
    return fig


@_themed
def agreement(best_cos: np.ndarray, mean_layer: np.ndarray, n_layers: int,
              ylabel: str = "single-layer SAE of layer", title: str = "") -> Figure:
    """MLSAE latents' max decoder cosine similarity with each single-layer SAE ([sae layer, latent]; or with a
    crosscoder's decoder directions at each layer), averaged over MLSAE latents binned by their mean layer."""
    ok = ~np.isnan(mean_layer)
    bins = np.clip(np.round(mean_layer[ok]).astype(int), 0, n_layers - 1)
    grid = np.array([[best_cos[s, ok][bins == b].mean() if (bins == b).any() else np.nan for b in range(n_layers)]
                     for s in range(best_cos.shape[0])])
    fig, ax = plt.subplots(figsize=(1.8 + 0.8 * n_layers, 1.2 + 0.6 * best_cos.shape[0]), constrained_layout=True)
    im = ax.imshow(grid, cmap="viridis", aspect="auto", vmin=0, vmax=1)
    for (i, j), v in np.ndenumerate(grid):
        ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="w")
    counts = [int((bins == b).sum()) for b in range(n_layers)]
    ax.set_xticks(range(n_layers), [f"{b}\n({c})" for b, c in enumerate(counts)])
    ax.set_yticks(range(best_cos.shape[0]))
    ax.set_xlabel("MLSAE latents by nearest mean layer (count)")
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, label="mean max cosine similarity")
    return fig


@_themed
def per_layer_metrics(rows: Sequence[dict], metrics: Sequence[str] = ("FVU", "delta CE", "KL")) -> Figure:
    """Notebook 13: each metric per layer (rows of ``{"model", "dictionary", "layer", metric...}``), one column per
    model, one line per dictionary; log scale (the metrics span orders of magnitude across dictionaries)."""
    models = list(dict.fromkeys(r["model"] for r in rows))
    names = list(dict.fromkeys(r["dictionary"] for r in rows))
    fig, axes = plt.subplots(len(metrics), len(models), figsize=(3.6 * len(models), 2.4 * len(metrics)),
                             constrained_layout=True, squeeze=False)
    for j, model in enumerate(models):
        for i, metric in enumerate(metrics):
            ax = axes[i, j]
            for name in names:
                pts = sorted((r["layer"], r[metric]) for r in rows if r["model"] == model and r["dictionary"] == name)
                if pts:
                    ax.plot(*zip(*pts, strict=True), marker="o", ms=3, label=name)
            ax.set_yscale("log")
            ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
            ax.set_xlabel("layer")
            ax.set_ylabel(metric + (" (nats / token)" if metric in ("delta CE", "KL") else ""))
            if i == 0:
                ax.set_title(model, fontsize=9)
    axes[0, -1].legend(fontsize=7)
    return fig
