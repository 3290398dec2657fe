"""Crop the attended region of every image and resize it, as one batched op.

Chapter 6 explains it: the box found by :func:`fgnb.attention.boxes_from_mask` is cut
out of the image (or of the higher-resolution source image) and resized to the model's
input size, so the same network sees a zoomed-in view with the same label.
"""
from __future__ import annotations

import torch
from torchvision.ops import roi_align

from .attention import attention_rollout, boxes_from_mask, cumulative_product, head_product, mean_threshold

__all__ = ["crop_and_resize", "scale_boxes", "CROP_ATTENTION", "crop_attention_layers", "most_concentrated", "attention_scores",
           "attention_boxes",
           "CROP_BOXES", "random_boxes_like", "expand_boxes"]

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


def scale_boxes(boxes: torch.Tensor, from_size: tuple[int, int], to_size: tuple[int, int]) -> torch.Tensor:
    """Map (x0, y0, x1, y1) boxes from an image of (H, W) = ``from_size`` to one of ``to_size``.

    Used to cut the crop out of the higher-resolution source image rather than the input.
    """
    sy = to_size[0] / from_size[0]
    sx = to_size[1] / from_size[1]
    return boxes * boxes.new_tensor([sx, sy, sx, sy])


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


def random_boxes_like(boxes: torch.Tensor, size: tuple[int, int], generator: torch.Generator | None = None) -> torch.Tensor:
    """Boxes of the same width and height as ``boxes``, placed uniformly at random inside an
    image of (H, W) = ``size``: the crop's lower bound (same zoom, no localisation)."""
    H, W = size
    wh = (boxes[:, 2:] - boxes[:, :2]).clamp_min(0)
    wh = torch.minimum(wh, wh.new_tensor([W, H]))
    u = torch.rand(boxes.shape[0], 2, generator=generator, device="cpu").to(boxes)
    x0y0 = u * (wh.new_tensor([W, H]) - wh)
    return torch.cat([x0y0, x0y0 + wh], dim=1)


def expand_boxes(boxes: torch.Tensor, margin: float, size: tuple[int, int]) -> torch.Tensor:
    """Grow every box by ``margin`` x its width (height) on each side, clipped to the image:
    context around the marked patches (``margin=0.5`` doubles a box's sides)."""
    if margin == 0:
        return boxes
    H, W = size
    wh = (boxes[:, 2:] - boxes[:, :2]) * margin
    out = torch.cat([boxes[:, :2] - wh, boxes[:, 2:] + wh], dim=1)
    return torch.minimum(out.clamp_min(0), out.new_tensor([W, H, W, H]))
