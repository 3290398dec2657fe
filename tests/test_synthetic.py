"""The synthetic fine-grained set: layout, determinism, boxes, class signal."""
import hashlib
import io
import json
import pathlib

import numpy as np
import pytest
from PIL import Image

from fgnb import synthetic
from fgnb.synthetic import generate, render

P = dict(num_classes=3, train_per_class=4, test_per_class=2, size=96, seed=0)


def _table(root, name):
    rows = [l.split() for l in (root / name).read_text().splitlines() if l.strip()]
    return {int(r[0]): r[1:] for r in rows}


def _digest(root):
    h = hashlib.sha256()
    for p in sorted(pathlib.Path(root).rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("syn") / "set", **P)


def test_layout_consistent(ds):
    images = _table(ds, "images.txt")
    labels = _table(ds, "image_class_labels.txt")
    split = _table(ds, "train_test_split.txt")
    boxes = _table(ds, "bounding_boxes.txt")
    parts = _table(ds, "part_boxes.txt")
    classes = _table(ds, "classes.txt")
    n = P["num_classes"] * (P["train_per_class"] + P["test_per_class"])
    assert sorted(images) == list(range(1, n + 1))
    for t in (labels, split, boxes, parts):
        assert sorted(t) == sorted(images)
    assert sorted(classes) == list(range(1, P["num_classes"] + 1))
    assert {int(v[0]) for v in labels.values()} == set(classes)     # 1-based
    assert sum(v[0] == "1" for v in split.values()) == P["num_classes"] * P["train_per_class"]
    assert sum(v[0] == "0" for v in split.values()) == P["num_classes"] * P["test_per_class"]
    for i, (rel,) in images.items():
        cdir = rel.split("/")[0]
        assert classes[int(labels[i][0])][0] == cdir                # folder matches label
        assert cdir[:4] == f"{int(labels[i][0]):03d}."
        assert (ds / "images" / rel).is_file()
    meta = json.loads((ds / "meta.json").read_text())
    assert meta["params"]["seed"] == 0 and meta["params"]["version"] == synthetic.GENERATOR_VERSION
    assert (ds / "README.txt").is_file()
    # no temp folders left next to it
    assert [p.name for p in ds.parent.iterdir()] == ["set"]


def test_boxes_nested(ds):
    images = _table(ds, "images.txt")
    boxes = _table(ds, "bounding_boxes.txt")
    parts = _table(ds, "part_boxes.txt")
    for i, (rel,) in images.items():
        with Image.open(ds / "images" / rel) as im:
            assert im.size == (P["size"], P["size"]) and im.mode == "RGB"
        x, y, w, h = map(float, boxes[i])
        px, py, pw, ph = map(float, parts[i])
        assert 0 <= x and 0 <= y and x + w <= P["size"] + 1e-6 and y + h <= P["size"] + 1e-6
        assert w > 0 and h > 0 and pw > 0 and ph > 0
        assert x - 0.11 <= px and y - 0.11 <= py            # 0.1 px rounding in files
        assert px + pw <= x + w + 0.11 and py + ph <= y + h + 0.11
        assert pw * ph < 0.5 * w * h                        # the part is small


def test_deterministic(tmp_path, ds):
    again = generate(tmp_path / "again", **P)
    assert _digest(again) == _digest(ds)
    other = generate(tmp_path / "other", **{**P, "seed": 1})
    assert _digest(other) != _digest(ds)


def test_cache_and_conflict(tmp_path):
    small = dict(num_classes=2, train_per_class=1, test_per_class=1, size=64)
    root = generate(tmp_path / "c", **small)
    mtime = (root / "meta.json").stat().st_mtime_ns
    assert generate(root, **small) == root                              # cache hit
    assert (root / "meta.json").stat().st_mtime_ns == mtime
    with pytest.raises(FileExistsError, match=str(root)):
        generate(root, **{**small, "seed": 5})
    generate(root, overwrite=True, **{**small, "seed": 5})
    assert json.loads((root / "meta.json").read_text())["params"]["seed"] == 5
    (tmp_path / "junk").mkdir()
    with pytest.raises(FileExistsError, match="junk"):
        generate(tmp_path / "junk", **small)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c", "junk"]  # no temp dirs


def test_ensure_synthetic_uses_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("FGNB_DATA", str(tmp_path))
    assert synthetic.default_root() == tmp_path
    small = dict(num_classes=2, train_per_class=1, test_per_class=1, size=64)
    a = synthetic.ensure_synthetic(**small)
    assert a.parent == tmp_path and a.name.startswith("synthetic-")
    assert synthetic.ensure_synthetic(**small) == a
    assert synthetic.ensure_synthetic(**{**small, "seed": 3}) != a
    with pytest.raises(TypeError):
        synthetic.ensure_synthetic(colour="red")


def test_class_changes_only_the_part():
    """Same nuisance seed, different class: pixels differ only in the part box."""
    size = 128
    for seed in range(4):
        imgs = [render(c, (seed, 7), size) for c in range(6)]
        for c in range(1, 6):
            a = np.asarray(imgs[0][0], dtype=int)
            b = np.asarray(imgs[c][0], dtype=int)
            diff = np.abs(a - b).sum(2) > 0
            assert diff.any()
            x0 = min(imgs[0][2][0], imgs[c][2][0])
            y0 = min(imgs[0][2][1], imgs[c][2][1])
            x1 = max(imgs[0][2][0] + imgs[0][2][2], imgs[c][2][0] + imgs[c][2][2])
            y1 = max(imgs[0][2][1] + imgs[0][2][3], imgs[c][2][1] + imgs[c][2][3])
            ys, xs = np.nonzero(diff)
            assert xs.min() >= np.floor(x0) - 1 and xs.max() <= np.ceil(x1) + 1
            assert ys.min() >= np.floor(y0) - 1 and ys.max() <= np.ceil(y1) + 1


def test_part_statistics_differ_between_classes(ds):
    """Across the written set, class means inside the part box differ more
    (relative to within-class spread) than class means outside it."""
    images = _table(ds, "images.txt")
    labels = _table(ds, "image_class_labels.txt")
    parts = _table(ds, "part_boxes.txt")
    boxes = _table(ds, "bounding_boxes.txt")
    feats = {"part": [], "body": []}
    ys = []
    for i, (rel,) in images.items():
        a = np.asarray(Image.open(ds / "images" / rel), dtype=float)
        for key, b in (("part", parts[i]), ("body", boxes[i])):
            x, y, w, h = map(float, b)
            if key == "body":          # lower half of the object box: no head
                y, h = y + h / 2, h / 2
            crop = a[int(y):int(np.ceil(y + h)), int(x):int(np.ceil(x + w))]
            feats[key].append(np.concatenate([crop.mean((0, 1)), crop.std((0, 1))]))
        ys.append(int(labels[i][0]))
    ys = np.array(ys)

    def fisher(f):
        f = np.array(f)
        mu = np.array([f[ys == c].mean(0) for c in np.unique(ys)])
        within = np.mean([f[ys == c].var(0) for c in np.unique(ys)], 0) + 1e-6
        return float((mu.var(0) / within).mean())
    # weak but directional check on a tiny set; the real proof is the test above
    assert fisher(feats["part"]) > fisher(feats["body"])


def test_bad_num_classes(tmp_path):
    with pytest.raises(ValueError):
        generate(tmp_path / "x", num_classes=0)
    with pytest.raises(ValueError):
        generate(tmp_path / "x", num_classes=synthetic.MAX_CLASSES + 1)


def test_first_class_picks_other_species(tmp_path):
    """A set of species 11-12 (the pre-training species) holds exactly their renders and
    none of the default set's; the default sets keep their cache keys."""
    root = generate(tmp_path / "later", num_classes=2, train_per_class=2, test_per_class=1, first_class=10)
    names = [ln.split(" ", 1)[1] for ln in (root / "classes.txt").read_text().splitlines()]
    assert names == synthetic.class_names(2, first_class=10)
    r, b, c = synthetic.CLASS_SPECS[10]
    assert names[0] == f"001.{r}ringed_{b}billed_{c}"
    first = sorted((root / "images" / names[0]).iterdir())[0]
    img, _, _ = synthetic.render(10, (synthetic.DEFAULTS["seed"], 10, 0), synthetic.DEFAULTS["size"],
                                 synthetic.DEFAULTS["difficulty"])
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=92)  # as the writer does
    assert first.read_bytes() == buf.getvalue()
    assert "first_class" not in synthetic._params(**{k: v for k, v in synthetic.DEFAULTS.items()})
    with pytest.raises(ValueError, match="first_class"):
        generate(tmp_path / "bad", num_classes=2, first_class=30)
    with pytest.raises(ValueError, match="1..2"):
        generate(tmp_path / "bad", num_classes=3, first_class=28)


def test_cub_sized_fixture_runs_the_full_recipes_transform_and_one_step(tmp_path):
    """shape=CUB_SHAPE: 500 x 375 images whose boxes and part points follow the stretch, read by
    the CUB loader through the full profile's 600 -> 448 transform and 896 px source view, and
    one training step with crops of a small ViT at 448 px on it."""
    from fgnb.config import TrainConfig
    from fgnb.data import build_dataset
    from fgnb.train import train

    root = generate(tmp_path / "CUB_200_2011", num_classes=2, train_per_class=4, test_per_class=1, size=256,
                    shape=synthetic.CUB_SHAPE)
    square = generate(tmp_path / "square", num_classes=2, train_per_class=4, test_per_class=1, size=256)
    img = Image.open(root / "images" / _table(root, "images.txt")[1][0])
    assert img.size == (500, 375)
    sx, sy = 500 / 256, 375 / 256
    for name in ("bounding_boxes.txt", "part_boxes.txt"):
        for (i, b), (_, q) in zip(_table(root, name).items(), _table(square, name).items()):
            x, y, w, h = map(float, b)
            assert x + w <= 500.1 and y + h <= 375.1
            assert np.allclose([x, y, w, h], [float(q[0]) * sx, float(q[1]) * sy, float(q[2]) * sx, float(q[3]) * sy],
                               atol=0.2)  # both files round to 0.1 px
    assert json.loads((root / "meta.json").read_text())["params"]["shape"] == [500, 375]
    assert generate(tmp_path / "CUB_200_2011", num_classes=2, train_per_class=4, test_per_class=1, size=256,
                    shape=synthetic.CUB_SHAPE) == root  # the same parameters: the cached set
    with pytest.raises(ValueError, match="shape"):
        generate(tmp_path / "bad", shape=(500, 0))

    item = build_dataset("cub", root, split="train", image_size=448, resize_size=600, source_size=896,
                         val_fraction=0.0)[0]
    assert tuple(item["image"].shape) == (3, 448, 448) and tuple(item["source"].shape) == (3, 896, 896)
    cfg = TrainConfig(dataset="cub", data_root=str(root), model="vit_tiny_patch16_224", img_size=448, patch_size=16,
                      depth=2, embed_dim=48, num_heads=3, targets=2, weights=None, resize_size=600, source_size=896,
                      crop=True, batch_size=4, epochs=1, val_fraction=0.0, progress=False, out=str(tmp_path / "run"))
    res = train(cfg)
    assert res["history"][0]["images_per_s"] > 0 and res["test"]["n"] == 2
