"""fgnb.results.load_results_dir: chapter 8's set-up, outside the chapter (find_results: test_colab_install)."""
from __future__ import annotations

import json

from fgnb.results import load_results_dir


def test_load_results_dir_reads_results_and_skips_others(tmp_path, capsys):
    (tmp_path / "a.json").write_text(json.dumps({"kind": "speed", "command": "python bench/speed.py"}))
    (tmp_path / "b.json").write_text(json.dumps({"something": "else"}))
    res = load_results_dir(tmp_path)
    assert list(res) == ["a.json"]
    out = capsys.readouterr().out
    assert "skipping b.json" in out and "a.json: kind=speed" in out
    assert load_results_dir(tmp_path / "missing", verbose=False) == {}
