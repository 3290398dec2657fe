"""The training loop, read top to bottom: data, model, optimizer, epochs, checkpoints.

Chapters 5 to 8 run it. One call, :func:`train`, does a whole run and never loses one:
every epoch ends with an atomic checkpoint (temp file + rename) and metrics files, a
NaN/inf loss stops the run with the last good checkpoint kept, and ``resume=True``
continues so that the final weights equal those of an uninterrupted run (on CPU,
same seed). Under ``torchrun`` the same code trains with one process per device
(see :mod:`fgnb.distributed`).
"""
from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import pathlib
import random
import tempfile
import time
from typing import Any, Callable

import numpy as np
import timm
import torch
import torch.nn.functional as F
import yaml
from tqdm.auto import tqdm

from . import distributed as dist
from .config import DERIVED, SYNTHETIC, ConfigError, TrainConfig, option_differences
from .crop import attention_boxes, crop_and_resize, crop_attention_layers, expand_boxes, random_boxes_like, scale_boxes
from .data import build_dataset
from .memory import check_fits
from .model import FGViT, create_model
from .strategies import NonFiniteLossError, StepContext, make_strategy

__all__ = [
    "train",
    "evaluate",
    "select_device",
    "autocast_for",
    "amp_dtype",
    "default_workers",
    "loader_workers",
    "build_model",
    "build_data",
    "save_checkpoint",
    "load_checkpoint",
    "load_model",
    "atomic_write",
    "box_iou",
    "crop_views",
    "dataset_for",
    "INFERENCE_MODES",
]

INFERENCE_MODES = ("last", "mean", "crop", "crop_only")
AMP_CHOICES = ("auto", "bf16", "fp16", "off")
CHECKPOINT_VERSION = 1
_CHECKPOINT_KEYS = ("version", "model", "config", "num_classes")
# Options that may change when a run is resumed; all others must match the checkpoint.
RESUMABLE = {"resume", "progress", "workers", "device", "out", "data_root", "verify_data", "on_error",
             "checkpoint_minutes", "download", "cache_images"}


# ----------------------------------------------------------------------------- devices
def select_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA if present, else Apple's MPS, else the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            # LOCAL_RANK (set by torchrun, 0 otherwise): one GPU per process.
            return torch.device("cuda", dist.local_rank())
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        return torch.device(name)
    except RuntimeError as e:
        raise ConfigError(f"device={name!r} is not a torch device (use auto, cpu, cuda, cuda:1, mps): {e}") from e


def default_workers(device_type: str, cores: int | None = None, processes: int = 1) -> int:
    """DataLoader workers for ``workers=None``: what keeps the data share of an epoch small.

    CPU: 1 worker with 2 or more cores, else 0. On the CPU the model's step already uses
    every core, so one worker is enough to prepare the next batch during the step (the data
    share of the ablation's CPU epoch: 27 % with 0 workers, 2.9 % with 1, bench/speed.py).
    GPU (cuda, mps): ``min(4, cores - 1)`` per process; the step is so fast that the batch is
    the bottleneck (on an H200 the epoch of the same set-up waited 44 % of its time for data
    with 0 workers, 68 % with 1, 42 % with 2, 21 % with 4 and 18 % with 8). ``cores``: the
    CPUs this process may use (default: its affinity), shared by ``processes`` on one machine.
    """
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    cores = max(1, cores // max(1, processes))
    if device_type == "cpu":
        return 1 if cores >= 2 else 0
    return max(0, min(4, cores - 1))


def loader_workers(cfg: TrainConfig, device_type: str) -> int:
    """A run's DataLoader workers: ``cfg.workers``, or :func:`default_workers` when it is None.
    The run's numbers are the same whatever the count (:class:`SeededItems`)."""
    if cfg.workers is not None:
        return cfg.workers
    return default_workers(device_type, processes=dist.local_world_size())


def amp_dtype(device_type: str, amp: str = "auto", capability: tuple[int, int] | None = None) -> torch.dtype | None:
    """The autocast dtype for ``amp`` on a device, or ``None`` (full float32).

    ``auto``: bf16 only where the GPU computes it natively (CUDA compute capability >= 8.0:
    A100, L4, H100, RTX 30xx+), fp16 with a gradient scaler below that (a T4 is 7.5: its
    ``torch.cuda.is_bf16_supported()`` is True through emulation, and slow), off on
    CPU/MPS. ``bf16``/``fp16`` force that dtype (on the CPU, torch's CPU autocast: slow,
    for tests); ``off``: float32. ``capability`` is the CUDA device's (major, minor).
    """
    if amp not in AMP_CHOICES:
        raise ConfigError(f"amp={amp!r} is not valid: choose one of {', '.join(AMP_CHOICES)}")
    if amp == "off" or (amp == "auto" and device_type not in ("cuda", "cpu")):
        return None
    if device_type not in ("cuda", "cpu"):
        raise ConfigError(f"amp={amp!r} on device {device_type!r}: fgnb does mixed precision on cuda (and cpu, for "
                          "tests) only; use amp=auto or off there")
    if amp == "auto":
        if device_type != "cuda":
            return None
        return torch.bfloat16 if capability is not None and tuple(capability) >= (8, 0) else torch.float16
    return torch.bfloat16 if amp == "bf16" else torch.float16


def autocast_for(device: torch.device, amp: str) -> tuple[Callable, torch.amp.GradScaler | None]:
    """(autocast context factory, GradScaler or None) for ``amp`` on ``device`` (see :func:`amp_dtype`)."""
    capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
    dtype = amp_dtype(device.type, amp, capability)
    if dtype is None:
        return contextlib.nullcontext, None
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    return (lambda: torch.autocast(device.type, dtype=dtype)), scaler


# ----------------------------------------------------------------------------- model & data
def build_model(cfg: TrainConfig, num_classes: int) -> FGViT:
    kwargs = {}
    if cfg.patch_size is not None:
        kwargs["patch_size"] = cfg.patch_size
    for name in ("depth", "embed_dim", "num_heads"):
        if getattr(cfg, name) is not None:
            kwargs[name] = getattr(cfg, name)
    targets = cfg.targets if isinstance(cfg.targets, int) else list(cfg.targets)
    weights = cfg.weights
    if weights == SYNTHETIC:
        from .pretrained import synthetic_weights

        weights = synthetic_weights(cfg)  # the shipped file of this model's architecture
    return create_model(
        cfg.model, num_classes=num_classes, targets=targets, pretrained=cfg.pretrained, weights=weights,
        img_size=cfg.img_size, head_hidden=cfg.head_hidden, **kwargs,
    )


def normalisation(model_name: str) -> tuple[tuple, tuple]:
    """(mean, std) the named timm weights were trained with (their pretrained_cfg).

    Read from timm's registry, so the data can be built before the model (which needs
    the data's class count).
    """
    from .model import _check_model_name

    _check_model_name(model_name)
    pc = timm.models.get_pretrained_cfg(model_name)
    if pc is None:
        pc = timm.models.get_pretrained_cfg(model_name.split(".")[0])
    mean = tuple(pc.mean) if pc is not None else timm.data.IMAGENET_DEFAULT_MEAN
    std = tuple(pc.std) if pc is not None else timm.data.IMAGENET_DEFAULT_STD
    return mean, std


def _synthetic_params(cfg: TrainConfig) -> dict:
    named = {
        "num_classes": cfg.synthetic_classes,
        "train_per_class": cfg.synthetic_train_per_class,
        "test_per_class": cfg.synthetic_test_per_class,
        "difficulty": cfg.synthetic_difficulty,
        "first_class": cfg.synthetic_first_class,
    }
    return {k: v for k, v in named.items() if v is not None}


def source_size(cfg: TrainConfig) -> int | None:
    """Side of the source view crops are cut from (``crop_from='source'``), else None."""
    return (cfg.source_size or DERIVED["source_size"](cfg.img_size)) if cfg.crop_from == "source" else None


def dataset_for(cfg: TrainConfig, split: str, mean, std, root: str | None = None):
    """One split of the run's data set, as training built it (``root``: where it was
    downloaded, default ``cfg.data_root``).

    The validation split is carved with ``split_seed``, never with the training ``seed``:
    runs that differ only in their seed train and select on the same images.
    """
    # The source view is rendered where crops are cut from it: every evaluation (the crop
    # inference modes) and training with crops. (It costs more than the input view itself.)
    source = source_size(cfg) if split != "train" or cfg.crop else None
    return build_dataset(
        cfg.dataset, split=split, root=root or cfg.data_root, download=cfg.download, image_size=cfg.img_size,
        source_size=source, mean=mean, std=std, resize_size=cfg.resize_size, val_fraction=cfg.val_fraction,
        seed=cfg.split_seed, on_error=cfg.on_error,
        synthetic_params=_synthetic_params(cfg) if cfg.dataset == "synthetic" else None,
    )


def build_data(cfg: TrainConfig, mean, std, workers: int | None = None) -> dict[str, Any]:
    """train / val / test data sets with the FGVC transform and the weights' normalisation.
    ``workers``: the loader processes that will read them (None: ``cfg.workers``, or 0)."""
    if workers is None:
        workers = cfg.workers or 0
    root = cfg.data_root
    if cfg.download and cfg.dataset == "cub":
        from .data import download_cub

        with dist.main_first():  # rank 0 downloads, the others wait and find it there
            root = str(download_cub(root, progress=cfg.progress and dist.is_main()))
    with dist.main_first():  # rank 0 generates the synthetic set, the others wait and read it
        train_ds = dataset_for(cfg, "train", mean, std, root)
    val_ds = dataset_for(cfg, "val", mean, std, root) if cfg.val_fraction > 0 else None
    data = {"train": train_ds, "val": val_ds, "test": dataset_for(cfg, "test", mean, std, root)}
    if cfg.cache_images != "off":
        for ds in data.values():
            if ds is not None and hasattr(ds, "cache_images"):
                if ds.cache_images(float("inf") if cfg.cache_images == "on" else 1 << 30) and workers > 0:
                    ds.fill_cache()  # workers are forked every epoch: they inherit the filled cache
    return data


class SeededItems(torch.utils.data.Dataset):
    """Each item's random augmentation is seeded by (seed, epoch, index).

    So an item looks the same whichever process or worker loads it and whether the
    run was resumed: the key to bit-equal resume and to 1-process == N-process tests.
    """

    def __init__(self, dataset, seed: int):
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(((self.seed * 1_000_003 + self.epoch) * 10_000_019 + i) % 2**63)  # any valid seed
            return self.dataset[i]


def _epoch_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The global batches of one epoch: a seeded permutation cut into full batches."""
    g = torch.Generator().manual_seed(seed * 7919 + epoch)
    perm = torch.randperm(n, generator=g).tolist()
    return [perm[i : i + batch_size] for i in range(0, n - batch_size + 1, batch_size)]


class EpochBatchSampler(torch.utils.data.Sampler):
    """Yields this rank's share of every global batch (rank r takes items r, r+W, ...)."""

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1):
        if batch_size % world:
            raise ConfigError(f"batch_size={batch_size} must be divisible by the number of processes ({world})")
        if n < batch_size:
            raise ConfigError(f"batch_size={batch_size} is larger than the training set ({n} images)")
        self.n, self.batch_size, self.seed, self.rank, self.world, self.epoch = n, batch_size, seed, rank, world, 0
        self.skip = 0  # batches of this epoch already trained (a resume inside an epoch)

    def __iter__(self):
        for b in _epoch_batches(self.n, self.batch_size, self.seed, self.epoch)[self.skip :]:
            yield b[self.rank :: self.world]

    def __len__(self):
        return self.n // self.batch_size


def _eval_loader(ds, cfg: TrainConfig, workers: int):
    # Shard without padding, so gathered counts are exact.
    idx = list(range(dist.rank(), len(ds), dist.world_size()))
    return torch.utils.data.DataLoader(
        torch.utils.data.Subset(ds, idx), batch_size=max(1, cfg.batch_size // dist.world_size()),
        shuffle=False, num_workers=workers,
    )


# ----------------------------------------------------------------------------- optimisation
def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        # Biases, norms, tokens and position embeddings take no weight decay (as timm).
        (no_decay if p.ndim <= 1 or n.endswith(("cls_token", "pos_embed", "reg_token")) else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def warmup_cosine(step: int, total: int, warmup: int) -> float:
    """LR factor: linear warm-up to 1 over ``warmup`` steps, then cosine to 0 at ``total``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


# ----------------------------------------------------------------------------- checkpoints
def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """``write(tmp)`` a temp file in the same folder, then rename it to ``path``: a crash
    never leaves half a file, and the old file stays until the new one is complete."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    mask = os.umask(0)
    os.umask(mask)
    try:
        write(tmp)
        # mkstemp makes 0600 (and some writers replace the file): give the usual permissions of a new file
        os.chmod(tmp, 0o666 & ~mask)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    atomic_write(pathlib.Path(path), lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Load with ``weights_only=True`` (no code runs from the file); errors name the file."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise ValueError(f"{path} is not a readable fgnb checkpoint (truncated or corrupt, or not written by "
                         f"torch.save): {e}") from e
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not an fgnb checkpoint (a dict with "
                         f"{', '.join(_CHECKPOINT_KEYS)}, written by fgnb train)")
    if state and "model" not in state and all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} is a bare state dict ({len(state)} tensors), not an fgnb checkpoint "
                         f"(a dict with {', '.join(_CHECKPOINT_KEYS)}, written by fgnb train); to start "
                         "from a backbone's timm weights pass the file as weights=")
    missing = [k for k in _CHECKPOINT_KEYS if k not in state]
    if missing:
        raise ValueError(f"{path} is not an fgnb checkpoint: it lacks {missing} (it has {sorted(map(str, state))[:8]})")
    version = state.get("version", 1)
    if not isinstance(version, int) or version > CHECKPOINT_VERSION:
        raise ValueError(f"{path} was written by a newer fgnb (checkpoint version {version!r}; this fgnb reads "
                         f"versions up to {CHECKPOINT_VERSION}): upgrade fgnb")
    if not isinstance(state["config"], dict) or not isinstance(state["model"], dict):
        raise ValueError(f"{path} is not an fgnb checkpoint: 'config' and 'model' must be dicts")
    return state


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[FGViT, TrainConfig, dict]:
    """Rebuild the model of a checkpoint: (model in eval mode, its config, the checkpoint)."""
    state = load_checkpoint(path)
    try:
        cfg = TrainConfig.from_dict(state["config"], source=str(path))
    except (ConfigError, TypeError) as e:
        raise ConfigError(e if str(path) in str(e) else f"{path}: the checkpoint's options are not valid: {e}") from None
    model = build_model(cfg.replace(pretrained=False, weights=None), state["num_classes"])
    _load_weights(model, state["model"], path)
    return model.to(device).eval(), cfg, state


def _load_weights(model: FGViT, weights: dict, path) -> None:
    head = weights.get("heads.0.fc2.weight")
    if head is not None and head.shape[0] != model.num_classes:
        raise ValueError(
            f"{path}: the checkpoint's heads have {head.shape[0]} classes but the model/data set has "
            f"{model.num_classes}; use a checkpoint trained on this data set"
        )
    own = model.state_dict()
    show = lambda ks: f"{len(ks)} ({', '.join(ks[:3])}{', ...' if len(ks) > 3 else ''})"
    missing, unexpected = [k for k in own if k not in weights], [k for k in weights if k not in own]
    shapes = [f"{k}: checkpoint {tuple(weights[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in weights and getattr(weights[k], "shape", None) != own[k].shape]
    problems = ([f"missing {show(missing)}"] if missing else []) + ([f"unexpected {show(unexpected)}"] if unexpected else [])
    problems += [f"shape mismatch {show(shapes)}"] if shapes else []
    if problems:
        raise ValueError(f"{path}: the weights do not fit the model its options describe ({type(model.vit).__name__}, "
                         f"depth {model.depth}, {model.num_classes} classes): " + "; ".join(problems)
                         + ". Is it a checkpoint of another architecture, or were its weights replaced?")
    model.load_state_dict(weights)


# ----------------------------------------------------------------------------- evaluation
def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of matching rows of two (B, 4) xyxy box tensors."""
    lt = torch.maximum(a[:, :2], b[:, :2])
    rb = torch.minimum(a[:, 2:], b[:, 2:])
    inter = (rb - lt).clamp_min(0).prod(dim=1)
    area = lambda x: (x[:, 2:] - x[:, :2]).clamp_min(0).prod(dim=1)
    return inter / (area(a) + area(b) - inter).clamp_min(1e-9)


@torch.no_grad()
def crop_views(model: FGViT, batch: dict, x: torch.Tensor, cfg: TrainConfig, autocast=contextlib.nullcontext,
               generator: torch.Generator | None = None) -> tuple[list[torch.Tensor], list[torch.Tensor], Any]:
    """The crop branch's input for one batch: (crops per head, boxes per crop, the forward).

    The attention is read at one documented point: a forward of the batch ``x`` with the
    model in eval mode (no dropout in the boxes), before any of the batch's updates, the
    same for every strategy. Boxes (input pixels) come from that attention, or from the
    ground truth (``crop_boxes='oracle'``) or at random (``'random'``); a ``crop_margin``
    adds context; the crop is cut from the source view (``crop_from='source'``) and resized
    to the input size. ``crops[r]`` is head r's crop view: its own for ``per_layer``, else
    the one crop for every head.
    """
    was_training = model.training
    model.eval()
    mode = cfg.crop_attention
    with autocast():
        out = model(x, attn_layers=crop_attention_layers(model.target_layers, mode, cfg.crop_block), full_attn=mode == "rollout")
    model.train(was_training)
    boxes = attention_boxes(out, mode, cfg.box_rule, cfg.threshold_scale, cfg.min_crop, model.target_layers, cfg.crop_block)
    size = tuple(x.shape[-2:])
    if cfg.crop_boxes == "oracle":
        part = batch["part_box"].to(x.device).float()
        if torch.isnan(part).any():
            raise ValueError("crop_boxes='oracle' needs a part box for every image (the synthetic set, or CUB with "
                             "part_boxes.txt); this batch has images without one")
        boxes = [part] * len(boxes)
    elif cfg.crop_boxes == "random":
        boxes = [random_boxes_like(b, size, generator) for b in boxes]
    boxes = [expand_boxes(b, cfg.crop_margin, size) for b in boxes]
    crops = []
    for b in boxes:
        src, sboxes = _crop_source(batch, x, b, cfg, x.device)
        crops.append(crop_and_resize(src, sboxes, cfg.img_size).to(x.dtype))
    per_head = crops if len(crops) == model.num_targets and len(crops) > 1 else [crops[-1]] * model.num_targets
    return per_head, boxes, out


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
    names = _part_names(getattr(loader, "dataset", None))
    cue_sums = torch.zeros(2 * len(names) + 2, dtype=torch.float64)  # hits, shown per part; all-in, images
    for batch in tqdm(loader, desc="eval", leave=False, disable=not progress):
        if skipped is not None:
            skipped.update(dict.fromkeys(passed_over(batch, loader.dataset)))
        x, y = batch["image"].to(device), batch["label"].to(device)
        crops, all_boxes, out = crop_views(model, batch, x, cfg, autocast, gen)
        boxes = all_boxes[-1]
        with autocast():
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
            cue_sums += _cue_counts(boxes, batch["part_points"].to(device).float())
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


def points_in_boxes(boxes: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """(B, P) bool: point ``p`` of image ``b`` lies in box ``b`` (xyxy, borders included).
    A NaN point (not visible) is in no box."""
    x, y = points[..., 0], points[..., 1]
    b = boxes[:, None, :]
    return (x >= b[..., 0]) & (x <= b[..., 2]) & (y >= b[..., 1]) & (y <= b[..., 3])


def _cue_counts(boxes: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Per part: images whose box holds it, images that show it; then images whose box holds
    every part they show (among images showing one at least), and those images."""
    shown = ~torch.isnan(points).any(-1)
    inside = points_in_boxes(boxes, points) & shown
    has_any = shown.any(1)
    all_in = (inside == shown).all(1) & has_any
    return torch.cat([inside.sum(0), shown.sum(0), all_in.sum()[None], has_any.sum()[None]]).double().cpu()


def _holding(dataset, attr: str):
    """The fgnb data set with ``attr`` that ``dataset`` is or wraps (Subset, SeededItems, ...), else
    the innermost one."""
    while not hasattr(dataset, attr) and hasattr(dataset, "dataset"):
        dataset = dataset.dataset
    return dataset


def _part_names(dataset) -> list[str]:
    """``part_names`` of an fgnb data set, or of the one a wrapper (Subset, ...) holds; [] if none."""
    return list(getattr(_holding(dataset, "part_names"), "part_names", None) or [])


def passed_over(batch: dict, dataset) -> list[str]:
    """Paths of the unreadable files the items of ``batch`` passed over (``on_error='skip'``).

    Read from the batch itself, so skips made in DataLoader worker processes are seen too.
    ``dataset``: the fgnb data set or a wrapper of it (``Subset``, :class:`SeededItems`).
    """
    dataset = _holding(dataset, "passed_over")
    if "skipped" not in batch or not hasattr(dataset, "passed_over"):
        return []
    return [p for i, k in zip(batch["index"].tolist(), batch["skipped"].tolist()) if k
            for p in dataset.passed_over(i, k)]


def _report_skipped(out: pathlib.Path, skipped: dict) -> None:
    """skipped.txt, rewritten atomically: one unreadable file per line (all processes' skips)."""
    if skipped:
        atomic_write(out / "skipped.txt", lambda tmp: pathlib.Path(tmp).write_text("".join(f"{p}\n" for p in sorted(skipped))))


def _crop_source(batch, x, boxes, cfg: TrainConfig, device):
    """Image to cut the crop from, and the box in its pixels."""
    if cfg.crop_from == "source":
        if "source" not in batch:
            raise ValueError("crop_from='source' needs the data set's source view (build it with source_size=)")
        src = batch["source"].to(device)
        return src, scale_boxes(boxes, x.shape[-2:], src.shape[-2:])
    return x, boxes


# ----------------------------------------------------------------------------- the run
def _write_metrics(out: pathlib.Path, history: list[dict]) -> None:
    """metrics.jsonl and metrics.csv, rewritten atomically from the whole history."""
    atomic_write(out / "metrics.jsonl", lambda tmp: pathlib.Path(tmp).write_text("".join(json.dumps(h) + "\n" for h in history)))
    keys: list[str] = []
    for h in history:
        keys += [k for k in h if k not in keys]

    def write_csv(tmp):
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(history)

    atomic_write(out / "metrics.csv", write_csv)


_RESUME_KEYS = ("optimizer", "scheduler", "epoch", "history", "best", "best_epoch")


def _check_resume(cfg: TrainConfig, state: dict, path) -> None:
    missing = [k for k in _RESUME_KEYS if k not in state]
    if missing:
        raise ValueError(f"{path} cannot be resumed: it lacks {missing} (not a last.pt written by fgnb train?)")
    diff = option_differences(state["config"], cfg.to_dict(), RESUMABLE)
    if diff:
        details = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in diff.items())
        raise ConfigError(f"cannot resume {path}: options differ ({details}); use the run's own options or another --out")


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict:
    """Every generator a training step may draw from (saved inside an epoch)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
             "random": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in state["random"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_interval(cfg: TrainConfig, device: torch.device) -> float | None:
    """Seconds between checkpoints inside an epoch (``checkpoint_minutes``), or None."""
    minutes = cfg.checkpoint_minutes
    if minutes is None:
        minutes = 10.0 if device.type == "cuda" else 0.0
    return 60.0 * minutes if minutes > 0 else None


def train(cfg: TrainConfig, stop_after_epoch: int | None = None,
          stop_after_batch: tuple[int, int] | None = None) -> dict:
    """Train as ``cfg`` says; returns {'history', 'test', 'out', 'best_epoch'}.

    ``stop_after_epoch`` ends the call after that epoch's checkpoint, as an interruption
    would (tests of ``resume`` use it); ``stop_after_batch=(epoch, batch)`` (1-based) ends it
    inside an epoch, after writing the checkpoint that ``checkpoint_minutes`` would write.
    """
    cfg = cfg.validate()
    device = select_device(cfg.device)
    dist.init_from_env(device.type)
    main = dist.is_main()
    out = pathlib.Path(cfg.out)
    ckpt_path = out / "last.pt"
    if ckpt_path.exists() and not cfg.resume:
        raise FileExistsError(
            f"{out} already holds a run (last.pt); pass --resume to continue it or choose another --out"
        )
    _seed_everything(cfg.seed)

    # Data and model. The normalisation is the one the chosen timm weights expect.
    mean, std = normalisation(cfg.model)
    # The resolved count is not saved as an option: cfg keeps None, so a resumed run resolves it again.
    workers = loader_workers(cfg, device.type)
    data = build_data(cfg, mean, std, workers)
    if cfg.verify_data:  # every image opened once, now, rather than a bad file ending epoch 3
        for ds in data.values():
            if ds is not None:
                ds.verify(workers, progress=cfg.progress and main)
    # Unreadable files left out or passed over (on_error=skip): path -> None, in order.
    skipped = dict.fromkeys(p for ds in data.values() if ds is not None for p in ds.skipped)
    num_classes = data["train"].num_classes
    # Stop now, not at an out-of-memory error an hour in; resolves batch_size=auto (fgnb.memory).
    cfg = check_fits(cfg, num_classes, device, dist.world_size())
    _seed_everything(cfg.seed)
    model = build_model(cfg, num_classes).to(device)
    dist.broadcast_parameters(model)
    train_items = SeededItems(data["train"], cfg.seed)
    sampler = EpochBatchSampler(len(train_items), cfg.batch_size, cfg.seed, dist.rank(), dist.world_size())
    loader = torch.utils.data.DataLoader(train_items, batch_sampler=sampler, num_workers=workers)
    eval_sets = {k: _eval_loader(data[k], cfg, workers) for k in ("val", "test") if data[k] is not None}

    optimizer = make_optimizer(model, cfg)
    steps_per_epoch = len(sampler) if cfg.limit_batches is None else min(len(sampler), cfg.limit_batches)
    total, warmup = cfg.epochs * steps_per_epoch, int(cfg.warmup_epochs * steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, total, warmup))
    autocast, scaler = autocast_for(device, cfg.amp)
    strategy = make_strategy(cfg.strategy, order=cfg.order, reforward=cfg.reforward)
    ctx = StepContext(autocast=autocast, scaler=scaler, clip_grad=cfg.clip_grad, grad_sync=dist.sync_gradients,
                      label_smoothing=cfg.label_smoothing, crop_weight=cfg.crop_weight)

    history: list[dict] = []
    start_epoch, best, best_epoch, mid = 0, -1.0, -1, None

    def checkpoint(last_epoch: int, mid_epoch: dict | None = None) -> dict:
        """The run after ``last_epoch`` (0-based) and, inside the next one, ``mid_epoch``."""
        return {
            "version": CHECKPOINT_VERSION, "config": cfg.to_dict(), "epoch": last_epoch, "num_classes": num_classes,
            "classes": list(getattr(data["train"], "classes", [])),
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else {},
            "history": history, "best": best, "best_epoch": best_epoch, "mid_epoch": mid_epoch,
            "skipped": list(skipped),
        }
    if cfg.resume and ckpt_path.exists():
        state = load_checkpoint(ckpt_path)
        _check_resume(cfg, state, ckpt_path)
        _load_weights(model, state["model"], ckpt_path)
        try:
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
        except (ValueError, KeyError, RuntimeError, TypeError) as e:
            raise ValueError(f"{ckpt_path}: its optimizer/scheduler state does not fit this run: {e}") from e
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        start_epoch, history = state["epoch"] + 1, state["history"]
        best, best_epoch, mid = state["best"], state["best_epoch"], state.get("mid_epoch")
        skipped.update(dict.fromkeys(state.get("skipped", [])))
        if main:
            where = (f"inside epoch {mid['epoch'] + 1}/{cfg.epochs}, after batch {mid['batch']}/{steps_per_epoch}" if mid
                     else f"after epoch {state['epoch'] + 1}/{cfg.epochs}")
            print(f"resuming {out} {where}")
    if main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write(out / "config.yaml", lambda tmp: pathlib.Path(tmp).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False)))

    show = cfg.progress and main
    every, last_save = checkpoint_interval(cfg, device), time.monotonic()
    for epoch in tqdm(range(start_epoch, cfg.epochs), desc="epochs", disable=not show, initial=start_epoch, total=cfg.epochs):
        # Every random draw of an epoch depends on (seed, epoch) only: resume-exact.
        _seed_everything(cfg.seed * 1000 + epoch)
        train_items.epoch = sampler.epoch = epoch
        model.train()
        stage_losses: list[list[float]] = []
        crop_losses: list[list[float]] = []
        t0, seen, done = time.perf_counter(), 0, 0
        inside = mid is not None and mid["epoch"] == epoch
        if inside:  # resume inside this epoch: skip the trained batches
            done, stage_losses, crop_losses, seen = mid["batch"], mid["stage_losses"], mid["crop_losses"], mid["seen"]
            t0 -= mid["elapsed"]
        sampler.skip = done
        batches = iter(loader)  # (draws the loader's base seed from the global RNG)
        if inside:
            _set_rng_state(mid["rng"])
        mid = None
        bar = tqdm(batches, desc=f"epoch {epoch + 1}", total=steps_per_epoch, initial=done, leave=False, disable=not show)
        data_s, t_wait = 0.0, time.perf_counter()
        for i, batch in enumerate(bar, start=done):
            data_s += time.perf_counter() - t_wait  # waiting for the loader: decode, transform, collate
            if i >= steps_per_epoch:
                break
            skipped.update(dict.fromkeys(passed_over(batch, data["train"])))
            x, y = batch["image"].to(device, non_blocking=True), batch["label"].to(device, non_blocking=True)
            crops = None
            if cfg.crop and epoch >= cfg.crop_warmup_epochs:
                # Boxes from the model as it is before this batch's updates (crop_views).
                crops, _, _ = crop_views(model, batch, x, cfg, autocast)
            for _ in range(cfg.steps_per_batch):
                if cfg.crop_update == "joint":
                    # Each of the strategy's steps takes the crop view's loss too: no extra steps.
                    result = strategy.step(model, optimizer, x, y, ctx, crops=crops)
                    losses = result.losses
                    if result.crop_losses is not None:
                        crop_losses.append(result.crop_losses)
                else:
                    losses = strategy.step(model, optimizer, x, y, ctx).losses
                    # separate: every distinct crop set gets the strategy's own steps on top.
                    for c in ({id(c): c for c in crops}.values() if crops is not None else ()):
                        crop_losses.append(strategy.step(model, optimizer, c, y, ctx).losses)
                stage_losses.append(losses)
            scheduler.step()
            seen += len(y) * dist.world_size()
            bar.set_postfix(loss=f"{sum(losses) / len(losses):.3f}")
            stop = stop_after_batch is not None and (epoch + 1, i + 1) == tuple(stop_after_batch)
            if (stop or (every is not None and time.monotonic() - last_save >= every)) and i + 1 < steps_per_epoch:
                if main:  # inside the epoch: what the rest of it needs to continue bit-exactly
                    save_checkpoint(ckpt_path, checkpoint(epoch - 1, {
                        "epoch": epoch, "batch": i + 1, "stage_losses": stage_losses, "crop_losses": crop_losses,
                        "seen": seen, "elapsed": time.perf_counter() - t0, "rng": _rng_state()}))
                last_save = time.monotonic()
                if stop:
                    return {"history": history, "test": None, "out": str(out), "best_epoch": best_epoch, "interrupted": True}
            t_wait = time.perf_counter()
        elapsed = time.perf_counter() - t0
        row: dict[str, Any] = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"]}
        mean_losses = np.mean(stage_losses, axis=0) if stage_losses else []
        heads = strategy.stages(model) if cfg.strategy == "last" else range(model.num_targets)
        for r, l in zip(sorted(heads), mean_losses):
            row[f"loss_head{r}"] = float(l)
        if crop_losses:
            for r, l in zip(sorted(heads), np.mean(crop_losses, axis=0)):
                row[f"crop_loss_head{r}"] = float(l)
        row["epoch_time_s"], row["images_per_s"] = elapsed, seen / max(elapsed, 1e-9)
        row["data_time_s"] = data_s  # of epoch_time_s (bench/speed.py reports the share)
        if "val" in eval_sets:
            t_eval = time.perf_counter()
            row.update({f"val_{k}": v for k, v in evaluate(model, eval_sets["val"], cfg, device, skipped=skipped).items()})
            row["eval_time_s"] = time.perf_counter() - t_eval
            score = row[f"val_top1_{cfg.select_by}"]
        else:
            score = float(epoch)  # no validation split: the latest epoch is the best
        skipped = dist.gather_keys(skipped)
        if cfg.on_error == "skip":
            row["skipped_images"] = len(skipped)
        history.append(row)
        improved = score > best
        if improved:
            best, best_epoch = score, epoch + 1
        if main:
            state = checkpoint(epoch)
            last_save = time.monotonic()
            if improved:
                save_checkpoint(out / "best.pt", state)
            save_checkpoint(ckpt_path, state)
            _write_metrics(out, history)
            _report_skipped(out, skipped)
        dist.barrier()
        if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch and epoch + 1 < cfg.epochs:
            return {"history": history, "test": None, "out": str(out), "best_epoch": best_epoch, "interrupted": True,
                    "skipped": sorted(skipped)}

    # The test split is read once, with the checkpoint chosen on validation.
    best_path = out / "best.pt"
    if best_path.exists():
        dist.barrier()
        model.load_state_dict(load_checkpoint(best_path)["model"])
    test = evaluate(model, eval_sets["test"], cfg, device, skipped=skipped)
    test["best_epoch"] = best_epoch
    skipped = dist.gather_keys(skipped)
    if cfg.on_error == "skip":
        test["skipped_images"] = len(skipped)
    if main:
        atomic_write(out / "test_metrics.json", lambda tmp: pathlib.Path(tmp).write_text(json.dumps(test, indent=2)))
        _report_skipped(out, skipped)
        if skipped:
            print(f"{len(skipped)} unreadable image{'s' * (len(skipped) > 1)} skipped (on_error=skip): "
                  f"listed in {out / 'skipped.txt'}")
    return {"history": history, "test": test, "out": str(out), "best_epoch": best_epoch, "interrupted": False,
            "skipped": sorted(skipped)}
