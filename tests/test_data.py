"""Loaders and box-aware transforms: items, boxes, RGB, errors, splits."""
import math
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from fgnb import data
from fgnb.data import (CUBDataset, ImageFolderDataset, PairedTransform, build_dataset,
                       load_rgb, make_transform, stratified_split)
from fgnb.synthetic import generate

P = dict(num_classes=3, train_per_class=10, test_per_class=2, size=64, seed=0)


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("syn") / "set", **P)


# --- transforms --------------------------------------------------------------
def _rect_image(w, h, box, colour=(255, 0, 0)):
    a = np.zeros((h, w, 3), np.uint8)
    a[..., 1] = 60
    x0, y0, x1, y1 = box
    a[y0:y1, x0:x1] = colour
    return Image.fromarray(a)


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("size", [(200, 150), (97, 131)])
def test_box_mapping_exact(train, size):
    """A filled rectangle lands exactly where the mapped box says."""
    w, h = size
    box = (int(w * 0.3), int(h * 0.25), int(w * 0.7), int(h * 0.8))
    img = _rect_image(w, h, box)
    tf = PairedTransform(train, 48, 64, mean=(0, 0, 0), std=(1, 1, 1), source_size=96,
                         interpolation=Image.NEAREST)
    torch.manual_seed(0)
    flips = set()
    for _ in range(12):
        out = tf(img, {"box": box, "part_box": None})
        assert out["image"].shape == (3, 48, 48) and out["source"].shape == (3, 96, 96)
        assert torch.isnan(out["part_box"]).all()
        for key, S in (("image", 48), ("source", 96)):
            red = (out[key][0] > 0.5).numpy()
            b = out["box"] * S / 48
            ys, xs = np.nonzero(red)
            # the box is clipped to the view; the painted pixels fill it to within 1 px
            assert abs(xs.min() - b[0].item()) <= 1 and abs(xs.max() + 1 - b[2].item()) <= 1
            assert abs(ys.min() - b[1].item()) <= 1 and abs(ys.max() + 1 - b[3].item()) <= 1
        flips.add(bool(out["box"][0] > 48 - out["box"][2]))
    if train:
        assert flips == {True, False}  # both flips seen (box is left-of-centre)


def test_box_mapping_bilinear_interior():
    """With the default (bicubic) resampling pixels strictly inside the mapped
    box are the rectangle colour, pixels 2 px outside are not."""
    img = _rect_image(300, 240, (90, 60, 210, 180))
    tf = make_transform(False, 64, 80, mean=(0, 0, 0), std=(1, 1, 1))
    out = tf(img, {"box": (90, 60, 210, 180)})
    x0, y0, x1, y1 = out["box"].tolist()
    r = out["image"][0]
    assert (r[math.ceil(y0) + 1:math.floor(y1) - 1, math.ceil(x0) + 1:math.floor(x1) - 1] > 0.9).all()
    assert r[:, : max(0, math.floor(x0) - 2)].max() < 0.1
    assert r[: max(0, math.floor(y0) - 2)].max() < 0.1


def test_eval_is_deterministic_and_normalised():
    img = Image.fromarray(np.full((50, 70, 3), 255, np.uint8))
    tf = make_transform(False, 32, mean=(0.5,) * 3, std=(0.5,) * 3)
    a, b = tf(img)["image"], tf(img)["image"]
    assert torch.equal(a, b) and torch.allclose(a, torch.ones_like(a))
    with pytest.raises(ValueError):
        make_transform(True, 64, 32)


def test_train_rng_follows_torch_seed():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (80, 80, 3), dtype=np.uint8))
    tf = make_transform(True, 48, 64)
    torch.manual_seed(3); a = tf(img)["image"]
    torch.manual_seed(3); b = tf(img)["image"]
    assert torch.equal(a, b)
    g = torch.Generator().manual_seed(3)
    tfg = make_transform(True, 48, 64, generator=g)
    c = tfg(img)["image"]
    g.manual_seed(3)
    assert torch.equal(c, tfg(img)["image"])


# --- image loading -----------------------------------------------------------
@pytest.mark.parametrize("mode", ["L", "CMYK", "P", "RGBA", "LA", "I;16", "1"])
def test_load_rgb_converts(tmp_path, mode):
    src = Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8))
    if mode == "P":
        im = src.convert("P", palette=Image.ADAPTIVE)
    elif mode == "I;16":
        im = Image.fromarray(np.arange(600, dtype=np.uint16).reshape(20, 30))
    else:
        im = src.convert(mode)
    assert im.mode == mode
    ext = "jpg" if mode == "CMYK" else "png"   # CMYK JPEGs occur in real CUB-like sets
    p = tmp_path / f"x.{ext}"
    im.save(p)
    out = load_rgb(p)
    assert out.mode == "RGB" and out.size == (30, 20)


def test_load_rgb_alpha_on_white(tmp_path):
    a = np.zeros((4, 4, 4), np.uint8)  # fully transparent black
    Image.fromarray(a, "RGBA").save(tmp_path / "t.png")
    assert np.asarray(load_rgb(tmp_path / "t.png")).min() == 255


def test_load_errors_name_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        load_rgb(tmp_path / "nope.jpg")
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    with pytest.raises(OSError, match="bad.jpg"):
        load_rgb(tmp_path / "bad.jpg")


# --- CUB layout --------------------------------------------------------------
def test_cub_items_and_collate(syn):
    tf = make_transform(True, 32, 40, source_size=64)
    ds = CUBDataset(syn, "trainval", tf)
    assert ds.num_classes == 3 and len(ds.classes) == 3 and len(ds) == 30
    assert ds.boxes.shape == (30, 4) and ds.part_boxes.shape == (30, 4)
    it = ds[0]
    assert set(it) == {"image", "label", "box", "part_box", "index", "source"}
    assert it["image"].dtype == torch.float32 and it["image"].shape == (3, 32, 32)
    assert it["label"].dtype == torch.int64 and it["index"] == 0
    assert not torch.isnan(it["box"]).any() and not torch.isnan(it["part_box"]).any()
    batch = torch.utils.data.default_collate([ds[i] for i in range(4)])
    assert batch["image"].shape == (4, 3, 32, 32) and batch["source"].shape == (4, 3, 64, 64)
    assert batch["label"].tolist() == [s[1] for s in ds.samples[:4]]
    assert min(l for _, l in ds.samples) == 0                      # 0-based labels
    # the part box (input pixels) lies inside the object box
    b, p = it["box"], it["part_box"]
    assert p[0] >= b[0] - 0.5 and p[1] >= b[1] - 0.5 and p[2] <= b[2] + 0.5 and p[3] <= b[3] + 0.5
    raw = CUBDataset(syn, "test")[0]                              # no transform
    assert raw["image"].shape == (3, 64, 64) and raw["box"].shape == (4,)


def test_splits(syn):
    tr = CUBDataset(syn, "train", val_fraction=0.2, seed=1)
    va = CUBDataset(syn, "val", val_fraction=0.2, seed=1)
    tv = CUBDataset(syn, "trainval")
    te = CUBDataset(syn, "test")
    assert len(te) == 6 and len(tv) == 30
    assert set(tr.ids).isdisjoint(va.ids) and set(tr.ids) | set(va.ids) == set(tv.ids)
    assert set(tv.ids).isdisjoint(te.ids)
    assert np.bincount(va.targets).tolist() == [2, 2, 2]            # stratified
    assert CUBDataset(syn, "val", val_fraction=0.2, seed=1).ids == va.ids
    assert CUBDataset(syn, "val", val_fraction=0.2, seed=2).ids != va.ids
    with pytest.raises(ValueError, match="split"):
        CUBDataset(syn, "dev")


def test_stratified_split_edges():
    m = stratified_split([0] * 5 + [1] * 1 + [2] * 2, 0.1, 0)
    assert m[:5].sum() == 1 and m[5:6].sum() == 0 and m[6:].sum() == 1
    assert not stratified_split([0, 0, 1], 0.0).any()


def test_cub_missing_layout_file(tmp_path, syn):
    root = tmp_path / "cub"
    shutil.copytree(syn, root)
    (root / "train_test_split.txt").unlink()
    with pytest.raises(FileNotFoundError, match="train_test_split.txt"):
        CUBDataset(root)
    with pytest.raises(FileNotFoundError, match="not found"):
        CUBDataset(tmp_path / "nowhere")


def test_missing_and_corrupt_files(tmp_path, syn):
    root = tmp_path / "cub"
    shutil.copytree(syn, root)
    full = CUBDataset(root, "trainval")
    missing = full.samples[3][0]
    corrupt = full.samples[5][0]
    import os
    os.remove(missing)
    with open(corrupt, "wb") as f:
        f.write(b"garbage")
    with pytest.raises(FileNotFoundError, match=os.path.basename(missing)):
        CUBDataset(root, "trainval")
    ds = CUBDataset(root, "trainval", on_error="skip")
    assert ds.skipped == [missing] and len(ds) == 29 and len(ds.ids) == 29
    assert ds.boxes.shape == (29, 4)
    ci = [p for p, _ in ds.samples].index(corrupt)
    it = ds[ci]
    assert it["index"] == ci + 1 and ds.skipped == [missing, corrupt]
    strict = CUBDataset(root, "trainval", on_error="skip")
    strict.on_error = "raise"
    with pytest.raises(OSError, match=os.path.basename(corrupt)):
        strict[ci]


# --- other sources -----------------------------------------------------------
def test_image_folder(tmp_path):
    for c in ("b_cls", "a_cls"):
        (tmp_path / "train" / c).mkdir(parents=True)
        for j in range(2):
            Image.fromarray(np.zeros((10, 12), np.uint8)).save(tmp_path / "train" / c / f"{j}.png")
    (tmp_path / "train" / "a_cls" / "notes.txt").write_text("x")
    ds = ImageFolderDataset(tmp_path, "train", make_transform(False, 8, 8))
    assert ds.classes == ["a_cls", "b_cls"] and len(ds) == 4
    it = ds[3]
    assert it["image"].shape == (3, 8, 8) and it["label"].item() == 1
    assert torch.isnan(it["box"]).all() and torch.isnan(it["part_box"]).all()


class _FakeTV(torch.utils.data.Dataset):
    def __init__(self, root, split, transform=None, download=False, **kw):
        self.classes = ["x", "y", "z"]
        self._labels = [i % 3 for i in range(12)]
        self.split, self.kw = split, kw

    def __len__(self):
        return len(self._labels)

    def __getitem__(self, i):
        return Image.fromarray(np.full((9, 9), i, np.uint8), "L"), self._labels[i]


def test_torchvision_wrapper(monkeypatch, tmp_path):
    import torchvision.datasets as tvd
    monkeypatch.setattr(tvd, "OxfordIIITPet", _FakeTV)
    monkeypatch.setattr(tvd, "FGVCAircraft", _FakeTV)
    ds = build_dataset("pets", tmp_path, "val", image_size=8, val_fraction=0.25)
    assert ds.base.split == "trainval" and len(ds) == 3 and ds.num_classes == 3
    tr = data.torchvision_dataset("pets", tmp_path, "train", val_fraction=0.25)
    assert set(tr.indices).isdisjoint(ds.indices) and len(tr) == 9
    it = ds[0]
    assert it["image"].shape == (3, 8, 8) and torch.isnan(it["box"]).all()
    air = data.torchvision_dataset("aircraft", tmp_path, "test")
    assert air.base.split == "test" and air.base.kw == {"annotation_level": "variant"}
    assert air[1]["image"].shape == (3, 9, 9) and air[1]["label"].item() == 1
    with pytest.raises(ValueError, match="aircraft"):
        data.torchvision_dataset("cars", tmp_path)


def test_build_dataset(tmp_path, syn, monkeypatch):
    with pytest.raises(ValueError, match="synthetic, cub, folder"):
        build_dataset("imagenet")
    ds = build_dataset("cub", syn, "val", image_size=32, source_size=48)
    assert not ds.transform.train and ds[0]["source"].shape == (3, 48, 48)
    tr = build_dataset("synthetic", syn, "train", image_size=32)
    assert tr.transform.train and len(tr) == 27
    monkeypatch.setenv("FGNB_DATA", str(tmp_path / "cache"))
    small = dict(num_classes=2, train_per_class=2, test_per_class=1, size=48)
    te = build_dataset("synthetic", None, "test", image_size=32, synthetic_params=small)
    assert len(te) == 2 and str(te.root).startswith(str(tmp_path / "cache"))
    with pytest.raises(ValueError, match="root"):
        build_dataset("cub", None)
