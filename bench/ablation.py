"""Ablation study: every update strategy and crop option on the same data, model and schedule.

    python bench/ablation.py --out bench/results/ablation_cpu.json
    python bench/ablation.py --config bench/configs/cub_vitb16_448.yaml \
        --runs-dir bench/runs/cub --out bench/results/ablation_cub_gpu.json

Variants (``VARIANTS``): ``last``, ``summed``, ``progressive``, and ``progressive`` with the
attention crop: the literal rule (box around all marked patches), ``box_rule='largest'``,
``crop_from='source'`` and the multi-scale ``crop_attention='per_layer'``. Each variant
runs with every seed (the seed changes model init and data order, not the data set). Every
run is one ``fgnb.train.train(TrainConfig(...))`` into ``<runs-dir>/<variant>/seed<k>``;
the checkpoint is selected on validation, and the test split is read once at the end
(``test_metrics.json``). A run whose ``test_metrics.json`` exists is skipped, a run with a
``last.pt`` but no test metrics is resumed, so a crash loses at most one epoch.

The results file (written after every run, atomically) holds the command, commit,
machine, base options, per-run rows and the aggregated table (mean and sample standard
deviation over seeds). ``fgnb.results.ablation_table`` formats it.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from common import REPO, command_line, git_commit, machine_info, utc_now, write_json  # noqa: E402

#: name -> options on top of the base config. Order = table order.
VARIANTS = {
    "last": dict(strategy="last"),
    "summed": dict(strategy="summed"),
    "progressive": dict(strategy="progressive"),
    "progressive+crop": dict(strategy="progressive", crop=True),
    "progressive+crop:largest": dict(strategy="progressive", crop=True, box_rule="largest"),
    "progressive+crop:source": dict(strategy="progressive", crop=True, crop_from="source"),
    "progressive+crop:per_layer": dict(strategy="progressive", crop=True, crop_attention="per_layer"),
}

#: Relative cost of a training step (plain step = 1; depth 6, targets 3..5): for scheduling.
COST = {"last": 1.0, "summed": 1.0, "progressive": 2.5, "progressive+crop": 5.0, "progressive+crop:largest": 5.0,
        "progressive+crop:source": 5.2, "progressive+crop:per_layer": 10.0}

#: Test metrics aggregated over seeds.
METRICS = ("top1_last", "top1_mean", "top1_crop", "iou50", "part_hit", "box_area")

#: The CPU base: the book's cpu-quick profile (the small hybrid ViT pre-trained on other
#: synthetic species, fgnb.pretrained) on the default synthetic set, with the ablation's
#: schedule, sized so that all 21 runs fit in about an hour on a 2-core machine
#: (bench/README.md has the measurement that set it).
CPU_SCHEDULE = dict(epochs=6, limit_batches=None, batch_size=32, lr=1e-3, warmup_epochs=0.5,
                    device="cpu", progress=False)


def cpu_base() -> dict:
    from fgnb.book import PROFILES

    return {**PROFILES["cpu-quick"], **CPU_SCHEDULE}


TINY = dict(epochs=1, limit_batches=1, batch_size=8, synthetic_classes=3, synthetic_train_per_class=6,
            synthetic_test_per_class=2, synthetic_difficulty=0.5, val_fraction=0.3)


def _parse_set(items: list[str]) -> dict:
    import yaml
    out = {}
    for item in items or []:
        if "=" not in item:
            raise SystemExit(f"--set takes KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip().replace("-", "_")] = yaml.safe_load(v)
    return out


def base_config(args):
    from fgnb.config import TrainConfig, load_config
    if args.config:
        cfg = load_config(args.config)
    else:
        cfg = TrainConfig(**cpu_base())
    changes = {}
    if args.tiny:
        changes.update(TINY)
    if args.epochs is not None:
        changes["epochs"] = args.epochs
    if args.data_root is not None:
        changes["data_root"] = args.data_root
    changes.update(_parse_set(args.set))
    changes["progress"] = bool(args.progress)
    return cfg.replace(**changes).validate()


def _check_same_run(out: pathlib.Path, cfg_dict: dict) -> None:
    """A finished run is reused only if it was made with the requested options."""
    import yaml

    from fgnb.config import option_differences
    saved_path = out / "config.yaml"
    saved = yaml.safe_load(saved_path.read_text()) if saved_path.exists() else None
    if not isinstance(saved, dict):
        raise ValueError(f"{out} has test metrics but no readable config.yaml; remove it or use another --runs-dir")
    diff = option_differences(saved, cfg_dict, ignore={"out", "resume", "progress"})
    if diff:
        shown = ", ".join(f"{k}: {a!r} there, {b!r} requested" for k, (a, b) in sorted(diff.items()))
        raise ValueError(f"{out} holds a finished run with other options ({shown}); "
                         "use another --runs-dir (or remove that folder) instead of mixing runs")


def run_one(cfg_dict: dict, threads: int | None) -> dict:
    """Train one run (resuming or skipping it as its folder says); returns its row."""
    import torch
    if threads:
        torch.set_num_threads(threads)
    from fgnb.config import TrainConfig
    from fgnb.train import train

    out = pathlib.Path(cfg_dict["out"])
    test_path, info_path = out / "test_metrics.json", out / "run_info.json"
    if test_path.exists():
        _check_same_run(out, cfg_dict)
        test = json.loads(test_path.read_text())
        info = json.loads(info_path.read_text()) if info_path.exists() else {}
        return {"test": test, "skipped": True, **info}
    resume = (out / "last.pt").exists()
    cfg = TrainConfig.from_dict({**cfg_dict, "resume": resume})
    t0 = time.perf_counter()
    res = train(cfg)
    wall = time.perf_counter() - t0
    hist = res["history"]
    info = {
        "train_wall_s": round(wall, 2) if not resume else None,
        "resumed": resume,
        "epochs_run": len(hist),
        "best_epoch": res["best_epoch"],
        "epoch_time_s": [round(h["epoch_time_s"], 2) for h in hist],
        "images_per_s": round(statistics.median(h["images_per_s"] for h in hist), 2) if hist else None,
        "val_top1_last": [round(h.get("val_top1_last", float("nan")), 4) for h in hist],
        "final_train_loss": {k: round(v, 4) for k, v in hist[-1].items() if k.startswith(("loss_head", "crop_loss_head"))} if hist else {},
        "finished": utc_now(),
    }
    info_path.write_text(json.dumps(info, indent=1))
    return {"test": res["test"], "skipped": False, **info}


def aggregate(rows: list[dict], variants: list[str]) -> list[dict]:
    """One row per variant: mean and sample std (n-1) of every metric over its seeds."""
    table = []
    for v in variants:
        mine = [r for r in rows if r["variant"] == v and r.get("test")]
        if not mine:
            continue
        row = {"variant": v, "n_seeds": len(mine), "seeds": [r["seed"] for r in mine]}
        for m in METRICS:
            vals = [r["test"][m] for r in mine if r["test"].get(m) is not None and r["test"][m] == r["test"][m]]
            row[f"{m}_mean"] = statistics.fmean(vals) if vals else None
            row[f"{m}_std"] = statistics.stdev(vals) if len(vals) > 1 else (0.0 if vals else None)
        walls = [r["train_wall_s"] for r in mine if r.get("train_wall_s")]
        row["train_wall_s_mean"] = statistics.fmean(walls) if walls else None
        table.append(row)
    return table


def dataset_info(cfg) -> dict:
    """The data set's own description (meta.json of the synthetic set / its parameters)."""
    if cfg.dataset != "synthetic":
        return {"dataset": cfg.dataset, "data_root": cfg.data_root}
    root = cfg.data_root
    if root is None:  # the generator's cache folder for these parameters (generated here if missing)
        from fgnb.synthetic import ensure_synthetic
        from fgnb.train import _synthetic_params
        root = ensure_synthetic(**_synthetic_params(cfg))
    meta = pathlib.Path(root) / "meta.json"
    params = json.loads(meta.read_text()).get("params") if meta.exists() else None
    return {"dataset": "synthetic", "data_root": str(root), "params": params}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="bench/results/ablation_cpu.json", help="results JSON")
    p.add_argument("--runs-dir", default="bench/runs/ablation", help="one folder per run (gitignored)")
    p.add_argument("--config", help="YAML of TrainConfig options for the base (default: the CPU base)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--epochs", type=int, help="override the base's epochs")
    p.add_argument("--data-root", help="override the base's data_root")
    p.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="any other TrainConfig option of the base")
    p.add_argument("--threads", type=int, help="torch threads per run (default: torch's)")
    p.add_argument("--jobs", type=int, default=1, help="runs trained at once, each in its own process (use with --threads 1)")
    p.add_argument("--tiny", action="store_true", help="seconds-long smoke run (CI): 1 batch, tiny data")
    p.add_argument("--progress", action="store_true", help="show training progress bars")
    args = p.parse_args(argv)

    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    base = base_config(args)
    runs_dir = pathlib.Path(args.runs_dir)
    started, t0 = utc_now(), time.perf_counter()
    results = {
        "kind": "ablation",
        "schema": 1,
        "command": command_line(),
        **git_commit(),
        "machine": machine_info(),
        "started": started,
        "base_config": {k: v for k, v in base.to_dict().items() if k not in ("out", "resume")},
        "variants": {v: VARIANTS[v] for v in args.variants},
        "seeds": args.seeds,
        "metrics": list(METRICS),
        "data": dataset_info(base),
        "notes": "test split read once per run at the end, on the checkpoint selected by validation "
                 f"({base.select_by} mode); std = sample standard deviation over seeds",
        "runs": [],
        "table": [],
    }
    plan = [(v, s) for s in args.seeds for v in args.variants]  # seed-major: a partial result covers all variants
    cfgs = {}
    for v, s in plan:
        out = runs_dir / v.replace(":", "_").replace("+", "_") / f"seed{s}"
        cfgs[(v, s)] = base.replace(**VARIANTS[v], seed=s, out=str(out)).to_dict()
    done = {}

    def record(key, row, seconds):
        v, s = key
        row.update(variant=v, seed=s, out=cfgs[key]["out"])
        test = row["test"]
        print(f"[{utc_now()}]   done {v} seed {s}: {'skipped (done)' if row['skipped'] else f'{seconds:.0f} s'}: "
              + ", ".join(f"{m}={test[m]:.3f}" for m in METRICS if isinstance(test.get(m), float)), flush=True)
        done[key] = row
        results["runs"] = [done[k] for k in plan if k in done]  # plan order, whatever finished first
        results["table"] = aggregate(results["runs"], args.variants)
        results["wall_time_s"] = round(time.perf_counter() - t0, 1)
        results["complete"] = len(done) == len(plan)
        write_json(args.out, results)

    if args.jobs <= 1:
        for i, key in enumerate(plan):
            print(f"[{utc_now()}] run {i + 1}/{len(plan)}: {key[0]} seed {key[1]} -> {cfgs[key]['out']}", flush=True)
            ts = time.perf_counter()
            record(key, run_one(cfgs[key], args.threads), time.perf_counter() - ts)
    else:
        import concurrent.futures as cf
        import multiprocessing as mp
        with cf.ProcessPoolExecutor(args.jobs, mp_context=mp.get_context("spawn")) as pool:
            starts, futures = {}, {}
            # Longest first (relative step cost), so the processes finish together.
            for key in sorted(plan, key=lambda k: -COST.get(k[0], 1.0)):
                futures[pool.submit(run_one, cfgs[key], args.threads)] = key
            print(f"[{utc_now()}] {len(plan)} runs queued on {args.jobs} processes", flush=True)
            for fut in cf.as_completed(futures):
                key = futures[fut]
                row = fut.result()
                record(key, row, row.get("train_wall_s") or 0.0)
    results["finished"] = utc_now()
    write_json(args.out, results)
    from fgnb.results import ablation_table
    print(ablation_table(results, markdown=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
