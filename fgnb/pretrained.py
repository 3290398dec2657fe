"""Portable backbone weights, and the small pre-trained ViTs the CPU chapters start from.

Chapter 5 explains why: the method fine-tunes a pre-trained ViT (ImageNet-21k weights on
CUB), and a ViT trained from scratch on a thousand synthetic images stays at chance for
the few CPU minutes a chapter can spend (``book/dataset.md`` has the measurements). So
the CPU profile starts, like the real recipe, from weights pre-trained on *other*
species: the hybrid timm ViT ``vit_tiny_r_s16_p8_224`` (a ResNet stem, then ViT blocks;
width 96, depth 6, 8 x 8 tokens at 64 px) trained with the plain last-layer loss on
species 11-30 of :mod:`fgnb.synthetic`. The default set holds species 1-10, so no
class and no image the chapters evaluate on was seen in pre-training. A second recipe
pre-trains a plain ViT with the text's linear patch projection (``vit_tiny_patch16_224``,
4 x 4 pixel patches, width 96, depth 6) on the same species; trained on the whole view alone
it stayed at chance, so every batch also shows it the true head box cut from the source
(the joint crop loss; its recipe's header has the runs). ``weights='fgnb:synthetic'``
picks the file of the model's architecture (:func:`synthetic_weights`), and
:func:`build_model` makes the model a run's options describe, from the weights they name.

:func:`export_backbone` writes any trained :class:`~fgnb.model.FGViT`'s backbone as a
timm ``.safetensors`` file (timm's own keys, no heads) that
``create_model(name, weights=path)`` - or timm itself, through
``pretrained_cfg_overlay=dict(file=path, custom_load=False)`` - loads (``custom_load=False``:
the hybrid's config would send the file to timm's .npz reader). The shipped files are made by::

    # the hybrid (the model of chapter 8's ablation and chapter 9's sweep)
    python -m fgnb train --config fgnb/weights/pretrain_synthetic.yaml --out runs/pretrain
    python -m fgnb export runs/pretrain/best.pt fgnb/weights/vit_tiny_r_s16_p8_64_synthetic.safetensors
    # the plain ViT, the CPU profile's default (about 70 min on one core; the recipe states the arithmetic)
    OMP_NUM_THREADS=1 python -m fgnb train --config fgnb/weights/pretrain_synthetic_vit.yaml --out runs/pretrain_vit
    python -m fgnb export runs/pretrain_vit/best.pt fgnb/weights/vit_tiny_patch4_64_synthetic.safetensors

A model built at another input size than the weights' 64 px (e.g. 32, 48 or 96 px) gets
timm's resampled position embedding (bicubic over the token grid, the CLS entry kept).
"""
from __future__ import annotations

import json
import os
import pathlib

import torch

from .atomic import atomic_write
from .config import SYNTHETIC, SYNTHETIC_ARCH, SYNTHETIC_VIT_ARCH, TrainConfig
from .model import FGViT, create_model

__all__ = ["build_model", "export_backbone", "read_metadata", "SYNTHETIC_WEIGHTS", "SYNTHETIC_RECIPE",
           "SYNTHETIC_VIT_WEIGHTS", "SYNTHETIC_VIT_RECIPE", "synthetic_backbones", "synthetic_weights", "recipe_commands"]

_DIR = pathlib.Path(__file__).parent / "weights"
#: the shipped pre-trained hybrid (the ablation's and the sweep's backbone), and the config that trained it
SYNTHETIC_WEIGHTS = _DIR / "vit_tiny_r_s16_p8_64_synthetic.safetensors"
SYNTHETIC_RECIPE = _DIR / "pretrain_synthetic.yaml"
#: the plain ViT's (linear patch projection; the CPU profile's and the default backbone)
SYNTHETIC_VIT_WEIGHTS = _DIR / "vit_tiny_patch4_64_synthetic.safetensors"
SYNTHETIC_VIT_RECIPE = _DIR / "pretrain_synthetic_vit.yaml"


def export_backbone(model: FGViT, path: str | os.PathLike, metadata: dict | None = None) -> pathlib.Path:
    """Write ``model.vit``'s weights (timm keys, heads dropped) to a ``.safetensors`` file.

    ``metadata`` (JSON-serialisable) is stored in the file's header under ``fgnb``; the
    file is written atomically, so an existing file is never left half-written.
    """
    from safetensors.torch import save_file

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




def synthetic_backbones() -> list[tuple[dict, pathlib.Path, pathlib.Path]]:
    """(architecture options, weights file, recipe) of every backbone fgnb ships."""
    return [(SYNTHETIC_ARCH, SYNTHETIC_WEIGHTS, SYNTHETIC_RECIPE),
            (SYNTHETIC_VIT_ARCH, SYNTHETIC_VIT_WEIGHTS, SYNTHETIC_VIT_RECIPE)]


def recipe_commands(recipe: str | os.PathLike) -> list[str]:
    """The commands that make a backbone, as its recipe's header states them (``#   ...`` lines)."""
    lines = pathlib.Path(recipe).read_text().splitlines()
    return [ln[1:].strip() for ln in lines if ln.startswith("#   ")]


def synthetic_weights(cfg=None) -> str:
    """Path of the shipped backbone of ``cfg``'s architecture (a :class:`~fgnb.config.TrainConfig`
    or a dict of its options; None: the default architecture, the plain ViT). A clear error if no shipped backbone
    has that architecture, or if its file is missing (naming the recipe that makes it) or stale."""
    from .synthetic import GENERATOR_VERSION

    if cfg is None:
        cfg = TrainConfig()
    get = cfg.get if isinstance(cfg, dict) else lambda k: getattr(cfg, k)
    found = [b for b in synthetic_backbones() if all(get(k) == v for k, v in b[0].items())]
    if not found:
        shipped = " or ".join("(" + ", ".join(f"{k}={v!r}" for k, v in b[0].items()) + ")"
                              for b in synthetic_backbones())
        raise ValueError(f"no shipped synthetic backbone has this architecture; fgnb ships {shipped}")
    arch, weights, recipe = found[0]
    if not weights.is_file():
        commands = "".join(f"\n    {c}" for c in recipe_commands(recipe))
        raise FileNotFoundError(
            f"{weights} is missing: the backbone of {arch['model']} (patch_size={arch['patch_size']}) is made by its "
            f"recipe {recipe.name}, from the repository's root:{commands}\n"
            "or pass weights=None to train from scratch")
    made_with = read_metadata(weights).get("generator_version")
    if made_with != GENERATOR_VERSION:
        raise RuntimeError(
            f"{weights} was pre-trained on synthetic generator version {made_with}, but fgnb.synthetic "
            f"is version {GENERATOR_VERSION}; rebuild it (commands in fgnb/pretrained.py)")
    return str(weights)


def build_model(cfg: TrainConfig, num_classes: int) -> FGViT:
    """The model a run's options describe, started from the weights they name: timm's
    (``pretrained``), a file, the shipped backbone of its architecture (``fgnb:synthetic``)
    or none. Chapters 2 to 6 build their model with it, exactly as training does."""
    kwargs = {}
    if cfg.patch_size is not None:
        kwargs["patch_size"] = cfg.patch_size
    for name in ("depth", "embed_dim", "num_heads"):
        if getattr(cfg, name) is not None:
            kwargs[name] = getattr(cfg, name)
    targets = cfg.targets if isinstance(cfg.targets, int) else list(cfg.targets)
    weights = cfg.weights
    if weights == SYNTHETIC:
        weights = synthetic_weights(cfg)  # the shipped file of this model's architecture
    return create_model(
        cfg.model, num_classes=num_classes, targets=targets, pretrained=cfg.pretrained, weights=weights,
        img_size=cfg.img_size, head_hidden=cfg.head_hidden, **kwargs,
    )
