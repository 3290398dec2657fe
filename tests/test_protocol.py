"""The comparison's protocol (chapter 6 and 8): how many optimizer steps a batch makes, where
the crop's attention is read, which images the crop is cut from, and a validation split that
does not move with the training seed."""
import copy
import math
import pathlib

import pytest
import torch
import torch.nn.functional as F

import fgnb.strategies as strategies
import importlib
from fgnb.boxes import expand_boxes, random_boxes_like
from fgnb.config import TrainConfig
from fgnb.crop import attention_boxes, crop_attention_layers, crop_views
from fgnb.evaluation import evaluate
from fgnb.loaders import build_data, normalisation
from fgnb.model import FGViT, create_model
from fgnb.pretrained import build_model
from fgnb.strategies import StepContext, make_strategy
from fgnb.train import train
from test_train import data_cache  # noqa: F401  (the synthetic set generated once, in a temp folder)

step_mod = importlib.import_module("fgnb.step")

TINY = dict(model="vit_tiny_patch16_224", embed_dim=None, num_heads=None, weights=None,
            synthetic_classes=3, synthetic_train_per_class=8, synthetic_test_per_class=4, img_size=16, patch_size=8,
            depth=3, batch_size=6, epochs=1, warmup_epochs=0.0, progress=False, val_fraction=0.25, limit_batches=2,
            # the text's literal crop rule, whose protocol these tests pin step by step (the default box,
            # block 0 grown, is tested against its by-hand steps below)
            crop_block=None, min_crop=0, crop_margin=0.0)


def cfg(tmp_path, name="run", **kw):
    return TrainConfig(**{**TINY, **kw, "out": str(tmp_path / name)})


# ------------------------------------------------------------------ optimizer steps per batch
CASES = [  # (options, steps per batch with R = 3)
    (dict(strategy="last"), 1),
    (dict(strategy="summed"), 1),
    (dict(strategy="progressive"), 3),
    (dict(strategy="progressive", reforward=False), 3),
    (dict(strategy="last", steps_per_batch=3), 3),
    (dict(strategy="last", crop=True), 1),
    (dict(strategy="summed", crop=True), 1),
    (dict(strategy="progressive", crop=True), 3),
    (dict(strategy="progressive", crop=True, crop_attention="per_layer"), 3),
    (dict(strategy="progressive", reforward=False, crop=True, crop_attention="per_layer"), 3),
    (dict(strategy="last", crop=True, crop_update="separate"), 2),
    (dict(strategy="progressive", crop=True, crop_update="separate"), 6),
    (dict(strategy="progressive", crop=True, crop_update="separate", crop_attention="per_layer"), 12),
    (dict(strategy="last", steps_per_batch=2, crop=True, crop_update="separate"), 4),
]


@pytest.mark.parametrize("options,per_batch", CASES, ids=lambda v: str(v))
def test_optimizer_steps_per_batch(tmp_path, monkeypatch, options, per_batch):
    steps = []
    real = strategies._apply_step
    monkeypatch.setattr(strategies, "_apply_step", lambda *a: (steps.append(1), real(*a)))
    train(cfg(tmp_path, **options))
    assert len(steps) == 2 * per_batch  # limit_batches=2


# ------------------------------------------------------------------ the step bench/speed.py times
@pytest.mark.parametrize("options", [dict(crop_update="separate", crop_attention="per_layer"), dict(crop_update="joint")],
                         ids=["separate-per_layer", "joint"])
def test_the_speed_files_step_makes_the_update_training_makes(tmp_path, monkeypatch, options):
    """From the weights, batch and random state of train()'s first batch, bench/speed.py's step
    makes exactly train()'s update (bit for bit). ``separate`` with per-layer crops (three
    distinct crop sets) is the case the benchmark once timed differently (crops[0] only)."""
    monkeypatch.syspath_prepend(str(pathlib.Path(__file__).resolve().parents[1] / "bench"))
    speed = importlib.import_module("speed")
    seen, real = {}, step_mod.BatchStep.__call__

    def first(self, batch, x, y, epoch=0):
        if "before" in seen:
            seen["calls"] += 1
            return real(self, batch, x, y, epoch)
        seen.update(before=copy.deepcopy(self.model.state_dict()), batch=batch, rng=torch.get_rng_state(), calls=1)
        result = real(self, batch, x, y, epoch)
        seen.update(after=copy.deepcopy(self.model.state_dict()), crop_steps=len(result[1]))
        return result

    monkeypatch.setattr(step_mod.BatchStep, "__call__", first)
    c = cfg(tmp_path, strategy="progressive", crop=True, limit_batches=1, val_fraction=0.0, **options)
    train(c)
    calls = seen["calls"]
    bench = speed.FgnbStep(c, seen["before"]["heads.0.fc2.weight"].shape[0], "cpu")
    bench.model.load_state_dict(seen["before"])
    torch.set_rng_state(seen["rng"])
    bench(seen["batch"]["image"], seen["batch"]["label"], batch=seen["batch"])
    after = bench.model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in seen["after"].items())
    assert seen["calls"] == calls + 1  # the benchmark went through training's own step
    assert seen["crop_steps"] == (3 if options["crop_update"] == "separate" else 1)  # a step per distinct crop set
    assert not all(torch.equal(seen["before"][k], v) for k, v in seen["after"].items())  # (an update was made)


# ------------------------------------------------------------------ the joint crop step
def tiny(seed=0):
    torch.manual_seed(seed)
    return create_model("vit_tiny_patch16_224", num_classes=4, img_size=16, patch_size=8, depth=4,
                        embed_dim=32, num_heads=2)


def batch(seed=1, n=6):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 16, 16, generator=g), torch.randint(0, 4, (n,), generator=g)


def assert_same_weights(a, b, atol=1e-6):
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(va, vb, atol=atol, rtol=1e-5, msg=k)


STRATS = [("last", {}), ("summed", {}), ("progressive", {}), ("progressive", dict(reforward=False)),
          ("progressive", dict(order="deep_first"))]


@pytest.mark.parametrize("name,opts", STRATS, ids=lambda v: str(v))
def test_joint_with_whole_image_crops_equals_duplicated_batch(name, opts):
    a, b = tiny(), tiny()
    oa, ob = (torch.optim.AdamW(m.parameters(), lr=1e-2) for m in (a, b))
    s = make_strategy(name, **opts)
    for k in range(2):
        x, y = batch(k)
        ra = s.step(a, oa, x, y, crops=[x] * a.num_targets)
        rb = s.step(b, ob, torch.cat([x, x]), torch.cat([y, y]))
        assert ra.losses == pytest.approx(rb.losses, rel=1e-5)
        assert ra.crop_losses == pytest.approx(rb.losses, rel=1e-5)
    assert_same_weights(a, b)


def test_joint_loss_is_mean_of_global_and_crop_view():
    """Stage r's loss: 1/2 [CE(y_r(x)) + CE(y_r(crop_r))], with head r's own crop (per_layer)."""
    m = tiny()
    x, y = batch()
    crops = [batch(10 + r)[0] for r in range(m.num_targets)]
    ref = copy.deepcopy(m)
    with torch.no_grad():
        expected = [0.5 * (F.cross_entropy(ref(x).logits[r], y) + F.cross_entropy(ref(crops[r]).logits[r], y)).item()
                    for r in range(m.num_targets)]
    res = make_strategy("progressive", reforward=False).step(m, torch.optim.SGD(m.parameters(), lr=0.0), x, y,
                                                            crops=crops)
    assert res.losses == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("w", [0.0, 0.25, 1.0])
def test_crop_weight_weighs_the_two_views(w):
    m = tiny()
    x, y = batch()
    crop = batch(9)[0]
    with torch.no_grad():
        ref = copy.deepcopy(m)
        g, c = F.cross_entropy(ref(x).logits[-1], y), F.cross_entropy(ref(crop).logits[-1], y)
    res = make_strategy("last").step(m, torch.optim.SGD(m.parameters(), lr=0.0), x, y, StepContext(crop_weight=w),
                                     crops=[crop] * m.num_targets)
    assert res.losses[0] == pytest.approx(((1 - w) * g + w * c).item(), rel=1e-5)


@pytest.mark.parametrize("name", ["last", "summed", "progressive"])
def test_label_smoothing_changes_the_training_loss_as_cross_entropy_does(name):
    m = tiny()
    with torch.no_grad():  # confident heads: near-uniform logits hide the smoothing
        for h in m.heads:
            h.fc2.weight.mul_(50)
    x, y = batch()
    with torch.no_grad():
        logits = copy.deepcopy(m)(x).logits
    ctx = StepContext(label_smoothing=0.2)
    s = make_strategy(name)
    res = s.step(m, torch.optim.SGD(m.parameters(), lr=0.0), x, y, ctx)
    heads = s.stages(m) if name == "last" else range(m.num_targets)
    expected = [F.cross_entropy(logits[r], y, label_smoothing=0.2).item() for r in heads]
    plain = [F.cross_entropy(logits[r], y).item() for r in heads]
    assert res.losses == pytest.approx(expected, rel=1e-5)
    assert all(abs(a - b) > 1e-3 for a, b in zip(expected, plain))


def test_train_passes_label_smoothing_to_every_training_loss(tmp_path, monkeypatch):
    seen = []
    real = strategies.cross_entropy
    monkeypatch.setattr(strategies, "cross_entropy", lambda lg, y, ctx: (seen.append(ctx.label_smoothing), real(lg, y, ctx))[1])
    train(cfg(tmp_path, label_smoothing=0.3, crop=True))
    assert seen and set(seen) == {0.3}


# ------------------------------------------------------------------ where the crop's attention is read
@pytest.mark.parametrize("attention_from", ["input", "source"])
def test_crop_attention_is_read_before_the_batch_updates_in_eval_mode(tmp_path, monkeypatch, attention_from):
    events = []
    real_views, real_step = step_mod.crop_views, strategies._apply_step

    def views(model, batch, x, c, *a, **k):
        snapshot = copy.deepcopy(model)
        crops, boxes, out = real_views(model, batch, x, c, *a, **k)
        # the same boxes from an independent eval-mode forward of the model as it was
        snapshot.eval()
        layers = crop_attention_layers(snapshot.target_layers, c.crop_attention)
        with torch.no_grad():
            if attention_from == "input":
                ref = snapshot(x, attn_layers=layers)
                expected = attention_boxes(ref, c.crop_attention, c.box_rule, c.threshold_scale, c.min_crop,
                                           snapshot.target_layers)
            else:  # on the 4x source view, boxes in its pixels, then in the input's
                ref = snapshot.attention(batch["source"], layers)
                expected = [b / 4 for b in attention_boxes(ref, c.crop_attention, c.box_rule, c.threshold_scale,
                                                           c.min_crop * 4, snapshot.target_layers)]
        for b, e in zip(boxes, expected):
            assert torch.equal(b, e)
        events.append(("views", model.training))
        return crops, boxes, out

    real_forward, real_attention = FGViT.forward, FGViT.attention

    def forward(self, x, upto=None, attn_layers=None, full_attn=False):
        if attn_layers is not None:
            events.append(("attention forward", self.training))
        return real_forward(self, x, upto, attn_layers, full_attn)

    def attention(self, x, attn_layers, full_attn=False):
        events.append(("attention forward", self.training))
        return real_attention(self, x, attn_layers, full_attn)

    monkeypatch.setattr(step_mod, "crop_views", views)
    monkeypatch.setattr(importlib.import_module("fgnb.evaluation"), "crop_views", views)
    monkeypatch.setattr(FGViT, "forward", forward)
    monkeypatch.setattr(FGViT, "attention", attention)
    monkeypatch.setattr(strategies, "_apply_step", lambda *a: (events.append(("step", None)), real_step(*a)))
    train(cfg(tmp_path, strategy="progressive", crop=True, val_fraction=0.0, epochs=1, crop_block=None, min_crop=0,
              crop_margin=0.0, attention_from=attention_from))
    training = [e for e in events if e[0] in ("views", "step")]
    training = training[: training.index(("views", False))]  # then the test split is evaluated
    # per batch: the boxes first (model back in train mode afterwards), then the R steps
    assert training == ([("views", True)] + [("step", None)] * 3) * 2
    # the forward that reads the attention for training runs in eval mode
    reads = [e for e in events[: events.index(("views", True))] if e[0] == "attention forward"]
    assert reads and all(training is False for _, training in reads)  # (fgnb's and the reference's)


def test_the_default_box_is_block_0s_grown_to_the_min_side_then_by_the_margin(tmp_path):
    """TrainConfig's crop defaults (issue 28): the first block's head product, thresholded at its
    mean, boxed, grown around its centre to ``min_crop`` (shifted inside), then by ``crop_margin``
    of its size on each side, clipped: by hand, image by image, against crop_views."""
    defaults = TrainConfig()
    assert (defaults.crop_block, defaults.min_crop, defaults.crop_margin) == (0, 8, 0.25)
    c = cfg(tmp_path, crop=True, img_size=32, patch_size=4, crop_block=defaults.crop_block, min_crop=defaults.min_crop,
            crop_margin=defaults.crop_margin, crop_from="input", attention_from="input")
    torch.manual_seed(0)
    model = build_model(c, 3).eval()
    with torch.no_grad():  # peaked block-0 maps, as a trained model's: small boxes that the two steps grow
        model.vit.blocks[0].attn.qkv.weight.mul_(6.0)
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        a = model(x, attn_layers=[0]).attn[0].double()                    # (B, H, K), block 0 only
    _, boxes, _ = crop_views(model, {}, x, c)
    side, p, sizes = 32, 4, []
    for b in range(len(x)):
        s = a[b].log().sum(0)                                             # log of the product over heads
        marked = [k for k in range(s.numel()) if s[k] > torch.logsumexp(s, 0) - math.log(s.numel())]
        rows, cols = [k // 8 for k in marked], [k % 8 for k in marked]
        lo_hi = [(min(cols) * p, (max(cols) + 1) * p), (min(rows) * p, (max(rows) + 1) * p)]
        grown = []
        for lo, hi in lo_hi:
            extent = max(hi - lo, c.min_crop)
            start = min(max((lo + hi) / 2 - extent / 2, 0), side - extent)
            grown.append((max(start - c.crop_margin * extent, 0), min(start + extent + c.crop_margin * extent, side)))
        (x0, x1), (y0, y1) = grown
        assert boxes[-1][b].tolist() == pytest.approx([x0, y0, x1, y1], abs=1e-5)
        sizes.append(((lo_hi[0][1] - lo_hi[0][0]) * (lo_hi[1][1] - lo_hi[1][0]), (x1 - x0) * (y1 - y0)))
    # the case the steps are for: boxes smaller than the view, which the minimum and the margin grow
    assert any(marked < grown < side * side for marked, grown in sizes), sizes


def test_the_default_reads_the_attention_on_the_source_view(tmp_path):
    """attention_from='source' (the default): block 0's head product on the 4x source view's
    finer grid, thresholded and boxed there with the minimum side in source pixels (4 x min_crop),
    mapped to input pixels, then grown by the margin: by hand against crop_views; and the
    box differs from the one read on the input (the option is not a no-op)."""
    defaults = TrainConfig()
    assert defaults.attention_from == "source" and TrainConfig.from_dict({}, saved=True).attention_from == "input"
    c = cfg(tmp_path, crop=True, img_size=32, patch_size=4, crop_block=0, min_crop=8, crop_margin=0.25, crop_from="input",
            attention_from="source")
    torch.manual_seed(0)
    model = build_model(c, 3).eval()
    with torch.no_grad():  # peaked maps on the 32 x 32 grid: boxes of a few patches, smaller than the minimum
        model.vit.blocks[0].attn.qkv.weight.mul_(20.0)
    x, src = torch.randn(6, 3, 32, 32), torch.randn(6, 3, 128, 128)
    small = 0
    with torch.no_grad():
        a = model.attention(src, [0]).attn[0].double()                    # (B, H, 32 * 32)
    _, boxes, out = crop_views(model, {"source": src}, x, c)
    assert out.grid == (32, 32) and not out.logits
    for b in range(len(x)):
        s = a[b].log().sum(0)
        marked = (s > torch.logsumexp(s, 0) - math.log(s.numel())).nonzero().flatten().tolist()
        rows, cols = [k // 32 for k in marked], [k % 32 for k in marked]
        grown = []
        for lo, hi in ((min(cols) * 4, (max(cols) + 1) * 4), (min(rows) * 4, (max(rows) + 1) * 4)):
            small += hi - lo < 4 * c.min_crop
            extent = max(hi - lo, 4 * c.min_crop)                          # source pixels
            start = min(max((lo + hi) / 2 - extent / 2, 0), 128 - extent)
            lo, extent = start / 4, extent / 4                                # input pixels
            grown.append((max(lo - c.crop_margin * extent, 0), min(lo + extent + c.crop_margin * extent, 32)))
        (x0, x1), (y0, y1) = grown
        assert boxes[-1][b].tolist() == pytest.approx([x0, y0, x1, y1], abs=1e-5)
    assert small >= 4  # sides the minimum grew
    _, on_input, _ = crop_views(model, {"source": src}, x, c.replace(attention_from="input"))
    assert not torch.equal(on_input[-1], boxes[-1])


def test_attention_from_source_needs_the_source_view(tmp_path):
    c = cfg(tmp_path, crop=True, crop_from="input", attention_from="source")
    with pytest.raises(ValueError, match="attention_from='source' needs the data set's source view"):
        crop_views(build_model(c, 3), {}, torch.randn(2, 3, 16, 16), c)


def test_evaluate_with_the_attention_on_the_source_scores_the_global_view_alike(tmp_path):
    """The global view's top-1 cannot depend on where the boxes' attention is read."""
    c = cfg(tmp_path, crop=True, crop_from="source")
    b = _first_batch(c)
    torch.manual_seed(0)
    m = build_model(c, 3).eval()
    res = {af: evaluate(m, [b], c.replace(attention_from=af)) for af in ("input", "source")}
    for k in ("top1_head0", "top1_head1", "top1_last", "top1_mean"):
        assert res["input"][k] == res["source"][k]


def test_crop_warmup_epochs_delays_the_crops(tmp_path, monkeypatch):
    calls = []
    real_views = step_mod.crop_views
    monkeypatch.setattr(step_mod, "crop_views", lambda m, b, *a, **k: (calls.append(m.training), real_views(m, b, *a, **k))[1])
    train(cfg(tmp_path, crop=True, crop_warmup_epochs=1, epochs=2, val_fraction=0.0))
    # epoch 1: no training crops; epoch 2: 2 batches; every evaluation of test reads boxes too (eval mode)
    assert calls.count(True) == 2


# ------------------------------------------------------------------ boxes: oracle, random, margin, source
def _first_batch(c):
    mean, std = normalisation(c.model)
    ds = build_data(c, mean, std)["train"]
    loader = torch.utils.data.DataLoader(ds, batch_size=4)
    return next(iter(loader))


def test_oracle_crop_is_the_part_box_cut_from_the_source(tmp_path):
    c = cfg(tmp_path, crop=True, crop_boxes="oracle")
    b = _first_batch(c)
    torch.manual_seed(0)
    m = build_model(c, 3)
    crops, boxes, _ = crop_views(m, b, b["image"], c)
    assert torch.equal(boxes[-1], b["part_box"])
    from fgnb.boxes import scale_boxes
    from fgnb.crop import crop_and_resize
    ref = crop_and_resize(b["source"], scale_boxes(b["part_box"], (16, 16), b["source"].shape[-2:]), 16)
    assert torch.equal(crops[0], ref) and b["source"].shape[-1] == 64  # source = 4 x input by default


def test_random_boxes_keep_the_size_and_stay_inside():
    g = torch.Generator().manual_seed(0)
    boxes = torch.tensor([[0.0, 0.0, 8.0, 8.0], [4.0, 2.0, 16.0, 10.0], [0.0, 0.0, 16.0, 16.0]]).repeat(50, 1)
    r = random_boxes_like(boxes, (16, 16), g)
    torch.testing.assert_close(r[:, 2:] - r[:, :2], boxes[:, 2:] - boxes[:, :2])
    assert (r >= 0).all() and (r <= 16).all()
    assert r[0::3, 0].std() > 1  # the place varies


def test_margin_grows_the_box_and_clips():
    b = torch.tensor([[4.0, 4.0, 8.0, 12.0], [0.0, 0.0, 4.0, 4.0]])
    torch.testing.assert_close(expand_boxes(b, 0.5, (16, 16)), torch.tensor([[2.0, 0.0, 10.0, 16.0], [0.0, 0.0, 6.0, 6.0]]))


def test_crop_from_source_is_the_default():
    assert TrainConfig().crop_from == "source" and TrainConfig().crop_update == "joint"


def test_evaluate_reports_crop_only_and_part_iou(tmp_path):
    res = train(cfg(tmp_path, crop=True, crop_boxes="oracle"))["test"]
    assert res["part_iou"] == pytest.approx(1.0) and res["part_hit"] == 1.0
    assert 0 <= res["top1_crop_only"] <= 1


# ------------------------------------------------------------------ the validation split
def _val_paths(c):
    mean, std = normalisation(c.model)
    return [p for p, _ in build_data(c, mean, std)["val"].samples]


def test_validation_split_does_not_depend_on_the_training_seed(tmp_path):
    a = _val_paths(cfg(tmp_path, seed=0))
    assert a == _val_paths(cfg(tmp_path, seed=7))
    assert a != _val_paths(cfg(tmp_path, seed=0, split_seed=1))


# ------------------------------------------------------------------ data speed: what is rendered and decoded
def test_training_set_renders_the_source_view_only_for_crops(tmp_path):
    mean, std = normalisation(TINY["model"])
    plain = build_data(cfg(tmp_path), mean, std)
    assert "source" not in plain["train"][0] and "source" in plain["val"][0] and "source" in plain["test"][0]
    assert "source" in build_data(cfg(tmp_path, crop=True), mean, std)["train"][0]


def test_image_cache_decodes_once_and_changes_no_pixel(tmp_path, monkeypatch):
    import fgnb.data as data_mod
    calls = []
    real = data_mod.load_rgb
    monkeypatch.setattr(data_mod, "load_rgb", lambda p: (calls.append(p), real(p))[1])
    runs = {}
    for mode in ("on", "off"):
        calls.clear()
        res = train(cfg(tmp_path, mode, cache_images=mode, epochs=2, limit_batches=None, crop=True))
        runs[mode] = (res, len(calls), len(set(calls)))
    on, off = runs["on"], runs["off"]
    assert on[1] == on[2]  # with the cache every file is read once
    assert off[1] > off[2]  # without it, every epoch reads again
    assert on[0]["test"] == off[0]["test"]
    a = torch.load(tmp_path / "on" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "off" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_image_cache_respects_its_limit(tmp_path):
    mean, std = normalisation(TINY["model"])
    ds = build_data(cfg(tmp_path, cache_images="off"), mean, std)["train"]
    assert ds.cache_images(limit_bytes=10) is False and ds._cache is None
    assert ds.cache_images() is True
