"""Figures for `fastv.analysis.attention` results (`fastv.analysis.result`) (matplotlib `Figure`s of their own, not pyplot's:
headless machines need no display and a notebook's backend is left alone).

Three views, each answering one question a user has before trusting pruning:
- allocation: how much attention each token group gets, layer by layer (and per token);
- heat maps: where on the image the attention to visual tokens goes, and which tokens FastV keeps;
- matrix: the full token-by-token attention of one layer, with the groups marked.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.collections import LineCollection
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

from fastv.analysis.layout import GROUPS, Panel, panel_picture
from fastv.analysis.result import Aggregate, Analysis
from fastv.core.errors import FastVError

COLORS = {
    "system": "#8c8c8c",
    "visual": "#e6550d",
    "interleaved": "#9e9ac8",
    "instruction": "#3182bd",
    "output": "#31a354",
}
KEPT_COLOR = "#00e5ff"
MAX_HEAT_LAYERS = 8
MAX_PANELS = 8


def _subplots(*args, figsize: tuple[float, float], layout: str | None = None, **kwargs):
    """A figure of its own, not pyplot's: no global backend switch, nothing for a notebook to show."""
    fig = Figure(figsize=figsize, layout=layout)
    return fig, fig.subplots(*args, **kwargs)


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def _title(result: Analysis | Aggregate) -> str:
    who = {"last": "last token", "instruction": "instruction tokens (mean)", "output": "output tokens (mean)"}
    if isinstance(result, Aggregate):
        return f"Attention of the {who[result.query]}, mean over {result.n} prompts"
    return f"{result.family}: attention of the {who[result.query]}"


def plot_allocation(result: Analysis | Aggregate, path: str | Path) -> Path:
    """Stacked share per layer (top) and attention efficiency per group on a log scale (bottom)."""
    groups = result.groups_present()
    share = result.share.numpy()
    eff = result.efficiency.numpy()
    x = np.arange(len(result.layers))
    width = max(6.0, 0.35 * len(x) + 2)
    fig, (top, bottom) = _subplots(2, 1, figsize=(width, 7), sharex=True, height_ratios=(3, 2))
    base = np.zeros(len(x))
    for g in groups:
        col = share[:, GROUPS.index(g)]
        top.bar(x, col, bottom=base, color=COLORS[g], label=g, width=0.8)
        base += col
    top.set_ylim(0, 1)
    top.set_ylabel("share of attention")
    top.set_title(_title(result))
    top.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    for g in groups:
        values = eff[:, GROUPS.index(g)]
        bottom.plot(x, np.where(values > 0, values, np.nan), "o-", color=COLORS[g], label=g, ms=4)
    bottom.set_yscale("log")
    bottom.set_ylabel("efficiency\n(share per token)")
    bottom.set_xlabel("decoder layer")
    bottom.grid(alpha=0.3, which="both")
    step = max(1, len(x) // 24)
    bottom.set_xticks(x[::step], [str(layer) for layer in result.layers][::step])
    return _save(fig, path)


def _pick(items: list, limit: int) -> list:
    if len(items) <= limit:
        return items
    idx = np.unique(np.linspace(0, len(items) - 1, limit).round().astype(int))
    return [items[i] for i in idx]


def _panel_name(p: Panel) -> str:
    name = f"{p.kind} {p.index + 1}"
    if p.frame is not None:
        name += f", frame {p.frame}"
    if not p.exact:
        name += " (layout unknown)"
    return name


def plot_heatmaps(result: Analysis, path: str | Path, layers: list[int] | None = None) -> Path:
    """Attention to visual tokens per layer (columns) and image/frame (rows), kept tokens outlined.

    Colours are scaled per layer (shared by that layer's panels): the column title gives the
    layer's total visual share, which is what falls from layer to layer.
    """
    layers = _pick(list(layers or result.layers), MAX_HEAT_LAYERS)
    panels = _pick(result.panels, MAX_PANELS)
    if not panels:
        fig, ax = _subplots(figsize=(5, 2))
        ax.axis("off")
        ax.text(0.5, 0.5, "no visual tokens in this prompt", ha="center", va="center")
        return _save(fig, path)
    vis = GROUPS.index("visual")
    fig, axes = _subplots(
        len(panels),
        len(layers),
        figsize=(2.9 * len(layers) + 0.6, 2.9 * len(panels) + 1.4),
        squeeze=False,
        layout="constrained",
    )
    for c, layer in enumerate(layers):
        grids = [result.visual_grid(layer, p) for p in panels]
        vmin, vmax = min(float(g.min()) for g in grids), max(float(g.max()) for g in grids)
        share = float(result.share[result.layer_row(layer), vis])
        for r, (p, grid) in enumerate(zip(panels, grids, strict=True)):
            ax = axes[r, c]
            im = _heat(ax, result, p, grid, vmin, max(vmax, vmin + 1e-12))
            if r == 0:
                ax.set_title(f"layer {layer}\nvisual share {share:.1%}", fontsize=10)
            if c == 0:
                ax.set_ylabel(_panel_name(p), fontsize=10)
        bar = fig.colorbar(im, ax=axes[:, c].tolist(), orientation="horizontal", fraction=0.05, pad=0.02)
        bar.solids.set_alpha(1.0)
        bar.formatter.set_powerlimits((-2, 2))
        bar.update_ticks()
        bar.ax.tick_params(labelsize=7, rotation=30)
    kept_n = len(result.kept)
    total = sum(len(p.positions) for p in result.panels)
    fig.suptitle(
        f"{_title(result)} to visual tokens\ncyan outline: the {kept_n} of {total} visual tokens {result.method} "
        "keeps; colour scale per layer (min to max)",
        fontsize=10,
        y=1.0,
        va="bottom",  # above the axes; the tight bounding box on save keeps it in the PNG
    )
    return _save(fig, path)


def _heat(ax: Axes, result: Analysis, p: Panel, grid: np.ndarray, vmin: float, vmax: float):
    """One panel: the picture, the attention over it, and the method's kept tokens outlined."""
    h, w = p.shape
    extent = (-0.5, w - 0.5, h - 0.5, -0.5)
    pic = panel_picture(result.images, result.panels, p) if p.exact else None
    if pic is not None:
        ax.imshow(pic, extent=extent, interpolation="bilinear")
    im = ax.imshow(
        grid,
        cmap="inferno",
        vmin=vmin,
        vmax=vmax,
        alpha=0.55 if pic is not None else 1.0,
        extent=extent,
        interpolation="nearest",
    )
    lw = 2.0 if max(h, w) <= 12 else 1.1
    ax.add_collection(LineCollection(_outline(result.kept_grid(p)), colors=KEPT_COLOR, linewidths=lw))
    ax.set_xticks([])
    ax.set_yticks([])
    if h == 1:  # a strip: keep it visible
        ax.set_aspect("auto")
    return im


def plot_matrix(result: Analysis, path: str | Path) -> Path:
    """The head-averaged attention matrix of `result.matrix_layer` (log colour), groups on the margins."""
    if result.matrix is None:
        raise FastVError("this analysis holds no attention matrix: pass matrix_layer= to analyze()")
    m = result.matrix.numpy()
    n = m.shape[0]
    fig, ax = _subplots(figsize=(8, 7.2))
    positive = m[m > 0]
    vmin = max(float(np.percentile(positive, 5)) if positive.size else 1e-6, 1e-6)
    im = ax.imshow(
        np.where(m > 0, m, np.nan), cmap="viridis", norm=LogNorm(vmin=vmin, vmax=1.0), interpolation="nearest"
    )
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02, label="attention (log scale)")
    labels = result.labels.numpy()
    for i, g in enumerate(GROUPS):  # coloured bars along the top (keys) and left (queries)
        idx = np.flatnonzero(labels == i)
        for start, stop in _spans(idx):
            ax.add_patch(
                Rectangle((start - 0.5, -0.03 * n - 0.5), stop - start, 0.025 * n, color=COLORS[g], clip_on=False)
            )
            ax.add_patch(
                Rectangle((-0.03 * n - 0.5, start - 0.5), 0.025 * n, stop - start, color=COLORS[g], clip_on=False)
            )
    ax.set_xlim(-0.5, n - 0.5)
    ax.set_ylim(n - 0.5, -0.5)
    ax.set_xlabel("key position")
    ax.set_ylabel("query position")
    handles = [Patch(color=COLORS[g], label=g) for g in result.groups_present()]
    ax.legend(handles=handles, loc="upper right", fontsize=9, framealpha=0.85)
    ax.set_title(f"{result.family}: attention matrix of layer {result.matrix_layer} (mean over heads)", pad=18)
    return _save(fig, path)


def _outline(mask: np.ndarray) -> list[tuple[tuple[float, float], tuple[float, float]]]:
    """Edges between kept and dropped cells (and the border): kept regions as outlined areas."""
    padded = np.pad(mask, 1)
    segs = []
    for y, x in np.argwhere(mask):
        py, px = y + 1, x + 1
        lo, r, t, b = x - 0.5, x + 0.5, y - 0.5, y + 0.5
        if not padded[py - 1, px]:
            segs.append(((lo, t), (r, t)))
        if not padded[py + 1, px]:
            segs.append(((lo, b), (r, b)))
        if not padded[py, px - 1]:
            segs.append(((lo, t), (lo, b)))
        if not padded[py, px + 1]:
            segs.append(((r, t), (r, b)))
    return segs


def _spans(idx: np.ndarray) -> list[tuple[int, int]]:
    """Contiguous [start, stop) spans of sorted indices."""
    if idx.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(idx) > 1)
    starts = np.concatenate([[idx[0]], idx[breaks + 1]])
    stops = np.concatenate([idx[breaks] + 1, [idx[-1] + 1]])
    return list(zip(starts.tolist(), stops.tolist(), strict=True))


def save_all(result: Analysis, out_dir: str | Path, heat_layers: list[int] | None = None) -> dict[str, Path]:
    """Write allocation.png, heatmap.png and (if held) matrix.png; returns their paths."""
    out = Path(out_dir)
    paths = {
        "allocation": plot_allocation(result, out / "allocation.png"),
        "heatmap": plot_heatmaps(result, out / "heatmap.png", heat_layers),
    }
    if result.matrix is not None:
        paths["matrix"] = plot_matrix(result, out / f"matrix_layer{result.matrix_layer}.png")
    return paths
