"""Box geometry: (B, 4) tensors of (x0, y0, x1, y1) pixel boxes, one row per image.

Chapter 6 explains them: the crop's box is moved to the source view (:func:`scale_boxes`),
given context (:func:`expand_boxes`) or replaced by a random one of its size
(:func:`random_boxes_like`, the lower bound), and scored against the ground truth
(:func:`box_iou`, :func:`points_in_boxes`). The box itself comes from the attention
(:func:`fgnb.attention.boxes_from_mask`, chapter 4).
"""
from __future__ import annotations

import torch

__all__ = ["scale_boxes", "expand_boxes", "random_boxes_like", "box_iou", "points_in_boxes"]


def scale_boxes(boxes: torch.Tensor, from_size: tuple[int, int], to_size: tuple[int, int]) -> torch.Tensor:
    """Map (x0, y0, x1, y1) boxes from an image of (H, W) = ``from_size`` to one of ``to_size``.

    Used to cut the crop out of the higher-resolution source image rather than the input.
    """
    sy = to_size[0] / from_size[0]
    sx = to_size[1] / from_size[1]
    return boxes * boxes.new_tensor([sx, sy, sx, sy])


def expand_boxes(boxes: torch.Tensor, margin: float, size: tuple[int, int]) -> torch.Tensor:
    """Grow every box by ``margin`` x its width (height) on each side, clipped to the image:
    context around the marked patches (``margin=0.5`` doubles a box's sides)."""
    if margin == 0:
        return boxes
    H, W = size
    wh = (boxes[:, 2:] - boxes[:, :2]) * margin
    out = torch.cat([boxes[:, :2] - wh, boxes[:, 2:] + wh], dim=1)
    return torch.minimum(out.clamp_min(0), out.new_tensor([W, H, W, H]))


def random_boxes_like(boxes: torch.Tensor, size: tuple[int, int], generator: torch.Generator | None = None) -> torch.Tensor:
    """Boxes of the same width and height as ``boxes``, placed uniformly at random inside an
    image of (H, W) = ``size``: the crop's lower bound (same zoom, no localisation)."""
    H, W = size
    wh = (boxes[:, 2:] - boxes[:, :2]).clamp_min(0)
    wh = torch.minimum(wh, wh.new_tensor([W, H]))
    u = torch.rand(boxes.shape[0], 2, generator=generator, device="cpu").to(boxes)
    x0y0 = u * (wh.new_tensor([W, H]) - wh)
    return torch.cat([x0y0, x0y0 + wh], dim=1)


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of matching rows of two (B, 4) xyxy box tensors."""
    lt = torch.maximum(a[:, :2], b[:, :2])
    rb = torch.minimum(a[:, 2:], b[:, 2:])
    inter = (rb - lt).clamp_min(0).prod(dim=1)
    area = lambda x: (x[:, 2:] - x[:, :2]).clamp_min(0).prod(dim=1)
    return inter / (area(a) + area(b) - inter).clamp_min(1e-9)


def points_in_boxes(boxes: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """(B, P) bool: point ``p`` of image ``b`` lies in box ``b`` (xyxy, borders included).
    A NaN point (not visible) is in no box."""
    x, y = points[..., 0], points[..., 1]
    b = boxes[:, None, :]
    return (x >= b[..., 0]) & (x <= b[..., 2]) & (y >= b[..., 1]) & (y <= b[..., 3])
