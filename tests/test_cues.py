"""Where the species cues are (chapter 6's cue-coverage table and bench/boxes.py): the
generator's cue centres, CUB's part-location files, their mapping into the model's input,
and the share of boxes that hold each cue."""
import math

import numpy as np
import pytest
import torch

from fgnb import synthetic
from fgnb.data import CUBDataset, make_transform
from fgnb.boxes import points_in_boxes
from fgnb.evaluation import cue_counts
from fgnb.train import train
from test_protocol import cfg
from test_train import data_cache  # noqa: F401  (the synthetic set generated once, in a temp folder)


def _spec_index(ring, beak, crest):
    return synthetic.CLASS_SPECS.index((ring, beak, crest))


def _diff_mask(a, b, seed, difficulty=0.5):
    """Pixels where two species differ, same nuisance seed (only their differing cue changes)."""
    ia = np.asarray(synthetic.render(a, seed, 256, difficulty)[0], dtype=np.int16)
    ib = np.asarray(synthetic.render(b, seed, 256, difficulty)[0], dtype=np.int16)
    return np.abs(ia - ib).sum(-1) > 0


@pytest.mark.parametrize("seed", [(0, 0, 1), (1, 5, 7), (3, 2, 9)])
def test_eye_point_is_the_centre_of_the_drawn_eye_ring(seed):
    # Two species that differ only in the eye-ring colour differ only on the ring: its pixels'
    # centroid is the eye's centre (the pupil is drawn the same in both, a hole in the middle).
    a, b = _spec_index("Red", "Long", "Plain"), _spec_index("Blue", "Long", "Plain")
    ys, xs = np.nonzero(_diff_mask(a, b, seed))
    x, y = synthetic.cue_points(a, seed, 256, 0.5)["eye"]
    assert abs(xs.mean() + 0.5 - x) < 1.0 and abs(ys.mean() + 0.5 - y) < 1.0


@pytest.mark.parametrize("seed", [(0, 0, 1), (1, 5, 7), (3, 2, 9)])
def test_crest_point_lies_on_the_drawn_crest_or_the_crown(seed):
    crested = [s for s in synthetic.CLASS_SPECS if s[2] == "Crested"][0]
    a, b = synthetic.CLASS_SPECS.index(crested), _spec_index(crested[0], crested[1], "Plain")
    ys, xs = np.nonzero(_diff_mask(a, b, seed))  # the visible part of the crest
    x, y = synthetic.cue_points(a, seed, 256, 0.5)["crest"]
    assert xs.min() <= x <= xs.max() + 1 and ys.min() <= y <= ys.max() + 1
    # a plain head's crest point is its crown: inside the head box, between the crest and the eye
    xp, yp = synthetic.cue_points(b, seed, 256, 0.5)["crest"]
    _, _, (px, py, pw, ph) = synthetic.render(b, seed, 256, 0.5)
    assert px <= xp <= px + pw and py <= yp <= py + ph
    ex, ey = synthetic.cue_points(b, seed, 256, 0.5)["eye"]
    assert math.dist((xp, yp), (x, y)) > 1 and math.dist((xp, yp), (ex, ey)) < math.dist((x, y), (ex, ey))


@pytest.mark.parametrize("seed", [(0, 0, 1), (1, 5, 7)])
def test_beak_point_lies_on_the_drawn_beak(seed):
    # A long beak minus a short one is the long beak's tip half; the long beak's centroid lies
    # between the short beak's centroid and that tip.
    a, b = _spec_index("Green", "Long", "Plain"), _spec_index("Green", "Short", "Plain")
    ys, xs = np.nonzero(_diff_mask(a, b, seed))
    tip = np.array([xs.mean(), ys.mean()]) + 0.5
    long_c = np.array(synthetic.cue_points(a, seed, 256, 0.5)["beak"])
    short_c = np.array(synthetic.cue_points(b, seed, 256, 0.5)["beak"])
    eye = np.array(synthetic.cue_points(a, seed, 256, 0.5)["eye"])
    assert np.linalg.norm(tip - eye) > np.linalg.norm(long_c - eye) > np.linalg.norm(short_c - eye)
    assert np.linalg.norm(long_c - short_c) > 2


def test_generated_set_has_cub_part_locations(data_cache):
    root = synthetic.ensure_synthetic(num_classes=3, train_per_class=8, test_per_class=4)
    names = (root / "parts" / "parts.txt").read_text().split()
    assert names == ["1", "beak", "2", "eye", "3", "crest"]
    rows = [l.split() for l in (root / "parts" / "part_locs.txt").read_text().splitlines()]
    assert len(rows) == 3 * 12 * 3
    ds = CUBDataset(root, "test")
    assert ds.part_names == list(synthetic.CUES)
    # image id -> (class, j) as the generator numbered them; the file holds cue_points of each
    img_id = ds.ids[5]
    cls, j = (img_id - 1) // 12, (img_id - 1) % 12
    ref = synthetic.cue_points(cls, (0, cls, j), 256, 0.5)
    np.testing.assert_allclose(ds.part_points[5], [ref[c] for c in synthetic.CUES], atol=0.051)


def test_an_old_set_gets_its_part_locations_added(data_cache):
    root = synthetic.ensure_synthetic(num_classes=3, train_per_class=8, test_per_class=4)
    before = (root / "parts" / "part_locs.txt").read_text()
    jpg = sorted((root / "images").rglob("*.jpg"))[0]
    stamp = jpg.stat().st_mtime_ns
    import shutil
    shutil.rmtree(root / "parts")
    assert synthetic.ensure_synthetic(num_classes=3, train_per_class=8, test_per_class=4) == root
    assert (root / "parts" / "part_locs.txt").read_text() == before
    assert jpg.stat().st_mtime_ns == stamp  # the images were not written again


def test_part_points_follow_the_view_and_vanish_outside_it(tmp_path):
    t = make_transform(False, 16, resize_size=32)  # eval view: the centre 28/32 of the image
    region, flip = t.sample_view(64, 64)
    pts = np.array([[32.0, 32.0], [1.0, 1.0], [np.nan, np.nan], [40.0, 20.0]])
    out = t.map_points(pts, region, flip, 16)
    # a point is a box of no size: the same affine map as the boxes
    for p, o in zip(pts, out):
        if torch.isnan(o).any():
            continue
        b = t.map_box((p[0], p[1], p[0], p[1]), region, flip, 16)
        torch.testing.assert_close(o, b[:2])
    assert torch.isnan(out[1]).all() and torch.isnan(out[2]).all()  # outside the view; not visible
    # a flipped view mirrors x
    flipped = t.map_points(pts, region, True, 16)
    assert flipped[3, 0] == pytest.approx(16 - out[3, 0].item()) and flipped[3, 0] != pytest.approx(out[3, 0].item())
    assert flipped[3, 1] == pytest.approx(out[3, 1].item())


def test_part_locations_file_errors_name_the_file_and_line(tmp_path, data_cache):
    import shutil
    root = synthetic.ensure_synthetic(num_classes=3, train_per_class=8, test_per_class=4)
    copy = tmp_path / "set"
    shutil.copytree(root, copy)
    locs = copy / "parts" / "part_locs.txt"
    lines = locs.read_text().splitlines()
    lines[4] = "5 2 oops"
    locs.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"part_locs.txt:5: expected 'image_id part_id x y visible'"):
        CUBDataset(copy, "test")
    lines[4] = "5 9 1.0 2.0 1"
    locs.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"part_locs.txt:5: part id 9 is not in .*parts.txt"):
        CUBDataset(copy, "test")
    # a part marked not visible is NaN
    lines[4] = "2 2 10.0 10.0 0"
    locs.write_text("\n".join(lines) + "\n")
    ds = CUBDataset(copy, "trainval")
    row = ds.ids.index(2)
    assert np.isnan(ds.part_points[row, 1]).all() and not np.isnan(ds.part_points[row, 0]).any()


def test_cue_counts_by_hand():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 6.0, 6.0]])
    nan = float("nan")
    points = torch.tensor([[[1.0, 1.0], [10.0, 10.0], [11.0, 0.0]],   # in, on the border (in), out
                           [[5.5, 5.5], [nan, nan], [6.0, 5.0]]])      # in, not shown, on the border
    assert points_in_boxes(boxes, points).tolist() == [[True, True, False], [True, False, True]]
    hits_shown = cue_counts(boxes, points).tolist()
    #            hits per part | shown per part | all shown inside | images showing any
    assert hits_shown == [2, 1, 1, 2, 1, 2, 1, 2]


def test_evaluate_reports_cue_coverage(tmp_path, data_cache):
    # the true head box holds every cue; the whole image too; a random box of the same size rarely
    oracle = train(cfg(tmp_path, "oracle", crop=True, crop_boxes="oracle"))["test"]
    assert oracle["cue_beak"] == oracle["cue_eye"] == oracle["cue_crest"] == oracle["cue_all"] == 1.0
    whole = train(cfg(tmp_path, "whole", crop=True, min_crop=1000))["test"]
    assert whole["cue_all"] == 1.0
    # (read on the 16 px input's 2 x 2 grid: boxes of one patch, half the side, that a random place can miss;
    # read on the source, this untrained model's boxes are large enough that random ones held every cue)
    rnd = train(cfg(tmp_path, "random", crop=True, crop_boxes="random", min_crop=4, attention_from="input"))["test"]
    assert rnd["cue_all"] < 1.0


def test_evaluate_takes_a_plain_list_of_batches(tmp_path, data_cache):
    # chapter 5 checks evaluate against a hand computation on [batch]: no data set to ask for part names
    from fgnb.evaluation import evaluate
    from fgnb.loaders import build_data, normalisation
    from fgnb.pretrained import build_model
    c = cfg(tmp_path, crop=True)
    mean, std = normalisation(c.model)
    ds = build_data(c, mean, std)["test"]
    batch = torch.utils.data.default_collate([ds[i] for i in range(4)])
    torch.manual_seed(0)
    res = evaluate(build_model(c, 3), [batch], c)
    assert res["n"] == 4 and "cue_all" not in res
