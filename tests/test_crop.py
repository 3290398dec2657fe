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
