"""Portable backbone weights, and the small pre-trained ViT the CPU chapters start from.

Chapter 5 explains why: the method fine-tunes a pre-trained ViT (ImageNet-21k weights on
CUB), and a ViT trained from scratch on a thousand synthetic images stays at chance for
the few CPU minutes a chapter can spend (``book/dataset.md`` has the measurements). So
the CPU profile starts, like the real recipe, from weights pre-trained on *other*
species: the hybrid timm ViT ``vit_tiny_r_s16_p8_224`` (a ResNet stem, then ViT blocks;
width 96, depth 6, 8 x 8 tokens at 64 px) trained with the plain last-layer loss on
species 11-30 of :mod:`fgnb.synthetic`. The default set holds species 1-10, so no
class and no image the chapters evaluate on was seen in pre-training.

:func:`export_backbone` writes any trained :class:`~fgnb.model.FGViT`'s backbone as a
timm ``.safetensors`` file (timm's own keys, no heads) that
``create_model(name, weights=path)`` - or timm itself, through
``pretrained_cfg_overlay=dict(file=path)`` - loads. The shipped file was made by::

    python -m fgnb train --config fgnb/weights/pretrain_synthetic.yaml --out runs/pretrain
    python -m fgnb export runs/pretrain/best.pt fgnb/weights/vit_tiny_r_s16_p8_64_synthetic.safetensors
"""
from __future__ import annotations

import json
import os
import pathlib

import torch

from .model import FGViT

__all__ = ["export_backbone", "export_checkpoint", "read_metadata", "SYNTHETIC_WEIGHTS", "SYNTHETIC_RECIPE", "synthetic_weights"]

_DIR = pathlib.Path(__file__).parent / "weights"
#: the shipped pre-trained backbone of the CPU profile, and the config that trained it
SYNTHETIC_WEIGHTS = _DIR / "vit_tiny_r_s16_p8_64_synthetic.safetensors"
SYNTHETIC_RECIPE = _DIR / "pretrain_synthetic.yaml"


def export_backbone(model: FGViT, path: str | os.PathLike, metadata: dict | None = None) -> pathlib.Path:
    """Write ``model.vit``'s weights (timm keys, heads dropped) to a ``.safetensors`` file.

    ``metadata`` (JSON-serialisable) is stored in the file's header under ``fgnb``; the
    file is written atomically, so an existing file is never left half-written.
    """
    from safetensors.torch import save_file

    from .train import atomic_write

    path = pathlib.Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: the exported weights are a .safetensors file; use that suffix")
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.vit.state_dict().items()}
    header = {"format": "pt", "fgnb": json.dumps(metadata or {}, sort_keys=True)}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=header))
    return path


def read_metadata(path: str | os.PathLike) -> dict:
    """The ``fgnb`` metadata stored by :func:`export_backbone` ({} if there is none)."""
    from safetensors import safe_open

    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    return json.loads(meta.get("fgnb", "{}"))


def export_checkpoint(checkpoint: str | os.PathLike, out: str | os.PathLike) -> pathlib.Path:
    """``python -m fgnb export``: an fgnb checkpoint's backbone -> timm ``.safetensors``.

    The metadata records the training config, the epoch chosen on validation, its
    validation and test metrics and the synthetic generator's version.
    """
    from .synthetic import GENERATOR_VERSION
    from .train import load_model

    model, cfg, state = load_model(checkpoint)
    last = (state.get("history") or [{}])[-1]
    meta = {
        "config": cfg.to_dict(),
        "epoch": state.get("epoch"),
        "best_epoch": state.get("best_epoch"),
        "val": {k: v for k, v in last.items() if k.startswith("val_")},
        "generator_version": GENERATOR_VERSION,
        "source": os.path.basename(os.fspath(checkpoint)),
    }
    test_file = pathlib.Path(checkpoint).parent / "test_metrics.json"
    if test_file.is_file():
        meta["test"] = json.loads(test_file.read_text())
    return export_backbone(model, out, meta)


def synthetic_weights() -> str:
    """Path of the shipped CPU-profile backbone; a clear error if it is missing or stale."""
    from .synthetic import GENERATOR_VERSION

    if not SYNTHETIC_WEIGHTS.is_file():
        raise FileNotFoundError(
            f"{SYNTHETIC_WEIGHTS} is missing (it ships with fgnb); rebuild it with the commands in "
            "fgnb/pretrained.py's docstring, or pass weights=None to train from scratch")
    made_with = read_metadata(SYNTHETIC_WEIGHTS).get("generator_version")
    if made_with != GENERATOR_VERSION:
        raise RuntimeError(
            f"{SYNTHETIC_WEIGHTS} was pre-trained on synthetic generator version {made_with}, but fgnb.synthetic "
            f"is version {GENERATOR_VERSION}; rebuild it (commands in fgnb/pretrained.py)")
    return str(SYNTHETIC_WEIGHTS)
