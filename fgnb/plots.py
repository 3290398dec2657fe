"""Figures the chapters and ``fgnb predict`` share (matplotlib only).

Chapter 3 introduces the heat maps, chapter 4 the box overlay, chapter 5 the curves,
chapter 8 the forest plot of paired differences.
"""
from __future__ import annotations

import math
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch

__all__ = ["to_display", "draw_box", "attention_grid", "overlay", "plot_history", "method_pipeline", "batch_timeline",
           "forest_plot", "gain_plot"]


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
                overlay(ax, image, attn[i], grid, title=titles[i] if titles else f"head {i + 1}")
            else:
                ax.imshow(attn[i].detach().float().cpu().view(*grid), cmap="inferno")
                ax.set_title(titles[i] if titles else f"head {i + 1}", fontsize=9)
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


# ----------------------------------------------------------------------------- method figures
# Two drawings of the method itself (no model is run): the book's pipeline figure and the
# timeline of one batch under each update strategy. Symbols follow book/notation.md.

def _node(ax, x, y, w, h, text, fc="#eef3fb", ec="#34495e", fontsize=8, **kw):
    from matplotlib.patches import FancyBboxPatch

    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02,rounding_size=0.08",
                                fc=fc, ec=ec, lw=1.0, **kw))
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=fontsize, wrap=True)
    return (x, y, w, h)


def _arrow(ax, p, q, color="#34495e", style="-|>", rad=0.0, lw=1.0, ls="-"):
    from matplotlib.patches import FancyArrowPatch

    ax.add_patch(FancyArrowPatch(p, q, arrowstyle=style, mutation_scale=9, color=color, lw=lw, ls=ls,
                                 connectionstyle=f"arc3,rad={rad}", shrinkA=1, shrinkB=1))


def method_pipeline(depth: int = 6, targets: int = 3, ax=None):
    """The whole method in one drawing.

    Top row (progressive multi-layer training): image (h x w) -> K patches of P x P pixels
    -> linear projection, position embedding and CLS token (N = 1 + K tokens) -> L encoder
    layers -> the CLS vectors c_l of the last R layers -> R MLP heads -> logits y_r ->
    losses l_r. Bottom row (the attention crop): CLS attention a_i^h of the H heads ->
    product over heads Pi_i -> mean threshold -> box -> crop of the source image, resized
    to h x w -> back into the same network with the same label.
    """
    if ax is None:
        _, ax = plt.subplots(figsize=(11.5, 5.2))
    ax.set_xlim(0, 11.6)
    ax.set_ylim(0, 5.2)
    ax.set_axis_off()
    blue, green, orange, grey = "#dbe8f7", "#dff2e1", "#fde9d4", "#f2f2f2"
    # top row
    _node(ax, 0.1, 3.3, 1.2, 1.0, "image\n$h \\times w$", fc=grey)
    _node(ax, 1.6, 3.3, 1.3, 1.0, "$K$ patches\n$P \\times P$ px", fc=grey)
    _node(ax, 3.2, 3.3, 1.5, 1.0, "projection $E$\n+ positions\n+ CLS: $N = 1 + K$", fc=blue, fontsize=7.5)
    _arrow(ax, (1.3, 3.8), (1.6, 3.8))
    _arrow(ax, (2.9, 3.8), (3.2, 3.8))
    # the encoder: L layers as a column of thin boxes, the last R highlighted
    x0, w_l, gap = 5.0, 0.34, 0.06
    first_target = depth - targets
    for l in range(depth):
        fc = orange if l >= first_target else blue
        _node(ax, x0 + l * (w_l + gap), 3.1, w_l, 1.4, f"{l + 1}", fc=fc, fontsize=7)
    ax.text(x0 + depth * (w_l + gap) / 2, 4.7, f"encoder: $L = {depth}$ layers, last $R = {targets}$ are targets",
            ha="center", fontsize=8)
    _arrow(ax, (4.7, 3.8), (x0, 3.8))
    # CLS of each target layer -> head -> loss
    hx = x0 + depth * (w_l + gap) + 0.5
    for j, l in enumerate(range(first_target, depth)):
        y = 4.25 - j * 0.55
        xl = x0 + l * (w_l + gap) + w_l / 2
        _arrow(ax, (xl, 3.1 if j else 3.1), (hx, y + 0.2), rad=0.25 if j < targets - 1 else 0.15, color="#b9770e")
        _node(ax, hx, y, 1.25, 0.4, f"MLP head {j + 1}", fc=orange, fontsize=7.5)
        _node(ax, hx + 1.5, y, 1.65, 0.4, f"$y_{j + 1}$, $\\ell_{j + 1} = \\mathrm{{CE}}(y_{j + 1}, y)$", fc="white",
              fontsize=7.5)
        _arrow(ax, (hx + 1.25, y + 0.2), (hx + 1.5, y + 0.2))
    ax.text(hx + 1.4, 2.5, "CLS vectors $c_l$ of the target layers;\none loss, one backward, one step each",
            ha="center", fontsize=7.5, style="italic")
    # bottom row: the attention crop
    yb = 0.6
    _node(ax, 5.0, yb, 1.55, 0.9, "CLS attention\n$a_i^h$ ($H \\times K$)", fc=green, fontsize=7.5)
    _node(ax, 6.85, yb, 1.3, 0.9, "product\n$\\Pi_i = \\prod_h a_i^h$", fc=green, fontsize=7.5)
    _node(ax, 8.45, yb, 1.1, 0.9, "threshold\n$\\Pi_i > \\bar\\Pi$", fc=green, fontsize=7.5)
    _node(ax, 9.8, yb, 1.1, 0.9, "box of the\nmarked patches", fc=green, fontsize=7.5)
    xd = x0 + (depth - 1) * (w_l + gap) + w_l / 2
    _arrow(ax, (xd, 3.1), (5.8, yb + 0.9), color="#1e8449", rad=-0.2)
    _arrow(ax, (6.55, yb + 0.45), (6.85, yb + 0.45))
    _arrow(ax, (8.15, yb + 0.45), (8.45, yb + 0.45))
    _arrow(ax, (9.55, yb + 0.45), (9.8, yb + 0.45))
    _node(ax, 1.6, yb, 2.6, 0.9, "crop the box from the source image,\nresize to $h \\times w$ (same label)",
          fc=green, fontsize=7.5)
    _arrow(ax, (9.8, yb + 0.1), (4.2, yb + 0.1), color="#1e8449", rad=0.0)
    _arrow(ax, (2.9, yb + 0.9), (2.25, 3.3), color="#1e8449", rad=0.0, ls="--")
    ax.text(2.0, 2.2, "back in:\nthe local view", fontsize=7.5, color="#1e8449", ha="right")
    ax.text(5.0, 1.75, "attention crop (multi-scale module)", fontsize=8, color="#1e8449")
    ax.text(0.1, 4.85, "progressive multi-layer training", fontsize=8, color="#b9770e")
    return ax


#: What happens to one batch under each strategy, in order: (kind, label, relative width).
#: kind: 'eval' (a forward without gradients), 'fwd', 'loss', 'bwd', 'step', 'crop'.
def _timeline_events(strategy: str, targets: tuple[int, ...], depth: int) -> list[tuple[str, str, float]]:
    R = len(targets)
    full = depth
    ev: list[tuple[str, str, float]] = []
    if strategy == "last":
        ev += [("fwd", f"forward\nlayers 1..{full}", full), ("loss", f"$\\ell_{R}$", 1), ("bwd", "backward", full),
               ("step", "step", 1.5)]
    elif strategy == "summed":
        ev += [("fwd", f"forward\nlayers 1..{full}", full), ("loss", "$\\sum_r \\ell_r$", 1.4),
               ("bwd", "backward", full), ("step", "step", 1.5)]
    elif strategy in ("progressive", "progressive + crop"):
        crop = strategy != "progressive"
        if crop:
            ev += [("eval", f"eval forward\n1..{full}: boxes", full), ("crop", "cut\ncrops", 2.0)]
        for r, l in enumerate(targets, start=1):
            n = l + 1
            if crop:
                ev += [("fwd", f"fwd 1..{n}\nglobal + crop", n), ("loss", f"$\\ell_{r}$\n$+\\ell_{r}^{{c}}$", 1.8),
                       ("bwd", "bwd", n), ("step", f"step\n{r}", 1.5)]
            else:
                ev += [("fwd", f"fwd\n1..{n}", n), ("loss", f"$\\ell_{r}$", 1), ("bwd", "bwd", n),
                       ("step", f"step\n{r}", 1.5)]
    else:
        raise ValueError(f"unknown strategy {strategy!r}")
    return ev


def batch_timeline(depth: int = 6, targets: int = 3, ax=None,
                   strategies: Sequence[str] = ("last", "summed", "progressive", "progressive + crop")):
    """The timeline of one batch under each strategy: which forward, backward and optimizer
    step, in order (widths: forward/backward proportional to the layers they run).

    ``progressive + crop`` is the joint crop step: boxes from an eval-mode forward at the
    start of the batch (before any update), crops cut from the source image, then for each
    stage r one forward of the global and the crop view up to layer L_r, one backward of
    l_r + l_r^crop, one optimizer step.
    """
    tgt = tuple(range(depth - targets, depth))
    colors = {"eval": "#d5dbdb", "fwd": "#dbe8f7", "loss": "white", "bwd": "#f5cba7", "step": "#abebc6",
              "crop": "#dff2e1"}
    if ax is None:
        _, ax = plt.subplots(figsize=(12, 0.8 * len(strategies) + 0.5))
    rows = {s: _timeline_events(s, tgt, depth) for s in strategies}
    scale = 0.25
    xmax = max(sum(w for _, _, w in ev) * scale + 0.08 * len(ev) for ev in rows.values())
    for i, (name, ev) in enumerate(rows.items()):
        y = len(strategies) - 1 - i
        ax.text(-0.1, y + 0.35, name, ha="right", va="center", fontsize=9, weight="bold")
        x = 0.0
        for kind, label, w in ev:
            width = w * scale
            _node(ax, x, y + 0.05, width, 0.6, label, fc=colors[kind], fontsize=6.5)
            x += width + 0.08
        steps = sum(k == "step" for k, _, _ in ev)
        ax.text(x + 0.1, y + 0.35, f"{steps} step{'s' if steps > 1 else ''}", va="center", fontsize=8)
    ax.set_xlim(-2.0, xmax + 0.9)
    ax.set_ylim(-0.2, len(strategies))
    ax.set_axis_off()
    ax.set_title(f"one batch, $L = {depth}$ layers, target layers {', '.join(str(l + 1) for l in tgt)} "
                 "(time runs left to right)", fontsize=9)
    return ax


def forest_plot(rows: Sequence[dict], ax=None, title: str = "", xlabel: str = "difference to last (points)"):
    """Paired differences with their intervals, one line per variant (chapter 8).

    ``rows``: :func:`fgnb.results.paired_differences` rows (``variant``, ``mean``, ``low``,
    ``high``, ``n``). A dot at the mean, a bar over the interval, the zero line: a bar that
    crosses zero is no difference at that confidence. Returns the axes.
    """
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 0.45 * max(len(rows), 2) + 1))
    ys = np.arange(len(rows))[::-1]
    for y, r in zip(ys, rows):
        lo, hi = r["low"], r["high"]
        finite = not (math.isnan(lo) or math.isnan(hi))
        color = "#c0392b" if finite and hi < 0 else "#27ae60" if finite and lo > 0 else "#34495e"
        if finite:
            ax.plot([lo, hi], [y, y], color=color, lw=2)
        ax.plot([r["mean"]], [y], "o", color=color)
        ax.annotate(f"n={r['n']}", (1.0, y), xycoords=("axes fraction", "data"), xytext=(4, 0),
                    textcoords="offset points", va="center", fontsize=7, color="#555")
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(ys, [r["variant"] for r in rows], fontsize=8)
    ax.set_xlabel(xlabel)
    if title:
        ax.set_title(title, fontsize=9)
    return ax


def gain_plot(rows: Sequence[dict], ax=None, title: str = "",
              xlabel: str = "eye-ring diameter at the input (px, median over validation images)",
              ylabel: str = "gain over last (points)", dodge: float = 0.015):
    """A sweep's gain curve: one line per variant, the paired gain at each point's eye-ring size
    with its interval as an error bar, and the zero line (chapter 9).

    ``rows``: :func:`fgnb.results.gain_curve` rows (``variant``, ``x``, ``mean``, ``low``,
    ``high``, ``n``). Variants are shifted sideways by ``dodge`` x the x range each, so bars at
    one point do not hide each other. Returns the axes.
    """
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.6))
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    xs = [r["x"] for r in rows]
    span = (max(xs) - min(xs)) or 1.0 if xs else 1.0
    for i, v in enumerate(variants):
        mine = sorted((r for r in rows if r["variant"] == v), key=lambda r: r["x"])
        shift = (i - (len(variants) - 1) / 2) * dodge * span
        x = np.array([r["x"] for r in mine]) + shift
        y = np.array([r["mean"] for r in mine])
        lo = np.array([r["low"] for r in mine])
        hi = np.array([r["high"] for r in mine])
        err = np.nan_to_num(np.stack([y - lo, hi - y]))  # no interval (one seed): no bar
        ax.errorbar(x, y, yerr=err, marker="o", ms=4, capsize=3, lw=1.5, label=v)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if variants:
        ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    return ax


def localisation_plot(profile: dict, axes=None, label: str = ""):
    """Where localisation lives (chapter 3): per block (counted from 1), each head's normalised
    entropy of the CLS attention (left) and its mass on the part box (right), beside the part
    box's area share, the mass a map without spatial information puts there (dashed).

    ``profile``: :func:`fgnb.localisation.localisation_profile`'s dict (or a results row of
    ``bench/localisation.py``). Returns the two axes.
    """
    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(9, 2.8))
    ent, mass = np.asarray(profile["entropy"]), np.asarray(profile["mass_part"])
    blocks = np.arange(1, ent.shape[0] + 1)
    for h in range(ent.shape[1]):
        axes[0].plot(blocks, ent[:, h], "o-", label=f"head {h + 1}")
        axes[1].plot(blocks, mass[:, h], "o-", label=f"head {h + 1}")
    axes[1].axhline(profile["share_part"], color="grey", ls="--", label="part box's area share (flat map)")
    axes[0].set_ylim(0, 1.02)
    axes[1].set_ylim(0, 1.02)
    for ax, title in zip(axes, ("entropy of the CLS attention (1 = flat)", "attention mass on the part box")):
        ax.set_xticks(blocks)
        ax.set_xlabel("block")
        ax.set_title(f"{label}: {title}" if label else title, fontsize=9)
    axes[1].legend(fontsize=7)
    return axes
