"""The attention maths against float64 references and hand-checkable inputs."""
import math

import pytest
import torch

from fgnb.attention import (
    attention_rollout,
    boxes_from_mask,
    cls_attention,
    cumulative_product,
    head_product,
    mean_threshold,
)


def random_attention(b=3, h=12, k=49, seed=0, sharp=3.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, h, k + 1, generator=g, dtype=torch.float64) * sharp).softmax(-1)[..., 1:]


def test_cls_attention_is_softmax_row_over_all_tokens():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 4, 8, generator=g), torch.randn(2, 4, 10, 8, generator=g)
    a = cls_attention(q, k, scale=8 ** -0.5, num_prefix_tokens=1)
    ref = torch.softmax(torch.einsum("bhd,bhnd->bhn", q, k) / math.sqrt(8), -1)[..., 1:]
    assert a.shape == (2, 4, 9)
    torch.testing.assert_close(a, ref)
    # the patches' share is below 1 because the CLS column is dropped
    assert (a.sum(-1) < 1).all()


def test_head_product_is_log_of_product():
    a = random_attention(sharp=0.5, h=3)
    s = head_product(a)
    torch.testing.assert_close(s.exp(), a.prod(dim=1))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_mask_independent_of_dtype(dtype):
    a = random_attention(b=4, h=12, k=196, seed=1).to(dtype)
    ref = a.double().prod(dim=1)
    ref_mask = ref > ref.mean(dim=1, keepdim=True)
    assert torch.equal(mean_threshold(head_product(a)), ref_mask)


def test_float16_product_underflows_but_log_space_does_not():
    # 12 heads, 784 patches: each weight ~1e-3, the product ~1e-36 underflows float16 (and float32 subnormals).
    a = random_attention(b=2, h=12, k=784, seed=2, sharp=1.0).half()
    naive = a.prod(dim=1)
    assert (naive == 0).all()  # the naive product carries no information at all
    mask = mean_threshold(head_product(a))
    ref = a.double().prod(dim=1)
    assert torch.equal(mask, ref > ref.mean(dim=1, keepdim=True))
    assert 0 < mask.sum() < mask.numel()


def test_mean_threshold_exact_and_scaled():
    p = torch.tensor([[1.0, 2.0, 3.0, 6.0]], dtype=torch.float64)  # mean 3
    s = p.log()
    assert mean_threshold(s).tolist() == [[False, False, False, True]]
    assert mean_threshold(s, scale=0.6).tolist() == [[False, True, True, True]]  # > 1.8
    with pytest.raises(ValueError, match="scale"):
        mean_threshold(s, scale=0)
    with pytest.raises(ValueError, match=r"\(B, K\)"):
        mean_threshold(s[0])


def test_head_product_rejects_wrong_shape():
    with pytest.raises(ValueError, match=r"\(B, H, K\)"):
        head_product(torch.rand(4, 5))


def test_cumulative_product_hand_checked():
    a1 = torch.tensor([[[0.5, 0.25], [0.5, 0.5]]], dtype=torch.float64)  # (1, 2 heads, 2 patches)
    a2 = torch.tensor([[[0.1, 0.2], [1.0, 0.5]]], dtype=torch.float64)
    cum = cumulative_product([a1, a2]).exp()
    torch.testing.assert_close(cum[0], torch.tensor([[0.25, 0.125]], dtype=torch.float64))
    torch.testing.assert_close(cum[1], torch.tensor([[0.025, 0.0125]], dtype=torch.float64))


def test_rollout_hand_checked():
    # N = 2 tokens (CLS + one patch), one head: A = [[0.5, 0.5], [0, 1]]
    a = torch.tensor([[[[0.5, 0.5], [0.0, 1.0]]]], dtype=torch.float64)
    # Â = (A + I) / 2 row-normalised = [[0.75, 0.25], [0, 1]];  Â @ Â CLS row = [0.5625, 0.4375]
    torch.testing.assert_close(attention_rollout([a]), torch.tensor([[0.25]], dtype=torch.float64))
    torch.testing.assert_close(attention_rollout([a, a]), torch.tensor([[0.4375]], dtype=torch.float64))
    with pytest.raises(ValueError, match="head_fusion"):
        attention_rollout([a], head_fusion="min")


def grid_mask(rows, gh=4, gw=5):
    return torch.tensor(rows, dtype=torch.bool).view(1, gh, gw)


def test_boxes_all_rule_and_pixels():
    m = grid_mask([[0, 0, 0, 0, 0],
                   [0, 1, 0, 0, 0],
                   [0, 0, 0, 1, 0],
                   [0, 0, 0, 0, 0]])
    box = boxes_from_mask(m, (4, 5), 16)
    assert box.tolist() == [[16.0, 16.0, 64.0, 48.0]]
    # flat (B, K) input gives the same
    assert boxes_from_mask(m.view(1, -1), (4, 5), 16).tolist() == box.tolist()


def test_boxes_largest_component_8_connected():
    m = grid_mask([[1, 0, 0, 0, 0],
                   [0, 0, 0, 1, 0],
                   [0, 0, 1, 0, 0],
                   [0, 0, 0, 1, 1]])
    # the single cell top-left is its own group; the diagonal chain is one 8-connected group of 4
    assert boxes_from_mask(m, (4, 5), (10, 20), rule="largest").tolist() == [[40.0, 10.0, 100.0, 40.0]]
    assert boxes_from_mask(m, (4, 5), (10, 20), rule="all").tolist() == [[0.0, 0.0, 100.0, 40.0]]


def test_boxes_edge_cases_batched():
    gh, gw = 3, 4
    masks = torch.zeros(4, gh, gw, dtype=torch.bool)
    masks[1, 1, 2] = True  # one patch
    masks[2, :, -1] = True  # right border
    masks[3] = True  # everything
    boxes = boxes_from_mask(masks, (gh, gw), 8)
    assert boxes[0].tolist() == [0, 0, 32, 24]  # nothing marked -> whole image
    assert boxes[1].tolist() == [16, 8, 24, 16]
    assert boxes[2].tolist() == [24, 0, 32, 24]
    assert boxes[3].tolist() == [0, 0, 32, 24]
    assert torch.equal(boxes_from_mask(masks, (gh, gw), 8, rule="largest"), boxes)


def test_boxes_min_size_grows_inside_image():
    m = torch.zeros(1, 4, 4, dtype=torch.bool)
    m[0, 0, 0] = True
    box = boxes_from_mask(m, (4, 4), 8, min_size=16)
    assert box.tolist() == [[0.0, 0.0, 16.0, 16.0]]  # grown, then shifted back inside
    m = torch.zeros(1, 4, 4, dtype=torch.bool)
    m[0, 1, 1] = True
    assert boxes_from_mask(m, (4, 4), 8, min_size=24).tolist() == [[0.0, 0.0, 24.0, 24.0]]


def test_boxes_bad_input():
    with pytest.raises(ValueError, match="rule"):
        boxes_from_mask(torch.ones(1, 4, dtype=torch.bool), (2, 2), 8, rule="biggest")
    with pytest.raises(ValueError, match="grid 2x3"):
        boxes_from_mask(torch.ones(1, 4, dtype=torch.bool), (2, 3), 8)
