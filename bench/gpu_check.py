"""The device check for the day a GPU is lent: everything the CPU tests cannot prove.

    bash bench/gpu_check.sh                      # on a CUDA machine, <= 8 minutes
    python bench/gpu_check.py --dry-run          # anywhere: the plan, checked, nothing run

Steps (each one's outcome goes into the results file, an error included, so one failing
step does not hide the others; every step has a time budget inside the total):

1. ``env``: torch/CUDA versions, the GPU, its compute capability, what ``amp='auto'``
   picks there (:func:`fgnb.devices.amp_dtype`), and how many GPUs.
2. ``speed``: ``bench/speed.py`` on CUDA with ``--amp fp16``, and ``--amp bf16`` where the
   GPU has native bf16 (capability >= 8.0); each writes its own speed JSON.
3. ``runs``: a short synthetic training run (1 epoch, a few batches) for every strategy
   variant and crop option, with ``amp='auto'`` and, where auto is bf16, with fp16 too
   (so the GradScaler paths run on a GPU): losses finite, images/s.
4. ``chapter7``: chapter 7 under papermill with ``profile='full'`` on the GPU, on the
   synthetic data (no CUB download), with its simulated disconnect inside an epoch.
5. ``torchrun``: with 2 or more GPUs, the 2-process (NCCL) training against 1 process.

Results: ``bench/results/gpu_check_cuda.json`` (kind ``gpu_check``) by default.

``--chapters`` (``bash bench/gpu_check.sh --chapters``, <= 8 minutes, its own results file
``bench/results/chapters_cuda.json``, kind ``gpu_chapters``) times the book on the GPU instead:
``env``, then ``chapters``: every chapter executed under papermill as a student runs it there
(its own parameters: on a GPU chapters 5 and 6 train live, ``retrain=True``), in the book's
order, each chapter's seconds and errors written as it finishes. Every chapter's opening line
renders its GPU time from that file (:func:`fgnb.book.run_time`). ``--chapter-names`` runs some
of them only (a CPU can try one: ``--device cpu``).

``--full`` (``bash bench/gpu_check.sh --full``, <= 8 minutes, its own results file
``bench/results/gpu_full_cuda.json``, kind ``gpu_full``) is the full recipe's check instead:
``env``, then ``full``: chapter 7's ``full`` profile (timm's ViT-B/16 at 448 px, random
weights: nothing can be downloaded there; batch 16, SGD, ``amp='auto'``) trained on a
CUB-layout synthetic set at CUB's image size (500 x 375, :data:`fgnb.synthetic.CUB_SHAPE`)
for 2 epochs of ``--full-batches`` batches, for every strategy x crop. Each cell records the
peak ``torch.cuda.max_memory_allocated`` of the run, the plan's estimate of it
(:func:`fgnb.memory.step_memory`) and the error, and the images/s of the second (warm)
epoch, with and without the time spent waiting for data. ``--tiny`` swaps in a small ViT and
a few batches, so the step can be tried on a CPU (``--device cpu``: no peak is measured).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time
import traceback

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

STEPS = ("env", "speed", "runs", "chapter7", "torchrun")
#: the steps of --full, and of --chapters (each its own results file)
FULL_STEPS = ("env", "full")
CHAPTER_STEPS = ("env", "chapters")
#: seconds each step may take (the total of STEPS, and of FULL_STEPS, stays under the 8 minutes of gpu_check.sh)
BUDGET = {"env": 30, "speed": 150, "runs": 120, "chapter7": 90, "torchrun": 60, "full": 420, "chapters": 420}
#: the book's chapters, in its order (the file names sort as _toc.yml lists them)
CHAPTERS = sorted((ROOT / "notebooks").glob("*.ipynb"))
CHAPTER7 = ROOT / "notebooks" / "07_full_training_gpu.ipynb"
#: the small synthetic run: the CPU profile's architecture, a few batches
RUN = dict(dataset="synthetic", epochs=1, limit_batches=4, batch_size=32, val_fraction=0.1, progress=False,
           synthetic_classes=5, synthetic_train_per_class=30, synthetic_test_per_class=8)


def variants() -> list[dict]:
    """Every strategy variant and crop option TrainConfig offers (crop_update too, if it exists)."""
    from fgnb.config import TrainConfig

    choices = {f.name: f.metadata.get("choices") for f in dataclasses.fields(TrainConfig)}
    strategies = [dict(strategy=s) for s in choices["strategy"] if s != "progressive"]
    strategies += [dict(strategy="progressive", reforward=True), dict(strategy="progressive", reforward=False),
                   dict(strategy="progressive", order="deep_first")]
    crops = [dict(crop=False)] + [dict(crop=True, crop_update=u) for u in (choices.get("crop_update") or [None])]
    crops = [{k: v for k, v in c.items() if v is not None} for c in crops]
    return [{**s, **c} for s in strategies for c in crops]


def amp_modes(capability) -> list[str]:
    from fgnb.devices import amp_dtype
    import torch

    auto = amp_dtype("cuda", "auto", capability) if capability else None
    return ["auto", "fp16"] if auto == torch.bfloat16 else ["auto"]


# ----------------------------------------------------------------------------- steps
def step_env(a, res) -> dict:
    import torch
    import timm

    from fgnb.devices import amp_dtype

    cuda = torch.cuda.is_available() and a.device.startswith("cuda")
    cap = torch.cuda.get_device_capability(0) if cuda else None
    out = {"torch": torch.__version__, "timm": timm.__version__, "cuda": torch.version.cuda, "device": a.device,
           "gpus": torch.cuda.device_count() if cuda else 0, "capability": cap,
           "name": torch.cuda.get_device_name(0) if cuda else None,
           "amp_auto": str(amp_dtype("cuda", "auto", cap)) if cap else None,
           "is_bf16_supported": torch.cuda.is_bf16_supported() if cuda else None}
    try:
        out["nvidia_smi"] = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired):
        out["nvidia_smi"] = None
    return out


def speed_commands(a, capability) -> list[list[str]]:
    amps = ["fp16"] + (["bf16"] if capability and tuple(capability) >= (8, 0) else [])
    outdir = pathlib.Path(a.out).parent
    return [[sys.executable, str(ROOT / "bench" / "speed.py"), "--device", a.device, "--amp", amp,
             "--repeats", "5", "--out", str(outdir / f"speed_{a.device.split(':')[0]}_{amp}.json")] for amp in amps]


def step_speed(a, res) -> dict:
    out = {}
    deadline = time.monotonic() + BUDGET["speed"]
    for cmd in speed_commands(a, res.get("env", {}).get("capability")):
        amp = cmd[cmd.index("--amp") + 1]
        left = deadline - time.monotonic()
        if left < 10:
            out[amp] = {"skipped": "out of time"}
            continue
        t0 = time.perf_counter()
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=left, cwd=ROOT)
            out[amp] = {"rc": p.returncode, "seconds": round(time.perf_counter() - t0, 1),
                        "out": cmd[-1], "tail": p.stdout[-4000:] + p.stderr[-2000:]}
        except subprocess.TimeoutExpired:
            out[amp] = {"error": f"timed out after {left:.0f} s", "out": cmd[-1]}
    return out


def step_runs(a, res) -> list[dict]:
    import math

    from fgnb.config import SYNTHETIC_ARCH, TrainConfig
    from fgnb.train import train

    cap = res.get("env", {}).get("capability")
    plan = [(v, amp) for v in variants() for amp in amp_modes(cap)][: a.max_runs]
    deadline = time.monotonic() + BUDGET["runs"]
    rows = []
    with tempfile.TemporaryDirectory(prefix="fgnb-gpu-check-") as tmp:
        for i, (v, amp) in enumerate(plan):
            row = {**v, "amp": amp}
            if time.monotonic() > deadline:
                rows.append({**row, "skipped": "out of time"})
                continue
            t0 = time.perf_counter()
            try:
                cfg = TrainConfig(**SYNTHETIC_ARCH, weights="fgnb:synthetic", **RUN, **v, amp=amp, device=a.device,
                                  out=os.path.join(tmp, f"run{i}"))
                r = train(cfg)
                last = r["history"][-1]
                losses = [val for k, val in last.items() if "loss_head" in k]
                row.update(ok=all(math.isfinite(x) for x in losses), losses=losses,
                           images_per_s=last["images_per_s"], top1_last=r["test"]["top1_last"])
            except Exception as e:  # recorded, the next variant still runs
                row.update(ok=False, error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc()[-2000:])
            row["seconds"] = round(time.perf_counter() - t0, 1)
            print(json.dumps({k: row.get(k) for k in (*v, "amp", "ok", "seconds", "error")}), flush=True)
            rows.append(row)
    return rows


def chapter7_parameters(a, out: str) -> dict:
    from fgnb.config import SYNTHETIC_ARCH

    return dict(profile="full", download=False, out=out, epochs=2, simulate_disconnect=True,
                overrides=dict(dataset="synthetic", **SYNTHETIC_ARCH, img_size=64, resize_size=73, source_size=256,
                               weights="fgnb:synthetic", pretrained=False, device=a.device, workers=2,
                               batch_size=32, limit_batches=6))


def step_chapter7(a, res) -> dict:
    import fgnb.book

    with tempfile.TemporaryDirectory(prefix="fgnb-gpu-check-ch7-") as tmp:
        target = pathlib.Path(tmp) / CHAPTER7.name
        seconds = fgnb.book.execute(CHAPTER7, parameters=chapter7_parameters(a, os.path.join(tmp, "run")),
                                    output=str(target), timeout=BUDGET["chapter7"])
        nb = json.loads(target.read_text())
    text = "".join("".join(o.get("text", "")) for c in nb["cells"] for o in c.get("outputs", []))
    errors = notebook_errors(nb)
    return {"seconds": round(seconds, 1), "errors": errors, "full_profile": "profile: full" in text,
            "amp_line": next((ln for ln in text.splitlines() if ln.startswith("this machine:")), None)}


def torchrun_commands(a, tmp: str) -> dict[str, list[str]]:
    args = ["-m", "fgnb", "train", "--epochs", "1", "--limit-batches", "4", "--batch-size", "32", "--progress", "false",
            "--synthetic-classes", "5", "--synthetic-train-per-class", "30", "--synthetic-test-per-class", "8"]
    return {"one": [sys.executable, *args, "--out", os.path.join(tmp, "one")],
            "two": [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", *args,
                    "--out", os.path.join(tmp, "two")]}


def step_torchrun(a, res) -> dict:
    if res.get("env", {}).get("gpus", 0) < 2:
        return {"skipped": "fewer than 2 GPUs"}
    out = {}
    with tempfile.TemporaryDirectory(prefix="fgnb-gpu-check-ddp-") as tmp:
        for name, cmd in torchrun_commands(a, tmp).items():
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=BUDGET["torchrun"] / 2, cwd=ROOT)
            out[name] = {"rc": p.returncode, "tail": (p.stdout + p.stderr)[-3000:]}
            if p.returncode == 0:
                out[name]["test"] = json.loads(pathlib.Path(tmp, name, "test_metrics.json").read_text())
    return out


#: the full recipe's cells and the fixture they train on: 20 species of 500 x 375 images (as many per
#: species as the epochs' batches need: 48 for 60 batches of 16)
FULL_CELLS = [dict(strategy=s, crop=c) for s in ("last", "summed", "progressive") for c in (False, True)]
FULL_FIXTURE = dict(num_classes=20, train_per_class=24, test_per_class=1, size=256)
#: --tiny: the same cells with a small ViT at the full recipe's sizes, a few batches (a CPU can try it)
TINY = dict(model=dict(model="vit_tiny_patch16_224", patch_size=16, depth=3, embed_dim=48, num_heads=3, batch_size=4,
                       workers=0), fixture=dict(num_classes=2, train_per_class=4, test_per_class=1, size=128), batches=2)


def full_config(a, cell: dict, root: str, out: str):
    """Chapter 7's full profile on the fixture, for one strategy x crop cell."""
    import fgnb.book
    from fgnb.config import TrainConfig

    opts = fgnb.book.profile("full", root, **cell, weights=None, pretrained=False, device=a.device, epochs=2,
                             limit_batches=a.full_batches, val_fraction=0.0, progress=False, checkpoint_minutes=0,
                             out=out, **(TINY["model"] if a.tiny else {}))
    opts.pop("profile")
    if a.tiny:
        opts["limit_batches"] = TINY["batches"]
    return TrainConfig(**opts)


def step_full(a, res) -> dict:
    import torch

    from fgnb import memory
    from fgnb.synthetic import CUB_SHAPE, generate
    from fgnb.train import train

    cap = res.get("env", {}).get("capability")
    cuda = a.device.startswith("cuda")
    deadline = time.monotonic() + BUDGET["full"]
    fixture = {**(TINY["fixture"] if a.tiny else FULL_FIXTURE), "shape": CUB_SHAPE}
    # enough training images for the epochs' batches (a short epoch would time less than asked)
    cfg = full_config(a, FULL_CELLS[0], "ROOT", "OUT")
    need = -(-cfg.limit_batches * cfg.batch_size // fixture["num_classes"])
    fixture["train_per_class"] = max(fixture["train_per_class"], need)
    out = {"fixture": fixture, "tiny": a.tiny, "cells": []}
    with tempfile.TemporaryDirectory(prefix="fgnb-gpu-full-") as tmp:
        t0 = time.perf_counter()
        root = str(generate(os.path.join(tmp, "CUB_200_2011"), **fixture))
        out["fixture_seconds"] = round(time.perf_counter() - t0, 1)
        for i, cell in enumerate(FULL_CELLS):
            cfg = full_config(a, cell, root, os.path.join(tmp, f"run{i}"))
            row = {**cell, "batch": cfg.batch_size, "img_size": cfg.img_size, "source_size": cfg.source_size,
                   "model": cfg.model, "batches_per_epoch": cfg.limit_batches}
            if time.monotonic() > deadline:
                out["cells"].append({**row, "skipped": "out of time"})
                continue
            plan = memory.step_memory(cfg, fixture["num_classes"], cfg.batch_size, device_type="cuda",
                                      capability=tuple(cap) if cap else (8, 0))
            row.update(amp=plan.amp, plan_gib=plan.peak / memory.GiB)
            t0 = time.perf_counter()
            try:
                if cuda:
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats()
                    before = torch.cuda.memory_allocated()
                r = train(cfg)
                warm = r["history"][-1]  # epoch 2: cuDNN/cuBLAS set-up and the first allocations are behind
                compute_s = warm["epoch_time_s"] - warm["data_time_s"]
                row.update(ok=True, images_per_s=warm["images_per_s"], data_share=warm["data_time_s"] / warm["epoch_time_s"],
                           images_per_s_compute=warm["images_per_s"] * warm["epoch_time_s"] / max(compute_s, 1e-9))
                if cuda:
                    peak = torch.cuda.max_memory_allocated() - before
                    row.update(peak_gib=peak / memory.GiB, plan_error=(plan.peak - peak) / peak,
                               reserved_gib=torch.cuda.max_memory_reserved() / memory.GiB)
            except Exception as e:  # an out-of-memory error is a result too: the plan beside it says by how much
                row.update(ok=False, error=f"{type(e).__name__}: {e}"[:2000], traceback=traceback.format_exc()[-2000:])
            row["seconds"] = round(time.perf_counter() - t0, 1)
            print(json.dumps({k: row.get(k) for k in ("strategy", "crop", "plan_gib", "peak_gib", "plan_error",
                                                      "images_per_s", "ok", "seconds")}), flush=True)
            out["cells"].append(row)
    errors = [abs(c["plan_error"]) for c in out["cells"] if "plan_error" in c]
    out["max_abs_plan_error"] = max(errors) if errors else None
    return out


def notebook_errors(nb: dict) -> list[str]:
    """The error outputs of an executed notebook, as 'Name: value'."""
    return [f"{o.get('ename')}: {o.get('evalue')}" for c in nb["cells"] for o in c.get("outputs", [])
            if o.get("output_type") == "error"]


def chosen_chapters(a) -> list[pathlib.Path]:
    """The chapters ``--chapter-names`` asks for (all by default), in the book's order."""
    names = [p.stem for p in CHAPTERS]
    unknown = [n for n in (a.chapter_names or []) if n not in names]
    if unknown:
        raise ValueError(f"--chapter-names {' '.join(unknown)}: no such chapter; the chapters: {', '.join(names)}")
    return [p for p in CHAPTERS if not a.chapter_names or p.stem in a.chapter_names]


def step_chapters(a, res) -> dict:
    """Each chapter executed as a student runs it on this machine (its own parameters), timed; the
    results file is written after every chapter, so a stop at the limit keeps the chapters done."""
    import fgnb.book

    deadline = time.monotonic() + BUDGET["chapters"]
    out = res["chapters"] = {}
    with tempfile.TemporaryDirectory(prefix="fgnb-gpu-chapters-") as tmp:
        for path in chosen_chapters(a):
            left = deadline - time.monotonic()
            if left < 10:
                out[path.stem] = {"skipped": "out of time"}
                continue
            target = pathlib.Path(tmp) / path.name
            try:
                seconds = fgnb.book.execute(path, output=str(target), timeout=int(left))
                out[path.stem] = {"seconds": round(seconds, 1), "errors": notebook_errors(json.loads(target.read_text()))}
            except Exception as e:  # papermill raises on a failing cell: the chapter's error is its result
                out[path.stem] = {"error": f"{type(e).__name__}: {e}"[:2000]}
            print(path.stem, json.dumps(out[path.stem])[:300], flush=True)
            write(a.out, res)
    return out


RUNNERS = {"env": step_env, "speed": step_speed, "runs": step_runs, "chapter7": step_chapter7, "torchrun": step_torchrun, "full": step_full,
           "chapters": step_chapters}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=None, help="results file (default: bench/results/gpu_check_cuda.json, with "
                                                "--full gpu_full_cuda.json, with --chapters chapters_cuda.json)")
    p.add_argument("--device", default="cuda", help="torch device (cpu: to try the steps without a GPU)")
    p.add_argument("--steps", nargs="+", default=None, choices=(*STEPS, "full", "chapters"),
                   help=f"default: {' '.join(STEPS)}; with --full: {' '.join(FULL_STEPS)}; with --chapters: "
                        f"{' '.join(CHAPTER_STEPS)}")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--full", action="store_true", help="the full recipe's memory and speed check (see above)")
    mode.add_argument("--chapters", action="store_true", help="every chapter executed and timed on this machine (see above)")
    p.add_argument("--chapter-names", nargs="+", metavar="NAME",
                   help="--chapters: only these chapters (notebook names without .ipynb)")
    p.add_argument("--full-batches", type=int, default=60, help="--full: batches per epoch (2 epochs per cell)")
    p.add_argument("--tiny", action="store_true", help="--full with a small ViT and a few batches (a CPU can run it)")
    p.add_argument("--max-runs", type=int, default=None, help="at most this many synthetic runs (step 'runs')")
    p.add_argument("--dry-run", action="store_true", help="print and check the plan; run nothing, write nothing")
    a = p.parse_args(argv)
    a.steps = a.steps or list(FULL_STEPS if a.full else CHAPTER_STEPS if a.chapters else STEPS)
    kind = "gpu_full" if a.full else "gpu_chapters" if a.chapters else "gpu_check"
    a.out = a.out or str(ROOT / "bench" / "results" / {"gpu_full": "gpu_full_cuda.json", "gpu_chapters": "chapters_cuda.json",
                                                       "gpu_check": "gpu_check_cuda.json"}[kind])
    if a.chapter_names and not a.chapters:
        p.error("--chapter-names goes with --chapters")
    if a.dry_run:
        return dry_run(a)
    res = {"kind": kind, "schema": 1, "command": " ".join(sys.argv), "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "budget_s": {s: BUDGET[s] for s in a.steps}, "steps": list(a.steps)}
    for name in a.steps:
        t0 = time.perf_counter()
        print(f"== {name}", flush=True)
        try:
            res[name] = RUNNERS[name](a, res)
        except Exception as e:
            res[name] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-3000:]}
        res.setdefault("seconds", {})[name] = round(time.perf_counter() - t0, 1)
        write(a.out, res)  # after every step: a timeout still leaves the steps done so far
    res["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    write(a.out, res)
    print(f"wrote {a.out}")
    return 0


def write(path, res) -> None:
    from fgnb.atomic import atomic_write

    atomic_write(path, lambda tmp: pathlib.Path(tmp).write_text(json.dumps(res, indent=1, default=str) + "\n"))


def dry_run(a) -> int:
    """Print the plan and check what can be checked without a GPU: flags, files, configs."""
    from fgnb.config import SYNTHETIC_ARCH, TrainConfig

    problems = []
    speed_src = (ROOT / "bench" / "speed.py").read_text()
    problems += [f"bench/speed.py has no {flag}" for flag in ("--amp", "--device", "--repeats")
                 if f'add_argument("{flag}"' not in speed_src]
    if not CHAPTER7.is_file():
        problems.append(f"{CHAPTER7} is missing")
    runs = [(v, amp) for v in variants() for amp in ("auto", "fp16")][: a.max_runs]
    for v, amp in runs:
        try:
            TrainConfig(**SYNTHETIC_ARCH, weights="fgnb:synthetic", **RUN, **v, amp=amp, device=a.device, out="x")
        except Exception as e:
            problems.append(f"run {v} amp={amp}: {e}")
    params = chapter7_parameters(a, "OUT")
    nb = json.loads(CHAPTER7.read_text()) if CHAPTER7.is_file() else {"cells": []}
    cell = next(("".join(c["source"]) for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])), "")
    problems += [f"chapter 7 has no parameter {k!r}" for k in params if f"{k} =" not in cell]
    import fgnb.book

    try:
        TrainConfig(**{k: v for k, v in fgnb.book.profile("full", None, **params["overrides"]).items() if k != "profile"})
    except Exception as e:
        problems.append(f"chapter 7's full profile with the check's overrides: {e}")
    if "chapters" in a.steps:
        try:
            chosen = chosen_chapters(a)
        except ValueError as e:
            problems.append(str(e))
            chosen = []
        problems += [f"{p.name}: no parameters cell" for p in chosen
                     if not any("parameters" in c.get("metadata", {}).get("tags", []) for c in json.loads(p.read_text())["cells"])]
    if "full" in a.steps:
        for cell in FULL_CELLS:
            try:
                full_config(a, cell, "ROOT", "OUT")
            except Exception as e:
                problems.append(f"full {cell}: {e}")
    print(f"steps: {', '.join(a.steps)}; budgets {BUDGET} (total {sum(BUDGET[s] for s in a.steps)} s)")
    if "full" in a.steps:
        cfg = full_config(a, FULL_CELLS[0], "ROOT", "OUT")
        print(f"full: {len(FULL_CELLS)} cells ({cfg.model} at {cfg.img_size} px, batch {cfg.batch_size}, 2 epochs of "
              f"{cfg.limit_batches} batches) on a {FULL_FIXTURE} fixture of 500 x 375 images -> {a.out}")
    if "speed" in a.steps:
        for cmd in speed_commands(a, (8, 0)):
            print("speed:", " ".join(cmd[1:]))
    if "runs" in a.steps:
        print(f"runs: {len(variants())} variants x amp auto (+ fp16 where auto is bf16), e.g.:")
        for v, amp in runs[:4]:
            print("  ", v, amp)
    if "chapter7" in a.steps:
        print("chapter7 parameters:", params)
    if "chapters" in a.steps:
        print(f"chapters: {', '.join(p.stem for p in chosen)} (each with its own parameters) -> {a.out}")
    if "torchrun" in a.steps:
        for name, cmd in torchrun_commands(a, "TMP").items():
            print(f"torchrun {name}:", " ".join(cmd[1:]))
    for msg in problems:
        print("PROBLEM:", msg, file=sys.stderr)
    print("dry run: plan OK" if not problems else f"dry run: {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
