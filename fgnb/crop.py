"""Crop the attended region of every image and resize it, as one batched op.

Chapter 6 explains it: the box found by :func:`fgnb.attention.boxes_from_mask` is cut
out of the image (or of the higher-resolution source image) and resized to the model's
input size, so the same network sees a zoomed-in view with the same label.
"""
from __future__ import annotations

import contextlib
from typing import Any

import torch
from torchvision.ops import roi_align

from .attention import attention_rollout, boxes_from_mask, cumulative_product, head_product, mean_threshold
from .boxes import expand_boxes, random_boxes_like, scale_boxes
from .config import TrainConfig
from .model import FGViT

__all__ = ["crop_and_resize", "CROP_ATTENTION", "crop_attention_layers", "most_concentrated", "attention_scores",
           "attention_boxes", "CROP_BOXES", "crop_views"]

#: Where the crop's box comes from: ``attention`` (the method), ``oracle`` (the ground-truth
#: part box: an upper bound on data that has one, never an option for real training) and
#: ``random`` (a box of the attention box's size at a uniformly random place: a lower bound).
CROP_BOXES = ("attention", "oracle", "random")

#: Which attention drives the crop (the text leaves it open, book/method.md):
#: ``last`` one block's head product (the deepest target layer's, or ``crop_block``'s);
#: ``cumulative`` the product over heads and over the blocks from the first up to that one
#: (the text's "multiplied layer over layer"); ``per_layer`` one crop per target layer from
#: the cumulative product up to it (the multi-scale variant); ``rollout`` attention rollout up
#: to that block; ``concentrated`` per image, the head product of the block, from the first
#: up to that one, whose attention is most concentrated (lowest entropy): it reads the
#: localisation where the model keeps it (chapter 3 measures where that is).
CROP_ATTENTION = ("last", "cumulative", "per_layer", "rollout", "concentrated")


def crop_and_resize(images: torch.Tensor, boxes: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Cut box ``b`` out of image ``b`` and resize it to ``size``, for the whole batch at once.

    out[b, :, i, j] = bilinear sample of images[b] at
    (y0 + (i + 1/2) * (y1 - y0) / h - 1/2,  x0 + (j + 1/2) * (x1 - x0) / w - 1/2)

    which is what ``torchvision.transforms.functional.resized_crop`` computes for one
    image (pixel centres at integer + 1/2). A crop larger than ``size`` is averaged over
    ceil(box / size) samples per output pixel, which acts as an anti-aliasing filter.
    Runs on the images' device with ``torchvision.ops.roi_align``: no per-image loop.

    Args:
        images: (B, C, H, W).
        boxes: (B, 4) (x0, y0, x1, y1) in pixels of ``images``.
        size: output (h, w), or one int for square crops.
    Returns:
        (B, C, h, w) in the images' dtype.
    """
    if images.dim() != 4:
        raise ValueError(f"crop_and_resize expects images (B, C, H, W), got {tuple(images.shape)}")
    if boxes.dim() != 2 or boxes.shape != (images.shape[0], 4):
        raise ValueError(
            f"crop_and_resize expects one (x0, y0, x1, y1) box per image: boxes of shape "
            f"({images.shape[0]}, 4), got {tuple(boxes.shape)}"
        )
    out_size = (size, size) if isinstance(size, int) else tuple(size)
    boxes = boxes.to(device=images.device, dtype=torch.float32)
    idx = torch.arange(images.shape[0], device=images.device, dtype=torch.float32)[:, None]
    rois = torch.cat([idx, boxes], dim=1)
    crops = roi_align(images.float(), rois, output_size=out_size, spatial_scale=1.0, sampling_ratio=-1, aligned=True)
    return crops.to(images.dtype)


def crop_attention_layers(target_layers: tuple[int, ...], mode: str, block: int | None = None) -> list[int]:
    """Blocks whose CLS attention a crop mode reads; ``block``: the block the crop reads
    (0-based; ``None``: the deepest target layer), not given with ``per_layer``."""
    if mode not in CROP_ATTENTION:
        raise ValueError(f"crop attention {mode!r} is not one of {CROP_ATTENTION}")
    if block is not None and (mode == "per_layer" or isinstance(block, bool) or not isinstance(block, int) or block < 0):
        raise ValueError(f"crop_block={block!r}: a block index >= 0 for crop attention "
                         f"{', '.join(m for m in CROP_ATTENTION if m != 'per_layer')} (per_layer reads each target layer)")
    deepest = max(target_layers) if block is None else block
    return [deepest] if mode == "last" else list(range(deepest + 1))


def most_concentrated(scores: list[torch.Tensor]) -> torch.Tensor:
    """Per image, the log-space scores (B, K) of the block whose normalised map
    p = softmax(s) has the lowest entropy -sum_i p_i log p_i (the sharpest block)."""
    s = torch.stack(scores, dim=1)  # (B, L, K), the scores' own dtype (head_product: float64)
    logp = s.log_softmax(-1)
    entropy = -(logp.exp() * logp).sum(-1)  # (B, L)
    pick = entropy.argmin(dim=1)
    return s[torch.arange(s.shape[0], device=s.device), pick]


def attention_scores(out, mode: str = "last", target_layers: tuple[int, ...] | None = None,
                     block: int | None = None) -> list[torch.Tensor]:
    """Log-space patch scores (B, K) for a crop mode, from a forward's captured attention.

    One entry, or one per target layer for ``per_layer``.
    """
    layers = crop_attention_layers(target_layers or out.layers, mode, block)
    if mode == "rollout":
        missing = [l for l in layers if l not in out.full_attn]
        if missing:
            raise ValueError(f"rollout needs full attention maps of layers {missing}: call the model with full_attn=True")
        roll = attention_rollout([out.full_attn[l] for l in layers])
        return [roll.clamp_min(1e-45).log()]
    missing = [l for l in layers if l not in out.attn]
    if missing:
        raise ValueError(f"crop mode {mode!r} needs the CLS attention of layers {missing}: pass attn_layers to the model")
    if mode == "last":
        return [head_product(out.attn[layers[0]])]
    if mode == "concentrated":
        return [most_concentrated([head_product(out.attn[l]) for l in layers])]
    cum = cumulative_product([out.attn[l] for l in layers])
    if mode == "cumulative":
        return [cum[-1]]
    return [cum[l] for l in (target_layers or out.layers)]


def attention_boxes(
    out, mode: str = "last", rule: str = "all", threshold_scale: float = 1.0, min_size: float = 0,
    target_layers: tuple[int, ...] | None = None, block: int | None = None,
) -> list[torch.Tensor]:
    """The module end to end: scores -> mean threshold -> box, one (B, 4) tensor per crop."""
    return [
        boxes_from_mask(mean_threshold(s, threshold_scale), out.grid, out.patch_size, rule=rule, min_size=min_size)
        for s in attention_scores(out, mode, target_layers, block)
    ]


def _source_view(batch, device, option: str) -> torch.Tensor:
    if "source" not in batch:
        raise ValueError(f"{option}='source' needs the data set's source view (build it with source_size=), "
                         f"or set {option}='input'")
    return batch["source"].to(device)


def _crop_source(batch, x, boxes, cfg: TrainConfig, device):
    """Image to cut the crop from, and the box in its pixels."""
    if cfg.crop_from == "source":
        src = _source_view(batch, device, "crop_from")
        return src, scale_boxes(boxes, x.shape[-2:], src.shape[-2:])
    return x, boxes


@torch.no_grad()
def crop_views(model: FGViT, batch: dict, x: torch.Tensor, cfg: TrainConfig, autocast=contextlib.nullcontext,
               generator: torch.Generator | None = None) -> tuple[list[torch.Tensor], list[torch.Tensor], Any]:
    """The crop branch's input for one batch: (crops per head, boxes per crop, the forward).

    The attention is read at one documented point: a forward of the batch ``x`` with the
    model in eval mode (no dropout in the boxes), before any of the batch's updates, the
    same for every strategy; with ``attention_from='source'``, of the source view instead
    (:meth:`FGViT.attention`: a finer patch grid, only as deep as the crop's block), and the
    returned forward then carries no logits. Boxes (input pixels) come from that attention, or from the
    ground truth (``crop_boxes='oracle'``) or at random (``'random'``); a ``crop_margin``
    adds context; the crop is cut from the source view (``crop_from='source'``) and resized
    to the input size. ``crops[r]`` is head r's crop view: its own for ``per_layer``, else
    the one crop for every head.
    """
    was_training = model.training
    model.eval()
    mode = cfg.crop_attention
    layers = crop_attention_layers(model.target_layers, mode, cfg.crop_block)
    size = tuple(x.shape[-2:])
    # The view the attention is read on: the input, or the source view (the same patches, 4x
    # finer: chapter 6), whose boxes come in its pixels (the minimum side scaled to them) and go
    # back to input pixels.
    view = _source_view(batch, x.device, "attention_from") if cfg.attention_from == "source" else x
    zoom = view.shape[-1] / size[-1]
    with autocast():
        # On the input, the whole forward: evaluate() reuses its logits as the global view's.
        out = (model(x, attn_layers=layers, full_attn=mode == "rollout") if view is x
               else model.attention(view, layers, full_attn=mode == "rollout"))
    boxes = attention_boxes(out, mode, cfg.box_rule, cfg.threshold_scale, cfg.min_crop * zoom, model.target_layers,
                            cfg.crop_block)
    boxes = [scale_boxes(b, view.shape[-2:], size) for b in boxes]
    model.train(was_training)
    if cfg.crop_boxes == "oracle":
        part = batch["part_box"].to(x.device).float()
        if torch.isnan(part).any():
            raise ValueError("crop_boxes='oracle' needs a part box for every image (the synthetic set, or CUB with "
                             "part_boxes.txt); this batch has images without one")
        boxes = [part] * len(boxes)
    elif cfg.crop_boxes == "random":
        boxes = [random_boxes_like(b, size, generator) for b in boxes]
    boxes = [expand_boxes(b, cfg.crop_margin, size) for b in boxes]
    crops = []
    for b in boxes:
        src, sboxes = _crop_source(batch, x, b, cfg, x.device)
        crops.append(crop_and_resize(src, sboxes, cfg.img_size).to(x.dtype))
    per_head = crops if len(crops) == model.num_targets and len(crops) > 1 else [crops[-1]] * model.num_targets
    return per_head, boxes, out
