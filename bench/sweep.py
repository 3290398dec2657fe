"""When does zooming in help? The ablation's variants along one axis: the model's input size.

    python bench/sweep.py --out bench/results/sweep_cpu.json --runs-dir bench/runs/sweep --jobs 2 --threads 1
    python bench/sweep.py --tiny --points 32 48 --variants last progressive+crop --seeds 0 --out /tmp/s.json

The attention crop can only add information where the discriminative detail is too small to
be resolved at the input and the crop is cut from a larger original. The axis is the input
size ``img_size`` (``POINTS``: 32, 48, 64, 96 px), every input cut from the same 256 px
synthetic images (eval view: square resize to ``round(img_size * 8 / 7)``, centre crop), the
crops cut from a source view of the same size at every point (``source_size=256``, about the
native resolution of the 224 px of the original that the view covers), so only the pixels the
detail gets at the input change. Everything else is the ablation's CPU base (data,
``split_seed``, schedule, the pre-trained hybrid, whose 8 x 8 position embedding timm
resamples to the point's token grid). At each point the variants ``last``, ``last:3steps``
(the equal-budget control), ``summed``, ``progressive``, ``progressive+crop`` (joint update,
crop from the source, the text's literal box) and ``progressive+crop:min16+margin0.5`` (the box
chosen on validation in chapter 8, its minimum side scaled with the point, :data:`SCALED`),
each with every seed, as pairs.

Per point the results record the eye ring's size at the input, measured over the validation
images: its outer diameter (``fgnb.synthetic.eye_ring_diameter``, exact from each image's
seed) and the width of its coloured band (outer radius less the pupil's), in source pixels and
converted to input pixels by the eval view's scale (input side / the side of the source region
it shows), as median and quartiles.

Runs and the results file work exactly like ``bench/ablation.py`` (whose machinery this
imports): one ``fgnb.train.train`` per run into ``<runs-dir>/px<size>/<variant>/seed<k>``,
rows keyed (point, variant, seed) written atomically after every run; a row the file already
holds with the same options is kept, a finished run folder is read back, a run with a
``last.pt`` resumes. ``fgnb.results.gain_curve`` turns the file into paired gains over
``last`` per point with 95 % t intervals, ``fgnb.plots.gain_plot`` draws them.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import ablation  # noqa: E402
from common import utc_now  # noqa: E402

#: input sizes (px), all multiples of the hybrid's 8 px token (stem stride 4 x patch 2)
POINTS = [32, 48, 64, 96]
#: the variants at every point (ablation.VARIANTS names)
SWEEP_VARIANTS = ["last", "last:3steps", "summed", "progressive", "progressive+crop",
                  "progressive+crop:min16+margin0.5"]
#: fixed at every point: the crops' source view (the 256 px originals' resolution)
FIXED = dict(source_size=256)
#: options given in input pixels at the ablation's 64 px, scaled with the point so that they keep
#: their share of the view (``min_crop=16``, a quarter of the side, is 8 px at 32 and 24 at 96)
SCALED = ("min_crop",)


def point_options(variant: str, point: int) -> dict:
    """The variant's options at an input size of ``point`` px (:data:`SCALED` ones in proportion)."""
    opts = dict(ablation.VARIANTS[variant])
    for k in SCALED:
        if opts.get(k):
            opts[k] = max(1, round(opts[k] * point / 64))
    return {**opts, "img_size": point}


def point_folder(runs_dir, point: int, variant: str, seed: int) -> pathlib.Path:
    return ablation.run_folder(pathlib.Path(runs_dir) / f"px{point}", variant, seed)


def _quartiles(values: list[float]) -> dict:
    q1, med, q3 = statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else [values[0]] * 3
    return {"median": round(med, 3), "q1": round(q1, 3), "q3": round(q3, 3)}


def point_info(cfg) -> dict:
    """A sweep point: its input geometry and the eye ring's size over the validation images
    of ``cfg``'s data, in source and input pixels (None for a data set other than the synthetic one).

    Diameters come from each image's seed (:func:`fgnb.synthetic.eye_ring_diameters`); the
    input scale is the eval view's (:class:`fgnb.data.PairedTransform`, ``train=False``): the
    input's side over the side of the source region it shows.
    """
    from PIL import Image

    from fgnb.data import PairedTransform
    from fgnb.synthetic import PUPIL_RADIUS, RING_RADIUS, eye_ring_diameters
    from fgnb.loaders import dataset_for, normalisation

    info = {"point": cfg.img_size, "img_size": cfg.img_size, "resize_size": PairedTransform(
        False, cfg.img_size, cfg.resize_size).resize_size, "source_size": cfg.source_size, "eye_ring": None}
    if cfg.dataset != "synthetic":  # only the generator knows where its eye rings are
        return info
    ds = dataset_for(cfg, "val", *normalisation(cfg.model))
    diam = eye_ring_diameters(ds.root)
    src = [diam[i] for i in ds.ids]
    view = PairedTransform(False, cfg.img_size, cfg.resize_size)
    scales = []
    for path, _ in ds.samples:  # each image's own size (the generator's are all one square size)
        with Image.open(path) as im:
            x0, _, x1, _ = view.sample_view(*im.size)[0]
        scales.append(cfg.img_size / (x1 - x0))
    inp = [d * s for d, s in zip(src, scales)]
    band = 1 - PUPIL_RADIUS / RING_RADIUS  # the coloured band's share of the ring's radius
    info["eye_ring"] = {
        "n_images": len(src),
        "input_per_source_px": round(statistics.median(scales), 5),
        "diameter_source_px": _quartiles(src),
        "diameter_input_px": _quartiles(inp),
        "band_input_px": _quartiles([d / 2 * band for d in inp]),
    }
    return info


def aggregate_points(rows: list[dict], points: list[int], variants: list[str]) -> list[dict]:
    """The ablation's table (mean and sample std over seeds) per point."""
    table = []
    for pt in points:
        for t in ablation.aggregate([r for r in rows if r["point"] == pt], variants):
            table.append({"point": pt, **t})
    return table


plan_command = ablation.plan_command  # the file's own command with its points, seeds and variants replaced


def print_plan(out: str) -> int:
    """``--plan``: what the file at ``out`` still has to train (``fgnb.results.seed_plan`` on
    the cells of ``fgnb.results.RULE_CELLS`` it holds, the spread read on validation), and the
    commands that resume it (``bench/ablation.py``'s ``print_plan``)."""
    return ablation.print_plan(out, "bench/sweep.py")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ablation.add_run_arguments(p, out="bench/results/sweep_cpu.json", runs_dir="bench/runs/sweep",
                               variants=SWEEP_VARIANTS)
    p.add_argument("--points", type=int, nargs="+", default=POINTS, metavar="PX",
                   help=f"input sizes in pixels (default: {' '.join(map(str, POINTS))})")
    p.add_argument("--plan", action="store_true",
                   help="train nothing: print the cells of --out short of the seed rule, the seeds they ask for, "
                        "the single-core time and the commands that train them")
    args = p.parse_args(argv)
    if args.plan:
        return print_plan(args.out)

    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    base = ablation.base_config(args, fixed=FIXED)
    started, t0 = utc_now(), time.perf_counter()
    key = ("point", "variant", "seed")
    previous = ablation.previous_runs(args.out, kind="sweep", key=key)
    # Seed-major (a partial file covers every point and variant with the same seeds), the
    # costliest runs first within a seed (tokens grow with the square of the input size).
    cost = {(pt, v): ablation.COST.get(v, 1.0) * (pt / 64) ** 2 for pt in args.points for v in args.variants}
    plan = [(pt, v, s) for s in args.seeds for pt, v in sorted(cost, key=lambda k: -cost[k])]
    cfgs = {}
    for pt, v, s in plan:
        out = point_folder(args.runs_dir, pt, v, s)
        cfgs[(pt, v, s)] = base.replace(**point_options(v, pt), seed=s, out=str(out)).to_dict()
    kept = [k for k in previous if k not in cfgs]
    points = sorted(set(args.points) | {k[0] for k in kept})
    variants = [v for v in ablation.VARIANTS if v in args.variants or any(k[1] == v for k in kept)]
    seeds = sorted(set(args.seeds) | {k[2] for k in kept})
    results = ablation.results_header("sweep", base, started, out=args.out, axis="img_size", fixed=FIXED, points=[])
    results.update(variants={v: ablation.VARIANTS[v] for v in variants}, seeds=seeds)
    old_points = {}
    if kept:  # the points this call does not plan keep their measurement
        old_points = {q["point"]: q for q in json.loads(pathlib.Path(args.out).read_text()).get("points", [])}
    for pt in points:
        if pt in args.points:
            results["points"].append(point_info(base.replace(img_size=pt)))
        elif pt in old_points:
            results["points"].append(old_points[pt])

    def summarize(done):
        order = [(pt, v, s) for s in seeds for pt in points for v in variants]
        results["runs"] = [done[k] for k in order if k in done]
        results["table"] = aggregate_points(results["runs"], points, variants)

    ablation.run_plan(cfgs, previous, results, args.out, key, summarize, args.jobs, args.threads, t0)
    from fgnb.results import gain_curve
    print(gain_curve(results, markdown=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
