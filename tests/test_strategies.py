"""The update strategies' semantics on a tiny model (CPU, exact)."""
import copy

import pytest
import torch
import torch.nn.functional as F

from fgnb.model import create_model
from fgnb.strategies import (
    LastStrategy,
    NonFiniteLossError,
    ProgressiveStrategy,
    StepContext,
    SummedStrategy,
    make_strategy,
)


def tiny(seed=0, depth=5):
    torch.manual_seed(seed)
    return create_model("vit_tiny_patch16_224", num_classes=4, img_size=16, patch_size=8, depth=depth,
                        embed_dim=32, num_heads=2)


def batch(seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(6, 3, 16, 16, generator=g), torch.randint(0, 4, (6,), generator=g)


def snapshot(m):
    return {k: v.detach().clone() for k, v in m.named_parameters()}


def changed(before, after, prefix):
    keys = [k for k in before if k.startswith(prefix)]
    assert keys, prefix
    return any(not torch.equal(before[k], after[k]) for k in keys)


def adamw(m, lr=1e-2):
    return torch.optim.AdamW(m.parameters(), lr=lr, weight_decay=0.05)


def test_stage_r_touches_only_its_layers_and_head():
    m = tiny()
    opt = adamw(m)
    snaps = [snapshot(m)]
    ctx = StepContext(after_step=lambda: snaps.append(snapshot(m)))
    x, y = batch()
    ProgressiveStrategy().step(m, opt, x, y, ctx)
    assert len(snaps) == 4 and m.target_layers == (2, 3, 4)
    for r, target in enumerate(m.target_layers):
        before, after = snaps[r], snaps[r + 1]
        for b in range(m.depth):
            assert changed(before, after, f"vit.blocks.{b}.") == (b <= target), (r, b)
        for h in range(3):
            assert changed(before, after, f"heads.{h}.") == (h == r), (r, h)
        assert changed(before, after, "vit.patch_embed.")


def reference_progressive(m, opt, x, y):
    """The method written out by hand: for r = 1..R, forward, LOSS_r, backward, step."""
    for r in range(m.num_targets):
        opt.zero_grad(set_to_none=True)
        t = m.vit.norm_pre(m.vit.patch_drop(m.vit._pos_embed(m.vit.patch_embed(x))))
        for i in range(m.target_layers[r] + 1):
            t = m.vit.blocks[i](t)
        loss = F.cross_entropy(m.heads[r](m.vit.norm(t[:, 0])), y)
        loss.backward()
        opt.step()


def test_progressive_equals_hand_written_loop_exactly():
    a, b = tiny(), tiny()
    oa, ob = adamw(a), adamw(b)
    for s in range(3):
        x, y = batch(s)
        ProgressiveStrategy().step(a, oa, x, y)
        reference_progressive(b, ob, x, y)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k


def test_progressive_differs_from_summed_with_adamw():
    a, b = tiny(), tiny()
    x, y = batch()
    ProgressiveStrategy().step(a, adamw(a), x, y)
    SummedStrategy().step(b, adamw(b), x, y)
    diff = max((pa - pb).abs().max().item() for pa, pb in zip(a.parameters(), b.parameters()))
    assert diff > 1e-4


def test_sgd_gradients_at_one_point_equal_summed():
    """Plain SGD: R steps with gradients all taken at the same point == one step on the sum."""
    a, b, c = tiny(), tiny(), tiny()
    sgd = lambda m: torch.optim.SGD(m.parameters(), lr=0.1)
    x, y = batch()
    ProgressiveStrategy(reforward=False).step(a, sgd(a), x, y)
    SummedStrategy().step(b, sgd(b), x, y)
    ProgressiveStrategy(reforward=True).step(c, sgd(c), x, y)
    for (k, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, atol=1e-6, rtol=1e-5, msg=k)
    # re-running the forward after each step is what makes them differ
    diff = max((pc - pb).abs().max().item() for pc, pb in zip(c.parameters(), b.parameters()))
    assert diff > 1e-4


def test_sgd_with_momentum_one_point_differs_from_summed():
    a, b = tiny(), tiny()
    sgd = lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    oa, ob = sgd(a), sgd(b)
    for s in range(2):
        x, y = batch(s)
        ProgressiveStrategy(reforward=False).step(a, oa, x, y)
        SummedStrategy().step(b, ob, x, y)
    diff = max((pa - pb).abs().max().item() for pa, pb in zip(a.parameters(), b.parameters()))
    assert diff > 1e-4


def test_last_updates_only_the_deepest_head():
    m = tiny()
    before = snapshot(m)
    losses, out = LastStrategy().step(m, adamw(m), *batch())
    after = snapshot(m)
    assert len(losses) == 1
    assert not changed(before, after, "heads.0.") and not changed(before, after, "heads.1.")
    assert changed(before, after, "heads.2.") and changed(before, after, "vit.blocks.4.")


def test_deep_first_order_and_losses_reported_by_head():
    m = tiny()
    order = []
    x, y = batch()
    ctx = StepContext(after_step=lambda: order.append(len(order)))
    losses, out = ProgressiveStrategy(order="deep_first").step(m, adamw(m), x, y, ctx, attn_layers="targets")
    assert len(losses) == 3 and len(order) == 3
    assert sorted(out.attn) == [2, 3, 4]  # attention read on the last stage, deep enough


def test_strategy_returns_attention_of_last_forward():
    m = tiny()
    _, out = ProgressiveStrategy().step(m, adamw(m), *batch(), attn_layers=[4])
    assert list(out.attn) == [4] and out.attn[4].shape == (6, 2, 4)


def test_non_finite_loss_stops():
    m = tiny()
    with torch.no_grad():
        m.heads[0].fc2.bias.fill_(float("nan"))
    with pytest.raises(NonFiniteLossError, match="head 0"):
        ProgressiveStrategy().step(m, adamw(m), *batch())


def test_make_strategy_errors():
    assert isinstance(make_strategy("summed"), SummedStrategy)
    with pytest.raises(ValueError, match="not one of"):
        make_strategy("sum")
    with pytest.raises(ValueError, match="order"):
        ProgressiveStrategy(order="random")
