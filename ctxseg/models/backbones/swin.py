"""Swin Transformer backbone, numerically mmseg's `SwinTransformer` (the segmentation variant).

Built from timm's `WindowAttention` (relative position bias, qkv/proj names as mmseg's `w_msa`),
timm's `Mlp` and `DropPath`, which compute exactly what mmseg's modules compute. What differs
from the classification Swin in timm, and is reproduced here (see docs/backbones.md):

- Patch merging concatenates the 2x2 neighbourhood the way `nn.Unfold(2, stride=2)` orders it:
  channel-major, index c*4 + (2*dh + dw). The original Swin / timm order is [x(0,0), x(1,0),
  x(0,1), x(1,1)] (index k*C + c). `merge_order="timm"` selects that order instead (then the
  weights of timm / original Swin checkpoints load without permutation).
- Inputs of any size: PatchEmbed and PatchMerging pad bottom/right to a multiple of their kernel
  ("corner" padding); each block zero-pads the normalized tokens bottom/right to a multiple of
  the window, and those padded tokens are NOT masked out of the attention (their keys/values are
  the qkv bias). `mask_padding=True` masks them (-100, like the shift mask) instead.
- Odd blocks always shift by window_size // 2, even when the (padded) map is a single window;
  the classification Swin disables the shift there. `always_shift=False` skips the shift when
  the map fits into one window.
- Every returned stage output goes through its own LayerNorm (`norm{i}`) and is NCHW.

State-dict names follow mmseg (patch_embed.projection, stages.i.blocks.j.attn.w_msa.*,
stages.i.downsample.{norm,reduction}, norm{i}) except the MLP, which is timm's `mlp.fc1/fc2`
(mmseg: `ffn.layers.0.0` / `ffn.layers.1`); `relative_position_index` is derived, not stored.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp
from timm.models.swin_transformer import WindowAttention
from torch import nn

from ctxseg.errors import UserError

ARCHS = {
    # embed_dims, depths, num_heads (mmseg / original Swin settings)
    "tiny": (96, (2, 2, 6, 2), (3, 6, 12, 24)),
    "small": (96, (2, 2, 18, 2), (3, 6, 12, 24)),
    "base": (128, (2, 2, 18, 2), (4, 8, 16, 32)),
    "large": (192, (2, 2, 18, 2), (6, 12, 24, 48)),
}

MASK_VALUE = -100.0  # mmseg / original Swin use -100 (not -inf) for masked attention logits


def _pad_to_multiple(x: torch.Tensor, mult: int) -> torch.Tensor:
    """Zero-pad an NHWC tensor bottom/right so H and W are multiples of `mult` ("corner")."""
    h, w = x.shape[1:3]
    ph, pw = (-h) % mult, (-w) % mult
    if ph or pw:
        x = F.pad(x, (0, 0, 0, pw, 0, ph))
    return x


def window_partition(x: torch.Tensor, ws: int) -> torch.Tensor:
    """(B, H, W, C) -> (B * nW, ws*ws, C), windows in row-major order."""
    b, h, w, c = x.shape
    x = x.view(b, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, ws * ws, c)


def window_reverse(windows: torch.Tensor, ws: int, h: int, w: int) -> torch.Tensor:
    """(B * nW, ws*ws, C) -> (B, H, W, C)."""
    c = windows.shape[-1]
    x = windows.view(-1, h // ws, w // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, h, w, c)


def shift_attn_mask(hp: int, wp: int, ws: int, shift: int, device=None) -> torch.Tensor:
    """The -100 region mask of a shifted block, computed on the padded map: (nW, N, N)."""
    img = torch.zeros(1, hp, wp, 1, device=device)
    slices = (slice(0, -ws), slice(-ws, -shift), slice(-shift, None))
    cnt = 0
    for hs in slices:
        for wsl in slices:
            img[:, hs, wsl, :] = cnt
            cnt += 1
    win = window_partition(img, ws).squeeze(-1)  # nW, N
    diff = win.unsqueeze(1) - win.unsqueeze(2)
    return torch.where(diff != 0, MASK_VALUE, 0.0)


class ShiftWindowMSA(nn.Module):
    """Padding, cyclic shift, window partition around timm's WindowAttention (mmseg's ShiftWindowMSA).

    Args:
        dim: token channels.
        num_heads: attention heads.
        window_size: side of the square attention windows, in tokens.
        shift: cyclically shift the map by window_size // 2 before partitioning (odd blocks).
        qkv_bias: bias on the qkv projection.
        attn_drop: dropout on the attention weights.
        proj_drop: dropout after the output projection.
        always_shift: shift even when the padded map is a single window (mmseg); False skips it there
            (classification Swin).
        mask_padding: mask the window-padding tokens out of the attention; False (mmseg) lets them attend
            (their keys/values are the qkv bias).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int,
        shift: bool,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        always_shift: bool = True,
        mask_padding: bool = False,
    ):
        super().__init__()
        self.window_size = window_size
        self.shift_size = window_size // 2 if shift else 0
        self.always_shift = always_shift
        self.mask_padding = mask_padding
        self.w_msa = WindowAttention(
            dim, num_heads, window_size=window_size, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop
        )

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        b, _, c = x.shape
        h, w = hw
        ws = self.window_size
        x = _pad_to_multiple(x.view(b, h, w, c), ws)  # padded tokens are zeros AFTER norm1
        hp, wp = x.shape[1:3]
        shift = self.shift_size
        if shift and not self.always_shift and h <= ws and w <= ws:
            shift = 0  # classification-Swin behaviour (opt-in): no shift inside a single window
        mask = None
        if shift:
            x = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))
            mask = shift_attn_mask(hp, wp, ws, shift, x.device)
        if self.mask_padding and (hp != h or wp != w):
            pad = torch.ones(1, hp, wp, 1, device=x.device)
            pad[:, :h, :w] = 0
            if shift:
                pad = torch.roll(pad, shifts=(-shift, -shift), dims=(1, 2))
            key_pad = window_partition(pad, ws).squeeze(-1)  # nW, N: 1 where the key is padding
            pad_mask = (key_pad * MASK_VALUE).unsqueeze(1).expand(-1, ws * ws, -1)
            mask = pad_mask if mask is None else mask + pad_mask
        out = self.w_msa(window_partition(x, ws), mask=mask)
        x = window_reverse(out, ws, hp, wp)
        if shift:
            x = torch.roll(x, shifts=(shift, shift), dims=(1, 2))
        return x[:, :h, :w, :].reshape(b, h * w, c)


class SwinBlock(nn.Module):
    """Pre-norm block: x + DropPath(W-MSA(norm1(x))); x + DropPath(MLP(norm2(x))).

    Args:
        dim: token channels.
        num_heads: attention heads.
        window_size: side of the attention windows, in tokens.
        shift: shifted-window block (the odd blocks of a stage).
        mlp_ratio: hidden channels of the MLP = dim x mlp_ratio.
        qkv_bias: bias on the qkv projection.
        drop: dropout after the attention projection and in the MLP (mmcv's ffn_drop).
        attn_drop: dropout on the attention weights.
        drop_path: stochastic depth rate of this block.
        always_shift: see ShiftWindowMSA.
        mask_padding: see ShiftWindowMSA.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int,
        shift: bool,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        always_shift: bool = True,
        mask_padding: bool = False,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = ShiftWindowMSA(
            dim, num_heads, window_size, shift, qkv_bias, attn_drop, drop, always_shift, mask_padding
        )
        self.norm2 = nn.LayerNorm(dim)
        # GELU exact (erf), as mmcv's FFN; the dropouts are mmcv's ffn_drop
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), hw))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    """Conv k=s=patch_size after corner padding, then LayerNorm; returns tokens and their (H, W).

    Args:
        in_chans: input image channels.
        dim: embedding channels.
        patch_size: patch side in pixels (kernel size and stride of the projection).
        norm: LayerNorm after the projection.
    """

    def __init__(self, in_chans: int, dim: int, patch_size: int, norm: bool = True):
        super().__init__()
        self.patch_size = patch_size
        self.projection = nn.Conv2d(in_chans, dim, patch_size, patch_size)
        self.norm = nn.LayerNorm(dim) if norm else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        p = self.patch_size
        x = F.pad(x, (0, (-x.shape[3]) % p, 0, (-x.shape[2]) % p))
        x = self.projection(x)
        hw = (x.shape[2], x.shape[3])
        x = x.flatten(2).transpose(1, 2)
        if self.norm is not None:
            x = self.norm(x)
        return x, hw


class PatchMerging(nn.Module):
    """2x2 neighbourhood -> 4C (corner padded) -> LayerNorm -> Linear(4C, 2C, no bias).

    Args:
        dim: input token channels C.
        out_dim: output channels (2C in Swin).
        order: channel order of the concatenated 2x2 neighbourhood: "unfold" (mmseg's nn.Unfold order)
            or "timm" (the original Swin / timm order), see the module docstring.
    """

    def __init__(self, dim: int, out_dim: int, order: Literal["unfold", "timm"] = "unfold"):
        super().__init__()
        self.order = order
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, out_dim, bias=False)

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> tuple[torch.Tensor, tuple[int, int]]:
        b, _, c = x.shape
        x = _pad_to_multiple(x.view(b, *hw, c), 2)
        h2, w2 = x.shape[1] // 2, x.shape[2] // 2
        x = x.view(b, h2, 2, w2, 2, c)  # b, h2, dh, w2, dw, c
        if self.order == "unfold":  # nn.Unfold: channel-major, then (dh, dw)
            x = x.permute(0, 1, 3, 5, 2, 4)
        else:  # original Swin / timm: [x(0,0), x(1,0), x(0,1), x(1,1)] -> (dw, dh, c)
            x = x.permute(0, 1, 3, 4, 2, 5)
        x = x.reshape(b, h2 * w2, 4 * c)
        return self.reduction(self.norm(x)), (h2, w2)


class SwinStage(nn.Module):
    """`depth` Swin blocks (alternately regular and shifted windows), then an optional patch merging.

    forward returns (tokens for the next stage, their (H, W), this stage's output tokens, their (H, W)).

    Args:
        dim: token channels of the stage.
        depth: number of blocks.
        num_heads: attention heads of every block.
        window_size: side of the attention windows, in tokens.
        out_dim: output channels of the patch merging at the end; None: no merging (last stage).
        dpr: stochastic depth rate of each block (length `depth`).
        merge_order: PatchMerging's `order`.
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window_size: int,
        out_dim: int | None,
        dpr: list[float],
        merge_order: str,
        **block_kw,
    ):
        super().__init__()
        self.blocks = nn.ModuleList(
            SwinBlock(dim, num_heads, window_size, shift=i % 2 == 1, drop_path=dpr[i], **block_kw) for i in range(depth)
        )
        self.downsample = PatchMerging(dim, out_dim, merge_order) if out_dim else None

    def forward(self, x: torch.Tensor, hw: tuple[int, int]):
        for blk in self.blocks:
            x = blk(x, hw)
        if self.downsample is None:
            return x, hw, x, hw
        down, down_hw = self.downsample(x, hw)
        return down, down_hw, x, hw


class SwinTransformer(nn.Module):
    """Four stages at strides 4, 8, 16, 32; returns the normalized stage outputs (NCHW).

    Args:
        embed_dims: channels of the first stage (doubled at each stage).
        depths: blocks per stage.
        num_heads: attention heads per stage.
        window_size: side of the attention windows, in tokens.
        patch_size: patch side of the patch embedding, in pixels.
        mlp_ratio: MLP hidden channels / token channels.
        qkv_bias: bias on the qkv projections.
        drop_rate: dropout after the position embedding, the attention projections and in the MLPs.
        attn_drop_rate: dropout on the attention weights.
        drop_path_rate: stochastic depth rate of the last block (rising linearly from 0 over all blocks).
        pretrain_img_size: image size of the pretraining, which sizes the absolute position embedding.
        use_abs_pos_embed: add a learned absolute position embedding after the patch embedding.
        patch_norm: LayerNorm after the patch embedding.
        out_indices: which stages' outputs (0..3) forward returns.
        always_shift: see ShiftWindowMSA (mmseg: True).
        mask_padding: see ShiftWindowMSA (mmseg: False).
        merge_order: PatchMerging's `order` ("unfold": mmseg; "timm": original Swin).
        in_chans: input image channels.
    """

    def __init__(
        self,
        *,
        embed_dims: int = 96,
        depths=(2, 2, 6, 2),
        num_heads=(3, 6, 12, 24),
        window_size: int = 7,
        patch_size: int = 4,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
        pretrain_img_size: int = 224,
        use_abs_pos_embed: bool = False,
        patch_norm: bool = True,
        out_indices=(0, 1, 2, 3),
        always_shift: bool = True,
        mask_padding: bool = False,
        merge_order: str = "unfold",
        in_chans: int = 3,
    ):
        super().__init__()
        if len(depths) != len(num_heads):
            raise UserError(f"swin: depths {list(depths)} and num_heads {list(num_heads)} must have the same length")
        n = len(depths)
        self.out_indices = tuple(out_indices)
        self.num_features = [embed_dims * 2**i for i in range(n)]
        self.out_channels = [self.num_features[i] for i in self.out_indices]
        self.patch_embed = PatchEmbed(in_chans, embed_dims, patch_size, patch_norm)
        self.use_abs_pos_embed = use_abs_pos_embed
        if use_abs_pos_embed:
            side = pretrain_img_size // patch_size
            self.absolute_pos_embed = nn.Parameter(torch.zeros(1, side * side, embed_dims))
            nn.init.trunc_normal_(self.absolute_pos_embed, std=0.02)
        self.drop_after_pos = nn.Dropout(drop_rate)
        dpr = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()  # stochastic depth grows linearly
        block_kw = dict(
            mlp_ratio=mlp_ratio,
            qkv_bias=qkv_bias,
            drop=drop_rate,
            attn_drop=attn_drop_rate,
            always_shift=always_shift,
            mask_padding=mask_padding,
        )
        self.stages = nn.ModuleList()
        for i in range(n):
            start = sum(depths[:i])
            out_dim = self.num_features[i + 1] if i < n - 1 else None
            self.stages.append(
                SwinStage(
                    self.num_features[i],
                    depths[i],
                    num_heads[i],
                    window_size,
                    out_dim,
                    dpr[start : start + depths[i]],
                    merge_order,
                    **block_kw,
                )
            )
        for i in self.out_indices:
            self.add_module(f"norm{i}", nn.LayerNorm(self.num_features[i]))
        self.apply(_init_weights)

    def _abs_pos(self, hw: tuple[int, int]) -> torch.Tensor:
        pos = self.absolute_pos_embed
        side = int(pos.shape[1] ** 0.5)
        if (side, side) == tuple(hw):
            return pos
        # not in mmseg (which requires the pretraining size); bicubic like its weight loading
        grid = pos.reshape(1, side, side, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=hw, mode="bicubic", align_corners=False)
        return grid.flatten(2).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x, hw = self.patch_embed(x)
        if self.use_abs_pos_embed:
            x = x + self._abs_pos(hw)
        x = self.drop_after_pos(x)
        outs = []
        for i, stage in enumerate(self.stages):
            x, hw, out, out_hw = stage(x, hw)
            if i in self.out_indices:
                out = getattr(self, f"norm{i}")(out)
                outs.append(out.view(-1, *out_hw, self.num_features[i]).permute(0, 3, 1, 2).contiguous())
        return outs


def _init_weights(m: nn.Module) -> None:
    # mmseg's init: trunc_normal(0.02) linears with zero bias, LayerNorm (1, 0)
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def swin(
    *,
    arch: Literal["tiny", "small", "base", "large"] = "tiny",
    embed_dims: int | None = None,
    depths: list[int] | None = None,
    num_heads: list[int] | None = None,
    window_size: int = 7,
    pretrain_img_size: int = 224,
    patch_size: int = 4,
    mlp_ratio: float = 4.0,
    qkv_bias: bool = True,
    drop_rate: float = 0.0,
    attn_drop_rate: float = 0.0,
    drop_path_rate: float = 0.3,
    use_abs_pos_embed: bool = False,
    patch_norm: bool = True,
    out_indices: list[int] = (0, 1, 2, 3),
    always_shift: bool = True,
    mask_padding: bool = False,
    merge_order: Literal["unfold", "timm"] = "unfold",
    pretrained: str | None = None,
) -> SwinTransformer:
    """Swin-T/S/B/L as mmseg's SwinTransformer; recipe type "swin".

    Args:
        arch: preset of embed_dims / depths / num_heads: "tiny", "small", "base" or "large".
        embed_dims: overrides the preset's first-stage channels (tiny test models).
        depths: overrides the preset's blocks per stage.
        num_heads: overrides the preset's attention heads per stage.
        window_size: side of the attention windows, in tokens (7; 12 for the 384-pretrained models).
        pretrain_img_size: image size of the pretraining (absolute position embedding size).
        patch_size: patch side of the patch embedding, in pixels.
        mlp_ratio: MLP hidden channels / token channels.
        qkv_bias: bias on the qkv projections.
        drop_rate: dropout rate (position embedding, attention projections, MLPs).
        attn_drop_rate: dropout on the attention weights.
        drop_path_rate: stochastic depth rate of the last block (rising linearly from 0).
        use_abs_pos_embed: learned absolute position embedding.
        patch_norm: LayerNorm after the patch embedding.
        out_indices: which stages' outputs forward returns.
        always_shift: see ShiftWindowMSA.
        mask_padding: see ShiftWindowMSA.
        merge_order: "unfold" (mmseg) or "timm" (original Swin) patch-merging channel order.
        pretrained: a local backbone file (mmseg naming, e.g. from mmseg's swin2mmseg converter, or a full
            mmseg checkpoint) or `timm:swin_base_patch4_window12_384.ms_in22k` (timm / original naming,
            converted on load); None: random initialisation.
    """
    ed, dp, nh = ARCHS[arch]
    # keywords only: a reordered constructor parameter cannot silently take another's value
    model = SwinTransformer(
        embed_dims=embed_dims or ed,
        depths=tuple(depths or dp),
        num_heads=tuple(num_heads or nh),
        window_size=window_size,
        patch_size=patch_size,
        mlp_ratio=mlp_ratio,
        qkv_bias=qkv_bias,
        drop_rate=drop_rate,
        attn_drop_rate=attn_drop_rate,
        drop_path_rate=drop_path_rate,
        pretrain_img_size=pretrain_img_size,
        use_abs_pos_embed=use_abs_pos_embed,
        patch_norm=patch_norm,
        out_indices=tuple(out_indices),
        always_shift=always_shift,
        mask_padding=mask_padding,
        merge_order=merge_order,
    )
    if pretrained:
        from ctxseg.models.backbones.swin_keys import load_swin_pretrained

        load_swin_pretrained(model, pretrained)
    return model
