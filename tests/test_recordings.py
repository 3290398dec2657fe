"""Recorded runs (fgnb.recordings): a chapter on a CPU loads the run recorded for its recipe;
the recording is what training that recipe makes, and cannot go stale silently."""
import json

import pytest
import torch

import fgnb.recordings as rec
from conftest import ROOT, load_nb
from fgnb.config import TrainConfig

TINY = dict(model="vit_tiny_patch16_224", embed_dim=None, num_heads=None, weights=None,
            synthetic_classes=3, synthetic_train_per_class=8, synthetic_test_per_class=4, img_size=16, patch_size=8,
            depth=3, batch_size=6, epochs=2, warmup_epochs=0.5, progress=False, val_fraction=0.25, workers=0)


@pytest.fixture
def recordings(tmp_path, monkeypatch):
    """A folder of recordings of its own, and the tiny data set generated beside it."""
    monkeypatch.setattr(rec, "RECORDED_RUNS", tmp_path / "recorded_runs")
    monkeypatch.setenv("FGNB_DATA", str(tmp_path / "data"))
    return tmp_path


def weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def test_a_recorded_run_loads_as_the_run_it_recorded_and_verifies_bit_for_bit(recordings, capsys):
    cfg = TrainConfig(**TINY, out=str(recordings / "a"))
    trained = rec.train_or_load(cfg, "tiny", retrain=True, record=True, checkpoints=["best.pt"])
    assert trained["recorded"] is False
    folder = rec.RECORDED_RUNS / "tiny"
    assert sorted(p.name for p in folder.glob("*.pt")) == ["best.pt"]  # only what the chapter reads
    saved = torch.load(folder / "best.pt", map_location="cpu", weights_only=True)
    assert "optimizer" not in saved and saved["best_epoch"] == trained["best_epoch"]
    info = json.loads((folder / "recording.json").read_text())
    assert info["code_hash"] == rec.code_hash() and info["train_seconds"] > 0

    loaded = rec.train_or_load(cfg.replace(out=str(recordings / "b")), "tiny", retrain=False)
    assert loaded["recorded"] is True and loaded["out"] == str(recordings / "b")
    assert loaded["history"] == json.loads(json.dumps(trained["history"]))
    assert loaded["test"] == pytest.approx(trained["test"]) and loaded["best_epoch"] == trained["best_epoch"]
    best = weights(recordings / "b" / "best.pt")
    assert all(torch.equal(best[k], v) for k, v in weights(recordings / "a" / "best.pt").items())
    assert not (recordings / "b" / "last.pt").exists()

    # training the recipe again makes the same files: weights bit for bit, metrics but wall times
    assert rec.verify(["tiny"], out_root=str(recordings)) == []
    # --update stamps the code hash, and the commit and state of the checkout that verified it
    assert rec.verify(["tiny"], update=True, out_root=str(recordings)) == []
    stamped = json.loads((folder / "recording.json").read_text())
    head = rec.git_commit(rec.RECORDED_RUNS.parent.parent, exclude=[rec.RECORDED_RUNS, "bench/results"])
    assert stamped["code_hash"] == rec.code_hash() and stamped["verified"]
    assert (stamped["verified_commit"], stamped["verified_dirty"]) == (head["commit"], head["dirty"])
    # ... and a recording that is not what its recipe makes is found
    saved["model"][next(iter(saved["model"]))] += 1e-6
    torch.save(saved, folder / "best.pt")
    assert rec.verify(["tiny"], out_root=str(recordings)) == ["tiny/best.pt: weights differ from the retrained run"]
    res = json.loads((folder / "result.json").read_text())
    res["history"][0]["val_top1_last"] += 0.01
    (folder / "result.json").write_text(json.dumps(res))
    assert "tiny/result.json: metrics differ from the retrained run" in rec.verify(["tiny"], out_root=str(recordings))


def test_a_reader_who_changes_the_recipe_trains_it_and_is_told_why(recordings, capsys):
    cfg = TrainConfig(**{**TINY, "epochs": 1}, out=str(recordings / "a"))
    rec.train_or_load(cfg, "tiny", retrain=True, record=True)
    capsys.readouterr()
    # an option that changes the run: trained here, with the reason
    other = rec.train_or_load(cfg.replace(out=str(recordings / "b"), lr=5e-4), "tiny", retrain=False)
    assert other["recorded"] is False
    assert f"lr: {rec.TrainConfig().lr} recorded, 0.0005 here" in capsys.readouterr().out
    # options that do not change a run (where it goes, progress bars, workers) still load the recording
    same = rec.train_or_load(cfg.replace(out=str(recordings / "c"), progress=True, workers=0), "tiny", retrain=False)
    assert same["recorded"] is True
    # no recording of that name: trained, and said so
    assert rec.train_or_load(cfg.replace(out=str(recordings / "d")), "other", retrain=False)["recorded"] is False
    assert "no recorded run 'other'" in capsys.readouterr().out
    # a run loaded from a recording has no optimizer state: resuming it is refused, naming the way out
    with pytest.raises(ValueError, match="retrain=True"):
        rec.train_or_load(cfg.replace(out=str(recordings / "c"), resume=True, epochs=2, lr=5e-4), "tiny", retrain=False)
    with pytest.raises(ValueError, match="record=True keeps a run trained here"):
        rec.train_or_load(cfg, "tiny", retrain=False, record=True)
    with pytest.raises(ValueError, match="relative name"):
        rec.train_or_load(cfg, "../x", retrain=False)


def test_each_stop_of_a_run_is_its_own_recording_and_continues_the_run(recordings):
    cfg = TrainConfig(**TINY, out=str(recordings / "a"))
    for stop in (1, 2):
        rec.train_or_load(cfg.replace(resume=stop > 1), f"run/epoch{stop}", retrain=True, record=True,
                          checkpoints=["last.pt"], stop_after_epoch=stop if stop < 2 else None)
    assert rec.recorded_names() == ["run/epoch1", "run/epoch2"]
    out = recordings / "b"
    for stop in (1, 2):
        r = rec.train_or_load(cfg.replace(out=str(out), resume=stop > 1), f"run/epoch{stop}", retrain=False,
                              stop_after_epoch=stop if stop < 2 else None)
        assert r["recorded"] and len(r["history"]) == stop
        a = weights(rec.RECORDED_RUNS / f"run/epoch{stop}" / "last.pt")
        assert all(torch.equal(a[k], v) for k, v in weights(out / "last.pt").items())
    with pytest.raises(ValueError, match="stops after epoch 1"):
        rec.train_or_load(cfg.replace(out=str(recordings / "c")), "run/epoch1", retrain=False)
    # a stop continued by training from the recording of the stop before it: refused, it has no optimizer
    with pytest.raises(FileExistsError, match="holds a run"):
        rec.train_or_load(cfg.replace(out=str(out)), "run/epoch2", retrain=False)


def test_the_recordings_were_made_by_todays_training_code():
    """A change to the code that trains (any fgnb module but those that show or plan runs)
    may change what a recorded run would be: verify the recordings again, or record them again."""
    names = rec.recorded_names()
    assert names, "no recorded runs in fgnb/recorded_runs: run python -m fgnb.recordings record notebooks/05_*.ipynb ..."
    now = rec.code_hash()
    stale = [n for n in names if json.loads((rec.RECORDED_RUNS / n / "recording.json").read_text())["code_hash"] != now]
    assert not stale, (f"the training code changed since these recordings were made or verified: {stale}. Run "
                       "`python -m fgnb.recordings verify --update` (retrains each recipe; stamps the new code hash "
                       "where the run is identical) or record them again")


@pytest.mark.parametrize("chapter, names", [("05_progressive_training", ["05_last", "05_summed", "05_progressive"]),
                                            ("06_attention_crop", ["06_crop/epoch1", "06_crop/epoch2"])])
def test_the_chapters_committed_outputs_come_from_their_recordings(chapter, names):
    """The chapter ran on a CPU from its recordings (seconds), so the recordings match its recipe."""
    assert set(names) <= set(rec.recorded_names())
    text = "".join("".join(o.get("text", "")) for c in load_nb(ROOT / "notebooks" / f"{chapter}.ipynb")["cells"]
                   for o in c.get("outputs", []))
    assert "trained here" not in text
    assert text.count("recorded run (trained in") == (3 if chapter.startswith("05") else 1)
