"""bench/sweep.py ("when does zooming in help?"): a tiny end-to-end sweep and its resumability,
the eye-ring size the sweep's axis is read in (against the ring the generator draws), and the
gain curve against a hand computation."""
from __future__ import annotations

import importlib
import json
import math
import pathlib
import sys

import numpy as np
import pytest

from fgnb import synthetic

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture
def sweep(monkeypatch, tmp_path):
    """bench/sweep.py and bench/ablation.py as modules, the data in a temporary cache unless
    FGNB_DATA names one."""
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import os
    if not os.environ.get("FGNB_DATA"):
        monkeypatch.setenv("FGNB_DATA", str(tmp_path / "data"))
    import ablation
    import sweep as sweep_mod

    return importlib.reload(sweep_mod), ablation


def _counting(monkeypatch, module, name):
    calls = []
    real = getattr(module, name)

    def counted(*a, **k):
        calls.append(a[0] if a else k)
        return real(*a, **k)

    monkeypatch.setattr(module, name, counted)
    return calls


def test_tiny_sweep_end_to_end_and_resumable(sweep, tmp_path, monkeypatch, capsys):
    sweep, ablation = sweep
    train_module = importlib.import_module("fgnb.train")  # (the package's `fgnb.train` is the function)

    out, runs = tmp_path / "sweep.json", tmp_path / "runs"
    args = ["--tiny", "--threads", "1", "--points", "32", "48", "--variants", "last", "progressive+crop",
            "--seeds", "0", "--runs-dir", str(runs), "--out", str(out)]
    trained = _counting(monkeypatch, train_module, "train")
    assert sweep.main(args) == 0
    assert len(trained) == 4
    res = json.loads(out.read_text())
    assert res["kind"] == "sweep" and res["complete"] and res["axis"] == "img_size"
    for k in ("command", "commit", "dirty", "machine", "started", "finished", "base_config"):
        assert k in res, k
    keys = {(r["point"], r["variant"], r["seed"]) for r in res["runs"]}
    assert keys == {(p, v, 0) for p in (32, 48) for v in ("last", "progressive+crop")}
    for r in res["runs"]:
        # one point = one input size; the crops come from the same 256 px source view everywhere
        assert r["config"]["img_size"] == r["point"] and r["config"]["source_size"] == 256
        assert r["config"]["crop"] == (r["variant"] == "progressive+crop")
        assert pathlib.Path(r["out"], "test_metrics.json").is_file() and f"px{r['point']}" in r["out"]
        assert 0 <= r["test"]["part_hit"] <= 1 and 0 < r["test"]["box_area"] <= 1
    assert [(t["point"], t["variant"]) for t in res["table"]] == [(32, "last"), (32, "progressive+crop"),
                                                                  (48, "last"), (48, "progressive+crop")]
    # the eye ring per point: the same source images, scaled by the eval view (resize to
    # round(8/7 size), centre crop: input px per source px = resize / 256)
    pts = {p["point"]: p for p in res["points"]}
    assert sorted(pts) == [32, 48]
    for p, info in pts.items():
        ring = info["eye_ring"]
        assert info["resize_size"] == round(p * 8 / 7) and ring["n_images"] > 0
        assert ring["input_per_source_px"] == pytest.approx(info["resize_size"] / 256, abs=1e-5)
        src, inp = ring["diameter_source_px"], ring["diameter_input_px"]
        assert src["q1"] <= src["median"] <= src["q3"]
        for q in ("q1", "median", "q3"):
            assert inp[q] == pytest.approx(src[q] * info["resize_size"] / 256, abs=2e-3)
            band = (synthetic.RING_RADIUS - synthetic.PUPIL_RADIUS) / synthetic.RING_RADIUS / 2
            assert ring["band_input_px"][q] == pytest.approx(inp[q] * band, abs=2e-3)
    assert pts[32]["eye_ring"]["diameter_source_px"] == pts[48]["eye_ring"]["diameter_source_px"]

    # A second call trains nothing: every run is in the results file with the same options.
    trained.clear()
    run_calls = _counting(monkeypatch, ablation, "run_one")
    capsys.readouterr()
    assert sweep.main(args) == 0
    assert trained == [] and run_calls == []
    assert capsys.readouterr().out.count("skipped (done)") == 4
    # Without the results file, the run folders are read back (still nothing trained) ...
    out.unlink()
    assert sweep.main(args) == 0
    assert trained == [] and len(run_calls) == 4
    assert json.loads(out.read_text())["complete"]
    # ... a run with a last.pt but no test metrics is resumed, the others kept ...
    run_calls.clear()
    folder = runs / "px48" / "last" / "seed0"
    (folder / "test_metrics.json").unlink()
    out.unlink()
    assert sweep.main(args) == 0
    assert len(trained) == 1 and trained[0].resume and trained[0].out == str(folder)
    # ... and the file alone is the record: another runs folder and a subset of the points
    # trains nothing and keeps the other point's rows and measurement.
    trained.clear()
    assert sweep.main([*args[:-4], "--points", "32", "--runs-dir", str(tmp_path / "elsewhere"), "--out", str(out)]) == 0
    assert trained == [] and not (tmp_path / "elsewhere").exists()
    res2 = json.loads(out.read_text())
    assert len(res2["runs"]) == 4 and [p["point"] for p in res2["points"]] == [32, 48]
    # another kind of results file is not overwritten
    other = tmp_path / "ablation.json"
    other.write_text(json.dumps({"kind": "ablation", "runs": []}))
    with pytest.raises(ValueError, match="not a sweep results file"):
        sweep.main([*args[:-2], "--out", str(other)])


# ----------------------------------------------------------------------------- the eye ring
def _ring_only_pair():
    """Two species that differ in the eye-ring colour only (red and blue rings)."""
    specs = synthetic.CLASS_SPECS
    for a, (ring, beak, crest) in enumerate(specs):
        if ring == "Red":
            b = specs.index(("Blue", beak, crest))
            return a, b
    raise AssertionError("no red/blue pair")


def _drawn_ring_extent(seed, size, difficulty, species=None):
    """The drawn ring's outer diameter, measured on the images: the distance between the
    outermost pixel centres two ring colours change (the pupil is drawn over the ring's centre;
    PIL fills a polygon's boundary pixels, so the count of pixels would be one more)."""
    a, b = _ring_only_pair()
    if species is not None:  # a species of the set, and the one that differs from it in the ring only
        ring, beak, crest = synthetic.CLASS_SPECS[species]
        a = species
        b = synthetic.CLASS_SPECS.index(("Blue" if ring != "Blue" else "Red", beak, crest))
    ia = np.asarray(synthetic.render(a, seed, size, difficulty)[0], dtype=int)
    ib = np.asarray(synthetic.render(b, seed, size, difficulty)[0], dtype=int)
    ys, xs = np.nonzero(np.abs(ia - ib).sum(-1))
    assert len(xs) > 0
    return max(xs.max() - xs.min(), ys.max() - ys.min())


@pytest.mark.parametrize("difficulty", [0.5, 1.0])
def test_eye_ring_diameter_is_the_drawn_rings(difficulty):
    """Without drawing, the function gives the diameter of the ring render draws, within a pixel
    of rasterisation, over poses, scales and flips."""
    errors = []
    for j in range(24):
        seed = (0, 3, j)
        predicted = synthetic.eye_ring_diameter(seed, 256, difficulty)
        errors.append(_drawn_ring_extent(seed, 256, difficulty) - predicted)
    assert max(abs(e) for e in errors) <= 1.0, errors
    # and at another source size the ring scales with it
    assert synthetic.eye_ring_diameter((0, 3, 0), 128, difficulty) == pytest.approx(
        synthetic.eye_ring_diameter((0, 3, 0), 256, difficulty) / 2)


def test_image_seeds_redraw_the_images_of_a_generated_set(tmp_path):
    """The seeds eye_ring_diameters reads the sizes with are the ones the set's images were
    drawn with: re-rendering gives the JPEG on disk, and the ring measured on the re-rendered
    pair is the diameter the set reports."""
    from PIL import Image

    root = synthetic.generate(tmp_path / "set", num_classes=3, train_per_class=3, test_per_class=1,
                              difficulty=0.5, first_class=4)
    seeds = synthetic.image_seeds(root)
    diam = synthetic.eye_ring_diameters(root)
    images = dict(line.split() for line in (root / "images.txt").read_text().splitlines())
    assert sorted(seeds) == sorted(diam) == sorted(int(i) for i in images) and len(seeds) == 12
    def drawn(species, seed):
        return np.asarray(synthetic.render(species, seed, 256, 0.5)[0], dtype=float)

    for i, (species, seed) in seeds.items():
        on_disk = np.asarray(Image.open(root / "images" / images[str(i)]), dtype=float)
        right = np.abs(drawn(species, seed) - on_disk).mean()  # JPEG's loss only
        data_seed, sp, j = seed
        wrong = np.abs(drawn(species, (data_seed, sp, (j + 1) % 4)) - on_disk).mean()  # another image
        assert right < 5.0 and right < wrong / 4, (i, right, wrong)
        assert abs(_drawn_ring_extent(seed, 256, 0.5, species) - diam[i]) <= 1.0


# ----------------------------------------------------------------------------- the gain curve
def _run(point, variant, seed, acc, val=None):
    return {"point": point, "variant": variant, "seed": seed, "test": {"top1_last": acc},
            "val": {"top1_last": acc if val is None else val}}


def _sweep_results():
    runs = []
    base = {32: [0.50, 0.40, 0.45], 64: [0.60, 0.50, 0.55]}
    crop = {32: [0.55, 0.48, 0.47], 64: [0.70, 0.62, 0.66]}  # differences: 5, 8, 2 and 10, 12, 11 points
    summed = {32: [0.50, 0.40, 0.45], 64: [0.60, 0.50, 0.55]}
    for p in (32, 64):
        for s in range(3):
            runs += [_run(p, "last", s, base[p][s]), _run(p, "progressive+crop", s, crop[p][s], val=0.9),
                     _run(p, "summed", s, summed[p][s])]
    runs.append(_run(96, "progressive+crop", 0, 0.9))  # a point without its baseline yet
    ring = lambda m: {"diameter_input_px": {"median": m, "q1": m - 0.5, "q3": m + 0.5},
                      "band_input_px": {"median": m / 4, "q1": m / 4, "q3": m / 4}}
    return {"kind": "sweep", "variants": {"last": {}, "summed": {}, "progressive+crop": {}},
            "points": [{"point": 32, "eye_ring": ring(2.6)}, {"point": 64, "eye_ring": ring(5.2)},
                       {"point": 96, "eye_ring": ring(7.8)}], "runs": runs}


def test_gain_curve_by_hand():
    from fgnb.results import gain_curve

    rows = gain_curve(_sweep_results(), variants=["progressive+crop"])
    assert [(r["point"], r["variant"]) for r in rows] == [(32, "progressive+crop"), (64, "progressive+crop")]
    t2 = 4.302653  # t_{0.975, 2}
    # point 32: d = 5, 8, 2 -> mean 5, sd 3, half-width t2 * 3 / sqrt(3)
    r = rows[0]
    assert (r["x"], r["x_q1"], r["x_q3"], r["n"], r["seeds"]) == (2.6, 2.1, 3.1, 3, [0, 1, 2])
    assert r["mean"] == pytest.approx(5.0) and r["sd"] == pytest.approx(3.0)
    assert r["half_width"] == pytest.approx(t2 * 3 / math.sqrt(3), rel=1e-4)
    assert r["low"] == pytest.approx(5 - t2 * math.sqrt(3), rel=1e-4) and not r["excludes_zero"]
    # point 64: d = 10, 12, 11 -> mean 11, sd 1: the interval excludes zero
    r = rows[1]
    assert r["x"] == 5.2 and r["mean"] == pytest.approx(11.0) and r["sd"] == pytest.approx(1.0)
    assert (r["low"], r["high"]) == pytest.approx((11 - t2 / math.sqrt(3), 11 + t2 / math.sqrt(3)), rel=1e-4)
    assert r["excludes_zero"]
    # every variant by default (study order, the baseline left out); another x; the val split
    rows = gain_curve(_sweep_results(), x="band_input_px")
    assert [(r["variant"], r["point"]) for r in rows] == [("summed", 32), ("summed", 64),
                                                          ("progressive+crop", 32), ("progressive+crop", 64)]
    assert rows[0]["mean"] == 0 and rows[2]["x"] == pytest.approx(0.65)
    val = gain_curve(_sweep_results(), variants=["progressive+crop"], split="val")
    assert val[0]["mean"] == pytest.approx(90 - 45) and val[1]["mean"] == pytest.approx(90 - 55)
    assert "| point |" in gain_curve(_sweep_results(), markdown=True)
    with pytest.raises(ValueError, match="sweep"):
        gain_curve({"kind": "ablation", "runs": []})


def test_gain_curve_pairs_a_crop_mode_against_the_baselines_last_head():
    from fgnb.results import gain_curve

    res = _sweep_results()
    for r in res["runs"]:  # the crop mode of every run: 3 points above its deepest head
        r["test"]["top1_crop"] = r["test"]["top1_last"] + 0.03
    rows = gain_curve(res, variants=["progressive+crop"], metric="top1_crop", baseline_metric="top1_last")
    assert [r["mean"] for r in rows] == pytest.approx([5 + 3, 11 + 3])  # crop mode - last's deepest head
    same = gain_curve(res, variants=["progressive+crop"], metric="top1_crop")  # both in the crop mode
    assert [r["mean"] for r in same] == pytest.approx([5, 11])


def test_seed_plan_lists_what_the_seed_rule_still_asks_for(sweep):
    """fgnb.results.seed_plan (``bench/sweep.py --plan``): cells that meet the rule are left out,
    the others ask for seeds_needed(sd) and take the seeds whose other half is trained first.
    The spread is read on validation: every run's test split here is one constant, on which
    every cell would meet the rule, so a plan that read test would be empty."""
    from fgnb.results import seed_plan, seeds_needed

    def run(point, variant, seed, acc, crop=None, wall=None):
        return {"point": point, "variant": variant, "seed": seed, "train_wall_s": wall,
                "val": {"top1_last": acc, "top1_crop": acc if crop is None else crop},
                "test": {"top1_last": 0.5, "top1_crop": 0.5}}

    runs = [run(p, "last", s, 0.5, wall=100.0 + s) for p in (32, 64) for s in range(6)]
    runs += [run(32, "A", s, 0.5 + d / 100, wall=400.0) for s, d in enumerate([1, 2, 1, 2])]  # meets the rule
    runs += [run(64, "A", s, 0.5 + d / 100, wall=300.0 + 100 * s) for s, d in zip([0, 1, 2], [0, 6, -6])]
    runs += [run(64, "A", 7, 0.9, wall=600.0)]  # no `last` seed 7 yet
    runs += [run(96, "A", 0, 0.9)]  # a point without any `last` run, untimed
    # B: its global view varies seed by seed, its crop mode is 5 points above `last` on each seed
    runs += [run(32, "B", s, 0.5 + d / 100, crop=0.55) for s, d in enumerate([-9, 9, -9, 9])]
    res = {"kind": "sweep", "variants": {"last": {}, "A": {}, "B": {}},
           "points": [{"point": 32}, {"point": 64}, {"point": 96}], "runs": runs}

    plan = seed_plan(res, {"A": "top1_last", "B": "top1_crop"})
    # B's crop mode meets the rule at 32 px (sd 0); a point where a variant has no run asks for 4
    assert [(r["point"], r["variant"]) for r in plan] == [(64, "A"), (96, "A"), (64, "B"), (96, "B")]
    r64, r96, b64, _ = plan
    assert (b64["n"], b64["seeds"], b64["variant_seeds"], b64["baseline_seeds"]) == (0, [0, 1, 2, 3], [0, 1, 2, 3], [])
    asks = seeds_needed(6.0, 1.5, least=4)
    assert (r64["n"], r64["asks"]) == (3, asks) and asks > 40
    # `last` has 3, 4, 5 (only A to train), A has 7 (only `last`), then unused seeds from 6 on
    assert r64["seeds"][:5] == [3, 4, 5, 7, 6] and len(r64["seeds"]) == asks - 3
    assert r64["variant_seeds"] == [s for s in r64["seeds"] if s not in (0, 1, 2, 7)]
    assert r64["baseline_seeds"] == [s for s in r64["seeds"] if s > 5]
    a_mean, last_mean = (300 + 400 + 500 + 600) / 4, (100 + 101 + 102 + 103 + 104 + 105) / 6
    assert r64["core_s"] == pytest.approx(len(r64["variant_seeds"]) * a_mean + len(r64["baseline_seeds"]) * last_mean)
    assert (r96["n"], r96["asks"], r96["seeds"], r96["variant_seeds"], r96["baseline_seeds"], r96["core_s"]) == \
        (0, 4, [0, 1, 2, 3], [1, 2, 3], [0, 1, 2, 3], None)
    # B's global view (sd 10.4 over 4 seeds) is short of the rule; with a wide rule A at 64 px
    # only lacks the floor of 4 seeds: one more, the one `last` already has
    assert (32, "B") in [(r["point"], r["variant"]) for r in seed_plan(res, {"B": "top1_last"})]
    wide = seed_plan(res, {"A": "top1_last"}, half_width=20)[0]
    assert (wide["point"], wide["asks"], wide["seeds"], wide["baseline_seeds"]) == (64, 4, [3], [])
    # read on test (the split the rule must not look at), nothing is short but the points with too few pairs
    assert [(r["point"], r["variant"]) for r in seed_plan(res, {"A": "top1_last", "B": "top1_crop"}, split="test")] \
        == [(64, "A"), (96, "A"), (64, "B"), (96, "B")] and seed_plan(res, {"A": "top1_last"}, split="test")[0]["asks"] == 4
    with pytest.raises(ValueError, match="sweep"):
        seed_plan({"kind": "speed", "runs": []})


def test_seed_plan_reads_an_ablation_as_one_point_in_each_rows_reported_metric():
    """``bench/ablation.py --plan``: every variant against `last`, a crop-mode variant (select_by
    crop) in its crop mode, the others on the deepest head; the spread read on validation."""
    from fgnb.results import reported_metric, seed_plan

    def run(variant, seed, last, crop):
        return {"variant": variant, "seed": seed, "val": {"top1_last": last, "top1_crop": crop},
                "test": {"top1_last": 0.5, "top1_crop": 0.5}}

    runs = [run("last", s, 0.5, 0.5) for s in range(4)]
    # `wide` varies on its deepest head; `zoom`, a crop-mode variant, is 2 points up in its crop
    # mode on every seed while its deepest head varies as much as `wide`'s
    runs += [run("wide", s, 0.5 + d / 100, 0.5) for s, d in enumerate([-9, 9, -9, 9])]
    runs += [run("zoom", s, 0.5 + d / 100, 0.52) for s, d in enumerate([-9, 9, -9, 9])]
    res = {"kind": "ablation", "base_config": {"select_by": "last"}, "runs": runs,
           "variants": {"last": {}, "wide": {"crop": True}, "zoom": {"crop": True, "select_by": "crop"}}}
    assert reported_metric(res, "wide") == "top1_last" and reported_metric(res, "zoom") == "top1_crop"
    plan = seed_plan(res)
    assert [(r["point"], r["variant"], r["metric"], r["n"]) for r in plan] == [(None, "wide", "top1_last", 4)]
    assert seed_plan(res, split="test") == []  # the test split is flat: reading it would plan nothing


def test_rule_cells_are_the_sweeps_curve_and_seed_plans_default(sweep):
    """The curve's cells held to the rule live in one place (fgnb.results.RULE_CELLS), read by
    ``--plan`` and chapter 9: each is a sweep variant; the chosen box is read in its crop mode."""
    from fgnb.results import RULE_CELLS, rule_cells, seed_plan

    sweep_mod, _ = sweep
    assert set(RULE_CELLS) <= set(sweep_mod.SWEEP_VARIANTS) and "last" not in RULE_CELLS
    assert RULE_CELLS["progressive+crop:min16+margin0.5"] == "top1_crop" and RULE_CELLS["progressive+crop"] == "top1_last"
    # a file with `last`, the chosen box and a variant outside the curve: only the chosen box is planned
    runs = [{"point": 32, "variant": v, "seed": 0, "test": {"top1_last": 0.5, "top1_crop": 0.6}}
            for v in ("last", "progressive+crop:min16+margin0.5", "other")]
    res = {"kind": "sweep", "variants": {"last": {}, "other": {}, "progressive+crop:min16+margin0.5": {}},
           "points": [{"point": 32}], "runs": runs}
    assert rule_cells(res) == {"progressive+crop:min16+margin0.5": "top1_crop"}
    assert [(r["variant"], r["metric"]) for r in seed_plan(res)] == [("progressive+crop:min16+margin0.5", "top1_crop")]


def test_plan_command_resumes_with_the_files_own_options(sweep):
    sweep_mod, _ = sweep
    cmd = ("python bench/sweep.py --out o.json --runs-dir r --jobs 1 --set model=vit_tiny_patch16_224 patch_size=4 "
           "--points 48 --seeds 2 --variants last progressive+crop --threads 1")
    assert sweep_mod.plan_command(cmd, 96, [5, 6], ["progressive+crop", "last"]) == (
        "python bench/sweep.py --out o.json --runs-dir r --jobs 1 --set model=vit_tiny_patch16_224 patch_size=4 "
        "--threads 1 --points 96 --seeds 5 6 --variants progressive+crop last")


def test_plan_option_prints_the_cells_and_trains_nothing(sweep, tmp_path, capsys, monkeypatch):
    sweep_mod, ablation = sweep
    monkeypatch.setattr(ablation, "run_plan", lambda *a, **k: pytest.fail("--plan trained"))
    runs = [{"point": 32, "variant": v, "seed": s, "train_wall_s": 10.0, "val": {"top1_last": 0.5 + (v != "last") * d},
             "test": {"top1_last": 0.5}} for s, d in enumerate([0.0, 0.2, -0.2]) for v in ("last", "progressive+crop")]
    out = tmp_path / "s.json"
    out.write_text(json.dumps({"kind": "sweep", "command": f"python bench/sweep.py --out {out} --points 32 --seeds 0",
                               "variants": {"last": {}, "progressive+crop": {}}, "points": [{"point": 32}],
                               "runs": runs}))
    assert sweep_mod.main(["--plan", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    asks = __import__("fgnb.results", fromlist=["x"]).seeds_needed(20.0, 1.5, least=4)
    assert f"32 px  progressive+crop (top1_last, validation): n=3, +-" in text and f"asks for {asks}" in text
    assert f"--out {out} --points 32 --seeds {' '.join(map(str, range(3, asks)))} --variants progressive+crop last" in text
    runs[3]["val"]["top1_last"] = runs[5]["val"]["top1_last"] = 0.5  # d = 0, 0, 0 and a fourth seed
    runs += [{**runs[0], "seed": 3}, {**runs[1], "seed": 3}]
    out.write_text(json.dumps({**json.loads(out.read_text()), "runs": runs}))
    sweep_mod.main(["--plan", "--out", str(out)])
    assert "every cell meets the seed rule on validation" in capsys.readouterr().out


def test_gain_plot_draws_each_gain_and_interval_where_the_rows_say():
    import matplotlib

    matplotlib.use("Agg")
    from fgnb.plots import gain_plot
    from fgnb.results import gain_curve

    rows = gain_curve(_sweep_results())
    ax = gain_plot(rows)
    bars = ax.containers
    assert [c.get_label() for c in bars] == ["summed", "progressive+crop"]
    for c, v in zip(bars, ["summed", "progressive+crop"]):
        mine = [r for r in rows if r["variant"] == v]
        line, _, (vbars,) = c.lines
        xs, ys = line.get_data()
        assert list(ys) == pytest.approx([r["mean"] for r in mine])
        assert list(xs) == pytest.approx([r["x"] for r in mine], abs=0.02 * (5.2 - 2.6))  # dodged sideways only
        segs = vbars.get_segments()
        # flat lists: pytest 9 refuses nested structures inside approx (pytest 8 took them)
        assert [s[0][1] for s in segs] == pytest.approx([r["low"] for r in mine])
        assert [s[1][1] for s in segs] == pytest.approx([r["high"] for r in mine])
    # the zero line: across the axes (x in axes fraction), at y = 0
    assert any(list(ln.get_xdata()) == [0, 1] and list(ln.get_ydata()) == [0, 0] for ln in ax.get_lines())
    import matplotlib.pyplot as plt

    plt.close(ax.figure)


def test_point_options_keep_the_boxs_minimum_share_of_the_view(sweep):
    sweep_mod, ablation = sweep
    v = "progressive+crop:min16+margin0.5"
    assert ablation.VARIANTS[v]["min_crop"] == 16  # given at the ablation's 64 px
    for pt, expect in [(32, 8), (48, 12), (64, 16), (96, 24)]:
        opts = sweep_mod.point_options(v, pt)
        assert opts["min_crop"] == expect and opts["img_size"] == pt
        assert {k: x for k, x in opts.items() if k not in ("min_crop", "img_size")} == \
            {k: x for k, x in ablation.VARIANTS[v].items() if k != "min_crop"}
    # a variant without a minimum gets none at any point, and VARIANTS itself is untouched
    assert "min_crop" not in sweep_mod.point_options("progressive+crop", 96)
    assert ablation.VARIANTS[v]["min_crop"] == 16
