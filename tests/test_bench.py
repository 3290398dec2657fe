"""The benchmarks run end to end at --tiny and write results files of the documented shape.

No timing is asserted: only that every section ran and the JSON has its fields, that
the ablation skips finished runs on a second call, and that fgnb.results reads both files.
"""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _run(args, tmp_path, timeout=600, ok=True):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FGNB_DATA": os.environ.get("FGNB_DATA", str(tmp_path / "data"))}
    p = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if not ok:
        return p
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]
    return p.stdout


def _check_header(res, kind):
    assert res["kind"] == kind
    for key in ("command", "commit", "dirty", "machine", "started", "finished", "wall_time_s"):
        assert key in res, key
    for key in ("cpu", "torch", "timm", "torch_threads", "python"):
        assert key in res["machine"], key


@pytest.fixture(scope="module")
def speed_results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("speed")
    out = tmp / "speed.json"
    _run(["bench/speed.py", "--tiny", "--device", "cpu", "--threads", "1", "--out", str(out)], tmp)
    return json.loads(out.read_text())


def test_speed_schema(speed_results):
    from fgnb.results import speed_table

    res = speed_results
    _check_header(res, "speed")
    step = res["train_step"]
    assert set(step["timing"]) == {"timm", "last", "summed", "progressive", "progressive+crop", "progressive+crop:separate"}
    for t in step["timing"].values():
        assert t["median_s"] > 0 and t["ratio"] > 0 and len(t["times_s"]) == res["settings"]["repeats"]
    # ideal progressive cost = sum of stage depths / depth: depth 4, targets 1,2,3 -> (2+3+4)/4
    assert step["ideal"]["progressive"] == pytest.approx(9 / 4)
    assert step["ideal"]["progressive+crop"] == pytest.approx(2 * 9 / 4 + 1 / 3)  # 2B per stage + the boxes' forward
    # the book's CPU model is what is timed
    from fgnb.config import SYNTHETIC_ARCH
    assert step["model"]["name"] == SYNTHETIC_ARCH["model"]
    # a default epoch's data and validation shares, read from train()'s own epoch rows
    for key, e in res["epoch"].items():
        assert 0 < e["data_time_s"] < e["epoch_time_s"] and e["eval_time_s"] > 0, key
    assert set(res["throughput"]) == set(step["timing"])
    assert "method" in res["memory"] and "peak_mib" in res["memory"]
    for entry in res["attn_capture"].values():
        assert {"timm_fused", "fgnb_cls_all_layers", "naive_full_maps"} <= set(entry["timing"])
        assert entry["max_abs_diff_vs_naive"] < 1e-4  # fgnb's CLS rows are the naive maps' rows
    for entry in res["crop"].values():
        assert entry["speedup_vs_loop_with_conversion"] > 0
        n = int(entry["boxes_equal"].split("/")[1])
        assert entry["boxes_equal"] == f"{n}/{n}"  # batched boxes == per-image numpy boxes
    assert any("share_of_progressive_crop_step" in e for e in res["crop"].values())
    rows = speed_table(res)
    sections = {r["section"] for r in rows}
    assert {"train_step", "memory", "attn_capture", "crop", "throughput"} <= sections
    assert "| section |" in speed_table(res, markdown=True)


def test_ablation_schema_and_resume(tmp_path):
    from fgnb.results import ablation_table, load_results

    out, runs = tmp_path / "ablation.json", tmp_path / "runs"
    args = ["bench/ablation.py", "--tiny", "--threads", "1", "--seeds", "0", "1",
            "--variants", "last", "progressive+crop", "--runs-dir", str(runs), "--out", str(out)]
    _run(args, tmp_path)
    res = load_results(out)
    _check_header(res, "ablation")
    assert res["complete"] and len(res["runs"]) == 4
    for r in res["runs"]:
        assert (pathlib.Path(r["out"]) / "test_metrics.json").exists()
        for m in ("top1_last", "top1_mean", "top1_crop", "iou50", "part_hit"):
            assert 0 <= r["test"][m] <= 1
    assert [t["variant"] for t in res["table"]] == ["last", "progressive+crop"]
    assert all(t["n_seeds"] == 2 for t in res["table"])
    rows = ablation_table(res)
    assert rows[0]["variant"] == "last" and "±" in rows[0]["top1_last"]
    assert "| variant |" in ablation_table(res, markdown=True)
    # Every run folder names the commit that trained it and whether its tree was dirty, so a
    # study reading it back keeps both (each row its own, not only the file's last run).
    folders = {(r["variant"], r["seed"]): pathlib.Path(r["out"]) for r in res["runs"]}
    for r in res["runs"]:
        info = json.loads((folders[r["variant"], r["seed"]] / "run_info.json").read_text())
        assert info["commit"] == r["commit"] and info["dirty"] is r["dirty"] and isinstance(r["dirty"], bool)
    # A second call finds every run done and skips it.
    stdout = _run(args, tmp_path)
    assert stdout.count("skipped (done)") == 4
    assert all(r["skipped"] for r in load_results(out)["runs"])
    # Finished runs made with other options are never mixed in.
    p = _run([*args, "--set", "lr=0.5"], tmp_path, ok=False)
    assert p.returncode != 0 and "holds a finished run with other options (lr: 0.0003 there, 0.5 requested)" in p.stderr
    # The results file alone is the record: a new machine (no run folders) continues from it,
    # and a call with fewer variants keeps the others' rows.
    fresh = ["--runs-dir", str(tmp_path / "elsewhere")]
    stdout = _run([*args[:-4], "--variants", "last", *fresh, "--out", str(out)], tmp_path)
    assert stdout.count("skipped (done)") == 2 and not (tmp_path / "elsewhere").exists()
    res = load_results(out)
    assert len(res["runs"]) == 4 and res["seeds"] == [0, 1]
    assert all(r["commit"] and r["config"]["seed"] == r["seed"] and r["val"]["n"] > 0 for r in res["runs"])
    # Without the results file the rows come back from the folders, with the commit each folder
    # names (a made-up one here), or none where the folder does not say: never the reader's own.
    (k0, f0), (k1, f1) = list(folders.items())[:2]
    (f0 / "run_info.json").write_text(json.dumps(json.loads((f0 / "run_info.json").read_text()) | {"commit": "0" * 40}))
    info1 = json.loads((f1 / "run_info.json").read_text())
    (f1 / "run_info.json").write_text(json.dumps({k: v for k, v in info1.items() if k not in ("commit", "dirty")}))
    out.unlink()
    assert _run(args, tmp_path).count("skipped (done)") == 4
    rows = {(r["variant"], r["seed"]): r for r in load_results(out)["runs"]}
    assert rows[k0]["commit"] == "0" * 40 and rows[k1]["commit"] is None and rows[k1]["dirty"] is None


def test_results_loader_rejects_other_json(tmp_path):
    from fgnb.results import load_results

    p = tmp_path / "x.json"
    p.write_text(json.dumps({"a": 1}))
    with pytest.raises(ValueError):
        load_results(p)
    with pytest.raises(FileNotFoundError):
        load_results(tmp_path / "missing.json")


def test_published_file_is_cited():
    from fgnb.results import load_results

    pub = load_results(ROOT / "bench" / "published.json")
    assert pub["kind"] == "published"
    for row in pub["rows"]:
        assert row["cited"] is True and row["source"]


def _committed_checkout(tmp_path, monkeypatch, files: dict):
    """bench/common.py pointed at a new git repository holding ``files`` ({path: text}), committed."""
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import common
    run = lambda *a: subprocess.run(["git", *a], cwd=tmp_path, check=True, capture_output=True)
    run("init", "-q")
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    run("add", ".")
    run("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c")
    monkeypatch.setattr(common, "REPO", tmp_path)
    return common


def test_a_results_file_rewritten_by_a_resumed_study_does_not_make_the_checkout_dirty(tmp_path, monkeypatch):
    common = _committed_checkout(tmp_path, monkeypatch, {"results.json": "{}", "code.py": "x = 1\n"})
    assert common.git_commit()["dirty"] is False
    (tmp_path / "results.json").write_text('{"runs": []}')
    assert common.git_commit()["dirty"] is True
    assert common.git_commit(ignore=[tmp_path / "results.json"])["dirty"] is False
    (tmp_path / "code.py").write_text("x = 2\n")
    assert common.git_commit(ignore=[tmp_path / "results.json"])["dirty"] is True


def test_another_studys_results_file_does_not_make_the_checkout_dirty(tmp_path, monkeypatch):
    """Two sweeps resumed side by side in one checkout: each rewrites its own file under
    bench/results; neither is a change of code, but a changed script still is."""
    common = _committed_checkout(tmp_path, monkeypatch, {"bench/results/sweep_a.json": "{}",
                                                         "bench/results/sweep_b.json": "{}", "bench/sweep.py": "x = 1\n"})
    (tmp_path / "bench" / "results" / "sweep_b.json").write_text('{"runs": [1]}')  # the other study's file
    assert common.git_commit(ignore=[tmp_path / "bench" / "results" / "sweep_a.json"])["dirty"] is False
    (tmp_path / "bench" / "sweep.py").write_text("x = 2\n")
    assert common.git_commit(ignore=[tmp_path / "bench" / "results" / "sweep_a.json"])["dirty"] is True


def test_a_results_file_outside_the_checkout_leaves_a_changed_script_dirty(tmp_path, monkeypatch):
    """--out /tmp/x.json: excluding a path outside the checkout must not make git status fail
    (a failed status once read as a clean tree)."""
    repo = tmp_path / "repo"
    repo.mkdir()
    common = _committed_checkout(repo, monkeypatch, {"bench/boxes.py": "x = 1\n"})
    outside = tmp_path / "elsewhere" / "boxes.json"
    assert common.git_commit(ignore=[outside])["dirty"] is False
    (repo / "bench" / "boxes.py").write_text("x = 2\n")
    assert common.git_commit(ignore=[outside])["dirty"] is True


def test_book_time_reports_the_median_of_the_default_runs_and_keeps_each():
    sys.path.insert(0, str(ROOT / "bench"))
    from book_time import median_run

    def run(seconds, rc=0):
        return {"command": "python -m fgnb train", "seconds": seconds, "returncode": rc}

    odd = median_run([run(64.7), run(57.5), run(58.2)])
    assert odd["seconds"] == 58.2 and odd["statistic"] == "median of 3 runs"
    assert [r["seconds"] for r in odd["runs"]] == [64.7, 57.5, 58.2] and odd["returncode"] == 0
    assert median_run([run(61.0), run(57.0)])["seconds"] == 59.0  # even count: the mean of the middle two
    assert median_run([run(57.0), run(70.0, rc=1), run(58.0)])["returncode"] == 1  # a failed run is not hidden
    with pytest.raises(ValueError, match="at least one"):
        median_run([])
