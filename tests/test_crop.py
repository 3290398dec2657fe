"""Batched crop against torchvision's per-image resized_crop."""
import pytest
import torch
import torchvision.transforms.functional as TF

from fgnb.boxes import scale_boxes
from fgnb.crop import attention_boxes, crop_and_resize


def smooth_images(b=3, h=40, w=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(b, 3, h // 4, w // 4, generator=g)
    return torch.nn.functional.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)


@pytest.mark.parametrize("size", [16, 24, (20, 12)])
def test_matches_resized_crop(size):
    imgs = smooth_images()
    boxes = torch.tensor([[4, 8, 28, 32], [0, 0, 48, 40], [30, 20, 48, 40]], dtype=torch.float32)  # borders too
    out = crop_and_resize(imgs, boxes, size)
    hw = (size, size) if isinstance(size, int) else size
    assert out.shape == (3, 3, *hw)
    for i, (x0, y0, x1, y1) in enumerate(boxes.int().tolist()):
        ref = TF.resized_crop(imgs[i], y0, x0, y1 - y0, x1 - x0, list(hw), antialias=True)
        err = (out[i] - ref).abs()
        if y1 - y0 <= hw[0] and x1 - x0 <= hw[1]:
            # enlarging: the same bilinear samples; only the border rows see pixels outside the crop
            assert err[:, 1:-1, 1:-1].max() < 1e-4
        else:
            # shrinking: roi_align averages ceil(box/size) samples per pixel (a box filter),
            # torchvision a triangle filter: close, not equal
            assert err.mean() < 0.03 and err.max() < 0.1


def test_upsampling_is_exact_bilinear_inside():
    imgs = smooth_images(b=1)
    box = torch.tensor([[8.0, 8.0, 24.0, 24.0]])
    out = crop_and_resize(imgs, box, 32)
    ref = TF.resized_crop(imgs[0], 8, 8, 16, 16, [32, 32], antialias=False)
    torch.testing.assert_close(out[0, :, 1:-1, 1:-1], ref[:, 1:-1, 1:-1], atol=1e-5, rtol=0)


def test_batch_of_one_and_errors():
    imgs = smooth_images(b=1)
    assert crop_and_resize(imgs, torch.tensor([[0.0, 0.0, 48.0, 40.0]]), 8).shape == (1, 3, 8, 8)
    with pytest.raises(ValueError, match="one .* box per image"):
        crop_and_resize(imgs, torch.zeros(2, 4), 8)
    with pytest.raises(ValueError, match="B, C, H, W"):
        crop_and_resize(imgs[0], torch.zeros(1, 4), 8)


def test_scale_boxes():
    b = torch.tensor([[8.0, 4.0, 16.0, 12.0]])
    assert scale_boxes(b, (32, 64), (128, 256)).tolist() == [[32.0, 16.0, 64.0, 48.0]]


def test_attention_boxes_modes():
    from fgnb.model import create_model

    torch.manual_seed(0)
    m = create_model("vit_tiny_patch16_224", num_classes=3, img_size=32, patch_size=8, depth=4, embed_dim=48, num_heads=3)
    out = m(torch.randn(2, 3, 32, 32), attn_layers="all", full_attn=True)
    for mode, n in [("last", 1), ("cumulative", 1), ("per_layer", 3), ("rollout", 1)]:
        boxes = attention_boxes(out, mode, target_layers=m.target_layers)
        assert len(boxes) == n and all(b.shape == (2, 4) for b in boxes)
        assert all(((b >= 0) & (b <= 32)).all() for b in boxes)
    with pytest.raises(ValueError, match="not one of"):
        attention_boxes(out, "first")
    with pytest.raises(ValueError, match="attn_layers"):
        attention_boxes(m(torch.randn(1, 3, 32, 32)), "last")


def test_crop_block_reads_the_chosen_block_and_the_product_up_to_it():
    """crop_block=l: ``last`` is block l's head product, ``cumulative`` the product over
    blocks 0..l, ``concentrated`` per image the lowest-entropy block among 0..l."""
    from fgnb.attention import cumulative_product, head_product
    from fgnb.crop import attention_scores, crop_attention_layers, most_concentrated
    from fgnb.model import create_model

    torch.manual_seed(0)
    m = create_model("vit_tiny_patch16_224", num_classes=3, img_size=32, patch_size=8, depth=4, embed_dim=48, num_heads=3)
    out = m(torch.randn(2, 3, 32, 32), attn_layers="all", full_attn=True)
    assert crop_attention_layers(m.target_layers, "last", 0) == [0]
    assert crop_attention_layers(m.target_layers, "cumulative", 1) == [0, 1]
    assert crop_attention_layers(m.target_layers, "last") == [3]  # default: the deepest target layer
    (s0,) = attention_scores(out, "last", m.target_layers, block=0)
    torch.testing.assert_close(s0, head_product(out.attn[0]))
    (c1,) = attention_scores(out, "cumulative", m.target_layers, block=1)
    torch.testing.assert_close(c1, cumulative_product([out.attn[0], out.attn[1]])[-1])
    torch.testing.assert_close(c1, head_product(out.attn[0]) + head_product(out.attn[1]))  # a product in log space
    # concentrated: make block 2's map of image 0 one-hot-like, so image 0 reads block 2
    sharp = {**out.attn, 2: out.attn[2].clone()}
    sharp[2][0] = 1e-6
    sharp[2][0, :, 5] = 1.0
    o2 = type(out)(out.logits, out.cls, out.layers, sharp, out.full_attn, out.grid, out.patch_size)
    (cc,) = attention_scores(o2, "concentrated", m.target_layers, block=2)
    torch.testing.assert_close(cc[0], head_product(sharp[2])[0])
    ent = [-(s.log_softmax(-1).exp() * s.log_softmax(-1)).sum(-1)[1] for s in (head_product(sharp[l]) for l in range(3))]
    best = int(torch.stack(ent).argmin())
    torch.testing.assert_close(cc[1], head_product(sharp[best])[1])
    torch.testing.assert_close(most_concentrated([cc, cc]), cc)
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="crop_block"):
            crop_attention_layers(m.target_layers, "last", bad)
    with pytest.raises(ValueError, match="per_layer"):
        crop_attention_layers(m.target_layers, "per_layer", 0)


def test_crop_block_option_is_checked_against_the_mode_and_the_depth():
    from fgnb.config import ConfigError, TrainConfig

    assert TrainConfig(crop_block=0, depth=6).validate().crop_block == 0
    with pytest.raises(ConfigError, match="per_layer"):
        TrainConfig(crop_block=0, crop_attention="per_layer").validate()
    with pytest.raises(ConfigError, match=r"blocks 0\.\.5"):
        TrainConfig(crop_block=6, depth=6).validate()
    with pytest.raises(ConfigError, match="crop_block"):
        TrainConfig(crop_block=-1).validate()
