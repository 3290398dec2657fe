"""Figures the chapters and ``fgnb predict`` share (matplotlib only).

Chapter 3 introduces the heat maps, chapter 4 the box overlay, chapter 5 the curves.
"""
from __future__ import annotations

import math
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch

__all__ = ["to_display", "draw_box", "attention_grid", "overlay", "plot_history"]


def to_display(image: torch.Tensor, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)) -> np.ndarray:
    """(3, H, W) normalised tensor -> (H, W, 3) array in [0, 1]."""
    m = torch.as_tensor(mean, dtype=torch.float32).view(3, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32).view(3, 1, 1)
    return (image.detach().float().cpu() * s + m).clamp(0, 1).permute(1, 2, 0).numpy()


def draw_box(ax, box, color="lime", label: str | None = None, lw: float = 2.0):
    """Draw an (x0, y0, x1, y1) pixel box; returns the patch (its bounds are testable)."""
    x0, y0, x1, y1 = [float(v) for v in box]
    rect = plt.Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, ec=color, lw=lw, label=label)
    ax.add_patch(rect)
    return rect


def _upsample(scores: torch.Tensor, grid, size) -> np.ndarray:
    m = scores.detach().float().cpu().view(1, 1, *grid)
    return torch.nn.functional.interpolate(m, size=size, mode="nearest")[0, 0].numpy()


def overlay(ax, image: np.ndarray, scores: torch.Tensor | None = None, grid=None, box=None, mask=None,
            title: str | None = None, alpha: float = 0.5):
    """Image with a (K,) score map (e.g. log-product) and/or the mask and the box on top."""
    ax.imshow(image)
    h, w = image.shape[:2]
    if scores is not None:
        ax.imshow(_upsample(scores, grid, (h, w)), cmap="inferno", alpha=alpha, extent=(-0.5, w - 0.5, h - 0.5, -0.5))
    if mask is not None:
        ax.contour(_upsample(mask.float(), grid, (h, w)), levels=[0.5], colors="cyan", linewidths=1)
    if box is not None:
        draw_box(ax, box)
    if title:
        ax.set_title(title, fontsize=9)
    ax.set_axis_off()
    return ax


def attention_grid(attn: torch.Tensor, grid, image: np.ndarray | None = None, titles: Sequence[str] | None = None,
                   ncols: int | None = None, size: float = 1.8):
    """One heat map per row of an (H, K) attention matrix (one row per head)."""
    n = attn.shape[0]
    ncols = ncols or min(n, 6)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i < n:
            if image is not None:
                overlay(ax, image, attn[i], grid, title=titles[i] if titles else f"head {i}")
            else:
                ax.imshow(attn[i].detach().float().cpu().view(*grid), cmap="inferno")
                ax.set_title(titles[i] if titles else f"head {i}", fontsize=9)
        ax.set_axis_off()
    fig.tight_layout()
    return fig


def plot_history(histories: dict[str, list[dict]], keys: Sequence[str], ax=None, xlabel="epoch"):
    """Curves of the metric ``keys`` for several runs ({name: history rows})."""
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.5))
    for name, rows in histories.items():
        for k in keys:
            pts = [(r["epoch"], r[k]) for r in rows if k in r]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=f"{name} {k}" if len(keys) > 1 else name)
    ax.set_xlabel(xlabel)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return ax
