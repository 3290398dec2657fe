"""Every training option in one dataclass: defaults, help text, valid choices.

The CLI (``python -m fgnb train --help``), YAML config files and the notebooks'
``parameters`` cells all go through :class:`TrainConfig`, so an option is documented
and checked in one place.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
from dataclasses import dataclass, field, fields
from typing import Any

import yaml

__all__ = ["TrainConfig", "ConfigError", "load_config", "add_config_arguments", "config_from_args",
           "option_differences", "SYNTHETIC", "SYNTHETIC_ARCH"]


class ConfigError(ValueError):
    """An option has a value outside its valid choices."""


#: ``weights`` alias of the backbone that ships with fgnb (see :mod:`fgnb.pretrained`)
SYNTHETIC = "fgnb:synthetic"
#: the architecture options that backbone needs
#: data sets that download=True can fetch
DOWNLOADABLE = ("cub", "aircraft", "flowers", "pets")
SYNTHETIC_ARCH = dict(model="vit_tiny_r_s16_p8_224", patch_size=2, depth=6, embed_dim=96, num_heads=3)


def option_differences(saved: dict, wanted: dict, ignore=()) -> dict[str, tuple]:
    """Options whose ``wanted`` value differs from the ``saved`` one: {name: (saved, wanted)}.

    An option missing from ``saved`` (added to fgnb after that run) counts as its default.
    """
    defaults = {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
                for f in fields(TrainConfig)}
    was = {k: saved.get(k, defaults.get(k)) for k in wanted}
    return {k: (was[k], v) for k, v in wanted.items() if k not in ignore and was[k] != v}


def opt(default, help: str, choices: tuple | None = None):
    meta = {"help": help}
    if choices is not None:
        meta["choices"] = choices
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    # data
    dataset: str = opt("synthetic", "dataset name", ("synthetic", "cub", "folder", "aircraft", "flowers", "pets"))
    data_root: str | None = opt(None, "dataset folder (synthetic: generated into ~/.cache/fgnb or $FGNB_DATA if unset)")
    val_fraction: float = opt(0.1, "share of the train split held out for validation (model selection never reads test)")
    source_size: int | None = opt(None, "resolution of the source view that crops are cut from with crop_from=source (default 4x img_size)")
    resize_size: int | None = opt(None, "resize before the random/centre crop (default img_size * 8/7; 600 for CUB at 448)")
    synthetic_classes: int | None = opt(None, "synthetic dataset: number of classes (default: the generator's)")
    synthetic_train_per_class: int | None = opt(None, "synthetic dataset: train images per class (default: the generator's)")
    synthetic_test_per_class: int | None = opt(None, "synthetic dataset: test images per class (default: the generator's)")
    synthetic_difficulty: float | None = opt(None, "synthetic dataset: clutter/noise level, smaller is easier (default: the generator's)")
    synthetic_first_class: int | None = opt(None, "synthetic dataset: first of the 30 species in the set, from 0 (default: 0)")
    # model
    # The defaults are the CPU profile: timm's hybrid ViT (ResNet stem of stride 4, then 2 x 2
    # patches: 8 x 8 tokens of 8 x 8 pixels at 64 px), small, pre-trained on other species.
    model: str = opt(SYNTHETIC_ARCH["model"], "timm ViT name")
    img_size: int = opt(64, "model input size in pixels (multiple of the patch size)")
    patch_size: int | None = opt(SYNTHETIC_ARCH["patch_size"], "patch size of the patch embedding (None: the model's own); a hybrid ViT patchifies its stem's feature map")
    depth: int | None = opt(SYNTHETIC_ARCH["depth"], "number of blocks (None: the model's own)")
    embed_dim: int | None = opt(SYNTHETIC_ARCH["embed_dim"], "token width D (None: the model's own)")
    num_heads: int | None = opt(SYNTHETIC_ARCH["num_heads"], "attention heads H (None: the model's own)")
    pretrained: bool = opt(False, "load the model's pretrained weights through timm (network)")
    weights: str | None = opt(SYNTHETIC, f"local timm checkpoint (.pth/.safetensors) to start from, offline; {SYNTHETIC!r}: the "
                                         "shipped backbone pre-trained on other synthetic species (fits the default model only); "
                                         "None: from scratch")
    targets: int | list = opt(3, "target layers: a count from the end, or a list of block indices")
    head_hidden: int | None = opt(None, "hidden width of each MLP head (default: embed dim)")
    # method
    strategy: str = opt("progressive", "how the head losses update the network", ("last", "summed", "progressive"))
    order: str = opt("shallow_first", "progressive: order of the per-layer updates", ("shallow_first", "deep_first"))
    reforward: bool = opt(True, "progressive: re-run the forward before every stage (False: all gradients at one point)")
    crop: bool = opt(False, "train on attention crops too (the multi-scale module)")
    crop_attention: str = opt("last", "which attention drives the crop", ("last", "cumulative", "per_layer", "rollout"))
    box_rule: str = opt("all", "marked patches -> box", ("all", "largest"))
    threshold_scale: float = opt(1.0, "mark patches whose product exceeds scale x mean")
    crop_from: str = opt("input", "cut the crop from the model input or the higher-resolution source image", ("input", "source"))
    min_crop: int = opt(0, "smallest crop side in input pixels (0: no minimum)")
    select_by: str = opt("last", "inference mode that picks the best checkpoint on validation", ("last", "mean", "crop"))
    # optimisation
    epochs: int = opt(8, "training epochs")
    batch_size: int = opt(32, "images per batch (global, over all processes)")
    optimizer: str = opt("adamw", "optimizer", ("adamw", "sgd"))
    lr: float = opt(1e-3, "peak learning rate")
    momentum: float = opt(0.9, "SGD momentum")
    weight_decay: float = opt(0.05, "weight decay")
    warmup_epochs: float = opt(1.0, "linear warm-up, in epochs, then cosine decay to zero")
    clip_grad: float | None = opt(1.0, "max gradient norm (None: no clipping)")
    label_smoothing: float = opt(0.0, "label smoothing of the cross-entropy")
    amp: str = opt("auto", "mixed precision: auto = bf16 on GPUs with native bf16 (CUDA compute capability >= 8.0), "
                           "fp16 with a gradient scaler below (T4, V100), off on CPU/MPS; bf16/fp16 force it (CPU: torch's "
                           "CPU autocast, slow)", ("auto", "bf16", "fp16", "off"))
    device: str = opt("auto", "auto (cuda, mps, cpu) or a torch device string")
    seed: int = opt(0, "random seed")
    workers: int = opt(0, "DataLoader worker processes")
    limit_batches: int | None = opt(None, "stop each epoch after this many batches (quick runs and tests)")
    # output
    out: str = opt("runs/default", "run folder: checkpoints, metrics.csv/jsonl, config.yaml")
    download: bool = opt(False, "fetch the data set into data_root if it is not there (cub: the official 1.1 GB "
                                "archive, MD5-checked, resumable; aircraft, flowers, pets: torchvision's download)")
    resume: bool = opt(False, "continue the run in --out from its last checkpoint")
    checkpoint_minutes: float | None = opt(None, "also write last.pt every this many minutes inside an epoch, so a "
                                                 "disconnect loses at most that much (None: 10 on CUDA, off on CPU/MPS; 0: off)")
    progress: bool = opt(True, "show progress bars")

    def __post_init__(self):
        self.validate()

    def validate(self) -> "TrainConfig":
        # YAML 1.1 (files and flags) reads "1e-3" as a string: numeric options take it as a number.
        for f in fields(self):
            v, kind = getattr(self, f.name), str(f.type)
            if isinstance(v, str) and ("float" in kind or "int" in kind) and "str" not in kind:
                try:
                    setattr(self, f.name, int(v) if "int" in kind and "float" not in kind else float(v))
                except ValueError:
                    raise ConfigError(f"{f.name}={v!r} is not a number") from None
        for f in fields(self):
            choices = f.metadata.get("choices")
            v = getattr(self, f.name)
            if choices and v not in choices:
                raise ConfigError(f"{f.name}={v!r} is not valid: choose one of {', '.join(map(str, choices))}")
        positive = ["img_size", "epochs", "batch_size"]
        for name in positive:
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.val_fraction < 1:
            raise ConfigError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.patch_size is not None and self.img_size % self.patch_size:
            raise ConfigError(
                f"img_size={self.img_size} is not divisible by patch_size={self.patch_size}: "
                f"use a multiple of {self.patch_size}, e.g. {self.img_size // self.patch_size * self.patch_size or self.patch_size}"
            )
        if self.pretrained and self.weights is not None:
            raise ConfigError(f"pretrained=True downloads {self.model}'s own weights and weights={self.weights!r} "
                              "loads a file: choose one (set weights to None to download)")
        if self.weights == SYNTHETIC:
            wrong = {k: getattr(self, k) for k, v in SYNTHETIC_ARCH.items() if getattr(self, k) != v}
            if wrong:
                arch = ", ".join(f"{k}={v!r}" for k, v in SYNTHETIC_ARCH.items())
                raise ConfigError(
                    f"weights={SYNTHETIC!r} is the pre-trained backbone of {arch}, but this config has "
                    + ", ".join(f"{k}={v!r}" for k, v in wrong.items())
                    + "; set weights to None (train from scratch), pretrained=True, or a weights file of that model")
        if self.download and self.dataset not in DOWNLOADABLE:
            raise ConfigError(f"download=True fetches {', '.join(DOWNLOADABLE)}; dataset={self.dataset!r} "
                              "is generated locally (synthetic) or is your own folder (folder)")
        if self.checkpoint_minutes is not None and not self.checkpoint_minutes >= 0:
            raise ConfigError(f"checkpoint_minutes must be >= 0 (0: off), got {self.checkpoint_minutes}")
        if self.threshold_scale <= 0:
            raise ConfigError(f"threshold_scale must be > 0, got {self.threshold_scale}")
        if self.crop_attention == "rollout" and not self.crop and self.select_by != "crop":
            pass  # only used when the crop is on
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes) -> "TrainConfig":
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            raise ConfigError(f"unknown option(s) {sorted(unknown)}; valid options: {', '.join(f.name for f in fields(self))}")
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config") -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ConfigError(f"{source}: unknown option(s) {sorted(unknown)}; valid options: {', '.join(sorted(names))}")
        return cls(**d)


def load_config(path: str | os.PathLike) -> TrainConfig:
    """Read a YAML (or JSON) file of options."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file not found: {path}")
    with open(path) as f:
        data = yaml.safe_load(f) if not path.endswith(".json") else json.load(f)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of option: value, got {type(data).__name__}")
    return TrainConfig.from_dict(data, source=path)


def _parse_value(text: str, default, name: str):
    if text.lower() in ("none", "null"):
        return None
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise argparse.ArgumentTypeError(f"--{name}: cannot read {text!r}: {e}")
    if isinstance(default, bool) and not isinstance(value, bool):
        raise argparse.ArgumentTypeError(f"--{name} takes true or false, got {text!r}")
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    return value


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One ``--option VALUE`` per field; defaults come from a ``--config`` file if given."""
    parser.add_argument("--config", help="YAML file of options; flags given on the command line win")
    for f in fields(TrainConfig):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        choices = f.metadata.get("choices")
        help_text = f.metadata["help"] + f" (default: {default!r}" + (f"; choices: {', '.join(choices)})" if choices else ")")
        parser.add_argument(
            f"--{f.name.replace('_', '-')}",
            dest=f.name,
            metavar=f.name.upper() if not isinstance(default, bool) else "BOOL",
            type=lambda s, d=default, n=f.name: _parse_value(s, d, n),
            default=argparse.SUPPRESS,
            help=help_text.replace("%", "%%"),
        )


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    base = load_config(args.config) if getattr(args, "config", None) else TrainConfig()
    overrides = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if hasattr(args, f.name)}
    return base.replace(**overrides).validate()
