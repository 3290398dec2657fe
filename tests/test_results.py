"""Paired statistics of the ablation (fgnb.results): equal to hand and scipy computations."""
import math

import pytest

from fgnb.results import _T975, boxes_table, paired_differences, seeds_needed, t_quantile


def fake(rows):
    """An ablation results dict: rows = {variant: {seed: test top1}}; val = test - 0.01."""
    runs = [{"variant": v, "seed": s, "test": {"top1_last": x}, "val": {"top1_last": x - 0.01}}
            for v, by in rows.items() for s, x in by.items()]
    return {"kind": "ablation", "variants": {v: {} for v in rows}, "runs": runs}


def test_paired_difference_and_interval_by_hand():
    res = fake({"last": {0: 0.50, 1: 0.40, 2: 0.45, 3: 0.47},
                "progressive": {0: 0.52, 1: 0.43, 2: 0.44, 3: 0.50, 4: 0.99}})  # seed 4 has no pair
    (row,) = paired_differences(res)
    d = [2.0, 3.0, -1.0, 3.0]
    mean = sum(d) / 4
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / 3)
    assert row["n"] == 4 and row["seeds"] == [0, 1, 2, 3]
    assert row["mean"] == pytest.approx(mean) and row["sd"] == pytest.approx(sd)
    assert row["half_width"] == pytest.approx(3.182446 * sd / 2, rel=1e-5)
    assert row["low"] < 0 < row["high"] and not row["excludes_zero"]
    # the validation metric pairs the same way (here shifted equally: same differences)
    assert paired_differences(res, split="val")[0]["mean"] == pytest.approx(mean)


def test_a_variants_inference_mode_against_the_baselines_last_head():
    """baseline_metric pairs the variant's crop mode with the baseline's last head, seed by seed."""
    runs = [{"variant": "last", "seed": s, "test": {"top1_last": 0.40 + s / 100, "top1_crop": 0.1}} for s in range(3)]
    runs += [{"variant": "crop", "seed": s, "test": {"top1_last": 0.30, "top1_crop": 0.45 + s / 50}} for s in range(3)]
    res = {"kind": "ablation", "variants": {"last": {}, "crop": {}}, "runs": runs}
    (row,) = paired_differences(res, metric="top1_crop", baseline_metric="top1_last")
    assert row["mean"] == pytest.approx(((5 - 0) + (7 - 1) + (9 - 2)) / 3)
    (same,) = paired_differences(res, metric="top1_crop")  # both on the crop mode
    assert same["mean"] == pytest.approx(100 * (0.47 - 0.1))


def test_pairing_removes_what_seeds_share():
    """A variant one point above last on every seed: the interval is that point exactly,
    however much the seeds themselves vary."""
    last = {s: 0.3 + 0.05 * s for s in range(5)}
    (row,) = paired_differences(fake({"last": last, "v": {s: x + 0.01 for s, x in last.items()}}))
    assert row["mean"] == pytest.approx(1.0) and row["half_width"] == pytest.approx(0.0, abs=1e-9)
    assert row["excludes_zero"]


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="no 'last' runs"):
        paired_differences(fake({"v": {0: 0.5}}))
    with pytest.raises(ValueError, match="split must be"):
        paired_differences(fake({"last": {0: 0.5}}), split="train")


def test_t_table_matches_scipy():
    scipy_t = pytest.importorskip("scipy.stats").t
    for df, v in _T975.items():
        assert v == pytest.approx(scipy_t.ppf(0.975, df), abs=1e-3)
    assert t_quantile(7) == pytest.approx(2.3646, abs=1e-4)


def test_seeds_needed_is_the_smallest_n():
    n = seeds_needed(2.0, 1.5)
    assert t_quantile(n - 1) * 2.0 / math.sqrt(n) <= 1.5 < t_quantile(n - 2) * 2.0 / math.sqrt(n - 1)
    assert n == 10  # t_8 * 2 / 3 = 1.54 > 1.5; t_9 * 2 / sqrt(10) = 1.43
    # the seed rule's floor: a small spread asks for the floor, a large one is unchanged by it
    assert seeds_needed(0.1, 1.5) == 2 and seeds_needed(0.1, 1.5, least=4) == 4
    assert seeds_needed(2.0, 1.5, least=4) == 10


def test_forest_plot_draws_each_interval_where_the_rows_say():
    import matplotlib

    matplotlib.use("Agg")
    from fgnb.plots import forest_plot

    res = fake({"last": {0: 0.50, 1: 0.40, 2: 0.45},
                "up": {0: 0.53, 1: 0.44, 2: 0.47}, "down": {0: 0.40, 1: 0.33, 2: 0.36}})
    rows = paired_differences(res)
    ax = forest_plot(rows)
    bars = [l for l in ax.lines if len(l.get_xdata()) == 2 and l.get_ydata()[0] == l.get_ydata()[1]]
    assert sorted((round(min(l.get_xdata()), 6), round(max(l.get_xdata()), 6)) for l in bars) == sorted(
        (round(r["low"], 6), round(r["high"], 6)) for r in rows)
    labels = {t.get_text(): t.get_position()[1] for t in ax.get_yticklabels()}
    assert labels["up"] > labels["down"]  # rows top to bottom in the results' order


def test_boxes_table_reads_the_screening_summary():
    """bench/boxes.py's summary as rows: shares in percent, the options' changed settings, the
    markdown cells; the literal row has no difference against itself; wrong kind or split fail."""
    base = dict(min_crop=0, crop_margin=0.0, crop_boxes="attention")
    summary = [dict(option="literal", n_models=2, reader_top1=0.30, headroom=-0.02, vs_literal=0.0, vs_literal_low=0.0,
                    vs_literal_high=0.0, part_iou=0.2, cue_beak=0.2, cue_eye=0.8, cue_crest=0.4, cue_all=0.1, box_area=0.06),
               dict(option="min16+margin0.5", n_models=2, reader_top1=0.45, headroom=0.46, vs_literal=15.0,
                    vs_literal_low=12.5, vs_literal_high=17.5, part_iou=0.34, cue_beak=0.99, cue_eye=1.0, cue_crest=0.99,
                    cue_all=0.98, box_area=0.3)]
    res = {"kind": "boxes", "summary": {"val": summary},
           "options": {"literal": base, "min16+margin0.5": {**base, "min_crop": 16, "crop_margin": 0.5}}}
    lit, chosen = boxes_table(res)
    assert lit["settings"] == "(the literal rule)" and chosen["settings"] == "min_crop=16, crop_margin=0.5"
    assert chosen["reader_top1"] == pytest.approx(45.0) and chosen["headroom"] == pytest.approx(46.0)
    assert chosen["cue_all"] == pytest.approx(98.0) and chosen["box_area"] == pytest.approx(30.0)
    assert chosen["vs_literal"] == 15.0 and chosen["part_iou"] == 0.34  # points and a fraction stay as they are
    lines = boxes_table(res, markdown=True).splitlines()
    assert len(lines) == 4 and "all three (%)" in lines[0]
    assert lines[2].split("|")[1:5] == [" literal ", " 30.0 ", " -2 ", "  "]
    assert "+15.0 [+12.5, +17.5]" in lines[3] and "| 98 | 30 |" in lines[3]
    with pytest.raises(ValueError, match="no 'test' rows"):
        boxes_table(res, split="test")
    # a file of the test split alone (read once, after the choice): its rows by default
    test_only = {**res, "summary": {"test": summary[:1]}}
    assert [r["option"] for r in boxes_table(test_only)] == ["literal"] == [r["option"] for r in boxes_table(test_only, "test")]
    with pytest.raises(ValueError, match="kind 'boxes'"):
        boxes_table({"kind": "ablation"})


def test_gpu_check_table_reports_each_steps_outcome():
    from fgnb.results import gpu_check_table

    res = {"kind": "gpu_check", "steps": ["env", "speed", "runs", "chapter7", "torchrun"],
           "seconds": {"env": 1.0, "speed": 2.0, "runs": 3.0},
           "env": {"name": "GPU X", "capability": [8, 0], "gpus": 1, "torch": "2.x", "timm": "1.y", "amp_auto": "bf16"},
           "speed": {"fp16": {"rc": 0}, "bf16": {"rc": 1}},
           "runs": [{"ok": True, "amp": "auto"}, {"ok": False, "amp": "fp16", "error": "ValueError: boom"},
                    {"ok": True, "amp": "fp16"}, {"amp": "auto", "skipped": "out of time"}]}
    rows = {r["step"]: r for r in gpu_check_table(res)}
    assert list(rows) == res["steps"]
    assert "GPU X" in rows["env"]["outcome"] and "bf16" in rows["env"]["outcome"]
    assert rows["speed"]["outcome"] == "fp16: ok; bf16: FAILED (rc 1)"
    assert rows["runs"]["outcome"].startswith("2 of 4 runs ok") and "1 skipped" in rows["runs"]["outcome"]
    assert rows["runs"]["outcome"].endswith("first failure: ValueError: boom")
    assert rows["chapter7"]["outcome"].startswith("not run") and rows["chapter7"]["seconds"] is None
    res["chapter7"] = {"errors": ["RuntimeError: died"]}
    res["torchrun"] = {"skipped": "fewer than 2 GPUs"}
    rows = {r["step"]: r for r in gpu_check_table(res)}
    assert rows["chapter7"]["outcome"] == "FAILED: RuntimeError: died"
    assert rows["torchrun"]["outcome"] == "skipped: fewer than 2 GPUs"
    assert gpu_check_table(res, markdown=True).count("\n") == 6  # header, rule, 5 steps
    with pytest.raises(ValueError, match="gpu_check"):
        gpu_check_table({"kind": "speed"})


def test_holm_by_hand():
    """Holm over m = 4 tests, worked by hand: sorted p 0.01, 0.02, 0.03, 0.04 times 4, 3, 2, 1 are
    0.04, 0.06, 0.06, 0.04; the running maximum makes them 0.04, 0.06, 0.06, 0.06, so at 0.05 only
    the smallest survives (Bonferroni would give 0.04, 0.08, 0.12, 0.16; unadjusted, all four)."""
    from fgnb.results import holm

    rows = holm([0.03, 0.01, 0.04, 0.02])  # input order is kept
    assert [r["adjusted"] for r in rows] == pytest.approx([0.06, 0.04, 0.06, 0.06])
    assert [r["survives"] for r in rows] == [False, True, False, False]
    assert [r["rank"] for r in rows] == [3, 1, 4, 2]
    # the step-down stops at the first failure: 0.001 * 3 and 0.02 * 2 survive, 0.04 * 1 would alone
    # but follows a larger adjusted value; capped at 1; a nan counts in m and never survives
    assert [r["survives"] for r in holm([0.001, 0.02, 0.04])] == [True, True, True]
    assert [r["survives"] for r in holm([0.001, 0.03, 0.04])] == [True, False, False]
    assert holm([0.9, 0.8])[0]["adjusted"] == 1.0
    with_nan = holm([0.01, float("nan")])
    assert with_nan[0]["adjusted"] == pytest.approx(0.02) and not with_nan[1]["survives"]


def test_t_p_value_matches_the_interval_and_scipy():
    """p < 0.05 exactly when the 95 % interval excludes zero; the fallback (no scipy) agrees."""
    from fgnb.results import _betainc, t_p_value

    res = fake({"last": {0: 0.50, 1: 0.40, 2: 0.45, 3: 0.47}, "v": {0: 0.52, 1: 0.43, 2: 0.44, 3: 0.50}})
    (row,) = paired_differences(res)
    p = t_p_value(row["mean"], row["sd"], row["n"])
    assert (p < 0.05) == row["excludes_zero"]
    # the half-width is t_{n-1} sd / sqrt(n): a mean of exactly that is p = 0.05
    assert t_p_value(row["half_width"], row["sd"], row["n"]) == pytest.approx(0.05, abs=1e-6)
    scipy_t = pytest.importorskip("scipy.stats").t
    for tv, df in [(5.7, 3), (3.1, 21), (0.5, 1), (2.2, 10)]:
        assert _betainc(df / 2, 0.5, df / (df + tv * tv)) == pytest.approx(2 * scipy_t.sf(tv, df), rel=1e-9)


def test_family_against_last_reads_each_row_in_its_reported_metric():
    """The family: every variant against last, a crop-mode variant (select_by crop) in its crop
    mode; Holm over all of them."""
    from fgnb.results import family_against

    runs = []
    for s in range(4):
        runs.append({"variant": "last", "seed": s, "test": {"top1_last": 0.40, "top1_crop": 0.0}})
        runs.append({"variant": "crop", "seed": s, "test": {"top1_last": 0.30, "top1_crop": 0.45 + (s % 2) / 100}})
        runs.append({"variant": "flat", "seed": s, "test": {"top1_last": 0.40 + (s % 2 - 0.5) / 50}})
    res = {"kind": "ablation", "base_config": {"select_by": "last"}, "runs": runs,
           "variants": {"last": {}, "crop": {"crop": True, "select_by": "crop"}, "flat": {}}}
    crop, flat = family_against(res)
    assert crop["metric"] == "top1_crop" and crop["mean"] == pytest.approx(5.5) and flat["metric"] == "top1_last"
    assert crop["survives"] and crop["p_holm"] == pytest.approx(2 * crop["p"]) and not flat["survives"]


def test_provenance_says_what_a_row_does_not_record():
    from fgnb.results import provenance

    assert provenance({"commit": "0123456789abcdef", "dirty": False}) == "commit 0123456789, clean tree"
    assert provenance({"commit": "0123456789abcdef", "dirty": True}) == "commit 0123456789, dirty tree"
    assert provenance({"commit": None}) == "commit unknown, tree state unknown"
    assert provenance({"commit": "abc", "provenance_note": "x"}).endswith("tree state unknown (x)")


def test_gain_table_pairs_each_variant_in_its_reported_mode_and_shares_the_oracles_gain():
    """A crop variant chosen on the crop mode is read in it, against last's deepest head, seed by
    seed; its share of the oracle's gain is its mean gain over the oracle's on the shared seeds."""
    from fgnb.results import gain_table

    last = {0: 0.20, 1: 0.18, 2: 0.22}
    box = {0: 0.36, 1: 0.33, 2: 0.40}           # crop mode of the learned box
    orc = {0: 0.48, 1: 0.44, 2: 0.50}           # crop mode of the true head box
    runs = [{"variant": "last", "seed": s, "test": {"top1_last": x, "top1_crop": 0.0}} for s, x in last.items()]
    runs += [{"variant": "box", "seed": s, "test": {"top1_last": 0.0, "top1_crop": x, "box_area": 0.2, "cue_all": 0.6}}
             for s, x in box.items()]
    runs += [{"variant": "oracle", "seed": s, "test": {"top1_last": 0.0, "top1_crop": x, "box_area": 0.1, "cue_all": 1.0}}
             for s, x in orc.items()]
    runs += [{"variant": "plain", "seed": s, "test": {"top1_last": x + 0.01}} for s, x in last.items()]
    res = {"kind": "ablation", "base_config": {"crop": False, "select_by": "last"},
           "variants": {"last": {}, "plain": {}, "box": {"crop": True, "select_by": "crop"},
                        "oracle": {"crop": True, "select_by": None}},  # None + crop: chosen on the crop mode
           "runs": runs}
    rows = {r["variant"]: r for r in gain_table(res, oracle="oracle")}
    assert set(rows) == {"plain", "box", "oracle"}
    assert rows["plain"]["metric"] == "top1_last" and rows["plain"]["gain"] == pytest.approx(1.0)
    assert rows["box"]["metric"] == rows["oracle"]["metric"] == "top1_crop"
    gain = [100 * (box[s] - last[s]) for s in last]
    gain_o = [100 * (orc[s] - last[s]) for s in last]
    assert rows["box"]["gain"] == pytest.approx(sum(gain) / 3)
    assert rows["box"]["top1"] == pytest.approx(100 * sum(box.values()) / 3)
    assert rows["box"]["oracle_share"] == pytest.approx(sum(gain) / sum(gain_o))
    assert rows["box"]["box_area"] == pytest.approx(0.2) and rows["oracle"]["cue_all"] == pytest.approx(1.0)
    assert rows["oracle"]["oracle_share"] != rows["oracle"]["oracle_share"]  # NaN: not its own share
    (same,) = [r for r in paired_differences(res, metric="top1_crop", baseline_metric="top1_last") if r["variant"] == "box"]
    assert (rows["box"]["low"], rows["box"]["high"]) == pytest.approx((same["low"], same["high"]))
    assert "share of the oracle's gain" in gain_table(res, oracle="oracle", markdown=True)
    with pytest.raises(ValueError, match="oracle='nope'"):
        gain_table(res, oracle="nope")


def test_default_variant_is_the_one_whose_box_options_are_trainconfigs():
    from fgnb.config import TrainConfig
    from fgnb.results import BOX_OPTIONS, default_variant

    d = TrainConfig(crop=True)
    base = {"crop": False, "crop_block": None, "min_crop": 0, "crop_margin": 0.0, "attention_from": "input",
            **{k: getattr(d, k) for k in ("crop_boxes", "crop_attention", "box_rule", "threshold_scale", "crop_from")}}
    mine = {k: getattr(d, k) for k in ("crop_block", "min_crop", "crop_margin", "attention_from")}
    res = {"base_config": base, "variants": {
        "last": {}, "literal": {"crop": True},
        "on_input": {"crop": True, **mine, "attention_from": "input"},
        "mine": {"crop": True, **mine, "select_by": "crop"},
        "oracle": {"crop": True, **mine, "crop_boxes": "oracle"}}}
    assert default_variant(res) == "mine"
    assert set(BOX_OPTIONS) >= set(mine) | {"crop_boxes", "crop_from"}
    res["variants"]["mine"]["crop_margin"] = d.crop_margin + 0.25
    assert default_variant(res) is None
    res["variants"]["mine"]["crop_margin"] = d.crop_margin
    res["variants"]["twin"] = dict(res["variants"]["mine"])
    with pytest.raises(ValueError, match="all train the default box"):
        default_variant(res)


def test_book_time_table_reads_each_time_against_its_goal():
    from fgnb.results import book_time_table

    res = {"kind": "book_time", "goal_seconds": {"build_seconds": 240, "chapter_seconds": 60, "train_seconds": 60,
                                                 "ci_seconds": 720},
           "build": {"seconds": 250.2}, "chapters": {"01_a": 12.0, "02_b": 61.0},
           "rebuild_one_chapter": {"seconds": 20.0, "edited": "01_a", "executed_again": ["01_a"]},
           "default_train": {"seconds": 59.9}}
    rows = {r["what"]: r for r in book_time_table(res)}
    assert rows["book build (fresh clone)"]["meets goal"] == "no"
    assert rows["chapter 01_a"]["meets goal"] == "yes" and rows["chapter 02_b"]["meets goal"] == "no"
    assert rows["python -m fgnb train (the default)"]["meets goal"] == "yes"
    assert "rebuild after editing 01_a (executed again: 01_a)" in rows
    assert not any(k.startswith("CI") for k in rows)  # not timed: not shown
    assert "| chapter 02_b | 61 | 60 | no |" in book_time_table(res, markdown=True)
    # repeated default runs (bench/book_time.py --train-repeats): the median, and every run beside it
    res["default_train"] = {"seconds": 61.2, "statistic": "median of 3 runs",
                            "runs": [{"seconds": 57.4}, {"seconds": 61.2}, {"seconds": 64.9}]}
    row = book_time_table(res)[-1]
    assert row["what"] == "python -m fgnb train (the default), median of 3 runs (57, 61, 65 s)"
    assert row["seconds"] == 61.2 and row["meets goal"] == "no"
    with pytest.raises(ValueError, match="book_time"):
        book_time_table({"kind": "speed"})
