"""How good a trained model is: top-1 of every head and inference mode, and where its box lands.

Chapter 6 explains the measures (the crop inference modes, IoU with the object box, the
part hits); :func:`fgnb.train.train` selects its checkpoint on them and reports them on the
test split once.
"""
from __future__ import annotations

import torch
from tqdm.auto import tqdm

from . import distributed as dist
from .boxes import box_iou, points_in_boxes
from .config import TrainConfig, selected_on
from .crop import crop_views
from .devices import autocast_for
from .loaders import part_names, passed_over
from .model import FGViT

__all__ = ["evaluate", "cue_counts", "INFERENCE_MODES", "selection_mode"]

#: How a prediction is made (``select_by`` picks the checkpoint on one of them): see :func:`evaluate`.
INFERENCE_MODES = ("last", "mean", "crop", "crop_only")


def selection_mode(cfg: TrainConfig) -> str:
    """The inference mode whose validation top-1 picks the best checkpoint: ``cfg.select_by``, or
    (None) ``crop`` for a run that trains on crops (the prediction the module is for), else ``last``."""
    return selected_on(cfg.to_dict())


@torch.no_grad()
def evaluate(model: FGViT, loader, cfg: TrainConfig, device: torch.device | None = None, progress: bool = False,
             skipped: dict | None = None) -> dict:
    """Top-1 of every head and every inference mode, and localization of the crop box.

    Modes: ``last`` the deepest head; ``mean`` the mean of all heads' probabilities;
    ``crop_only`` the deepest head on the crop view alone; ``crop`` the deepest head's
    probabilities averaged over the global view and the crop view. The crop is made as in
    training (:func:`crop_views`, the deepest head's box). ``iou50``: share of images whose
    box has IoU >= 0.5 with the ground-truth object box; ``part_hit``: share whose box
    contains the centre of the discriminative part; ``part_iou``: mean IoU of the box with
    the part box (synthetic data); ``box_area``: mean share of the image the box covers;
    ``cue_<part>`` (sets with part locations: the synthetic cues beak, eye, crest, or
    CUB's 15 parts): share of the images showing that part whose box contains it, and
    ``cue_all``: share of the images whose box contains every part they show.
    ``skipped``: a dict that collects (as keys) the paths of unreadable files passed over
    (``on_error='skip'``).
    """
    device = device or next(model.parameters()).device
    autocast, _ = autocast_for(device, cfg.amp)
    model.eval()
    R = model.num_targets
    # Random boxes (the lower bound) are drawn from a fixed generator: every evaluation the same.
    gen = torch.Generator().manual_seed(0)
    # Running sums: hits of each head, of 'mean', 'crop', 'crop_only'; IoU>=0.5 hits and boxes;
    # part hits and parts; part IoU; box area share; images.
    sums = torch.zeros(R + 10, dtype=torch.float64)
    # (any iterable of batches is a loader here, e.g. [batch]: part names only from a data set that has them)
    names = part_names(getattr(loader, "dataset", None))
    cue_sums = torch.zeros(2 * len(names) + 2, dtype=torch.float64)  # hits, shown per part; all-in, images
    for batch in tqdm(loader, desc="eval", leave=False, disable=not progress):
        if skipped is not None:
            skipped.update(dict.fromkeys(passed_over(batch, loader.dataset)))
        x, y = batch["image"].to(device), batch["label"].to(device)
        crops, all_boxes, out = crop_views(model, batch, x, cfg, autocast, gen)
        boxes = all_boxes[-1]
        with autocast():
            if not out.logits:  # the boxes' attention was read on the source view: the global view's own forward
                out = model(x)
            crop_out = model(crops[-1], upto=R - 1)
        probs = [lg.float().softmax(-1) for lg in out.logits]
        p_mean = torch.stack(probs).mean(0)
        p_crop_only = crop_out.logits[-1].float().softmax(-1)
        p_crop = 0.5 * (probs[-1] + p_crop_only)
        gt, part = batch["box"].to(device).float(), batch["part_box"].to(device).float()
        has_box, has_part = ~torch.isnan(gt).any(dim=1), ~torch.isnan(part).any(dim=1)
        cx, cy = (part[:, 0] + part[:, 2]) / 2, (part[:, 1] + part[:, 3]) / 2
        inside = (cx >= boxes[:, 0]) & (cx <= boxes[:, 2]) & (cy >= boxes[:, 1]) & (cy <= boxes[:, 3])
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) / float(x.shape[-1] * x.shape[-2])
        part_iou = torch.where(has_part, box_iou(boxes, torch.nan_to_num(part)), torch.zeros_like(area))
        row = [(p.argmax(-1) == y).sum() for p in (*probs, p_mean, p_crop, p_crop_only)]
        row += [((box_iou(boxes, gt) >= 0.5) & has_box).sum(), has_box.sum(), (inside & has_part).sum(),
                has_part.sum(), part_iou.sum(), area.sum(), torch.tensor(len(y))]
        sums += torch.stack([v.double().cpu() for v in row])
        if names and "part_points" in batch:
            cue_sums += cue_counts(boxes, batch["part_points"].to(device).float())
    c = dist.all_reduce_sum(sums).tolist()
    n = max(c[R + 9], 1.0)
    res = {f"top1_head{r}": c[r] / n for r in range(R)}
    res.update(top1_last=c[R - 1] / n, top1_mean=c[R] / n, top1_crop=c[R + 1] / n, top1_crop_only=c[R + 2] / n)
    res["iou50"] = c[R + 3] / c[R + 4] if c[R + 4] else float("nan")
    res["part_hit"] = c[R + 5] / c[R + 6] if c[R + 6] else float("nan")
    res["part_iou"] = c[R + 7] / c[R + 6] if c[R + 6] else float("nan")
    res["box_area"] = c[R + 8] / n
    res["n"] = int(c[R + 9])
    if names:
        k = dist.all_reduce_sum(cue_sums).tolist()
        P = len(names)
        for j, name in enumerate(names):
            res[f"cue_{name.replace(' ', '_')}"] = k[j] / k[P + j] if k[P + j] else float("nan")
        res["cue_all"] = k[2 * P] / k[2 * P + 1] if k[2 * P + 1] else float("nan")
    return res


def cue_counts(boxes: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Per part: images whose box holds it, images that show it; then images whose box holds
    every part they show (among images showing one at least), and those images."""
    shown = ~torch.isnan(points).any(-1)
    inside = points_in_boxes(boxes, points) & shown
    has_any = shown.any(1)
    all_in = (inside == shown).all(1) & has_any
    return torch.cat([inside.sum(0), shown.sum(0), all_in.sum()[None], has_any.sum()[None]]).double().cpu()
