"""Figures of one run: pure functions returning matplotlib figures (run.py saves them)."""

from __future__ import annotations

import re
from collections.abc import Mapping

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
