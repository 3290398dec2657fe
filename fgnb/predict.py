"""``fgnb predict``: top-k classes of image files and an attention/crop overlay for each.

Chapter 6 shows the same overlay for the embedded data set.
"""
from __future__ import annotations

import pathlib

import torch

from .checkpoints import load_model
from .crop import attention_scores, crop_views
from .data import load_rgb, make_transform
from .devices import select_device
from .loaders import source_size
from .plots import overlay, to_display

__all__ = ["predict_files"]


@torch.no_grad()
def predict_files(checkpoint, images, top_k: int = 5, out_dir=None, device="auto") -> list[dict]:
    """Classify each file with the ``crop`` inference mode and save ``<name>.attention.png``.

    The crop is made as the run trained it (:func:`fgnb.crop.crop_views`): the run's
    attention mode, box rule and margin, read and cut from the source view when ``attention_from`` and
    ``crop_from`` say ``'source'``.
    """
    import matplotlib.pyplot as plt

    dev = select_device(device)
    model, cfg, state = load_model(checkpoint, dev)
    classes = state.get("classes") or [str(i) for i in range(model.num_classes)]
    dc = model.data_config()
    if cfg.crop_boxes != "attention":
        # Oracle and random boxes are bounds for the ablation, not a way to predict.
        cfg = cfg.replace(crop_boxes="attention")
    tf = make_transform(False, cfg.img_size, cfg.resize_size, dc["mean"], dc["std"], source_size=source_size(cfg))
    out_dir = pathlib.Path(out_dir) if out_dir else pathlib.Path(checkpoint).parent / "predictions"
    out_dir.mkdir(parents=True, exist_ok=True)
    k = max(1, min(top_k, model.num_classes))
    results = []
    for path in images:
        item = {k: v.unsqueeze(0) for k, v in tf(load_rgb(path)).items()}
        x = item["image"].to(dev)
        crops, boxes, out = crop_views(model, item, x, cfg)
        scores = attention_scores(out, cfg.crop_attention, model.target_layers, cfg.crop_block)[-1]
        box, crop = boxes[-1], crops[-1]
        logits = out.logits[-1] if out.logits else model(x).logits[-1]  # attention_from='source': no logits in out
        p = 0.5 * (logits.softmax(-1) + model(crop).logits[-1].softmax(-1))[0]
        top = torch.topk(p, k)
        fig, axes = plt.subplots(1, 2, figsize=(6, 3))
        img = to_display(x[0], dc["mean"], dc["std"])
        overlay(axes[0], img, scores[0], out.grid, box=box[0], title=f"{classes[top.indices[0]]} ({top.values[0]:.2f})")
        axes[1].imshow(to_display(crop[0], dc["mean"], dc["std"]))
        axes[1].set_title("attention crop", fontsize=9)
        axes[1].set_axis_off()
        png = out_dir / (pathlib.Path(path).stem + ".attention.png")
        fig.savefig(png, dpi=100, bbox_inches="tight")
        plt.close(fig)
        results.append({
            "image": str(path),
            "top": [(classes[i], float(v)) for v, i in zip(top.values.tolist(), top.indices.tolist())],
            "box": box[0].tolist(),
            "overlay": str(png),
        })
    return results
