"""A run's data: the data sets a config names, and the loaders that feed them in an order
that a resumed or multi-process run repeats exactly.

Chapter 1 explains the data sets (:mod:`fgnb.data`); this module is what :func:`fgnb.train.train`
builds from them: the three splits with the transform and the backbone's normalisation
(:func:`build_data`), each training item's augmentation seeded by (seed, epoch, index)
(:class:`SeededItems`), an epoch's batches a seeded permutation (:class:`EpochBatchSampler`),
and the unreadable files that ``on_error='skip'`` passed over (:func:`passed_over`).
"""
from __future__ import annotations

from typing import Any

import timm
import torch

from . import distributed as dist
from .config import DERIVED, ConfigError, TrainConfig
from .data import build_dataset, download_cub
from .model import check_model_name

__all__ = ["normalisation", "synthetic_params", "source_size", "dataset_for", "build_data", "SeededItems",
           "EpochBatchSampler", "eval_loader", "passed_over", "part_names"]


def normalisation(model_name: str) -> tuple[tuple, tuple]:
    """(mean, std) the named timm weights were trained with (their pretrained_cfg).

    Read from timm's registry, so the data can be built before the model (which needs
    the data's class count).
    """
    check_model_name(model_name)
    pc = timm.models.get_pretrained_cfg(model_name)
    if pc is None:
        pc = timm.models.get_pretrained_cfg(model_name.split(".")[0])
    mean = tuple(pc.mean) if pc is not None else timm.data.IMAGENET_DEFAULT_MEAN
    std = tuple(pc.std) if pc is not None else timm.data.IMAGENET_DEFAULT_STD
    return mean, std


def synthetic_params(cfg: TrainConfig) -> dict:
    named = {
        "num_classes": cfg.synthetic_classes,
        "train_per_class": cfg.synthetic_train_per_class,
        "test_per_class": cfg.synthetic_test_per_class,
        "difficulty": cfg.synthetic_difficulty,
        "first_class": cfg.synthetic_first_class,
    }
    return {k: v for k, v in named.items() if v is not None}


def source_size(cfg: TrainConfig) -> int | None:
    """Side of the source view that crops are cut from (``crop_from='source'``) or the crop's
    attention is read on (``attention_from='source'``), else None. Every run's evaluation reads
    the box (a run without crops too: :func:`fgnb.evaluation.evaluate`), so neither depends on
    ``crop``; whether the training split loads the view does (:func:`dataset_for`)."""
    wanted = "source" in (cfg.crop_from, cfg.attention_from)
    return (cfg.source_size or DERIVED["source_size"](cfg.to_dict())) if wanted else None


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
        synthetic_params=synthetic_params(cfg) if cfg.dataset == "synthetic" else None,
    )


def build_data(cfg: TrainConfig, mean, std, workers: int | None = None) -> dict[str, Any]:
    """train / val / test data sets with the FGVC transform and the weights' normalisation
    (``verify_data``: every image opened once, now). ``workers``: the loader processes that
    will read them (None: ``cfg.workers``, or 0)."""
    if workers is None:
        workers = cfg.workers or 0
    root = cfg.data_root
    if cfg.download and cfg.dataset == "cub":
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
    if cfg.verify_data:  # every image opened once, now, rather than a bad file ending epoch 3
        for ds in data.values():
            if ds is not None:
                ds.verify(workers, progress=cfg.progress and dist.is_main())
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


def eval_loader(ds, cfg: TrainConfig, workers: int):
    """The loader :func:`fgnb.evaluation.evaluate` reads a split with: in order, this process's share."""
    # Shard without padding, so gathered counts are exact.
    idx = list(range(dist.rank(), len(ds), dist.world_size()))
    return torch.utils.data.DataLoader(
        torch.utils.data.Subset(ds, idx), batch_size=max(1, cfg.batch_size // dist.world_size()),
        shuffle=False, num_workers=workers,
    )


def _holding(dataset, attr: str):
    """The fgnb data set with ``attr`` that ``dataset`` is or wraps (Subset, SeededItems, ...), else
    the innermost one."""
    while not hasattr(dataset, attr) and hasattr(dataset, "dataset"):
        dataset = dataset.dataset
    return dataset


def part_names(dataset) -> list[str]:
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
