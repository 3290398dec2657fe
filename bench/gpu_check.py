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
#: seconds each step may take (the total stays under the 8 minutes of gpu_check.sh)
BUDGET = {"env": 30, "speed": 150, "runs": 120, "chapter7": 90, "torchrun": 60}
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
                overrides=dict(dataset="synthetic", **SYNTHETIC_ARCH, img_size=64, resize_size=73,
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
    errors = [f"{o.get('ename')}: {o.get('evalue')}" for c in nb["cells"] for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
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


RUNNERS = {"env": step_env, "speed": step_speed, "runs": step_runs, "chapter7": step_chapter7, "torchrun": step_torchrun}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "gpu_check_cuda.json"))
    p.add_argument("--device", default="cuda", help="torch device (cpu: to try the steps without a GPU)")
    p.add_argument("--steps", nargs="+", default=list(STEPS), choices=STEPS)
    p.add_argument("--max-runs", type=int, default=None, help="at most this many synthetic runs (step 'runs')")
    p.add_argument("--dry-run", action="store_true", help="print and check the plan; run nothing, write nothing")
    a = p.parse_args(argv)
    if a.dry_run:
        return dry_run(a)
    res = {"kind": "gpu_check", "schema": 1, "command": " ".join(sys.argv), "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
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
    print(f"steps: {', '.join(a.steps)}; budgets {BUDGET} (total {sum(BUDGET[s] for s in a.steps)} s)")
    if "speed" in a.steps:
        for cmd in speed_commands(a, (8, 0)):
            print("speed:", " ".join(cmd[1:]))
    if "runs" in a.steps:
        print(f"runs: {len(variants())} variants x amp auto (+ fp16 where auto is bf16), e.g.:")
        for v, amp in runs[:4]:
            print("  ", v, amp)
    if "chapter7" in a.steps:
        print("chapter7 parameters:", params)
    if "torchrun" in a.steps:
        for name, cmd in torchrun_commands(a, "TMP").items():
            print(f"torchrun {name}:", " ".join(cmd[1:]))
    for msg in problems:
        print("PROBLEM:", msg, file=sys.stderr)
    print("dry run: plan OK" if not problems else f"dry run: {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
