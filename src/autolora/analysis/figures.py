"""Figures of a run and of a report: pure functions returning matplotlib figures (their callers save them)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # no display needed; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def layer_and_kind(name: str) -> tuple[int, str]:
    """('bert.encoder.layer.3.attention.self.query' -> (3, 'query'); '…h.3.attn.c_attn:q' -> (3, 'q'))."""
    found = re.search(r"\.(\d+)\.", name)
    module, _, part = name.partition(":")
    return (int(found.group(1)) if found else 0), (part or module.rsplit(".", 1)[-1])


def rank_grid(ranks: Mapping[str, int]) -> tuple[list[str], list[int], np.ndarray]:
    """(kinds, layers, grid[kind, layer]) with NaN where a (kind, layer) pair has no matrix."""
    cells = {layer_and_kind(name): rank for name, rank in ranks.items()}
    kinds = list(dict.fromkeys(kind for _, kind in cells))  # first-seen order: query before value
    layers = sorted({layer for layer, _ in cells})
    grid = np.full((len(kinds), len(layers)), np.nan)
    for (layer, kind), rank in cells.items():
        grid[kinds.index(kind), layers.index(layer)] = rank
    return kinds, layers, grid


def rank_heatmap(ranks: Mapping[str, int], k: int | None, title: str) -> plt.Figure:
    """Per-layer heatmap of the found ranks, one row per adapted matrix kind (q and v)."""
    kinds, layers, grid = rank_grid(ranks)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.5 * len(layers) + 2), 0.6 * len(kinds) + 1.6))
    image = ax.imshow(grid, cmap="viridis", vmin=0, vmax=k or np.nanmax(grid), aspect="auto")
    for (row, col), value in np.ndenumerate(grid):
        if not np.isnan(value):
            ax.text(col, row, f"{int(value)}", ha="center", va="center", color="w" if value < (k or 8) / 2 else "k")
    ax.set_xticks(range(len(layers)), [str(layer) for layer in layers])
    ax.set_yticks(range(len(kinds)), kinds)
    ax.set_xlabel("layer")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="rank")
    fig.tight_layout()
    return fig


def _draw_ranks(ax, ranks: Mapping[str, int], top: float) -> None:
    kinds, layers, grid = rank_grid(ranks)
    ax.imshow(grid, cmap="viridis", vmin=0, vmax=top, aspect="auto")
    for (row, col), value in np.ndenumerate(grid):
        if not np.isnan(value):
            ax.text(col, row, f"{int(value)}", ha="center", va="center", color="w" if value < top / 2 else "k",
                    fontsize=7)
    ax.set_yticks(range(len(kinds)), kinds, fontsize=7)
    ax.set_xticks(range(len(layers)), [str(layer) for layer in layers], fontsize=6)


def ranks_by_seed(groups: Sequence[tuple[str, Sequence[tuple[int, Mapping[str, int]]]]], top: float,
                  title: str) -> plt.Figure:
    """One row per group (label, [(seed, ranks), ...]), one panel per seed, one colour scale 0..top for all."""
    columns = max(len(seeds) for _, seeds in groups)
    layers = max(len(rank_grid(ranks)[1]) for _, seeds in groups for _, ranks in seeds)
    width = max(2.4, 0.22 * layers + 0.8)
    fig = plt.figure(figsize=(width * columns + 1.0, 1.35 * len(groups) + 0.6), layout="constrained")
    rows = fig.subfigures(len(groups), 1, squeeze=False)[:, 0]
    for row, (label, seeds) in zip(rows, groups, strict=True):
        axes = row.subplots(1, columns, squeeze=False)[0]
        for ax, (seed, ranks) in zip(axes, seeds, strict=False):
            _draw_ranks(ax, ranks, top)
            ax.set_title(f"seed {seed}", fontsize=7)
        for ax in axes[len(seeds):]:
            ax.axis("off")
        row.suptitle(label, fontsize=8)
        row.colorbar(plt.cm.ScalarMappable(norm=matplotlib.colors.Normalize(0, top), cmap="viridis"), ax=axes,
                     fraction=0.03, pad=0.01).ax.tick_params(labelsize=6)
    fig.suptitle(f"{title}; x: layer, colour: rank (one scale)", fontsize=9)
    return fig


def score_params(panels: Sequence[tuple[str, str, Sequence[tuple[str, float, float, float]]]],
                 colours: Mapping[str, object]) -> plt.Figure:
    """Per panel (title, metric, [(method, parameters, mean, std), ...]): score against trainable parameters."""
    fig, axes = plt.subplots(1, len(panels), figsize=(4.0 * len(panels), 3.4), squeeze=False)
    for ax, (title, metric, points) in zip(axes[0], panels, strict=True):
        for method, params, mean, std in points:
            ax.errorbar(params, mean, yerr=std, fmt="o", capsize=3, label=method, color=colours[method])
        ax.set_xscale("log")
        ax.set_xlabel("trainable parameters")
        ax.set_ylabel(metric)
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=6)
    fig.tight_layout()
    return fig


def cost_bars(panels: Sequence[tuple[str, Mapping[str, float]]]) -> plt.Figure:
    """Per panel (title, {bar: seconds}): wall time per method beside the whole uniform-rank grid."""
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4), squeeze=False)
    for ax, (title, bars) in zip(axes[0], panels, strict=True):
        ax.barh(list(bars), list(bars.values()))
        ax.set_xlabel("wall time, s (search + retrain)")
        ax.set_title(title, fontsize=9)
        ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    return fig
