"""The chapters' committed outputs are current, and chapters run under other parameters.

CI executes every chapter once per run: nbval (``pytest --nbval-lax notebooks/``) re-runs
the committed notebooks; the book build renders their committed outputs. For that to be
honest the outputs must come from the committed source: ``python -m fgnb.book execute``
stamps ``metadata.fgnb.source_hash`` and :func:`fgnb.book.is_fresh` compares it.

The slow tests run two chapters with non-default parameters (papermill) into a temporary
folder, so the options the text discusses are exercised end to end.
"""
from __future__ import annotations

import ast

import pytest

import fgnb.book
from conftest import CHAPTERS, ROOT, cell_source, is_placeholder, load_nb


def _rel(p):
    return p.relative_to(ROOT).as_posix()


@pytest.mark.parametrize("nb_path", CHAPTERS, ids=lambda p: p.stem)
def test_committed_outputs_are_fresh(nb_path):
    nb = load_nb(nb_path)
    if is_placeholder(nb):
        pytest.skip(f"{nb_path.name} is a placeholder (nothing to execute)")
    stamp = (nb.get("metadata", {}).get("fgnb") or {}).get("source_hash")
    if not fgnb.book.is_fresh(nb_path):
        pytest.fail(f"{_rel(nb_path)}: committed outputs are stale (stamped {stamp}, source is "
                    f"{fgnb.book.source_hash(nb)}). Re-run it and commit the result:\n"
                    f"    python -m fgnb.book execute {_rel(nb_path)}", pytrace=False)


@pytest.mark.parametrize("nb_path", CHAPTERS, ids=lambda p: p.stem)
def test_committed_outputs_complete(nb_path):
    """Every code cell ran, in order, without an error output (what the book renders)."""
    nb = load_nb(nb_path)
    if is_placeholder(nb):
        pytest.skip(f"{nb_path.name} is a placeholder")
    counts, errors = [], []
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "code" or not cell_source(cell).strip():
            continue
        counts.append(cell.get("execution_count"))
        errors += [f"cell {i}: {o.get('ename')}: {o.get('evalue')}"
                   for o in cell.get("outputs", []) if o.get("output_type") == "error"]
    fix = f"python -m fgnb.book execute {_rel(nb_path)}"
    if errors:
        pytest.fail(f"{_rel(nb_path)} has error outputs; fix and run `{fix}`:\n" + "\n".join(errors), pytrace=False)
    if None in counts:
        pytest.fail(f"{_rel(nb_path)}: {counts.count(None)} of {len(counts)} code cells were never executed; run `{fix}`",
                    pytrace=False)
    if counts != sorted(counts):
        pytest.fail(f"{_rel(nb_path)}: cells executed out of order {counts}; run `{fix}`", pytrace=False)


# ------------------------------------------------------------ non-default parameters
def parameters_cell(nb: dict) -> dict[str, object]:
    """Names assigned in the cell tagged ``parameters`` -> their literal default (or None)."""
    for cell in nb["cells"]:
        if cell["cell_type"] == "code" and "parameters" in (cell.get("metadata", {}).get("tags") or []):
            out = {}
            for node in ast.parse(cell_source(cell)).body:
                if isinstance(node, ast.Assign):
                    for t in node.targets:
                        if isinstance(t, ast.Name):
                            try:
                                out[t.id] = ast.literal_eval(node.value)
                            except ValueError:
                                out[t.id] = None
            return out
    return {}


# chapter -> (parameter, the values the book discusses); the test picks a non-default one
VARIANTS = {
    "05_progressive_training": [("strategy", ["summed", "last", "progressive"])],
    "06_attention_crop": [("box_rule", ["largest", "all"]),
                          ("crop_attention", ["cumulative", "per_layer", "rollout", "last"])],
}

#: chapter -> parameters that keep its variant run short: a changed box rule trains chapter 6's run
#: live (no recording has it), and the parameter, not the schedule, is what the test varies
QUICK = {"06_attention_crop": {"epochs": 2}}


def _variant(nb_path):
    nb = load_nb(nb_path)
    if is_placeholder(nb):
        pytest.skip(f"{nb_path.name} is still a placeholder")
    params = parameters_cell(nb)
    if not params:
        pytest.skip(f"{nb_path.name} has no cell tagged `parameters`")
    for name, values in VARIANTS[nb_path.stem]:
        if name in params:
            value = next(v for v in values if v != params[name])
            return name, value
    pytest.skip(f"{nb_path.name}: its parameters cell has none of "
                f"{[n for n, _ in VARIANTS[nb_path.stem]]} (has {sorted(params)})")


@pytest.mark.slow
@pytest.mark.parametrize("stem", sorted(VARIANTS))
def test_chapter_runs_with_other_parameters(stem, tmp_path):
    nbs = [p for p in CHAPTERS if p.stem == stem]
    if not nbs:
        pytest.skip(f"notebooks/{stem}.ipynb is not in _toc.yml")
    nb_path = nbs[0]
    name, value = _variant(nb_path)
    out = tmp_path / nb_path.name
    # papermill, cwd = notebooks/ (as in the book); the output goes to tmp_path only
    seconds = fgnb.book.execute(nb_path, parameters={name: value, **QUICK.get(stem, {})}, output=str(out), timeout=900)
    print(f"\n[papermill] {nb_path.name} with {name}={value!r}: {seconds:.1f} s -> {out}")
    nb = load_nb(out)
    injected = [c for c in nb["cells"] if "injected-parameters" in (c.get("metadata", {}).get("tags") or [])]
    assert injected and f"{name} = {value!r}".replace("'", '"') in cell_source(injected[0]).replace("'", '"'), \
        "papermill did not inject the parameter"
    errors = [o for c in nb["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, errors
