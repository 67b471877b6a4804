"""Figures: matplotlib/seaborn, labelled axes, colour bars, saved as PDF and PNG.

Every function takes statistics (never models) and returns a ``Figure``; :func:`save_figure`
writes it under ``figures/<notebook>/<name>.{pdf,png}`` atomically.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use(matplotlib.get_backend())  # respect MPLBACKEND (Agg in scripts, inline in Jupyter)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from mlsae.analysis import LayerDistributions, ResidualGeometry  # noqa: E402
from mlsae.paths import atomic_write_bytes  # noqa: E402

import os  # noqa: E402

# Where figures go: the repository's figures/ (committed PNGs of the default run), or $MLSAE_FIGURES
# (the test suite points it at a temporary folder so that CI runs never touch figures/).
FIGURES = Path(os.environ.get("MLSAE_FIGURES", Path(__file__).resolve().parents[2] / "figures"))

sns.set_theme(context="paper", style="ticks", font_scale=1.0)


def save_figure(fig: Figure, notebook: str, name: str, root: Path = FIGURES) -> list[Path]:
    """Write ``fig`` as ``<root>/<notebook>/<name>.pdf`` and ``.png`` (rename-into-place)."""
    paths = []
    # No timestamps in the files, so that regenerating unchanged figures changes no bytes.
    for ext, kw in (("pdf", {"metadata": {"CreationDate": None}}), ("png", {"dpi": 150, "metadata": {"Software": None}})):
        buf = io.BytesIO()
        fig.savefig(buf, format=ext, bbox_inches="tight", **kw)
        path = root / notebook / f"{name}.{ext}"
        atomic_write_bytes(path, buf.getvalue())
        paths.append(path)
    return paths


def save_table(table, notebook: str, name: str, root: Path = FIGURES) -> list[Path]:
    """Write a pandas table as CSV and Markdown next to the figures."""
    from mlsae.paths import atomic_write_text

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


def latent_order(stats: LayerDistributions) -> np.ndarray:
    """Alive latents sorted by mean layer (ties by index): the paper's column order."""
    mean = stats.mean_layer.numpy()
    alive = np.flatnonzero(~np.isnan(mean))
    return alive[np.argsort(mean[alive], kind="stable")]


def layer_heatmaps(stats: LayerDistributions, title: str = "", latents: np.ndarray | None = None) -> Figure:
    """``p(l | j)``, counts and totals as layers x latents heatmaps, latents sorted by mean layer."""
    order = latent_order(stats) if latents is None else latents[np.argsort(stats.mean_layer.numpy()[latents], kind="stable")]
    panels = [
        (stats.p_layer.numpy()[:, order], "p(layer | latent)", "viridis"),
        (stats.counts.numpy()[:, order], "count (tokens)", "magma"),
        (stats.totals.numpy()[:, order], "total activation", "magma"),
    ]
    fig, axes = plt.subplots(3, 1, figsize=(10, 1.2 + 0.45 * stats.n_layers * 3), sharex=True, constrained_layout=True)
    for ax, (data, label, cmap) in zip(axes, panels):
        im = ax.imshow(data, aspect="auto", interpolation="nearest", cmap=cmap)
        ax.set_ylabel("layer")
        ax.set_yticks(range(stats.n_layers))
        fig.colorbar(im, ax=ax, label=label, pad=0.01)
    axes[-1].set_xlabel(f"latent (sorted by mean layer; {len(order)} shown)")
    if title:
        axes[0].set_title(title)
    return fig


def variance_comparison(summaries: dict[str, dict]) -> Figure:
    """Per-token versus aggregated variance of the distribution over layers, per model (log scale)."""
    names = list(summaries)
    agg = [summaries[n]["aggregate_var"] for n in names]
    tok = [summaries[n]["token_var"] for n in names]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(1.5 + 1.3 * len(names), 3.2), constrained_layout=True)
    ax.bar(x - 0.2, agg, 0.4, label="aggregated over tokens: E_j[Var(L | j)]")
    ax.bar(x + 0.2, tok, 0.4, label="single token: E_{t,j}[Var(L | t, j)]")
    for xi, a, t in zip(x, agg, tok):
        if t > 0:
            ax.annotate(f"ratio {a / t:.1f}x", (xi, a), ha="center", va="bottom", fontsize=8)
    ax.set_yscale("log")
    ax.set_ylim(top=ax.get_ylim()[1] * 4)  # head room for the legend above the bars
    ax.set_xticks(x, names)
    ax.set_ylabel("variance of layer index (layers²)")
    ax.legend(fontsize=7, loc="upper left")
    return fig


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


def trend(xs: Sequence, ys: dict[str, Sequence], xlabel: str, ylabel: str, logx: bool = False) -> Figure:
    """A small line plot of one or more series against a model-size or hyper-parameter axis."""
    fig, ax = plt.subplots(figsize=(4.5, 3.2), constrained_layout=True)
    for label, y in ys.items():
        ax.plot(xs, y, marker="o", label=label)
    if logx:
        ax.set_xscale("log", base=2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if len(ys) > 1:
        ax.legend(fontsize=7)
    return fig
