"""bench/gpu_check.sh, the device check for a lent GPU, checked without one: its shell
syntax, its dry run (the plan: flags, files, every run's options, chapter 7's
parameters), its refusal without CUDA, and one of its synthetic runs on the CPU."""
import json
import subprocess
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))
import gpu_check  # noqa: E402


def sh(*args, **kw):
    return subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=300, **kw)


def test_shell_syntax_and_limit():
    assert subprocess.run(["bash", "-n", str(ROOT / "bench" / "gpu_check.sh")]).returncode == 0
    text = (ROOT / "bench" / "gpu_check.sh").read_text()
    assert "LIMIT_S=${GPU_CHECK_LIMIT_S:-480}" in text and "timeout" in text  # 8 minutes at most
    for steps in (gpu_check.STEPS, gpu_check.FULL_STEPS, gpu_check.CHAPTER_STEPS):  # each mode: 8 minutes
        assert sum(gpu_check.BUDGET[k] for k in steps) <= 480 - 20


def test_dry_run_checks_the_plan():
    p = sh("--dry-run")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "dry run: plan OK" in p.stdout and "--amp bf16" in p.stdout and "nproc_per_node 2" in p.stdout


def test_every_strategy_and_crop_option_is_run():
    from dataclasses import fields

    from fgnb.config import TrainConfig

    choices = {f.name: f.metadata.get("choices") for f in fields(TrainConfig)}
    v = gpu_check.variants()
    assert {x["strategy"] for x in v} == set(choices["strategy"])
    assert {x["crop"] for x in v} == {False, True}
    assert {x.get("reforward", True) for x in v if x["strategy"] == "progressive"} == {True, False}
    assert gpu_check.amp_modes((9, 0)) == ["auto", "fp16"] and gpu_check.amp_modes((7, 5)) == ["auto"]


def test_refuses_without_cuda():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is here")
    p = sh("--steps", "env")
    assert p.returncode != 0 and "no CUDA device" in p.stderr


def test_one_run_on_the_cpu(tmp_path, monkeypatch):
    monkeypatch.setenv("FGNB_DATA", str(tmp_path / "data"))
    out = tmp_path / "check.json"
    assert gpu_check.main(["--device", "cpu", "--steps", "env", "runs", "--max-runs", "1", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["kind"] == "gpu_check" and res["env"]["device"] == "cpu"
    (run,) = res["runs"]
    assert run["ok"] and run["strategy"] == "last" and run["amp"] == "auto"


def test_full_dry_run_and_one_tiny_cell_on_the_cpu(tmp_path, monkeypatch):
    """--full: the full recipe's cells check in the dry run, and one cell (progressive with crops, a small
    ViT at 448 px on the 500 x 375 fixture) trains on the CPU, with the plan's estimate beside it."""
    p = sh("--full", "--dry-run")
    assert p.returncode == 0 and "6 cells (vit_base_patch16_224.orig_in21k at 448 px, batch 16" in p.stdout, p.stdout + p.stderr
    assert "gpu_full_cuda.json" in p.stdout
    monkeypatch.setattr(gpu_check, "FULL_CELLS", [dict(strategy="progressive", crop=True)])
    out = tmp_path / "full.json"
    assert gpu_check.main(["--full", "--tiny", "--device", "cpu", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["kind"] == "gpu_full" and res["steps"] == ["env", "full"]
    (cell,) = res["full"]["cells"]
    assert cell["ok"] and cell["source_size"] == 896 and cell["img_size"] == 448 and cell["plan_gib"] > 0
    assert cell["images_per_s"] > 0 and "peak_gib" not in cell  # no CUDA: nothing measured, nothing made up
    assert res["full"]["fixture"]["shape"] == [500, 375]


def test_chapters_dry_run_and_one_chapter_timed_on_the_cpu(tmp_path, monkeypatch):
    """--chapters: the plan lists every chapter in the book's order, a misspelt name is refused with
    the valid ones, and one chapter executed for real records its seconds and no error."""
    p = sh("--chapters", "--dry-run")
    assert p.returncode == 0, p.stdout + p.stderr
    names = [n.stem for n in sorted((ROOT / "notebooks").glob("*.ipynb"))]
    assert f"chapters: {', '.join(names)} (each with its own parameters)" in p.stdout and "chapters_cuda.json" in p.stdout
    p = sh("--chapters", "--chapter-names", "02_patches", "--dry-run")
    assert p.returncode == 1 and "--chapter-names 02_patches: no such chapter" in p.stderr and names[1] in p.stderr
    monkeypatch.setenv("FGNB_DATA", str(tmp_path / "data"))
    out = tmp_path / "chapters.json"
    assert gpu_check.main(["--chapters", "--device", "cpu", "--chapter-names", "02_patches_and_tokens", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["kind"] == "gpu_chapters" and res["steps"] == ["env", "chapters"]
    (name, run), = res["chapters"].items()
    assert name == "02_patches_and_tokens" and run["seconds"] > 0 and run["errors"] == []


def test_a_failing_chapter_is_recorded_as_failed_and_the_next_one_still_runs(tmp_path, monkeypatch):
    import nbformat

    def chapter(name, code):
        nb = nbformat.v4.new_notebook()
        nb.cells = [nbformat.v4.new_code_cell("x = 1", metadata={"tags": ["parameters"]}), nbformat.v4.new_code_cell(code)]
        path = tmp_path / f"{name}.ipynb"
        nbformat.write(nb, path)
        return path

    monkeypatch.setattr(gpu_check, "CHAPTERS", [chapter("01_fails", "raise RuntimeError('boom')"), chapter("02_runs", "y = x + 1")])
    out = tmp_path / "chapters.json"
    assert gpu_check.main(["--chapters", "--device", "cpu", "--steps", "chapters", "--out", str(out)]) == 0
    res = json.loads(out.read_text())["chapters"]
    assert "boom" in res["01_fails"]["error"] and "seconds" not in res["01_fails"]
    assert res["02_runs"]["errors"] == [] and res["02_runs"]["seconds"] > 0
