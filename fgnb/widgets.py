"""Interactive attention explorers for the chapters (ipywidgets + matplotlib).

* :class:`AttentionExplorer` (chapter 3, "Self-attention and the CLS attention of every
  head"): pick an image, a layer and a head; see that head's CLS attention over the image.
* :class:`ThresholdExplorer` (chapter 4, "The per-head product and the mean threshold"):
  pick an image, a layer (per-layer, cumulative or rollout scores), the threshold scale
  and the box rule; see the head-product map, the mask and the box on the image.

Both run the model once per image (cached) and redraw when a control changes. The figure
is rendered to PNG bytes in an ``ipywidgets.Image``: the bytes are part of the saved widget
state, so the built (static) book still shows the last view; the controls need a live
kernel (Jupyter, Colab). For tests and scripts the current state is public:
``.controls`` (name -> widget), ``.update()``, ``.set(**values)``, ``.figure``, ``.png``
and, for the threshold explorer, ``.scores``, ``.mask`` and ``.box``.

They use only what ipywidgets 7.7 and 8 have in common (Colab ships 7.x; fgnb does not
upgrade it). Colab's built-in widget manager renders ipywidgets 7 only; with ipywidgets 8
in Colab the explorers switch on its custom widget manager
(``google.colab.output.enable_custom_widget_manager()``; googlecolab/colabtools#3020).
"""
from __future__ import annotations

import io
import sys
from typing import Any, Sequence

import ipywidgets as W
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .attention import BOX_RULES, attention_rollout, boxes_from_mask, cumulative_product, head_product, mean_threshold
from .plots import draw_box, overlay, to_display

__all__ = ["AttentionExplorer", "ThresholdExplorer", "SCORE_MODES"]

#: Scores the threshold explorer can threshold: the head product of one layer, the
#: cumulative product over layers 0..l, or attention rollout over layers 0..l.
SCORE_MODES = ("layer", "cumulative", "rollout")


def ipywidgets_major() -> int:
    return int(W.__version__.split(".")[0])


def prepare_colab() -> bool:
    """In Colab with ipywidgets >= 8, switch on Colab's custom widget manager (its built-in
    one renders ipywidgets 7 only). Returns whether it did; elsewhere it does nothing."""
    if "google.colab" not in sys.modules or ipywidgets_major() < 8:
        return False
    from google.colab import output

    output.enable_custom_widget_manager()
    return True


def _as_items(images, labels, part_boxes, max_images: int) -> tuple[torch.Tensor, list, list]:
    """Normalise the ``images`` argument: a (N, 3, H, W) / (3, H, W) tensor, a sequence of
    (3, H, W) tensors, or a data set / list of fgnb item dicts ('image', 'label', 'part_box')."""
    lab: list = []
    pbox: list = []
    if torch.is_tensor(images):
        x = images[None] if images.dim() == 3 else images
    else:
        try:
            n = len(images)
        except TypeError:
            raise TypeError(f"images must be a tensor, a sequence of tensors or a data set, got {type(images).__name__}") from None
        tensors = []
        for i in range(min(n, max_images)):
            item = images[i]
            if isinstance(item, dict):
                tensors.append(item["image"])
                lab.append(int(item["label"]) if "label" in item else None)
                pb = item.get("part_box")
                pbox.append(None if pb is None or torch.isnan(torch.as_tensor(pb)).any() else torch.as_tensor(pb))
            elif torch.is_tensor(item):
                tensors.append(item)
            else:
                raise TypeError(f"images[{i}] is a {type(item).__name__}; expected a (3, H, W) tensor or an item dict")
        if not tensors:
            raise ValueError("images is empty: give at least one image")
        x = torch.stack(tensors)
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"images must be (N, 3, H, W) normalised tensors, got shape {tuple(x.shape)}")
    if len(x) == 0:
        raise ValueError("images is empty: give at least one image")
    x = x[:max_images]
    n = len(x)
    if labels is not None:
        lab = [int(v) for v in labels][:n]
    if part_boxes is not None:
        pbox = [None if b is None else torch.as_tensor(b, dtype=torch.float32) for b in part_boxes][:n]
    lab = (lab + [None] * n)[:n]
    pbox = (pbox + [None] * n)[:n]
    return x, lab, pbox


def _heat(ax, image: np.ndarray, scores: torch.Tensor, grid, vmax: float | None = None, title: str = "",
          alpha: float = 0.6):
    """Image with a (K,) map on top, on the colour scale [0, vmax] (shared by the panels of a figure)."""
    h, w = image.shape[:2]
    ax.imshow(image)
    m = scores.detach().float().cpu().view(1, 1, *grid)
    up = torch.nn.functional.interpolate(m, size=(h, w), mode="nearest")[0, 0].numpy()
    ax.imshow(up, cmap="inferno", alpha=alpha, vmin=0.0, vmax=vmax, extent=(-0.5, w - 0.5, h - 0.5, -0.5))
    ax.set_title(title, fontsize=8)
    ax.set_axis_off()


def _layer_index(layer, depth: int):
    """None -> the last block; negative indices count from the end (others are validated later)."""
    if layer is None:
        return depth - 1
    if isinstance(layer, int) and not isinstance(layer, bool) and -depth <= layer < 0:
        return layer % depth
    return layer


class _Explorer:
    """Shared machinery: image cache, controls, PNG rendering, display."""

    _figsize = (6.0, 3.0)

    def __init__(self, model, images, labels=None, part_boxes=None, class_names: Sequence[str] | None = None,
                 mean=None, std=None, max_images: int = 64, dpi: int = 80):
        if not isinstance(getattr(model, "vit", None), torch.nn.Module):
            raise TypeError(f"model must be an fgnb FGViT (fgnb.create_model), got {type(model).__name__}")
        self.model = model
        self.images, self.labels, self.part_boxes = _as_items(images, labels, part_boxes, max_images)
        cfg = model.data_config()
        self.mean = tuple(mean) if mean is not None else tuple(cfg["mean"])
        self.std = tuple(std) if std is not None else tuple(cfg["std"])
        self.class_names = list(class_names) if class_names is not None else None
        self.dpi = int(dpi)
        self._outputs: dict[int, Any] = {}
        self._hold = False
        self.figure: Figure | None = None
        self.png: bytes = b""
        self.controls: dict[str, W.ValueWidget] = {
            "image": W.IntSlider(value=0, min=0, max=len(self.images) - 1, description="image",
                                 continuous_update=False),
        }
        self.image = W.Image(format="png", layout=W.Layout(max_width="100%"))
        self.status = W.HTML()
        prepare_colab()

    # -- model outputs, computed once per image ---------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def output(self, index: int):
        """The model's forward on image ``index`` with the CLS attention of every block (cached)."""
        if index not in self._outputs:
            was_training = self.model.training
            self.model.eval()
            try:
                with torch.no_grad():
                    x = self.images[index : index + 1].to(self.device)
                    self._outputs[index] = self.model(x, attn_layers="all")
            finally:
                self.model.train(was_training)
        return self._outputs[index]

    def _caption(self, index: int) -> str:
        out = self.output(index)
        probs = torch.stack([lg.float().softmax(-1) for lg in out.logits]).mean(0)[0]
        pred = int(probs.argmax())
        name = lambda c: self.class_names[c] if self.class_names and 0 <= c < len(self.class_names) else str(c)
        text = f"image {index}: predicted {name(pred)} (p={float(probs[pred]):.2f})"
        if self.labels[index] is not None:
            text += f", true {name(self.labels[index])}"
        return text

    # -- controls --------------------------------------------------------------------
    def _wire(self) -> None:
        for w in self.controls.values():
            w.observe(self._on_change, names="value")
        rows = [W.HBox(list(self.controls.values())[i : i + 3]) for i in range(0, len(self.controls), 3)]
        self.widget = W.VBox([*rows, self.status, self.image])

    def _on_change(self, _change) -> None:
        if not self._hold:
            self.update()

    def _validate(self, name: str, value):
        """Check a control value; raise ValueError naming the valid choices."""
        w = self.controls[name]
        if isinstance(w, W.Dropdown):
            valid = [v for _, v in w.options] if w.options and isinstance(w.options[0], tuple) else list(w.options)
            if value not in valid:
                raise ValueError(f"{name}={value!r} is not valid: choose one of {valid}")
        elif isinstance(w, (W.IntSlider, W.FloatSlider)):
            if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
                raise ValueError(f"{name} must be a number, got {value!r}")
            if isinstance(w, W.IntSlider) and int(value) != value:
                raise ValueError(f"{name} must be an integer, got {value!r}")
            if not w.min <= value <= w.max:
                raise ValueError(f"{name}={value!r} is out of range [{w.min}, {w.max}]")
        return value

    def set(self, **values) -> "_Explorer":
        """Set several controls at once (validated), then redraw once."""
        unknown = set(values) - set(self.controls)
        if unknown:
            raise ValueError(f"unknown control(s) {sorted(unknown)}; controls: {sorted(self.controls)}")
        for k, v in values.items():
            self._validate(k, v)
        self._hold = True
        try:
            for k, v in values.items():
                self.controls[k].value = v
        finally:
            self._hold = False
        self.update()
        return self

    @property
    def state(self) -> dict:
        """Current control values."""
        return {k: w.value for k, w in self.controls.items()}

    def update(self) -> None:
        """Recompute the view for the current controls and redraw the PNG."""
        index = self.controls["image"].value
        fig = Figure(figsize=self._figsize, dpi=self.dpi)
        FigureCanvasAgg(fig)
        self._draw(fig, index)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=self.dpi)
        self.figure, self.png = fig, buf.getvalue()
        self.image.value = self.png
        self.status.value = f"<code>{self._caption(index)}</code>"

    def _draw(self, fig: Figure, index: int) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _display_image(self, index: int) -> np.ndarray:
        return to_display(self.images[index], self.mean, self.std)

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)

    def _repr_mimebundle_(self, **kwargs):
        if hasattr(self.widget, "_repr_mimebundle_"):  # ipywidgets 8
            return self.widget._repr_mimebundle_(**kwargs)
        # ipywidgets 7 displays through _ipython_display_; the same view, as a bundle
        view = {"version_major": 2, "version_minor": 0, "model_id": self.widget.model_id}
        return {"text/plain": repr(self.widget), "application/vnd.jupyter.widget-view+json": view}


class AttentionExplorer(_Explorer):
    """Chapter 3: the CLS attention of every head, one image, layer and head at a time.

    Controls: ``image`` (IntSlider), ``layer`` (Dropdown of block indices), ``head``
    (Dropdown: ``'all'`` for one small map per head, or a head index for one large map
    next to the raw K-patch grid). The model runs once per image with
    ``attn_layers='all'``; ``.attn`` is the (H, K) attention of the current layer.

    Args:
        model: an :class:`fgnb.FGViT`.
        images: (N, 3, H, W) normalised tensor, a list of (3, H, W) tensors, or a data set /
            list of fgnb item dicts (its labels are then shown).
        labels, class_names: optional, for the caption.
        layer, head, index: initial control values.
    """

    def __init__(self, model, images, labels=None, class_names=None, layer: int | None = None,
                 head: int | str = "all", index: int = 0, **kwargs):
        super().__init__(model, images, labels=labels, class_names=class_names, **kwargs)
        depth = model.depth
        heads = model.vit.blocks[0].attn.num_heads
        self.controls["layer"] = W.Dropdown(options=[(f"layer {i + 1}", i) for i in range(depth)],
                                            value=depth - 1, description="layer")
        self.controls["head"] = W.Dropdown(options=[("all heads", "all")] + [(f"head {h + 1}", h) for h in range(heads)],
                                           value="all", description="head")
        initial = {"image": index, "layer": _layer_index(layer, depth), "head": head}
        for k, v in initial.items():
            self._validate(k, v)
            self.controls[k].value = v
        self.attn: torch.Tensor | None = None
        self._wire()
        self.update()

    def _draw(self, fig: Figure, index: int) -> None:
        layer, head = self.controls["layer"].value, self.controls["head"].value
        out = self.output(index)
        self.attn = out.attn[layer][0].float().cpu()  # (H, K)
        img = self._display_image(index)
        grid = out.grid
        n_heads = self.attn.shape[0]
        if head == "all":
            cols = n_heads + 1
            fig.set_size_inches(1.9 * cols, 2.2)
            ax = fig.add_subplot(1, cols, 1)
            ax.imshow(img)
            ax.set_title("image", fontsize=9)
            ax.set_axis_off()
            vmax = float(self.attn.max())  # one colour scale, 0..max, for all heads
            for h in range(n_heads):
                a = self.attn[h]
                _heat(fig.add_subplot(1, cols, h + 2), img, a, grid, vmax,
                      title=f"layer {layer + 1} head {h + 1}\nmax {float(a.max()):.4f}")
        else:
            a = self.attn[head]
            fig.set_size_inches(6.0, 3.0)
            _heat(fig.add_subplot(1, 2, 1), img, a, grid, float(a.max()),
                  title=f"layer {layer + 1}, head {head + 1} over the image (0..max)")
            ax = fig.add_subplot(1, 2, 2)
            im = ax.imshow(a.view(*grid).numpy(), cmap="inferno", vmin=0.0)
            fig.colorbar(im, ax=ax, fraction=0.046)
            ax.set_title(f"a^h_i on the {grid[0]}x{grid[1]} grid (sum {float(a.sum()):.3f})", fontsize=9)
            ax.set_axis_off()
        fig.tight_layout()


class ThresholdExplorer(_Explorer):
    """Chapter 4: the per-head product, the mean threshold and the box, live.

    Controls: ``image`` (IntSlider), ``mode`` (Dropdown: ``'layer'`` = the head product
    of one block, ``'cumulative'`` = the product over heads and blocks 0..layer,
    ``'rollout'`` = attention rollout over blocks 0..layer), ``layer`` (Dropdown of block
    indices), ``scale`` (FloatSlider: mark patches with Pi_i > scale x mean Pi), ``rule``
    (Dropdown: ``'all'`` marked patches or the ``'largest'`` connected group).

    State after every redraw: ``.scores`` (K,) log-space scores, ``.mask`` (K,) bool,
    ``.box`` (4,) xyxy pixels, ``.figure``, ``.png``. Everything is computed with
    :mod:`fgnb.attention` (``head_product``, ``cumulative_product``,
    ``attention_rollout``, ``mean_threshold``, ``boxes_from_mask``), the functions the
    training uses. Rollout needs the full N x N maps: they are computed on first use for
    the shown image only.

    Args:
        model, images, labels, class_names: as for :class:`AttentionExplorer`;
            ``part_boxes`` (one xyxy box or None per image) are drawn dashed.
        mode, layer, scale, rule, index: initial control values.
        scale_range: (min, max) of the scale slider.
        min_size: passed to ``boxes_from_mask``.
    """

    _figsize = (7.5, 2.8)

    def __init__(self, model, images, labels=None, part_boxes=None, class_names=None, mode: str = "layer",
                 layer: int | None = None, scale: float = 1.0, rule: str = "all", index: int = 0,
                 scale_range: tuple[float, float] = (0.25, 4.0), min_size: float = 0, **kwargs):
        super().__init__(model, images, labels=labels, part_boxes=part_boxes, class_names=class_names, **kwargs)
        lo, hi = (float(v) for v in scale_range)
        if not 0 < lo < hi:
            raise ValueError(f"scale_range must be (min, max) with 0 < min < max, got {scale_range}")
        depth = model.depth
        self.min_size = min_size
        self.controls["mode"] = W.Dropdown(options=list(SCORE_MODES), value="layer", description="scores")
        self.controls["layer"] = W.Dropdown(options=[(f"layer {i + 1}", i) for i in range(depth)],
                                            value=depth - 1, description="layer")
        self.controls["scale"] = W.FloatSlider(value=1.0, min=lo, max=hi, step=0.05, description="scale",
                                               continuous_update=False, readout_format=".2f")
        self.controls["rule"] = W.Dropdown(options=list(BOX_RULES), value="all", description="box rule")
        initial = {"image": index, "mode": mode, "layer": _layer_index(layer, depth),
                   "scale": scale, "rule": rule}
        for k, v in initial.items():
            self._validate(k, v)
            self.controls[k].value = v
        self._rollout: dict[tuple[int, int], torch.Tensor] = {}
        self.scores = self.mask = self.box = None
        self._wire()
        self.update()

    def compute(self, index: int, mode: str, layer: int, scale: float, rule: str):
        """(scores (K,), mask (K,), box (4,)) for one setting, without drawing."""
        out = self.output(index)
        if mode == "layer":
            s = head_product(out.attn[layer])
        elif mode == "cumulative":
            s = cumulative_product([out.attn[i] for i in range(layer + 1)])[-1]
        elif mode == "rollout":
            s = self._rollout_scores(index, layer)
        else:
            raise ValueError(f"mode {mode!r} is not one of {SCORE_MODES}")
        mask = mean_threshold(s, scale)
        box = boxes_from_mask(mask, out.grid, out.patch_size, rule=rule, min_size=self.min_size)
        return s[0].float().cpu(), mask[0].cpu(), box[0].cpu()

    def _rollout_scores(self, index: int, layer: int) -> torch.Tensor:
        key = (index, layer)
        if key not in self._rollout:
            with torch.no_grad():
                was_training = self.model.training
                self.model.eval()
                try:
                    x = self.images[index : index + 1].to(self.device)
                    full = self.model(x, attn_layers=list(range(self.model.depth)), full_attn=True).full_attn
                finally:
                    self.model.train(was_training)
            for l in range(self.model.depth):
                roll = attention_rollout([full[i] for i in range(l + 1)])
                self._rollout[(index, l)] = roll.clamp_min(1e-45).log()
        return self._rollout[key]

    def _draw(self, fig: Figure, index: int) -> None:
        v = self.state
        mode, layer, scale, rule = v["mode"], v["layer"], v["scale"], v["rule"]
        self.scores, self.mask, self.box = self.compute(index, mode, layer, scale, rule)
        out = self.output(index)
        grid, img = out.grid, self._display_image(index)
        what = {"layer": f"layer {layer + 1}", "cumulative": f"layers 1..{layer + 1}", "rollout": f"rollout 1..{layer + 1}"}[mode]
        ax = fig.add_subplot(1, 3, 1)
        im = ax.imshow(self.scores.view(*grid).numpy(), cmap="inferno")
        fig.colorbar(im, ax=ax, fraction=0.046)
        ax.set_title(f"log Π_i ({what})", fontsize=9)
        ax.set_axis_off()
        ax = fig.add_subplot(1, 3, 2)
        ax.imshow(self.mask.view(*grid).numpy(), cmap="gray", vmin=0, vmax=1)
        ax.set_title(f"Π_i > {scale:.2f} x mean: {int(self.mask.sum())}/{self.mask.numel()}", fontsize=9)
        ax.set_axis_off()
        ax = fig.add_subplot(1, 3, 3)
        overlay(ax, img, None, grid, box=self.box, mask=self.mask,
                title="box ({}): {:.0f},{:.0f},{:.0f},{:.0f}".format(rule, *self.box.tolist()))
        pb = self.part_boxes[index]
        if pb is not None:
            draw_box(ax, pb, color="yellow", lw=1.0).set_linestyle("--")
        fig.tight_layout()
