"""Checkpoints inside an epoch (``checkpoint_minutes``, for Colab's disconnects): a run
cut after any batch and resumed ends bit-equal to the uninterrupted run (CPU)."""
import time

import pytest
import torch

import importlib
from fgnb.config import ConfigError, TrainConfig
from fgnb.checkpoints import checkpoint_interval, load_checkpoint
from fgnb.train import train

T = importlib.import_module("fgnb.train")  # the module (fgnb.train is also the function)

TINY = dict(model="vit_tiny_patch16_224", embed_dim=24, num_heads=2, weights=None, synthetic_classes=3,
            synthetic_train_per_class=8, synthetic_test_per_class=2, img_size=16, patch_size=8, depth=3,
            batch_size=6, epochs=2, warmup_epochs=0.5, progress=False, val_fraction=0.25)  # 3 batches an epoch


@pytest.fixture(autouse=True)
def dropout_model(monkeypatch, tmp_path_factory):
    """Dropout in every block, so the global torch RNG matters to the result."""
    monkeypatch.setenv("FGNB_DATA", str(tmp_path_factory.getbasetemp() / "fgnb_data"))
    build = T.build_model

    def with_dropout(cfg, num_classes):
        model = build(cfg, num_classes)
        for blk in model.vit.blocks:
            blk.attn.proj_drop = torch.nn.Dropout(0.2)
        return model

    monkeypatch.setattr(T, "build_model", with_dropout)


def cfg(tmp_path, name, **kw):
    return TrainConfig(**{**TINY, **kw, "out": str(tmp_path / name)})


@pytest.mark.parametrize("stop", [(1, 2), (2, 1)])
def test_resume_inside_an_epoch_is_bit_exact(tmp_path, stop):
    kw = dict(strategy="progressive", crop=True)
    full = train(cfg(tmp_path, "full", **kw))
    part = train(cfg(tmp_path, "part", **kw), stop_after_batch=stop)
    assert part["interrupted"] and len(part["history"]) == stop[0] - 1
    mid = load_checkpoint(tmp_path / "part" / "last.pt")
    assert mid["epoch"] == stop[0] - 2 and mid["mid_epoch"]["epoch"] == stop[0] - 1
    assert mid["mid_epoch"]["batch"] == stop[1] and len(mid["mid_epoch"]["stage_losses"]) == stop[1]
    resumed = train(cfg(tmp_path, "part", resume=True, **kw))
    a = load_checkpoint(tmp_path / "full" / "last.pt")
    b = load_checkpoint(tmp_path / "part" / "last.pt")
    assert b["mid_epoch"] is None
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    timing = ("epoch_time_s", "images_per_s", "data_time_s", "eval_time_s")  # wall clock, not state
    strip = lambda h: [{k: v for k, v in r.items() if k not in timing} for r in h]
    assert strip(full["history"]) == strip(resumed["history"])
    assert full["test"] == resumed["test"]


def test_checkpoint_every_n_minutes(tmp_path, monkeypatch):
    clock = {"t": 0.0}

    class FakeTime:  # every call to monotonic() is a minute later
        perf_counter = staticmethod(time.perf_counter)

        @staticmethod
        def monotonic():
            clock["t"] += 60.0
            return clock["t"]

    saved = []
    real_save = T.save_checkpoint
    monkeypatch.setattr(T, "time", FakeTime)
    monkeypatch.setattr(T, "save_checkpoint", lambda path, state: (
        saved.append((path.name, state["mid_epoch"] and (state["mid_epoch"]["epoch"], state["mid_epoch"]["batch"]))),
        real_save(path, state))[1])
    train(cfg(tmp_path, "timed", checkpoint_minutes=1.5))
    mids = [m for name, m in saved if m]
    # one minute passes per check: a checkpoint every other batch, never after an epoch's last batch
    assert mids and all(0 < b < 3 for _, b in mids), saved
    assert all(name == "last.pt" for name, m in saved if m)
    saved.clear()
    train(cfg(tmp_path, "cpu-default"))  # None on the CPU: only the end-of-epoch checkpoints
    assert saved and not [m for _, m in saved if m]


def test_interval_defaults_and_errors():
    c = TrainConfig(**TINY)
    assert checkpoint_interval(c, torch.device("cuda")) == 600.0
    assert checkpoint_interval(c, torch.device("cpu")) is None
    assert checkpoint_interval(c.replace(checkpoint_minutes=0), torch.device("cuda")) is None
    assert checkpoint_interval(c.replace(checkpoint_minutes=2.5), torch.device("cpu")) == 150.0
    with pytest.raises(ConfigError, match="checkpoint_minutes must be >= 0"):
        TrainConfig(**TINY, checkpoint_minutes=-1)
