"""Shared fixtures and helpers for the book tests.

* ``TOC_ENTRIES`` / ``CHAPTERS``: what ``_toc.yml`` lists, resolved to files.
* ``built_book`` (session): builds the book ONCE per pytest run with
  ``execute_notebooks: 'off'``, i.e. it renders the outputs committed in the chapters
  (``tests/test_notebooks.py`` proves they are fresh, nbval proves they reproduce).
  ``tests/test_book_build.py`` and ``tests/test_browser.py`` share it.
  Set ``FGNB_BOOK_HTML=<folder with index.html>`` to test an existing build instead.
* ``html_checks``: static checks of built pages (links, images), used by both files.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
import subprocess
import sys
import time
import urllib.parse

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))
TOC = yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf-8"))

# `python -m pytest tests notebooks --nbval-lax`: nbval only collects *.ipynb, and
# notebooks/_colab_install.py does not match python_files (test_*.py), so it is never
# collected. This conftest only covers tests/; nothing else needs ignoring here.
collect_ignore: list[str] = []


@pytest.fixture(autouse=True)
def _load_in_the_test_process(monkeypatch, request):
    """``workers=None`` resolves to 0 loader processes inside tests: spies on the data set see
    every item in this process and tiny runs fork nothing. ``fgnb.devices.default_workers`` itself
    is tested directly, and tests marked ``real_default_workers`` get the real rule."""
    if request.node.get_closest_marker("real_default_workers") is None:
        import fgnb.devices

        monkeypatch.setattr(fgnb.devices, "default_workers", lambda *a, **k: 0)


def _toc_entries(node) -> list[str]:
    out = []
    if isinstance(node, dict):
        for key in ("root", "file"):
            if key in node:
                out.append(node[key])
        for key in ("parts", "chapters", "sections"):
            for child in node.get(key, []) or []:
                out.extend(_toc_entries(child))
    return out


def resolve(entry: str) -> pathlib.Path | None:
    for suffix in ("", ".md", ".ipynb", ".rst"):
        p = ROOT / f"{entry}{suffix}"
        if p.is_file():
            return p
    return None


TOC_ENTRIES: list[str] = _toc_entries(TOC)
#: chapter notebooks in _toc.yml order, as paths
CHAPTERS: list[pathlib.Path] = [p for p in map(resolve, TOC_ENTRIES) if p is not None and p.suffix == ".ipynb"]


def load_nb(path: pathlib.Path) -> dict:
    return json.loads(pathlib.Path(path).read_text(encoding="utf-8"))


def is_placeholder(nb: dict) -> bool:
    return bool((nb.get("metadata", {}).get("fgnb") or {}).get("placeholder"))


def cell_source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def colab_url(nb_path: pathlib.Path) -> str:
    """The Colab launch URL JB1 builds from _config.yml's repository settings."""
    repo = CONFIG["repository"]
    org_repo = urllib.parse.urlparse(repo["url"]).path.strip("/")
    base = CONFIG.get("launch_buttons", {}).get("colab_url", "https://colab.research.google.com").rstrip("/")
    path_to_book = (repo.get("path_to_book") or "").strip("/")
    rel = nb_path.relative_to(ROOT).as_posix()
    if path_to_book:
        rel = f"{path_to_book}/{rel}"
    return f"{base}/github/{org_repo}/blob/{repo.get('branch', 'main')}/{rel}"


#: screenshots tests/test_browser.py took this run (listed at the end of the test output)
SCREENSHOTS: list[str] = []


def pytest_terminal_summary(terminalreporter):
    if SCREENSHOTS:
        terminalreporter.section("book screenshots")
        for path in SCREENSHOTS:
            terminalreporter.write_line(path)


# ---------------------------------------------------------------- the book, built once
@dataclasses.dataclass
class BuiltBook:
    html: pathlib.Path          # the folder with index.html
    log: str                    # the build's output
    seconds: float

    def page(self, entry: str) -> pathlib.Path:
        """Built page of a _toc.yml entry ("notebooks/03_cls_attention" -> .../03_cls_attention.html)."""
        return self.html / f"{entry}.html"

    def pages(self) -> list[pathlib.Path]:
        """Every HTML page of the book (Sphinx's own _static helpers excluded)."""
        return sorted(p for p in self.html.rglob("*.html")
                      if not p.relative_to(self.html).parts[0].startswith("_"))


def book_config_offline(dest: pathlib.Path) -> pathlib.Path:
    """_config.yml with execution off: render the committed (freshness-checked) outputs."""
    cfg = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))
    cfg.setdefault("execute", {})["execute_notebooks"] = "off"
    path = dest / "_config.render-committed.yml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return path


def build_book(out: pathlib.Path) -> BuiltBook:
    """jupyter-book build . --config <execution off> --path-output <out> -W --keep-going.

    Relative paths in the config (bibtex_bibfiles, html_static_path) resolve against the
    book's source folder (Sphinx runs without a conf.py), so the config may live in ``out``.
    """
    out.mkdir(parents=True, exist_ok=True)
    config = book_config_offline(out)
    cmd = [sys.executable, "-c", "from jupyter_book.cli.main import main; main()",
           "build", str(ROOT), "--config", str(config), "--path-output", str(out),
           "-W", "--keep-going", "--all"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    seconds = time.perf_counter() - t0
    log = proc.stdout + proc.stderr
    html = out / "_build" / "html"
    if proc.returncode != 0 or not (html / "index.html").is_file():
        tail = "\n".join(log.splitlines()[-60:])
        pytest.fail(f"book build failed (rc={proc.returncode}): {' '.join(cmd)}\n{tail}", pytrace=False)
    return BuiltBook(html=html, log=log, seconds=seconds)


@pytest.fixture(scope="session")
def built_book(tmp_path_factory) -> BuiltBook:
    given = os.environ.get("FGNB_BOOK_HTML")
    if given:
        html = pathlib.Path(given).resolve()
        assert (html / "index.html").is_file(), f"FGNB_BOOK_HTML={given} has no index.html"
        return BuiltBook(html=html, log="(FGNB_BOOK_HTML: existing build)", seconds=0.0)
    book = build_book(tmp_path_factory.mktemp("book"))
    print(f"\n[book] built in {book.seconds:.1f} s: {book.html}/index.html")
    return book


# ---------------------------------------------------------------- static HTML checks
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def is_local_ref(ref: str) -> bool:
    """A relative reference into the book (not http:, mailto:, data:, javascript:, //host)."""
    return bool(ref) and not _SCHEME.match(ref) and not ref.startswith("//")


_ids_cache: dict[pathlib.Path, set[str]] = {}


def page_ids(path: pathlib.Path) -> set[str]:
    """Every id (and a[name]) in an HTML file: the anchors a link may point at."""
    path = path.resolve()
    if path not in _ids_cache:
        from bs4 import BeautifulSoup

        soup = BeautifulSoup(path.read_text(encoding="utf-8", errors="replace"), "html.parser")
        ids = {t["id"] for t in soup.find_all(id=True)}
        ids |= {t["name"] for t in soup.find_all("a", attrs={"name": True})}
        _ids_cache[path] = ids
    return _ids_cache[path]


def check_ref(page: pathlib.Path, ref: str, root: pathlib.Path, anchors: bool = True) -> str | None:
    """None if a local reference from ``page`` resolves; else why not."""
    parsed = urllib.parse.urlsplit(ref)
    target = page if not parsed.path else (page.parent / urllib.parse.unquote(parsed.path))
    try:
        target = target.resolve()
    except OSError as e:  # pragma: no cover
        return f"{ref}: {e}"
    if root.resolve() not in target.parents and target != root.resolve():
        return f"{ref}: points outside the built book ({target})"
    if target.is_dir():
        target = target / "index.html"
    if not target.is_file():
        return f"{ref}: no such file {target.relative_to(root.resolve()) if root.resolve() in target.parents else target}"
    frag = urllib.parse.unquote(parsed.fragment)
    if anchors and frag and target.suffix == ".html" and frag not in page_ids(target):
        return f"{ref}: no id {frag!r} in {target.name}"
    return None


def broken_refs(page: pathlib.Path, root: pathlib.Path, refs: list[tuple[str, str]]) -> list[str]:
    """refs: (what, ref) pairs such as ("a[href]", "../book/setup.html#colab")."""
    out = []
    for what, ref in refs:
        if ref in ("", "#") or not is_local_ref(ref):
            continue
        why = check_ref(page, ref, root, anchors=(what == "a[href]"))
        if why:
            out.append(f"{what} {why}")
    return out


def static_refs(page: pathlib.Path) -> list[tuple[str, str]]:
    """Local references a page makes in its HTML source: a[href], img[src], script[src], link[href]."""
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(page.read_text(encoding="utf-8", errors="replace"), "html.parser")
    refs = [("a[href]", a["href"]) for a in soup.find_all("a", href=True)]
    refs += [("img[src]", t["src"]) for t in soup.find_all("img", src=True)]
    refs += [("script[src]", t["src"]) for t in soup.find_all("script", src=True)]
    refs += [("link[href]", t["href"]) for t in soup.find_all("link", href=True)]
    return refs
