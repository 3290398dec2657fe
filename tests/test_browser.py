"""The built book in a real browser (headless Chromium, network blocked), and one live explorer.

Per page (every _toc.yml page, plus genindex/search): no console errors (allow-list below),
every <img> loaded, maths typeset by the vendored MathJax, saved widget state rendered
with the saved values, no broken internal links, no request leaving the machine. Chapter
pages: the Colab launch link, and a screenshot of the first screen (_build/screenshots/).

The live test serves a small notebook with Voila on 127.0.0.1, lets the browser move an
explorer's slider (fgnb.widgets) and waits for the picture to change in the running kernel.

Chromium: Debian's package at /usr/bin/chromium (tests/setup_browser.sh installs it);
Playwright's Python package drives it (no browser download). Without it the tests skip,
unless CI=true, where they fail.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from conftest import CHAPTERS, ROOT, SCREENSHOTS, TOC_ENTRIES, broken_refs, colab_url

pytestmark = pytest.mark.slow

SHOTS = ROOT / "_build" / "screenshots"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
PAGES = [e for e in TOC_ENTRIES] + ["genindex", "search"]
CHAPTER_OF = {p.relative_to(ROOT).with_suffix("").as_posix(): p for p in CHAPTERS}
TIMEOUT_MS = 20_000

# Known, harmless messages. Anything else on the console is a failure.
ALLOWED = [
    # sphinx-book-theme 1.3 and sphinx-thebe 0.3 both inject the inline script
    # `const THEBE_JS_URL = ...` into every page; the second copy throws. Only that one
    # inline script fails; thebe is not used (no thebe launch button) and nothing else reads it.
    (re.compile(r"Identifier 'THEBE_JS_URL' has already been declared"), None),
    # pydata-sphinx-theme 0.17: on a reader's first visit localStorage has no "mode", the
    # page's inline script sets data-mode="" and the theme logs this and falls back to
    # "auto" (light/dark from the OS). Every first visit shows it; nothing breaks.
    (re.compile(r"^Got invalid theme mode: \. Resetting to auto\.$"), None),
    # The widget bundle's Font Awesome fonts are not vendored (size; book/_vendor/README.md):
    # the bundle asks for them next to the page. Widgets render; only button icons are missing.
    (re.compile(r"Failed to load resource"), re.compile(r"/@jupyter-widgets/html-manager/dist/[0-9a-f]+\.(woff2?|ttf|eot|svg)$")),
]


def _allowed(text: str, url: str | None) -> bool:
    return any(rt.search(text) and (ru is None or (url and ru.search(url.split("?")[0]))) for rt, ru in ALLOWED)


# ------------------------------------------------------------------ the browser
def _chromium() -> str:
    path = os.environ.get("FGNB_CHROMIUM", "/usr/bin/chromium")
    missing = None
    if not os.path.exists(path):
        missing = f"{path} not found; install it with `bash tests/setup_browser.sh`"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            missing = "the playwright Python package is not installed (requirements.txt)"
    if missing:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"CI=true and the browser tests cannot run: {missing}", pytrace=False)
        pytest.skip(missing)
    return path


@pytest.fixture(scope="session")
def chromium():
    path = _chromium()
    from playwright.sync_api import sync_playwright

    pw = sync_playwright().start()
    browser = pw.chromium.launch(executable_path=path, headless=True,
                                 args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
    try:
        yield browser
    finally:
        browser.close()
        pw.stop()


@pytest.fixture(scope="session")
def book_context(chromium):
    ctx = chromium.new_context(viewport={"width": 1280, "height": 800})
    ctx.set_default_timeout(TIMEOUT_MS)
    try:
        yield ctx
    finally:
        ctx.close()


# ------------------------------------------------------------------ one page, checked
@dataclasses.dataclass
class PageReport:
    page: str
    problems: list[str]
    seconds: float
    blocked: list[str]
    info: dict


_JS_IMAGES = """async () => {
  const imgs = Array.from(document.images);
  imgs.forEach(i => { if (i.loading === 'lazy') i.loading = 'eager'; });
  await Promise.all(imgs.map(i => i.complete ? null : new Promise(r => {
    i.addEventListener('load', r); i.addEventListener('error', r); setTimeout(r, 10000); })));
  return imgs.map(i => ({src: (i.getAttribute('src') || '').slice(0, 100), ok: i.complete && i.naturalWidth > 0}));
}"""

_JS_RAW_DOLLARS = """() => {
  const skip = new Set(['SCRIPT', 'STYLE', 'PRE', 'CODE', 'TEXTAREA', 'NOSCRIPT', 'MJX-CONTAINER']);
  const out = [];
  const w = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  let n;
  while ((n = w.nextNode())) {
    if (!n.nodeValue.includes('$$')) continue;
    let e = n.parentElement, bad = true;
    for (; e; e = e.parentElement) {
      if (skip.has(e.tagName) || e.classList.contains('highlight')) { bad = false; break; }
    }
    if (bad) out.push(n.nodeValue.trim().slice(0, 100));
  }
  return out;
}"""

_JS_MATH = """() => {
  const maths = Array.from(document.querySelectorAll('.math'));
  return {
    n: maths.length,
    mjx: document.querySelectorAll('mjx-container').length,
    raw: maths.filter(e => !e.querySelector('mjx-container')).map(e => e.textContent.trim().slice(0, 80)),
    errors: Array.from(document.querySelectorAll('mjx-merror')).map(e => (e.getAttribute('data-mjx-error') || e.textContent).slice(0, 80)),
    labels: Array.from(document.querySelectorAll('.jupyter-widgets .widget-label'))
      .filter(e => /\\$[^$]+\\$|\\\\\\(.+\\\\\\)/.test(e.textContent) && !e.querySelector('mjx-container'))
      .map(e => e.textContent),
  };
}"""

_JS_WIDGETS_RENDERED = """() => Array.from(document.querySelectorAll(
  'script[type="application/vnd.jupyter.widget-view+json"]'))
  .every(s => s.parentElement.querySelector('.jupyter-widgets'))"""

_JS_RENDERED_CONTROLS = """() => ({
  sliders: Array.from(document.querySelectorAll('.jupyter-widgets.widget-slider')).map(e => ({
    label: ((e.querySelector('.widget-label') || {}).textContent || '').trim(),
    value: ((e.querySelector('.widget-readout') || {}).textContent || '').trim()})),
  dropdowns: Array.from(document.querySelectorAll('.jupyter-widgets.widget-dropdown')).map(e => {
    const s = e.querySelector('select');
    return {label: ((e.querySelector('.widget-label') || {}).textContent || '').trim(),
            value: s && s.selectedIndex >= 0 ? s.options[s.selectedIndex].text.trim() : null}; }),
  text: document.body.innerText,
})"""


def _model_ref(x):
    return x[len("IPY_MODEL_"):] if isinstance(x, str) and x.startswith("IPY_MODEL_") else None


def expected_controls(state: dict, view_ids: list[str]) -> list[dict]:
    """Sliders and dropdowns reachable from the displayed views, with the value they must show."""
    out, seen, stack = [], set(), list(reversed(view_ids))
    while stack:
        mid = stack.pop()
        if mid in seen or mid not in state:
            continue
        seen.add(mid)
        m = state[mid]
        name, s = m.get("model_name", ""), m.get("state", {})
        kids = [_model_ref(c) for c in s.get("children", [])]
        for o in s.get("outputs", []) or []:  # Output widgets can hold widgets too
            v = (o.get("data") or {}).get(WIDGET_VIEW)
            if v:
                kids.append(v.get("model_id"))
        stack.extend(k for k in reversed(kids) if k)
        desc = s.get("description", "") or ""
        if name in ("IntSliderModel", "FloatSliderModel", "FloatLogSliderModel") and s.get("readout", True):
            out.append(dict(kind="slider", label=desc, value=s.get("value"), fmt=s.get("readout_format", "")))
        elif name == "SelectionSliderModel" and s.get("readout", True):
            labels, i = s.get("_options_labels", []), s.get("index")
            out.append(dict(kind="slider", label=desc, value=labels[i] if i is not None else None, fmt=None))
        elif name == "DropdownModel":
            labels, i = s.get("_options_labels", []), s.get("index")
            out.append(dict(kind="dropdown", label=desc, value=labels[i] if i is not None and i < len(labels) else None))
    return out


def _has_tex(label: str) -> bool:
    return "$" in label or "\\(" in label


def _norm(text) -> str:
    """Collapse whitespace (ipywidgets shows option labels with non-breaking spaces)."""
    return " ".join(str(text).split())


def _same_value(want, fmt, shown: str) -> bool:
    if want is None or isinstance(want, str) or fmt is None:
        return _norm(want) == _norm(shown) or (want is None and shown in ("", "None"))
    try:
        got = float(shown.replace("\u2212", "-"))
    except ValueError:
        return False
    m = re.search(r"\.(\d+)f", fmt or "")
    tol = 0.51 * 10 ** -int(m.group(1)) if m else (0.51 if fmt in ("d", "") and float(want).is_integer()
                                                   else 5e-3 * max(abs(float(want)), 1e-12))
    return abs(got - float(want)) <= tol


def check_page(ctx, path: pathlib.Path, root: pathlib.Path, colab: str | None = None,
               screenshot: pathlib.Path | None = None, timeout_ms: int = TIMEOUT_MS) -> PageReport:
    """Open one built page (file://, network blocked) and list what is wrong with it."""
    t0 = time.perf_counter()
    problems: list[str] = []
    blocked: list[str] = []
    page = ctx.new_page()

    def route(r):
        url = r.request.url
        if url.startswith(("file://", "data:", "blob:")):
            r.continue_()
        else:
            blocked.append(url)
            r.abort()

    def on_console(msg):
        if msg.type == "error" and not msg.text.startswith("Failed to load resource"):
            # (failed loads are reported below: requestfailed for files, `blocked` for the rest)
            url = (msg.location or {}).get("url")
            if not _allowed(msg.text, url):
                problems.append(f"console error: {msg.text} ({url})")

    def on_pageerror(err):
        if not _allowed(str(err), None):
            problems.append(f"uncaught exception: {err}")

    def on_failed(req):
        if req.url.startswith("file://") and not _allowed("Failed to load resource", req.url):
            problems.append(f"missing file: {req.url} ({req.failure})")

    page.route("**/*", route)
    page.on("console", on_console)
    page.on("pageerror", on_pageerror)
    page.on("requestfailed", on_failed)
    info: dict = {}
    try:
        page.goto(path.resolve().as_uri(), wait_until="load")
        # MathJax (deferred, loads its components asynchronously): wait for the first typeset
        if page.locator("script[src*='mathjax']").count():
            try:
                page.wait_for_function("() => window.MathJax && typeof window.MathJax.typesetPromise === 'function'"
                                       " && window.MathJax.startup && window.MathJax.startup.document",
                                       timeout=timeout_ms)
                page.evaluate("() => window.MathJax.startup.promise")
            except Exception as e:  # noqa: BLE001
                problems.append(f"MathJax did not start: {type(e).__name__}: {str(e).splitlines()[0]}")
        n_views = page.locator(f"script[type='{WIDGET_VIEW}']").count()
        if n_views:
            try:
                page.wait_for_function(_JS_WIDGETS_RENDERED, timeout=timeout_ms)
            except Exception:  # noqa: BLE001
                problems.append(f"widgets not rendered: {n_views} widget views on the page, not all rendered")
            page.wait_for_timeout(300)  # the widget manager typesets labels asynchronously
            page.evaluate("() => window.MathJax && window.MathJax.startup && window.MathJax.startup.promise")

        # images
        imgs = page.evaluate(_JS_IMAGES)
        info["images"] = len(imgs)
        problems += [f"image not loaded: {i['src']}" for i in imgs if not i["ok"]]

        # maths
        math = page.evaluate(_JS_MATH)
        info["math"] = math["n"]
        if math["n"] and not math["mjx"]:
            problems.append(f"maths not typeset: {math['n']} .math elements, no mjx-container")
        problems += [f"maths left as raw TeX: {t!r}" for t in math["raw"][:5]]
        problems += [f"MathJax error: {t!r}" for t in math["errors"][:5]]
        problems += [f"widget label with untypeset maths: {t!r}" for t in math["labels"][:5]]
        problems += [f"raw $$ in the page text: {t!r}" for t in page.evaluate(_JS_RAW_DOLLARS)[:5]]

        # widgets: saved state rendered with the saved values
        states = page.eval_on_selector_all(f"script[type='{WIDGET_STATE}']", "els => els.map(e => e.textContent)")
        if states:
            state = {}
            for s in states:
                state.update(json.loads(s).get("state", {}))
            views = [json.loads(t).get("model_id") for t in
                     page.eval_on_selector_all(f"script[type='{WIDGET_VIEW}']", "els => els.map(e => e.textContent)")]
            want = expected_controls(state, views)
            got = page.evaluate(_JS_RENDERED_CONTROLS)
            for marker in ("Error displaying widget", "Loading widget..."):
                if marker in got["text"]:
                    problems.append(f"widget not rendered: page shows {marker!r}")
            pools = {"slider": list(got["sliders"]), "dropdown": list(got["dropdowns"])}
            for w in want:
                pool = pools[w["kind"]]
                match = next((g for g in pool if (_has_tex(w["label"]) or _norm(g["label"]) == _norm(w["label"]))
                              and _same_value(w["value"], w.get("fmt"), g["value"])), None)
                if match is None:
                    problems.append(f"{w['kind']} {w['label']!r}: saved value {w['value']!r} not shown "
                                    f"(rendered: {[(g['label'], g['value']) for g in pool]})")
                else:
                    pool.remove(match)
            info["widgets"] = f"{len(want)} controls checked"

        # links, as the DOM has them (theme scripts add some)
        hrefs = page.eval_on_selector_all("a[href]", "els => els.map(e => e.getAttribute('href'))")
        problems += broken_refs(path, root, [("a[href]", h) for h in hrefs])

        if colab is not None and not page.locator(f"a[href='{colab}']").count():
            found = page.eval_on_selector_all("a[href*='colab']", "els => els.map(e => e.href)")
            problems.append(f"no Colab launch link {colab} (found {found})")

        if screenshot is not None:
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot))
            info["screenshot"] = str(screenshot)
    finally:
        page.close()
    problems += [f"request left the machine (blocked): {u}" for u in blocked]
    return PageReport(page=str(path), problems=problems, seconds=time.perf_counter() - t0,
                      blocked=blocked, info=info)


# ------------------------------------------------------------------ the tests
@pytest.mark.parametrize("entry", PAGES)
def test_page_in_browser(built_book, book_context, entry):
    path = built_book.html / f"{entry}.html"
    assert path.is_file(), f"{path} was not built"
    nb = CHAPTER_OF.get(entry)
    shot = SHOTS / f"{nb.stem}.png" if nb else None
    rep = check_page(book_context, path, built_book.html, colab=colab_url(nb) if nb else None, screenshot=shot)
    if shot:
        print(f"\n[screenshot] {shot}")
        SCREENSHOTS.append(str(shot))
    print(f"[browser] {entry}: {rep.seconds:.1f} s {rep.info}")
    assert not rep.problems, f"{entry}.html:\n  " + "\n  ".join(rep.problems)


def test_page_check_catches_a_broken_page(built_book, book_context, tmp_path):
    """The checker is not vacuous: break a copy of a page six ways, all six are reported;
    then break the widget bundle, and a page with saved widgets must fail too."""
    html = tmp_path / "html"
    shutil.copytree(built_book.html, html)
    page = html / "book" / "notation.html"
    text = page.read_text(encoding="utf-8")
    inject = ('<p>Broken on purpose: <img src="../_images/no-such-figure.png" alt="missing"> '
              "$$a_i^h = \\mathrm{softmax}(q k)$$ "
              '<a href="setup.html#no-such-anchor">bad anchor</a> <a href="no-such-page.html">bad link</a></p>'
              '<script>console.error("fgnb self-test: a console error")</script>'
              '<script src="https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-chtml.js"></script>')
    # inside the page's content section (class mathjax_ignore: MathJax only typesets the
    # .math elements MyST made there, so a $$ that MyST did not parse stays raw, as in a real bug)
    broken, n = re.subn(r"<section[^>]*mathjax_ignore[^>]*>", lambda m: m.group(0) + inject, text, count=1)
    assert n == 1, "no content <section> in notation.html"
    page.write_text(broken, encoding="utf-8")
    rep = check_page(book_context, page, html)
    print("\n[self-test] problems reported for the broken page:\n  " + "\n  ".join(rep.problems))
    joined = "\n".join(rep.problems)
    for expect in ("image not loaded: ../_images/no-such-figure.png", "raw $$",
                   "no id 'no-such-anchor'", "no-such-page.html", "fgnb self-test: a console error",
                   "request left the machine (blocked): https://cdn.jsdelivr.net"):
        assert expect in joined, f"the page check missed: {expect}"
    # and the untouched page passes
    clean = check_page(book_context, built_book.html / "book" / "notation.html", built_book.html)
    assert not clean.problems, clean.problems

    # widgets: with an empty embed-amd.js the saved widgets cannot render
    widget_pages = [p for p in sorted(html.glob("notebooks/*.html")) if WIDGET_STATE in p.read_text(encoding="utf-8")]
    if widget_pages:
        (html / "_static" / "embed-amd.js").write_text("/* broken on purpose */\n")
        rep = check_page(book_context, widget_pages[0], html, timeout_ms=5000)
        print(f"[self-test] {widget_pages[0].name} without the widget bundle:\n  " + "\n  ".join(rep.problems))
        assert any("widgets not rendered" in p for p in rep.problems), rep.problems


# ------------------------------------------------------------------ a live explorer
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _children(pid: int) -> list[int]:
    """Direct child processes of pid (Linux /proc), to clean up what the server started."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = pathlib.Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            if stat.rsplit(")", 1)[1].split()[1] == str(pid):
                out.append(int(d))
    return out


# The notebook Voila runs: the chapter-4 explorer on a tiny untrained model (seeded), plus
# a line showing the explorer's current box (its observer runs after the explorer's redraw).
# An untrained model's attention is nearly flat, so the initial threshold scale is chosen
# where the box differs from the box at the slider's minimum (where every patch is marked):
# the test then drags the scale to its minimum (Home key) and expects the box to change.
LIVE_NOTEBOOK = """\
import ipywidgets as W
import numpy as np
import torch
from IPython.display import display
from fgnb.model import create_model
from fgnb.widgets import ThresholdExplorer

torch.manual_seed(0)
model = create_model("vit_tiny_patch16_224", num_classes=4, img_size=64, patch_size=8, depth=6)
explorer = ThresholdExplorer(model, torch.randn(2, 3, 64, 64))
c = explorer.controls
box_at = lambda s: explorer.compute(0, c["mode"].value, c["layer"].value, s, c["rule"].value)[2].tolist()
start = next((float(s) for s in np.arange(1.0, c["scale"].max, c["scale"].step)
              if box_at(round(float(s), 2)) != box_at(c["scale"].min)), None)
assert start is not None, "no threshold scale gives a box other than the one at the minimum"
explorer.set(scale=round(start, 2))
box = W.HTML()
def show_box(*_):
    box.value = "<span class='fgnb-box'>box " + ",".join(f"{v:.0f}" for v in explorer.box.tolist()) + "</span>"
for w in c.values():
    w.observe(show_box, names="value")
show_box()
display(explorer.widget, box)
"""


def test_live_explorer_in_a_kernel(chromium, tmp_path):
    """Voila on 127.0.0.1 runs an explorer; moving its slider changes the picture."""
    try:
        import fgnb.widgets as W
    except ImportError as e:
        pytest.skip(f"fgnb.widgets not importable yet: {e}")
    if not hasattr(W, "ThresholdExplorer"):
        pytest.skip("fgnb.widgets has no ThresholdExplorer")
    try:
        import voila  # noqa: F401
    except ImportError:
        msg = "voila is not installed (it is in requirements.txt)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"CI=true: {msg}", pytrace=False)
        pytest.skip(msg)
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(LIVE_NOTEBOOK)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, tmp_path / "explorer.ipynb")

    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"), PYTHONPATH=str(ROOT))
    log = open(tmp_path / "voila.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "voila", "explorer.ipynb", "--no-browser", f"--port={port}",
         "--Voila.ip=127.0.0.1", "--Voila.open_browser=False", "--show_tracebacks=True"],
        cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, env=env)
    blocked: list[str] = []
    kids: set[int] = set()
    t0 = time.perf_counter()
    try:
        deadline = time.monotonic() + 60
        while True:
            kids.update(_children(server.pid))
            try:
                urllib.request.urlopen(f"{base}/voila/static/", timeout=2)
                break
            except urllib.error.HTTPError:
                break  # the server answers
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("voila did not start:\n" + (tmp_path / "voila.log").read_text()[-3000:])
                time.sleep(0.5)
        ctx = chromium.new_context(viewport={"width": 1280, "height": 900})
        try:
            page = ctx.new_page()

            def route(r):
                if r.request.url.startswith((base, f"ws://127.0.0.1:{port}", "data:", "blob:")):
                    r.continue_()
                else:  # Voila's own template asks a CDN for Font Awesome: blocked, not needed
                    blocked.append(r.request.url)
                    r.abort()

            page.route("**/*", route)
            page.goto(base + "/", timeout=60_000)
            sliders = page.locator(".jupyter-widgets.widget-slider")
            sliders.first.wait_for(timeout=180_000)  # kernel start + torch import + first picture
            scale = sliders.filter(has=page.locator(".widget-label", has_text="scale"))
            slider = scale.first if scale.count() else sliders.first
            kids.update(_children(server.pid))
            t_ready = time.perf_counter() - t0
            signature = """() => Array.from(document.querySelectorAll('.jupyter-widgets img, .jupyter-widgets svg'))
                .map(e => e.tagName === 'IMG' ? e.src : e.outerHTML.length).join('|')"""
            page.wait_for_function(f"() => ({signature})().length > 0", timeout=60_000)
            box_text = page.locator(".fgnb-box")
            box_text.wait_for(timeout=60_000)
            before, readout = page.evaluate(signature), slider.locator(".widget-readout").inner_text()
            box_before = box_text.inner_text()
            handle = slider.locator(".noUi-handle").first
            handle.focus()
            handle.press("Home")  # to the slider's minimum
            after_readout = slider.locator(".widget-readout").inner_text()
            assert after_readout != readout, f"the slider did not move ({readout})"
            page.wait_for_function(f"b => ({signature})() !== b", arg=before, timeout=60_000)
            page.wait_for_function("b => document.querySelector('.fgnb-box').textContent !== b",
                                   arg=box_before, timeout=30_000)
            box_after = box_text.inner_text()
            shot = SHOTS / "live_explorer.png"
            shot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(shot))
            print(f"\n[live] explorer ready after {t_ready:.1f} s; slider {readout} -> {after_readout}, "
                  f"picture changed, {box_before} -> {box_after}, after {time.perf_counter() - t0:.1f} s; "
                  f"screenshot {shot}; "
                  f"blocked: {sorted(set(blocked))}")
        finally:
            ctx.close()
    finally:
        kids.update(_children(server.pid))
        server.send_signal(signal.SIGTERM)  # voila shuts its kernels down on SIGTERM
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)
        log.close()
        for pid in kids:  # a kernel that outlived the server (still ours: same cmdline)
            try:
                if "ipykernel" in pathlib.Path(f"/proc/{pid}/cmdline").read_text(errors="replace"):
                    os.kill(pid, signal.SIGKILL)
            except (OSError, ProcessLookupError):
                pass
