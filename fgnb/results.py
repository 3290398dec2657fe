"""Read the benchmark results files and turn them into tables (chapter 8 and ``bench/``).

Three functions, no pandas::

    from fgnb.results import load_results, ablation_table, speed_table
    res = load_results("bench/results/ablation_cpu.json")
    rows = ablation_table(res)                 # list of dicts, one per variant
    print(ablation_table(res, markdown=True))  # the same as a markdown table
    print(speed_table(load_results("bench/results/speed_cpu.json"), markdown=True))

``find_results(name)`` finds a recorded file by name wherever fgnb runs: in a checkout
``bench/results/<name>`` (``bench/published.json`` for ``'published.json'``), in an
installed fgnb (a wheel, Colab) the copies packaged in ``fgnb/recorded/``;
``find_results()`` is the results folder itself.

``load_results(path)`` returns the JSON as a dict and checks its ``kind`` (``'ablation'``
from ``bench/ablation.py``, ``'sweep'`` from ``bench/sweep.py``, ``'speed'`` from
``bench/speed.py``, ``'boxes'`` from ``bench/boxes.py``, ``'published'`` for ``bench/published.json``).

``gain_curve(results)``: a sweep's paired gain over ``last`` at every point, with its t
interval, against the eye ring's size at the input (``fgnb.plots.gain_plot`` draws it).

``ablation_table(results, metrics=..., markdown=False, percent=True)``: one row per variant
in the study's order, ``{'variant', 'n_seeds', '<metric>': 'mean ± std', '<metric>_mean',
'<metric>_std'}`` for every metric of ``ABLATION_METRICS`` (test top-1 of the three
inference modes ``last``/``mean``/``crop``; ``iou50`` and ``part_hit`` of the attention
box, and ``box_area``, its mean share of the image: a box as large as the image hits the
part trivially). Means and sample standard deviations over seeds, in percent by default.

``boxes_table(results, split=None, markdown=False)``: the box screening of
``bench/boxes.py``, one row per box option: what a reader trained on true-head crops makes
of the option's crop (``reader_top1``), the share of the crop's headroom it keeps
(``headroom``: (option - whole view) / (true head box - whole view)), its paired difference
against the literal rule, where the box is (``part_iou``, the cue coverage ``cue_*``) and its
``box_area`` (chapter 6).

``family_against(results)``: every variant of an ablation against ``last``, each in the metric
its row is reported in (``reported_metric``: the crop mode for a variant whose checkpoint is
chosen on it), with its paired t p-value and Holm's correction over the whole family (``holm``,
a pure function of the p-values). ``seed_plan(results)``: what the seed rule, read on validation,
still asks a sweep or an ablation to train. ``provenance(row)``: a row's commit and tree state in
words, "unknown" where the row does not record them.

``speed_table(results, markdown=False)``: one row per measured item, ``{'section',
'item', 'ratio', 'ideal', 'ratio/ideal', 'value', 'unit'}``: training step cost and peak
memory per strategy against a plain timm ViT step, CLS-attention capture against timm's
fused forward, the batched crop against a per-image PIL loop, throughput.
"""
from __future__ import annotations

import json
import math
import os
import pathlib
from typing import Any, Sequence

__all__ = ["find_results", "load_results", "ablation_table", "boxes_table", "speed_table", "gpu_check_table",
           "ABLATION_METRICS",
           "to_markdown", "t_quantile", "paired_differences", "seeds_needed", "load_results_dir", "gain_curve",
           "t_p_value", "holm", "reported_metric", "default_variant", "BOX_OPTIONS", "family_against", "as_sweep", "seed_plan", "rule_cells",
           "provenance", "gain_table", "book_time_table"]

ABLATION_METRICS = ("top1_last", "top1_mean", "top1_crop", "iou50", "part_hit", "box_area")

#: Two-sided 95 % quantiles t_{0.975, df} of Student's t (df: value), used when scipy is absent.
_T975 = {1: 12.7062, 2: 4.3027, 3: 3.1824, 4: 2.7764, 5: 2.5706, 6: 2.4469, 7: 2.3646, 8: 2.3060, 9: 2.2622,
         10: 2.2281, 11: 2.2010, 12: 2.1788, 13: 2.1604, 14: 2.1448, 15: 2.1314, 16: 2.1199, 17: 2.1098,
         18: 2.1009, 19: 2.0930, 20: 2.0860, 25: 2.0595, 30: 2.0423, 40: 2.0211, 60: 2.0003, 120: 1.9799}
KINDS = ("ablation", "speed", "boxes", "published", "gpu_check", "sweep", "book_time", "localisation")


def _recorded_bases() -> list[pathlib.Path]:
    """bench/ of the checkout this fgnb runs from, then the copy packaged with fgnb."""
    here = pathlib.Path(__file__).resolve().parent
    return [b for b in (here.parent / "bench", here / "recorded") if (b / "results").is_dir()]


def find_results(name: str | None = None) -> pathlib.Path:
    """The recorded results file ``name`` (e.g. ``'ablation_cpu.json'``, ``'published.json'``),
    from the checkout's ``bench/`` or, installed, from ``fgnb/recorded/``; no name: the
    results folder. Raises FileNotFoundError listing the recorded files."""
    bases = _recorded_bases()
    for base in bases:
        path = base / ("results" if name is None else "published.json" if name == "published.json" else f"results/{name}")
        if path.exists():
            return path
    where = " or ".join(str(b) for b in bases) or "no bench/results folder and no packaged copy (fgnb/recorded)"
    known = sorted({p.name for b in bases for p in [*(b / "results").glob("*.json"), b / "published.json"] if p.exists()})
    raise FileNotFoundError(f"no recorded results file {name!r} in {where}; recorded: {', '.join(known) or 'none'}")


def load_results(path: str | os.PathLike) -> dict[str, Any]:
    """Load a results JSON written by ``bench/ablation.py``, ``bench/speed.py`` or ``bench/boxes.py``."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"results file not found: {path} (run bench/ablation.py or bench/speed.py)")
    with open(path) as f:
        data = json.load(f)
    if not isinstance(data, dict) or data.get("kind") not in KINDS:
        raise ValueError(f"{path} is not an fgnb results file (expected 'kind' in {KINDS})")
    return data


def _fmt(x, digits: int) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:.{digits}f}"


def _sig(x, sig: int) -> str:
    """Significant digits, so small shares (0.0016) do not print as 0.00."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:.{sig}g}" if abs(x) < 1 else f"{x:.2f}"


def to_markdown(rows: Sequence[dict], columns: Sequence[str] | None = None) -> str:
    """A list of dicts as a GitHub markdown table (columns: the first row's keys by default)."""
    if not rows:
        return "(no rows)"
    columns = list(columns or rows[0].keys())
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join(str(r.get(c, "")) for c in columns) + " |")
    return "\n".join(lines)


def ablation_table(results: dict, metrics: Sequence[str] = ABLATION_METRICS, markdown: bool = False,
                   percent: bool = True, digits: int = 1):
    """Mean ± std over seeds of every metric, one row per variant (see the module docstring)."""
    if results.get("kind") != "ablation":
        raise ValueError("ablation_table needs the results of bench/ablation.py (kind 'ablation')")
    k = 100.0 if percent else 1.0
    rows = []
    for t in results.get("table", []):
        row: dict[str, Any] = {"variant": t["variant"], "n_seeds": t["n_seeds"]}
        for m in metrics:
            mean, std = t.get(f"{m}_mean"), t.get(f"{m}_std")
            mean = None if mean is None else mean * k
            std = None if std is None else std * k
            row[m] = f"{_fmt(mean, digits)} ± {_fmt(std, digits)}" if mean is not None else "n/a"
            row[f"{m}_mean"], row[f"{m}_std"] = mean, std
        rows.append(row)
    if markdown:
        return to_markdown(rows, ["variant", "n_seeds", *metrics])
    return rows


#: the cue-coverage columns of bench/boxes.py (the synthetic set's three cues)
BOX_CUES = ("cue_beak", "cue_eye", "cue_crest", "cue_all")


def localisation_table(results: dict, markdown: bool = False, digits: int = 2):
    """The localisation profile of ``bench/localisation.py`` (chapter 3): one row per model,
    split and block (counted from 1): the mean over heads of the CLS attention's normalised
    entropy and of its mass on the part box, beside the part box's area share (the mass of a
    flat map)."""
    if results.get("kind") != "localisation":
        raise ValueError("localisation_table needs the results of bench/localisation.py (kind 'localisation')")
    rows = []
    for r in results.get("rows", []):
        for b, (ent, mass) in enumerate(zip(r["entropy"], r["mass_part"] or [None] * len(r["entropy"]))):
            rows.append({"model": pathlib.Path(r["model"]).name, "split": r["split"], "block": b + 1,
                         "entropy": round(sum(ent) / len(ent), digits),
                         "mass_part": None if mass is None else round(sum(mass) / len(mass), digits),
                         "share_part": None if r["share_part"] is None else round(r["share_part"], digits)})
    return to_markdown(rows) if markdown else rows


def boxes_table(results: dict, split: str | None = None, markdown: bool = False, digits: int = 1):
    """The box screening of ``bench/boxes.py`` (see the module docstring): one row per option in
    the file's order, ``{'option', 'settings', 'n_models', 'reader_top1', 'headroom', 'vs_literal',
    'vs_literal_low', 'vs_literal_high', 'part_iou', 'cue_beak', 'cue_eye', 'cue_crest', 'cue_all',
    'box_area'}``; shares in percent, ``vs_literal`` in points (95 % t interval over models),
    ``part_iou`` as a fraction. ``settings``: the crop options that differ from the literal rule.
    ``split``: ``'val'`` or ``'test'``; None: ``'val'`` if the file has it, else the split it has."""
    if results.get("kind") != "boxes":
        raise ValueError("boxes_table needs the results of bench/boxes.py (kind 'boxes')")
    summary = results.get("summary", {})
    if split is None:
        split = "val" if "val" in summary else next(iter(summary), "val")
    if split not in summary:
        raise ValueError(f"no {split!r} rows in these results; splits: {sorted(summary)}")
    options = results.get("options", {})
    literal = options.get("literal", {})

    def pct(v):
        return None if v is None else 100.0 * v

    rows = []
    for r in summary[split]:
        opts = options.get(r["option"], {})
        changed = [f"{k}={v}" for k, v in opts.items() if literal.get(k) != v]
        rows.append({"option": r["option"], "settings": ", ".join(changed) or "(the literal rule)",
                     "n_models": r["n_models"], "reader_top1": pct(r.get("reader_top1")),
                     "headroom": pct(r.get("headroom")), "vs_literal": r.get("vs_literal"),
                     "vs_literal_low": r.get("vs_literal_low"), "vs_literal_high": r.get("vs_literal_high"),
                     "part_iou": r.get("part_iou"), **{c: pct(r.get(c)) for c in BOX_CUES},
                     "box_area": pct(r.get("box_area"))})
    if not markdown:
        return rows
    shown = []
    for r in rows:
        vs = "" if r["option"] == "literal" or r["vs_literal"] is None else \
            f"{r['vs_literal']:+.{digits}f} [{r['vs_literal_low']:+.{digits}f}, {r['vs_literal_high']:+.{digits}f}]"
        shown.append({"option": r["option"], "reader top-1 (%)": _fmt(r["reader_top1"], digits),
                      "headroom kept (%)": _fmt(r["headroom"], 0), "vs literal (points, 95 %)": vs,
                      "part IoU": _fmt(r["part_iou"], 2),
                      **{f"{c[4:]} (%)" if c != "cue_all" else "all three (%)": _fmt(r[c], 0) for c in BOX_CUES},
                      "box area (%)": _fmt(r["box_area"], 0)})
    return to_markdown(shown)


def speed_table(results: dict, markdown: bool = False, digits: int = 2):
    """Every measured ratio of ``bench/speed.py`` as rows (see the module docstring)."""
    if results.get("kind") != "speed":
        raise ValueError("speed_table needs the results of bench/speed.py (kind 'speed')")
    rows = []
    for r in results.get("rows", []):
        rows.append({
            "section": r["section"], "item": r["item"],
            "ratio": r.get("ratio"), "ideal": r.get("ideal"), "ratio/ideal": r.get("ratio_over_ideal"),
            "value": r.get("value"), "unit": r.get("unit", ""),
        })
    if markdown:
        shown = [{k: (_sig(v, digits + 1) if isinstance(v, float) or v is None else v) for k, v in r.items()} for r in rows]
        return to_markdown(shown, ["section", "item", "ratio", "ideal", "ratio/ideal", "value", "unit"])
    return rows


# ----------------------------------------------------------------------------- paired statistics
def gpu_check_table(results: dict, markdown: bool = False):
    """One row per step of ``bench/gpu_check.py`` (the device check) with its outcome.

    A step that raised shows its error; ``runs`` counts the short training runs whose losses
    were finite (``ok``) and names the first failure.
    """
    if results.get("kind") != "gpu_check":
        raise ValueError("gpu_check_table needs the results of bench/gpu_check.py (kind 'gpu_check')")
    seconds = results.get("seconds", {})
    rows = []
    for step in results.get("steps", []):
        r = results.get(step)
        if r is None:
            outcome = "not run (stopped before this step)"
        elif isinstance(r, dict) and "error" in r and step != "speed":
            outcome = f"FAILED: {r['error']}"
        elif step == "env":
            outcome = (f"{r.get('name')} (capability {r.get('capability')}), {r.get('gpus')} GPU(s), torch "
                       f"{r.get('torch')}, timm {r.get('timm')}, amp='auto' -> {r.get('amp_auto')}")
        elif step == "speed":
            outcome = "; ".join(f"{amp}: " + ("ok" if v.get("rc") == 0 else f"FAILED ({v.get('error') or 'rc ' + str(v.get('rc'))})")
                                for amp, v in r.items())
        elif step == "runs":
            ok = [x for x in r if x.get("ok")]
            bad = [x for x in r if not x.get("ok") and not x.get("skipped")]
            skipped = len(r) - len(ok) - len(bad)
            outcome = f"{len(ok)} of {len(r)} runs ok (finite losses), amp {sorted({x.get('amp') for x in r})}"
            if skipped:
                outcome += f", {skipped} skipped (out of time)"
            if bad:
                outcome += f"; first failure: {bad[0].get('error')}"
        elif step == "chapter7":
            errors = r.get("errors") or []
            outcome = (f"ran, full profile: {r.get('full_profile')}, {r.get('amp_line')}" if not errors
                       else f"FAILED: {'; '.join(errors)}")
        elif isinstance(r, dict) and "skipped" in r:
            outcome = f"skipped: {r['skipped']}"
        else:
            outcome = ", ".join(f"{k}: rc {v.get('rc')}" for k, v in r.items() if isinstance(v, dict))
        rows.append({"step": step, "seconds": seconds.get(step), "outcome": outcome})
    return to_markdown(rows, ["step", "seconds", "outcome"]) if markdown else rows


def book_time_table(results: dict, markdown: bool = False):
    """The reader's clock (``bench/book_time.py``): seconds of the book build from a fresh clone,
    of each chapter in it, of the one-chapter rebuild, of the default run and (when timed) of CI,
    each beside its goal and whether it meets it."""
    if results.get("kind") != "book_time":
        raise ValueError("book_time_table needs the results of bench/book_time.py (kind 'book_time')")
    goals = results.get("goal_seconds", {})
    rows = [{"what": "book build (fresh clone)", "seconds": results["build"]["seconds"], "goal": goals.get("build_seconds")}]
    rows += [{"what": f"chapter {name}", "seconds": sec, "goal": goals.get("chapter_seconds")}
             for name, sec in results.get("chapters", {}).items()]
    if "rebuild_one_chapter" in results:
        r = results["rebuild_one_chapter"]
        rows.append({"what": f"rebuild after editing {r.get('edited')} (executed again: "
                             f"{', '.join(r.get('executed_again') or []) or 'none'})", "seconds": r["seconds"], "goal": None})
    train = results["default_train"]
    each = ", ".join(f"{r['seconds']:.0f}" for r in train.get("runs", []))
    rows.append({"what": "python -m fgnb train (the default)" + (f", {train['statistic']} ({each} s)" if each else ""),
                 "seconds": train["seconds"], "goal": goals.get("train_seconds")})
    if "ci" in results:
        rows.append({"what": "CI (.ci/run: fresh install, every test)", "seconds": results["ci"]["seconds"],
                     "goal": goals.get("ci_seconds")})
    for r in rows:
        r["meets goal"] = "" if r["goal"] is None else ("yes" if r["seconds"] <= r["goal"] else "no")
    if markdown:
        return to_markdown([{"what": r["what"], "seconds": _fmt(float(r["seconds"]), 0),
                             "goal (s)": "" if r["goal"] is None else str(r["goal"]), "meets goal": r["meets goal"]}
                            for r in rows])
    return rows


def t_quantile(df: int, q: float = 0.975) -> float:
    """Student's t quantile (scipy's when installed; else a table, rounding df down: wider)."""
    if df < 1:
        raise ValueError(f"t_quantile needs df >= 1, got {df}")
    try:
        from scipy.stats import t

        return float(t.ppf(q, df))
    except ImportError:
        if q != 0.975:
            raise ValueError("without scipy only the 95 % two-sided quantile (q=0.975) is available") from None
        return _T975[max(k for k in _T975 if k <= df)]


def seeds_needed(sd: float, half_width: float = 1.5, confidence: float = 0.95, most: int = 1000,
                 least: int = 2) -> int:
    """Smallest n >= ``least`` with t_{n-1} * sd / sqrt(n) <= half_width: the seeds a paired
    difference of standard deviation ``sd`` needs for an interval of +- ``half_width``
    (chapters 8 and 9 use ``least=4``, the seed rule's floor)."""
    q = 1 - (1 - confidence) / 2
    for n in range(max(2, least), most + 1):
        if t_quantile(n - 1, q) * sd / math.sqrt(n) <= half_width:
            return n
    raise ValueError(f"more than {most} seeds needed for sd={sd} and half_width={half_width}")


def _betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b) (continued fraction, Numerical Recipes' betacf)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    if x > (a + 1) / (a + b + 2):
        return 1.0 - _betainc(b, a, 1.0 - x)
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)) / a
    tiny, c, d = 1e-300, 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    f = d
    for m in range(1, 300):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            f *= c * d
        if abs(c * d - 1.0) < 1e-14:
            break
    return front * f


def t_p_value(mean: float, sd: float, n: int) -> float:
    """Two-sided p-value of a paired t test: H0 mean difference 0, t = mean / (sd / sqrt(n)) with
    n - 1 degrees of freedom (the test behind :func:`paired_differences`' intervals: the 95 %
    interval excludes zero exactly when p < 0.05). nan with fewer than two pairs; 0 when sd = 0
    and the mean is not 0."""
    if n < 2 or sd != sd or mean != mean:
        return float("nan")
    if sd == 0:
        return 1.0 if mean == 0 else 0.0
    t, df = mean / (sd / math.sqrt(n)), n - 1
    try:
        from scipy.stats import t as student

        return float(2 * student.sf(abs(t), df))
    except ImportError:
        return _betainc(df / 2, 0.5, df / (df + t * t))


def holm(p_values: Sequence[float], alpha: float = 0.05) -> list[dict]:
    """Holm's step-down correction for a family of m tests, in the input's order.

    Sort the p-values p_(1) <= ... <= p_(m); the adjusted value of the k-th is
    max_{j <= k} min(1, (m - j + 1) p_(j)), and a test is rejected (``survives``) when its adjusted
    value is at most ``alpha``: the chance that any true null is rejected stays at most ``alpha``
    whatever the tests' dependence. A nan p-value (no interval yet) is in the family (it counts in
    m) and never survives. Rows: {p, adjusted, survives, rank} (rank 1: the smallest p)."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: (p_values[i] != p_values[i], p_values[i] if p_values[i] == p_values[i] else 0))
    rows: list[dict] = [{} for _ in range(m)]
    running = 0.0
    for k, i in enumerate(order):
        p = p_values[i]
        if p != p:
            rows[i] = {"p": p, "adjusted": float("nan"), "survives": False, "rank": k + 1}
            continue
        running = max(running, min(1.0, (m - k) * p))
        rows[i] = {"p": p, "adjusted": running, "survives": running <= alpha, "rank": k + 1}
    return rows


def family_against(results: dict, baseline: str = "last", split: str = "test", alpha: float = 0.05,
                   variants: Sequence[str] | None = None) -> list[dict]:
    """The family of comparisons against ``baseline`` in an ablation: every other variant (or
    ``variants``), each in the metric its row is reported in (:func:`reported_metric`) against the
    baseline's ``top1_last``, paired over seeds (:func:`paired_differences`), with its paired t
    p-value and Holm's correction over the whole family (:func:`holm`). Rows: the
    :func:`paired_differences` row with ``metric``, ``p``, ``p_holm`` and ``survives``, in the
    results' order."""
    rows = []
    for v in [v for v in (results.get("variants") or {}) if v != baseline]:
        if variants is not None and v not in variants:
            continue
        m = reported_metric(results, v)
        got = [r for r in paired_differences(results, baseline, metric=m, split=split, baseline_metric="top1_last")
               if r["variant"] == v and r["n"] > 0]
        if got:
            rows.append({**got[0], "metric": m, "p": t_p_value(got[0]["mean"], got[0]["sd"], got[0]["n"])})
    for r, h in zip(rows, holm([r["p"] for r in rows], alpha)):
        r["p_holm"], r["survives"] = h["adjusted"], h["survives"]
    return rows


#: The sweep's curve cells held to the seed rule (chapter 9; ``bench/sweep.py --plan``): each
#: variant with the metric its paired gain over ``last``'s ``top1_last`` is read on. The chosen
#: box in its crop mode (global + crop view averaged), the others on their deepest head.
RULE_CELLS = {"last:3steps": "top1_last", "summed": "top1_last", "progressive": "top1_last",
              "progressive+crop": "top1_last", "progressive+crop:min16+margin0.5": "top1_crop"}


def rule_cells(results: dict) -> dict[str, str]:
    """The :data:`RULE_CELLS` that a sweep's results file holds ({variant: metric})."""
    held = results.get("variants") or {}
    return {v: m for v, m in RULE_CELLS.items() if v in held}


def seed_plan(results: dict, cells: dict[str, str] | None = None, baseline: str = "last", split: str = "val",
              half_width: float = 1.5, least: int = 4) -> list[dict]:
    """What a sweep (``bench/sweep.py``) or an ablation (``bench/ablation.py``, one point: ``None``)
    still has to train for the seed rule (chapters 8 and 9):
    every cell (point, variant) whose paired interval is wider than +- ``half_width`` or has
    fewer than ``least`` seeds, with the seeds its measured spread asks for,
    ``asks`` = :func:`seeds_needed` (sd, half_width, least) (``least`` when there is no spread yet).

    The spread is read on ``split``, validation by default: the rule decides how many runs to
    train, and decisions are made on validation, never on the test split that is read once.
    ``cells``: {variant: its metric}, each in the metric its row is reported in (the crop mode
    ``top1_crop`` for a crop-mode variant, :func:`reported_metric`), compared with the baseline's
    ``top1_last`` (default: a sweep's :func:`rule_cells`, the curve of chapter 9; an ablation's
    every variant in its :func:`reported_metric`). The next seeds are taken where half the pair is already
    trained (the baseline's seeds first, then the variant's), then the smallest unused ones.
    ``core_s`` estimates the single-core seconds of the runs to train from the mean
    ``train_wall_s`` of the same point and variant (None without a timed run); a baseline run
    that two cells need is counted in both. Rows: {point, variant, metric, n, half_width, asks,
    seeds, variant_seeds, baseline_seeds, core_s}, sorted like the results' variants, then point.
    """
    if results.get("kind") == "ablation":
        if cells is None:
            cells = {v: reported_metric(results, v) for v in results.get("variants") or {} if v != baseline}
        results = as_sweep(results)
    if results.get("kind") != "sweep":
        raise ValueError("seed_plan needs the results of bench/sweep.py (kind 'sweep') or bench/ablation.py")
    if cells is None:
        cells = rule_cells(results)
    runs = results.get("runs", [])

    def trained(point, variant, metric):
        return {r["seed"]: r for r in runs if (r["point"], r["variant"]) == (point, variant)
                and _metric_of(r, metric, split) is not None}

    def cost(done):
        t = [r["train_wall_s"] for r in done.values() if r.get("train_wall_s")]
        return sum(t) / len(t) if t else None

    plan = []
    for variant, metric in cells.items():
        curve = {r["point"]: r for r in gain_curve(results, [variant], baseline, metric, split,
                                                   baseline_metric="top1_last")}
        for info in results.get("points", []):
            pt = info["point"]
            row = curve.get(pt)
            n, hw, sd = (row["n"], row["half_width"], row["sd"]) if row else (0, float("nan"), float("nan"))
            if n >= least and hw <= half_width:
                continue
            asks = seeds_needed(sd, half_width, least=least) if n > 1 and sd == sd else least
            mine, base = trained(pt, variant, metric), trained(pt, baseline, "top1_last")
            fresh = (s for s in range(10 ** 6) if s not in mine and s not in base)
            order = sorted(set(base) - set(mine)) + sorted(set(mine) - set(base))
            seeds = (order + [next(fresh) for _ in range(max(0, asks - n - len(order)))])[:max(0, asks - n)]
            v_seeds, b_seeds = [s for s in seeds if s not in mine], [s for s in seeds if s not in base]
            cv, cb = cost(mine), cost(base)
            core = None if (v_seeds and cv is None) or (b_seeds and cb is None) else \
                len(v_seeds) * (cv or 0) + len(b_seeds) * (cb or 0)
            plan.append({"point": pt, "variant": variant, "metric": metric, "n": n, "half_width": hw, "asks": asks,
                         "seeds": seeds, "variant_seeds": v_seeds, "baseline_seeds": b_seeds, "core_s": core})
    return plan


def as_sweep(results: dict) -> dict:
    """An ablation's results as a sweep of one point (``None``), so :func:`seed_plan` and
    :func:`gain_curve` read both kinds of file the same way."""
    if results.get("kind") != "ablation":
        raise ValueError("as_sweep needs the results of bench/ablation.py (kind 'ablation')")
    return {**results, "kind": "sweep", "points": [{"point": None}],
            "runs": [{**r, "point": None} for r in results.get("runs", [])]}


def reported_metric(results: dict, variant: str) -> str:
    """The metric a variant's row is reported in: the crop mode (``top1_crop``: the deepest head
    on the global and the crop view, averaged) for a crop-mode variant, one whose checkpoint is
    chosen on that mode (``select_by='crop'``); the deepest head (``top1_last``) otherwise."""
    opts = {**(results.get("base_config") or {}), **((results.get("variants") or {}).get(variant) or {})}
    from .config import selected_on

    return "top1_crop" if opts.get("crop") and selected_on(opts) == "crop" else "top1_last"


def provenance(row: dict) -> str:
    """Where one results row (a run) came from, in words: the commit that trained it and whether
    its working tree was dirty, as the row records them (``bench/ablation.py`` writes both into
    every row it trains); what a row does not record is said to be unknown, never filled in."""
    commit, dirty = row.get("commit"), row.get("dirty")
    where = f"commit {commit[:10]}" if commit else "commit unknown"
    state = {True: "dirty tree", False: "clean tree"}.get(dirty, "tree state unknown")
    note = row.get("provenance_note")
    return f"{where}, {state}" + (f" ({note})" if note else "")


def _metric_of(run: dict, metric: str, split: str):
    values = run.get("test") if split == "test" else run.get("val")
    v = (values or {}).get(metric)
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else v


def paired_differences(results: dict, baseline: str = "last", metric: str = "top1_last", split: str = "test",
                       percent: bool = True, confidence: float = 0.95, markdown: bool = False,
                       baseline_metric: str | None = None):
    """Every variant against ``baseline``, seed by seed: mean paired difference and its t interval.

    Runs with the same seed share the initial heads, batch order and augmentation (and every
    run the data and validation split), so d_s = variant_s - baseline_s removes what the
    seeds share; mean d = (1/n) sum_s d_s, interval mean +- t_{n-1} sd(d) / sqrt(n).
    ``split``: ``test`` (read once per run, on the checkpoint chosen on validation) or
    ``val`` (the validation metric of that checkpoint: what decisions are made on).
    ``baseline_metric`` (default ``metric``): the baseline's metric, e.g. a crop variant's
    ``top1_crop`` inference mode against the baseline's ``top1_last``.
    Rows: {variant, n, mean, sd, half_width, low, high, excludes_zero, seeds}, in percent
    points by default; the baseline itself is left out.
    """
    if results.get("kind") != "ablation":
        raise ValueError("paired_differences needs the results of bench/ablation.py (kind 'ablation')")
    if split not in ("test", "val"):
        raise ValueError(f"split must be 'test' or 'val', got {split!r}")
    k = 100.0 if percent else 1.0
    by = {}
    for r in results.get("runs", []):
        v = _metric_of(r, baseline_metric or metric if r["variant"] == baseline else metric, split)
        if v is not None:
            by.setdefault(r["variant"], {})[r["seed"]] = v * k
    if baseline not in by:
        raise ValueError(f"no {baseline!r} runs with {split} {metric} in these results; variants: {sorted(by)}")
    q = 1 - (1 - confidence) / 2
    rows = []
    for variant in [v for v in results.get("variants", by) if v in by and v != baseline]:
        seeds = sorted(set(by[variant]) & set(by[baseline]))
        d = [by[variant][s] - by[baseline][s] for s in seeds]
        n = len(d)
        mean = sum(d) / n if n else float("nan")
        sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1)) if n > 1 else float("nan")
        hw = t_quantile(n - 1, q) * sd / math.sqrt(n) if n > 1 else float("nan")
        rows.append({"variant": variant, "n": n, "mean": mean, "sd": sd, "half_width": hw,
                     "low": mean - hw, "high": mean + hw, "excludes_zero": n > 1 and (mean - hw > 0 or mean + hw < 0),
                     "seeds": seeds})
    if markdown:
        shown = [{"variant": r["variant"], "n": r["n"], f"mean diff ({'points' if percent else 'share'})": _fmt(r["mean"], 2),
                  "95 % interval": f"[{_fmt(r['low'], 2)}, {_fmt(r['high'], 2)}]", "sd": _fmt(r["sd"], 2)} for r in rows]
        return to_markdown(shown)
    return rows


#: the options that say which box a crop variant trains with (where its attention is read and how
#: the box is made from it): what :func:`default_variant` compares with ``TrainConfig``'s defaults
BOX_OPTIONS = ("crop_boxes", "crop_attention", "crop_block", "attention_from", "box_rule", "threshold_scale",
               "min_crop", "crop_margin", "crop_from")


def default_variant(results: dict) -> str | None:
    """The crop variant of a study that trains ``fgnb``'s default box (``TrainConfig(crop=True)``):
    the one whose options (the study's base config, then the variant's own) equal the defaults
    on every :data:`BOX_OPTIONS` option; None when no variant does."""
    from .config import TrainConfig

    wanted = {k: getattr(TrainConfig(crop=True), k) for k in BOX_OPTIONS}
    base = results.get("base_config") or {}
    runs_with = {v: {**base, **own} for v, own in (results.get("variants") or {}).items()}
    hits = [v for v, o in runs_with.items() if o.get("crop") and all(o.get(k) == x for k, x in wanted.items())]
    if len(hits) > 1:
        raise ValueError(f"variants {hits} all train the default box: a study names each box once")
    return hits[0] if hits else None


def gain_table(results: dict, baseline: str = "last", oracle: str | None = None, split: str = "test",
               markdown: bool = False, digits: int = 1):
    """Every variant of an ablation against ``baseline``, each in the metric its row is reported in
    (:func:`reported_metric`: the crop mode for a run chosen on it), the baseline in ``top1_last``,
    paired by seed (:func:`paired_differences`): its mean top-1, the gain d = variant - baseline
    with its 95 % interval, and where the box is: the mean ``box_area`` and ``cue_all`` (the share
    of images whose box holds every cue). ``oracle``: a variant whose crop is the true head box;
    each variant's ``oracle_share`` is then its mean gain over the oracle's, on the seeds all
    three share (how much of what the zoom can give the learned box keeps).

    Rows: {variant, metric, n, top1, gain, low, high, excludes_zero, box_area, cue_all,
    oracle_share}, top-1 and gains in percent points.
    """
    if results.get("kind") != "ablation":
        raise ValueError("gain_table needs the results of bench/ablation.py (kind 'ablation')")
    variants = [v for v in results.get("variants") or {} if v != baseline]
    if oracle is not None and oracle not in variants:
        raise ValueError(f"oracle={oracle!r} is not a variant of these results; variants: {', '.join(variants)}")
    runs = {(r["variant"], r["seed"]): r for r in results.get("runs", [])}

    def values(variant, metric):
        got = {s: _metric_of(r, metric, split) for (v, s), r in runs.items() if v == variant}
        return {s: x for s, x in got.items() if x is not None}

    base = values(baseline, "top1_last")
    if not base:
        raise ValueError(f"no {baseline!r} runs with {split} top1_last in these results")
    metrics = {v: reported_metric(results, v) for v in variants}
    scores = {v: values(v, metrics[v]) for v in variants}
    gains = {v: {s: 100 * (x - base[s]) for s, x in scores[v].items() if s in base} for v in variants}
    rows = []
    for v in variants:
        metric, mine = metrics[v], scores[v]
        [d] = paired_differences({**results, "variants": {baseline: {}, v: {}}}, baseline, metric, split,
                                 baseline_metric="top1_last")
        row = {"variant": v, "metric": metric, "n": d["n"], "top1": 100 * sum(mine.values()) / len(mine) if mine else float("nan"),
               "gain": d["mean"], "low": d["low"], "high": d["high"], "excludes_zero": d["excludes_zero"]}
        for m in ("box_area", "cue_all"):
            got = list(values(v, m).values())
            row[m] = sum(got) / len(got) if got else float("nan")
        row["oracle_share"] = float("nan")
        if oracle is not None and v != oracle:
            shared = sorted(set(gains[v]) & set(gains[oracle]))
            if shared:
                g, go = (sum(gains[k][s] for s in shared) / len(shared) for k in (v, oracle))
                row["oracle_share"] = g / go if go > 0 else float("nan")
        rows.append(row)
    if markdown:
        shown = [{"variant": r["variant"], "mode": r["metric"].removeprefix("top1_"), "seeds": r["n"],
                  "top-1 (%)": _fmt(r["top1"], digits), f"gain vs {baseline} (points)": _fmt(r["gain"], digits),
                  "95 % interval": f"[{_fmt(r['low'], digits)}, {_fmt(r['high'], digits)}]",
                  "box area": _fmt(r["box_area"], 2), "all cues in box": _fmt(r["cue_all"], 2),
                  "share of the oracle's gain": "" if r["oracle_share"] != r["oracle_share"] else f"{r['oracle_share']:.0%}"}
                 for r in rows]
        return to_markdown(shown)
    return rows


def gain_curve(results: dict, variants: Sequence[str] | None = None, baseline: str = "last",
               metric: str = "top1_last", split: str = "test", x: str = "diameter_input_px", percent: bool = True,
               confidence: float = 0.95, markdown: bool = False, baseline_metric: str | None = None):
    """A sweep's gain curve (``bench/sweep.py``): at every point, each variant's paired difference
    to ``baseline`` and its t interval (:func:`paired_differences` on the point's runs).

    ``x``: the eye-ring measure of the point that the curve is drawn against (``diameter_input_px``,
    ``band_input_px`` or ``diameter_source_px``, median and quartiles over the validation
    images). A point without ``baseline`` runs is left out, so is a variant without a run paired
    with one. ``baseline_metric`` (default ``metric``): the baseline's own metric, e.g. the crop
    variants' ``top1_crop`` inference mode against ``last``'s ``top1_last``. Rows: {point, variant, x, x_q1, x_q3, n, mean, sd, half_width, low, high,
    excludes_zero, seeds}, by variant (the study's order), then point.
    """
    if results.get("kind") != "sweep":
        raise ValueError("gain_curve needs the results of bench/sweep.py (kind 'sweep')")
    order = [v for v in (results.get("variants") or {}) if v != baseline]
    wanted = order if variants is None else [v for v in variants if v != baseline]
    rows = []
    for info in results.get("points", []):
        runs = [r for r in results.get("runs", []) if r["point"] == info["point"]]
        if not any(r["variant"] == baseline and _metric_of(r, baseline_metric or metric, split) is not None
                   for r in runs):
            continue
        point = {"kind": "ablation", "runs": runs, "variants": list(results.get("variants") or {})}
        ring = (info.get("eye_ring") or {}).get(x) or {}  # none: not a synthetic set
        for d in paired_differences(point, baseline, metric, split, percent, confidence,
                                    baseline_metric=baseline_metric):
            if d["variant"] in wanted and d["n"] > 0:
                rows.append({"point": info["point"], "variant": d["variant"], "x": ring.get("median"),
                             "x_q1": ring.get("q1"), "x_q3": ring.get("q3"), **{k: v for k, v in d.items() if k != "variant"}})
    rows.sort(key=lambda r: (wanted.index(r["variant"]), r["point"]))
    if markdown:
        shown = [{"point": r["point"], f"eye ring ({x})": f"{_fmt(r['x'], 2)} [{_fmt(r['x_q1'], 2)}, {_fmt(r['x_q3'], 2)}]",
                  "variant": r["variant"], "n": r["n"], f"gain ({'points' if percent else 'share'})": _fmt(r["mean"], 2),
                  "95 % interval": f"[{_fmt(r['low'], 2)}, {_fmt(r['high'], 2)}]"} for r in rows]
        return to_markdown(shown)
    return rows


# ---------------------------------------------------------------------------------------
# A results folder, every file at once (chapter 8's set-up; fgnb.results.find_results finds it).
# ---------------------------------------------------------------------------------------

def load_results_dir(folder: str | os.PathLike, verbose: bool = True) -> dict[str, dict[str, Any]]:
    """Every results file (``*.json``) of ``folder`` by file name, skipping files that are not
    fgnb results; with ``verbose``, print where each came from (command, commit, machine)."""
    folder = os.fspath(folder)
    names = sorted(n for n in os.listdir(folder) if n.endswith(".json")) if os.path.isdir(folder) else []
    results: dict[str, dict[str, Any]] = {}
    for name in names:
        try:
            results[name] = load_results(os.path.join(folder, name))
        except (ValueError, json.JSONDecodeError) as e:
            if verbose:
                print(f"skipping {name}: {e}")
    if not verbose:
        return results
    print("results folder:", folder)
    if not results:
        print("NO RESULTS FILES YET: nothing below is measured. Produce them with")
        print("    python bench/ablation.py      # -> bench/results/ablation_cpu.json")
        print("    python bench/speed.py         # -> bench/results/speed_cpu.json")
    for name, r in results.items():
        m = r.get("machine", {})
        state = "complete" if r.get("complete", True) else "INCOMPLETE (a partial file: some runs missing)"
        print(f"- {name}: kind={r['kind']}, {state}")
        print(f"    command: {r.get('command')}")
        print(f"    commit {str(r.get('commit'))[:10]} dirty={r.get('dirty')}, started {r.get('started')}, "
              f"finished {r.get('finished')}")
        print(f"    machine: {m.get('cpu')} x{m.get('cpu_count')}, cuda={m.get('cuda')}, torch {m.get('torch')}, "
              f"timm {m.get('timm')}")
    return results
