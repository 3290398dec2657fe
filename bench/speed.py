"""Speed and memory of fgnb against plain timm, as ratios measured in the same run.

    python bench/speed.py --out bench/results/speed_cpu.json          # ~5 min on 2 CPU cores
    python bench/speed.py --tiny --out /tmp/speed.json                # seconds (CI)

Sections (every figure is a ratio against a reference timed in the same process, in
interleaved rounds after warm-up: each round times the reference and every candidate once,
and the reported ratio is the median over rounds of candidate / reference; medians of the
absolute times are kept as context):

1. ``train_step``: one training step of each strategy (``last``, ``summed``,
   ``progressive``, ``progressive+crop``) against a plain timm ViT step (``timm.create_model``
   with its own head, cross-entropy, backward, AdamW step) on the same batch and model
   size. Ideal progressive cost = sum of the stage depths / depth (R = 3 stages running
   as deep as their target layer); with the crop, twice that (a second progressive step
   on the crops). Peak memory per strategy against timm's: ``torch.cuda.max_memory_allocated``
   on CUDA; on CPU the peak-RSS growth during one step (``/proc/self/status`` VmHWM after
   resetting it through ``/proc/self/clear_refs``) in a child process with a fixed malloc
   mmap threshold, so freed tensors leave the resident set.
2. ``attn_capture``: FGViT forward returning every layer's per-head CLS attention against
   timm's fused ``forward_features`` (inference, no grad), and the naive way (fused
   attention off, the full N x N maps kept through hooks).
3. ``crop``: the batched crop pipeline (head_product, mean_threshold, boxes_from_mask,
   crop_and_resize) against a per-image loop (numpy product/threshold/box, PIL crop +
   resize BILINEAR), and its share of one ``progressive+crop`` training step.
4. ``throughput``: training images/s per strategy (batch / median step time).
5. ``epoch``: one epoch of the book's CPU set-up through ``fgnb.train.train``: the share of
   the epoch spent waiting for data, and the validation pass against the epoch.

The model is the one the ablation trains (``bench/ablation.py``'s CPU base: timm's hybrid ViT,
``fgnb.config.SYNTHETIC_ARCH``), since what this file measures is what the ablation's seeds
cost, unless ``--model`` and its options say otherwise (``--model vit_tiny_patch16_224
--patch-size 4``: the plain ViT that the book's cpu-quick profile trains).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from common import REPO, command_line, git_commit, machine_info, utc_now, write_json  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

STRATEGY_ITEMS = ("last", "summed", "progressive", "progressive+crop", "progressive+crop:separate")


# ----------------------------------------------------------------------------- helpers
def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(fns: dict, reference: str, warmup: int, repeats: int, device) -> dict:
    """Time every fn once per round, rounds after warm-up; ratios per round vs the reference."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    sync(device)
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            sync(device)
            t = time.perf_counter()
            fn()
            sync(device)
            times[k].append(time.perf_counter() - t)
    out = {}
    for k, ts in times.items():
        ratios = [a / b for a, b in zip(ts, times[reference])]
        out[k] = {
            "median_s": statistics.median(ts),
            "min_s": min(ts),
            "ratio": statistics.median(ratios),
            "ratio_iqr": _iqr(ratios),
            "times_s": [round(t, 5) for t in ts],
        }
    return out


def _iqr(xs):
    if len(xs) < 4:
        return None
    q = statistics.quantiles(xs, n=4)
    return [q[0], q[2]]


def rows_add(rows, section, item, **kw):
    rows.append({"section": section, "item": item, **kw})


def small_vit_kwargs(a) -> dict:
    kw = dict(img_size=a.img_size, patch_size=a.patch_size, depth=a.depth)
    if getattr(a, "embed_dim", None):
        kw["embed_dim"] = a.embed_dim
    if getattr(a, "num_heads", None):
        kw["num_heads"] = a.num_heads
    return kw


# ----------------------------------------------------------------------------- 1. train step
class TimmStep:
    """The reference: a plain timm ViT training step with its own head."""

    def __init__(self, model_name, num_classes, lr, device, amp="off", **kw):
        import timm
        from fgnb.devices import autocast_for
        self.model = timm.create_model(model_name, num_classes=num_classes, **kw).to(device).train()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=lr)
        self.autocast, self.scaler = autocast_for(torch.device(device), amp)

    def __call__(self, x, y):
        self.opt.zero_grad(set_to_none=True)
        with self.autocast():
            loss = F.cross_entropy(self.model(x).float(), y)
        if self.scaler is None:
            loss.backward()
            self.opt.step()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.opt)
            self.scaler.update()


class FgnbStep:
    """One fgnb batch through :class:`fgnb.step.BatchStep`, the very step ``fgnb.train.train``
    takes for ``cfg``: the strategy's step(s) and, with ``crop``, the boxes' eval-mode forward
    (``crop_views``, crops cut from a 4x source view) and the joint step
    (``crop_update='joint'``) or the strategy's steps on every distinct crop set (``separate``).
    The model, optimizer and step options are training's own (``build_model``, ``make_optimizer``,
    ``clip_grad`` ...)."""

    def __init__(self, cfg, num_classes, device):
        from fgnb.pretrained import build_model
        from fgnb.step import BatchStep
        self.cfg = cfg
        self.model = build_model(cfg, num_classes).to(device).train()
        self.step = BatchStep(cfg, self.model, torch.device(device))
        self._batch = None

    def __call__(self, x, y, batch=None):
        """``batch``: the loader's (with its source view); default: ``x`` with a 4x source view, made once."""
        if batch is None:
            if self._batch is None or self._batch["image"] is not x:
                self._batch = {"image": x, "label": y, "source": F.interpolate(x, scale_factor=4, mode="bilinear")}
            batch = self._batch
        self.step(batch, x, y)


def make_step(item, a, device):
    kw = small_vit_kwargs(a)
    amp = getattr(a, "amp", "off")  # the same mixed precision for the reference and fgnb
    if item == "timm":
        return TimmStep(a.model, a.classes, 1e-4, device, amp=amp, **kw)
    from fgnb.config import TrainConfig
    arch = {"patch_size": None, "depth": None, "embed_dim": None, "num_heads": None, **kw}  # None: the model's own
    cfg = TrainConfig(model=a.model, weights=None, lr=1e-4, strategy=item.split("+")[0], crop="+crop" in item,
                      crop_update="separate" if item.endswith(":separate") else "joint", crop_from="source", amp=amp,
                      # the box read on the input, as the committed speed files (and the H200's peak) measured it
                      attention_from="input", **arch)
    return FgnbStep(cfg, a.classes, device)


def ideal_costs(depth: int, targets: int = 3) -> dict:
    from fgnb.model import resolve_targets
    layers = resolve_targets(targets, depth)
    prog = sum(l + 1 for l in layers) / depth
    # joint: every stage forwards and back-propagates 2B images (2 x prog), plus the boxes'
    # forward of B images without backward (about 1/3 of a step); separate: a second
    # progressive step on the crops, plus that forward.
    return {"timm": 1.0, "last": 1.0, "summed": 1.0, "progressive": prog, "progressive+crop": 2 * prog + 1 / 3,
            "progressive+crop:separate": 2 * prog + 1 / 3, "_target_layers": list(layers)}


def bench_train_step(a, device, rows, res):
    torch.manual_seed(0)
    x = torch.randn(a.batch, 3, a.img_size, a.img_size, device=device)
    y = torch.randint(0, a.classes, (a.batch,), device=device)
    items = ["timm", *STRATEGY_ITEMS]
    steps = {k: make_step(k, a, device) for k in items}
    fns = {k: (lambda s=s: s(x, y)) for k, s in steps.items()}
    r = interleaved(fns, "timm", a.warmup, a.repeats, device)
    ideal = ideal_costs(a.depth)
    res["train_step"] = {"timing": r, "ideal": ideal, "batch": a.batch,
                         "model": dict(name=a.model, **small_vit_kwargs(a)), "classes": a.classes,
                         "reference": "timm.create_model(own head) + cross_entropy + backward + AdamW.step"}
    for k in STRATEGY_ITEMS:
        rows_add(rows, "train_step", k, ratio=r[k]["ratio"], ideal=ideal[k], ratio_over_ideal=r[k]["ratio"] / ideal[k],
                 value=r[k]["median_s"] * 1000, unit="ms/step (timm %.1f ms)" % (r["timm"]["median_s"] * 1000))
    for k in items:
        rows_add(rows, "throughput", k, value=a.batch / r[k]["median_s"], unit="images/s",
                 ratio=r["timm"]["median_s"] / r[k]["median_s"])
    res["throughput"] = {k: a.batch / r[k]["median_s"] for k in items}
    del steps
    gc.collect()
    return r


# ----------------------------------------------------------------------------- memory
def _rss_kb(field):
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(field)


def _reset_hwm():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def memory_worker(a) -> dict:
    """Peak memory growth of one step per item (run in a child process on CPU)."""
    device = torch.device(a.device)
    torch.manual_seed(0)
    x = torch.randn(a.batch, 3, a.img_size, a.img_size, device=device)
    y = torch.randint(0, a.classes, (a.batch,), device=device)
    out = {}
    for k in ["timm", *STRATEGY_ITEMS]:
        step = make_step(k, a, device)
        step(x, y)  # optimizer state exists from here on, as in training
        step(x, y)
        gc.collect()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            base = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
            step(x, y)
            torch.cuda.synchronize(device)
            out[k] = (torch.cuda.max_memory_allocated(device) - base) / 2**20
        else:
            base = _rss_kb("VmRSS")
            _reset_hwm()
            step(x, y)
            out[k] = (_rss_kb("VmHWM") - base) / 1024
        del step
        gc.collect()
    return out


def bench_memory(a, device, rows, res):
    method = ("torch.cuda.max_memory_allocated during one step minus memory allocated before it"
              if device.type == "cuda" else
              "CPU: peak RSS growth during one step (VmHWM after clear_refs=5) in a child process "
              "with MALLOC_MMAP_THRESHOLD_=65536; includes activations, gradients and temporaries, not "
              "the weights and optimizer state allocated before the step; allocator caching makes it approximate")
    mem = None
    try:
        if device.type == "cuda":
            mem = memory_worker(a)
        else:
            pathlib.Path("/proc/self/clear_refs").stat()
            env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "PYTHONPATH": str(REPO)}
            args = [sys.executable, __file__, "--_memory-worker", json.dumps(vars(a))]
            p = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
            if p.returncode == 0:
                mem = json.loads(p.stdout.strip().splitlines()[-1])
            else:
                method = f"n/a: memory worker failed: {p.stderr[-500:]}"
    except (OSError, subprocess.SubprocessError) as e:
        method = f"n/a on this platform ({e})"
    res["memory"] = {"method": method, "peak_mib": mem}
    if mem:
        for k in STRATEGY_ITEMS:
            rows_add(rows, "memory", k, ratio=mem[k] / mem["timm"] if mem["timm"] > 0 else None,
                     value=mem[k], unit="MiB peak growth per step (timm %.0f MiB)" % mem["timm"])
    else:
        for k in STRATEGY_ITEMS:
            rows_add(rows, "memory", k, ratio=None, value=None, unit=method)


# ----------------------------------------------------------------------------- 2. attention capture
def bench_capture(a, device, rows, res):
    from fgnb.model import create_model
    out = {}
    for width, cfgs in a.capture_sets:
        for img, batch in cfgs:
            torch.manual_seed(0)
            m = create_model(width, num_classes=10, img_size=img, **a.capture_kwargs).to(device).eval()
            vit = m.vit
            x = torch.randn(batch, 3, img, img, device=device)
            naive_store = {}

            def keep(i):
                def hook(_mod, _inp, attn):
                    naive_store[i] = attn.detach()
                return hook

            def naive():
                for blk in vit.blocks:
                    blk.attn.fused_attn = False
                hooks = [blk.attn.attn_drop.register_forward_hook(keep(i)) for i, blk in enumerate(vit.blocks)]
                try:
                    vit.forward_features(x)
                    # The same per-head CLS rows, cut out of the full maps.
                    [naive_store[i][:, :, 0, vit.num_prefix_tokens:] for i in range(len(vit.blocks))]
                finally:
                    for h in hooks:
                        h.remove()
                    for blk in vit.blocks:
                        blk.attn.fused_attn = True
                    naive_store.clear()

            fns = {
                "timm_fused": lambda: vit.forward_features(x),
                "fgnb_no_capture": lambda: m(x),
                "fgnb_cls_all_layers": lambda: m(x, attn_layers="all"),
                "naive_full_maps": naive,
            }
            with torch.no_grad():
                # Check that all ways agree before timing them.
                o = m(x, attn_layers="all")
                for blk in vit.blocks:
                    blk.attn.fused_attn = False
                hooks = [blk.attn.attn_drop.register_forward_hook(keep(i)) for i, blk in enumerate(vit.blocks)]
                vit.forward_features(x)
                for h in hooks:
                    h.remove()
                for blk in vit.blocks:
                    blk.attn.fused_attn = True
                err = max((o.attn[i] - naive_store[i][:, :, 0, vit.num_prefix_tokens:]).abs().max().item()
                          for i in range(len(vit.blocks)))
                naive_store.clear()
                r = interleaved(fns, "timm_fused", a.warmup, a.repeats, device)
            key = f"{width}@{img}px,batch{batch}"
            n_tok = (img // m.patch_size[0]) ** 2 + 1
            out[key] = {"timing": r, "max_abs_diff_vs_naive": err, "tokens": n_tok, "heads": vit.blocks[0].attn.num_heads,
                        "full_maps_bytes_per_image": 4 * len(vit.blocks) * vit.blocks[0].attn.num_heads * n_tok ** 2}
            for k in ("fgnb_no_capture", "fgnb_cls_all_layers", "naive_full_maps"):
                rows_add(rows, "attn_capture", f"{k} [{key}]", ratio=r[k]["ratio"],
                         value=r[k]["median_s"] * 1000, unit="ms/forward (timm fused %.1f ms)" % (r["timm_fused"]["median_s"] * 1000))
            del m, vit
            gc.collect()
    res["attn_capture"] = out


# ----------------------------------------------------------------------------- 3. crop pipeline
def pil_crop_loop(attn_np, images_pil, grid, patch, size):
    """The per-image way: numpy product over heads, mean threshold, box, PIL crop + resize."""
    from PIL import Image
    gh, gw = grid
    out = []
    for a, img in zip(attn_np, images_pil):
        s = np.log(np.maximum(a, 1e-45)).sum(axis=0)  # product over heads, in log space
        p = np.exp(s - s.max())
        mask = (p > p.mean()).reshape(gh, gw)
        rows, cols = np.nonzero(mask)
        if len(rows) == 0:
            box = (0, 0, gw * patch, gh * patch)
        else:
            box = (cols.min() * patch, rows.min() * patch, (cols.max() + 1) * patch, (rows.max() + 1) * patch)
        out.append(img.crop(box).resize((size, size), Image.BILINEAR))
    return out


def peaked_attention(batch, heads, gh, gw, device):
    """(B, H, K) CLS attention with one blob per image (as a trained model's), so the mean
    threshold marks a part of the image rather than nearly all of it (as uniform noise would)."""
    g = torch.Generator().manual_seed(0)
    ys, xs = torch.meshgrid(torch.arange(gh, dtype=torch.float32), torch.arange(gw, dtype=torch.float32), indexing="ij")
    cy, cx = torch.rand(batch, 1, 1, generator=g) * gh, torch.rand(batch, 1, 1, generator=g) * gw
    sigma = max(gh, gw) / 6
    bump = 4 * torch.exp(-((ys - cy) ** 2 + (xs - cx) ** 2) / (2 * sigma ** 2))  # (B, gh, gw)
    logits = bump.reshape(batch, 1, -1) + 0.5 * torch.randn(batch, heads, gh * gw, generator=g)
    return logits.softmax(-1).to(device)


def _to_pil(images):
    from PIL import Image
    u8 = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(u) for u in u8]


def _from_pil(pils):
    return torch.from_numpy(np.stack([np.asarray(p) for p in pils])).permute(0, 3, 1, 2).float() / 255


def bench_crop(a, device, rows, res, step_timing):
    from fgnb.attention import boxes_from_mask, head_product, mean_threshold
    from fgnb.crop import crop_and_resize
    out = {}
    for name, img, patch, heads, batch in a.crop_sets:
        torch.manual_seed(0)
        gh = gw = img // patch
        images = torch.rand(batch, 3, img, img, device=device)
        attn = peaked_attention(batch, heads, gh, gw, device)

        def batched():
            m = mean_threshold(head_product(attn))
            boxes = boxes_from_mask(m, (gh, gw), patch)
            return crop_and_resize(images, boxes, img)

        attn_np = attn.cpu().numpy()
        pils = _to_pil(images)

        def loop_with_conversion():
            # What a per-image training loop must do: tensor -> PIL -> crop/resize -> tensor.
            an = attn.cpu().numpy()
            return _from_pil(pil_crop_loop(an, _to_pil(images), (gh, gw), patch, img)).to(device)

        def loop_pil_only():
            return pil_crop_loop(attn_np, pils, (gh, gw), patch, img)

        fns = {"pil_loop_with_conversion": loop_with_conversion, "pil_loop_pil_only": loop_pil_only, "fgnb_batched": batched}
        r = interleaved(fns, "fgnb_batched", a.warmup, a.repeats, device)
        # Boxes agree between the two ways?
        with torch.no_grad():
            mb = boxes_from_mask(mean_threshold(head_product(attn)), (gh, gw), patch)
        same = 0
        for i in range(batch):
            s = np.log(np.maximum(attn_np[i], 1e-45)).sum(0)
            p = np.exp(s - s.max())
            rr, cc = np.nonzero((p > p.mean()).reshape(gh, gw))
            b = (cc.min() * patch, rr.min() * patch, (cc.max() + 1) * patch, (rr.max() + 1) * patch) if len(rr) else (0, 0, img, img)
            same += tuple(int(v) for v in mb[i].tolist()) == b
        key = f"{name}: {batch}x{img}px, patch {patch}, {heads} heads"
        area = ((mb[:, 2] - mb[:, 0]) * (mb[:, 3] - mb[:, 1])).mean().item() / img ** 2
        entry = {"timing": r, "boxes_equal": f"{same}/{batch}", "mean_box_area": area,
                 "speedup_vs_loop_with_conversion": r["pil_loop_with_conversion"]["ratio"],
                 "speedup_vs_loop_pil_only": r["pil_loop_pil_only"]["ratio"]}
        if name == "train-config" and step_timing is not None:
            t_step = step_timing["progressive+crop"]["median_s"]
            entry["share_of_progressive_crop_step"] = r["fgnb_batched"]["median_s"] / t_step
            rows_add(rows, "crop", f"share of one progressive+crop step [{key}]", ratio=entry["share_of_progressive_crop_step"],
                     value=r["fgnb_batched"]["median_s"] * 1000, unit="ms batched crop (goal: share < 0.03)")
        rows_add(rows, "crop", f"speedup vs per-image PIL loop incl. tensor<->PIL [{key}]",
                 ratio=r["pil_loop_with_conversion"]["ratio"], value=r["fgnb_batched"]["median_s"] * 1000,
                 unit="ms batched (goal: >= 10x)")
        rows_add(rows, "crop", f"speedup vs per-image PIL loop, PIL in/out [{key}]",
                 ratio=r["pil_loop_pil_only"]["ratio"], value=r["pil_loop_pil_only"]["median_s"] * 1000,
                 unit="ms per-image loop")
        out[key] = entry
    res["crop"] = out


# ----------------------------------------------------------------------------- 5. a default epoch
EPOCH_ITEMS = {"last": dict(strategy="last"), "progressive+crop": dict(strategy="progressive", crop=True)}


def bench_epoch(a, device, rows, res):
    """Where a default training epoch goes: data loading and the validation pass.

    Runs ``fgnb.train.train`` for one epoch of the ablation's CPU set-up (its base on
    the default synthetic set) per item and worker count (``--epoch-workers``: 0 and the
    default, :func:`fgnb.devices.default_workers` on this machine), and reads the epoch's own
    ``data_time_s`` (time the loop waited for the next batch) and ``eval_time_s`` (the
    validation pass after the epoch) against its ``epoch_time_s`` (the training loop).
    """
    import tempfile

    from ablation import cpu_base
    from fgnb.config import TrainConfig
    from fgnb.train import train
    # the model timed by the other sections (--model ...); --tiny times the base's own model
    arch = {} if a.tiny else dict(model=a.model, patch_size=a.patch_size, depth=a.depth,
                                  embed_dim=a.embed_dim or None, num_heads=a.num_heads or None)
    base = {**cpu_base(), **arch, "epochs": 1, "device": str(device), "progress": False}
    if a.tiny:
        base.update(synthetic_classes=3, synthetic_train_per_class=8, synthetic_test_per_class=2, batch_size=4,
                    val_fraction=0.25)
    res["epoch"] = {}
    counts, res["epoch_default_workers"] = epoch_worker_counts(a.epoch_workers, device.type)
    for item, opts in EPOCH_ITEMS.items():
        for workers in counts:
            with tempfile.TemporaryDirectory() as tmp:
                h = train(TrainConfig(**{**base, **opts, "workers": workers, "out": tmp}))["history"][0]
            share = h["data_time_s"] / h["epoch_time_s"]
            key = f"{item} [workers={workers}]"
            res["epoch"][key] = {k: h[k] for k in ("epoch_time_s", "data_time_s", "eval_time_s", "images_per_s")}
            rows_add(rows, "epoch", f"data share of a training epoch, {key}", ratio=share,
                     value=h["epoch_time_s"], unit="s per epoch (goal: data share < 0.03)")
            rows_add(rows, "epoch", f"validation pass / training epoch, {key}", ratio=h["eval_time_s"] / h["epoch_time_s"],
                     value=h["eval_time_s"], unit="s per validation pass")


# ----------------------------------------------------------------------------- main
def _workers_arg(s: str):
    if s == "default":
        return s
    try:
        n = int(s)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"--epoch-workers takes whole numbers >= 0 or 'default', got {s!r}")
    return n


def epoch_worker_counts(requested, device_type: str) -> tuple[list[int], int]:
    """The worker counts to time, 'default' resolved by fgnb.devices.default_workers (each once),
    and that default."""
    from fgnb.devices import default_workers

    default = default_workers(device_type)
    counts = []
    for w in requested:
        n = default if w == "default" else int(w)
        if n not in counts:
            counts.append(n)
    return counts, default


def settings(args) -> argparse.Namespace:
    a = argparse.Namespace(**vars(args))
    if args.tiny:
        a.batch, a.img_size, a.patch_size, a.depth, a.classes = 4, 32, 8, 4, 5
        a.warmup, a.repeats = 1, 3
        a.capture_sets = [("vit_tiny_patch16_224", [(32, 2)])]
        a.capture_kwargs = dict(patch_size=8, depth=3)
        a.crop_sets = [("train-config", 32, 8, 3, 4)]
        a.epoch_workers = [0]
    else:
        a.capture_sets = [("vit_tiny_patch16_224", [(224, 8), (448, 2)])]
        if args.base_width:
            a.capture_sets.append(("vit_base_patch16_224", [(224, 1), (448, 1)]))
        a.capture_kwargs = {}
        a.crop_sets = [("train-config", a.img_size, a.patch_size, 3, a.batch),
                       ("cub-448", 448, 16, 12, 16)]
    return a


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="bench/results/speed_cpu.json")
    p.add_argument("--device", default="auto", help="auto (cuda if present) or a torch device")
    from fgnb.config import SYNTHETIC_ARCH as arch  # the model the ablation trains (chapter 8)
    p.add_argument("--model", default=arch["model"])
    p.add_argument("--img-size", type=int, default=64)
    p.add_argument("--patch-size", type=int, default=arch["patch_size"])
    p.add_argument("--depth", type=int, default=arch["depth"])
    p.add_argument("--embed-dim", type=int, default=arch["embed_dim"], help="token width (0: the model's)")
    p.add_argument("--num-heads", type=int, default=arch["num_heads"], help="attention heads (0: the model's)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--base-width", action="store_true", help="also time attention capture with ViT-B/16 (batch 1)")
    p.add_argument("--sections", nargs="+", default=["train_step", "memory", "attn_capture", "crop", "epoch"],
                   choices=["train_step", "memory", "attn_capture", "crop", "epoch"])
    p.add_argument("--epoch-workers", type=_workers_arg, nargs="+", default=[0, "default"],
                   help="DataLoader workers timed in 'epoch' (default: fgnb.devices.default_workers on this machine)")
    p.add_argument("--tiny", action="store_true", help="seconds-long smoke run (CI)")
    p.add_argument("--amp", default="off", choices=("off", "fp16", "bf16"),
                   help="mixed precision of the train steps, timm's reference and fgnb's alike (fp16: with a GradScaler)")
    p.add_argument("--_memory-worker", dest="memory_worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.memory_worker:
        a = argparse.Namespace(**json.loads(args.memory_worker))
        if a.threads:
            torch.set_num_threads(a.threads)
        print(json.dumps(memory_worker(a)))
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    a = settings(args)
    t0 = time.perf_counter()
    res = {"kind": "speed", "schema": 1, "command": command_line(), **git_commit(), "machine": machine_info(),
           "started": utc_now(), "device": str(device), "tiny": bool(args.tiny),
           "settings": {k: v for k, v in vars(a).items() if k not in ("memory_worker",)},
           "method": "ratios = median over interleaved rounds of (candidate time / reference time in the same round), "
                     f"{a.warmup} warm-up + {a.repeats} timed rounds; absolute times are context only",
           "rows": []}
    rows = res["rows"]
    timing = None
    for section in args.sections:
        ts = time.perf_counter()
        print(f"[{utc_now()}] {section} ...", flush=True)
        if section == "train_step":
            timing = bench_train_step(a, device, rows, res)
        elif section == "memory":
            bench_memory(a, device, rows, res)
        elif section == "attn_capture":
            with torch.no_grad():
                bench_capture(a, device, rows, res)
        elif section == "crop":
            bench_crop(a, device, rows, res, timing)
        elif section == "epoch":
            bench_epoch(a, device, rows, res)
        res.setdefault("section_wall_s", {})[section] = round(time.perf_counter() - ts, 1)
    res["wall_time_s"] = round(time.perf_counter() - t0, 1)
    res["finished"] = utc_now()
    try:
        res["machine"]["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    write_json(args.out, res)
    from fgnb.results import speed_table
    print(speed_table(res, markdown=True))
    print(f"wrote {args.out} in {res['wall_time_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
