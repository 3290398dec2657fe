"""The built book (static HTML checks): pages, figures, widget state, links, offline JS.

The book is built ONCE per pytest run by the ``built_book`` fixture (tests/conftest.py),
with ``execute_notebooks: 'off'``: it renders the outputs committed in the chapters,
which tests/test_notebooks.py proves fresh and nbval proves reproducible. The main
workflow (``jupyter-book build . -W``) executes every chapter instead (``cache``: all of them
on a fresh clone, then only those whose code changed).
"""
from __future__ import annotations

import json
import re

import pytest

from conftest import CHAPTERS, ROOT, TOC_ENTRIES, broken_refs, colab_url, is_placeholder, load_nb, static_refs

pytestmark = pytest.mark.slow

WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
IMAGE_MIMES = ("image/png", "image/jpeg", "image/svg+xml", "image/gif")
CDN = re.compile(r"https?://[^\"'\s]*(mathjax|require|html-manager|embed-amd|jupyter-widgets)", re.I)


def _soup(path):
    from bs4 import BeautifulSoup

    return BeautifulSoup(path.read_text(encoding="utf-8", errors="replace"), "html.parser")


def _rel(book, page):
    return page.relative_to(book.html).as_posix()


def _cell_tags(cell):
    return set(cell.get("metadata", {}).get("tags", []) or [])


def _expected_images(nb) -> int:
    """Image outputs the page must show (cells tagged remove-output/remove-cell excluded)."""
    n = 0
    for cell in nb["cells"]:
        if cell["cell_type"] != "code" or _cell_tags(cell) & {"remove-output", "remove-cell"}:
            continue
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if WIDGET_VIEW in data:
                continue  # rendered by the widget manager from the saved state
            if out.get("output_type") in ("display_data", "execute_result") and any(m in data for m in IMAGE_MIMES):
                n += 1
    return n


def _widget_view_ids(nb) -> set[str]:
    ids = set()
    for cell in nb["cells"]:
        if cell["cell_type"] != "code" or _cell_tags(cell) & {"remove-output", "remove-cell"}:
            continue
        for out in cell.get("outputs", []):
            view = out.get("data", {}).get(WIDGET_VIEW)
            if view:
                ids.add(view["model_id"])
    return ids


def test_build_log_clean(built_book):
    """-W --keep-going passed; also no 'WARNING'/'ERROR' lines slipped into the log."""
    bad = [line for line in built_book.log.splitlines()
           if re.search(r"\b(WARNING|ERROR|CRITICAL)\b", line) and "Kernel is running over TCP" not in line]
    assert not bad, "book build log has warnings:\n" + "\n".join(bad[:30])


def test_every_toc_page_present(built_book):
    missing = [e for e in TOC_ENTRIES if not built_book.page(e).is_file()]
    assert not missing, f"no HTML page for these _toc.yml entries: {missing}"
    assert (built_book.html / "index.html").is_file()


@pytest.mark.parametrize("nb_path", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_page(built_book, nb_path):
    """The chapter's page exists, every image output is embedded and resolves, widgets have state."""
    entry = nb_path.relative_to(ROOT).with_suffix("").as_posix()
    page = built_book.page(entry)
    assert page.is_file(), f"chapter page missing: {page}"
    soup = _soup(page)
    assert soup.find("h1"), f"{_rel(built_book, page)}: no title"
    nb = load_nb(nb_path)

    # figures: every image output is on the page, and every <img> resolves
    imgs = [img.get("src", "") for img in soup.select(".cell_output img")]
    want = _expected_images(nb)
    assert len(imgs) >= want, (f"{entry}: the notebook has {want} image outputs, "
                               f"the page shows {len(imgs)} in cell outputs")
    for src in imgs:
        assert src.startswith("data:image/") or (page.parent / src.split("?")[0]).is_file(), \
            f"{entry}: <img src={src[:80]!r}> does not resolve"

    # widgets: every displayed widget has its model in the page's saved state
    views = _widget_view_ids(nb)
    states = soup.find_all("script", type=WIDGET_STATE)
    if not views:
        return
    assert states, (f"{entry}: the notebook displays {len(views)} widget(s) but the page has no "
                    f"<script type={WIDGET_STATE}> (execute it with `python -m fgnb.book execute`, "
                    "which saves widget state)")
    models = {}
    for s in states:
        models.update(json.loads(s.string or "{}").get("state", {}))
    missing = views - set(models)
    assert not missing, f"{entry}: widget views without saved state: {sorted(missing)}"
    assert soup.find_all("script", type=WIDGET_VIEW), f"{entry}: widget views not rendered"


@pytest.mark.parametrize("number", ["03", "04"])
def test_explorer_chapters_have_widget_state(built_book, number):
    """Chapters 3 and 4 carry explorers: if they display widgets, the state is on the page."""
    nbs = [p for p in CHAPTERS if p.name.startswith(number)]
    assert nbs, f"no chapter {number} in _toc.yml"
    nb = load_nb(nbs[0])
    if is_placeholder(nb):
        pytest.skip(f"{nbs[0].name} is still a placeholder")
    if not _widget_view_ids(nb):
        pytest.skip(f"{nbs[0].name} displays no widgets")
    page = built_book.page(nbs[0].relative_to(ROOT).with_suffix("").as_posix())
    assert _soup(page).find_all("script", type=WIDGET_STATE), f"{page.name}: no saved widget state"


def test_no_broken_internal_links(built_book):
    """Every relative a[href] (with its #anchor), img[src], script[src], link[href] resolves."""
    problems = []
    for page in built_book.pages():
        for why in broken_refs(page, built_book.html, static_refs(page)):
            problems.append(f"{_rel(built_book, page)}: {why}")
    assert not problems, f"{len(problems)} broken internal references:\n" + "\n".join(problems[:50])


def test_colab_button_on_every_chapter(built_book):
    problems = []
    for nb_path in CHAPTERS:
        page = built_book.page(nb_path.relative_to(ROOT).with_suffix("").as_posix())
        hrefs = [a["href"] for a in _soup(page).find_all("a", href=True) if "colab" in a["href"]]
        if colab_url(nb_path) not in hrefs:
            problems.append(f"{page.name}: want {colab_url(nb_path)}, found {hrefs}")
    assert not problems, "\n".join(problems)


def test_javascript_is_vendored(built_book):
    """MathJax, require.js and the widget bundle load from _static/, nothing from a CDN."""
    problems = []
    math_pages = widget_pages = 0
    for page in built_book.pages():
        rel = _rel(built_book, page)
        soup = _soup(page)
        srcs = [s["src"] for s in soup.find_all("script", src=True)]
        for src in srcs:
            if "://" in src or src.startswith("//"):
                problems.append(f"{rel}: external <script src={src}>")
        for s in soup.find_all("script", src=False):
            if s.get("type") in (WIDGET_STATE, WIDGET_VIEW):
                continue
            m = CDN.search(s.string or "")
            if m:
                problems.append(f"{rel}: inline script points at a CDN: {m.group(0)}")
        names = [src.split("?")[0].rsplit("/", 1)[-1] for src in srcs]
        if soup.select(".math") or "mathjax" in " ".join(srcs).lower():
            math_pages += 1
            mj = [src for src in srcs if "mathjax/startup.js" in src]
            if not mj:
                problems.append(f"{rel}: has maths but does not load _static/mathjax/startup.js")
        if soup.find_all("script", type=WIDGET_STATE):
            widget_pages += 1
            for name in ("mathjax2-hub-shim.js", "require.js", "embed-amd.js"):
                if name not in names:
                    problems.append(f"{rel}: has widget state but does not load _static/{name}")
            order = [names.index(n) for n in ("mathjax2-hub-shim.js", "require.js", "embed-amd.js") if n in names]
            if order != sorted(order):
                problems.append(f"{rel}: widget scripts out of order: {names}")
    assert not problems, "\n".join(problems)
    print(f"[book] pages with maths: {math_pages}, with widget state: {widget_pages}")
    assert math_pages > 0, "no page loads MathJax (book/notation.md has maths)"
