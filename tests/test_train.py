"""The loop: resume-exactness, atomic checkpoints, NaN handling, clear errors, the CLI."""
import importlib
import json
import pathlib

import pytest
import torch

from fgnb.cli import main as cli
from fgnb.config import ConfigError, TrainConfig, load_config
from fgnb.checkpoints import load_checkpoint, load_model
from fgnb.devices import default_workers
from fgnb.train import train, warmup_cosine

TINY = dict(model="vit_tiny_patch16_224", embed_dim=None, num_heads=None, weights=None,  # from scratch, small
            synthetic_classes=3, synthetic_train_per_class=8, synthetic_test_per_class=4, img_size=16, patch_size=8,
            depth=3, batch_size=6, epochs=2, warmup_epochs=0.5, progress=False, val_fraction=0.25)


@pytest.fixture(scope="module", autouse=True)
def data_cache(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("FGNB_DATA", str(tmp_path_factory.mktemp("fgnb_data")))
    yield
    mp.undo()


def cfg(tmp_path, name="run", **kw):
    return TrainConfig(**{**TINY, **kw, "out": str(tmp_path / name)})


def test_train_writes_run_and_metrics(tmp_path):
    res = train(cfg(tmp_path, crop=True))
    out = tmp_path / "run"
    for f in ("last.pt", "best.pt", "metrics.csv", "metrics.jsonl", "config.yaml", "test_metrics.json"):
        assert (out / f).is_file(), f
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and rows == res["history"]
    for k in ("loss_head0", "loss_head2", "crop_loss_head1", "val_top1_last", "val_top1_mean", "val_top1_crop",
              "val_iou50", "val_part_hit", "images_per_s"):
        assert k in rows[-1], k
    t = res["test"]
    assert t["n"] == 12 and 0 <= t["top1_crop"] <= 1 and 0 <= t["iou50"] <= 1
    assert load_config(out / "config.yaml") == cfg(tmp_path, crop=True)


@pytest.fixture
def spy(monkeypatch):
    """What a train() call did: the epoch of every training item it loaded, the
    optimizer / scheduler states it loaded."""
    T = importlib.import_module("fgnb.train")  # (fgnb.train is also the function)

    seen = {"items": [], "loaded": []}
    get = T.SeededItems.__getitem__
    monkeypatch.setattr(T.SeededItems, "__getitem__", lambda self, i: seen["items"].append(self.epoch) or get(self, i))
    for cls, name in ((torch.optim.AdamW, "optimizer"), (torch.optim.lr_scheduler.LambdaLR, "scheduler")):
        def load(self, state, _real=cls.load_state_dict, _name=name):
            seen["loaded"].append(_name)
            return _real(self, state)
        monkeypatch.setattr(cls, "load_state_dict", load)
    return seen


@pytest.mark.parametrize("crop", [False, True])
def test_a_run_that_reads_the_box_on_the_source_and_cuts_it_from_the_input_trains_and_evaluates(tmp_path, crop):
    """attention_from='source' with crop_from='input': the evaluation reads every run's box on the
    source view, so its splits carry it with or without crops (it failed for crop=False: no view)."""
    res = train(cfg(tmp_path, crop=crop, crop_from="input", attention_from="source", source_size=32))
    assert res["test"]["n"] == 12 and 0 < res["test"]["box_area"] <= 1


def test_test_split_is_read_with_the_checkpoint_chosen_on_validation(tmp_path, monkeypatch, capsys):
    T = importlib.import_module("fgnb.train")  # (fgnb.train is also the function)

    real, val_scores = T.evaluate, iter([0.5, 0.9, 0.1])      # epoch 2 is the best, not the last

    def scripted(model, loader, *args, **kw):
        res = real(model, loader, *args, **kw)
        if loader.dataset.dataset.split == "val":
            res["top1_last"] = next(val_scores)
        return res

    monkeypatch.setattr(T, "evaluate", scripted)
    res = train(cfg(tmp_path, epochs=3, lr=3e-3))
    out = tmp_path / "run"
    assert res["best_epoch"] == 2 and load_checkpoint(out / "best.pt")["epoch"] == 1
    assert load_checkpoint(out / "last.pt")["epoch"] == 2
    monkeypatch.setattr(T, "evaluate", real)
    ev = {}
    for name in ("best", "last"):  # each checkpoint evaluated on its own, by the CLI
        assert cli(["evaluate", str(out / f"{name}.pt"), "--json", str(tmp_path / f"{name}.json")]) == 0
        ev[name] = json.loads((tmp_path / f"{name}.json").read_text())
    capsys.readouterr()
    assert ev["best"] != ev["last"]                            # the choice matters here
    assert {k: res["test"][k] for k in ev["best"]} == pytest.approx(ev["best"])


@pytest.mark.parametrize("strategy", ["progressive", "summed"])
def test_resume_equals_uninterrupted(tmp_path, strategy, spy):
    full = train(cfg(tmp_path, "full", strategy=strategy, epochs=3, crop=strategy == "progressive"))
    part = train(cfg(tmp_path, "part", strategy=strategy, epochs=3, crop=strategy == "progressive"), stop_after_epoch=1)
    assert part["interrupted"] and len(part["history"]) == 1
    with pytest.raises(FileExistsError, match="--resume"):
        train(cfg(tmp_path, "part", strategy=strategy, epochs=3))
    rows = (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in rows] == [1]
    spy["items"].clear(), spy["loaded"].clear()
    resumed = train(cfg(tmp_path, "part", strategy=strategy, epochs=3, resume=True, crop=strategy == "progressive"))
    # the resumed process continued: it trained epochs 2 and 3 only (3 batches of 6 each),
    # from the interrupted run's optimizer and scheduler state
    assert spy["items"] == [1] * 18 + [2] * 18
    assert spy["loaded"] == ["optimizer", "scheduler"]
    a = load_checkpoint(tmp_path / "full" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "part" / "last.pt")["model"]
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert [r["loss_head0"] for r in full["history"]] == [r["loss_head0"] for r in resumed["history"]]


def test_resume_refuses_changed_options(tmp_path):
    train(cfg(tmp_path, epochs=2), stop_after_epoch=1)
    with pytest.raises(ConfigError, match=f"lr: checkpoint {TrainConfig().lr} vs now 0.5"):
        train(cfg(tmp_path, epochs=2, lr=0.5, resume=True))
    # a run written before an option existed resumes: the missing option had its default;
    # a run that stopped on a bad image may go on skipping such images
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    for newer in ("on_error", "verify_data"):
        del state["config"][newer]
    torch.save(state, tmp_path / "run" / "last.pt")
    assert not train(cfg(tmp_path, epochs=2, resume=True, on_error="skip", verify_data=True))["interrupted"]


def test_nan_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    import fgnb.strategies as strategies

    calls = {"n": 0}
    real = strategies.F

    class PoisonedF:  # the loss turns NaN after epoch 1 (3 batches x 3 stages)
        @staticmethod
        def cross_entropy(logits, y, **kw):
            calls["n"] += 1
            loss = real.cross_entropy(logits, y, **kw)
            return loss * float("nan") if calls["n"] > 9 else loss

    monkeypatch.setattr(strategies, "F", PoisonedF)
    with pytest.raises(FloatingPointError, match="diverged"):
        train(cfg(tmp_path, epochs=3))
    run = tmp_path / "run"
    state = load_checkpoint(run / "last.pt")
    assert state["epoch"] == 0 and all(torch.isfinite(v).all() for v in state["model"].values())
    assert not [p for p in run.iterdir() if p.name.startswith(".")]  # no temp files left


def test_config_errors():
    with pytest.raises(ConfigError, match="strategy='sum' is not valid: choose one of last, summed, progressive"):
        TrainConfig(strategy="sum")
    with pytest.raises(ConfigError, match="img_size=60 is not divisible by patch_size=8"):
        TrainConfig(img_size=60, patch_size=8, weights=None)
    with pytest.raises(ConfigError, match="weights='fgnb:synthetic' is the pre-trained backbone of .* depth=12"):
        TrainConfig(depth=12)
    with pytest.raises(ConfigError, match="choose one"):
        TrainConfig(pretrained=True)
    from fgnb.pretrained import build_model
    with pytest.raises(ValueError, match="multiple of 4"):  # the default plain ViT: 4 x 4 pixel patches
        build_model(TrainConfig(img_size=62, weights=None), 3)
    from fgnb.config import SYNTHETIC_ARCH
    with pytest.raises(ValueError, match="multiple of 8"):  # the hybrid: stem stride 4 x patch 2
        build_model(TrainConfig(**SYNTHETIC_ARCH, img_size=60, weights=None), 3)
    with pytest.raises(ConfigError, match="unknown option"):
        TrainConfig().replace(learning_rate=1)
    assert warmup_cosine(0, 100, 10) == pytest.approx(0.1) and warmup_cosine(100, 100, 10) == pytest.approx(0.0)


def test_cli_help_and_errors(capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        cli(["train", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for opt in ("--strategy", "--crop-attention", "--box-rule", "--resume", "--amp"):
        assert opt in text
    assert "(default: 'progressive'; choices: last, summed, progressive)" in " ".join(text.split())
    assert cli(["train", "--strategy", "sum", "--out", str(tmp_path / "x")]) == 2
    assert "choose one of last, summed, progressive" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("strategy: summed\nlearning_rate: 3\n")
    assert cli(["train", "--config", str(bad)]) == 2
    assert "unknown option(s) ['learning_rate']" in capsys.readouterr().err


def test_cli_train_evaluate_predict(tmp_path, capsys):
    y = tmp_path / "c.yaml"
    y.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in {**TINY, "epochs": 1}.items()))
    out = tmp_path / "cli"
    assert cli(["train", "--config", str(y), "--out", str(out), "--strategy", "summed"]) == 0
    capsys.readouterr()
    _, c, state = load_model(out / "best.pt")
    assert c.strategy == "summed" and c.epochs == 1
    assert cli(["evaluate", str(out / "best.pt"), "--json", str(tmp_path / "e.json")]) == 0
    ev = json.loads((tmp_path / "e.json").read_text())
    saved = json.loads((out / "test_metrics.json").read_text())
    assert ev == pytest.approx({k: saved[k] for k in ev})  # the same numbers as the run's test read
    from fgnb.synthetic import ensure_synthetic

    root = ensure_synthetic(num_classes=3, train_per_class=8, test_per_class=4)
    img = sorted((root / "images").rglob("*.jpg"))[0]
    assert cli(["predict", str(out / "best.pt"), str(img), "--top-k", "2", "--out-dir", str(tmp_path / "pred")]) == 0
    text = capsys.readouterr().out
    assert "overlay:" in text and (tmp_path / "pred" / (img.stem + ".attention.png")).is_file()


def test_a_cli_run_validates_its_options_once(tmp_path, monkeypatch, capsys):
    y = tmp_path / "c.yaml"
    y.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in {**TINY, "epochs": 1, "limit_batches": 1}.items()))
    calls, real = [], TrainConfig.validate
    monkeypatch.setattr(TrainConfig, "validate", lambda self: (calls.append(self.out), real(self))[1])
    assert cli(["train", "--config", str(y), "--out", str(tmp_path / "cli"), "--strategy", "last"]) == 0
    assert calls == [str(tmp_path / "cli")]  # the file's options and the flags' made into one config, checked once


def test_an_option_set_after_the_config_was_made_is_still_checked(tmp_path):
    c = cfg(tmp_path, epochs=1)
    c.batch_size = 0  # a dataclass: nothing stops this, but train() validates it again
    with pytest.raises(ConfigError, match="batch_size must be > 0"):
        train(c)


def test_checkpoint_class_mismatch_is_explained(tmp_path):
    train(cfg(tmp_path, epochs=1))
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    state["num_classes"] = 5
    torch.save(state, tmp_path / "wrong.pt")
    with pytest.raises(ValueError, match="heads have 3 classes but the model/data set has 5"):
        load_model(tmp_path / "wrong.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt is not a readable fgnb checkpoint"):
        load_model(tmp_path / "junk.pt")


def _damaged_copy(tmp_path, splits=("train", "val", "test")):
    """A copy of the tiny synthetic set (as dataset='cub') with one image of each split made unreadable."""
    import shutil

    from fgnb.data import CUBDataset
    from fgnb.synthetic import ensure_synthetic

    root = tmp_path / "cub"
    shutil.copytree(ensure_synthetic(num_classes=3, train_per_class=8, test_per_class=4), root)
    bad = []
    for split in splits:
        path = CUBDataset(root, split, val_fraction=TINY["val_fraction"]).samples[2][0]
        pathlib.Path(path).write_bytes(b"\xff\xd8 not really a jpeg")
        bad.append(path)
    return root, sorted(bad)


@pytest.mark.parametrize("workers", [0, 2])
def test_skipped_files_are_reported_whatever_the_workers(tmp_path, workers):
    root, bad = _damaged_copy(tmp_path)
    res = train(cfg(tmp_path, dataset="cub", data_root=str(root), on_error="skip", workers=workers, epochs=2))
    out = tmp_path / "run"
    assert res["skipped"] == bad
    assert [r["skipped_images"] for r in res["history"]] == [2, 2]        # train + val after each epoch
    assert json.loads((out / "test_metrics.json").read_text())["skipped_images"] == 3
    assert sorted((out / "skipped.txt").read_text().split("\n")[:-1]) == bad


def test_verify_data_checks_every_image_before_training(tmp_path, capsys):
    root, bad = _damaged_copy(tmp_path, ("test",))
    with pytest.raises(OSError, match=r"(?s)1 of 12 images of CUBDataset \(split test\) cannot be read.*" + pathlib.Path(bad[0]).name):
        train(cfg(tmp_path, "strict", dataset="cub", data_root=str(root), verify_data=True))
    assert not (tmp_path / "strict" / "last.pt").exists()              # stopped before the first epoch
    res = train(cfg(tmp_path, dataset="cub", data_root=str(root), on_error="skip", verify_data=True, epochs=1))
    assert res["skipped"] == bad and res["test"]["n"] == 11 and res["test"]["skipped_images"] == 1
    assert "1 unreadable image skipped" in capsys.readouterr().out


def test_corrupt_and_foreign_checkpoints(tmp_path):
    from fgnb.pretrained import build_model

    train(cfg(tmp_path, epochs=1))
    good = tmp_path / "run" / "last.pt"
    state = load_checkpoint(good)

    def bad(name, match, error=ValueError, **changes):
        path = tmp_path / name
        if isinstance(changes.get("raw"), bytes):
            path.write_bytes(changes["raw"])
        else:
            torch.save(changes.get("whole", {**state, **changes}), path)
        with pytest.raises(error, match=match):
            load_model(path)

    raw = good.read_bytes()
    bad("truncated.pt", r"truncated.pt is not a readable fgnb checkpoint \(truncated or corrupt", raw=raw[: len(raw) // 2])
    bad("empty.pt", r"empty.pt is not a readable", raw=b"")
    deeper = build_model(cfg(tmp_path).replace(depth=4), 3).state_dict()
    bad("deeper.pt", r"deeper.pt: the weights do not fit the model its options describe .*unexpected.*blocks\.3\.",
        model=deeper)
    wider = build_model(cfg(tmp_path).replace(embed_dim=64, num_heads=2), 3).state_dict()
    bad("wider.pt", r"wider.pt: the weights do not fit .*shape.*cls_token: checkpoint \(1, 1, 64\) vs model \(1, 1, 192\)",
        model=wider)
    bad("bare.pt", r"bare.pt is a bare state dict \(\d+ tensors\), not an fgnb checkpoint.*weights=",
        whole=state["model"])
    bad("list.pt", r"list.pt holds a list, not an fgnb checkpoint", whole=[1, 2])
    bad("nocls.pt", r"nocls.pt is not an fgnb checkpoint: it lacks \['num_classes'\]",
        whole={k: v for k, v in state.items() if k != "num_classes"})
    bad("future.pt", r"future.pt was written by a newer fgnb \(checkpoint version 99", version=99)
    bad("badopt.pt", r"badopt.pt: .*lr must be > 0", error=ConfigError, config={**state["config"], "lr": -1.0})
    bad("unknown.pt", r"unknown.pt: unknown option\(s\) \['zoom'\]", error=ConfigError, config={**state["config"], "zoom": 2})
    # --resume reads last.pt: a damaged one is named, and so is a changed option
    good.write_bytes(raw[:1000])
    with pytest.raises(ValueError, match=r"last.pt is not a readable fgnb checkpoint"):
        train(cfg(tmp_path, epochs=2, resume=True))
    torch.save({k: v for k, v in state.items() if k != "optimizer"}, good)
    with pytest.raises(ValueError, match=r"last.pt cannot be resumed: it lacks \['optimizer'\]"):
        train(cfg(tmp_path, epochs=2, resume=True))
    torch.save(state, good)
    with pytest.raises(ConfigError, match=r"depth: checkpoint 3 vs now 4"):
        train(cfg(tmp_path, epochs=2, depth=4, resume=True))


@pytest.mark.parametrize("name", ["vit_tiny_patch16_224", "deit_tiny_patch16_224", "vit_base_patch16_224.orig_in21k"])
def test_normalisation_is_the_weights_own(name):
    from fgnb.model import create_model
    from fgnb.loaders import normalisation

    dc = create_model(name, num_classes=2, img_size=32, patch_size=8, depth=1, targets=1).data_config()
    assert normalisation(name) == (tuple(dc["mean"]), tuple(dc["std"]))
    with pytest.raises(ValueError, match="unknown timm model name"):
        normalisation("vit_tinyy")


def test_default_workers_rule():
    """workers=None: 1 loader process on a CPU with 2+ cores (the step already uses every core),
    min(4, cores - 1) beside a GPU, the cores shared by the processes of one machine."""
    assert [default_workers("cpu", c) for c in (1, 2, 16)] == [0, 1, 1]
    assert [default_workers("cuda", c) for c in (1, 2, 3, 5, 16, 64)] == [0, 1, 2, 4, 4, 4]
    assert default_workers("mps", 8) == 4
    assert default_workers("cuda", 16, processes=8) == 1 and default_workers("cuda", 16, processes=2) == 4
    assert default_workers("cpu", 4, processes=4) == 0
    assert isinstance(default_workers("cpu"), int)  # this machine's affinity


@pytest.mark.real_default_workers
@pytest.mark.parametrize("workers", [None, 0])
def test_every_loader_gets_the_resolved_worker_count(tmp_path, monkeypatch, workers):
    monkeypatch.setattr(importlib.import_module("fgnb.devices"), "default_workers", lambda device_type, cores=None, processes=1: 2)
    seen = []
    real = torch.utils.data.DataLoader.__init__

    def spy(self, *a, **k):
        seen.append(k.get("num_workers", 0))
        real(self, *a, **k)

    monkeypatch.setattr(torch.utils.data.DataLoader, "__init__", spy)
    train(cfg(tmp_path, epochs=1, limit_batches=1, workers=workers))
    assert len(seen) >= 3 and set(seen) == {2 if workers is None else 0}  # train, val and test loaders
    assert load_config(tmp_path / "run" / "config.yaml").workers == workers  # the option as given, not the count


def test_the_numbers_do_not_depend_on_the_worker_count(tmp_path):
    """Why workers may default to what the machine has: every image's augmentation is seeded by
    (seed, epoch, index), so 0 and 2 loader processes give bit-equal weights and metrics."""
    runs = {w: train(cfg(tmp_path, f"w{w}", strategy="progressive", crop=True, workers=w)) for w in (0, 2)}
    assert runs[0]["test"] == runs[2]["test"]
    assert [{k: v for k, v in h.items() if "time" not in k and "per_s" not in k} for h in runs[0]["history"]] == \
        [{k: v for k, v in h.items() if "time" not in k and "per_s" not in k} for h in runs[2]["history"]]
    a, b = (load_checkpoint(tmp_path / f"w{w}" / "last.pt")["model"] for w in (0, 2))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
