"""Every training option in one dataclass: defaults, help text, valid choices.

The CLI (``python -m fgnb train --help``), YAML config files and the notebooks'
``parameters`` cells all go through :class:`TrainConfig`, so an option is documented
and checked in one place.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
from dataclasses import dataclass, field, fields
from typing import Any

import yaml

__all__ = ["TrainConfig", "ConfigError", "load_config", "add_config_arguments", "config_from_args",
           "option_differences", "options_tagged", "selected_on", "DERIVED", "WHEN_ADDED", "ROLES", "SYNTHETIC", "SYNTHETIC_ARCH", "SYNTHETIC_VIT_ARCH", "SYNTHETIC_ARCHS"]


class ConfigError(ValueError):
    """An option has a value outside its valid choices."""


#: ``weights`` alias of the backbones that ship with fgnb (see :mod:`fgnb.pretrained`): the one
#: whose architecture matches the model
SYNTHETIC = "fgnb:synthetic"
#: data sets that download=True can fetch
DOWNLOADABLE = ("cub", "aircraft", "flowers", "pets")
#: the architecture options of the shipped backbones: timm's hybrid (the model of the ablation and
#: the sweep) and a plain ViT with the text's linear patch projection (the CPU profile's, and the default)
SYNTHETIC_ARCH = dict(model="vit_tiny_r_s16_p8_224", patch_size=2, depth=6, embed_dim=96, num_heads=3)
SYNTHETIC_VIT_ARCH = dict(model="vit_tiny_patch16_224", patch_size=4, depth=6, embed_dim=96, num_heads=3)
SYNTHETIC_ARCHS = (SYNTHETIC_ARCH, SYNTHETIC_VIT_ARCH)


def option_differences(saved: dict, wanted: dict, ignore=()) -> dict[str, tuple]:
    """Options whose ``wanted`` value differs from the ``saved`` one: {name: (saved, wanted)}.

    An option missing from ``saved`` (written before the option existed) had the value it had
    when it was added (:data:`WHEN_ADDED`, else its default). An option whose None stands for a
    value derived from other options (:data:`DERIVED`) is compared by that value:
    ``source_size`` None and 256 at a 64 px input are the same run.
    """
    defaults = {f.name: WHEN_ADDED.get(f.name, _default(f)) for f in fields(TrainConfig)}
    old = {k: saved.get(k, defaults.get(k)) for k in {*wanted, "img_size", "crop"}}
    new = {"img_size": defaults["img_size"], "crop": defaults["crop"], **wanted}
    for d in (old, new):
        for k, rule in DERIVED.items():
            if k in d and d[k] is None and d.get("img_size") is not None:
                d[k] = rule(d)
    return {k: (saved.get(k, defaults.get(k)), v) for k, v in wanted.items()
            if k not in ignore and old[k] != new[k]}


#: Options whose None means a value derived from the others, the one rule that
#: fgnb.loaders.source_size, fgnb.data.PairedTransform and fgnb.evaluation.selection_mode apply:
#: the source view is 4 x the input, the eval resize 8/7 of it; the checkpoint is chosen on the
#: inference mode that uses the crop when the run trains on crops, else on the deepest head.
DERIVED = {"source_size": lambda o: 4 * o["img_size"], "resize_size": lambda o: int(round(o["img_size"] * 8 / 7)),
           "select_by": lambda o: "crop" if o.get("crop") else "last"}

def selected_on(options: dict) -> str:
    """The inference mode whose validation top-1 picks a run's checkpoint, from its options (a
    config's dict, or a study's base options with a variant's): ``select_by``, or its derived value."""
    return options.get("select_by") or DERIVED["select_by"](options)


#: The value an option had when it was added, where its default changed since: a config saved
#: before the option existed (a recording, a shipped backbone's metadata, a study's run folder)
#: ran with this value, not with today's default. (Issue 28 moved the crop defaults from the
#: text's literal reading to the box chosen on validation.)
WHEN_ADDED = {"crop_block": None, "min_crop": 0, "crop_margin": 0.0, "select_by": "last", "attention_from": "input"}


def _default(f: dataclasses.Field):
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


#: What an option is for, tagged once in its metadata (``opt(role=)``): ``student``, the options the
#: chapters teach; ``experiment``, controls that only the ablations set (no chapter does), listed
#: under their own heading in ``--help``; ``setup``, where and how a run is done (folders, devices,
#: loaders, progress): the options a resume may change (:data:`fgnb.checkpoints.RESUMABLE`) and a
#: study ignores when it compares a finished run with the one it asks for.
ROLES = ("student", "experiment", "setup")


def opt(default, help: str, choices: tuple | None = None, role: str = "student"):
    if role not in ROLES:
        raise ValueError(f"role={role!r} is not valid: choose one of {', '.join(ROLES)}")
    meta = {"help": help, "role": role}
    if choices is not None:
        meta["choices"] = choices
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


def options_tagged(role: str) -> frozenset[str]:
    """The names of the options whose ``role`` (:data:`ROLES`) is ``role``."""
    if role not in ROLES:
        raise ValueError(f"role={role!r} is not valid: choose one of {', '.join(ROLES)}")
    return frozenset(f.name for f in fields(TrainConfig) if f.metadata["role"] == role)


def _check_type(name: str, kind: str, v) -> None:
    """``kind``: the annotation, e.g. 'int | None', 'float', 'bool', 'str', 'int | list'."""
    if v is None:
        if "None" not in kind:
            raise ConfigError(f"{name} may not be None")
        return
    if kind.startswith("bool"):
        if not isinstance(v, bool):
            raise ConfigError(f"{name} must be true or false, got {v!r}")
    elif kind.startswith("int | str") and isinstance(v, str):
        if v != "auto":
            raise ConfigError(f"{name} must be a whole number or auto, got {v!r}")
    elif kind.startswith("int"):
        if isinstance(v, bool) or not isinstance(v, (int, list) if "list" in kind else int):
            raise ConfigError(f"{name} must be a whole number{' or a list' if 'list' in kind else ''}, got {v!r}")
    elif kind.startswith("float"):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ConfigError(f"{name} must be a finite number, got {v!r}")
    elif kind.startswith("str") and not isinstance(v, str):
        raise ConfigError(f"{name} must be a string, got {v!r}")


#: (options, test, rule): numeric ranges (None always passes: "the default")
_RANGES = (
    (("img_size", "epochs", "batch_size", "source_size", "resize_size", "synthetic_classes",
      "synthetic_train_per_class", "synthetic_test_per_class", "patch_size", "depth", "embed_dim", "num_heads",
      "head_hidden", "limit_batches", "lr", "lr_batch", "threshold_scale", "clip_grad", "steps_per_batch"), lambda v: v > 0, "> 0"),
    (("synthetic_difficulty", "synthetic_first_class", "min_crop", "weight_decay", "warmup_epochs", "workers",
      "crop_warmup_epochs", "crop_block"),
     lambda v: v >= 0, ">= 0"),
    (("val_fraction", "momentum", "label_smoothing"), lambda v: 0 <= v < 1, "in [0, 1)"),
    (("crop_weight",), lambda v: 0 <= v <= 1, "in [0, 1]"),
    (("crop_margin",), lambda v: 0 <= v <= 4, "in [0, 4] (a share of the box's side)"),
    (("seed", "split_seed"), lambda v: 0 <= v < 2**32, "in 0..2**32-1"),
)


@dataclass
class TrainConfig:
    # data
    dataset: str = opt("synthetic", "dataset name", ("synthetic", "cub", "folder", "aircraft", "flowers", "pets"))
    data_root: str | None = opt(None, "dataset folder (synthetic: generated into ~/.cache/fgnb or $FGNB_DATA if unset)", role="setup")
    val_fraction: float = opt(0.1, "share of the train split held out for validation (model selection never reads test)")
    split_seed: int = opt(0, "seed of the validation split; fixed across training seeds, so runs with other seeds train and select on the same images")
    source_size: int | None = opt(None, "resolution of the source view that crops are cut from with crop_from=source (default 4x img_size)")
    resize_size: int | None = opt(None, "resize before the random/centre crop (default img_size * 8/7; 600 for CUB at 448)")
    synthetic_classes: int | None = opt(None, "synthetic dataset: number of classes (default: the generator's)")
    synthetic_train_per_class: int | None = opt(None, "synthetic dataset: train images per class (default: the generator's)")
    synthetic_test_per_class: int | None = opt(None, "synthetic dataset: test images per class (default: the generator's)")
    synthetic_difficulty: float | None = opt(None, "synthetic dataset: clutter/noise level, smaller is easier (default: the generator's)")
    synthetic_first_class: int | None = opt(None, "synthetic dataset: first of the 30 species in the set, from 0 (default: 0)")
    on_error: str = opt("raise", "an unreadable image file: raise an error naming it, or skip it (the run counts and lists "
                                 "skipped files in metrics, test_metrics.json and skipped.txt)", ("raise", "skip"), role="setup")
    verify_data: bool = opt(False, "open every image once before training, so that a bad file stops the run at once "
                                   "(on_error=raise) or is left out (skip) instead of failing in a later epoch", role="setup")
    # model
    # The defaults are the CPU profile: the text's plain ViT (a linear projection of 4 x 4 pixel
    # patches: 8 x 8 tokens at 32 px, where the eye ring is under 3 px and the crop from the
    # 128 px source has detail to recover), small, pre-trained on other species. (SYNTHETIC_ARCH,
    # timm's hybrid, is the model of chapter 8's ablation and chapter 9's sweep.)
    model: str = opt(SYNTHETIC_VIT_ARCH["model"], "timm ViT name")
    img_size: int = opt(32, "model input size in pixels (multiple of the patch size)")
    patch_size: int | None = opt(SYNTHETIC_VIT_ARCH["patch_size"], "patch size of the patch embedding (None: the model's own); a hybrid ViT patchifies its stem's feature map")
    depth: int | None = opt(SYNTHETIC_VIT_ARCH["depth"], "number of blocks (None: the model's own)")
    embed_dim: int | None = opt(SYNTHETIC_VIT_ARCH["embed_dim"], "token width D (None: the model's own)")
    num_heads: int | None = opt(SYNTHETIC_VIT_ARCH["num_heads"], "attention heads H (None: the model's own)")
    pretrained: bool = opt(False, "load the model's pretrained weights through timm (network)")
    weights: str | None = opt(SYNTHETIC, f"local timm checkpoint (.pth/.safetensors) to start from, offline; {SYNTHETIC!r}: the "
                                         "shipped backbone pre-trained on other synthetic species whose architecture matches the "
                                         "model (the default plain ViT of fgnb/weights/pretrain_synthetic_vit.yaml, or the hybrid); "
                                         "None: from scratch")
    targets: int | list = opt(3, "target layers: a count from the end, or a list of block indices")
    head_hidden: int | None = opt(None, "hidden width of each MLP head (default: embed dim)")
    # method
    strategy: str = opt("progressive", "how the head losses update the network", ("last", "summed", "progressive"))
    order: str = opt("shallow_first", "progressive: order of the per-layer updates", ("shallow_first", "deep_first"), role="experiment")
    reforward: bool = opt(True, "progressive: re-run the forward before every stage (False: all gradients at one point)", role="experiment")
    crop: bool = opt(False, "train on attention crops too (the multi-scale module)")
    crop_update: str = opt("joint", "how crops are trained: joint = each stage's step also takes the crop view's loss (R steps "
                                    "per batch, as without crops); separate = extra strategy steps on the crops", ("joint", "separate"), role="experiment")
    crop_weight: float = opt(0.5, "joint crop update: weight w of the crop view's loss, (1 - w) CE(global) + w CE(crop); "
                                  "0.5 = their mean, 1 = the crop view alone", role="experiment")
    crop_boxes: str = opt("attention", "where the crop box comes from: the attention (the method), the ground-truth part box "
                                       "(oracle, an upper bound) or a random box of the attention box's size (a lower bound)",
                          ("attention", "oracle", "random"))
    crop_attention: str = opt("last", "which attention drives the crop", ("last", "cumulative", "per_layer", "rollout", "concentrated"))
    crop_block: int | None = opt(0, "the block whose attention the crop reads (0-based; last: its head product; cumulative, "
                                    "rollout: the product from block 0 up to it; concentrated: the sharpest block up to it); "
                                    "0, the default: the first block, where the CPU profile's attention sits on the head "
                                    "(chosen on validation); None: the deepest target layer, the text's literal reading")
    box_rule: str = opt("all", "marked patches -> box", ("all", "largest"))
    threshold_scale: float = opt(1.0, "mark patches whose product exceeds scale x mean")
    crop_from: str = opt("source", "cut the crop from the higher-resolution source image (the text) or the model input", ("source", "input"))
    attention_from: str = opt("source", "read the crop's attention on the source view the crop is cut from, at its resolution "
                                        "(a finer patch grid, the position embedding resampled as timm's dynamic_img_size; "
                                        "chosen on validation), or on the model input (the text)", ("source", "input"))
    min_crop: int = opt(8, "smallest crop side in input pixels (0: no minimum, the text; 8: a quarter of the default "
                           "32 px input, the share the box screen chose on validation for the 64 px hybrid, 16 px)")
    crop_margin: float = opt(0.25, "context around the box: grow each side by this share of the box's width/height "
                                   "(0: none, the text; 0.25 chosen on validation)")
    crop_warmup_epochs: int = opt(0, "train on crops only from this epoch on (0-based; the model localises first)", role="experiment")
    steps_per_batch: int = opt(1, "optimizer steps per batch, each a new forward on the same batch (an equal-budget control: "
                                  "last with 3 makes as many steps as progressive with R = 3)", role="experiment")
    select_by: str | None = opt(None, "inference mode that picks the best checkpoint on validation (None: crop when the "
                                      "run trains on crops, else last)", ("last", "mean", "crop", "crop_only"), role="experiment")
    # optimisation
    epochs: int = opt(6, "training epochs")
    batch_size: int | str = opt(32, "images per batch (global, over all processes); auto: the largest batch whose step fits "
                                    "the CUDA GPU's free memory (fgnb.memory plans it), with lr scaled linearly from lr_batch")
    optimizer: str = opt("adamw", "optimizer", ("adamw", "sgd"))
    lr: float = opt(3e-4, "peak learning rate")
    lr_batch: int | None = opt(None, "the batch size lr is meant for; batch_size=auto trains with lr x batch / lr_batch")
    momentum: float = opt(0.9, "SGD momentum")
    weight_decay: float = opt(0.05, "weight decay")
    warmup_epochs: float = opt(0.5, "linear warm-up, in epochs, then cosine decay to zero")
    clip_grad: float | None = opt(1.0, "max gradient norm (None: no clipping)")
    label_smoothing: float = opt(0.0, "label smoothing of the cross-entropy")
    amp: str = opt("auto", "mixed precision: auto = bf16 on GPUs with native bf16 (CUDA compute capability >= 8.0), "
                           "fp16 with a gradient scaler below (T4, V100), off on CPU/MPS; bf16/fp16 force it (CPU: torch's "
                           "CPU autocast, slow)", ("auto", "bf16", "fp16", "off"))
    device: str = opt("auto", "auto (cuda, mps, cpu) or a torch device string", role="setup")
    seed: int = opt(0, "random seed")
    workers: int | None = opt(None, "DataLoader worker processes (None: fgnb.devices.default_workers, 1 on a CPU with 2+ "
                                    "cores, min(4, cores - 1) beside a GPU; 0: load in the main process). The numbers "
                                    "do not depend on it: each image's augmentation is seeded by (seed, epoch, index)", role="setup")
    cache_images: str = opt("auto", "keep decoded images in memory after the first epoch (auto: when the set's decoded "
                                    "images fit in 1 GiB per process)", ("auto", "on", "off"), role="setup")
    limit_batches: int | None = opt(None, "stop each epoch after this many batches (quick runs and tests)")
    # output
    out: str = opt("runs/default", "run folder: checkpoints, metrics.csv/jsonl, config.yaml", role="setup")
    download: bool = opt(False, "fetch the data set into data_root if it is not there (cub: the official 1.1 GB "
                                "archive, MD5-checked, resumable; aircraft, flowers, pets: torchvision's download)", role="setup")
    resume: bool = opt(False, "continue the run in --out from its last checkpoint", role="setup")
    checkpoint_minutes: float | None = opt(None, "also write last.pt every this many minutes inside an epoch, so a "
                                                 "disconnect loses at most that much (None: 10 on CUDA, off on CPU/MPS; 0: off)", role="setup")
    progress: bool = opt(True, "show progress bars", role="setup")

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
            _check_type(f.name, str(f.type), getattr(self, f.name))
        for f in fields(self):
            choices = f.metadata.get("choices")
            v = getattr(self, f.name)
            if choices and v is not None and v not in choices:
                raise ConfigError(f"{f.name}={v!r} is not valid: choose one of {', '.join(map(str, choices))}")
        for names, ok, rule in _RANGES:
            for name in names:
                v = getattr(self, name)
                if v is not None and v != "auto" and not ok(v):
                    raise ConfigError(f"{name} must be {rule}, got {v!r}")
        for name in ("data_root", "weights", "model", "out", "device"):
            if getattr(self, name) == "":
                raise ConfigError(f"{name} is an empty string (use None for the default)" if name in ("data_root", "weights")
                                  else f"{name} is an empty string")
        if self.resize_size is not None and self.resize_size < self.img_size:
            raise ConfigError(f"resize_size={self.resize_size} is smaller than img_size={self.img_size}: the random/centre "
                              "crop of img_size is cut from the resized image")
        if self.patch_size is not None and self.img_size % self.patch_size:
            raise ConfigError(
                f"img_size={self.img_size} is not divisible by patch_size={self.patch_size}: "
                f"use a multiple of {self.patch_size}, e.g. {self.img_size // self.patch_size * self.patch_size or self.patch_size}"
            )
        if self.embed_dim is not None and self.num_heads is not None and self.embed_dim % self.num_heads:
            raise ConfigError(f"embed_dim={self.embed_dim} is not divisible by num_heads={self.num_heads}")
        self._check_targets()
        self._check_names()
        if self.pretrained and self.weights is not None:
            raise ConfigError(f"pretrained=True downloads {self.model}'s own weights and weights={self.weights!r} "
                              "loads a file: choose one (set weights to None to download)")
        if self.weights == SYNTHETIC and self.synthetic_arch() is None:
            # name the differences from the shipped architecture of the same model (else the default's)
            arch = next((a for a in SYNTHETIC_ARCHS if a["model"] == self.model), SYNTHETIC_VIT_ARCH)
            wrong = {k: getattr(self, k) for k, v in arch.items() if getattr(self, k) != v}
            shipped = " or ".join("(" + ", ".join(f"{k}={v!r}" for k, v in a.items()) + ")" for a in SYNTHETIC_ARCHS)
            raise ConfigError(
                f"weights={SYNTHETIC!r} is the pre-trained backbone of {shipped}, but this config has "
                + ", ".join(f"{k}={v!r}" for k, v in wrong.items())
                + "; set weights to None (train from scratch), pretrained=True, or a weights file of that model")
        if self.download and self.dataset not in DOWNLOADABLE:
            raise ConfigError(f"download=True fetches {', '.join(DOWNLOADABLE)}; dataset={self.dataset!r} "
                              "is generated locally (synthetic) or is your own folder (folder)")
        if self.checkpoint_minutes is not None and not self.checkpoint_minutes >= 0:
            raise ConfigError(f"checkpoint_minutes must be >= 0 (0: off), got {self.checkpoint_minutes}")
        if self.crop_block is not None:
            if self.crop_attention == "per_layer":
                raise ConfigError(f"crop_block={self.crop_block} with crop_attention='per_layer': per_layer reads every "
                                  "target layer; set crop_block to None (--crop-block none), or give it with last, "
                                  "cumulative, rollout or concentrated")
            if self.depth is not None and self.crop_block >= self.depth:
                raise ConfigError(f"crop_block={self.crop_block}: the model has blocks 0..{self.depth - 1}")
        self._checked = self._values()
        return self

    def _values(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, default=repr)

    def checked(self) -> "TrainConfig":
        """``self``, validated again only if an option was set after its last validation (every
        config is validated when it is made): a run validates its options once."""
        return self if getattr(self, "_checked", None) == self._values() else self.validate()

    def synthetic_arch(self) -> dict | None:
        """The shipped backbone architecture (an entry of ``SYNTHETIC_ARCHS``) this model has, or None."""
        return next((a for a in SYNTHETIC_ARCHS if all(getattr(self, k) == v for k, v in a.items())), None)

    def _check_targets(self) -> None:
        t = self.targets
        if isinstance(t, list) and not all(isinstance(i, int) and not isinstance(i, bool) for i in t):
            raise ConfigError(f"targets={t!r}: a list of targets holds block indices (whole numbers)")
        if isinstance(t, int) and t < 1:
            raise ConfigError(f"targets={t!r}: give a count >= 1 or a list of block indices")
        if self.depth is not None:  # otherwise the model's own depth is checked when it is built
            from .model import resolve_targets

            try:
                resolve_targets(t, self.depth)
            except ValueError as e:
                raise ConfigError(f"targets={t!r} with depth={self.depth}: {e}") from None
        elif isinstance(t, list) and (not t or len(set(t)) != len(t)):
            raise ConfigError(f"targets={t!r}: name at least one block, each once")

    def _check_names(self) -> None:
        """The model name, the device and the synthetic species exist."""
        from .model import check_model_name

        try:
            check_model_name(self.model)
        except ValueError as e:
            raise ConfigError(f"model={self.model!r}: {e}") from None
        if self.device != "auto":
            import torch

            try:
                torch.device(self.device)
            except (RuntimeError, ValueError) as e:
                raise ConfigError(f"device={self.device!r} is not a torch device (use auto, cpu, cuda, cuda:1, mps): {e}") from None
        if self.synthetic_classes is not None or self.synthetic_first_class is not None:
            from .synthetic import MAX_CLASSES

            first = self.synthetic_first_class or 0
            if first >= MAX_CLASSES:
                raise ConfigError(f"synthetic_first_class must be in 0..{MAX_CLASSES - 1}, got {first}")
            if self.synthetic_classes is not None and self.synthetic_classes > MAX_CLASSES - first:
                raise ConfigError(f"synthetic_classes={self.synthetic_classes}: the synthetic set has {MAX_CLASSES} species, "
                                  f"{MAX_CLASSES - first} from synthetic_first_class={first}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes) -> "TrainConfig":
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            raise ConfigError(f"unknown option(s) {sorted(unknown)}; valid options: {', '.join(f.name for f in fields(self))}")
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config", saved: bool = False) -> "TrainConfig":
        """Options from a dict. ``saved=True``: the complete config a run wrote (a checkpoint's), where
        an option it lacks did not exist yet and takes its value when added (:data:`WHEN_ADDED`), not
        today's default; a user's file or flags (``saved=False``) leave the rest at the defaults."""
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ConfigError(f"{source}: unknown option(s) {sorted(unknown)}; valid options: {', '.join(sorted(names))}")
        if saved:
            d = {**{k: v for k, v in WHEN_ADDED.items() if k not in d}, **d}
        return cls(**d)


def load_config(path: str | os.PathLike) -> TrainConfig:
    """Read a YAML (or JSON) file of options."""
    return TrainConfig.from_dict(_read_options(path), source=os.fspath(path))


def _read_options(path: str | os.PathLike) -> dict:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file not found: {path}")
    with open(path) as f:
        data = yaml.safe_load(f) if not path.endswith(".json") else json.load(f)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of option: value, got {type(data).__name__}")
    return data


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


#: ``--help``'s headings, one per role
_HEADINGS = {"student": "options", "experiment": "experiment options (controls that only the ablations set)",
             "setup": "run set-up (where and how the run is done; a resume may change these)"}


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One ``--option VALUE`` per field, grouped by role; defaults come from a ``--config`` file if given."""
    parser.add_argument("--config", help="YAML file of options; flags given on the command line win")
    groups = {role: parser.add_argument_group(title) for role, title in _HEADINGS.items()}
    for f in fields(TrainConfig):
        default = _default(f)
        choices = f.metadata.get("choices")
        help_text = f.metadata["help"] + f" (default: {default!r}" + (f"; choices: {', '.join(choices)})" if choices else ")")
        groups[f.metadata["role"]].add_argument(
            f"--{f.name.replace('_', '-')}",
            dest=f.name,
            metavar=f.name.upper() if not isinstance(default, bool) else "BOOL",
            type=lambda s, d=default, n=f.name: _parse_value(s, d, n),
            default=argparse.SUPPRESS,
            help=help_text.replace("%", "%%"),
        )


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The ``--config`` file's options, then the flags', made into one config (validated once)."""
    path = getattr(args, "config", None)
    options = _read_options(path) if path else {}
    options.update({f.name: getattr(args, f.name) for f in fields(TrainConfig) if hasattr(args, f.name)})
    return TrainConfig.from_dict(options, source=os.fspath(path) if path else "command line")
