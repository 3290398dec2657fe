"""The network: a timm Vision Transformer with one MLP head per target layer.

Chapter 2 explains the input side (patches, linear projection, position encoding, the
CLS token), chapter 3 the CLS attention that :class:`FGViT` can return, chapter 5 why
every target layer has its own head. Symbols as in ``book/notation.md``: an (h, w) input,
P-pixel patches, K patches, N = 1 + K tokens, D the width, H heads, L layers, R target
layers, c_l the CLS vector after layer l, y_r the logits of target r. The backbone is timm's own
``VisionTransformer``: its blocks are used as they are, its weights load unchanged
(``model.vit.state_dict()`` has timm's keys), and any timm ViT name works.
"""
from __future__ import annotations

import contextlib
import difflib
import os
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import timm
import torch
import torch.nn as nn
from timm.layers import Format
from timm.models.vision_transformer import VisionTransformer

from .attention import cls_attention

__all__ = ["FGViT", "FGViTOutput", "MLPHead", "create_model", "resolve_targets", "check_model_name"]


@dataclass
class FGViTOutput:
    """What one forward returns.

    logits: one (B, C) tensor per computed target layer, shallow to deep.
    cls: the matching CLS vectors c_l, (B, D), after the backbone's final norm.
    layers: the block index (0-based) of each entry of ``logits``.
    attn: {block index: (B, H, K) CLS attention per head} for the requested layers
        (detached: the crop takes no gradient).
    full_attn: {block index: (B, H, N, N)} when ``full_attn=True`` (for rollout only).
    grid: the (rows, cols) patch grid; patch_size: (ph, pw) pixels.
    """

    logits: list[torch.Tensor]
    cls: list[torch.Tensor]
    layers: tuple[int, ...]
    attn: dict[int, torch.Tensor] = field(default_factory=dict)
    full_attn: dict[int, torch.Tensor] = field(default_factory=dict)
    grid: tuple[int, int] = (0, 0)
    patch_size: tuple[int, int] = (0, 0)


class MLPHead(nn.Module):
    """y_r = W2 GELU(W1 c_{L_r} + b1) + b2: the per-layer classifier (MLP1, MLP2, MLP3 in the text).

    W1 is (hidden, D) with hidden = D by default, W2 is (C, hidden): D*D + D + C*D + C
    parameters per head (chapter 5 counts them and says why not one linear layer).
    """

    def __init__(self, dim: int, num_classes: int, hidden: int | None = None, dropout: float = 0.0):
        super().__init__()
        hidden = hidden or dim
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, num_classes)
        for fc in (self.fc1, self.fc2):
            nn.init.trunc_normal_(fc.weight, std=0.02)
            nn.init.zeros_(fc.bias)

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop(self.act(self.fc1(c))))


def resolve_targets(targets: int | Sequence[int], depth: int) -> tuple[int, ...]:
    """Target layers as sorted 0-based block indices.

    ``targets=3`` means the last three blocks; a sequence names blocks explicitly
    (negative indices count from the end).
    """
    if isinstance(targets, bool):
        raise ValueError(f"targets must be a count or a list of layer indices, got {targets!r}")
    if isinstance(targets, int):
        if not 1 <= targets <= depth:
            raise ValueError(f"targets={targets}: a ViT with {depth} blocks has between 1 and {depth} target layers")
        return tuple(range(depth - targets, depth))
    layers = []
    for t in targets:
        if not isinstance(t, int) or not -depth <= t < depth:
            raise ValueError(f"target layer {t!r} is out of range: valid indices are 0..{depth - 1} (or -{depth}..-1)")
        layers.append(t % depth)
    if not layers:
        raise ValueError("targets is empty: name at least one layer")
    if len(set(layers)) != len(layers):
        raise ValueError(f"targets {list(targets)} name the same layer twice")
    return tuple(sorted(layers))


class FGViT(nn.Module):
    """A timm ``VisionTransformer`` plus one MLP head on the CLS vector of each target layer."""

    def __init__(
        self,
        backbone: VisionTransformer,
        num_classes: int,
        targets: int | Sequence[int] = 3,
        head_hidden: int | None = None,
        head_dropout: float = 0.0,
    ):
        super().__init__()
        if not isinstance(backbone, VisionTransformer):
            raise TypeError(f"FGViT needs a timm VisionTransformer, got {type(backbone).__name__}")
        if not backbone.has_class_token:
            raise ValueError("this ViT has no CLS token (class_token=False); the method reads the CLS vector of each layer")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        for i, blk in enumerate(backbone.blocks):
            attn = getattr(blk, "attn", None)
            if attn is None or not isinstance(getattr(attn, "qkv", None), nn.Linear):
                raise ValueError(f"block {i} has no fused qkv attention; fgnb supports timm's standard ViT blocks")
        self.vit = backbone
        self.num_classes = num_classes
        self.depth = len(backbone.blocks)
        self.target_layers = resolve_targets(targets, self.depth)
        self.heads = nn.ModuleList(
            [MLPHead(backbone.embed_dim, num_classes, head_hidden, head_dropout) for _ in self.target_layers]
        )

    @property
    def num_targets(self) -> int:
        return len(self.target_layers)

    @property
    def patch_size(self) -> tuple[int, int]:
        """Input pixels per token: the patch size, times the stem's stride in a hybrid ViT."""
        return tuple(self.vit.patch_embed.feat_ratio(as_scalar=False))

    @property
    def img_size(self) -> tuple[int, int]:
        return tuple(self.vit.patch_embed.img_size)

    def data_config(self) -> dict:
        """Input size and the normalisation the weights were trained with (timm's pretrained_cfg)."""
        return timm.data.resolve_data_config({}, model=self.vit)

    def grid(self, height: int, width: int) -> tuple[int, int]:
        ph, pw = self.patch_size
        if getattr(self.vit, "dynamic_img_size", False):
            if height % ph or width % pw:
                raise ValueError(
                    f"image size {height}x{width} is not divisible by the patch size {ph}x{pw}; "
                    f"use a multiple of {ph}"
                )
        elif (height, width) != self.img_size:
            raise ValueError(
                f"image size {height}x{width} does not match the model's img_size {self.img_size[0]}x{self.img_size[1]}; "
                f"resize the input, or create the model with img_size={height} (must be a multiple of the patch "
                f"size {ph}) or dynamic_img_size=True"
            )
        return height // ph, width // pw

    def forward(
        self,
        x: torch.Tensor,
        upto: int | None = None,
        attn_layers: Iterable[int] | str | None = None,
        full_attn: bool = False,
    ) -> FGViTOutput:
        """Run the encoder only as deep as needed.

        Args:
            x: (B, 3, h, w) normalised images.
            upto: compute the heads of targets ``0..upto`` only (``None``: all) and stop
                after that target's block; progressive stage r uses ``upto=r``.
            attn_layers: block indices whose CLS attention to return; ``'targets'``,
                ``'all'`` or ``None``. The encoder runs at least that deep.
            full_attn: also return the full (B, H, N, N) maps of those layers (O(N^2);
                only for attention rollout).
        """
        if x.dim() != 4:
            raise ValueError(f"expected a batch of images (B, 3, H, W), got shape {tuple(x.shape)}")
        grid = self.grid(x.shape[-2], x.shape[-1])
        n_heads = self.num_targets if upto is None else upto + 1
        if not 1 <= n_heads <= self.num_targets:
            raise ValueError(f"upto={upto} is out of range: this model has targets 0..{self.num_targets - 1}")
        capture = self._attn_layer_set(attn_layers)
        stop = max([self.target_layers[n_heads - 1], *capture])

        captured: dict[int, torch.Tensor] = {}
        full: dict[int, torch.Tensor] = {}
        hooks = [
            self.vit.blocks[i].attn.qkv.register_forward_hook(self._make_hook(i, captured, full if full_attn else None))
            for i in capture
        ]
        try:
            t = self.tokens(x)
            cls = []
            wanted = set(self.target_layers[:n_heads])
            for i in range(stop + 1):
                t = self.vit.blocks[i](t)
                if i in wanted:
                    # The shared final norm makes the deepest c_l exactly timm's forward_features CLS.
                    cls.append(self.vit.norm(t[:, 0]))
        finally:
            for h in hooks:
                h.remove()
        logits = [head(c) for head, c in zip(self.heads, cls)]
        return FGViTOutput(
            logits=logits,
            cls=cls,
            layers=self.target_layers[:n_heads],
            attn=captured,
            full_attn=full,
            grid=grid,
            patch_size=self.patch_size,
        )

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """The sequence the first block reads (chapter 2): z_0 = [x_cls; x_p^1 E; ...; x_p^K E] + E_pos
        (a hybrid's stem replaces x_p E), built by timm's own patch embedding, prefix tokens, position
        embedding and ``norm_pre``: the one place :meth:`forward` and :meth:`attention` make it."""
        vit = self.vit
        return vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(x))))

    def attention(self, x: torch.Tensor, attn_layers: Iterable[int] | str, full_attn: bool = False) -> FGViTOutput:
        """The CLS attention of blocks ``attn_layers`` on an image of any size that is a multiple
        of the patch size (chapter 6: the crop's attention read on the source view).

        A grid other than the model's own takes the position embedding resampled to it
        (bicubic), exactly as timm's ``dynamic_img_size=True`` does: p' = resample(p, (h/P, w/P)).
        Only the blocks below the deepest requested one run, and that one only up to its qkv
        projection, which is all its CLS attention needs. Returns an :class:`FGViTOutput`
        without logits (``attn``, ``full_attn``, ``grid``, ``patch_size``).
        """
        if x.dim() != 4:
            raise ValueError(f"expected a batch of images (B, 3, H, W), got shape {tuple(x.shape)}")
        (ph, pw), (h, w) = self.patch_size, x.shape[-2:]
        if h % ph or w % pw:
            raise ValueError(f"image size {h}x{w} is not divisible by the patch size {ph}x{pw}: the attention is "
                             f"read on whole patches (make the source view a multiple of {ph})")
        capture = self._attn_layer_set(attn_layers)
        if not capture:
            raise ValueError("attention() needs at least one block in attn_layers")
        captured: dict[int, torch.Tensor] = {}
        full: dict[int, torch.Tensor] = {}

        class _Done(Exception):
            pass

        def stop(_module, _inputs, _output):
            raise _Done  # the deepest block's CLS attention is captured: the rest is not needed

        hooks = [self.vit.blocks[i].attn.qkv.register_forward_hook(self._make_hook(i, captured, full if full_attn else None))
                 for i in capture]
        hooks.append(self.vit.blocks[capture[-1]].attn.qkv.register_forward_hook(stop))
        try:
            with torch.no_grad(), self._any_input_size((h, w) != self.img_size):
                t = self.tokens(x)
                for blk in self.vit.blocks[: capture[-1] + 1]:
                    t = blk(t)
        except _Done:
            pass
        finally:
            for hk in hooks:
                hk.remove()
        return FGViTOutput(logits=[], cls=[], layers=(), attn=captured, full_attn=full, grid=(h // ph, w // pw),
                           patch_size=self.patch_size)

    @contextlib.contextmanager
    def _any_input_size(self, on: bool = True):
        """timm's ``dynamic_img_size`` for the duration: the patch embedding keeps its (B, h, w, D)
        map and ``_pos_embed`` resamples the position embedding to it (timm's own code path)."""
        vit, pe = self.vit, self.vit.patch_embed
        if not on or getattr(vit, "dynamic_img_size", False):
            yield
            return
        saved = (vit.dynamic_img_size, pe.strict_img_size, pe.flatten, pe.output_fmt)
        vit.dynamic_img_size, pe.strict_img_size, pe.flatten, pe.output_fmt = True, False, False, Format.NHWC
        try:
            yield
        finally:
            vit.dynamic_img_size, pe.strict_img_size, pe.flatten, pe.output_fmt = saved

    def _attn_layer_set(self, attn_layers) -> list[int]:
        if attn_layers is None:
            return []
        if isinstance(attn_layers, str):
            choices = {"targets": list(self.target_layers), "all": list(range(self.depth))}
            if attn_layers not in choices:
                raise ValueError(f"attn_layers={attn_layers!r}: use one of {sorted(choices)} or a list of block indices")
            return choices[attn_layers]
        out = []
        for i in attn_layers:
            if not isinstance(i, int) or not -self.depth <= i < self.depth:
                raise ValueError(f"attention layer {i!r} is out of range 0..{self.depth - 1}")
            out.append(i % self.depth)
        return sorted(set(out))

    def _make_hook(self, layer: int, store: dict, full_store: dict | None):
        attn = self.vit.blocks[layer].attn
        npt = self.vit.num_prefix_tokens

        def hook(_module, _inputs, qkv):
            # Reads the qkv projection the block computes anyway; the block itself keeps its
            # fused scaled_dot_product_attention path.
            with torch.no_grad():
                b, n, _ = qkv.shape
                qkv = qkv.detach().reshape(b, n, 3, attn.num_heads, attn.head_dim)
                q_cls = attn.q_norm(qkv[:, 0, 0])  # (B, H, d)
                k = attn.k_norm(qkv[:, :, 1].transpose(1, 2))  # (B, H, N, d)
                store[layer] = cls_attention(q_cls, k, attn.scale, npt)
                if full_store is not None:
                    q = attn.q_norm(qkv[:, :, 0].transpose(1, 2)).float()
                    full_store[layer] = ((q * attn.scale) @ k.float().transpose(-2, -1)).softmax(dim=-1)

        return hook


def check_model_name(name: str) -> None:
    """A clear error, with the closest timm names, if ``name`` is no timm model."""
    if timm.is_model(name):
        return
    known = timm.list_models("*vit*") + timm.list_models("deit*")
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else " See timm.list_models('vit_*')."
    raise ValueError(f"unknown timm model name {name!r}.{hint}")


def create_model(
    name: str = "vit_tiny_patch16_224",
    num_classes: int = 200,
    targets: int | Sequence[int] = 3,
    pretrained: bool = False,
    weights: str | os.PathLike | None = None,
    img_size: int | None = None,
    head_hidden: int | None = None,
    head_dropout: float = 0.0,
    **timm_kwargs,
) -> FGViT:
    """Make an :class:`FGViT` from any timm ViT name.

    ``pretrained=True`` loads the weights through timm (the Hugging Face hub, e.g. in
    Colab); ``weights=PATH`` loads a local .pth/.safetensors timm checkpoint offline
    (``pretrained_cfg_overlay=dict(file=PATH, custom_load=False)``). ``img_size`` other than the weights'
    resamples the position embedding (timm). Extra keyword arguments go to timm
    (``patch_size``, ``depth``, ``embed_dim``, ``num_heads``, ``dynamic_img_size`` ...),
    which is how the small CPU models of the book are made.
    """
    check_model_name(name)
    kwargs = dict(timm_kwargs)
    if img_size is not None:
        kwargs["img_size"] = img_size
    if weights is not None:
        path = os.fspath(weights)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"weights file not found: {path}")
        pretrained = True
        # custom_load=False: a local file is always a timm state dict (.pth/.safetensors). Hybrid
        # ViT configs say custom_load=True (their hub weights are JAX .npz), and timm < 1.0.31
        # then hands any file to the .npz reader, which refuses a state dict (seen on timm 1.0.29).
        kwargs["pretrained_cfg_overlay"] = dict(file=path, custom_load=False)
    try:
        backbone = timm.create_model(name, pretrained=pretrained, num_classes=0, **kwargs)
    except AssertionError as e:  # timm's shape checks, e.g. a hybrid stem's map not divisible by the patch
        shown = {k: v for k, v in kwargs.items() if k != "pretrained_cfg_overlay"}
        raise ValueError(
            f"timm could not build {name} with {shown}: the image size must give a whole number of patches "
            f"(a hybrid ViT divides it by its stem's stride first: vit_*_r_s16_p8_* with patch_size=2 needs a "
            f"multiple of 8){': ' + str(e) if str(e) else ''}") from e
    except RuntimeError as e:
        src = f"weights file {weights}" if weights is not None else f"pretrained weights of {name}"
        raise ValueError(f"could not load {src} into {name} with {kwargs}: {e}") from e
    if not isinstance(backbone, VisionTransformer):
        raise ValueError(f"{name!r} is a {type(backbone).__name__}, not a timm VisionTransformer")
    return FGViT(backbone, num_classes, targets=targets, head_hidden=head_hidden, head_dropout=head_dropout)
