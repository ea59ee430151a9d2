"""ViT backbone for segmentation (MCIBI's ViT-Large, sssegmentation/mmseg `VisionTransformer`), on timm.

timm's VisionTransformer blocks compute what mmseg's / sssegmentation's TransformerEncoderLayer
computes (pre-norm, packed qkv = nn.MultiheadAttention's in_proj, exact GELU, LayerNorm eps 1e-6);
the segmentation wrapper here adds what timm's classifier does not do:
- outputs after the blocks in `out_indices` (MCIBI ViT-L: 9, 14, 19, 23), cls token removed,
  reshaped to NCHW at stride `patch_size`;
- the position embedding (trained at `img_size`) resized to the input's patch grid
  (align_corners=False; the cls position is kept) with `pos_interp`: "bilinear" is
  sssegmentation's default `interpolate_mode` (MCIBI's configs keep it), "bicubic" mmseg's;
- optional per-output LayerNorms over channels (`out_norm=True`: sssegmentation's MCIBI
  `norm_layers.{0..3}`, eps 1e-6), no final norm.
Verified by shapes against the sssegmentation manifests; numerically against timm only.

Pretrained weights (`vit_key_filter`): timm naming (timm models, and the original Google ViT files
timm released, e.g. MCIBI's `jx_vit_large_p16_384`). The ImageNet classifier (`head`,
`pre_logits`) and the final `norm` (MCIBI's ViT has final_norm=False) are skipped; the position
embedding is resized from the source's grid to `img_size` / `patch_size` with `pos_interp`, as
sssegmentation's loader does; MCIBI's output norms keep their initialisation.
No timm 1.x tag holds `jx_vit_large_p16_384` (timm >= 0.5 moved `vit_large_patch16_384` to the
AugReg weights `.augreg_in21k_ft_in1k`, another training): the MCIBI recipes name the file's URL.
"""

from __future__ import annotations

from functools import partial
from typing import Literal

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from ctxseg.models.backbones.pretrained import Mapped, load_pretrained, rename

ARCHS = {"base": (768, 12, 12), "large": (1024, 24, 16)}  # embed_dim, depth, heads


class ViTBackbone(nn.Module):
    """timm VisionTransformer returning NCHW maps after the blocks in `out_indices` (module docstring).

    Args:
        img_size: image side the position embedding is trained at (resized to other inputs' grids).
        patch_size: patch side in pixels; the outputs' stride.
        embed_dim: token channels.
        depth: number of transformer blocks.
        num_heads: attention heads.
        mlp_ratio: MLP hidden channels / token channels.
        out_indices: indices of the blocks whose outputs forward returns (MCIBI ViT-L: 9, 14, 19, 23).
        drop_path_rate: stochastic depth rate (timm's, rising linearly over the blocks).
        out_norm: a LayerNorm (eps 1e-6) on each returned output (sssegmentation's `norm_layers`).
        pos_interp: interpolation of the position embedding to the input's grid: "bilinear"
            (sssegmentation) or "bicubic" (mmseg).
    """

    def __init__(
        self,
        img_size: int = 512,
        patch_size: int = 16,
        embed_dim: int = 1024,
        depth: int = 24,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        out_indices=(9, 14, 19, 23),
        drop_path_rate: float = 0.0,
        out_norm: bool = True,
        pos_interp: str = "bilinear",
    ):
        super().__init__()
        self.pos_interp = pos_interp
        self.net = VisionTransformer(
            img_size=img_size,
            patch_size=patch_size,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            qkv_bias=True,
            num_classes=0,
            global_pool="",
            class_token=True,
            final_norm=False,
            drop_path_rate=drop_path_rate,
            dynamic_img_size=True,
            norm_layer=partial(nn.LayerNorm, eps=1e-6),
        )
        self.patch_size = patch_size
        self.grid = img_size // patch_size
        self.out_indices = tuple(out_indices)
        self.out_channels = [embed_dim] * len(self.out_indices)
        self.norm_layers = (
            nn.ModuleList(nn.LayerNorm(embed_dim, eps=1e-6) for _ in self.out_indices) if out_norm else None
        )

    def _pos_embed(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        pos = self.net.pos_embed
        cls_pos, grid = pos[:, :1], pos[:, 1:]
        if tuple(hw) != (self.grid, self.grid):
            g = grid.reshape(1, self.grid, self.grid, -1).permute(0, 3, 1, 2)
            g = F.interpolate(g, size=hw, mode=self.pos_interp, align_corners=False)
            grid = g.flatten(2).transpose(1, 2)
        cls = self.net.cls_token.expand(x.shape[0], -1, -1)
        return torch.cat([cls, x], dim=1) + torch.cat([cls_pos, grid], dim=1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        n = self.net
        p = self.patch_size
        hw = (x.shape[2] // p, x.shape[3] // p)
        tokens = n.patch_embed.proj(x).flatten(2).transpose(1, 2)
        tokens = n.pos_drop(self._pos_embed(tokens, hw))
        outs = []
        for i, blk in enumerate(n.blocks):
            tokens = blk(tokens)
            if i in self.out_indices:
                outs.append(tokens[:, 1:])
        res = []
        for j, t in enumerate(outs):
            if self.norm_layers is not None:
                t = self.norm_layers[j](t)
            res.append(t.transpose(1, 2).reshape(x.shape[0], -1, *hw).contiguous())
        return res


def resize_pos_embed(pos: torch.Tensor, grid: tuple[int, int], mode: str) -> torch.Tensor:
    """[1, 1 + h*w, C] (square source grid) -> [1, 1 + grid[0]*grid[1], C]; the cls position kept."""
    n = int(round((pos.shape[1] - 1) ** 0.5))
    g = pos[:, 1:].reshape(1, n, n, -1).permute(0, 3, 1, 2)
    g = F.interpolate(g.float(), size=grid, mode=mode, align_corners=False).to(pos.dtype)
    return torch.cat([pos[:, :1], g.flatten(2).transpose(1, 2)], dim=1)


_VIT_SKIP = [
    (r"(head|pre_logits)\..+", "ImageNet classifier"),
    (r"(norm|fc_norm)\.(weight|bias)", "final norm; this ViT has none (final_norm=False)"),
]


def vit_key_filter(src: dict[str, torch.Tensor], module: nn.Module) -> Mapped:
    """timm-named ViT weights -> ViTBackbone (`net.` + timm names), pos_embed resized to the backbone's grid."""
    mapped = rename(src, [(r"(.+)", r"net.\1")], _VIT_SKIP, "timm ViT")
    pos = mapped.state.get("net.pos_embed")
    want = module.net.pos_embed.shape
    if pos is not None and pos.dim() == 3 and pos.shape[1] != want[1]:
        n = int(round((pos.shape[1] - 1) ** 0.5))
        mapped.state["net.pos_embed"] = resize_pos_embed(pos, (module.grid, module.grid), module.pos_interp)
        mapped.notes.append(
            f"pos_embed resized from a {n}x{n} to a {module.grid}x{module.grid} grid ({module.pos_interp})"
        )
    if module.norm_layers is not None:
        mapped.kept_init[r"norm_layers\..+"] = "MCIBI's output norms, not in ImageNet weights"
    return mapped


def vit(
    *,
    arch: str = "large",
    img_size: int = 512,
    patch_size: int = 16,
    embed_dim: int | None = None,
    depth: int | None = None,
    num_heads: int | None = None,
    out_indices: list[int] = (9, 14, 19, 23),
    drop_path_rate: float = 0.0,
    out_norm: bool = True,
    pos_interp: Literal["bilinear", "bicubic"] = "bilinear",
    pretrained: str | None = None,
    pretrained_strict: bool = True,
) -> ViTBackbone:
    """ViT-B/16 or ViT-L/16 (MCIBI's ViT-Large); recipe type "vit".

    Args:
        arch: preset of embed_dim / depth / num_heads: "base" or "large".
        img_size: image side the position embedding is trained at.
        patch_size: patch side in pixels.
        embed_dim: overrides the preset's token channels (tiny test models).
        depth: overrides the preset's number of blocks.
        num_heads: overrides the preset's attention heads.
        out_indices: indices of the blocks whose outputs forward returns.
        drop_path_rate: stochastic depth rate.
        out_norm: a LayerNorm on each returned output (sssegmentation's MCIBI).
        pos_interp: "bilinear" (sssegmentation) or "bicubic" (mmseg) position-embedding resizing.
        pretrained: a file or URL in timm naming (MCIBI: the original jx_vit_large_p16_384 release), or
            `timm:NAME.TAG`; see `vit_key_filter`. None: random initialisation.
        pretrained_strict: False loads what fits and lists the rest instead of stopping.
    """
    e, d, h = ARCHS[arch]
    model = ViTBackbone(
        img_size,
        patch_size,
        embed_dim or e,
        depth or d,
        num_heads or h,
        4.0,
        tuple(out_indices),
        drop_path_rate,
        out_norm,
        pos_interp,
    )
    if pretrained:
        load_pretrained(
            model, pretrained, vit_key_filter, timm_name=f"vit_{arch}_patch{patch_size}_384", strict=pretrained_strict
        )
    return model
