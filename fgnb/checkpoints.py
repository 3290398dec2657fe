"""What a run keeps on disk and reads back: checkpoints, metrics files, random state.

Chapter 7 explains why a run never loses more than a few minutes: every epoch ends with a
checkpoint written atomically (:mod:`fgnb.atomic`), ``resume=True`` continues from it
(inside an epoch too, with the random state saved there), and the final weights equal
those of an uninterrupted run. :func:`load_model` rebuilds a trained model from its
checkpoint; :func:`export_checkpoint` writes its backbone as timm weights.
"""
from __future__ import annotations

import csv
import json
import os
import pathlib
import random

import numpy as np
import torch

from .atomic import atomic_write
from .config import ConfigError, TrainConfig, option_differences, options_tagged
from .model import FGViT
from .pretrained import build_model, export_backbone

__all__ = ["save_checkpoint", "load_checkpoint", "load_model", "load_weights", "check_resume", "RESUMABLE",
           "rng_state", "set_rng_state", "checkpoint_interval", "write_metrics", "report_skipped", "export_checkpoint",
           "CHECKPOINT_VERSION"]

CHECKPOINT_VERSION = 1
_CHECKPOINT_KEYS = ("version", "model", "config", "num_classes")
_RESUME_KEYS = ("optimizer", "scheduler", "epoch", "history", "best", "best_epoch")
#: Options that may change when a run is resumed (TrainConfig's ``setup`` options: where and how
#: the run is done); all others must match the checkpoint.
RESUMABLE = options_tagged("setup")


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
        cfg = TrainConfig.from_dict(state["config"], source=str(path), saved=True)
    except (ConfigError, TypeError) as e:
        raise ConfigError(e if str(path) in str(e) else f"{path}: the checkpoint's options are not valid: {e}") from None
    model = build_model(cfg.replace(pretrained=False, weights=None), state["num_classes"])
    load_weights(model, state["model"], path)
    return model.to(device).eval(), cfg, state


def load_weights(model: FGViT, weights: dict, path) -> None:
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


def check_resume(cfg: TrainConfig, state: dict, path) -> None:
    missing = [k for k in _RESUME_KEYS if k not in state]
    if missing:
        raise ValueError(f"{path} cannot be resumed: it lacks {missing} (not a last.pt written by fgnb train?)")
    diff = option_differences(state["config"], cfg.to_dict(), RESUMABLE)
    if diff:
        details = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in diff.items())
        raise ConfigError(f"cannot resume {path}: options differ ({details}); use the run's own options or another --out")


def rng_state() -> dict:
    """Every generator a training step may draw from (saved inside an epoch)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
             "random": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
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


def write_metrics(out: pathlib.Path, history: list[dict]) -> None:
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


def report_skipped(out: pathlib.Path, skipped: dict) -> None:
    """skipped.txt, rewritten atomically: one unreadable file per line (all processes' skips)."""
    if skipped:
        atomic_write(out / "skipped.txt", lambda tmp: pathlib.Path(tmp).write_text("".join(f"{p}\n" for p in sorted(skipped))))


def export_checkpoint(checkpoint: str | os.PathLike, out: str | os.PathLike) -> pathlib.Path:
    """``python -m fgnb export``: an fgnb checkpoint's backbone -> timm ``.safetensors``.

    The metadata records the training config, the epoch chosen on validation, its
    validation and test metrics and the synthetic generator's version.
    """
    from .synthetic import GENERATOR_VERSION

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
