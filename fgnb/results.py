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
from ``bench/ablation.py``, ``'speed'`` from ``bench/speed.py``, ``'published'`` for
``bench/published.json``).

``ablation_table(results, metrics=..., markdown=False, percent=True)``: one row per variant
in the study's order, ``{'variant', 'n_seeds', '<metric>': 'mean ± std', '<metric>_mean',
'<metric>_std'}`` for every metric of ``ABLATION_METRICS`` (test top-1 of the three
inference modes ``last``/``mean``/``crop``; ``iou50`` and ``part_hit`` of the attention
box, and ``box_area``, its mean share of the image: a box as large as the image hits the
part trivially). Means and sample standard deviations over seeds, in percent by default.

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

__all__ = ["find_results", "load_results", "ablation_table", "speed_table", "ABLATION_METRICS", "to_markdown"]

ABLATION_METRICS = ("top1_last", "top1_mean", "top1_crop", "iou50", "part_hit", "box_area")
KINDS = ("ablation", "speed", "published", "gpu_check")


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
    """Load a results JSON written by ``bench/ablation.py`` or ``bench/speed.py``."""
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
