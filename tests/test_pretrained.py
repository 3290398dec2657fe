"""Exported backbones are plain timm weights; the shipped CPU backbone matches its recipe."""
import dataclasses
import os

import pytest

import timm
import torch

from fgnb import pretrained, synthetic
from fgnb.config import load_config
from fgnb.model import create_model
from fgnb.pretrained import SYNTHETIC_RECIPE, SYNTHETIC_WEIGHTS, export_backbone, read_metadata
from fgnb.train import build_model

HYB = dict(img_size=32, patch_size=2, depth=3, embed_dim=48, num_heads=3)


def test_export_round_trip_through_fgnb_and_timm(tmp_path):
    torch.manual_seed(0)
    m = create_model("vit_tiny_r_s16_p8_224", num_classes=5, **HYB)
    path = export_backbone(m, tmp_path / "w.safetensors", {"note": "round trip", "acc": 0.5})
    assert read_metadata(path) == {"note": "round trip", "acc": 0.5}
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask  # a normal file, not mkstemp's 0600
    # fgnb: another class count, same backbone
    m2 = create_model("vit_tiny_r_s16_p8_224", num_classes=3, weights=path, **HYB)
    # timm alone, no fgnb involved
    t = timm.create_model("vit_tiny_r_s16_p8_224", pretrained=True, num_classes=0,
                          pretrained_cfg_overlay=dict(file=str(path)), **HYB)
    ref = m.vit.state_dict()
    for other in (m2.vit.state_dict(), t.state_dict()):
        assert other.keys() == ref.keys()
        for k in ref:
            torch.testing.assert_close(other[k], ref[k], rtol=0, atol=0)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(t.eval().forward_features(x), m.eval().vit.forward_features(x))


def test_export_errors(tmp_path):
    m = create_model("vit_tiny_r_s16_p8_224", num_classes=2, **HYB)
    with pytest.raises(ValueError, match="safetensors"):
        export_backbone(m, tmp_path / "w.pth")
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        read_metadata(tmp_path / "nope.safetensors")


def test_shipped_weights_match_their_recipe_and_load():
    """The committed file was trained by the committed recipe, on this generator version,
    and loads key for key into the CPU profile's model."""
    assert SYNTHETIC_WEIGHTS.is_file() and SYNTHETIC_RECIPE.is_file()
    meta = read_metadata(SYNTHETIC_WEIGHTS)
    assert meta["generator_version"] == synthetic.GENERATOR_VERSION
    recipe = load_config(SYNTHETIC_RECIPE).to_dict()
    used = dict(meta["config"])
    # where it was written and how it printed are not the recipe; options added since
    # it was trained (absent from its metadata) had their defaults
    from fgnb.config import option_differences
    assert not option_differences(used, recipe, ignore={"out", "progress"})
    assert set(used) <= set(recipe)
    # the architecture the config checks `fgnb:synthetic` against is the recipe's
    from fgnb.config import SYNTHETIC_ARCH
    assert SYNTHETIC_ARCH == {k: recipe[k] for k in SYNTHETIC_ARCH}
    # pre-trained on species the default set does not hold
    first = recipe["synthetic_first_class"]
    assert first >= synthetic.DEFAULTS["num_classes"] + synthetic.DEFAULTS["first_class"]
    cfg = load_config(SYNTHETIC_RECIPE)
    cfg = dataclasses.replace(cfg, weights=pretrained.synthetic_weights())
    model = build_model(cfg, num_classes=10)
    from safetensors.torch import load_file

    saved = load_file(str(SYNTHETIC_WEIGHTS))
    got = model.vit.state_dict()
    assert saved.keys() == got.keys()
    for k in saved:
        torch.testing.assert_close(got[k], saved[k], rtol=0, atol=0)


def test_stale_weights_are_refused(monkeypatch):
    monkeypatch.setattr(synthetic, "GENERATOR_VERSION", synthetic.GENERATOR_VERSION + 1)
    with pytest.raises(RuntimeError, match="rebuild"):
        pretrained.synthetic_weights()


def test_weights_ship_in_the_package():
    """A wheel (Colab installs one from git) carries the weights and their recipe."""
    import fnmatch
    import pathlib
    import tomllib

    root = pathlib.Path(__file__).resolve().parents[1]
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["fgnb"]
    for f in (SYNTHETIC_WEIGHTS, SYNTHETIC_RECIPE):
        rel = f.relative_to(root / "fgnb").as_posix()
        assert any(fnmatch.fnmatch(rel, p) for p in patterns), rel
