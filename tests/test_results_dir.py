"""fgnb.results.find_results_dir / load_results_dir: chapter 8's set-up, outside the chapter."""
from __future__ import annotations

import json

from fgnb.results import find_results_dir, load_results_dir


def test_find_results_dir_walks_up_to_the_checkout(tmp_path):
    (tmp_path / "bench" / "results").mkdir(parents=True)
    deep = tmp_path / "notebooks" / "sub"
    deep.mkdir(parents=True)
    assert find_results_dir(deep) == str(tmp_path / "bench" / "results")
    outside = tmp_path.parent / (tmp_path.name + "_x")
    outside.mkdir()
    # no bench folder above: the conventional place under the start folder (may not exist)
    assert find_results_dir(outside).endswith("bench/results")


def test_load_results_dir_reads_results_and_skips_others(tmp_path, capsys):
    (tmp_path / "a.json").write_text(json.dumps({"kind": "speed", "command": "python bench/speed.py"}))
    (tmp_path / "b.json").write_text(json.dumps({"something": "else"}))
    res = load_results_dir(tmp_path)
    assert list(res) == ["a.json"]
    out = capsys.readouterr().out
    assert "skipping b.json" in out and "a.json: kind=speed" in out
    assert load_results_dir(tmp_path / "missing", verbose=False) == {}
