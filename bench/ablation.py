"""Ablation study: every update strategy and crop option on the same data, model and schedule.

    python bench/ablation.py --out bench/results/ablation_cpu.json
    python bench/ablation.py --config bench/configs/cub_vitb16_448.yaml \
        --runs-dir bench/runs/cub --out bench/results/ablation_cub_gpu.json

Variants (``VARIANTS``; ``CORE`` by default): ``last``, the equal-budget control
``last:3steps`` (R = 3 optimizer steps per batch, as many as progressive), ``summed``,
``progressive``, and ``progressive`` with the attention crop (joint update, source crop, the
text's literal rule), its bounds (``oracle``: the true part box; ``random``: a box of the
same size anywhere) and the options the text leaves open. Each variant runs with every
seed; the seed changes model init, batch order and augmentation, never the data set or the
validation split (``split_seed``), so variants compare as pairs. Every run is one
``fgnb.train.train(TrainConfig(...))`` into ``<runs-dir>/<variant>/seed<k>``; the checkpoint
is selected on validation, and the test split is read once at the end.

Resumable at run level: a run already in the results file (``--out``) with the same
options is kept (so a committed results file lets a new machine continue); a run whose
``test_metrics.json`` exists is read back; a run with a ``last.pt`` is resumed.

The results file (written after every run, atomically) holds the command, commit,
machine, base options, per-run rows (test metrics, and validation metrics of the chosen
epoch) and the aggregated table. ``fgnb.results.paired_differences`` turns it into paired
differences against ``last`` with 95 % intervals; ``fgnb.results.ablation_table`` into
means and standard deviations.
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
from fgnb.config import option_differences, options_tagged  # noqa: E402
from fgnb.evaluation import selection_mode  # noqa: E402

#: name -> options on top of the base config. Order = table order. Every crop variant uses the
#: protocol's defaults unless it names another: joint crop update (R steps per batch, as
#: progressive without crops), attention read before the batch's updates in eval mode,
#: crop cut from the 256 px source, the text's literal rule (last target layer, product over
#: heads, mean threshold, box of all marked patches).
VARIANTS = {
    "last": dict(strategy="last"),
    "last:3steps": dict(strategy="last", steps_per_batch=3),  # equal-budget control: R optimizer steps per batch
    "summed": dict(strategy="summed"),
    "progressive": dict(strategy="progressive"),
    "progressive+crop": dict(strategy="progressive", crop=True),
    "progressive+crop:oracle": dict(strategy="progressive", crop=True, crop_boxes="oracle"),  # upper bound
    "progressive+crop:random": dict(strategy="progressive", crop=True, crop_boxes="random"),  # lower bound
    "progressive+crop:separate": dict(strategy="progressive", crop=True, crop_update="separate"),
    "progressive+crop:largest": dict(strategy="progressive", crop=True, box_rule="largest"),
    "progressive+crop:cumulative": dict(strategy="progressive", crop=True, crop_attention="cumulative"),
    "progressive+crop:per_layer": dict(strategy="progressive", crop=True, crop_attention="per_layer"),
    "progressive+crop:rollout": dict(strategy="progressive", crop=True, crop_attention="rollout"),
    "progressive+crop:margin": dict(strategy="progressive", crop=True, crop_margin=0.5, min_crop=16),
    "progressive+crop:warmup": dict(strategy="progressive", crop=True, crop_warmup_epochs=1),
    # Where does the oracle's gain go? The crop trained with the last head only, jointly (w = 1/2)
    # and on the crop view alone (w = 1, selected on the crop view: the set-up of the
    # headroom measurement).
    "last+crop": dict(strategy="last", crop=True),
    "last+crop:oracle": dict(strategy="last", crop=True, crop_boxes="oracle"),
    "last+crop:oracle_only": dict(strategy="last", crop=True, crop_boxes="oracle", crop_weight=1.0,
                                  select_by="crop_only"),
    "last+crop:only": dict(strategy="last", crop=True, crop_weight=1.0, select_by="crop_only"),
    "progressive+crop:threshold0.5": dict(strategy="progressive", crop=True, threshold_scale=0.5),
    # The box chosen on validation by bench/boxes.py (results/boxes_cpu.json: the highest top-1 of
    # the true-head crop readers on validation: the box at least 16 px, grown by half its size on
    # each side), with the checkpoint chosen on the inference mode that uses the crop (global and
    # crop views averaged); and the true head box under the same selection (the training's bound).
    "progressive+crop:min16+margin0.5": dict(strategy="progressive", crop=True, min_crop=16, crop_margin=0.5,
                                             select_by="crop"),
    "progressive+crop:oracle+select_crop": dict(strategy="progressive", crop=True, crop_boxes="oracle",
                                                select_by="crop"),
    # Does the crop branch need the global model to localise first? The chosen box with the crops
    # switched on after one epoch of global training (issue 16, item 4).
    "progressive+crop:min16+margin0.5+warmup": dict(strategy="progressive", crop=True, min_crop=16, crop_margin=0.5,
                                                    select_by="crop", crop_warmup_epochs=1),
    # The default regime's box (issue 28): the first block's attention, where the plain ViT's CLS
    # attention sits on the head (bench/results/localisation_cpu.json), its box at least a quarter
    # of a 32 px side and grown by a quarter (or half) of its size on each side; the checkpoint
    # chosen on the inference mode that uses the crop.
    "progressive+crop:block0": dict(strategy="progressive", crop=True, crop_block=0, min_crop=8, crop_margin=0.25,
                                    select_by="crop"),
    "progressive+crop:block0+margin0.5": dict(strategy="progressive", crop=True, crop_block=0, min_crop=8,
                                              crop_margin=0.5, select_by="crop"),
    # The same box read on the source view (attention_from='source'): block 0's attention on the
    # 128 px source's 32 x 32 grid, where it sits on the head in 99 % of validation images
    # (issue 28's screen), against 67 % on the 32 px input's 8 x 8 grid.
    "progressive+crop:block0+source": dict(strategy="progressive", crop=True, crop_block=0, min_crop=8, crop_margin=0.25,
                                           attention_from="source", select_by="crop"),
    "progressive+crop:block0+source+margin0.5": dict(strategy="progressive", crop=True, crop_block=0, min_crop=8,
                                                     crop_margin=0.5, attention_from="source", select_by="crop"),
    "progressive:deep_first": dict(strategy="progressive", order="deep_first"),
    "progressive:one_point": dict(strategy="progressive", reforward=False),
    "progressive:R2": dict(strategy="progressive", targets=2),
    "progressive:R4": dict(strategy="progressive", targets=4),
}

#: The variants a default run trains (the comparison the book's chapter 8 is built on); the
#: rest are named with --variants.
CORE = ["last", "last:3steps", "summed", "progressive", "progressive+crop", "progressive+crop:oracle",
        "progressive+crop:random", "progressive+crop:separate"]

#: Relative cost of a training step (plain step = 1; depth 6, targets 3..5): for scheduling.
COST = {"last": 1.0, "last:3steps": 3.0, "last+crop": 2.4, "last+crop:oracle": 2.4, "last+crop:oracle_only": 2.4, "last+crop:only": 2.4, "summed": 1.0, "progressive": 2.5, "progressive:deep_first": 2.5,
        "progressive:one_point": 1.5, "progressive:R2": 1.8, "progressive:R4": 3.2,
        "progressive+crop:separate": 5.5, "progressive+crop:per_layer": 5.5, "progressive+crop:rollout": 5.5}
for _v in VARIANTS:
    COST.setdefault(_v, 5.2)  # the joint crop variants: each stage forwards 2B images, plus the boxes' forward

#: Test metrics aggregated over seeds.
METRICS = ("top1_last", "top1_mean", "top1_crop", "top1_crop_only", "iou50", "part_hit", "part_iou", "box_area")

#: The CPU base: the book's cpu-quick profile on the default synthetic set, with the small
#: hybrid ViT pre-trained on other synthetic species (fgnb.config.SYNTHETIC_ARCH, fgnb.pretrained)
#: and the ablation's schedule. The hybrid is pinned: chapters 8 and 9 were measured on it
#: before the profile moved to the plain ViT, and a resumed study must train what its runs did
#: (``--set model=vit_tiny_patch16_224 patch_size=4`` studies the plain ViT). lr 3e-4 was
#: chosen on validation only: in the two earlier 7-variant x 3-seed ablations
#: (results/ablation_cpu.json at 1e-3, results/ablation_cpu_lr3e-4.json at 3e-4) the best
#: validation top-1, averaged over runs, was 51.5 % at 3e-4 against 46.2 % at 1e-3 (last
#: alone: 51.3 vs 51.7; the crop variants lost up to 19 points at 1e-3).
CPU_SCHEDULE = dict(epochs=6, limit_batches=None, batch_size=32, lr=3e-4, warmup_epochs=0.5,
                    device="cpu", progress=False)

#: What the ablation and the sweep were measured at, pinned against later default changes (a
#: resumed study must train what its runs did): the 64 px input and the text's literal crop rule
#: (deepest target layer, no minimum side, no margin, checkpoint chosen on the deepest head). Issue 28
#: moved TrainConfig's defaults to 32 px and the first block's grown box, read on the source view;
#: bench/results/regime_cpu_vit32.json measures that regime (``--set`` it).
STUDY_PINS = dict(img_size=64, crop_block=None, min_crop=0, crop_margin=0.0, select_by="last", attention_from="input")


def cpu_base() -> dict:
    from fgnb.book import PROFILES
    from fgnb.config import SYNTHETIC_ARCH

    # workers=0: the studies train one process per core (--jobs = cores, --threads 1), where a
    # loader process per run would only compete for the cores; the numbers do not depend on it.
    return {**PROFILES["cpu-quick"], **SYNTHETIC_ARCH, **CPU_SCHEDULE, **STUDY_PINS, "workers": 0}


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


def base_config(args, fixed: dict | None = None):
    """The study's base: ``--config`` or the CPU base, then ``fixed`` (a study's own constants),
    the tiny set-up, ``--epochs``, ``--data-root`` and ``--set``."""
    from fgnb.config import TrainConfig, load_config
    if args.config:
        cfg = load_config(args.config)
    else:
        cfg = TrainConfig(**cpu_base())
    changes = dict(fixed or {})
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

    saved_path = out / "config.yaml"
    saved = yaml.safe_load(saved_path.read_text()) if saved_path.exists() else None
    if not isinstance(saved, dict):
        raise ValueError(f"{out} has test metrics but no readable config.yaml; remove it or use another --runs-dir")
    diff = option_differences(saved, cfg_dict, ignore=options_tagged("setup"))
    if diff:
        shown = ", ".join(f"{k}: {a!r} there, {b!r} requested" for k, (a, b) in sorted(diff.items()))
        raise ValueError(f"{out} holds a finished run with other options ({shown}); "
                         "use another --runs-dir (or remove that folder) instead of mixing runs")


def run_one(cfg_dict: dict, threads: int | None, commit: str | None = None, dirty: bool | None = None) -> dict:
    """Train one run (resuming or skipping it as its folder says); returns its row. ``commit``,
    ``dirty``: the checkout's commit and whether its tree differed from it, written into the run
    folder of a run this call trains (and so into its row)."""
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
        # the commit that trained it, from its folder; unknown (None) for a folder written before
        # run_info.json recorded it, never the commit of the process that reads it back
        info.setdefault("commit", None)
        info.setdefault("dirty", None)  # the same: unknown for a folder that did not record it
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
        "val": {k[4:]: v for k, v in hist[res["best_epoch"] - 1].items() if k.startswith("val_")} if hist and res["best_epoch"] > 0 else {},
        "final_train_loss": {k: round(v, 4) for k, v in hist[-1].items() if k.startswith(("loss_head", "crop_loss_head"))} if hist else {},
        "finished": utc_now(),
        "commit": commit,  # so a study that reads this folder back names it
        "dirty": dirty,
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
        from fgnb.loaders import synthetic_params
        root = ensure_synthetic(**synthetic_params(cfg))
    meta = pathlib.Path(root) / "meta.json"
    params = json.loads(meta.read_text()).get("params") if meta.exists() else None
    return {"dataset": "synthetic", "data_root": str(root), "params": params}


def run_options(cfg_dict: dict) -> dict:
    """A run's options without its set-up (where and how it was done: TrainConfig's ``setup`` options)."""
    return {k: v for k, v in cfg_dict.items() if k not in options_tagged("setup")}


def run_folder(runs_dir, variant: str, seed: int) -> pathlib.Path:
    """``<runs_dir>/<variant>/seed<k>``, the variant's name made a folder name."""
    return pathlib.Path(runs_dir) / variant.replace(":", "_").replace("+", "_") / f"seed{seed}"


def previous_runs(path, kind: str = "ablation", key: tuple = ("variant", "seed")) -> dict:
    """{key: row} of an existing results file of ``kind`` (the committed record of finished runs);
    a row's key is the tuple of its ``key`` fields."""
    path = pathlib.Path(path)
    if not path.exists():
        return {}
    data = json.loads(path.read_text())
    if data.get("kind") != kind:
        raise ValueError(f"{path} is not {'an' if kind[0] in 'aeiou' else 'a'} {kind} results file; choose another --out")
    return {tuple(r[f] for f in key): r for r in data.get("runs", []) if r.get("config") and r.get("test")}


def add_run_arguments(p: argparse.ArgumentParser, out: str, runs_dir: str, variants: list[str]) -> None:
    """The options a study of runs shares (the ablation, the sweep)."""
    p.add_argument("--out", default=out, help="results JSON")
    p.add_argument("--runs-dir", default=runs_dir, help="one folder per run (gitignored)")
    p.add_argument("--config", help="YAML of TrainConfig options for the base (default: the CPU base)")
    p.add_argument("--seeds", type=int, nargs="+", default=list(range(10)),
                   help="training seeds (default 0-9: the count bench/README.md derives from the measured spread)")
    p.add_argument("--variants", nargs="+", default=variants, choices=list(VARIANTS), metavar="VARIANT",
                   help=f"default: {' '.join(variants)}; all: {' '.join(VARIANTS)}")
    p.add_argument("--epochs", type=int, help="override the base's epochs")
    p.add_argument("--data-root", help="override the base's data_root")
    p.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="any other TrainConfig option of the base")
    p.add_argument("--threads", type=int, help="torch threads per run (default: torch's)")
    p.add_argument("--jobs", type=int, default=1, help="runs trained at once, each in its own process (use with --threads 1)")
    p.add_argument("--tiny", action="store_true", help="seconds-long smoke run (CI): 1 batch, tiny data")
    p.add_argument("--progress", action="store_true", help="show training progress bars")


def results_header(kind: str, base, started: str, out=None, **fields) -> dict:
    """What every results file of a study records before its runs: command, commit, machine,
    base, and the study's own ``fields``. ``out``, the results file itself, does not make the
    checkout count as dirty (a resumed study rewrites its committed file)."""
    return {
        "kind": kind,
        "schema": 2,
        "command": command_line(),
        **git_commit(ignore=[out] if out else ()),
        "machine": machine_info(),
        "started": started,
        "base_config": {k: v for k, v in base.to_dict().items() if k not in ("out", "resume")},
        "variants": {},
        "seeds": [],
        "metrics": list(METRICS),
        "data": dataset_info(base),
        "notes": "test split read once per run at the end, on the checkpoint selected by validation "
                 f"({selection_mode(base)} mode); 'val' of a run = validation metrics of that epoch; the validation split "
                 f"is carved with split_seed={base.split_seed} whatever the training seed; std = sample standard "
                 "deviation over seeds; each run row names the commit that trained it and whether its tree was dirty",
        **fields,
        "runs": [],
        "table": [],
    }


def run_plan(cfgs: dict, previous: dict, results: dict, out, key: tuple, summarize, jobs: int = 1,
             threads: int | None = None, t0: float | None = None) -> dict:
    """Train every run of ``cfgs`` ({key tuple: config dict}, in plan order), writing ``results``
    to ``out`` atomically after every run; returns {key: row} of every run the file holds.

    A run ``previous`` (:func:`previous_runs`) holds with the same options is kept (an option added
    to fgnb since counts as its default); :func:`run_one` reads back a finished run folder and
    resumes one with a ``last.pt``. Rows of ``previous`` outside the plan stay in the file.
    ``summarize(done)`` fills ``results['runs']`` (in table order) and ``results['table']``.
    """
    t0 = time.perf_counter() if t0 is None else t0
    state = git_commit(ignore=[out] if out else ())
    commit, dirty = state.get("commit"), state.get("dirty")
    done = {k: r for k, r in previous.items() if k not in cfgs}

    def name(k):
        return " ".join(f"{f} {v}" if f != "variant" else str(v) for f, v in zip(key, k))

    def record(k, row, seconds):
        row.setdefault("commit", commit)
        row.setdefault("dirty", dirty)
        row.update(dict(zip(key, k)), out=cfgs[k]["out"], config=run_options(cfgs[k]))
        test = row["test"]
        print(f"[{utc_now()}]   done {name(k)}: {'skipped (done)' if row['skipped'] else f'{seconds:.0f} s'}: "
              + ", ".join(f"{m}={test[m]:.3f}" for m in METRICS if isinstance(test.get(m), float)), flush=True)
        done[k] = row
        summarize(done)
        results["wall_time_s"] = round(time.perf_counter() - t0, 1)  # this process
        results["train_wall_s_total"] = round(sum(r.get("train_wall_s") or 0.0 for r in results["runs"]), 1)
        results["complete"] = all(c in done for c in cfgs)
        write_json(out, results)

    plan = list(cfgs)
    for k in list(plan):  # runs the results file already holds with the same options
        row = previous.get(k)
        # (an option added to fgnb since the row was written counts as its default)
        if row is not None and not option_differences(row["config"], run_options(cfgs[k])):
            record(k, {**row, "skipped": True}, 0.0)
            plan.remove(k)
    if jobs <= 1:
        for i, k in enumerate(plan):
            print(f"[{utc_now()}] run {i + 1}/{len(plan)}: {name(k)} -> {cfgs[k]['out']}", flush=True)
            ts = time.perf_counter()
            record(k, run_one(cfgs[k], threads, commit, dirty), time.perf_counter() - ts)
    else:
        import concurrent.futures as cf
        import multiprocessing as mp
        with cf.ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn")) as pool:
            futures = {pool.submit(run_one, cfgs[k], threads, commit, dirty): k for k in plan}
            print(f"[{utc_now()}] {len(plan)} runs queued on {jobs} processes", flush=True)
            for fut in cf.as_completed(futures):
                row = fut.result()
                record(futures[fut], row, row.get("train_wall_s") or 0.0)
    results["finished"] = utc_now()
    write_json(out, results)
    return done


def plan_command(command: str, point, seeds: list[int], variants: list[str]) -> str:
    """``command`` (a results file's own) with its --points, --seeds and --variants replaced
    (``point`` None: an ablation, no --points)."""
    words, kept, skip = command.split(), [], False
    for w in words:
        if w.startswith("--"):
            skip = w in ("--points", "--seeds", "--variants")
        if not skip:
            kept.append(w)
    return " ".join(kept + ([] if point is None else ["--points", str(point)])
                    + ["--seeds", *map(str, seeds), "--variants", *variants])


def print_plan(out: str, script: str = "bench/ablation.py") -> int:
    """``--plan``: what the ablation or sweep at ``out`` still has to train for the seed rule
    (``fgnb.results.seed_plan``: the spread read on validation, each row in the metric it is
    reported in; a sweep's cells are ``fgnb.results.RULE_CELLS``, an ablation's every variant
    against ``last``), the single-core time and the commands that train it."""
    from fgnb.results import load_results, seed_plan

    results = load_results(out)
    plan = seed_plan(results)
    what = "cell" if results["kind"] == "sweep" else "variant"
    if not plan:
        print(f"{out}: every {what} meets the seed rule on validation (+-1.5 points, 4 seeds at least)")
        return 0
    total = 0.0
    for r in plan:
        hw = "no interval" if r["half_width"] != r["half_width"] else f"+-{r['half_width']:.2f}"
        t = "unknown time" if r["core_s"] is None else f"~{r['core_s'] / 3600:.1f} core-h"
        total += r["core_s"] or 0
        where = "" if r["point"] is None else f"{r['point']:>3} px  "
        print(f"{where}{r['variant']} ({r['metric']}, validation): n={r['n']}, {hw}; asks for {r['asks']}; "
              f"train {r['variant']} seeds {r['variant_seeds'] or '-'}, last seeds {r['baseline_seeds'] or '-'} ({t})")
        variants = ([r["variant"]] if r["variant_seeds"] else []) + (["last"] if r["baseline_seeds"] else [])
        print("    " + plan_command(results.get("command") or f"python {script} --out {out}", r["point"],
                                    sorted(set(r["variant_seeds"]) | set(r["baseline_seeds"])), variants))
    print(f"{len(plan)} {what}s short of the rule, ~{total / 3600:.1f} core-hours on one core"
          + (" (a last run two cells share counts twice)" if what == "cell" else ""))
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(p, out="bench/results/ablation_cpu.json", runs_dir="bench/runs/ablation", variants=CORE)
    p.add_argument("--plan", action="store_true",
                   help="train nothing: print the variants of --out short of the seed rule (read on validation, "
                        "in each row's reported metric), the seeds they ask for and the single-core time")
    args = p.parse_args(argv)
    if args.plan:
        return print_plan(args.out)

    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    base = base_config(args)
    started, t0 = utc_now(), time.perf_counter()
    previous = previous_runs(args.out)
    results = results_header("ablation", base, started, out=args.out)
    # Seed-major (a partial result covers every variant with the same seeds), longest first
    # within a seed, so parallel processes finish a seed together.
    plan = [(v, s) for s in args.seeds for v in sorted(args.variants, key=lambda v: -COST.get(v, 1.0))]
    cfgs = {(v, s): base.replace(**VARIANTS[v], seed=s, out=str(run_folder(args.runs_dir, v, s))).to_dict()
            for v, s in plan}
    # Rows of the results file outside this plan stay in it (a run of some variants never
    # drops the record of others).
    kept = [k for k in previous if k not in cfgs]
    variants = [v for v in VARIANTS if v in args.variants or any(k[0] == v for k in kept)]
    seeds = sorted(set(args.seeds) | {k[1] for k in kept})
    results["variants"] = {v: VARIANTS[v] for v in variants}
    results["seeds"] = seeds

    def summarize(done):
        order = [(v, s) for s in seeds for v in variants]
        results["runs"] = [done[k] for k in order if k in done]  # table order, whatever finished first
        results["table"] = aggregate(results["runs"], variants)

    run_plan(cfgs, previous, results, args.out, ("variant", "seed"), summarize, args.jobs, args.threads, t0)
    from fgnb.results import ablation_table
    print(ablation_table(results, markdown=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
