"""How the R head losses update the network: last, summed, or progressive (the method).

Chapter 5 derives and compares them; chapter 6 adds the crop views. Every strategy takes
one batch and does its optimizer step(s); each returns the per-head losses and the last
forward's output.

The crop views (``crops=``, one tensor of crops per head) join the batch's own steps (the
``joint`` crop update, chapter 6): head r's loss on a step is the mean cross-entropy over
the global and the crop view together,

    LOSS_r = 1/2 [ CE(y_r(x), y) + CE(y_r(crop_r), y) ]

(``StepContext.crop_weight`` w generalises the 1/2: (1 - w) CE(global) + w CE(crop); w = 1
trains the heads on the crop view alone), so a batch makes the same number of optimizer steps (1, 1 or R) with or without crops, and
with the crops equal to the images it is exactly the step on the batch duplicated. (The
mean rather than the sum keeps the step size of the baseline, so a crop variant does not
also get a larger effective learning rate.)
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .model import FGViT, FGViTOutput

__all__ = [
    "StepContext",
    "UpdateStrategy",
    "LastStrategy",
    "SummedStrategy",
    "ProgressiveStrategy",
    "STRATEGIES",
    "make_strategy",
    "NonFiniteLossError",
    "StepResult",
    "cross_entropy",
]


class NonFiniteLossError(FloatingPointError):
    """A loss became NaN or inf; training stops and the last good checkpoint stays."""


@dataclass
class StepContext:
    """What an optimizer step needs besides the batch.

    autocast: a context-manager factory for the forward (AMP on CUDA, no-op elsewhere).
    scaler: a ``torch.amp.GradScaler`` for float16, else ``None``.
    clip_grad: max global gradient norm, or ``None``.
    grad_sync: called after every backward, before the step (averages gradients over
        ranks under torch.distributed; a no-op on one process).
    after_step: called after every optimizer step (the LR scheduler is stepped per batch,
        not per stage, so this is usually a no-op).
    label_smoothing: of every training cross-entropy (``F.cross_entropy(label_smoothing=)``).
    crop_weight: w in the joint loss (1 - w) CE(global view) + w CE(crop view); 1/2 is the mean.
    """

    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
    scaler: torch.amp.GradScaler | None = None
    clip_grad: float | None = None
    grad_sync: Callable[[nn.Module], None] = lambda model: None
    after_step: Callable[[], None] = lambda: None
    label_smoothing: float = 0.0
    crop_weight: float = 0.5


class StepResult(tuple):
    """``(losses, out)`` of one batch, unpacked as a pair.

    losses: the loss of every trained head, shallow to deep (the joint loss with crops).
    out: the last forward's :class:`~fgnb.model.FGViTOutput` (global and crop rows).
    ``.crop_losses``: the crop view's cross-entropy of every trained head (``None`` without crops).
    """

    def __new__(cls, losses, out, crop_losses=None):
        self = super().__new__(cls, (losses, out))
        self.crop_losses = crop_losses
        return self

    @property
    def losses(self):
        return self[0]

    @property
    def out(self):
        return self[1]


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ctx: "StepContext") -> torch.Tensor:
    """The training loss of one head: CE in float32, with the run's label smoothing."""
    return F.cross_entropy(logits.float(), labels, label_smoothing=ctx.label_smoothing)


def _views(images: torch.Tensor, crops, heads: Sequence[int]):
    """One input batch for a forward: the images, then every distinct crop set the heads need.

    Returns (inputs, rows) where rows[r] = (global rows, crop rows) slices of head r, or
    (inputs, None) without crops.
    """
    if crops is None:
        return images, None
    B = images.shape[0]
    parts, where, rows = [images], {}, {}
    for r in heads:
        c = crops[r]
        if c.shape != images.shape:
            raise ValueError(f"crops for head {r} have shape {tuple(c.shape)}, the images {tuple(images.shape)}")
        if id(c) not in where:
            where[id(c)] = len(parts) * B
            parts.append(c)
        rows[r] = (slice(0, B), slice(where[id(c)], where[id(c)] + B))
    return torch.cat(parts), rows


def _head_loss(logits: torch.Tensor, labels: torch.Tensor, rows, r: int, ctx: StepContext):
    """(loss, crop part or None): CE of the global view, or the joint mean with the crop view."""
    if rows is None:
        return cross_entropy(logits, labels, ctx), None
    g, c = rows[r]
    crop_loss = cross_entropy(logits[c], labels, ctx)
    w = ctx.crop_weight
    return (1 - w) * cross_entropy(logits[g], labels, ctx) + w * crop_loss, crop_loss


def _check_crops(crops, model) -> None:
    if crops is not None and len(crops) != model.num_targets:
        raise ValueError(f"crops: one tensor per head ({model.num_targets}), got {len(crops)}")


def _check_finite(loss: torch.Tensor, what: str) -> None:
    if not torch.isfinite(loss.detach()).all():
        raise NonFiniteLossError(f"{what} is {loss.item()}: training diverged (lower the learning rate or enable gradient clipping)")


def _apply_step(model: nn.Module, optimizer: torch.optim.Optimizer, ctx: StepContext) -> None:
    """Gradients are in .grad: sync, unscale, clip, step."""
    ctx.grad_sync(model)
    if ctx.scaler is not None:
        ctx.scaler.unscale_(optimizer)
    if ctx.clip_grad:
        params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        torch.nn.utils.clip_grad_norm_(params, ctx.clip_grad)
    if ctx.scaler is not None:
        ctx.scaler.step(optimizer)
        ctx.scaler.update()
    else:
        optimizer.step()
    ctx.after_step()


def _backward_and_step(loss: torch.Tensor, model: nn.Module, optimizer: torch.optim.Optimizer, ctx: StepContext) -> None:
    (ctx.scaler.scale(loss) if ctx.scaler is not None else loss).backward()
    _apply_step(model, optimizer, ctx)


@dataclass
class UpdateStrategy:
    """Base class: ``step`` trains on one batch and returns (losses per stage, last output)."""

    name: str = field(init=False, default="")

    def stages(self, model: FGViT) -> list[int]:
        """Which heads get a loss, in the order they are applied."""
        raise NotImplementedError

    def step(
        self,
        model: FGViT,
        optimizer: torch.optim.Optimizer,
        images: torch.Tensor,
        labels: torch.Tensor,
        ctx: StepContext | None = None,
        attn_layers: Sequence[int] | str | None = None,
        full_attn: bool = False,
    ) -> tuple[list[float], FGViTOutput]:
        raise NotImplementedError


@dataclass
class LastStrategy(UpdateStrategy):
    """The plain ViT baseline: LOSS = CE(y_R, y) of the deepest head, one step."""

    name: str = field(init=False, default="last")

    def stages(self, model):
        return [model.num_targets - 1]

    def step(self, model, optimizer, images, labels, ctx=None, attn_layers=None, full_attn=False, crops=None):
        ctx = ctx or StepContext()
        _check_crops(crops, model)
        R = model.num_targets - 1
        inputs, rows = _views(images, crops, [R])
        optimizer.zero_grad(set_to_none=True)
        with ctx.autocast():
            out = model(inputs, attn_layers=attn_layers, full_attn=full_attn)
            loss, crop_loss = _head_loss(out.logits[-1], labels, rows, R, ctx)
        _check_finite(loss, "loss of the last head")
        _backward_and_step(loss, model, optimizer, ctx)
        return StepResult([loss.item()], out, None if crop_loss is None else [crop_loss.item()])


@dataclass
class SummedStrategy(UpdateStrategy):
    """The summed baseline: LOSS = sum_r CE(y_r, y), one backward, one step."""

    name: str = field(init=False, default="summed")

    def stages(self, model):
        return list(range(model.num_targets))

    def step(self, model, optimizer, images, labels, ctx=None, attn_layers=None, full_attn=False, crops=None):
        ctx = ctx or StepContext()
        _check_crops(crops, model)
        heads = self.stages(model)
        inputs, rows = _views(images, crops, heads)
        optimizer.zero_grad(set_to_none=True)
        with ctx.autocast():
            out = model(inputs, attn_layers=attn_layers, full_attn=full_attn)
            pairs = [_head_loss(out.logits[r], labels, rows, r, ctx) for r in heads]
            loss = torch.stack([l for l, _ in pairs]).sum()
        _check_finite(loss, "summed loss")
        _backward_and_step(loss, model, optimizer, ctx)
        crop = None if crops is None else [c.item() for _, c in pairs]
        return StepResult([l.item() for l, _ in pairs], out, crop)


ORDERS = ("shallow_first", "deep_first")


@dataclass
class ProgressiveStrategy(UpdateStrategy):
    """The method: one backward and one optimizer step per target layer, in turn.

    For r in order (shallowest target first by default)::

        zero_grad; out = model(x, upto=r); LOSS_r = CE(y_r, y); backward; step

    ``reforward=True`` (default, as PMG): each stage re-runs the forward, only as deep as
    target r, so it sees the parameters the previous stage produced.
    ``reforward=False``: one forward; all R gradients are taken at that point, then applied
    as R successive steps. With plain SGD this equals one step on the summed loss.
    """

    order: str = "shallow_first"
    reforward: bool = True
    name: str = field(init=False, default="progressive")

    def __post_init__(self):
        if self.order not in ORDERS:
            raise ValueError(f"order={self.order!r} is not one of {ORDERS}")

    def stages(self, model):
        r = list(range(model.num_targets))
        return r if self.order == "shallow_first" else r[::-1]

    def step(self, model, optimizer, images, labels, ctx=None, attn_layers=None, full_attn=False, crops=None):
        ctx = ctx or StepContext()
        _check_crops(crops, model)
        stages = self.stages(model)
        if not self.reforward:
            return self._step_one_point(model, optimizer, images, labels, ctx, stages, attn_layers, full_attn, crops)
        losses: list[float] = []
        crop_losses: list[float] = []
        out = None
        for i, r in enumerate(stages):
            last = i == len(stages) - 1
            optimizer.zero_grad(set_to_none=True)
            with ctx.autocast():
                # Attention is read on the last stage's forward, which runs deepest when
                # shallow-first; deep-first reads it on its last (shallow) stage, which
                # then runs as deep as the attention layers need.
                # Stage r's batch: the images and, with crops, head r's crop view.
                inputs, rows = _views(images, crops, [r])
                out = model(
                    inputs,
                    upto=r,
                    attn_layers=attn_layers if last else None,
                    full_attn=full_attn and last,
                )
                loss, crop_loss = _head_loss(out.logits[r], labels, rows, r, ctx)
            _check_finite(loss, f"loss of head {r} (layer {model.target_layers[r]})")
            _backward_and_step(loss, model, optimizer, ctx)
            losses.append(loss.item())
            if crop_loss is not None:
                crop_losses.append(crop_loss.item())
        # Report losses in head order (shallow to deep) whatever the update order.
        order = sorted(range(len(stages)), key=lambda i: stages[i])
        return StepResult([losses[i] for i in order], out, [crop_losses[i] for i in order] if crop_losses else None)

    def _step_one_point(self, model, optimizer, images, labels, ctx, stages, attn_layers, full_attn, crops):
        inputs, rows = _views(images, crops, stages)
        optimizer.zero_grad(set_to_none=True)
        with ctx.autocast():
            out = model(inputs, attn_layers=attn_layers, full_attn=full_attn)
            pairs = [_head_loss(out.logits[r], labels, rows, r, ctx) for r in range(model.num_targets)]
            losses = [l for l, _ in pairs]
        params = [p for g in optimizer.param_groups for p in g["params"] if p.requires_grad]
        scale0 = ctx.scaler.get_scale() if ctx.scaler is not None else 1.0
        grads = {}
        for r in stages:
            _check_finite(losses[r], f"loss of head {r} (layer {model.target_layers[r]})")
            # scaler.scale() (not a product with the scale's value): it also creates the
            # scaler's scale tensor on the first step, which unscale_ needs.
            scaled = ctx.scaler.scale(losses[r]) if ctx.scaler is not None else losses[r]
            grads[r] = torch.autograd.grad(scaled, params, retain_graph=True, allow_unused=True)
        for r in stages:
            optimizer.zero_grad(set_to_none=True)
            # The scaler may have changed its scale after the previous stage's step.
            factor = (ctx.scaler.get_scale() / scale0) if ctx.scaler is not None else 1.0
            for p, g in zip(params, grads[r]):
                p.grad = None if g is None else g * factor
            _apply_step(model, optimizer, ctx)
        crop = None if crops is None else [c.item() for _, c in pairs]
        return StepResult([l.item() for l in losses], out, crop)


STRATEGIES = {"last": LastStrategy, "summed": SummedStrategy, "progressive": ProgressiveStrategy}


def make_strategy(name: str, **options) -> UpdateStrategy:
    """``make_strategy('progressive', order='deep_first', reforward=False)``."""
    if name not in STRATEGIES:
        raise ValueError(f"strategy {name!r} is not one of {sorted(STRATEGIES)}")
    cls = STRATEGIES[name]
    if cls is not ProgressiveStrategy:
        options = {}
    return cls(**options)
