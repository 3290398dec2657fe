"""Where a run computes: the device, its mixed precision, and the loader processes beside it.

Chapter 7 explains the choices for a GPU (``amp=auto``: bf16 where the GPU computes it
natively, fp16 with a gradient scaler below that); on the CPU everything runs in float32.
"""
from __future__ import annotations

import contextlib
import os
from typing import Callable

import torch

from . import distributed as dist
from .config import ConfigError, TrainConfig

__all__ = ["select_device", "default_workers", "loader_workers", "amp_dtype", "autocast_for", "AMP_CHOICES"]

AMP_CHOICES = ("auto", "bf16", "fp16", "off")

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
