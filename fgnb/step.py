"""One batch's updates, as training takes them: the optimizer, the strategy's step(s), the crop branch.

Chapter 5 explains the strategies' steps (:mod:`fgnb.strategies`) and chapter 6 the crop
branch (:func:`fgnb.crop.crop_views`); :class:`BatchStep` puts them together for one batch,
the one object that :func:`fgnb.train.train` calls per batch and ``bench/speed.py`` times.
"""
from __future__ import annotations

import torch

from . import distributed as dist
from .config import TrainConfig
from .crop import crop_views
from .devices import autocast_for
from .model import FGViT
from .strategies import StepContext, make_strategy

__all__ = ["BatchStep", "make_optimizer"]


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW (or SGD with momentum) over the trainable parameters, with weight decay on the weights."""
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        # Biases, norms, tokens and position embeddings take no weight decay (as timm).
        (no_decay if p.ndim <= 1 or n.endswith(("cls_token", "pos_embed", "reg_token")) else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    return torch.optim.AdamW(groups, lr=cfg.lr)


class BatchStep:
    """One batch's updates, as training takes them (and ``bench/speed.py`` times them).

    From epoch ``crop_warmup_epochs`` on, with ``crop=True``, the crop branch first reads its
    boxes from the model as it is before the batch's updates (:func:`fgnb.crop.crop_views`).
    Then ``steps_per_batch`` times (the equal-budget control; 1 by default): the strategy's
    step, whose every stage also takes the crop view's loss (``crop_update='joint'``), or
    the strategy's step on the batch and its own steps on every distinct crop set
    (``'separate'``). Calling it returns the head losses of each step and of each crop step.
    """

    def __init__(self, cfg: TrainConfig, model: FGViT, device: torch.device,
                 optimizer: torch.optim.Optimizer | None = None, ctx: StepContext | None = None):
        """``optimizer`` and ``ctx`` default to the run's own (:func:`make_optimizer`, the
        device's AMP, clipping and gradient sync); the memory plan passes its own, for a CUDA
        step simulated on fake tensors (:mod:`fgnb.memory`)."""
        self.cfg, self.model = cfg, model
        self.optimizer = optimizer if optimizer is not None else make_optimizer(model, cfg)
        self.strategy = make_strategy(cfg.strategy, order=cfg.order, reforward=cfg.reforward)
        if ctx is None:
            autocast, scaler = autocast_for(device, cfg.amp)
            ctx = StepContext(autocast=autocast, scaler=scaler, clip_grad=cfg.clip_grad, grad_sync=dist.sync_gradients,
                              label_smoothing=cfg.label_smoothing, crop_weight=cfg.crop_weight)
        self.ctx = ctx

    def __call__(self, batch: dict, x: torch.Tensor, y: torch.Tensor, epoch: int = 0):
        cfg, model, opt, ctx, step = self.cfg, self.model, self.optimizer, self.ctx, self.strategy.step
        crops = None
        if cfg.crop and epoch >= cfg.crop_warmup_epochs:
            crops, _, _ = crop_views(model, batch, x, cfg, ctx.autocast)
        losses, crop_losses = [], []
        for _ in range(cfg.steps_per_batch):
            if cfg.crop_update == "joint":  # the crop view's loss rides on the strategy's own steps
                result = step(model, opt, x, y, ctx, crops=crops)
                if result.crop_losses is not None:
                    crop_losses.append(result.crop_losses)
            else:
                result = step(model, opt, x, y, ctx)
                for c in ({id(c): c for c in crops}.values() if crops is not None else ()):
                    crop_losses.append(step(model, opt, c, y, ctx).losses)
            losses.append(result.losses)
        return losses, crop_losses
