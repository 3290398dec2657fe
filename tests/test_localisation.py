"""The localisation profile: entropy and attention mass per block and head (fgnb.localisation)."""
import math

import pytest
import torch

from fgnb.localisation import attention_entropy, attention_mass, localisation_profile, patch_centres, patches_in_boxes


def test_entropy_is_zero_on_one_patch_one_when_flat_and_matches_the_formula():
    K = 16
    one = torch.zeros(1, 1, K)
    one[..., 3] = 0.7  # the CLS token's own share is left out: renormalised over the patches
    flat = torch.full((1, 1, K), 0.9 / K)
    assert attention_entropy(one).item() == pytest.approx(0.0, abs=1e-12)
    assert attention_entropy(flat).item() == pytest.approx(1.0)
    g = torch.Generator().manual_seed(0)
    a = torch.rand(2, 3, K, generator=g, dtype=torch.float64)
    p = a / a.sum(-1, keepdim=True)
    ref = torch.tensor([[-sum(float(v) * math.log(float(v)) for v in p[b, h]) / math.log(K) for h in range(3)]
                        for b in range(2)], dtype=torch.float64)
    assert torch.allclose(attention_entropy(a), ref)
    # two patches of equal mass: log 2 / log K
    two = torch.zeros(1, 1, K, dtype=torch.float64)
    two[..., [0, 5]] = 0.25
    assert attention_entropy(two).item() == pytest.approx(math.log(2) / math.log(K))


def test_patch_centres_and_which_lie_in_a_box():
    c = patch_centres((2, 3), 4)  # 2 rows x 3 cols of 4 px patches, row-major
    assert c.tolist() == [[2, 2], [6, 2], [10, 2], [2, 6], [6, 6], [10, 6]]
    boxes = torch.tensor([[0.0, 0.0, 8.0, 4.0], [5.0, 5.0, 12.0, 8.0], [float("nan")] * 4])
    inside = patches_in_boxes(boxes, (2, 3), 4)
    assert inside.tolist() == [[True, True, False, False, False, False],
                               [False, False, False, False, True, True],
                               [False] * 6]


def test_mass_on_a_box_equals_its_area_share_for_a_flat_map_and_one_for_a_focused_one():
    grid, patch = (4, 4), 4
    box = torch.tensor([[0.0, 0.0, 8.0, 8.0]])  # the 2 x 2 top-left patches: a quarter of them
    flat = torch.full((1, 2, 16), 1 / 17)
    assert torch.allclose(attention_mass(flat, box, grid, patch), torch.tensor([[0.25, 0.25]]))
    focused = torch.zeros(1, 1, 16)
    focused[0, 0, 5] = 1.0  # patch (1, 1): inside
    assert attention_mass(focused, box, grid, patch).item() == pytest.approx(1.0)
    focused = torch.zeros(1, 1, 16)
    focused[0, 0, 10] = 1.0  # patch (2, 2): centre (10, 10), outside
    assert attention_mass(focused, box, grid, patch).item() == pytest.approx(0.0)
    with pytest.raises(ValueError, match="grid"):
        attention_mass(flat, box, (3, 3), patch)


class _Toy(torch.nn.Module):
    """Two blocks on a 2 x 2 grid of 4 px patches: block 0 all on patch 0, block 1 flat."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x, attn_layers=None):
        b = x.shape[0]
        focused = torch.zeros(b, 2, 4)
        focused[..., 0] = 1.0
        out = type("Out", (), {})()
        out.attn = {0: focused, 1: torch.full((b, 2, 4), 0.25)}
        out.grid, out.patch_size = (2, 2), (4, 4)
        return out


def test_profile_averages_every_block_and_head_and_reads_the_flat_share():
    part = torch.tensor([[0.0, 0.0, 4.0, 4.0]] * 3)       # patch 0 only: share 1/4
    obj = torch.tensor([[0.0, 0.0, 8.0, 4.0], [float("nan")] * 4, [0.0, 0.0, 8.0, 8.0]])  # shares 1/2, -, 1
    batch = {"image": torch.zeros(3, 3, 8, 8), "part_box": part, "box": obj}
    res = localisation_profile(_Toy(), [batch, batch], device=torch.device("cpu"))
    assert res["images"] == 6 and res["images_object"] == 4 and res["images_part"] == 6
    assert torch.allclose(torch.tensor(res["entropy"]), torch.tensor([[0.0, 0.0], [1.0, 1.0]]))
    assert torch.allclose(torch.tensor(res["mass_part"]), torch.tensor([[1.0, 1.0], [0.25, 0.25]]))
    assert res["share_part"] == pytest.approx(0.25)
    # the flat block puts on each box its area share; the focused one all of its mass
    assert torch.allclose(torch.tensor(res["mass_object"]), torch.tensor([[1.0, 1.0], [0.75, 0.75]]))
    assert res["share_object"] == pytest.approx(0.75)
    assert localisation_profile(_Toy(), [batch, batch], limit=3)["images"] == 3


def test_localisation_table_has_a_row_per_block_with_the_head_means():
    from fgnb.results import localisation_table

    res = {"kind": "localisation", "rows": [{"model": "runs/a/best.pt", "split": "val", "share_part": 0.1,
                                            "entropy": [[0.1, 0.3], [0.9, 1.0]], "mass_part": [[0.8, 0.6], [0.1, 0.2]]}]}
    rows = localisation_table(res)
    assert [(r["block"], r["entropy"], r["mass_part"]) for r in rows] == [(1, 0.2, 0.7), (2, 0.95, 0.15)]
    assert rows[0]["model"] == "best.pt" and rows[0]["share_part"] == 0.1
    with pytest.raises(ValueError, match="kind 'localisation'"):
        localisation_table({"kind": "boxes"})
