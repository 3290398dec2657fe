"""TrainConfig refuses every bad value with a ConfigError that names the option (a seeded fuzz)."""
import dataclasses
import math
import random

import pytest

from fgnb.config import ConfigError, TrainConfig

#: a valid starting point that names the architecture (so depth-dependent checks apply)
BASE = dict(model="vit_tiny_patch16_224", weights=None, embed_dim=None, num_heads=None, img_size=32, patch_size=8,
            depth=4, targets=3, batch_size=4, epochs=1, progress=False)

NAN, INF = float("nan"), float("inf")
POSITIVE_INT = [0, -1, -64, 2.5, True, "many", NAN]
NON_NEGATIVE_INT = [-1, -7, 1.5, False, "x", INF]
POSITIVE_FLOAT = [0.0, -1e-3, NAN, INF, -INF, "fast", True]
NON_NEGATIVE_FLOAT = [-0.1, NAN, INF, "none at all", False]
FRACTION = [-0.1, 1.0, 1.5, NAN, INF, "half"]
BOOL = ["yes", "no", 1, 0, None, 2.0]
# Values each option must refuse. Options without an entry are strings with choices:
# they get random unknown strings, wrong types and None.
BAD = {
    "data_root": ["", 3, True],
    "val_fraction": FRACTION,
    "split_seed": NON_NEGATIVE_INT + [2**32, None],
    "source_size": POSITIVE_INT,
    "resize_size": POSITIVE_INT + [16],                   # smaller than img_size
    "synthetic_classes": POSITIVE_INT + [31],             # 30 species exist
    "synthetic_train_per_class": POSITIVE_INT,
    "synthetic_test_per_class": POSITIVE_INT,
    "synthetic_difficulty": NON_NEGATIVE_FLOAT,
    "synthetic_first_class": NON_NEGATIVE_INT + [30],
    "model": ["vit_nonexistent_1", "", 7, None],
    "img_size": POSITIVE_INT + [36, None],                 # 36: not a multiple of the patch (8)
    "patch_size": POSITIVE_INT + [5],                      # 32 is not a multiple of 5
    "depth": POSITIVE_INT + [2],                           # 2 < targets=3
    "embed_dim": POSITIVE_INT,
    "num_heads": POSITIVE_INT,
    "pretrained": BOOL,
    "weights": [3, True, ""],
    "targets": [0, -1, 5, True, [], [0, 0], [4], [-5], [1.5], "last", 2.5, None],  # depth 4
    "head_hidden": POSITIVE_INT,
    "reforward": BOOL,
    "crop": BOOL,
    "threshold_scale": POSITIVE_FLOAT,
    "min_crop": NON_NEGATIVE_INT,
    "crop_block": NON_NEGATIVE_INT + [4],                 # depth 4: blocks 0..3
    "crop_weight": [-0.1, 1.5, NAN, INF, "half", None],
    "crop_margin": [-0.1, 4.5, NAN, INF, "wide", None],
    "crop_warmup_epochs": NON_NEGATIVE_INT + [None],
    "steps_per_batch": POSITIVE_INT + [None],
    "epochs": POSITIVE_INT + [None],
    "batch_size": POSITIVE_INT + [None, "big", "Auto"],  # "auto" is the one word it takes
    "lr_batch": POSITIVE_INT,
    "lr": POSITIVE_FLOAT + [None],
    "momentum": FRACTION,
    "weight_decay": NON_NEGATIVE_FLOAT,
    "warmup_epochs": NON_NEGATIVE_FLOAT,
    "clip_grad": POSITIVE_FLOAT,
    "label_smoothing": FRACTION,
    "device": ["gpu0", "", 1, None],
    "seed": NON_NEGATIVE_INT + [2**32, None],
    "workers": NON_NEGATIVE_INT,
    "limit_batches": POSITIVE_INT,
    "out": ["", 5, None],
    "resume": BOOL,
    "progress": BOOL,
    "verify_data": BOOL,
    "download": BOOL,
    "checkpoint_minutes": NON_NEGATIVE_FLOAT,
    "select_by": ["best", "LAST", "", 3, 1.5],  # a choice whose None is valid: derived from crop
}
FIELDS = [f.name for f in dataclasses.fields(TrainConfig)]


def bad_values(name: str, rng: random.Random) -> list:
    if name in BAD:
        return BAD[name]
    word = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz_") for _ in range(rng.randint(1, 12)))
    return [word, word.upper(), "", 3, None, 1.5]


def test_every_option_is_fuzzed():
    choice_options = {f.name for f in dataclasses.fields(TrainConfig) if f.metadata.get("choices")}
    assert set(FIELDS) - choice_options <= set(BAD)       # a new option needs its bad values here


def test_base_is_valid():
    TrainConfig(**BASE)


@pytest.mark.parametrize("name", FIELDS)
def test_each_bad_value_names_its_option(name):
    rng = random.Random(f"fgnb-{name}")
    for value in bad_values(name, rng):
        with pytest.raises(ConfigError) as e:
            TrainConfig(**{**BASE, name: value})
        assert name in str(e.value), (name, value, str(e.value))


def test_random_combinations_name_a_changed_option():
    """Two or three options made bad at once: the error names one of them."""
    rng = random.Random(14)
    for _ in range(120):
        names = rng.sample(FIELDS, rng.randint(2, 3))
        changes = {n: rng.choice(bad_values(n, rng)) for n in names}
        with pytest.raises(ConfigError) as e:
            TrainConfig(**{**BASE, **changes})
        assert any(n in str(e.value) for n in names), (changes, str(e.value))


def test_numbers_from_text_are_read_and_checked():
    """YAML files and flags may give numbers as text: 'nan' and 'inf' are refused too."""
    assert TrainConfig(**{**BASE, "lr": "3e-4"}).lr == 3e-4
    for text in ("nan", "inf", "-1e-3"):
        with pytest.raises(ConfigError, match="lr"):
            TrainConfig(**{**BASE, "lr": text})
    with pytest.raises(ConfigError, match=r"unknown option.*learning_rate"):
        TrainConfig(**BASE).replace(learning_rate=1e-3)


def test_seeds_up_to_the_limit_train_items():
    """The largest valid seed still seeds every item (no overflow inside torch)."""
    import torch

    from fgnb.loaders import SeededItems

    class Items(torch.utils.data.Dataset):
        def __len__(self):
            return 3

        def __getitem__(self, i):
            return float(torch.rand(1))

    seed = 2**32 - 1
    assert TrainConfig(**{**BASE, "seed": seed}).seed == seed
    items = SeededItems(Items(), seed)
    items.epoch = 10**6
    assert len({items[i] for i in range(3)}) == 3 and not math.isnan(items[2])


def test_what_only_the_run_can_check_is_named(tmp_path):
    """Values that need the data or the model: an empty data folder, more targets than
    the model's own depth. Clear errors naming the folder / option, not torch's."""
    from fgnb.pretrained import build_model
    from fgnb.train import train

    (tmp_path / "empty").mkdir()
    run = {**BASE, "dataset": "folder", "data_root": str(tmp_path / "empty"), "out": str(tmp_path / "run")}
    with pytest.raises(ValueError, match=r"no class folders in .*empty.*expected ROOT/train"):
        train(TrainConfig(**run))
    with pytest.raises(FileNotFoundError, match="image folder not found: .*nowhere"):
        train(TrainConfig(**{**run, "data_root": str(tmp_path / "nowhere")}))
    assert not (tmp_path / "run" / "last.pt").exists()
    with pytest.raises(ValueError, match=r"targets=13: a ViT with 12 blocks"):
        build_model(TrainConfig(**{**BASE, "depth": None, "targets": 13}), 3)


def test_option_differences_resolve_the_sizes_derived_from_the_input():
    """A run saved with ``source_size: null`` at 64 px is the run asked for with 256 (the
    default's value), not at 96 px; an option missing from the saved file counts as its default."""
    from fgnb.config import TrainConfig, option_differences

    saved = {"img_size": 64, "source_size": None, "resize_size": None, "lr": 1e-3}
    same = {"img_size": 64, "source_size": 256, "resize_size": 73, "lr": 1e-3}
    assert option_differences(saved, same) == {}
    assert option_differences(same, {**saved}) == {}
    assert option_differences(saved, {**same, "img_size": 96, "source_size": 256}) == {"img_size": (64, 96)}
    assert option_differences(saved, {**same, "source_size": 128}) == {"source_size": (None, 128)}
    assert option_differences(saved, {**same, "resize_size": 80}) == {"resize_size": (None, 80)}
    # the saved value is reported as saved; a missing option is its default
    assert option_differences({"img_size": 64}, {"img_size": 64, "crop_weight": TrainConfig().crop_weight}) == {}
    assert option_differences({"img_size": 64}, {"img_size": 64, "crop_weight": 1.0}) == \
        {"crop_weight": (TrainConfig().crop_weight, 1.0)}


def test_each_option_has_one_role_and_the_role_drives_resume_help_and_studies(monkeypatch):
    import pathlib
    import re

    from fgnb.checkpoints import RESUMABLE
    from fgnb.cli import build_parser
    from fgnb.config import ROLES, options_tagged

    names = [f.name for f in dataclasses.fields(TrainConfig)]
    tagged = [n for role in ROLES for n in options_tagged(role)]
    assert sorted(tagged) == sorted(names)  # every option, once
    assert options_tagged("experiment") == {"crop_update", "crop_weight", "crop_warmup_epochs", "steps_per_batch",
                                            "select_by", "order", "reforward"}
    # what a resume may change is the set-up, and nothing else
    assert RESUMABLE == options_tagged("setup") and {"out", "resume", "device", "workers"} <= RESUMABLE
    # --help lists the experiment options, and only them, under their own heading
    train_help = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    section = train_help.split("experiment options")[1].split("\n\n")[0]
    assert set(re.findall(r"--([a-z-]+) ", section)) == {n.replace("_", "-") for n in options_tagged("experiment")}
    # a study records a run's options without its set-up, and reuses a finished run whose set-up differs
    monkeypatch.syspath_prepend(str(pathlib.Path(__file__).resolve().parents[1] / "bench"))
    import ablation

    assert set(ablation.run_options(TrainConfig().to_dict())) == set(names) - options_tagged("setup")


def test_a_saved_config_without_an_option_ran_with_its_value_when_added_not_todays_default():
    from fgnb.config import WHEN_ADDED, option_differences
    now = TrainConfig().to_dict()
    # today's defaults moved (issue 28); a config saved before crop_margin existed had no margin
    assert now["crop_margin"] != WHEN_ADDED["crop_margin"]
    old = {k: v for k, v in now.items() if k not in WHEN_ADDED}
    diff = option_differences(old, now)
    assert set(diff) == {k for k in WHEN_ADDED if WHEN_ADDED[k] != (now[k] if k != "select_by" else "last")}
    assert diff["crop_margin"] == (0.0, now["crop_margin"])
    literal = {**now, **WHEN_ADDED}
    assert not option_differences(old, literal)


def test_select_by_none_chooses_the_crop_mode_exactly_when_the_run_trains_on_crops():
    from fgnb.config import option_differences
    from fgnb.evaluation import selection_mode
    assert selection_mode(TrainConfig()) == "last"
    assert selection_mode(TrainConfig(crop=True)) == "crop"
    assert selection_mode(TrainConfig(crop=True, select_by="mean")) == "mean"
    plain, crop = TrainConfig().to_dict(), TrainConfig(crop=True).to_dict()
    # None is compared by what it resolves to
    assert not option_differences({**plain, "select_by": "last"}, plain)
    assert option_differences({**crop, "select_by": "last"}, crop) == {"select_by": ("last", None)}
    assert not option_differences({**crop, "select_by": "crop"}, crop)
