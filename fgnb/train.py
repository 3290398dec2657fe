"""The training loop, read top to bottom: :func:`train` first (data, model, optimizer, epochs,
test), then the steps it names (the batch step, an epoch, its end, the test).

Chapters 5 to 8 run it. One call, :func:`train`, does a whole run and never loses one:
every epoch ends with an atomic checkpoint and metrics files (:mod:`fgnb.checkpoints`), a
NaN/inf loss stops the run with the last good checkpoint kept, and ``resume=True``
continues so that the final weights equal those of an uninterrupted run (on CPU, same
seed). Under ``torchrun`` the same code trains with one process per device (see
:mod:`fgnb.distributed`). A batch's updates are :class:`fgnb.step.BatchStep`'s, the very step
that ``bench/speed.py`` times.
"""
from __future__ import annotations

import json
import math
import pathlib
import random
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import yaml
from tqdm.auto import tqdm

from . import distributed as dist
from .atomic import atomic_write
from .checkpoints import (CHECKPOINT_VERSION, check_resume, checkpoint_interval, load_checkpoint, load_weights,
                          report_skipped, rng_state, save_checkpoint, set_rng_state, write_metrics)
from .config import TrainConfig
from .devices import loader_workers, select_device
from .evaluation import evaluate, selection_mode
from .loaders import EpochBatchSampler, SeededItems, build_data, eval_loader, normalisation, passed_over
from .memory import check_fits
from .pretrained import build_model
from .step import BatchStep

__all__ = ["train", "warmup_cosine"]


# ----------------------------------------------------------------------------- the run
def train(cfg: TrainConfig, stop_after_epoch: int | None = None,
          stop_after_batch: tuple[int, int] | None = None) -> dict:
    """Train as ``cfg`` says; returns {'history', 'test', 'out', 'best_epoch', 'interrupted', 'skipped'}.

    ``stop_after_epoch`` ends the call after that epoch's checkpoint, as an interruption
    would (tests of ``resume`` use it); ``stop_after_batch=(epoch, batch)`` (1-based) ends it
    inside an epoch, after writing the checkpoint that ``checkpoint_minutes`` would write.
    """
    cfg = cfg.checked()  # (made valid; validated again only if an option was set since)
    device = select_device(cfg.device)
    dist.init_from_env(device.type)
    out = pathlib.Path(cfg.out)
    if (out / "last.pt").exists() and not cfg.resume:
        raise FileExistsError(f"{out} already holds a run (last.pt); pass --resume to continue it or choose another --out")
    _seed_everything(cfg.seed)

    # Data, normalised as the chosen timm weights expect. (cfg keeps workers=None: a resume resolves it again.)
    workers = loader_workers(cfg, device.type)
    data = build_data(cfg, *normalisation(cfg.model), workers)
    # Unreadable files left out or passed over (on_error=skip): path -> None, in order.
    skipped = dict.fromkeys(p for ds in data.values() if ds is not None for p in ds.skipped)

    # Stop now, not at an out-of-memory error an hour in; resolves batch_size=auto (fgnb.memory).
    cfg = check_fits(cfg, data["train"].num_classes, device, dist.world_size())
    # Model (seeded again: the same start whatever the data's preparation drew), and its loaders.
    _seed_everything(cfg.seed)
    model = build_model(cfg, data["train"].num_classes).to(device)
    dist.broadcast_parameters(model)
    items = SeededItems(data["train"], cfg.seed)
    sampler = EpochBatchSampler(len(items), cfg.batch_size, cfg.seed, dist.rank(), dist.world_size())
    loader = torch.utils.data.DataLoader(items, batch_sampler=sampler, num_workers=workers)
    eval_sets = {k: eval_loader(data[k], cfg, workers) for k in ("val", "test") if data[k] is not None}

    # Optimisation: the batch step, and the learning rate per batch (warm-up, then cosine).
    step = BatchStep(cfg, model, device)
    steps_per_epoch = len(sampler) if cfg.limit_batches is None else min(len(sampler), cfg.limit_batches)
    total, warmup = cfg.epochs * steps_per_epoch, int(cfg.warmup_epochs * steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(step.optimizer, lambda s: warmup_cosine(s, total, warmup))

    run = Run(cfg, device, data, items, sampler, loader, eval_sets, step, scheduler, steps_per_epoch, skipped)
    if cfg.resume and (out / "last.pt").exists():
        _resume(run, out / "last.pt")
    if dist.is_main():
        out.mkdir(parents=True, exist_ok=True)
        atomic_write(out / "config.yaml", lambda tmp: pathlib.Path(tmp).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False)))
    run.every, run.last_save = checkpoint_interval(cfg, device), time.monotonic()  # checkpoints inside an epoch

    show = cfg.progress and dist.is_main()
    for epoch in tqdm(range(run.start_epoch, cfg.epochs), desc="epochs", disable=not show,
                      initial=run.start_epoch, total=cfg.epochs):
        _seed_everything(cfg.seed * 1000 + epoch)  # every random draw of an epoch: (seed, epoch) only
        row = _train_epoch(run, epoch, stop_after_batch)
        if row is None:  # stopped inside the epoch, as an interruption would
            return run.result(None, interrupted=True)
        _end_epoch(run, epoch, row)
        if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch and epoch + 1 < cfg.epochs:
            return run.result(None, interrupted=True)
    return run.result(_test(run), interrupted=False)


# ----------------------------------------------------------------------------- optimisation


def warmup_cosine(step: int, total: int, warmup: int) -> float:
    """LR factor: linear warm-up to 1 over ``warmup`` steps, then cosine to 0 at ``total``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


# ----------------------------------------------------------------------------- the epoch
def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class Run:
    """What a run's epochs share; :meth:`state` is what a checkpoint saves of it."""
    cfg: TrainConfig
    device: torch.device
    data: dict
    items: SeededItems  # the training set, each item's augmentation seeded by (seed, epoch, index)
    sampler: EpochBatchSampler
    loader: torch.utils.data.DataLoader
    eval_sets: dict
    step: BatchStep
    scheduler: torch.optim.lr_scheduler.LambdaLR
    steps_per_epoch: int
    skipped: dict  # unreadable files left out or passed over (on_error=skip): path -> None, in order
    history: list = field(default_factory=list)
    best: float = -1.0  # the best epoch's validation score, and that epoch (1-based)
    best_epoch: int = -1
    start_epoch: int = 0
    mid: dict | None = None  # resumed inside an epoch: what the rest of it needs
    every: float | None = None  # seconds between checkpoints inside an epoch
    last_save: float = 0.0

    @property
    def out(self) -> pathlib.Path:
        return pathlib.Path(self.cfg.out)

    def state(self, last_epoch: int, mid_epoch: dict | None = None) -> dict:
        """The checkpoint after ``last_epoch`` (0-based) and, inside the next one, ``mid_epoch``."""
        step, train_set = self.step, self.data["train"]
        return {"version": CHECKPOINT_VERSION, "config": self.cfg.to_dict(), "epoch": last_epoch,
                "num_classes": train_set.num_classes, "classes": list(getattr(train_set, "classes", [])),
                "model": step.model.state_dict(), "optimizer": step.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": step.ctx.scaler.state_dict() if step.ctx.scaler is not None else {},
                "history": self.history, "best": self.best, "best_epoch": self.best_epoch, "mid_epoch": mid_epoch,
                "skipped": list(self.skipped)}

    def result(self, test: dict | None, interrupted: bool) -> dict:
        return {"history": self.history, "test": test, "out": str(self.out), "best_epoch": self.best_epoch,
                "interrupted": interrupted, "skipped": sorted(self.skipped)}


def _resume(run: Run, path: pathlib.Path) -> None:
    """Load last.pt's weights, optimizer, schedule and history into ``run``."""
    state = load_checkpoint(path)
    check_resume(run.cfg, state, path)
    step = run.step
    load_weights(step.model, state["model"], path)
    try:
        step.optimizer.load_state_dict(state["optimizer"])
        run.scheduler.load_state_dict(state["scheduler"])
    except (ValueError, KeyError, RuntimeError, TypeError) as e:
        raise ValueError(f"{path}: its optimizer/scheduler state does not fit this run: {e}") from e
    if step.ctx.scaler is not None and state.get("scaler"):
        step.ctx.scaler.load_state_dict(state["scaler"])
    run.start_epoch, run.history, run.best, run.best_epoch = state["epoch"] + 1, state["history"], state["best"], state["best_epoch"]
    run.mid = state.get("mid_epoch")
    run.skipped.update(dict.fromkeys(state.get("skipped", [])))
    if dist.is_main():
        mid, cfg = run.mid, run.cfg
        where = (f"inside epoch {mid['epoch'] + 1}/{cfg.epochs}, after batch {mid['batch']}/{run.steps_per_epoch}" if mid
                 else f"after epoch {state['epoch'] + 1}/{cfg.epochs}")
        print(f"resuming {cfg.out} {where}")


def _train_epoch(run: Run, epoch: int, stop_after_batch) -> dict | None:
    """One epoch's batches; returns its row (losses, timings), or None when ``stop_after_batch``
    ended it after a mid-epoch checkpoint."""
    cfg, step, device = run.cfg, run.step, run.device
    sampler, n_batches, show = run.sampler, run.steps_per_epoch, cfg.progress and dist.is_main()
    run.items.epoch = sampler.epoch = epoch
    step.model.train()
    # Inside an epoch a resume continues where the checkpoint left it (skipping its trained batches).
    mid, run.mid = (run.mid, None) if run.mid is not None and run.mid["epoch"] == epoch else (None, run.mid)
    done, losses, crop_losses, seen, elapsed = ((mid["batch"], mid["stage_losses"], mid["crop_losses"], mid["seen"],
                                                 mid["elapsed"]) if mid else (0, [], [], 0, 0.0))
    t0, data_s = time.perf_counter() - elapsed, 0.0
    sampler.skip = done
    batches = iter(run.loader)  # (draws the loader's base seed from the global RNG)
    if mid:
        set_rng_state(mid["rng"])
    bar = tqdm(batches, desc=f"epoch {epoch + 1}", total=n_batches, initial=done, leave=False, disable=not show)
    t_wait = time.perf_counter()
    for i, batch in enumerate(bar, start=done):
        data_s += time.perf_counter() - t_wait  # waiting for the loader: decode, transform, collate
        if i >= n_batches:
            break
        run.skipped.update(dict.fromkeys(passed_over(batch, run.data["train"])))
        x, y = batch["image"].to(device, non_blocking=True), batch["label"].to(device, non_blocking=True)
        batch_losses, batch_crop_losses = step(batch, x, y, epoch)
        losses += batch_losses
        crop_losses += batch_crop_losses
        run.scheduler.step()
        seen += len(y) * dist.world_size()
        bar.set_postfix(loss=f"{np.mean(batch_losses[-1]):.3f}")
        stop = stop_after_batch is not None and (epoch + 1, i + 1) == tuple(stop_after_batch)
        if (stop or (run.every is not None and time.monotonic() - run.last_save >= run.every)) and i + 1 < n_batches:
            if dist.is_main():  # inside the epoch: what the rest of it needs to continue bit-exactly
                save_checkpoint(run.out / "last.pt", run.state(epoch - 1, {
                    "epoch": epoch, "batch": i + 1, "stage_losses": losses, "crop_losses": crop_losses,
                    "seen": seen, "elapsed": time.perf_counter() - t0, "rng": rng_state()}))
            run.last_save = time.monotonic()
            if stop:
                return None
        t_wait = time.perf_counter()
    elapsed = time.perf_counter() - t0
    row = {"epoch": epoch + 1, "lr": step.optimizer.param_groups[0]["lr"]}
    heads = sorted(step.strategy.stages(step.model) if cfg.strategy == "last" else range(step.model.num_targets))
    row.update({f"loss_head{r}": float(v) for r, v in zip(heads, np.mean(losses, axis=0) if losses else [])})
    if crop_losses:
        row.update({f"crop_loss_head{r}": float(v) for r, v in zip(heads, np.mean(crop_losses, axis=0))})
    row["epoch_time_s"], row["images_per_s"] = elapsed, seen / max(elapsed, 1e-9)
    row["data_time_s"] = data_s  # of epoch_time_s (bench/speed.py reports the share)
    return row


def _end_epoch(run: Run, epoch: int, row: dict) -> None:
    """Validate, pick the best epoch on validation, write the checkpoints and the metrics files."""
    cfg, model = run.cfg, run.step.model
    if "val" in run.eval_sets:
        t_eval = time.perf_counter()
        row.update({f"val_{k}": v for k, v in evaluate(model, run.eval_sets["val"], cfg, run.device,
                                                        skipped=run.skipped).items()})
        row["eval_time_s"] = time.perf_counter() - t_eval
        score = row[f"val_top1_{selection_mode(cfg)}"]
    else:
        score = float(epoch)  # no validation split: the latest epoch is the best
    run.skipped = dist.gather_keys(run.skipped)
    if cfg.on_error == "skip":
        row["skipped_images"] = len(run.skipped)
    run.history.append(row)
    improved = score > run.best
    if improved:
        run.best, run.best_epoch = score, epoch + 1
    if dist.is_main():
        state = run.state(epoch)
        run.last_save = time.monotonic()
        if improved:
            save_checkpoint(run.out / "best.pt", state)
        save_checkpoint(run.out / "last.pt", state)
        write_metrics(run.out, run.history)
        report_skipped(run.out, run.skipped)
    dist.barrier()


def _test(run: Run) -> dict:
    """The test split, read once, with the checkpoint chosen on validation."""
    cfg, model, out = run.cfg, run.step.model, run.out
    if (out / "best.pt").exists():
        dist.barrier()
        model.load_state_dict(load_checkpoint(out / "best.pt")["model"])
    test = evaluate(model, run.eval_sets["test"], cfg, run.device, skipped=run.skipped)
    test["best_epoch"] = run.best_epoch
    run.skipped = skipped = dist.gather_keys(run.skipped)
    if cfg.on_error == "skip":
        test["skipped_images"] = len(skipped)
    if dist.is_main():
        atomic_write(out / "test_metrics.json", lambda tmp: pathlib.Path(tmp).write_text(json.dumps(test, indent=2)))
        report_skipped(out, skipped)
        if skipped:
            print(f"{len(skipped)} unreadable image{'s' * (len(skipped) > 1)} skipped (on_error=skip): "
                  f"listed in {out / 'skipped.txt'}")
    return test
