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
from .config import SYNTHETIC, ConfigError, TrainConfig, option_differences
from .crop import attention_boxes, crop_and_resize, crop_attention_layers, scale_boxes
from .data import build_dataset
from .model import FGViT, create_model
from .strategies import NonFiniteLossError, StepContext, make_strategy

__all__ = [
    "train",
    "evaluate",
    "select_device",
    "autocast_for",
    "amp_dtype",
    "build_model",
    "build_data",
    "save_checkpoint",
    "load_checkpoint",
    "load_model",
    "atomic_write",
    "box_iou",
    "INFERENCE_MODES",
]

INFERENCE_MODES = ("last", "mean", "crop")
AMP_CHOICES = ("auto", "bf16", "fp16", "off")
CHECKPOINT_VERSION = 1
# Options that may change when a run is resumed; all others must match the checkpoint.
RESUMABLE = {"resume", "progress", "workers", "device", "out", "data_root", "checkpoint_minutes", "download"}


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

        weights = synthetic_weights()
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


def build_data(cfg: TrainConfig, mean, std) -> dict[str, Any]:
    """train / val / test data sets with the FGVC transform and the weights' normalisation."""
    source = (cfg.source_size or 4 * cfg.img_size) if cfg.crop_from == "source" else None
    root = cfg.data_root
    if cfg.download and cfg.dataset == "cub":
        from .data import download_cub

        with dist.main_first():  # rank 0 downloads, the others wait and find it there
            root = str(download_cub(root, progress=cfg.progress and dist.is_main()))
    common = dict(
        root=root, download=cfg.download, image_size=cfg.img_size, mean=mean, std=std, resize_size=cfg.resize_size,
        val_fraction=cfg.val_fraction, seed=cfg.seed,
        synthetic_params=_synthetic_params(cfg) if cfg.dataset == "synthetic" else None,
    )
    with dist.main_first():  # rank 0 generates the synthetic set, the others wait and read it
        train_ds = build_dataset(cfg.dataset, split="train", source_size=source, **common)
    val_ds = build_dataset(cfg.dataset, split="val", source_size=source, **common) if cfg.val_fraction > 0 else None
    test_ds = build_dataset(cfg.dataset, split="test", source_size=source, **common)
    return {"train": train_ds, "val": val_ds, "test": test_ds}


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
            torch.manual_seed((self.seed * 1_000_003 + self.epoch) * 10_000_019 + i)
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


def _eval_loader(ds, cfg: TrainConfig):
    # Shard without padding, so gathered counts are exact.
    idx = list(range(dist.rank(), len(ds), dist.world_size()))
    return torch.utils.data.DataLoader(
        torch.utils.data.Subset(ds, idx), batch_size=max(1, cfg.batch_size // dist.world_size()),
        shuffle=False, num_workers=cfg.workers,
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
    """Load with ``weights_only=True`` (no code runs from the file)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise ValueError(f"{path} is not a readable fgnb checkpoint: {e}") from e
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise ValueError(f"{path} is not an fgnb checkpoint (no 'model'/'config' entries)")
    return state


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[FGViT, TrainConfig, dict]:
    """Rebuild the model of a checkpoint: (model in eval mode, its config, the checkpoint)."""
    state = load_checkpoint(path)
    cfg = TrainConfig.from_dict(state["config"], source=str(path))
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
def evaluate(model: FGViT, loader, cfg: TrainConfig, device: torch.device | None = None, progress: bool = False) -> dict:
    """Top-1 of every head and every inference mode, and localization of the attention box.

    Modes: ``last`` the deepest head; ``mean`` the mean of all heads' probabilities;
    ``crop`` the deepest head's probabilities averaged over the global view and a second
    pass on the attention crop. ``iou50``: share of images whose attention box has IoU
    >= 0.5 with the ground-truth object box; ``part_hit``: share whose box contains the
    centre of the discriminative part (synthetic data).
    """
    device = device or next(model.parameters()).device
    autocast, _ = autocast_for(device, cfg.amp)
    model.eval()
    mode = cfg.crop_attention
    layers = crop_attention_layers(model.target_layers, mode)
    R = model.num_targets
    # Running sums: hits of each head, of 'mean', of 'crop'; IoU>=0.5 hits and boxes;
    # part hits and parts; box area share; images.
    sums = torch.zeros(R + 8, dtype=torch.float64)
    for batch in tqdm(loader, desc="eval", leave=False, disable=not progress):
        x, y = batch["image"].to(device), batch["label"].to(device)
        with autocast():
            out = model(x, attn_layers=layers, full_attn=mode == "rollout")
            boxes = attention_boxes(out, mode, cfg.box_rule, cfg.threshold_scale, cfg.min_crop, model.target_layers)[-1]
            src, sboxes = _crop_source(batch, x, boxes, cfg, device)
            crop_out = model(crop_and_resize(src, sboxes, cfg.img_size))
        probs = [lg.float().softmax(-1) for lg in out.logits]
        p_mean = torch.stack(probs).mean(0)
        p_crop = 0.5 * (probs[-1] + crop_out.logits[-1].float().softmax(-1))
        gt, part = batch["box"].to(device).float(), batch["part_box"].to(device).float()
        has_box, has_part = ~torch.isnan(gt).any(dim=1), ~torch.isnan(part).any(dim=1)
        cx, cy = (part[:, 0] + part[:, 2]) / 2, (part[:, 1] + part[:, 3]) / 2
        inside = (cx >= boxes[:, 0]) & (cx <= boxes[:, 2]) & (cy >= boxes[:, 1]) & (cy <= boxes[:, 3])
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) / float(x.shape[-1] * x.shape[-2])
        row = [(p.argmax(-1) == y).sum() for p in (*probs, p_mean, p_crop)]
        row += [((box_iou(boxes, gt) >= 0.5) & has_box).sum(), has_box.sum(), (inside & has_part).sum(),
                has_part.sum(), area.sum(), torch.tensor(len(y))]
        sums += torch.stack([v.double().cpu() for v in row])
    c = dist.all_reduce_sum(sums).tolist()
    n = max(c[R + 7], 1.0)
    res = {f"top1_head{r}": c[r] / n for r in range(R)}
    res.update(top1_last=c[R - 1] / n, top1_mean=c[R] / n, top1_crop=c[R + 1] / n)
    res["iou50"] = c[R + 2] / c[R + 3] if c[R + 3] else float("nan")
    res["part_hit"] = c[R + 4] / c[R + 5] if c[R + 5] else float("nan")
    res["box_area"] = c[R + 6] / n
    res["n"] = int(c[R + 7])
    return res


def _crop_source(batch, x, boxes, cfg: TrainConfig, device):
    """Image to cut the crop from, and the box in its pixels."""
    if cfg.crop_from == "source" and "source" in batch:
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


def _check_resume(cfg: TrainConfig, saved: dict, path) -> None:
    diff = option_differences(saved, cfg.to_dict(), RESUMABLE)
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
    data = build_data(cfg, mean, std)
    num_classes = data["train"].num_classes
    _seed_everything(cfg.seed)
    model = build_model(cfg, num_classes).to(device)
    dist.broadcast_parameters(model)
    train_items = SeededItems(data["train"], cfg.seed)
    sampler = EpochBatchSampler(len(train_items), cfg.batch_size, cfg.seed, dist.rank(), dist.world_size())
    loader = torch.utils.data.DataLoader(train_items, batch_sampler=sampler, num_workers=cfg.workers)
    eval_sets = {k: _eval_loader(data[k], cfg) for k in ("val", "test") if data[k] is not None}

    optimizer = make_optimizer(model, cfg)
    steps_per_epoch = len(sampler) if cfg.limit_batches is None else min(len(sampler), cfg.limit_batches)
    total, warmup = cfg.epochs * steps_per_epoch, int(cfg.warmup_epochs * steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, total, warmup))
    autocast, scaler = autocast_for(device, cfg.amp)
    strategy = make_strategy(cfg.strategy, order=cfg.order, reforward=cfg.reforward)
    ctx = StepContext(autocast=autocast, scaler=scaler, clip_grad=cfg.clip_grad, grad_sync=dist.sync_gradients)
    crop_layers = crop_attention_layers(model.target_layers, cfg.crop_attention) if cfg.crop else None

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
        }
    if cfg.resume and ckpt_path.exists():
        state = load_checkpoint(ckpt_path)
        _check_resume(cfg, state["config"], ckpt_path)
        _load_weights(model, state["model"], ckpt_path)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        start_epoch, history = state["epoch"] + 1, state["history"]
        best, best_epoch, mid = state["best"], state["best_epoch"], state.get("mid_epoch")
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
        for i, batch in enumerate(bar, start=done):
            if i >= steps_per_epoch:
                break
            x, y = batch["image"].to(device, non_blocking=True), batch["label"].to(device, non_blocking=True)
            losses, gout = strategy.step(model, optimizer, x, y, ctx, attn_layers=crop_layers,
                                         full_attn=cfg.crop and cfg.crop_attention == "rollout")
            stage_losses.append(losses)
            if cfg.crop:
                with torch.no_grad():
                    all_boxes = attention_boxes(gout, cfg.crop_attention, cfg.box_rule, cfg.threshold_scale,
                                                cfg.min_crop, model.target_layers)
                for boxes in all_boxes:
                    src, sboxes = _crop_source(batch, x, boxes, cfg, device)
                    crops = crop_and_resize(src, sboxes, cfg.img_size).detach()
                    closs, _ = strategy.step(model, optimizer, crops, y, ctx)
                    crop_losses.append(closs)
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
        if "val" in eval_sets:
            row.update({f"val_{k}": v for k, v in evaluate(model, eval_sets["val"], cfg, device).items()})
            score = row[f"val_top1_{cfg.select_by}"]
        else:
            score = float(epoch)  # no validation split: the latest epoch is the best
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
        dist.barrier()
        if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch and epoch + 1 < cfg.epochs:
            return {"history": history, "test": None, "out": str(out), "best_epoch": best_epoch, "interrupted": True}

    # The test split is read once, with the checkpoint chosen on validation.
    best_path = out / "best.pt"
    if best_path.exists():
        dist.barrier()
        model.load_state_dict(load_checkpoint(best_path)["model"])
    test = evaluate(model, eval_sets["test"], cfg, device)
    test["best_epoch"] = best_epoch
    if main:
        atomic_write(out / "test_metrics.json", lambda tmp: pathlib.Path(tmp).write_text(json.dumps(test, indent=2)))
    return {"history": history, "test": test, "out": str(out), "best_epoch": best_epoch, "interrupted": False}
