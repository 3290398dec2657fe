"""The Colab install cell, run in an environment made like Colab's, changes nothing that
was there: a venv whose preinstalled packages are this machine's (torch, numpy,
matplotlib, pillow, IPython...) minus timm and safetensors, with Colab's ipywidgets 7.7.
The cell's own pip command installs fgnb (the wheel built from this checkout, for the
repository URL) and only what was missing; then, outside the checkout, the explorers build
and render with ipywidgets 7.7 and the recorded results are found inside the package.

Needs the package index (pip) for ipywidgets 7.7, timm and safetensors, as CI has.
"""
from __future__ import annotations

import json
import os
import pathlib
import shlex
import subprocess
import sys
import sysconfig
import textwrap

import pytest

from conftest import CONFIG, ROOT

sys.path.insert(0, str(ROOT / "notebooks"))
from _colab_install import BRANCH, COLAB_INSTALL_CELL, REPO_URL  # noqa: E402

COLAB_IPYWIDGETS = "7.7.1"
#: what Colab's image lacks (or this test pretends it does): the cell must add them
MISSING = ("timm", "safetensors")
#: fgnb itself and the widget packages, replaced by Colab's ipywidgets 7.7 in the venv
HIDDEN = ("fgnb", "__editable__", "ipywidgets", "widgetsnbextension", "jupyterlab_widgets", *MISSING)


def _norm(name: str) -> str:
    return name.lower().replace("-", "_")


def cell_pip_args() -> list[str]:
    """The arguments of the cell's ``%pip install`` line."""
    lines = [ln.strip() for ln in COLAB_INSTALL_CELL.splitlines() if ln.strip().startswith("%pip install")]
    assert len(lines) == 1, COLAB_INSTALL_CELL
    return shlex.split(lines[0])[2:]


def test_cell_installs_the_configured_repository():
    spec = f"fgnb @ git+{CONFIG['repository']['url']}@{CONFIG['repository']['branch']}"
    assert (REPO_URL, BRANCH) == (CONFIG["repository"]["url"], CONFIG["repository"]["branch"])
    args = cell_pip_args()
    assert spec in args
    # no upgrade of what is there, no forced reinstall, no torch
    assert not {"-U", "--upgrade", "--force-reinstall", "--upgrade-strategy=eager"} & set(args)
    assert not any(a.split("=")[0].split("<")[0].split(">")[0] in ("torch", "torchvision") for a in args)


def run(cmd, **kw):
    res = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert res.returncode == 0, f"{cmd}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res.stdout


def installed(python) -> dict[str, str]:
    out = run([python, "-m", "pip", "list", "--format=json", "--disable-pip-version-check"])
    return {_norm(d["name"]): d["version"] for d in json.loads(out)}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(ROOT), "-w", str(out)])
    (whl,) = out.glob("fgnb-*.whl")
    return whl


@pytest.fixture(scope="module")
def colab_like(tmp_path_factory):
    """A venv: this machine's packages (a read-only 'image'), minus HIDDEN, plus ipywidgets 7.7."""
    base = tmp_path_factory.mktemp("colab")
    image = base / "image"
    image.mkdir()
    for entry in pathlib.Path(sysconfig.get_paths()["purelib"]).iterdir():
        if entry.suffix == ".pth" or _norm(entry.name).startswith(HIDDEN):
            continue
        (image / entry.name).symlink_to(entry)
    venv = base / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = str(venv / "bin" / "python")
    site = run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).strip()
    pathlib.Path(site, "colab_image.pth").write_text(f"{image}\n")
    run([python, "-m", "pip", "install", "-q", f"ipywidgets=={COLAB_IPYWIDGETS}"])
    return python


@pytest.mark.slow
def test_install_cell_changes_nothing_colab_has(colab_like, wheel, tmp_path):
    python = colab_like
    before = installed(python)
    assert before["ipywidgets"] == COLAB_IPYWIDGETS and "torch" in before
    assert not set(MISSING) & set(before) and "fgnb" not in before
    spec = f"fgnb @ git+{REPO_URL}@{BRANCH}"
    args = [f"fgnb @ {wheel.as_uri()}" if a == spec else a for a in cell_pip_args()]
    run([python, "-m", "pip", "install", *args])  # what `%pip install` runs in the kernel
    after = installed(python)
    changed = {k: (v, after.get(k)) for k, v in before.items() if after.get(k) != v}
    assert not changed, f"the install cell changed preinstalled packages: {changed}"
    added = set(after) - set(before)
    assert {"fgnb", *MISSING} <= added, added  # (and whatever new dependency a future timm brings)

    # outside the checkout: the installed fgnb, its recorded results, the explorers on ipywidgets 7.7
    names = sorted(p.name for p in (ROOT / "bench" / "results").glob("*.json"))
    script = textwrap.dedent(f"""
        import json, pathlib, sys, types
        import ipywidgets, torch
        import fgnb
        from fgnb.results import find_results, load_results, ablation_table, boxes_table, gain_curve, gpu_check_table, localisation_table, speed_table, book_time_table
        from fgnb.widgets import AttentionExplorer, ThresholdExplorer

        colab = types.ModuleType("google.colab"); calls = []
        colab.output = types.SimpleNamespace(enable_custom_widget_manager=lambda: calls.append(1))
        sys.modules["google"] = types.ModuleType("google"); sys.modules["google.colab"] = colab
        torch.manual_seed(0)
        m = fgnb.create_model("vit_tiny_patch16_224", num_classes=3, img_size=32, patch_size=8, depth=3,
                              embed_dim=24, num_heads=3).eval()
        x = torch.randn(2, 3, 32, 32)
        ex = ThresholdExplorer(m, x, labels=[0, 1])
        ex.set(scale=1.5, rule="largest", image=1)
        at = AttentionExplorer(m, x, head=1)
        state = ex.widget.get_state()
        out = dict(fgnb=fgnb.__file__, ipywidgets=ipywidgets.__version__, png=ex.png[:4].hex(),
                   image_is_png=ex.image.value == ex.png, at_png=at.png[:4].hex(), children=len(state["children"]),
                   bundle=sorted(ex._repr_mimebundle_()), colab_manager_calls=len(calls),
                   results={{}}, published=str(find_results("published.json")))
        for name in {names!r}:
            p = find_results(name)
            r = load_results(p)
            tables = dict(ablation=ablation_table, boxes=boxes_table, speed=speed_table, sweep=gain_curve,
                          gpu_check=gpu_check_table, localisation=localisation_table,
                          book_time=book_time_table)
            table = tables[r["kind"]](r, markdown=True)
            out["results"][name] = [str(p), p.read_bytes().hex()[:64], table.count("\\n")]
        print(json.dumps(out))
    """)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    res = json.loads(run([python, "-c", script], cwd=tmp_path, env=env).splitlines()[-1])
    site = pathlib.Path(res["fgnb"]).parent
    assert ROOT not in pathlib.Path(res["fgnb"]).parents and "site-packages" in res["fgnb"]
    assert res["ipywidgets"] == COLAB_IPYWIDGETS
    assert res["png"] == res["at_png"] == "89504e47" and res["image_is_png"] and res["children"] >= 3
    assert "application/vnd.jupyter.widget-view+json" in res["bundle"]
    assert res["colab_manager_calls"] == 0  # Colab renders ipywidgets 7 with its own manager
    assert set(res["results"]) == set(names) and names
    for name, (path, head, rows) in res["results"].items():
        assert pathlib.Path(path) == site / "recorded" / "results" / name
        assert head == (ROOT / "bench" / "results" / name).read_bytes().hex()[:64] and rows > 2
    assert pathlib.Path(res["published"]) == site / "recorded" / "published.json"


def test_find_results_in_the_checkout():
    from fgnb.results import find_results

    assert find_results() == ROOT / "bench" / "results"
    for p in (ROOT / "bench" / "results").glob("*.json"):
        assert find_results(p.name) == p
    assert find_results("published.json") == ROOT / "bench" / "published.json"
    with pytest.raises(FileNotFoundError, match="no recorded results file 'nope.json'.*recorded: .*published.json"):
        find_results("nope.json")
