"""Fast checks of the Jupyter Book configuration (no build, no execution)."""
from __future__ import annotations

import ast
import json
import pathlib

import pytest


from conftest import CONFIG, ROOT, TOC, TOC_ENTRIES as TOC_FILES, resolve as _resolve  # noqa: E402

SPHINX = (CONFIG.get("sphinx") or {}).get("config") or {}


NOTEBOOKS = [p for p in (_resolve(e) for e in TOC_FILES) if p is not None and p.suffix == ".ipynb"]


def _load(nb_path: pathlib.Path) -> dict:
    return json.loads(nb_path.read_text(encoding="utf-8"))


def _source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def test_toc_entries_exist():
    assert TOC["root"] == "book/intro"
    missing = [e for e in TOC_FILES if _resolve(e) is None]
    assert not missing, f"_toc.yml lists files that do not exist: {missing}"


def test_toc_has_all_chapters():
    expected = [f"notebooks/{n}" for n in (
        "01_fine_grained_data", "02_patches_and_tokens", "03_cls_attention",
        "04_head_product_threshold", "05_progressive_training", "06_attention_crop",
        "07_full_training_gpu", "08_results_ablations", "09_when_zooming_helps", "appendix_full_results")]
    assert [e for e in TOC_FILES if e.startswith("notebooks/")] == expected
    for page in ("setup", "notation", "method", "dataset", "glossary", "references", "multi_gpu"):
        assert f"book/{page}" in TOC_FILES


@pytest.mark.parametrize("nb_path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_kernelspec_python3(nb_path):
    ks = _load(nb_path).get("metadata", {}).get("kernelspec", {})
    assert ks.get("name") == "python3", f"{nb_path.name}: kernelspec {ks!r}"


def test_build_settings():
    assert CONFIG["only_build_toc_files"] is True
    # an instructor's rebuild re-executes only the chapters whose code changed (jupyter-cache);
    # a fresh clone has no cache, so the README's build still executes every chapter
    assert CONFIG["execute"]["execute_notebooks"] == "cache"
    assert CONFIG["execute"].get("cache", "") in ("", "_build/.jupyter_cache")  # inside _build: `clean --all` empties it
    assert CONFIG["execute"]["timeout"] >= 600
    excluded = set(CONFIG["exclude_patterns"])
    for pat in ("_build", "README.md", "tests", "bench", "node_modules", ".ci"):
        assert pat in excluded
    exts = CONFIG["parse"]["myst_enable_extensions"]
    assert "dollarmath" in exts and "amsmath" in exts
    assert (ROOT / CONFIG["bibtex_bibfiles"][0]).is_file()


def test_repository_and_launch_buttons():
    # a fork that publishes its own book changes url and branch (book/setup.md); the install
    # cell must follow them (test_colab_snippet_matches_config)
    assert CONFIG["repository"]["url"].startswith("https://github.com/")
    assert CONFIG["repository"]["branch"]
    assert CONFIG["repository"].get("path_to_book", "") == ""
    assert CONFIG["launch_buttons"]["colab_url"] == "https://colab.research.google.com"


def test_vendored_assets_exist_and_are_wired():
    static = [ROOT / p for p in SPHINX["html_static_path"]]
    assert static == [ROOT / "book" / "_vendor"]
    vendor = static[0]
    # mathjax_path and nb_ipywidgets_js are relative to _static/, i.e. to the folder's contents
    mj = SPHINX["mathjax_path"]
    assert "://" not in mj and (vendor / mj).is_file()
    for comp in SPHINX["mathjax3_config"]["loader"]["load"]:
        assert (vendor / "mathjax" / f"{comp}.js").is_file(), comp
    assert (vendor / "mathjax/output/chtml/fonts/tex.js").is_file()
    assert list((vendor / "mathjax/output/chtml/fonts/woff-v2").glob("*.woff"))
    js = list(SPHINX["nb_ipywidgets_js"])
    assert js.index("require.js") < js.index("embed-amd.js")
    for name in js:
        assert "://" not in name and (vendor / name).is_file(), name
    assert (vendor / "README.md").is_file() and (ROOT / "book" / "vendor.sh").is_file()
    size = sum(p.stat().st_size for p in vendor.rglob("*") if p.is_file())
    assert size < 5_000_000, f"book/_vendor is {size} bytes"


def test_no_top_level_static_folder():
    # If <root>/_static existed, Jupyter Book 1 would add <script> tags for every .js in
    # every html_static_path entry (book/_vendor included) to every page.
    assert not (ROOT / "_static").exists()


def _snippet() -> dict[str, str]:
    tree = ast.parse((ROOT / "notebooks" / "_colab_install.py").read_text())
    consts = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
            consts[node.targets[0].id] = node.value.value
    return consts


def test_colab_snippet_matches_config():
    consts = _snippet()
    assert consts["REPO_URL"] == CONFIG["repository"]["url"]
    assert consts["BRANCH"] == CONFIG["repository"]["branch"]


@pytest.mark.parametrize("nb_path", NOTEBOOKS, ids=lambda p: p.name)
def test_colab_install_cell_uses_repository_url(nb_path):
    nb = _load(nb_path)
    if (nb.get("metadata", {}).get("fgnb") or {}).get("placeholder"):
        pytest.skip("placeholder chapter")
    cells = [c for c in nb["cells"] if c["cell_type"] == "code" and "pip install" in _source(c)]
    assert cells, f"{nb_path.name}: no Colab install cell (a code cell with `pip install`)"
    src = _source(cells[0])
    url, branch = CONFIG["repository"]["url"], CONFIG["repository"]["branch"]
    assert f"git+{url}@{branch}" in src, f"{nb_path.name}: install cell does not use {url}@{branch}"
    assert "google.colab" in src, f"{nb_path.name}: install cell must only run in Colab"
    for line in src.splitlines():
        if "pip install" in line:
            words = line.replace('"', " ").replace("'", " ").split()
            assert "torch" not in words and "torchvision" not in words, (
                f"{nb_path.name}: never reinstall torch/torchvision in a notebook")
