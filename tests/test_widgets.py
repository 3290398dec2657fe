"""The chapter 3/4 explorers (fgnb.widgets): controls redraw, state matches fgnb.attention."""
import math

import pytest
import torch

pytest.importorskip("ipywidgets")

from fgnb import boxes_from_mask, create_model, head_product, mean_threshold  # noqa: E402
from fgnb.widgets import AttentionExplorer, ThresholdExplorer  # noqa: E402


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = create_model("vit_tiny_patch16_224", num_classes=3, img_size=32, patch_size=8, depth=3,
                     embed_dim=24, num_heads=3).eval()
    # Sharpen the attention (a random ViT's is nearly uniform) so the masks are informative.
    with torch.no_grad():
        for blk in m.vit.blocks:
            blk.attn.qkv.weight.mul_(6.0)
    return m


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(1)
    return torch.randn(3, 3, 32, 32, generator=g)


def test_attention_explorer_redraws_on_control_change(model, images):
    ex = AttentionExplorer(model, images, labels=[0, 1, 2])
    assert set(ex.controls) == {"image", "layer", "head"}
    assert ex.png.startswith(b"\x89PNG") and ex.image.value == ex.png
    assert ex.attn.shape == (3, 16)
    first = ex.png
    ex.controls["head"].value = 1  # a control change redraws by itself
    assert ex.png != first and ex.image.value == ex.png
    single = ex.png
    ex.controls["layer"].value = 0
    assert ex.png != single
    out = model(images[:1], attn_layers="all")
    assert torch.allclose(ex.attn, out.attn[0][0], atol=1e-6)
    before = ex.png
    ex.set(image=2)
    assert ex.png != before
    assert torch.allclose(ex.attn, model(images[2:3], attn_layers=[0]).attn[0][0], atol=1e-6)
    assert "true 2" in ex.status.value


def test_attention_explorer_computes_each_image_once(model, images):
    ex = AttentionExplorer(model, images)
    calls = []
    handle = model.register_forward_hook(lambda *a: calls.append(1))
    try:
        for layer in range(3):
            for head in ("all", 0, 2):
                ex.set(layer=layer, head=head)
        ex.set(image=1)
        ex.set(head=1)
    finally:
        handle.remove()
    assert len(calls) == 1  # image 0 was cached by the constructor, image 1 once


def test_threshold_explorer_box_follows_controls(model, images):
    ex = ThresholdExplorer(model, images, scale_range=(0.1, 100.0), part_boxes=[(0, 0, 8, 8), None, None])
    assert set(ex.controls) == {"image", "mode", "layer", "scale", "rule"}
    out = model(images[:1], attn_layers="all")
    s = head_product(out.attn[2])
    expected = boxes_from_mask(mean_threshold(s, 1.0), out.grid, out.patch_size)[0]
    assert torch.equal(ex.box, expected)
    assert torch.equal(ex.mask, mean_threshold(s, 1.0)[0])

    # ratio = max P / mean P: just below it only the top patch is marked (a one-patch box),
    # just above it nothing is, and the box is the whole image.
    ratio = math.exp(float(ex.scores.max() - (torch.logsumexp(ex.scores.double(), 0) - math.log(16))))
    assert 1.0 < ratio < 100.0
    png = ex.png
    ex.controls["scale"].value = ratio * 0.99
    assert int(ex.mask.sum()) == 1
    assert (ex.box[2:] - ex.box[:2]).tolist() == [8.0, 8.0]
    assert ex.png != png
    ex.controls["scale"].value = min(ratio * 1.01, 100.0)
    assert int(ex.mask.sum()) == 0
    assert ex.box.tolist() == [0.0, 0.0, 32.0, 32.0]


def test_threshold_explorer_modes_and_rules(model, images):
    ex = ThresholdExplorer(model, images, mode="cumulative", layer=-1, scale=0.5)
    cum = ex.scores.clone()
    out = model(images[:1], attn_layers="all")
    manual = sum(head_product(out.attn[l]) for l in range(3))[0].float()
    assert torch.allclose(cum, manual, atol=1e-5)
    ex.set(mode="rollout")
    assert ex.scores.shape == (16,) and not torch.allclose(ex.scores, cum)
    ex.set(mode="layer", rule="largest")
    largest = ex.box.clone()
    ex.set(rule="all")
    assert ((ex.box[2:] - ex.box[:2]) >= (largest[2:] - largest[:2])).all()  # 'all' contains 'largest'


def test_values_are_validated(model, images):
    ex = ThresholdExplorer(model, images)
    with pytest.raises(ValueError, match="scale"):
        ex.set(scale=-1.0)
    with pytest.raises(ValueError, match="rule"):
        ex.set(rule="biggest")
    with pytest.raises(ValueError, match="layer"):
        ex.set(layer=7)
    with pytest.raises(ValueError, match="image"):
        ex.set(image=3)
    with pytest.raises(ValueError, match="unknown control"):
        ex.set(head=0)
    assert ex.state["rule"] == "all"  # nothing was changed by the refused calls
    with pytest.raises(Exception):  # the widget itself refuses an unknown option (traitlets)
        ex.controls["mode"].value = "max"
    with pytest.raises(ValueError, match="mode"):
        ThresholdExplorer(model, images, mode="max")
    with pytest.raises(ValueError, match="scale_range"):
        ThresholdExplorer(model, images, scale_range=(2.0, 1.0))
    with pytest.raises(ValueError, match="head"):
        AttentionExplorer(model, images, head=5)
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        AttentionExplorer(model, torch.zeros(2, 1, 32, 32))
    with pytest.raises(TypeError, match="FGViT"):
        AttentionExplorer(torch.nn.Linear(2, 2), images)


def test_accepts_item_dicts_and_displays(model, images):
    items = [{"image": images[i], "label": torch.tensor(i), "part_box": torch.tensor([0.0, 0.0, 16.0, 16.0])}
             for i in range(3)]
    ex = ThresholdExplorer(model, items, class_names=["a", "b", "c"])
    assert ex.labels == [0, 1, 2] and ex.part_boxes[0].tolist() == [0.0, 0.0, 16.0, 16.0]
    assert "true a" in ex.status.value
    bundle = ex._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle


@pytest.mark.parametrize("version, enabled", [("8.1.5", True), ("7.7.1", False)])
def test_colab_custom_widget_manager_only_for_ipywidgets_8(model, images, monkeypatch, version, enabled):
    import sys
    import types

    import fgnb.widgets as fw

    calls = []
    colab = types.ModuleType("google.colab")
    colab.output = types.SimpleNamespace(enable_custom_widget_manager=lambda: calls.append(1))
    monkeypatch.setitem(sys.modules, "google", types.ModuleType("google"))
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    monkeypatch.setattr(fw.W, "__version__", version)
    ThresholdExplorer(model, images)
    assert len(calls) == int(enabled)
    monkeypatch.delitem(sys.modules, "google.colab")
    assert fw.prepare_colab() is False  # not in Colab: nothing to do


def test_bundle_without_ipywidgets_8_repr(model, images):
    import types

    ex = AttentionExplorer(model, images)
    model_id = ex.widget.model_id
    ex.widget = types.SimpleNamespace(model_id=model_id)  # an ipywidgets 7 box has no _repr_mimebundle_
    view = ex._repr_mimebundle_()["application/vnd.jupyter.widget-view+json"]
    assert view == {"version_major": 2, "version_minor": 0, "model_id": model_id}
