"""Which box should the crop use? Every box option of the multi-scale module, screened on trained models.

    python bench/boxes.py --models 'bench/runs/protocol2/progressive/seed*/best.pt' \
        --readers 'bench/runs/diag/last_crop_oracle_only/seed*/best.pt' --out bench/results/boxes_cpu.json

The box is computed from a trained model's attention; how good it is can be measured
without training anything: on the validation split (decisions) and the test split, for
each option of ``BOX_OPTIONS`` (the text's literal rule as the reference row, the options
the text leaves open (book/method.md), and the bounds), with every model of ``--models``:

* where the box is: IoU with the true head box (``part_iou``), the share of images whose
  box holds each cue's centre (``cue_beak``, ``cue_eye``, ``cue_crest``, ``cue_all``:
  the synthetic set's ``parts/part_locs.txt``) and the box's share of the image;
* what a crop reader makes of it (``reader_top1``): the top-1 of a model trained on crops
  of the *true* head box alone (``--readers``: the ablation's ``last+crop:oracle_only``
  runs) when it is shown this option's crop instead. On the oracle box that is the
  headroom (book/glossary.md); on the whole image (``whole``: the global view cut from
  the source) it is what zooming adds nothing to. ``(option - whole) / (oracle - whole)``
  is the share of the crop's headroom an option keeps (``headroom``);
* the model's own inference modes with that box (``top1_crop_only``, ``top1_crop``).

Chapter 6 renders the table; chapter 8 and issue 16 use it to pick the box the training
variants are run with (on validation only). Results: one JSON with the commit, command,
machine, the checkpoints' paths and configs, per (model, option, split) rows and per
option means with paired differences against the literal row.
"""
from __future__ import annotations

import argparse
import glob
import math
import pathlib
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from common import command_line, git_commit, machine_info, utc_now, write_json  # noqa: E402

#: name -> crop options (fgnb.config.TrainConfig) on top of the model's own. ``literal`` is
#: the text read literally: last target layer, product over heads, mean threshold, box of
#: all marked patches, no margin.
BOX_OPTIONS = {
    "literal": dict(),
    "threshold0.5": dict(threshold_scale=0.5),
    "threshold0.75": dict(threshold_scale=0.75),
    "threshold1.5": dict(threshold_scale=1.5),
    "cumulative": dict(crop_attention="cumulative"),
    "rollout": dict(crop_attention="rollout"),
    "largest": dict(box_rule="largest"),
    "min16": dict(min_crop=16),
    "min24": dict(min_crop=24),
    "margin0.25": dict(crop_margin=0.25),
    "margin0.5": dict(crop_margin=0.5),
    "margin1": dict(crop_margin=1.0),
    "min16+margin0.5": dict(min_crop=16, crop_margin=0.5),
    "cumulative+min16": dict(crop_attention="cumulative", min_crop=16),
    "rollout+min16": dict(crop_attention="rollout", min_crop=16),
    # any block (the plain ViT's first block attends to the head, its last is flat: chapter 3)
    "block0": dict(crop_block=0),
    "block0+min16": dict(crop_block=0, min_crop=16),
    "block0+margin0.25": dict(crop_block=0, crop_margin=0.25),
    "block0+min16+margin0.25": dict(crop_block=0, min_crop=16, crop_margin=0.25),
    "block0+min16+margin0.5": dict(crop_block=0, min_crop=16, crop_margin=0.5),
    "concentrated": dict(crop_attention="concentrated"),
    "concentrated+min16+margin0.25": dict(crop_attention="concentrated", min_crop=16, crop_margin=0.25),
    # bounds: the true head box, a box of the literal box's size placed at random, the whole view
    "oracle": dict(crop_boxes="oracle"),
    "random": dict(crop_boxes="random"),
    "whole": dict(min_crop=10_000),
}
BASE = dict(crop_attention="last", crop_block=None, box_rule="all", threshold_scale=1.0, min_crop=0, crop_margin=0.0,
            crop_boxes="attention", crop_from="source")
METRICS = ("reader_top1", "part_iou", "cue_beak", "cue_eye", "cue_crest", "cue_all", "box_area",
           "top1_crop_only", "top1_crop", "top1_last")


def _paths(patterns: list[str]) -> list[pathlib.Path]:
    out = []
    for p in patterns:
        hits = sorted(glob.glob(p))
        if not hits:
            raise SystemExit(f"no checkpoint matches {p!r}")
        out += [pathlib.Path(h) for h in hits]
    return out


def screen_model(model, cfg, readers, loaders: dict, options: dict) -> list[dict]:
    """Rows {option, split, metrics...} of one model: fgnb.evaluation.evaluate with the option's
    box, plus each reader's top-1 on the option's crops (averaged over readers)."""
    import torch

    from fgnb.crop import crop_views
    from fgnb.evaluation import evaluate

    rows = []
    for split, loader in loaders.items():
        for name, opt in options.items():
            ocfg = cfg.replace(crop=True, **{**BASE, **opt})
            res = evaluate(model, loader, ocfg)
            # the same random boxes as evaluate draws (its generator is seeded 0 per call)
            gen = torch.Generator().manual_seed(0)
            hits = [0] * len(readers)
            n = 0
            with torch.no_grad():
                for batch in (loader if readers else ()):  # no readers: the box's geometry only
                    x, y = batch["image"], batch["label"]
                    crops, _, _ = crop_views(model, batch, x, ocfg, generator=gen)
                    for k, reader in enumerate(readers):
                        logits = reader(crops[-1], upto=reader.num_targets - 1).logits[-1]
                        hits[k] += int((logits.argmax(-1) == y).sum())
                    n += len(y)
            row = {"option": name, "split": split, **{m: res.get(m) for m in METRICS if m in res}}
            row["reader_top1"] = statistics.fmean(h / n for h in hits) if readers else None
            row["reader_top1_each"] = [h / n for h in hits]
            rows.append(row)
    return rows


def summarise(rows: list[dict], options: list[str], split: str) -> list[dict]:
    """Per option: mean of every metric over models, the paired difference of reader_top1
    against ``literal`` (mean, 95 % t interval over models) and the share of headroom."""
    from fgnb.results import t_quantile

    mine = [r for r in rows if r["split"] == split]
    by = {o: {r["model"]: r for r in mine if r["option"] == o} for o in options}
    out = []
    for o in options:
        if not by[o]:
            continue
        row = {"option": o, "n_models": len(by[o])}
        for m in METRICS:
            vals = [r[m] for r in by[o].values() if r.get(m) is not None and not math.isnan(r[m])]
            row[m] = statistics.fmean(vals) if vals else None
        models = sorted(set(by[o]) & set(by["literal"]))
        d = [100 * (by[o][k]["reader_top1"] - by["literal"][k]["reader_top1"]) for k in models
             if by[o][k]["reader_top1"] is not None]
        if len(d) > 1:
            mean, sd = statistics.fmean(d), statistics.stdev(d)
            hw = t_quantile(len(d) - 1) * sd / math.sqrt(len(d))
            row.update(vs_literal=mean, vs_literal_low=mean - hw, vs_literal_high=mean + hw)
        if by.get("oracle") and by.get("whole") and row["reader_top1"] is not None:
            gains = [(by[o][k]["reader_top1"] - by["whole"][k]["reader_top1"])
                     / max(by["oracle"][k]["reader_top1"] - by["whole"][k]["reader_top1"], 1e-9)
                     for k in sorted(set(by[o]) & set(by["oracle"]) & set(by["whole"]))]
            row["headroom"] = statistics.fmean(gains) if gains else None
        out.append(row)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", required=True, help="checkpoints (glob patterns) whose attention makes the boxes")
    p.add_argument("--readers", nargs="+", default=[], help="checkpoints (glob patterns) trained on true-head crops "
                                                         "(none: the boxes' localisation only, no reader_top1)")
    p.add_argument("--options", nargs="+", default=list(BOX_OPTIONS), choices=list(BOX_OPTIONS), metavar="OPTION",
                   help=f"default: all of {' '.join(BOX_OPTIONS)}")
    p.add_argument("--splits", nargs="+", default=["val", "test"], choices=["val", "test"])
    p.add_argument("--out", default="bench/results/boxes_cpu.json")
    p.add_argument("--threads", type=int, help="torch threads")
    args = p.parse_args(argv)
    for required in ("literal", "oracle", "whole"):
        if required not in args.options:
            raise SystemExit(f"--options must include {required!r} (the reference row and the bounds)")

    import torch

    from fgnb.checkpoints import load_model
    from fgnb.loaders import dataset_for, eval_loader, normalisation

    if args.threads:
        torch.set_num_threads(args.threads)
    t0, started = time.perf_counter(), utc_now()
    readers = [load_model(r)[0] for r in _paths(args.readers)]
    options = {o: BOX_OPTIONS[o] for o in args.options}
    rows, models = [], []
    for path in _paths(args.models):
        model, cfg, state = load_model(path)
        mean, std = normalisation(cfg.model)
        scfg = cfg.replace(crop_from="source", workers=0, batch_size=50)
        loaders = {s: eval_loader(dataset_for(scfg, s, mean, std), scfg, scfg.workers) for s in args.splits}
        ts = time.perf_counter()
        for r in screen_model(model, cfg, readers, loaders, options):
            rows.append({"model": str(path), **r})
        models.append({"path": str(path), "strategy": cfg.strategy, "seed": cfg.seed, "best_epoch": state.get("best_epoch"),
                       "config": {k: v for k, v in cfg.to_dict().items() if k not in ("out", "resume")}})
        print(f"[{utc_now()}] {path}: {time.perf_counter() - ts:.0f} s", flush=True)
    results = {
        "kind": "boxes", "schema": 1, "command": command_line(), **git_commit(ignore=[args.out]), "machine": machine_info(),
        "started": started, "finished": utc_now(), "wall_time_s": round(time.perf_counter() - t0, 1),
        "options": {o: {**BASE, **v} for o, v in options.items()}, "models": models,
        "readers": [str(r) for r in _paths(args.readers)], "splits": args.splits, "rows": rows,
        "summary": {s: summarise(rows, list(options), s) for s in args.splits},
        "notes": "reader_top1: top-1 of models trained on crops of the true head box alone, shown each option's crop "
                 "(mean over readers); headroom: (option - whole) / (oracle - whole) of reader_top1, per model, averaged; "
                 "vs_literal: paired difference of reader_top1 against the literal rule over models, points, 95 % t interval",
    }
    write_json(args.out, results)
    from fgnb.results import to_markdown
    for s in args.splits:
        print(f"\n{s}:")
        print(to_markdown([{k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()}
                           for r in results["summary"][s]]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
