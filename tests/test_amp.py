"""Mixed precision: the AMP decision by device capability, and every strategy's fp16
GradScaler path run on the CPU (torch's CPU autocast and ``GradScaler('cpu')``), so a
scaler bug fails here rather than on a student's T4."""
import contextlib

import pytest
import torch

from fgnb.config import ConfigError, TrainConfig
from fgnb.model import create_model
from fgnb.strategies import StepContext, make_strategy
from fgnb.devices import amp_dtype, autocast_for
from fgnb.train import train


# ----------------------------------------------------------------------------- the decision
@pytest.mark.parametrize("capability, dtype", [
    ((6, 1), torch.float16),   # P100-class
    ((7, 0), torch.float16),   # V100
    ((7, 5), torch.float16),   # T4: bf16 only emulated
    ((8, 0), torch.bfloat16),  # A100
    ((8, 9), torch.bfloat16),  # L4
    ((9, 0), torch.bfloat16),  # H100
])
def test_auto_picks_bf16_only_with_native_support(capability, dtype):
    assert amp_dtype("cuda", "auto", capability) == dtype


def test_amp_choices_per_device():
    assert amp_dtype("cpu", "auto") is None and amp_dtype("mps", "auto") is None
    assert amp_dtype("cuda", "off", (9, 0)) is None
    assert amp_dtype("cuda", "fp16", (9, 0)) == torch.float16
    assert amp_dtype("cuda", "bf16", (7, 5)) == torch.bfloat16  # forced: the user asked for it
    assert amp_dtype("cpu", "fp16") == torch.float16            # CPU autocast (tests)
    with pytest.raises(ConfigError, match="amp='fp16' on device 'mps'.*auto or off"):
        amp_dtype("mps", "fp16")
    with pytest.raises(ConfigError, match="amp='half'.*auto, bf16, fp16, off"):
        amp_dtype("cuda", "half", (8, 0))


@pytest.mark.parametrize("capability, scaled", [((7, 5), True), ((8, 0), False), ((9, 0), False)])
def test_autocast_for_reads_the_capability_not_is_bf16_supported(monkeypatch, capability, scaled):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # what a T4 reports
    with warnings_ignored():  # GradScaler('cuda') warns (and disables itself) without a GPU
        _, scaler = autocast_for(torch.device("cuda"), "auto")
    assert (scaler is not None) == scaled


def test_cpu_auto_is_off():
    ac, scaler = autocast_for(torch.device("cpu"), "auto")
    assert ac is contextlib.nullcontext and scaler is None
    ac, scaler = autocast_for(torch.device("cpu"), "fp16")
    assert isinstance(scaler, torch.amp.GradScaler)
    with ac():
        assert torch.get_autocast_dtype("cpu") == torch.float16 and torch.is_autocast_enabled("cpu")


@contextlib.contextmanager
def warnings_ignored():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


# ----------------------------------------------------------------------------- the scaler paths
def tiny(seed=0):
    torch.manual_seed(seed)
    return create_model("vit_tiny_patch16_224", num_classes=4, img_size=16, patch_size=8, depth=3,
                        embed_dim=24, num_heads=2, targets=3)


def batch(seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(6, 3, 16, 16, generator=g), torch.randint(0, 4, (6,), generator=g)


def _strategy_case(name, crop=False, **options):
    """A case: (step(model, optimizer, x, y, ctx) -> losses, optimizer steps per call).
    ``crop``: the joint crop update, with a crop view per head (as crop_views makes them)."""
    strategy = make_strategy(name, **options)

    def step(model, optimizer, x, y, ctx):
        crops = [x.flip(-1) + 0.1 * r for r in range(model.num_targets)] if crop else None
        return strategy.step(model, optimizer, x, y, ctx, crops=crops)[0]

    return step, (lambda model: len(strategy.stages(model)) if name == "progressive" else 1)


# Every way a batch updates the network: (step function, optimizer steps per call).
CASES = {
    "last": _strategy_case("last"),
    "summed": _strategy_case("summed"),
    "progressive": _strategy_case("progressive", reforward=True),
    "progressive-deep_first": _strategy_case("progressive", order="deep_first", reforward=True),
    "progressive-one_point": _strategy_case("progressive", reforward=False),
    # the crop's joint step (--crop-update joint): the same steps, on the global and crop views
    "last+crop": _strategy_case("last", crop=True),
    "summed+crop": _strategy_case("summed", crop=True),
    "progressive+crop": _strategy_case("progressive", crop=True, reforward=True),
    "progressive-one_point+crop": _strategy_case("progressive", crop=True, reforward=False),
}


CASE_PARAMS = sorted(CASES)


def run(case, scaler=None, autocast=contextlib.nullcontext, steps=2, opt="adamw", clip=1.0):
    step, _ = CASES[case]
    model = tiny()
    optimizer = (torch.optim.AdamW(model.parameters(), lr=1e-2) if opt == "adamw"
                 else torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
    ctx = StepContext(autocast=autocast, scaler=scaler, clip_grad=clip)
    losses = [step(model, optimizer, *batch(s), ctx) for s in range(steps)]
    return model, losses


def params(model):
    return {k: v.detach().clone() for k, v in model.named_parameters()}


@pytest.mark.parametrize("case", CASE_PARAMS)
def test_scaler_is_exact_and_updated_after_every_step(case):
    """float32 with a scaler (powers of two: scaling is exact) == no scaler, bit for bit;
    the scale doubles after every optimizer step (growth_interval=1), so a missing or extra
    ``scaler.update()``, or a gradient left scaled, shows."""
    ref, ref_losses = run(case)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8, growth_interval=1)
    got, losses = run(case, scaler=scaler)
    assert losses == ref_losses
    a, b = params(ref), params(got)
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:3]
    updates = CASES[case][1](got) * 2
    assert scaler.get_scale() == 2.0 ** (8 + updates)


@pytest.mark.parametrize("case", CASE_PARAMS)
def test_fp16_autocast_with_scaler_trains_on_cpu(case):
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    dtypes = []
    model0 = tiny()
    before = params(model0)
    autocast = lambda: torch.autocast("cpu", dtype=torch.float16)
    model, losses = run(case, scaler=scaler, autocast=autocast, opt="sgd")
    ref, ref_losses = run(case, opt="sgd")
    h = model.vit.blocks[0].attn.qkv.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    with autocast():
        model(batch()[0])
    h.remove()
    assert dtypes == [torch.float16]  # the forward really ran in half precision
    assert all(torch.isfinite(torch.tensor(l)).all() for l in losses)
    after = params(model)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    # close to the float32 run: the gradients were unscaled before the step
    for l, r in zip(losses, ref_losses):
        assert l == pytest.approx(r, rel=0.05, abs=0.02)
    drift = max(float((after[k] - params(ref)[k]).abs().max()) for k in after)
    assert drift < 0.05


@pytest.mark.parametrize("case", CASE_PARAMS)
def test_fp16_overflow_skips_the_step_and_backs_off(case):
    """A scale so large that fp16 gradients overflow: every step is skipped (weights
    unchanged) and the scale halves once per optimizer step of the strategy."""
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**40)
    before = params(tiny())
    model, _ = run(case, scaler=scaler, autocast=lambda: torch.autocast("cpu", dtype=torch.float16), steps=1)
    after = params(model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert scaler.get_scale() == 2.0 ** (40 - CASES[case][1](model))


def test_train_with_fp16_on_cpu_resumes_with_its_scaler(tmp_path, monkeypatch):
    monkeypatch.setenv("FGNB_DATA", str(tmp_path / "data"))
    base = dict(model="vit_tiny_patch16_224", embed_dim=24, num_heads=2, weights=None, depth=3, img_size=16,
                patch_size=8, synthetic_classes=3, synthetic_train_per_class=6, synthetic_test_per_class=2,
                batch_size=6, epochs=2, progress=False, val_fraction=0.0, amp="fp16", device="cpu")
    train(TrainConfig(**base, out=str(tmp_path / "a")), stop_after_epoch=1)
    state = torch.load(tmp_path / "a" / "last.pt", weights_only=True)
    assert state["scaler"]["scale"] > 0  # the scaler's state is in the checkpoint
    res = train(TrainConfig(**base, out=str(tmp_path / "a"), resume=True))
    assert len(res["history"]) == 2 and all(r["loss_head2"] == r["loss_head2"] for r in res["history"])
