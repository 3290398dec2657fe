"""torch.distributed glue for ``torchrun --nproc_per_node N -m fgnb train ...``.

The book's multi-GPU page explains the design. Progressive training takes R backward
passes and R optimizer steps per batch, and stage r leaves the deeper blocks and the
other heads without gradients. DistributedDataParallel expects every parameter to get a
gradient once per forward, so it would need ``find_unused_parameters=True`` (a graph
walk every stage) and still all-reduce the unused buckets. Instead, after every
backward :func:`sync_gradients` averages exactly the gradients that exist, flattened
into one buffer per dtype: one all-reduce per stage, of the parameters that stage
trained. One process (no torchrun) makes every function here a no-op.
"""
from __future__ import annotations

import contextlib
import datetime
import os

import torch
import torch.distributed as td

__all__ = [
    "is_distributed", "rank", "world_size", "local_rank", "local_world_size", "is_main", "init_from_env", "shutdown",
    "barrier", "main_first", "all_reduce_sum", "sync_gradients", "broadcast_parameters", "gather_keys",
]


def is_distributed() -> bool:
    return td.is_available() and td.is_initialized()


def rank() -> int:
    return td.get_rank() if is_distributed() else 0


def world_size() -> int:
    return td.get_world_size() if is_distributed() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def local_world_size() -> int:
    """Processes on this machine (torchrun's LOCAL_WORLD_SIZE; 1 without torchrun)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", 1))


def is_main() -> bool:
    return rank() == 0


def init_from_env(device_type: str = "cpu") -> bool:
    """Join the process group torchrun describes in the environment (NCCL on CUDA, gloo else)."""
    if is_distributed() or int(os.environ.get("WORLD_SIZE", 1)) <= 1:
        return is_distributed()
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(local_rank())
    td.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30))
    return True


def shutdown() -> None:
    if is_distributed():
        td.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        td.barrier()


@contextlib.contextmanager
def main_first():
    """Rank 0 runs the block first (e.g. writes a data set), then the others."""
    if not is_main():
        barrier()
    try:
        yield
    finally:
        if is_main():
            barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if not is_distributed():
        return t
    t = t.clone()
    td.all_reduce(t)
    return t


def sync_gradients(model: torch.nn.Module) -> None:
    """Average the gradients that exist over all processes (one all-reduce per dtype)."""
    if not is_distributed():
        return
    world = world_size()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for g in grads:
        by_dtype.setdefault(g.dtype, []).append(g)
    for group in by_dtype.values():
        flat = torch.cat([g.reshape(-1) for g in group])
        td.all_reduce(flat)
        flat /= world
        offset = 0
        for g in group:
            n = g.numel()
            g.copy_(flat[offset : offset + n].view_as(g))
            offset += n


def broadcast_parameters(model: torch.nn.Module) -> None:
    """Start every process from rank 0's weights."""
    if not is_distributed():
        return
    for t in list(model.parameters()) + list(model.buffers()):
        td.broadcast(t.data, src=0)


def gather_keys(keys: dict) -> dict:
    """The union, in every process, of each process's ``keys`` (a dict used as an ordered set)."""
    if not is_distributed():
        return keys
    parts: list = [None] * world_size()
    td.all_gather_object(parts, list(keys))
    return dict.fromkeys(k for part in parts for k in part)
