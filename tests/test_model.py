"""FGViT against timm's own computations."""
import pytest
import timm
import torch

from fgnb.model import FGViT, create_model, resolve_targets

SMALL = dict(img_size=32, patch_size=8, depth=4, embed_dim=48, num_heads=3)


def small(num_classes=5, targets=3, **kw):
    torch.manual_seed(0)
    return create_model("vit_tiny_patch16_224", num_classes=num_classes, targets=targets, **{**SMALL, **kw}).eval()


def test_final_cls_equals_timm_forward_features():
    m = small()
    x = torch.randn(3, 3, 32, 32)
    out = m(x)
    torch.testing.assert_close(out.cls[-1], m.vit.forward_features(x)[:, 0], atol=1e-5, rtol=0)
    assert out.layers == (1, 2, 3) and len(out.logits) == 3 and out.logits[0].shape == (3, 5)


@pytest.mark.parametrize("model", ["vit_tiny_patch16_224", "vit_tiny_r_s16_p8_224"])
def test_tokens_are_what_timms_first_block_reads(model):
    """FGViT.tokens, the one place z_0 is made, is the input of timm's first block (plain and hybrid)."""
    torch.manual_seed(0)
    kw = dict(SMALL, patch_size=2) if "_r_" in model else SMALL
    m = create_model(model, num_classes=5, **kw).eval()
    x = torch.randn(2, 3, 32, 32)
    seen = {}
    hook = m.vit.blocks[0].register_forward_pre_hook(lambda mod, args: seen.update(z0=args[0]))
    with torch.no_grad():
        m.vit.forward_features(x)
        hook.remove()
        assert torch.equal(m.tokens(x), seen["z0"])
    assert seen["z0"].shape == (2, 1 + m.grid(32, 32)[0] * m.grid(32, 32)[1], 48)


def test_intermediate_cls_equals_timm_forward_intermediates():
    m = small()
    x = torch.randn(2, 3, 32, 32)
    out = m(x)
    inter = m.vit.forward_intermediates(x, indices=[1, 2, 3], norm=True, return_prefix_tokens=True,
                                        intermediates_only=True, output_fmt="NLC")
    for c, (patches, prefix) in zip(out.cls, inter):
        torch.testing.assert_close(c, prefix[:, 0], atol=1e-5, rtol=0)


def explicit_cls_rows(vit, x):
    """CLS rows of softmax(QK^T/sqrt(d)) from timm's non-fused path, captured with hooks."""
    rows = {}
    for i, blk in enumerate(vit.blocks):
        blk.attn.fused_attn = False

        def hook(mod, inp, out, i=i):
            rows[i] = out[:, :, 0, 1:]

        blk.attn.attn_drop.register_forward_hook(hook)  # its input is the explicit softmax
    vit.forward_features(x)
    return rows


@pytest.mark.parametrize("img", [32, 48])
def test_cls_attention_equals_explicit_softmax_row(img):
    m = small(img_size=img)
    x = torch.randn(2, 3, img, img)
    out = m(x, attn_layers="all")
    assert all(m.vit.blocks[i].attn.fused_attn for i in range(4))  # main path stays fused
    ref_model = small(img_size=img)
    rows = explicit_cls_rows(ref_model.vit, x)
    assert sorted(out.attn) == [0, 1, 2, 3]
    for i in range(4):
        assert out.attn[i].shape == (2, 3, (img // 8) ** 2)
        torch.testing.assert_close(out.attn[i], rows[i], atol=1e-5, rtol=0)


def test_hybrid_vit_tokens_and_cls_attention():
    """timm's R+ViT hybrid (ResNet stem, then patches of its feature map), as in the CPU
    profile: a token covers stem stride x patch size input pixels, and the CLS attention
    still equals the explicit softmax row."""
    kw = dict(img_size=32, patch_size=2, depth=3, embed_dim=48, num_heads=3)
    torch.manual_seed(0)
    m = create_model("vit_tiny_r_s16_p8_224", num_classes=4, **kw).eval()
    assert m.patch_size == (8, 8) and m.grid(32, 32) == (4, 4)
    x = torch.randn(2, 3, 32, 32)
    out = m(x, attn_layers="all")
    assert out.grid == (4, 4)
    torch.testing.assert_close(out.cls[-1], m.vit.forward_features(x)[:, 0], atol=1e-5, rtol=0)
    rows = explicit_cls_rows(m.vit, x)
    for i in range(3):
        assert out.attn[i].shape == (2, 3, 16)
        torch.testing.assert_close(out.attn[i], rows[i], atol=1e-5, rtol=0)


def test_cls_attention_with_qk_norm_and_dynamic_size():
    torch.manual_seed(1)
    m = create_model("vit_tiny_patch16_224", num_classes=3, qk_norm=True, dynamic_img_size=True, **SMALL).eval()
    for blk in m.vit.blocks:  # make the q/k norms non-trivial
        torch.nn.init.normal_(blk.attn.q_norm.weight, 1.0, 0.3)
        torch.nn.init.normal_(blk.attn.k_norm.bias, 0.0, 0.3)
    x = torch.randn(2, 3, 40, 24)  # non-square, not the configured size
    out = m(x, attn_layers=[0, -1])
    assert out.grid == (5, 3)
    rows = explicit_cls_rows(m.vit, x)
    for i in (0, 3):
        torch.testing.assert_close(out.attn[i], rows[i], atol=1e-5, rtol=0)


def test_full_attention_row_matches_cls_attention():
    m = small()
    out = m(torch.randn(2, 3, 32, 32), attn_layers="targets", full_attn=True)
    for i in out.attn:
        torch.testing.assert_close(out.full_attn[i][:, :, 0, 1:], out.attn[i], atol=1e-6, rtol=0)
        torch.testing.assert_close(out.full_attn[i].sum(-1), torch.ones(2, 3, 17), atol=1e-5, rtol=0)


def test_upto_stops_early():
    m = small()
    calls = []
    for i, blk in enumerate(m.vit.blocks):
        blk.register_forward_hook(lambda *a, i=i: calls.append(i))
    out = m(torch.randn(1, 3, 32, 32), upto=0)
    assert calls == [0, 1] and out.layers == (1,) and len(out.logits) == 1
    calls.clear()
    m(torch.randn(1, 3, 32, 32), upto=0, attn_layers=[2])  # attention asks for a deeper layer
    assert calls == [0, 1, 2]


def test_targets_resolution_and_errors():
    assert resolve_targets(3, 12) == (9, 10, 11)
    assert resolve_targets([-1, 5], 12) == (5, 11)
    with pytest.raises(ValueError, match="between 1 and 4"):
        small(targets=5)
    with pytest.raises(ValueError, match="out of range"):
        small(targets=[1, 7])
    with pytest.raises(ValueError, match="same layer"):
        resolve_targets([1, -3], 4)


def test_clear_errors():
    with pytest.raises(ValueError, match="Did you mean"):
        create_model("vit_tiny_patch16_2244", num_classes=3)
    with pytest.raises(ValueError, match="does not match the model's img_size 32x32"):
        small()(torch.randn(1, 3, 48, 48))
    m = create_model("vit_tiny_patch16_224", num_classes=3, dynamic_img_size=True, **SMALL)
    with pytest.raises(ValueError, match="not divisible by the patch size 8x8"):
        m(torch.randn(1, 3, 36, 32))
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        create_model("vit_tiny_patch16_224", num_classes=3, weights="/tmp/nope.pth")
    with pytest.raises(ValueError, match="CLS token"):
        create_model("vit_tiny_patch16_224", num_classes=3, class_token=False, global_pool="avg", **SMALL)
    with pytest.raises(ValueError, match="upto=3"):
        small()(torch.randn(1, 3, 32, 32), upto=3)


def test_local_timm_checkpoint_loads_unchanged(tmp_path):
    torch.manual_seed(3)
    ref = timm.create_model("vit_tiny_patch16_224", num_classes=1000, **SMALL)
    path = tmp_path / "vit.pth"
    torch.save(ref.state_dict(), path)
    m = create_model("vit_tiny_patch16_224", num_classes=7, weights=path, **SMALL)
    theirs = {k: v for k, v in ref.state_dict().items() if not k.startswith("head.")}
    mine = m.vit.state_dict()
    assert set(mine) == set(theirs)
    for k in mine:
        assert torch.equal(mine[k], theirs[k]), k
    # another image size: timm resamples the position embedding from the same file
    m48 = create_model("vit_tiny_patch16_224", num_classes=7, weights=path, **{**SMALL, "img_size": 48})
    assert m48.vit.pos_embed.shape == (1, 1 + 36, 48)
    assert torch.equal(m48.vit.blocks[0].attn.qkv.weight, ref.blocks[0].attn.qkv.weight)


def test_safetensors_checkpoint(tmp_path):
    from safetensors.torch import save_file

    ref = timm.create_model("vit_tiny_patch16_224", num_classes=0, **SMALL)
    save_file(ref.state_dict(), tmp_path / "w.safetensors")
    m = create_model("vit_tiny_patch16_224", num_classes=2, weights=tmp_path / "w.safetensors", **SMALL)
    assert torch.equal(m.vit.pos_embed, ref.pos_embed)


def test_fgvit_needs_a_vision_transformer():
    with pytest.raises(TypeError, match="VisionTransformer"):
        FGViT(torch.nn.Linear(2, 2), 3)


@pytest.mark.parametrize("arch", ["plain", "hybrid"])
def test_attention_at_another_size_equals_timms_dynamic_img_size(arch):
    """FGViT.attention on a larger (non-square) image: the CLS attention that timm's own
    ``dynamic_img_size=True`` model computes (position embedding resampled to the grid), with
    the same weights; at the model's own size, the forward's attention; and the model is left
    as it was (a fixed-size model afterwards)."""
    name, kw = (("vit_tiny_patch16_224", SMALL) if arch == "plain" else
                ("vit_tiny_r_s16_p8_224", dict(img_size=32, patch_size=2, depth=3, embed_dim=48, num_heads=3)))
    torch.manual_seed(0)
    m = create_model(name, num_classes=4, **kw).eval()
    torch.manual_seed(0)
    ref = create_model(name, num_classes=4, dynamic_img_size=True, **kw).eval()
    ref.load_state_dict(m.state_dict())
    x = torch.randn(2, 3, 32, 32)
    same = m.attention(x, [0, 1])
    out = m(x, attn_layers=[0, 1])
    assert same.grid == out.grid and not same.logits
    for i in (0, 1):
        assert torch.equal(same.attn[i], out.attn[i])
    big = torch.randn(2, 3, 96, 64)
    got, want = m.attention(big, [0, 2]), ref(big, attn_layers=[0, 2])
    assert got.grid == want.grid == (96 // m.patch_size[0], 64 // m.patch_size[1])
    for i in (0, 2):
        torch.testing.assert_close(got.attn[i], want.attn[i], atol=1e-6, rtol=0)
    assert got.attn[0].shape[-1] != out.attn[0].shape[-1]  # a finer grid, not the input's
    with pytest.raises(ValueError, match="does not match the model's img_size"):
        m(big)  # the size switch did not outlive the call
    with pytest.raises(ValueError, match="not divisible by the patch size"):
        m.attention(torch.randn(1, 3, 36, 32), [0])
