"""How the R head losses update the network: last, summed, or progressive (the method).

Chapter 5 derives and compares them. Every strategy takes one batch and does its
optimizer step(s); each returns the per-stage losses and the last forward's output
(whose CLS attention the crop branch reuses, so the crop costs no extra forward).
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
    """

    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
    scaler: torch.amp.GradScaler | None = None
    clip_grad: float | None = None
    grad_sync: Callable[[nn.Module], None] = lambda model: None
    after_step: Callable[[], None] = lambda: None


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

    def step(self, model, optimizer, images, labels, ctx=None, attn_layers=None, full_attn=False):
        ctx = ctx or StepContext()
        optimizer.zero_grad(set_to_none=True)
        with ctx.autocast():
            out = model(images, attn_layers=attn_layers, full_attn=full_attn)
            loss = F.cross_entropy(out.logits[-1].float(), labels)
        _check_finite(loss, "loss of the last head")
        _backward_and_step(loss, model, optimizer, ctx)
        return [loss.item()], out


@dataclass
class SummedStrategy(UpdateStrategy):
    """The summed baseline: LOSS = sum_r CE(y_r, y), one backward, one step."""

    name: str = field(init=False, default="summed")

    def stages(self, model):
        return list(range(model.num_targets))

    def step(self, model, optimizer, images, labels, ctx=None, attn_layers=None, full_attn=False):
        ctx = ctx or StepContext()
        optimizer.zero_grad(set_to_none=True)
        with ctx.autocast():
            out = model(images, attn_layers=attn_layers, full_attn=full_attn)
            losses = [F.cross_entropy(lg.float(), labels) for lg in out.logits]
            loss = torch.stack(losses).sum()
        _check_finite(loss, "summed loss")
        _backward_and_step(loss, model, optimizer, ctx)
        return [l.item() for l in losses], out


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

    def step(self, model, optimizer, images, labels, ctx=None, attn_layers=None, full_attn=False):
        ctx = ctx or StepContext()
        stages = self.stages(model)
        if not self.reforward:
            return self._step_one_point(model, optimizer, images, labels, ctx, stages, attn_layers, full_attn)
        losses: list[float] = []
        out = None
        for i, r in enumerate(stages):
            last = i == len(stages) - 1
            optimizer.zero_grad(set_to_none=True)
            with ctx.autocast():
                # Attention is read on the last stage's forward, which runs deepest when
                # shallow-first; deep-first reads it on its last (shallow) stage, which
                # then runs as deep as the attention layers need.
                out = model(
                    images,
                    upto=r,
                    attn_layers=attn_layers if last else None,
                    full_attn=full_attn and last,
                )
                loss = F.cross_entropy(out.logits[r].float(), labels)
            _check_finite(loss, f"loss of head {r} (layer {model.target_layers[r]})")
            _backward_and_step(loss, model, optimizer, ctx)
            losses.append(loss.item())
        # Report losses in head order (shallow to deep) whatever the update order.
        by_head = dict(zip(stages, losses))
        return [by_head[r] for r in sorted(by_head)], out

    def _step_one_point(self, model, optimizer, images, labels, ctx, stages, attn_layers, full_attn):
        optimizer.zero_grad(set_to_none=True)
        with ctx.autocast():
            out = model(images, attn_layers=attn_layers, full_attn=full_attn)
            losses = [F.cross_entropy(lg.float(), labels) for lg in out.logits]
        params = [p for g in optimizer.param_groups for p in g["params"] if p.requires_grad]
        scale0 = ctx.scaler.get_scale() if ctx.scaler is not None else 1.0
        grads = {}
        for r in stages:
            _check_finite(losses[r], f"loss of head {r} (layer {model.target_layers[r]})")
            grads[r] = torch.autograd.grad(losses[r] * scale0, params, retain_graph=True, allow_unused=True)
        for r in stages:
            optimizer.zero_grad(set_to_none=True)
            # The scaler may have changed its scale after the previous stage's step.
            factor = (ctx.scaler.get_scale() / scale0) if ctx.scaler is not None else 1.0
            for p, g in zip(params, grads[r]):
                p.grad = None if g is None else g * factor
            _apply_step(model, optimizer, ctx)
        return [l.item() for l in losses], out


STRATEGIES = {"last": LastStrategy, "summed": SummedStrategy, "progressive": ProgressiveStrategy}


def make_strategy(name: str, **options) -> UpdateStrategy:
    """``make_strategy('progressive', order='deep_first', reforward=False)``."""
    if name not in STRATEGIES:
        raise ValueError(f"strategy {name!r} is not one of {sorted(STRATEGIES)}")
    cls = STRATEGIES[name]
    if cls is not ProgressiveStrategy:
        options = {}
    return cls(**options)
