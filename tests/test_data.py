"""Loaders and box-aware transforms: items, boxes, RGB, errors, splits."""
import math
import pathlib
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


def _rgb(path):
    return np.asarray(load_rgb(path)).astype(int)


def test_load_rgb_cmyk_jpeg_values(tmp_path):
    inks = [(255, 0, 0, 0), (0, 255, 0, 0), (0, 0, 0, 128), (0, 0, 0, 0), (0, 0, 0, 255)]
    want = [(0, 255, 255), (255, 0, 255), (127, 127, 127), (255, 255, 255), (0, 0, 0)]
    im = Image.new("CMYK", (16 * len(inks), 16))
    for k, ink in enumerate(inks):  # 16 x 16 blocks: whole JPEG blocks, little ringing
        im.paste(ink, (16 * k, 0, 16 * k + 16, 16))
    im.save(tmp_path / "cmyk.jpg", quality=95)
    px = _rgb(tmp_path / "cmyk.jpg")
    for k, w in enumerate(want):
        assert np.abs(px[4:12, 16 * k + 4:16 * k + 12] - w).max() <= 6, (inks[k], px[8, 16 * k + 8])


def test_load_rgb_16bit_grey_is_scaled_not_clipped(tmp_path):
    v = np.array([[0, 257 * 10, 257 * 128, 1000, 65535, 40000]] * 2, np.uint16)
    Image.fromarray(v).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode == "I;16"
    px = _rgb(tmp_path / "g16.png")
    assert px[0].tolist() == [[g] * 3 for g in (0, 10, 128, 4, 255, 156)]  # round(v / 257)


def test_load_rgb_palette_transparency_and_la(tmp_path):
    pal = Image.new("P", (3, 2))
    pal.putpalette([0, 0, 0, 200, 30, 40, 0, 0, 255] + [0] * 759)
    pal.putdata([0, 1, 2, 0, 1, 2])
    pal.info["transparency"] = bytes([0, 255, 128])  # index 0 clear, 1 opaque, 2 half
    pal.save(tmp_path / "p.png", transparency=bytes([0, 255, 128]))
    assert Image.open(tmp_path / "p.png").mode == "P"
    px = _rgb(tmp_path / "p.png")
    assert px[0, 0].tolist() == [255, 255, 255] and px[0, 1].tolist() == [200, 30, 40]
    assert np.abs(px[0, 2] - [127, 127, 255]).max() <= 1               # half blue on white
    la = Image.fromarray(np.array([[[0, 128], [200, 255], [90, 0]]] * 2, np.uint8), "LA")
    la.save(tmp_path / "la.png")
    px = _rgb(tmp_path / "la.png")
    assert np.abs(px[0, 0] - 127).max() <= 1 and px[0, 1].tolist() == [200] * 3 and px[0, 2].tolist() == [255] * 3


_TURN = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
         5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
         8: Image.Transpose.ROTATE_90}


def _mini_cub(root, images):
    """A CUB-layout folder of ``images`` [(PIL image, xywh box, exif orientation)], all in test."""
    (root / "images" / "001.A").mkdir(parents=True)
    rows = {"images.txt": [], "image_class_labels.txt": [], "train_test_split.txt": [], "bounding_boxes.txt": []}
    for k, (im, box, orientation) in enumerate(images, 1):
        exif = Image.Exif()
        exif[0x0112] = orientation
        im.save(root / "images" / "001.A" / f"{k}.jpg", quality=95, exif=exif)
        rows["images.txt"].append(f"{k} 001.A/{k}.jpg")
        rows["image_class_labels.txt"].append(f"{k} 1")
        rows["train_test_split.txt"].append(f"{k} 0")
        rows["bounding_boxes.txt"].append(f"{k} " + " ".join(map(str, box)))
    rows["classes.txt"] = ["1 001.A"]
    for name, lines in rows.items():
        (root / name).write_text("\n".join(lines) + "\n")
    return root


def _red_bbox(chw):
    ys, xs = np.nonzero(chw[0].numpy() - chw[1].numpy() > 0.4)
    return xs.min(), ys.min(), xs.max() + 1, ys.max() + 1


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_turns_image_and_boxes(tmp_path, orientation):
    """The stored pixels have a red object at the annotated box; a viewer shows the
    image turned as the EXIF says; the item's box frames the red object there."""
    box = (8, 16, 24, 16)                       # xywh in the stored grid (64 x 40)
    stored = _rect_image(64, 40, (8, 16, 32, 32))
    root = _mini_cub(tmp_path / "cub", [(stored, box, orientation)])
    shown = stored.transpose(_TURN[orientation]) if orientation > 1 else stored
    img = load_rgb(root / "images" / "001.A" / "1.jpg")
    assert img.size == shown.size and np.abs(np.asarray(img).astype(int) - np.asarray(shown)).mean() < 3
    item = CUBDataset(root, "test")[0]         # no transform: original pixels
    got = item["box"].tolist()
    assert all(abs(a - b) <= 1 for a, b in zip(_red_bbox(item["image"]), got)), (got, _red_bbox(item["image"]))
    tf = make_transform(False, 32, 32, mean=(0, 0, 0), std=(1, 1, 1))
    item = CUBDataset(root, "test", tf)[0]
    assert all(abs(a - b) <= 1.5 for a, b in zip(_red_bbox(item["image"]), item["box"].tolist()))


def test_orient_box_nan_and_identity():
    assert data.orient_box((1, 2, 3, 4), 1, 10, 10) == (1, 2, 3, 4)
    assert all(math.isnan(v) for v in data.orient_box((math.nan,) * 4, 6, 10, 10))


# --- hostile files -----------------------------------------------------------
def _hostile(folder):
    """Files a scraped data set contains; returns their paths (MAX_IMAGE_PIXELS is set to 1000)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "zero.jpg").write_bytes(b"")
    (folder / "noise.jpg").write_bytes(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    Image.new("RGB", (1, 1), (9, 9, 9)).save(folder / "pixel.png")
    Image.new("RGB", (40, 40)).save(folder / "bomb_warn.png")     # 1600 px: over the limit
    Image.new("RGB", (64, 64)).save(folder / "bomb.png")          # 4096 px: over twice the limit
    return sorted(str(folder / n) for n in ("zero.jpg", "noise.jpg", "pixel.png", "bomb_warn.png", "bomb.png"))


def test_hostile_files_raise_naming_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    for p in _hostile(tmp_path):
        with pytest.raises(OSError, match=pathlib.Path(p).name) as e:
            load_rgb(p)
        assert type(e.value) is OSError, p
    with pytest.raises(OSError, match="MAX_IMAGE_PIXELS=1000"):
        load_rgb(tmp_path / "bomb.png")
    with pytest.raises(OSError, match="1x1 pixels"):
        load_rgb(tmp_path / "pixel.png")


def _folder_with_hostiles(root):
    _tree(root, {"": {"a": 6, "b": 6}})
    return _hostile(root / "a")


@pytest.mark.parametrize("workers", [0, 2])
def test_hostile_files_in_a_dataloader(tmp_path, monkeypatch, workers):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    hostile = _folder_with_hostiles(tmp_path)
    strict = ImageFolderDataset(tmp_path, None, make_transform(False, 8, 8))
    with pytest.raises(OSError, match=r"(cannot read image file|too small).*a/(zero|noise|pixel|bomb)"):
        list(torch.utils.data.DataLoader(strict, batch_size=4, num_workers=workers))
    ds = ImageFolderDataset(tmp_path, None, make_transform(False, 8, 8), on_error="skip")
    passed = set()
    for batch in torch.utils.data.DataLoader(ds, batch_size=4, num_workers=workers):
        for i, k in zip(batch["index"].tolist(), batch["skipped"].tolist()):
            passed |= set(ds.passed_over(i, k))
    assert sorted(passed) == hostile       # every worker's skips reach the main process


def test_verify_opens_every_image(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    hostile = _folder_with_hostiles(tmp_path)
    strict = ImageFolderDataset(tmp_path)
    with pytest.raises(OSError, match=r"5 of 17 images .* cannot be read(.|\n)*zero.jpg"):
        strict.verify(workers=2)
    ds = ImageFolderDataset(tmp_path, on_error="skip")
    assert sorted(ds.verify()) == hostile and sorted(ds.skipped) == hostile and len(ds) == 12
    assert all(ds[i]["skipped"] == 0 for i in range(len(ds)))


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
    # the synthetic set has CUB's part locations: the cue points come with every item
    assert set(it) == {"image", "label", "box", "part_box", "part_points", "index", "skipped", "source"}
    assert it["part_points"].shape == (3, 2) and ds.part_names == ["beak", "eye", "crest"]
    assert it["image"].dtype == torch.float32 and it["image"].shape == (3, 32, 32)
    assert it["label"].dtype == torch.int64 and it["index"] == 0
    assert not torch.isnan(it["box"]).any() and not torch.isnan(it["part_box"]).any()
    batch = torch.utils.data.default_collate([ds[i] for i in range(4)])
    assert batch["image"].shape == (4, 3, 32, 32) and batch["source"].shape == (4, 3, 64, 64)
    assert batch["part_points"].shape == (4, 3, 2)
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
    checked = CUBDataset(root, "trainval", on_error="skip")          # verify(): left out up front
    assert checked.verify() == [corrupt] and checked.skipped == [missing, corrupt] and len(checked) == 28
    where = {p: k for k, (p, _) in enumerate(full.samples)}
    rows = [where[p] for p, _ in checked.samples]                   # ids and boxes stay aligned
    assert checked.ids == [full.ids[k] for k in rows] and np.array_equal(checked.boxes, full.boxes[rows])
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
    ds = ImageFolderDataset(tmp_path, "trainval", make_transform(False, 8, 8))
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


def _tree(root, layout):
    """layout: {sub-folder ('' for a flat tree): {class: number of images}}; distinct pixels."""
    k = 0
    for sub, classes in layout.items():
        for c, n in classes.items():
            d = root / sub / c
            d.mkdir(parents=True)
            for j in range(n):
                k += 1
                Image.fromarray(np.full((8, 8), k % 256, np.uint8)).save(d / f"{j}.png")


def _paths(ds):
    return {p for p, _ in ds.samples}


def _top(ds, root):
    return {pathlib.Path(p).relative_to(root).parts[0] for p in _paths(ds)}


def test_image_folder_split_layout_carves_val_from_train(tmp_path):
    _tree(tmp_path, {"train": {"a": 10, "b": 10}, "test": {"a": 3, "b": 2}})
    tr = ImageFolderDataset(tmp_path, "train", val_fraction=0.2, seed=1)
    va = ImageFolderDataset(tmp_path, "val", val_fraction=0.2, seed=1)
    tv = ImageFolderDataset(tmp_path, "trainval")
    te = ImageFolderDataset(tmp_path, "test")
    assert [d.classes for d in (tr, va, tv, te)] == [["a", "b"]] * 4     # not 'test'/'train'
    assert _top(tv, tmp_path) == {"train"} and _top(te, tmp_path) == {"test"} and len(te) == 5
    assert _paths(tr).isdisjoint(_paths(va)) and _paths(tr) | _paths(va) == _paths(tv)
    assert np.bincount(va.targets).tolist() == [2, 2]                    # stratified
    assert ImageFolderDataset(tmp_path, "val", val_fraction=0.2, seed=1).samples == va.samples
    assert ImageFolderDataset(tmp_path, "val", val_fraction=0.2, seed=2).samples != va.samples
    built = build_dataset("folder", tmp_path, "val", image_size=8, val_fraction=0.2, seed=1)
    assert built.samples == va.samples and not built.transform.train


def test_image_folder_own_val_folder(tmp_path):
    _tree(tmp_path, {"train": {"a": 4, "b": 4}, "val": {"a": 1, "b": 1}, "test": {"a": 1, "b": 1}})
    assert _top(ImageFolderDataset(tmp_path, "val"), tmp_path) == {"val"}
    assert len(ImageFolderDataset(tmp_path, "train")) == 8
    assert _top(ImageFolderDataset(tmp_path, "trainval"), tmp_path) == {"train", "val"}


def test_image_folder_flat_tree_gets_a_seeded_split(tmp_path):
    _tree(tmp_path, {"": {"a": 10, "b": 5}})
    every = ImageFolderDataset(tmp_path)
    ds = {s: ImageFolderDataset(tmp_path, s, val_fraction=0.25, seed=3) for s in ImageFolderDataset.SPLITS}
    assert len(every) == 15 and all(d.classes == ["a", "b"] for d in ds.values())
    assert np.bincount(ds["test"].targets).tolist() == [2, 1]            # 20 % of each class
    assert _paths(ds["test"]).isdisjoint(_paths(ds["trainval"]))
    assert _paths(ds["test"]) | _paths(ds["trainval"]) == _paths(every)
    assert _paths(ds["train"]).isdisjoint(_paths(ds["val"]))
    assert _paths(ds["train"]) | _paths(ds["val"]) == _paths(ds["trainval"])
    # the test images do not depend on the run's seed; validation does
    assert ImageFolderDataset(tmp_path, "test", seed=9).samples == ds["test"].samples
    assert ImageFolderDataset(tmp_path, "val", val_fraction=0.25, seed=4).samples != ds["val"].samples


def test_image_folder_errors(tmp_path):
    _tree(tmp_path / "m", {"train": {"a": 2, "b": 2}, "test": {"a": 1, "c": 1}})
    for split in ("train", "test"):
        with pytest.raises(ValueError, match=r"class folders of .*test differ .*only in train: \['b'\]; "
                                             r"only in test: \['c'\]"):
            ImageFolderDataset(tmp_path / "m", split)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no class folders in .*empty.*expected ROOT/train"):
        ImageFolderDataset(tmp_path / "empty", "train")
    (tmp_path / "noimg" / "a").mkdir(parents=True)
    with pytest.raises(ValueError, match="no image files .*noimg"):
        ImageFolderDataset(tmp_path / "noimg", "train")
    _tree(tmp_path / "t", {"train": {"a": 2}})
    with pytest.raises(FileNotFoundError, match="no test folder .*t/test"):
        ImageFolderDataset(tmp_path / "t", "test")
    _tree(tmp_path / "o", {"test": {"a": 2}})
    with pytest.raises(ValueError, match="has test/ but no train/"):
        ImageFolderDataset(tmp_path / "o", "train")
    with pytest.raises(ValueError, match="split must be one of"):
        ImageFolderDataset(tmp_path / "m", "dev")
