"""The attention maths of the multi-scale module, as pure tensor functions.

Chapter 3 derives :func:`cls_attention`; chapter 4 derives :func:`head_product`,
:func:`mean_threshold`, the cross-layer variants and :func:`boxes_from_mask`.

Shapes (symbols of ``book/notation.md``): ``B`` images, ``H`` heads, ``N = 1 + K`` tokens
(prefix tokens first, then the ``K`` patches in row-major scan order), ``d = D / H`` the head
width, ``L`` layers. The head product Pi_i = prod_h a_i^h (the text's P_i) is kept as its log,
s_i = sum_h log a_i^h.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "cls_attention",
    "head_product",
    "mean_threshold",
    "cumulative_product",
    "attention_rollout",
    "boxes_from_mask",
    "BOX_RULES",
]

BOX_RULES = ("all", "largest")


def _check_attention(attn: torch.Tensor, name: str = "attn") -> None:
    if not torch.is_tensor(attn) or attn.dim() != 3:
        shape = tuple(attn.shape) if torch.is_tensor(attn) else type(attn).__name__
        raise ValueError(f"{name} must be a (B, H, K) tensor of per-head attention weights, got {shape}")


def _log_dtype(t: torch.Tensor) -> torch.dtype:
    # float64 so that the mask never depends on the dtype the attention came in;
    # MPS has no float64, where float32 is the best available.
    return torch.float32 if t.device.type == "mps" else torch.float64


def cls_attention(q_cls: torch.Tensor, k: torch.Tensor, scale: float, num_prefix_tokens: int = 1) -> torch.Tensor:
    """CLS query's attention to every patch, per head.

    a[b, h, i] = softmax_j( q_cls[b, h] . k[b, h, j] * scale )  restricted to the patch
    columns j = num_prefix_tokens .. N-1.  The softmax runs over all N tokens (as the block
    computes it), so a row does not sum to 1 over the patches alone.

    Costs O(H * N * d): it never forms the N x N matrix.

    Args:
        q_cls: (B, H, d) query of the CLS token (after the block's q-norm).
        k: (B, H, N, d) keys of all tokens (after the block's k-norm).
        scale: the block's ``1 / sqrt(d)``.
    Returns:
        (B, H, K) float32 (or float64 if the inputs are).
    """
    if q_cls.dim() != 3 or k.dim() != 4 or k.shape[:2] != q_cls.shape[:2] or k.shape[-1] != q_cls.shape[-1]:
        raise ValueError(
            f"cls_attention expects q_cls (B, H, d) and k (B, H, N, d), got {tuple(q_cls.shape)} and {tuple(k.shape)}"
        )
    dtype = torch.float64 if q_cls.dtype == torch.float64 else torch.float32
    logits = torch.einsum("bhd,bhnd->bhn", q_cls.to(dtype), k.to(dtype)) * scale
    return logits.softmax(dim=-1)[..., num_prefix_tokens:]


def head_product(attn: torch.Tensor, eps: float = 1e-45) -> torch.Tensor:
    """Per-patch product over heads, in log space.

    s[b, i] = sum_h log a[b, h, i] = log prod_h a[b, h, i]

    With 12 heads and ~800 patches the product itself is ~1e-35: zero in float16 and
    barely representable in float32, so the log is returned (float64; float32 on MPS).
    ``exp(s)`` is the product P of the method; its ordering and mean-threshold mask are
    unchanged by the log.

    Args:
        attn: (B, H, K) per-head attention weights, any float dtype.
        eps: floor before the log, so a weight of exactly 0 gives a finite score.
    Returns:
        (B, K) log-product scores ``s``.
    """
    _check_attention(attn)
    a = attn.to(_log_dtype(attn))
    return a.clamp_min(eps).log().sum(dim=1)


def mean_threshold(scores: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Mark the patches whose product is above ``scale`` times its mean over the K patches.

    mask_i = [ Pi_i > scale * mean_j Pi_j ],  computed exactly in log space as
    s_i > logsumexp(s) - log K + log(scale)   with s = log P (from :func:`head_product`).

    ``scale = 1`` is the text's threshold; RAMS-Trans uses 1.2.

    Args:
        scores: (B, K) log-space scores.
    Returns:
        (B, K) bool mask.
    """
    if scores.dim() != 2:
        raise ValueError(f"mean_threshold expects (B, K) log-space scores, got shape {tuple(scores.shape)}")
    if not scale > 0:
        raise ValueError(f"mean_threshold scale must be > 0, got {scale}")
    s = scores.to(_log_dtype(scores))
    k = s.shape[-1]
    level = torch.logsumexp(s, dim=-1, keepdim=True) - math.log(k) + math.log(scale)
    return s > level


def cumulative_product(attn_layers: Sequence[torch.Tensor], eps: float = 1e-45) -> torch.Tensor:
    """Element-wise product of the per-head CLS maps over heads and layers, in log space.

    s[b, i] = sum_l sum_h log a_l[b, h, i]

    The multi-scale reading of the text: the weights are multiplied layer over layer.
    ``scores[l]`` returned for every prefix of layers, so the map after layer l is ``out[l]``.

    Args:
        attn_layers: L tensors (B, H, K), shallow to deep.
    Returns:
        (L, B, K) cumulative log-space scores.
    """
    if len(attn_layers) == 0:
        raise ValueError("cumulative_product needs at least one layer of attention")
    per_layer = torch.stack([head_product(a, eps) for a in attn_layers])
    return per_layer.cumsum(dim=0)


def attention_rollout(
    attn_layers: Sequence[torch.Tensor], num_prefix_tokens: int = 1, head_fusion: str = "mean"
) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema, 2020) of full attention maps, CLS row.

    Â_l = normalise_rows( fuse_h A_l + I ),   R = Â_L ... Â_2 Â_1,   returns R[cls, patches].

    It needs full (B, H, N, N) maps, so it is O(N^2) per layer; the default options of
    fgnb avoid it. ``head_fusion`` is ``'mean'`` (the paper) or ``'max'``.

    Args:
        attn_layers: L tensors (B, H, N, N), shallow to deep, rows summing to 1.
    Returns:
        (B, K) rolled-out attention of the CLS token to every patch (float32/64).
    """
    if len(attn_layers) == 0:
        raise ValueError("attention_rollout needs at least one layer of attention")
    fusions = {"mean": lambda a: a.mean(dim=1), "max": lambda a: a.amax(dim=1)}
    if head_fusion not in fusions:
        raise ValueError(f"head_fusion={head_fusion!r} is not one of {sorted(fusions)}")
    result = None
    for a in attn_layers:
        if a.dim() != 4 or a.shape[-1] != a.shape[-2]:
            raise ValueError(f"attention_rollout expects (B, H, N, N) maps, got {tuple(a.shape)}")
        a = fusions[head_fusion](a.to(torch.float64 if a.dtype == torch.float64 else torch.float32))
        a = a + torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
        a = a / a.sum(dim=-1, keepdim=True)
        result = a if result is None else a @ result
    return result[:, 0, num_prefix_tokens:]


def _largest_component(mask: torch.Tensor) -> torch.Tensor:
    """Keep the largest 8-connected group of a (B, gh, gw) bool mask, batched.

    Labels start as each marked cell's flat index + 1 and grow by 3x3 max-pooling inside
    the mask until stable, so each group ends labelled by its largest index; the group
    with the most cells wins (ties: the larger label).
    """
    b, gh, gw = mask.shape
    m = mask.float().unsqueeze(1)
    labels = torch.arange(1, gh * gw + 1, device=mask.device, dtype=torch.float32).view(1, 1, gh, gw) * m
    for _ in range(gh * gw):
        grown = F.max_pool2d(labels, 3, stride=1, padding=1) * m
        if torch.equal(grown, labels):
            break
        labels = grown
    flat = labels.view(b, -1).long()
    sizes = torch.zeros(b, gh * gw + 1, device=mask.device).scatter_add_(1, flat, torch.ones_like(flat, dtype=torch.float32))
    sizes[:, 0] = 0
    # Ties go to the larger label: argmax over (size, label) packed into one number.
    key = sizes * (gh * gw + 1) + torch.arange(gh * gw + 1, device=mask.device)
    best = key.argmax(dim=1, keepdim=True)
    return (flat == best).view(b, gh, gw) & mask


def boxes_from_mask(
    mask: torch.Tensor,
    grid: tuple[int, int],
    patch_size: int | tuple[int, int],
    rule: str = "all",
    min_size: int | float = 0,
) -> torch.Tensor:
    """Turn a patch mask into one box per image, in input-image pixels.

    Patch (r, c) covers x in [c*pw, (c+1)*pw), y in [r*ph, (r+1)*ph). The box is
    (x0, y0, x1, y1) = (min c * pw, min r * ph, (max c + 1) * pw, (max r + 1) * ph)
    over the marked patches (``rule='all'``, the text's reading) or over the largest
    8-connected group of them (``rule='largest'``, RAMS-Trans). No patch marked: the
    whole image. ``min_size``: a box smaller than this (pixels, per side) grows around
    its centre and is shifted to stay inside the image.

    Args:
        mask: (B, K) or (B, gh, gw) bool, K = gh * gw in row-major order.
        grid: (gh, gw) patch grid.
        patch_size: patch height and width in pixels (int for square).
    Returns:
        (B, 4) float32 boxes (x0, y0, x1, y1).
    """
    if rule not in BOX_RULES:
        raise ValueError(f"box rule {rule!r} is not one of {BOX_RULES}")
    gh, gw = int(grid[0]), int(grid[1])
    ph, pw = (patch_size, patch_size) if isinstance(patch_size, int) else patch_size
    if mask.dim() == 2:
        if mask.shape[1] != gh * gw:
            raise ValueError(f"mask has {mask.shape[1]} patches but grid {gh}x{gw} has {gh * gw}")
        mask = mask.view(-1, gh, gw)
    if mask.dim() != 3 or tuple(mask.shape[1:]) != (gh, gw):
        raise ValueError(f"mask must be (B, K) or (B, {gh}, {gw}), got {tuple(mask.shape)}")
    mask = mask.bool()
    if rule == "largest":
        mask = _largest_component(mask)
    rows, cols = mask.any(dim=2), mask.any(dim=1)  # (B, gh), (B, gw)
    empty = ~rows.any(dim=1)
    r_idx = torch.arange(gh, device=mask.device)
    c_idx = torch.arange(gw, device=mask.device)
    r0 = torch.where(rows, r_idx, gh).amin(dim=1)
    r1 = torch.where(rows, r_idx, -1).amax(dim=1) + 1
    c0 = torch.where(cols, c_idx, gw).amin(dim=1)
    c1 = torch.where(cols, c_idx, -1).amax(dim=1) + 1
    boxes = torch.stack([c0 * pw, r0 * ph, c1 * pw, r1 * ph], dim=1).float()
    full = torch.tensor([0.0, 0.0, gw * pw, gh * ph], device=mask.device)
    boxes = torch.where(empty[:, None], full, boxes)
    if min_size:
        boxes = _grow_to_min_size(boxes, float(min_size), width=gw * pw, height=gh * ph)
    return boxes


def _grow_to_min_size(boxes: torch.Tensor, min_size: float, width: float, height: float) -> torch.Tensor:
    out = boxes.clone()
    for lo, hi, limit in ((0, 2, width), (1, 3, height)):
        side = min(min_size, limit)
        centre = (boxes[:, lo] + boxes[:, hi]) / 2
        extent = (boxes[:, hi] - boxes[:, lo]).clamp_min(side)
        start = (centre - extent / 2).clamp(0, None)
        start = torch.minimum(start, limit - extent)
        out[:, lo], out[:, hi] = start, start + extent
    return out
