"""ResNeSt (split-attention ResNet) with output stride 8, built on timm's ResNet + ResNestBottleneck.

timm's `resnest101e` layout is the one of the original ResNeSt and of sssegmentation's ResNeSt
(MCIBI's S-101-D8): deep stem 3->64->64->128 (stem_width 64), radix 2, cardinality 1,
bottleneck width 64, avd (3x3 avg-pool stride after the split-attention conv), avg-pool
downsample shortcut. Module names are timm's: sssegmentation's `stem.{0,1,3,4,6}` /
`stem.7` map to `net.conv1.{...}` / `net.bn1`, the rest keeps its name (see
ctxseg.convert.backbone_keys.ssseg_resnest_rules).

One adaptation: in dilated stages timm's avg-pool shortcut uses a 2x2 stride-1 'same' pool,
the original ResNeSt an AvgPool2d(1, 1) (identity); we use the identity. Verified by shapes
against the sssegmentation manifest only (no numerical golden for ResNeSt).
"""

from __future__ import annotations

import torch
from timm.models.resnest import ResNestBottleneck
from timm.models.resnet import ResNet
from torch import nn

from ctxseg.models.backbones.resnet import timm_resnet_stages

_DEPTHS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 200: (3, 24, 36, 3), 269: (3, 30, 48, 8)}
_STEM = {50: 32, 101: 64, 200: 64, 269: 64}  # stem_width (ResNeSt-50 uses 32)


class ResNeStD8(nn.Module):
    """Dilated ResNeSt (timm's resnest*e layout) returning the outputs of `out_indices`.

    Args:
        depth: 50, 101, 200 or 269.
        output_stride: 8 (stages 3 and 4 dilated) or 16.
        radix: split-attention radix.
        drop_path_rate: stochastic depth rate (timm's).
        out_indices: which stage outputs (0..3) forward returns.
    """

    def __init__(
        self,
        depth: int = 101,
        output_stride: int = 8,
        radix: int = 2,
        drop_path_rate: float = 0.0,
        out_indices=(0, 1, 2, 3),
    ):
        super().__init__()
        self.net = ResNet(
            ResNestBottleneck,
            _DEPTHS[depth],
            num_classes=0,
            global_pool="",
            output_stride=output_stride,
            stem_type="deep",
            stem_width=_STEM[depth],
            avg_down=True,
            base_width=64,
            cardinality=1,
            block_args=dict(radix=radix, avd=True, avd_first=False),
            drop_path_rate=drop_path_rate,
        )
        for layer in (self.net.layer3, self.net.layer4):
            ds = layer[0].downsample
            pool = ds[0] if ds is not None else None
            if isinstance(pool, nn.AvgPool2d) and pool.stride in (1, (1, 1)):
                ds[0] = nn.Identity()  # original ResNeSt: AvgPool2d(1, 1) in dilated stages
        self.out_indices = tuple(out_indices)
        self.out_channels = [256 * 2**i for i in self.out_indices]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return timm_resnet_stages(self.net, x, self.out_indices)


def resnest_key_filter(src: dict[str, torch.Tensor], module: nn.Module):
    """ImageNet ResNeSt weights -> timm names: timm / original ResNeSt as they are; mmcv's
    `resnest101_d2` (open-mmlab, sssegmentation's `resnest101`) with its stem `stem.{0,1,3,4,6,7}` ->
    `conv1.{0,1,3,4,6}` / `bn1` (the blocks' `conv2.{conv,bn0,fc1,bn1,fc2}` and `downsample.{1,2}` are
    timm's names already). The classifier `fc` is skipped."""
    from ctxseg.models.backbones.pretrained import rename
    from ctxseg.models.backbones.resnet import MMCV_STEM, is_mmcv_stem

    skip = [(r"fc\.(weight|bias)", "ImageNet classifier")]
    if is_mmcv_stem(src):
        return rename(src, MMCV_STEM, skip, "mmcv ResNeSt (stem.N)")
    return rename(src, [], skip, "timm ResNeSt")


def resnest(
    *,
    depth: int = 101,
    output_stride: int = 8,
    radix: int = 2,
    drop_path_rate: float = 0.0,
    pretrained: str | None = None,
    pretrained_strict: bool = True,
) -> ResNeStD8:
    """ResNeSt-D8 (sssegmentation's ResNeSt, MCIBI's S-101-D8); recipe type "resnest".

    Args:
        depth: 50, 101, 200 or 269.
        output_stride: 8 or 16.
        radix: split-attention radix.
        drop_path_rate: stochastic depth rate.
        pretrained: "timm" (timm's resnest{depth}e), "timm:NAME.TAG", a URL or a local file in timm
            naming (the classifier `fc` is skipped); None: random initialisation.
        pretrained_strict: False loads what fits and lists the rest instead of stopping.
    """
    if depth not in _DEPTHS:
        from ctxseg.errors import UserError

        raise UserError(f"ResNeSt depth must be one of {sorted(_DEPTHS)}, got {depth}")
    model = ResNeStD8(depth, output_stride, radix, drop_path_rate)
    if pretrained:
        from ctxseg.models.backbones.pretrained import load_pretrained

        key_filter = resnest_key_filter
        load_pretrained(model.net, pretrained, key_filter, timm_name=f"resnest{depth}e", strict=pretrained_strict)
    return model
