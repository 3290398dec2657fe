"""The chapters' prose: a reader's first screen, no stale numbers, one notation.

* **Opening.** Every chapter starts with markdown: its title, a paragraph of motivation and
  its learning goals, all above the first code cell; the chapter's set-up cells (Colab
  install, ``parameters``, imports) are collapsed or hidden in the HTML. Every chapter ends
  with a summary and further reading.
* **Numbers that cannot go stale.** A measured number in a chapter's prose must come from
  the cell that computes it, through MyST-NB's ``glue`` (``{glue:text}`key:.1%```). The test
  strips code, maths and glue roles from the markdown cells and fails on any
  measured-looking number left (a percentage, a decimal, a number of seconds, minutes,
  points or times) unless it is a stated constant on :data:`ALLOWED`.
* **One notation.** The symbols of ``book/notation.md`` are the ones the chapters' formulas
  use (:data:`FORBIDDEN_IN_MATH` lists the old spellings).
"""
from __future__ import annotations

import re

import pytest

from conftest import CHAPTERS, ROOT, cell_source, is_placeholder, load_nb

# Chapters not yet held to the convention (a chapter leaves this set once it follows it;
# chapter 7 did in branch ch7). Empty: every chapter is checked.
NOT_YET: set[str] = set()

# ------------------------------------------------------------------ text without code/maths
# code fences (```python, ```, ```{code-cell}); directive fences (```{note}) hold prose and stay
_FENCE = re.compile(r"^(```+|~~~+)[ \t]*(?:[\w+-]*|\{code[\w-]*\}[^\n]*)[ \t]*\n.*?^\1[ \t]*$", re.S | re.M)
_DMATH = re.compile(r"\$\$.*?\$\$", re.S)
_MATH = re.compile(r"(?<!\\)\$[^$\n]+?(?<!\\)\$")
_ROLE = re.compile(r"\{[\w:.-]+\}`[^`]*`")            # {glue:text}`k:.1f`, {doc}`x`, {cite:p}`y`
_CODE = re.compile(r"`[^`\n]*`")
_DIRECTIVE = re.compile(r"^\s*(:::+|```+)\{[^}]*\}.*$|^\s*:[\w-]+:.*$", re.M)
_LINK = re.compile(r"\]\([^)]*\)")


def prose(markdown: str) -> str:
    """The words a reader reads as text: no fenced code, maths, roles, inline code, options."""
    for pat in (_FENCE, _DMATH, _ROLE, _MATH, _CODE, _DIRECTIVE, _LINK):
        markdown = pat.sub(" ", markdown)
    return markdown


# ------------------------------------------------------------------ measured-looking numbers
_NUM = r"(?<![\w.\-/])[-+−]?\d+(?:[.,]\d+)*(?:\s*[-–]\s*\d+(?:[.,]\d+)*)?"    # 3, 49.6, -1.0, 46-50
MEASURED = re.compile(
    rf"{_NUM}\s*%"                                                    # 49.6 %, 3%
    rf"|{_NUM}\s*(?:ms|s|min|minutes?|seconds?|hours?|points?|epochs?|seeds?)\b"  # 38 s, 1.0 point
    r"|\b(?:two|three|four|five|a few|several)\s+(?:percentage\s+)?points?\b"   # two points
    rf"|{_NUM}\s*(?:x|×|times)(?!\s*\d)(?=\W)"                        # 2.5 times, 4 x (not 3 x 3)
    rf"|(?<![\w.\-/])\d+\.\d+(?![\w.])"                               # a bare decimal: 0.94
)

#: Stated constants: numbers of the method, the data or the recipe, not measured here.
#: Each entry: the exact match -> why it is a constant.
ALLOWED = {
    "10 %": "a setting: the validation share of CUBDataset (ch. 1), the top-10 % threshold of an exercise (ch. 4)",
    "1.2": "RAMS-Trans's threshold scale, a constant of that paper",
    "1.2 x": "RAMS-Trans's threshold scale",
    "1.1": "CUB archive size in GB (a property of the download)",
    "1.5 x": "a threshold scale the chapters try (a setting, not a result)",
    "4 x": "source_size default: 4 x the input side",
    "2.5 times": "(4 + 5 + 6) / 6 for target layers 4, 5, 6 of 6: arithmetic, derived in chapter 5",
    "1.5 points": "the target half-width of the ablation's intervals (a goal, set before the runs)",
    "5 points": "the rule for the CPU profile's backbone (issue 12): the plain ViT becomes the default within 5 points of the hybrid, set before the runs",
    "0.5-2 points": "how much lower users of the published code bases report reproducing them (cited)",
}


def measured_numbers(markdown: str) -> list[str]:
    hits = (re.sub(r"\s+", " ", m.group(0).strip()) for m in MEASURED.finditer(prose(markdown)))
    return [h for h in hits if h not in ALLOWED]


def _chapters():
    return [p for p in CHAPTERS if p.stem not in NOT_YET]


def test_number_scan_catches_a_typed_number():
    """The scan itself: typed numbers are found, glued/maths/code ones are not."""
    typed = "The crop gains 1.0 point; boxes cover 19 % of the image, training took 38 s."
    assert measured_numbers(typed) == ["1.0 point", "19 %", "38 s"]
    ok = ("Boxes cover {glue:text}`box_area:.0%` of the image; $p = 8$ and $0.94 < 1$; "
          "`lr=3e-4`,\n```python\nx = 0.25\n```\na 3 x 3 grid, RAMS-Trans uses 1.2 x the mean.")
    assert measured_numbers(ok) == []


@pytest.mark.parametrize("nb_path", _chapters(), ids=lambda p: p.stem)
def test_measured_numbers_in_prose_are_glued(nb_path):
    nb = load_nb(nb_path)
    if is_placeholder(nb):
        pytest.skip("placeholder")
    found = []
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "markdown":
            continue
        for hit in measured_numbers(cell_source(cell)):
            found.append(f"cell {i}: {hit!r}")
    assert not found, (
        f"{nb_path.name}: numbers typed into the prose (glue them from the cell that computes "
        "them with `from myst_nb import glue; glue('key', value, display=False)` and "
        "{glue:text}`key:.1f`, write a derived constant as maths, or add a stated constant to "
        "ALLOWED with its reason):\n  " + "\n  ".join(found))


@pytest.mark.parametrize("nb_path", _chapters(), ids=lambda p: p.stem)
def test_glue_keys_are_defined(nb_path):
    """Every {glue:...}`key` in the prose is glued by an executed code cell of the same chapter."""
    nb = load_nb(nb_path)
    text = "\n".join(cell_source(c) for c in nb["cells"] if c["cell_type"] == "markdown")
    keys = set(re.findall(r"\{glue(?::\w+)?\}`([\w.-]+)", text))
    keys |= set(re.findall(r"^[`:]{3,}\{glue(?::\w+)?\}\s+([\w.-]+)", text, re.M))
    glued = {o.get("metadata", {}).get("scrapbook", {}).get("name")
             for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])}
    missing = sorted(keys - glued)
    assert not missing, (f"{nb_path.name}: glue keys used in the text but not in the committed outputs "
                         f"(glue them, then `python -m fgnb.book execute`): {missing}")


# ------------------------------------------------------------------ opening and closing
_HIDDEN = {"hide-input", "remove-input", "remove-cell", "hide-cell"}


@pytest.mark.parametrize("nb_path", _chapters(), ids=lambda p: p.stem)
def test_chapter_opens_with_title_motivation_and_goals(nb_path):
    nb = load_nb(nb_path)
    cells = nb["cells"]
    first_code = next(i for i, c in enumerate(cells) if c["cell_type"] == "code")
    opening = "\n".join(cell_source(c) for c in cells[:first_code])
    assert opening.lstrip().startswith("# "), f"{nb_path.name}: the first cell must be the title"
    paras = [p for p in re.split(r"\n\s*\n", opening) if p.strip() and not p.lstrip().startswith(("#", "*", "-", "|"))]
    assert paras, f"{nb_path.name}: no motivation paragraph above the first code cell"
    assert re.search(r"^#+\s*Learning goals", opening, re.M), \
        f"{nb_path.name}: the learning goals must come before the first code cell"
    # set-up cells (install, parameters, imports) are collapsed or hidden in the HTML
    for c in cells[first_code:]:
        if c["cell_type"] == "markdown":
            break
        tags = set(c.get("metadata", {}).get("tags") or [])
        assert tags & _HIDDEN, (f"{nb_path.name}: set-up cell {cell_source(c)[:40]!r}... before the first "
                                "text section is neither collapsed (hide-input) nor removed (remove-input)")


@pytest.mark.parametrize("nb_path", _chapters(), ids=lambda p: p.stem)
def test_chapter_states_its_measured_run_time_at_its_top(nb_path):
    """The title cell pastes ``run_time``, glued from the timing file for this chapter's own name."""
    cells = load_nb(nb_path)["cells"]
    assert "**Run time:** {glue:text}`run_time`" in cell_source(cells[0]), \
        f"{nb_path.name}: the title cell must state the chapter's run time (glued)"
    glues = [c for c in cells if c["cell_type"] == "code" and "run_time(" in cell_source(c)]
    assert any(f'glue("run_time", fgnb.book.run_time("{nb_path.stem}"))' in cell_source(c) for c in glues), \
        f"{nb_path.name}: no cell glues run_time from fgnb.book.run_time({nb_path.stem!r})"


def test_run_time_reads_the_timing_file_and_never_invents_a_number(tmp_path, monkeypatch):
    import json

    import fgnb.book
    import fgnb.results

    timing = {"date": "2026-12-06T13:00:00Z", "commit": "abcdef123456", "machine": {"cpu_count": 2},
              "chapters": {"05_progressive_training": 21.4}}
    (tmp_path / "book_time.json").write_text(json.dumps(timing))

    def find(name):  # the results folder holds only the files written here
        path = tmp_path / name
        if not path.exists():
            raise FileNotFoundError(name)
        return path

    monkeypatch.setattr(fgnb.results, "find_results", find)
    text = fgnb.book.run_time("05_progressive_training")
    assert text == "21 s on a 2-core CPU (book build of 2026-12-06, commit abcdef1); not yet timed on a GPU"
    assert fgnb.book.run_time("06_attention_crop").startswith("not in the last timing")
    # the GPU's seconds come from bash bench/gpu_check.sh --chapters (chapters_cuda.json), a failed chapter's never
    gpu = {"kind": "gpu_chapters", "started": "2026-12-07T09:00:00Z", "env": {"name": "NVIDIA H100 80GB HBM3"},
           "chapters": {"05_progressive_training": {"seconds": 7.6, "errors": []},
                        "06_attention_crop": {"seconds": 3.0, "errors": ["RuntimeError: CUDA error"]},
                        "07_full_training_gpu": {"skipped": "out of time"}}}
    (tmp_path / "chapters_cuda.json").write_text(json.dumps(gpu))
    assert fgnb.book.run_time("05_progressive_training").endswith(
        "; 8 s on a GPU (NVIDIA H100 80GB HBM3, device check of 2026-12-07)")
    assert fgnb.book.run_time("06_attention_crop").endswith("; failed on a GPU (device check of 2026-12-07: not timed)")
    assert fgnb.book.run_time("07_full_training_gpu").endswith("; not yet timed on a GPU")
    (tmp_path / "book_time.json").unlink()
    assert fgnb.book.run_time("05_progressive_training").startswith("not yet timed on a CPU")


@pytest.mark.parametrize("nb_path", _chapters(), ids=lambda p: p.stem)
def test_chapter_ends_with_summary_and_further_reading(nb_path):
    text = "\n".join(cell_source(c) for c in load_nb(nb_path)["cells"] if c["cell_type"] == "markdown")
    assert re.search(r"^#+\s*Summary", text, re.M) and "you can now" in text.lower(), \
        f"{nb_path.name}: no '## Summary' section ('you can now ...')"
    m = re.search(r"^#+\s*Further reading\s*\n(.*?)(?=^#|\Z)", text, re.M | re.S)
    assert m, f"{nb_path.name}: no '## Further reading' section"
    items = [ln for ln in m.group(1).splitlines() if ln.lstrip().startswith(("*", "-", "1", "2", "3"))]
    assert 2 <= len(items) <= 5, f"{nb_path.name}: further reading should list 2-5 items, has {len(items)}"


# ------------------------------------------------------------------ notation
#: old spellings that book/notation.md no longer uses, in the chapters' maths
FORBIDDEN_IN_MATH = {
    r"\\mathrm\{LOSS\}": "write the loss of target layer r as \\ell_r",
    r"(?<![A-Za-z\\])z_[ij1-9K]": "patch vectors are p_i (notation.md)",
    r"(?<![A-Za-z\\])P_[ijk]": "the head product is \\Pi_i (P is the patch side)",
    r"/p\b|\bp\^2": "the patch side is P (p_i are the patch vectors)",
    r"\bc_n\b": "the CLS vector after layer l is c_l",
    r"\bH\s*\\times\s*W\b|\bW\s*\\times\s*H\b": "the image is h x w, H is the number of heads",
    r"\bR\s*=\s*\\hat|\bP\s*=\s*\\prod": "R is the number of target layers and P the patch side: the rollout "
                                        "matrix is \\mathcal{A}, the head product \\Pi",
}


def _maths(markdown: str) -> list[str]:
    markdown = _FENCE.sub(" ", markdown)
    out = _DMATH.findall(markdown)
    out += _MATH.findall(_DMATH.sub(" ", markdown))
    return out


def _notation_symbols() -> dict[str, str]:
    """Symbol (the maths of the first column of notation.md's first table) -> meaning."""
    text = (ROOT / "book" / "notation.md").read_text(encoding="utf-8")
    rows = {}
    for line in text.splitlines():
        cols = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cols) >= 3 and cols[0].startswith("$"):
            rows[cols[0].strip("$").strip()] = cols[1]
    return rows


#: old spellings in the chapters' code cells (names the reader sees: variables, printed labels, figure titles)
FORBIDDEN_IN_CODE = {
    r"^\s*P\s*=\s*(?:fgnb\.book\.)?profile\(": "the run profile is `opts` (P is the patch side)",
    r"LOSS_": "the loss of target r is ell_r in formulas, 'loss r' in printed labels",
    r"\(0-based\)": "layers, heads and targets are counted from 1 wherever a reader sees them",
    r"f\"[^\"\n]*\b(?:block|head|layer)s? \{(?![^}]*\+ 1\b)[^}]*\}": "labels count layers and heads from 1 "
                                                                    "(f'layer {l + 1}', f'head {h + 1}')",
}
#: chapters left out of the code check, with the reason (each is a follow-up)
CODE_NOTATION_EXEMPT: dict[str, str] = {}  # chapter stem -> why its code may depart from notation.md (none now)


def test_notation_check_catches_old_spellings():
    old = ["$\\mathrm{LOSS}_N$", "$z_i = E x_i$", "$P_i = \\prod_h a^h_i$", "$K = (S/p)^2$", "$c_n$", "$3 \\times H \\times W$"]
    for m in old:
        assert any(re.search(p, m) for p in FORBIDDEN_IN_MATH), m
    assert any(re.search(p, "$R = \\hat A_L \\cdots \\hat A_1$") for p in FORBIDDEN_IN_MATH)
    for line in ['P = fgnb.book.profile(profile, data_root)', 'print(f"LOSS_{r + 1}")', 'ax.set_title(f"head {h}")',
                 'print(f"blocks {model.target_layers}")']:
        assert any(re.search(p, line, re.M) for p in FORBIDDEN_IN_CODE), line
    for line in ['opts = fgnb.book.profile(profile, data_root)', 'ax.set_title(f"head {h + 1}")', 'P = model.patch_size',
                 'print(f"layer {LAYERS[r] + 1}")']:
        assert not any(re.search(p, line, re.M) for p in FORBIDDEN_IN_CODE), line
    new = ["$\\ell_r$", "$p_i = E x_i + b$", "$\\Pi_i = \\prod_h a^h_i$", "$K = (h/P)(w/P)$", "$c_l$", "$h \\times w$"]
    for m in new:
        assert not any(re.search(p, m) for p in FORBIDDEN_IN_MATH), m


def test_notation_table_defines_each_symbol_once():
    rows = _notation_symbols()
    for sym in ("L", "N", "K", "H", "R", "P", "D"):
        assert sym in rows, f"notation.md defines no ${sym}$"
    # N is tokens (not layers), H is heads (not the image height), p_i are patch vectors
    assert "token" in rows["N"].lower() and "layer" not in rows["N"].lower()
    assert "head" in rows["H"].lower()
    assert "layer" in rows["L"].lower()
    assert "patch" in rows["K"].lower()


@pytest.mark.parametrize("nb_path", _chapters(), ids=lambda p: p.stem)
def test_chapters_use_the_notation(nb_path):
    nb = load_nb(nb_path)
    bad = []
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "markdown":
            continue
        for m in _maths(cell_source(cell)):
            for old, why in FORBIDDEN_IN_MATH.items():
                if re.search(old, m):
                    bad.append(f"cell {i}: {m.strip()[:60]!r}: {why}")
    assert not bad, f"{nb_path.name} departs from book/notation.md:\n  " + "\n  ".join(bad)


@pytest.mark.parametrize("nb_path", _chapters(), ids=lambda p: p.stem)
def test_chapter_code_uses_the_notation(nb_path):
    """What a reader sees of the code (names, printed labels, figure titles) follows notation.md."""
    if nb_path.stem in CODE_NOTATION_EXEMPT:
        pytest.skip(CODE_NOTATION_EXEMPT[nb_path.stem])
    bad = [f"cell {i}: {why}" for i, c in enumerate(load_nb(nb_path)["cells"]) if c["cell_type"] == "code"
           for pat, why in FORBIDDEN_IN_CODE.items() if re.search(pat, cell_source(c), re.M)]
    assert not bad, f"{nb_path.name} departs from book/notation.md:\n  " + "\n  ".join(bad)


# ------------------------------------------------------------------ no bare values under cells
_GLUE_CALL = re.compile(r"^\s*(?:fgnb\.book\.)?(?:glue|g)\(.*\)\s*$")


def bare_values(nb: dict) -> list[str]:
    """Cells that show a bare value under them: a committed ``execute_result`` that is plain text
    only (a number or a repr, not a table or a figure), or a cell whose last line is a glue call
    without ``;`` (``glue`` returns its value, so IPython prints it)."""
    found = []
    for i, c in enumerate(nb["cells"]):
        if c["cell_type"] != "code" or {"remove-output", "remove-cell"} & set(c.get("metadata", {}).get("tags") or []):
            continue
        lines = [ln for ln in cell_source(c).rstrip().splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
        if lines and not lines[-1].startswith((" ", "\t")) and _GLUE_CALL.match(lines[-1].split("  #")[0]):
            found.append(f"cell {i}: ends with a glue call that prints its value (end it with ';')")
        for o in c.get("outputs", []):
            if o.get("output_type") == "execute_result" and set(o.get("data", {})) <= {"text/plain"}:
                found.append(f"cell {i}: a bare value under the cell: {o['data'].get('text/plain')!r:.40}")
    return found


def test_bare_value_check_catches_one():
    cell = {"cell_type": "code", "metadata": {}, "source": "x = 1\nfgnb.book.glue('x', x)\n",
            "outputs": [{"output_type": "execute_result", "data": {"text/plain": "1"}}]}
    assert len(bare_values({"cells": [cell]})) == 2
    cell.update(source="x = 1\nfgnb.book.glue('x', x);\n", outputs=[])
    assert bare_values({"cells": [cell]}) == []


@pytest.mark.parametrize("nb_path", _chapters(), ids=lambda p: p.stem)
def test_no_bare_values_under_cells(nb_path):
    found = bare_values(load_nb(nb_path))
    assert not found, f"{nb_path.name}:\n  " + "\n  ".join(found)


# ------------------------------------------------------------------ the model each chapter uses
#: chapters without the banner yet, with the reason
BANNER_EXEMPT: dict[str, str] = {}


@pytest.mark.parametrize("nb_path", _chapters(), ids=lambda p: p.stem)
def test_chapter_says_which_model_it_uses(nb_path):
    """A one-line "Model used here" banner above the first code cell: the book's chapters use a
    plain ViT, a random wider one and the hybrid, and a reader must not have to guess which."""
    if nb_path.stem in BANNER_EXEMPT:
        pytest.skip(BANNER_EXEMPT[nb_path.stem])
    cells = load_nb(nb_path)["cells"]
    first_code = next(i for i, c in enumerate(cells) if c["cell_type"] == "code")
    opening = "\n".join(cell_source(c) for c in cells[:first_code])
    assert re.search(r"^> \*\*Model used here:\*\* \S", opening, re.M), f"{nb_path.name}: no 'Model used here' banner"


# ------------------------------------------------------------------ chapter 8: the verdict first
def test_results_chapter_opens_with_the_verdict_and_shows_one_table_and_one_figure():
    """Chapter 8 opens with the verdict, renders at most one table and one figure before its
    summary (the rest is the appendix page's), and says which rows survive Holm's correction."""
    nb = load_nb(ROOT / "notebooks" / "08_results_ablations.ipynb")
    cells = nb["cells"]
    assert "{important} The verdict" in cell_source(cells[0])
    end = next(i for i, c in enumerate(cells) if c["cell_type"] == "markdown" and "## Summary" in cell_source(c))
    outputs = [o for c in cells[:end] if c["cell_type"] == "code" for o in c.get("outputs", [])
               if o.get("output_type") in ("display_data", "execute_result", "stream")]
    tables = [o for o in outputs if "|---" in "".join(o.get("data", {}).get("text/markdown", ""))]
    figures = [o for o in outputs if "image/png" in o.get("data", {})]
    printed = [o for o in outputs if o.get("output_type") == "stream" and o.get("name") == "stdout"]
    assert len(tables) <= 1 and len(figures) <= 1 and not printed, (len(tables), len(figures), len(printed))
    assert len("".join(tables[0]["data"]["text/markdown"]).strip().splitlines()) <= 2 + 6  # six rows at most
    text = "\n".join(cell_source(c) for c in cells if c["cell_type"] == "markdown")
    assert "Holm" in text and "{glue:text}`v_survivors" in text
    assert "appendix_full_results" in text
