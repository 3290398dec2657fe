"""Where localisation lives: the CLS attention of every block and head, measured (Chapter 3).

The module crops where the CLS attention is; it can only find the head if the block it
reads attends to the head. Two numbers per block and head say whether it does:

* the **normalised entropy** of the CLS attention over the K patches,
  e(h) = -sum_i p_i log p_i / log K  with  p_i = a_i^h / sum_j a_j^h,
  0 when all attention sits on one patch, 1 when it is spread evenly (flat);
* the attention **mass on a box**, m(h) = sum of p_i over the patches whose centre lies
  in the box: on the part (head) box and on the object box. A map with no spatial
  information puts on a box the box's share of the patches (its *area share*), so the
  mass is read against that share.

:func:`localisation_profile` averages both over a data split, for every block and head
(``bench/localisation.py`` writes it to a results file; chapter 3 draws it).
"""
from __future__ import annotations

import math

import torch

from .boxes import points_in_boxes

__all__ = ["attention_entropy", "patch_centres", "patches_in_boxes", "attention_mass", "localisation_profile"]


def attention_entropy(attn: torch.Tensor) -> torch.Tensor:
    """e = -sum_i p_i log p_i / log K with p the CLS attention renormalised over the K patches.

    Args:
        attn: (..., K) CLS attention over the patches (the model's ``out.attn[l]``, (B, H, K)).
    Returns:
        (...) in [0, 1]: 0 all on one patch, 1 uniform.
    """
    k = attn.shape[-1]
    if k < 2:
        raise ValueError(f"attention_entropy needs two patches at least, got K={k}")
    p = attn.double() / attn.double().sum(-1, keepdim=True)
    plogp = torch.where(p > 0, p * p.clamp_min(1e-300).log(), torch.zeros_like(p))
    return (-plogp.sum(-1) / math.log(k)).to(attn.dtype)


def patch_centres(grid: tuple[int, int], patch_size: int | tuple[int, int]) -> torch.Tensor:
    """(K, 2) (x, y) pixel centre of every patch, row-major: patch (r, c) -> ((c + 1/2) pw, (r + 1/2) ph)."""
    gh, gw = int(grid[0]), int(grid[1])
    ph, pw = (patch_size, patch_size) if isinstance(patch_size, int) else patch_size
    r, c = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
    return torch.stack([(c.flatten() + 0.5) * pw, (r.flatten() + 0.5) * ph], dim=1).float()


def patches_in_boxes(boxes: torch.Tensor, grid: tuple[int, int], patch_size: int | tuple[int, int]) -> torch.Tensor:
    """(B, K) bool: the centre of patch i lies in box b (xyxy, input pixels, borders included).
    A NaN box (unknown) holds no patch."""
    xy = patch_centres(grid, patch_size).to(boxes.device)
    return points_in_boxes(boxes, xy.expand(boxes.shape[0], *xy.shape))


def attention_mass(attn: torch.Tensor, boxes: torch.Tensor, grid, patch_size) -> torch.Tensor:
    """m[b, h] = sum_i p[b, h, i] [centre of patch i in box b], p renormalised over the patches.

    Args:
        attn: (B, H, K) CLS attention; boxes: (B, 4) xyxy in input pixels.
    Returns:
        (B, H) in [0, 1].
    """
    if attn.dim() != 3 or boxes.shape != (attn.shape[0], 4):
        raise ValueError(f"attention_mass expects attn (B, H, K) and boxes (B, 4), got {tuple(attn.shape)} and "
                         f"{tuple(boxes.shape)}")
    inside = patches_in_boxes(boxes.float(), grid, patch_size)
    if inside.shape[1] != attn.shape[-1]:
        raise ValueError(f"grid {tuple(grid)} has {inside.shape[1]} patches, the attention {attn.shape[-1]}")
    p = attn.double() / attn.double().sum(-1, keepdim=True)
    return (p * inside[:, None, :]).sum(-1).to(attn.dtype)


@torch.no_grad()
def localisation_profile(model, loader, device: torch.device | None = None, limit: int | None = None) -> dict:
    """Every block's and head's mean entropy and attention mass on the part and object boxes.

    Returns a dict of (depth, H) lists ``entropy``, ``mass_part``, ``mass_object`` (means over
    the images that have that box), and the boxes' mean area shares ``share_part`` and
    ``share_object`` (the mass a flat map would put on them), with ``images`` counted.
    ``limit``: stop after this many images.
    """
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    sums: dict[str, torch.Tensor] = {}
    counts = {"entropy": 0, "part": 0, "object": 0}
    shares = {"part": 0.0, "object": 0.0}
    for batch in loader:
        x = batch["image"].to(device)
        out = model(x, attn_layers="all")
        attn = torch.stack([out.attn[l].float().cpu() for l in sorted(out.attn)], dim=1)  # (B, L, H, K)
        b, L, H, K = attn.shape
        ent = attention_entropy(attn.view(b * L, H, K)).view(b, L, H)
        sums["entropy"] = sums.get("entropy", 0) + ent.double().sum(0)
        counts["entropy"] += b
        for name, key in (("part", "part_box"), ("object", "box")):
            boxes = batch[key].float()
            known = ~torch.isnan(boxes).any(1)
            if not known.any():
                continue
            kb = boxes[known]
            m = attention_mass(attn[known].reshape(-1, H, K), kb.repeat_interleave(L, 0), out.grid, out.patch_size)
            sums[name] = sums.get(name, 0) + m.view(-1, L, H).double().sum(0)
            shares[name] += patches_in_boxes(kb, out.grid, out.patch_size).double().mean(1).sum().item()
            counts[name] += int(known.sum())
        if limit is not None and counts["entropy"] >= limit:
            break
    model.train(was_training)
    if not counts["entropy"]:
        raise ValueError("localisation_profile: the loader gave no images")
    res = {"images": counts["entropy"], "entropy": (sums["entropy"] / counts["entropy"]).tolist()}
    for name in ("part", "object"):
        n = counts[name]
        res[f"mass_{name}"] = (sums[name] / n).tolist() if n else None
        res[f"share_{name}"] = shares[name] / n if n else None
        res[f"images_{name}"] = n
    return res
