"""Exported backbones are plain timm weights; the shipped CPU backbone matches its recipe."""
import dataclasses
import os

import pytest

import timm
import torch

from fgnb import pretrained, synthetic
from fgnb.config import load_config
from fgnb.model import create_model
from fgnb.pretrained import SYNTHETIC_RECIPE, SYNTHETIC_WEIGHTS, export_backbone, read_metadata, recipe_commands
from fgnb.pretrained import build_model

HYB = dict(img_size=32, patch_size=2, depth=3, embed_dim=48, num_heads=3)


def assert_same_weights(ref: dict, *others: dict, skip=()) -> None:
    """Every state dict in ``others`` has ``ref``'s keys and, except ``skip``, its exact tensors."""
    for other in others:
        assert other.keys() == ref.keys()
        for k in ref:
            if k not in skip:
                torch.testing.assert_close(other[k], ref[k], rtol=0, atol=0)


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
                          pretrained_cfg_overlay=dict(file=str(path), custom_load=False), **HYB)
    assert_same_weights(m.vit.state_dict(), m2.vit.state_dict(), t.state_dict())
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(t.eval().forward_features(x), m.eval().vit.forward_features(x))


def test_local_weights_never_go_through_timms_npz_loader(tmp_path, monkeypatch):
    """Hybrid ViT configs say custom_load=True (their hub weights are JAX .npz). timm 1.0.29
    then hands a local file to ``VisionTransformer.load_pretrained``, whose .npz reader
    refuses a state dict: seen on the device check's GPU machine. fgnb's local weights must
    take timm's state-dict path on every timm version, so that reader is made to fail here."""
    import timm.models.vision_transformer as tvit

    torch.manual_seed(0)
    m = create_model("vit_tiny_r_s16_p8_224", num_classes=5, **HYB)
    path = export_backbone(m, tmp_path / "w.safetensors")

    def npz_only(self, checkpoint_path, prefix=""):
        raise ValueError(f"expected an original JAX/Flax NumPy .npz checkpoint, could not read {checkpoint_path}")

    monkeypatch.setattr(tvit.VisionTransformer, "load_pretrained", npz_only)
    # timm >= 1.0.31 resets custom_load when an overlay names a file; older timm keeps the
    # config's True. Emptying the keys that trigger the reset makes any timm behave like 1.0.29.
    monkeypatch.setattr(timm.models._builder, "_PRETRAINED_SOURCE_KEYS", (), raising=False)
    m2 = create_model("vit_tiny_r_s16_p8_224", num_classes=3, weights=path, **HYB)
    assert_same_weights(m.vit.state_dict(), m2.vit.state_dict())


def test_export_errors(tmp_path):
    m = create_model("vit_tiny_r_s16_p8_224", num_classes=2, **HYB)
    with pytest.raises(ValueError, match="safetensors"):
        export_backbone(m, tmp_path / "w.pth")
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        read_metadata(tmp_path / "nope.safetensors")


BACKBONES = {"hybrid": (pretrained.SYNTHETIC_WEIGHTS, pretrained.SYNTHETIC_RECIPE),
             "plain_vit": (pretrained.SYNTHETIC_VIT_WEIGHTS, pretrained.SYNTHETIC_VIT_RECIPE)}


@pytest.mark.parametrize("which", list(BACKBONES))
def test_shipped_weights_match_their_recipe_and_load(which):
    """The committed file was trained by the committed recipe, on this generator version,
    and loads key for key into its model. The hybrid ships; the plain ViT's file is checked
    as soon as it ships (until then only its recipe is)."""
    weights, recipe_path = BACKBONES[which]
    assert recipe_path.is_file()
    recipe = load_config(recipe_path).to_dict()
    # the architecture the config checks `fgnb:synthetic` against is the recipe's
    from fgnb.config import SYNTHETIC_ARCH, SYNTHETIC_VIT_ARCH
    arch = {"hybrid": SYNTHETIC_ARCH, "plain_vit": SYNTHETIC_VIT_ARCH}[which]
    assert arch == {k: recipe[k] for k in arch}
    assert [(a, w, r) for a, w, r in pretrained.synthetic_backbones() if r == recipe_path] == [(arch, weights, recipe_path)]
    # pre-trained on species the default set does not hold
    first = recipe["synthetic_first_class"]
    assert first >= synthetic.DEFAULTS["num_classes"] + synthetic.DEFAULTS["first_class"]
    # the recipe's own commands write the file fgnb looks for
    assert recipe_commands(recipe_path)[-1].endswith(" " + weights.relative_to(weights.parents[2]).as_posix())
    if which != "hybrid" and not weights.is_file():
        pytest.skip(f"{weights.name} has not shipped yet (made by {recipe_path.name}); its recipe is checked above")
    assert weights.is_file()
    meta = read_metadata(weights)
    assert meta["generator_version"] == synthetic.GENERATOR_VERSION
    used = dict(meta["config"])
    # where it was written and how it printed are not the recipe; options added since
    # it was trained (absent from its metadata) had their defaults
    from fgnb.config import option_differences
    assert not option_differences(used, recipe, ignore={"out", "progress"})
    assert set(used) <= set(recipe)
    cfg = dataclasses.replace(load_config(recipe_path), weights="fgnb:synthetic")
    assert pretrained.synthetic_weights(cfg) == str(weights)
    model = build_model(cfg, num_classes=10)
    from safetensors.torch import load_file

    assert_same_weights(load_file(str(weights)), model.vit.state_dict())


def test_docstring_states_each_recipes_commands():
    """fgnb/pretrained.py's docstring shows the commands each recipe's header states."""
    for weights, recipe in BACKBONES.values():
        commands = recipe_commands(recipe)
        assert len(commands) == 2 and f" --config {recipe.relative_to(recipe.parents[2]).as_posix()} " in commands[0]
        out = commands[0].split(" --out ")[1]
        assert commands[1].startswith(f"python -m fgnb export {out}/best.pt ")  # the run the first command made
        for c in commands:
            assert c in pretrained.__doc__, c


def test_synthetic_weights_picks_the_file_of_the_models_architecture(tmp_path, monkeypatch):
    from fgnb.config import SYNTHETIC_ARCH, SYNTHETIC_VIT_ARCH, ConfigError, TrainConfig

    # the default model (the plain ViT) gets the shipped plain-ViT file, the hybrid its own
    assert pretrained.synthetic_weights(TrainConfig()) == str(pretrained.SYNTHETIC_VIT_WEIGHTS)
    assert pretrained.synthetic_weights() == str(pretrained.SYNTHETIC_VIT_WEIGHTS)
    assert pretrained.synthetic_weights(TrainConfig(**SYNTHETIC_ARCH)) == str(SYNTHETIC_WEIGHTS)
    # the plain ViT without its file: a FileNotFoundError naming the recipe and its commands
    missing = tmp_path / "vit_tiny_patch4_64_synthetic.safetensors"
    monkeypatch.setattr(pretrained, "SYNTHETIC_VIT_WEIGHTS", missing)
    vit_cfg = TrainConfig(**SYNTHETIC_VIT_ARCH, weights="fgnb:synthetic")
    with pytest.raises(FileNotFoundError) as e:
        pretrained.synthetic_weights(vit_cfg)
    msg = str(e.value)
    assert str(missing) in msg and "pretrain_synthetic_vit.yaml" in msg
    for c in recipe_commands(pretrained.SYNTHETIC_VIT_RECIPE):
        assert c in msg
    with pytest.raises(FileNotFoundError, match="pretrain_synthetic_vit.yaml"):
        build_model(vit_cfg, num_classes=3)
    # an architecture nothing ships: refused by the config, and by the chooser
    with pytest.raises(ConfigError, match="patch_size=8"):
        TrainConfig(**{**SYNTHETIC_VIT_ARCH, "patch_size": 8}, weights="fgnb:synthetic")
    with pytest.raises(ValueError, match="no shipped synthetic backbone"):
        pretrained.synthetic_weights({**SYNTHETIC_VIT_ARCH, "embed_dim": 192})


def test_plain_vit_file_is_chosen_and_loads_unchanged_in_fgnb_and_timm(tmp_path, monkeypatch):
    """Once the plain ViT's file exists, `fgnb:synthetic` picks it for that model, and it is a
    plain timm checkpoint (here one exported from an untrained model of that architecture)."""
    from fgnb.config import SYNTHETIC_ARCH, SYNTHETIC_VIT_ARCH, TrainConfig

    torch.manual_seed(0)
    arch = dict(SYNTHETIC_VIT_ARCH)
    name = arch.pop("model")
    src = create_model(name, num_classes=4, img_size=64, **arch)
    path = export_backbone(src, tmp_path / "vit.safetensors", {"generator_version": synthetic.GENERATOR_VERSION})
    monkeypatch.setattr(pretrained, "SYNTHETIC_VIT_WEIGHTS", path)
    cfg = TrainConfig(**SYNTHETIC_VIT_ARCH, img_size=64, weights="fgnb:synthetic")
    assert pretrained.synthetic_weights(cfg) == str(path)
    model = build_model(cfg, num_classes=3)
    t = timm.create_model(name, pretrained=True, num_classes=0, img_size=64,
                          pretrained_cfg_overlay=dict(file=str(path), custom_load=False), **arch)
    assert_same_weights(src.vit.state_dict(), model.vit.state_dict(), t.state_dict())
    # the hybrid is not affected
    assert pretrained.synthetic_weights(TrainConfig(**SYNTHETIC_ARCH)) == str(SYNTHETIC_WEIGHTS)


@pytest.mark.parametrize("img_size", [32, 48, 96])
def test_the_64px_weights_load_at_other_input_sizes_with_a_resampled_position_embedding(img_size):
    """The sweep's points: the shipped 64 px hybrid at 32, 48 and 96 px. Every weight loads as
    saved except the position embedding, whose 8 x 8 grid is resampled (bicubic, antialiased) to
    the new token grid and whose CLS entry is kept."""
    from safetensors.torch import load_file

    from fgnb.config import SYNTHETIC_ARCH, TrainConfig

    saved = load_file(str(SYNTHETIC_WEIGHTS))
    model = build_model(TrainConfig(**SYNTHETIC_ARCH, img_size=img_size), num_classes=10)
    g = img_size // 8  # stem stride 4 x patch 2
    assert model.grid(img_size, img_size) == (g, g)
    got = model.vit.state_dict()
    assert_same_weights(saved, got, skip={"pos_embed"})
    pe = saved["pos_embed"]
    assert pe.shape == (1, 65, 96) and got["pos_embed"].shape == (1, 1 + g * g, 96)
    torch.testing.assert_close(got["pos_embed"][:, :1], pe[:, :1], rtol=0, atol=0)
    grid = pe[:, 1:].reshape(1, 8, 8, 96).permute(0, 3, 1, 2)
    want = torch.nn.functional.interpolate(grid, size=(g, g), mode="bicubic", antialias=True)
    torch.testing.assert_close(got["pos_embed"][:, 1:], want.permute(0, 2, 3, 1).reshape(1, g * g, 96))
    out = model.eval()(torch.zeros(2, 3, img_size, img_size), attn_layers="targets")
    assert out.grid == (g, g) and all(a.shape == (2, 3, g * g) for a in out.attn.values())


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
    for f in (SYNTHETIC_WEIGHTS, SYNTHETIC_RECIPE, pretrained.SYNTHETIC_VIT_RECIPE, pretrained.SYNTHETIC_VIT_WEIGHTS):
        rel = f.relative_to(root / "fgnb").as_posix()
        assert any(fnmatch.fnmatch(rel, p) for p in patterns), rel
