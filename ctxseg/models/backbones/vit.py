"""ViT backbone for segmentation (MCIBI's ViT-Large, sssegmentation/mmseg `VisionTransformer`), on timm.

timm's VisionTransformer blocks compute what mmseg's / sssegmentation's TransformerEncoderLayer
computes (pre-norm, packed qkv = nn.MultiheadAttention's in_proj, exact GELU, LayerNorm eps 1e-6);
the segmentation wrapper here adds what timm's classifier does not do:
- outputs after the blocks in `out_indices` (MCIBI ViT-L: 9, 14, 19, 23), cls token removed,
  reshaped to NCHW at stride `patch_size`;
- the position embedding (trained at `img_size`) bicubic-resized to the input's patch grid
  (align_corners=False; the cls position is kept), as mmseg's `resize_pos_embed`;
- optional per-output LayerNorms over channels (`out_norm=True`: sssegmentation's MCIBI
  `norm_layers.{0..3}`, eps 1e-6), no final norm.
Verified by shapes against the sssegmentation manifests; numerically against timm only.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import nn

ARCHS = {"base": (768, 12, 12), "large": (1024, 24, 16)}  # embed_dim, depth, heads


class ViTBackbone(nn.Module):
    def __init__(self, img_size: int = 512, patch_size: int = 16, embed_dim: int = 1024, depth: int = 24,
                 num_heads: int = 16, mlp_ratio: float = 4.0, out_indices=(9, 14, 19, 23), drop_path_rate: float = 0.0,
                 out_norm: bool = True):
        super().__init__()
        self.net = VisionTransformer(
            img_size=img_size, patch_size=patch_size, embed_dim=embed_dim, depth=depth, num_heads=num_heads,
            mlp_ratio=mlp_ratio, qkv_bias=True, num_classes=0, global_pool="", class_token=True,
            final_norm=False, drop_path_rate=drop_path_rate, dynamic_img_size=True,
            norm_layer=partial(nn.LayerNorm, eps=1e-6),
        )
        self.patch_size = patch_size
        self.grid = img_size // patch_size
        self.out_indices = tuple(out_indices)
        self.out_channels = [embed_dim] * len(self.out_indices)
        self.norm_layers = nn.ModuleList(nn.LayerNorm(embed_dim, eps=1e-6) for _ in self.out_indices) if out_norm else None

    def _pos_embed(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        pos = self.net.pos_embed
        cls_pos, grid = pos[:, :1], pos[:, 1:]
        if tuple(hw) != (self.grid, self.grid):
            g = grid.reshape(1, self.grid, self.grid, -1).permute(0, 3, 1, 2)
            g = F.interpolate(g, size=hw, mode="bicubic", align_corners=False)
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


def vit(*, arch: str = "large", img_size: int = 512, patch_size: int = 16, embed_dim: int | None = None,
        depth: int | None = None, num_heads: int | None = None, out_indices: list[int] = (9, 14, 19, 23),
        drop_path_rate: float = 0.0, out_norm: bool = True, pretrained: str | None = None) -> ViTBackbone:
    """ViT-L/16 (MCIBI). `pretrained`: `timm:vit_large_patch16_384.augreg_in21k_ft_in1k` (pos embed
    resized to img_size by timm) or a local file in timm naming."""
    e, d, h = ARCHS[arch]
    model = ViTBackbone(img_size, patch_size, embed_dim or e, depth or d, num_heads or h, 4.0, tuple(out_indices),
                        drop_path_rate, out_norm)
    if pretrained:
        from ctxseg.models.backbones.pretrained import load_pretrained

        if pretrained.startswith("timm:"):
            import timm

            src = timm.create_model(pretrained.split(":", 1)[1], pretrained=True, num_classes=0, img_size=img_size).state_dict()
            model.net.load_state_dict(src, strict=False)
        else:
            load_pretrained(model.net, pretrained)
    return model
