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
    "2.5 times": "(4 + 5 + 6) / 6 for targets 3, 4, 5 of 6 blocks: arithmetic, derived in chapter 5",
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


def test_notation_check_catches_old_spellings():
    old = ["$\\mathrm{LOSS}_N$", "$z_i = E x_i$", "$P_i = \\prod_h a^h_i$", "$K = (S/p)^2$", "$c_n$", "$3 \\times H \\times W$"]
    for m in old:
        assert any(re.search(p, m) for p in FORBIDDEN_IN_MATH), m
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
