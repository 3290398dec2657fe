"""Will the run fit the GPU? The peak memory of a training step, known before the run.

Chapter 7 uses it before the full recipe trains. The peak of a step is

    peak = weights + gradients + optimizer state + what autograd saves + the step's temporaries

with the weights, their gradients and the optimizer state P float32 numbers each (P
parameters; SGD with momentum keeps 1 more tensor per parameter, AdamW 2), and the rest
proportional to the images in one forward: B for ``last`` and ``summed``, 2B with the joint
crop update (the global and the crop view in one batch), and a forward only as deep as
target r for progressive stage r (its stages run one after another, so the deepest one
sets the peak). Under mixed precision the saved activations are mostly 16-bit, and the
16-bit copies of the weights that autocast makes are saved too.

Rather than a formula per strategy (which would be wrong the day a strategy changes), the
plan runs the run's own step, :meth:`fgnb.strategies.UpdateStrategy.step` with the run's
optimizer, clipping and autocast, on *fake* tensors (``torch._subclasses.FakeTensorMode``:
shapes and dtypes, no data, no memory, a ViT-B/16 step in a second on a CPU) and keeps the
running sum of the bytes of every storage alive (:class:`LiveBytes`); the step's peak is the
largest value of that sum. The same counter runs on real tensors, which is how the tests
check it against the CPU allocator's own record (``torch.profiler``, ``profile_memory``).
CUDA's attention kernels (flash / memory-efficient) save O(N) per head, as the CPU's
flash kernel that the fake step runs does; the AMP dtype is the one ``amp='auto'`` picks
for the GPU (:func:`fgnb.devices.amp_dtype`), simulated with CPU autocast under CUDA's rule
for the norms (:func:`cuda_autocast_policy`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import weakref
from typing import Iterable, Sequence

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from .config import ConfigError, TrainConfig

__all__ = ["LiveBytes", "StepMemory", "DoesNotFit", "step_memory", "fake_weights", "cuda_autocast_policy", "plan",
           "size", "format_plan", "format_largest", "line", "largest_batch", "usable", "check_fits", "resolve_batch",
           "num_classes_of", "GPUS", "CONTEXT_GIB", "HEADROOM", "GiB"]

GiB = 1024**3
#: total memory of common cards as ``torch.cuda.mem_get_info`` reports it (GiB): the plan's columns
GPUS = {"16 GB (T4, V100)": 15.0, "24 GB (L4, A10)": 22.0, "40 GB (A100)": 39.4, "80 GB (A100, H100)": 79.2}
#: what the CUDA context, cuDNN and cuBLAS hold outside torch's allocator on a card (GiB, about)
CONTEXT_GIB = 0.6
#: share of the free memory a plan may use: the caching allocator's blocks are never packed
#: perfectly (torch.cuda.memory_reserved exceeds memory_allocated), so 10 % stays spare
HEADROOM = 0.9
#: CUDA's caching allocator rounds every block up to a multiple of 512 bytes
CUDA_BLOCK = 512


class DoesNotFit(ConfigError):
    """The plan says the run's step needs more memory than the device has free."""


class LiveBytes(TorchDispatchMode):
    """Bytes of every storage the ops inside create, counted until the storage is freed.

    ``now``: bytes alive; ``peak``: the largest ``now`` so far (``reset_peak()`` restarts it).
    A storage is counted once whatever views of it exist, and freed when its last view is
    (a weak reference to the storage): exactly the lifetime an allocator sees. ``round_to``:
    block size of the allocator (CUDA: 512 bytes). With ``scalar``, reading a number out of a
    tensor (``.item()``, ``bool()``), which fake tensors cannot, returns that value (True for
    a bool, so the finite-loss checks pass; 1.0 for AdamW's step count, which must not be 0),
    so the real training code runs unchanged.
    """

    def __init__(self, round_to: int = 1, scalar: float | None = None):
        super().__init__()
        self.round_to, self.scalar = round_to, scalar
        self.sizes: dict[int, int] = {}
        self.now = self.peak = 0

    def track(self, t: torch.Tensor) -> None:
        st = t.untyped_storage()
        key = st._cdata
        if key in self.sizes:
            return
        n = -(-st.nbytes() // self.round_to) * self.round_to
        self.sizes[key] = n
        self.now += n
        self.peak = max(self.peak, self.now)
        weakref.finalize(st, self._free, key)

    def _free(self, key: int) -> None:
        self.now -= self.sizes.pop(key, 0)

    def reset_peak(self) -> None:
        self.peak = self.now

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if self.scalar is not None and func is torch.ops.aten._local_scalar_dense.default:
            t = args[0]
            return True if t.dtype == torch.bool else float(self.scalar) if t.is_floating_point() else int(self.scalar)
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                self.track(t)
        return out


@dataclasses.dataclass
class StepMemory:
    """The plan of one setting: its peak and what it is made of (bytes).

    weights, grads, optimizer: P float32 numbers each (optimizer: per state tensor);
    rest = peak - weights - grads - optimizer: what autograd saved for the batch and the
    step's temporaries (the peak falls in the backward, when some gradients exist already,
    so this share is a lower bound of the activations).
    """

    strategy: str
    crop: bool
    batch: int
    amp: str
    peak: int
    weights: int
    grads: int
    optimizer: int

    @property
    def rest(self) -> int:
        return self.peak - self.weights - self.grads - self.optimizer

    def gib(self) -> float:
        return self.peak / GiB


def size(n: float) -> str:
    """Bytes for a reader: GiB with one decimal from 1 GiB, else MiB."""
    return f"{n / GiB:.1f} GiB" if n >= GiB else f"{n / 2**20:.1f} MiB"


def _amp_name(dtype) -> str:
    return {None: "float32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def _meta_model(cfg: TrainConfig, num_classes: int):
    """The run's model with its parameters on the meta device (no memory, no init cost)."""
    from .pretrained import build_model

    with torch.device("meta"):
        # weights=None: the shapes are the architecture's; no file is read, nothing downloaded
        return build_model(cfg.replace(weights=None, pretrained=False), num_classes)


@contextlib.contextmanager
def cuda_autocast_policy():
    """CPU autocast with CUDA's float32 rule for the norms, while inside.

    CUDA's autocast runs ``group_norm`` and ``layer_norm`` in float32 (it casts a 16-bit
    input up, and autograd saves that float32 copy); the CPU's runs them in the input's
    dtype. A plan for a CUDA GPU simulated with CPU autocast would miss those copies: on
    the hybrid ViT, whose convolutional stem normalises bf16 maps with GroupNorm, by 22 %
    of the H200's measured peak (6 % with this rule; ``tests/test_memory.py``). The kernels
    are registered for the AutocastCPU key and removed again on exit.
    """
    lib = torch.library.Library("aten", "IMPL")
    cpu = torch._C.DispatchKeySet(torch._C.DispatchKey.AutocastCPU)

    def up(t):
        return None if t is None else t.float()

    def group_norm(input, num_groups, weight=None, bias=None, eps=1e-5, cudnn_enabled=True):
        with torch._C._ExcludeDispatchKeyGuard(cpu):
            return torch.group_norm(up(input), num_groups, up(weight), up(bias), eps, cudnn_enabled)

    def layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5, cudnn_enable=True):
        with torch._C._ExcludeDispatchKeyGuard(cpu):
            return torch.layer_norm(up(input), normalized_shape, up(weight), up(bias), eps, cudnn_enable)

    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Oo]verrid.*")
        lib.impl("group_norm", group_norm, "AutocastCPU")
        lib.impl("layer_norm", layer_norm, "AutocastCPU")
    try:
        yield
    finally:
        lib._destroy()


def fake_weights(model: torch.nn.Module) -> torch.nn.Module:
    """Give a meta-device model new CPU parameters and buffers of the same shapes, in place.

    Called inside a ``FakeTensorMode`` they are fake (and inside :class:`LiveBytes`,
    counted). Each tensor is replaced in its module's dict rather than through
    ``Module.to_empty``, whose tensor swap refuses some timm layers (the hybrid's
    ``StdConv2dSame``); a tensor shared by two modules stays shared.
    """
    new: dict[int, torch.Tensor] = {}
    for mod in model.modules():
        for store in (mod._parameters, mod._buffers):
            for k, t in store.items():
                if t is None:
                    continue
                if id(t) not in new:
                    e = torch.empty_like(t, device="cpu")
                    new[id(t)] = torch.nn.Parameter(e, requires_grad=t.requires_grad) if isinstance(t, torch.nn.Parameter) else e
                store[k] = new[id(t)]
    return model


def step_memory(cfg: TrainConfig, num_classes: int, batch: int | None = None, device_type: str = "cuda",
                capability: tuple[int, int] | None = (8, 0), first: bool = False, fake: bool = True,
                model=None) -> StepMemory:
    """The peak bytes of one training step of ``cfg`` (its strategy, crop options, optimizer,
    clipping) at ``batch`` images per process (default ``cfg.batch_size``).

    ``device_type``/``capability``: the device the run will use (its AMP dtype follows
    ``cfg.amp`` there as :func:`fgnb.devices.amp_dtype` says; ``cuda`` also rounds blocks to
    512 bytes and uses the optimizer's CUDA (foreach) implementation, whose temporaries
    are whole lists of tensors). The step is one after the first: the optimizer's state is
    made by an update with zero gradients before it (``first=True``: the first step, before
    the state exists). ``fake=False`` runs real tensors on the CPU (tests, small models;
    ``model`` then is the model to step, else one is built). The counter starts with the
    model's weights, so the peak includes them, and nothing from before.
    """
    from torch._subclasses.fake_tensor import FakeTensorMode

    from .strategies import StepContext
    from .devices import amp_dtype
    from .loaders import source_size
    from .step import BatchStep, make_optimizer

    batch = int(batch or cfg.batch_size)
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    dtype = amp_dtype(device_type, cfg.amp, capability)
    counter = LiveBytes(round_to=CUDA_BLOCK if device_type == "cuda" else 1, scalar=1.0 if fake else None)
    if fake:
        model = _meta_model(cfg, num_classes)
    elif model is None:
        from .pretrained import build_model

        model = build_model(cfg.replace(weights=None, pretrained=False), num_classes)
    with contextlib.ExitStack() as stack:
        if fake:
            stack.enter_context(FakeTensorMode(allow_non_fake_inputs=True))
        if fake and device_type == "cuda" and dtype is not None:
            stack.enter_context(cuda_autocast_policy())
        stack.enter_context(counter)
        if fake:
            model = fake_weights(model)
        else:
            for p in model.parameters():
                counter.track(p)
            for b in model.buffers():
                counter.track(b)
        model.train()
        params = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
        optimizer = make_optimizer(model, cfg)
        if device_type == "cuda":
            for g in optimizer.param_groups:  # what torch picks for CUDA tensors by default
                g["foreach"] = True
        per_param = 0 if cfg.optimizer == "sgd" and cfg.momentum == 0 else 1 if cfg.optimizer == "sgd" else 2
        autocast = (lambda: torch.autocast("cpu", dtype=dtype)) if dtype is not None else contextlib.nullcontext
        scaler = (_StepAlways if fake else torch.amp.GradScaler)("cpu") if dtype == torch.float16 else None
        ctx = StepContext(autocast=autocast, scaler=scaler, clip_grad=cfg.clip_grad,
                          label_smoothing=cfg.label_smoothing, crop_weight=cfg.crop_weight)
        step = BatchStep(cfg, model, torch.device("cpu"), optimizer=optimizer, ctx=ctx)  # training's own batch step
        side = cfg.img_size
        src = source_size(cfg)
        if not first:  # the optimizer's state, as the first update makes it
            for p in model.parameters():
                p.grad = torch.zeros_like(p)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        counter.reset_peak()
        x = torch.randn(batch, 3, side, side) if not fake else torch.empty(batch, 3, side, side)
        y = torch.zeros(batch, dtype=torch.long)
        items = {"label": y}
        if src is not None:  # the source view is copied to the device for the crop only
            items["source"] = torch.zeros(batch, 3, src, src, dtype=x.dtype)
        if cfg.crop_boxes == "oracle":
            items["part_box"] = torch.tensor([[0.0, 0.0, side / 2, side / 2]]).expand(batch, 4)
        step(items, x, y, epoch=cfg.crop_warmup_epochs)  # the epoch from which crops are trained: the peak
        del x, y, items
    return StepMemory(cfg.strategy, cfg.crop, batch, _amp_name(dtype), counter.peak, params, params,
                      per_param * params)


class _StepAlways(torch.amp.GradScaler):
    """A fake step reads every number as 1.0, which a GradScaler would take for an inf gradient and
    skip the update: this one always updates, as a real run does on all but its rare inf steps."""

    def _maybe_opt_step(self, optimizer, optimizer_state, *args, **kwargs):
        return optimizer.step(*args, **kwargs)


def usable(total_gib: float) -> int:
    """Bytes a plan may use on a card of ``total_gib``: HEADROOM x (total - CONTEXT_GIB)."""
    return int(HEADROOM * (total_gib - CONTEXT_GIB) * GiB)


def plan(cfg: TrainConfig, num_classes: int, batches: Sequence[int] | None = None,
         strategies: Sequence[str] = ("last", "summed", "progressive"), crops: Sequence[bool] = (False, True),
         **kw) -> list[StepMemory]:
    """:func:`step_memory` for every strategy x crop x batch (default: the config's batch)."""
    return [step_memory(cfg.replace(strategy=s, crop=c), num_classes, b, **kw)
            for s in strategies for c in crops for b in (batches or [cfg.batch_size])]


def largest_batch(cfg: TrainConfig, num_classes: int, capacity: int, limit: int = 512, multiple: int = 1,
                  **kw) -> int:
    """The largest batch (a multiple of ``multiple``, at most ``limit``) whose step needs at
    most ``capacity`` bytes; 0 if not even ``multiple`` images fit.

    The peak grows linearly with the batch (every activation does; the weights do not), so
    two plans give the line and a third checks its guess; the search then steps down (or
    up) one ``multiple`` at a time until the plan itself says it fits.
    """
    m = multiple
    a, b = step_memory(cfg, num_classes, m, **kw).peak, step_memory(cfg, num_classes, 2 * m, **kw).peak
    if a > capacity:
        return 0
    slope = max(b - a, 1)
    guess = min(limit // m * m, max(m, int(m + (capacity - a) / slope * m) // m * m))
    while guess > m and step_memory(cfg, num_classes, guess, **kw).peak > capacity:
        guess -= m
    while guess + m <= limit and step_memory(cfg, num_classes, guess + m, **kw).peak <= capacity:
        guess += m
    return guess


def format_plan(rows: Iterable[StepMemory], gpus: dict[str, float] | None = None) -> str:
    """A markdown table: strategy, crop, batch, AMP, peak GiB and its parts, and which cards it fits."""
    gpus = GPUS if gpus is None else gpus
    head = ["strategy", "crop", "batch", "amp", "peak GiB", "weights+grads+opt", "activations+temps"]
    head += [f"fits {g}" for g in gpus]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in rows:
        cells = [m.strategy, "yes" if m.crop else "no", str(m.batch), m.amp, f"{m.gib():.2f}",
                 f"{(m.weights + m.grads + m.optimizer) / GiB:.2f}", f"{m.rest / GiB:.2f}"]
        cells += ["yes" if m.peak <= usable(t) else "NO" for t in gpus.values()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


#: classes of the data sets whose size is known before they are read (synthetic: its option or default)
NUM_CLASSES = {"cub": 200, "aircraft": 100, "flowers": 102, "pets": 37}


def num_classes_of(cfg: TrainConfig) -> int:
    """The class count the run's heads will have, without reading the data set."""
    if cfg.dataset == "synthetic":
        from .synthetic import DEFAULTS

        return cfg.synthetic_classes or DEFAULTS["num_classes"]
    if cfg.dataset not in NUM_CLASSES:
        raise ConfigError(f"dataset={cfg.dataset!r}: its class count is known only once it is read; give num_classes")
    return NUM_CLASSES[cfg.dataset]


def line(rows: Sequence[StepMemory]) -> tuple[float, float]:
    """(a, b) of peak = a + b x batch through the smallest and largest batch of one setting's plans."""
    lo, hi = min(rows, key=lambda m: m.batch), max(rows, key=lambda m: m.batch)
    if hi.batch == lo.batch:
        raise ValueError("the line needs plans at two batch sizes")
    b = (hi.peak - lo.peak) / (hi.batch - lo.batch)
    return lo.peak - b * lo.batch, b


def format_largest(rows: Sequence[StepMemory], gpus: dict[str, float] | None = None) -> str:
    """A markdown table: per strategy x crop, the largest batch each card holds, from :func:`line`."""
    gpus = GPUS if gpus is None else gpus
    head = ["strategy", "crop", "GiB per image"] + [f"largest batch, {g}" for g in gpus]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key in dict.fromkeys((m.strategy, m.crop) for m in rows):
        a, b = line([m for m in rows if (m.strategy, m.crop) == key])
        cells = [key[0], "yes" if key[1] else "no", f"{b / GiB:.3f}"]
        cells += [str(max(0, int((usable(t) - a) // b))) for t in gpus.values()]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def _device_info(device: torch.device) -> tuple[int, tuple[int, int], str]:
    free, _total = torch.cuda.mem_get_info(device)
    return free, torch.cuda.get_device_capability(device), torch.cuda.get_device_name(device)


def resolve_batch(cfg: TrainConfig, num_classes: int, capacity: int, world: int = 1, **kw) -> tuple[int, float]:
    """``batch_size='auto'``: (the largest global batch whose per-process step fits ``capacity``
    bytes, the learning rate for it).

    The learning rate follows the batch linearly (Goyal et al. 2017; TransFG's 3e-2 at 64 is
    7.5e-3 at 16): ``lr`` is the rate at ``lr_batch`` images, so the run uses
    lr x batch / lr_batch. Without ``lr_batch`` there is nothing to scale from: an error.
    """
    ref = getattr(cfg, "lr_batch", None)
    if ref is None:
        raise ConfigError("batch_size=auto scales the learning rate with the batch it picks: say which batch "
                          "lr is for with lr_batch (e.g. --lr-batch 16 for the full profile's lr at batch 16)")
    per = largest_batch(cfg, num_classes, capacity, **kw)
    if per == 0:
        raise DoesNotFit(f"batch_size=auto: not even 1 image per process fits {size(capacity)} "
                         f"({cfg.strategy}, crop={cfg.crop}, img_size={cfg.img_size})")
    batch = per * world
    return batch, cfg.lr * batch / ref


def check_fits(cfg: TrainConfig, num_classes: int, device: torch.device, world: int = 1,
               free_bytes: int | None = None, capability: tuple[int, int] | None = None,
               name: str = "this device") -> TrainConfig:
    """The guard ``fgnb.train.train`` calls before building the model: on a CUDA device (or
    with ``free_bytes`` given) plan the step and stop with :class:`DoesNotFit`, naming the
    plan, the free memory and the settings that would fit, when it exceeds HEADROOM x free.
    Resolves ``batch_size='auto'``; returns the config to train (unchanged if it fits).
    Elsewhere (CPU, MPS, no ``free_bytes``) it checks nothing, and ``auto`` is an error.
    ``name``: the device in the messages (a CUDA device's own name when it is asked).
    """
    if free_bytes is None:
        if device.type != "cuda":
            if cfg.batch_size == "auto":
                raise ConfigError(f"batch_size=auto fits the batch to a CUDA GPU's free memory; on {device.type} "
                                  "give a number")
            return cfg
        free_bytes, capability, name = _device_info(device)
    capability = capability or (8, 0)
    kw = dict(device_type="cuda", capability=capability)
    capacity = int(HEADROOM * free_bytes)
    if cfg.batch_size == "auto":
        batch, lr = resolve_batch(cfg, num_classes, capacity, world, **kw)
        print(f"batch_size=auto: {batch} images per batch fit {size(free_bytes)} free on {name}; "
              f"lr {cfg.lr:g} x {batch}/{cfg.lr_batch} = {lr:.4g}")
        return cfg.replace(batch_size=batch, lr=lr)
    if cfg.batch_size % world:
        return cfg  # the sampler's own error names it
    try:
        m = step_memory(cfg, num_classes, cfg.batch_size // world, **kw)
    except Exception as e:  # the plan leans on torch's fake tensors: if they fail, train unchecked rather than not at all
        import warnings

        warnings.warn(f"fgnb could not plan this run's memory ({type(e).__name__}: {e}); training without the check")
        return cfg
    if m.peak <= capacity:
        return cfg
    options = _options(cfg, num_classes, capacity, world, **kw)
    raise DoesNotFit(
        f"this run would not fit: its step needs about {size(m.peak)} per process ({cfg.strategy}, "
        f"crop={cfg.crop}, batch {cfg.batch_size}, img_size {cfg.img_size}, {m.amp}), and {name} has "
        f"{size(free_bytes)} free ({HEADROOM:.0%} usable: {size(capacity)}). Settings that fit: "
        + "; ".join(options) + ". (python -m fgnb plan prints the whole table.)")


def _options(cfg: TrainConfig, num_classes: int, capacity: int, world: int, **kw) -> list[str]:
    """What would fit instead: a smaller batch (and its linearly scaled lr), the crop off, the last strategy."""
    out = []
    per = largest_batch(cfg, num_classes, capacity, limit=cfg.batch_size // world, **kw)
    if per:
        b = per * world
        out.append(f"batch_size={b} with lr={cfg.lr * b / cfg.batch_size:.3g} (linear scaling), or batch_size=auto "
                   f"with lr_batch={cfg.batch_size}")
    for change in (dict(crop=False), dict(strategy="last")):
        if all(getattr(cfg, k) == v for k, v in change.items()):
            continue
        c = cfg.replace(**change)
        m = step_memory(c, num_classes, cfg.batch_size // world, **kw)
        if m.peak <= capacity:
            out.append(", ".join(f"{k}={v}" for k, v in change.items()) + f" ({size(m.peak)})")
    if not out:
        out.append("none at this img_size: a smaller img_size, or a GPU with more memory")
    return out
