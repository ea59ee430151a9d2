"""SyncBN conversion that respects a backbone's own norm.

mmseg configs may give the heads SyncBN while a backbone keeps plain BN (e.g. MobileNetV2, whose
`norm_cfg` defaults to BN and which CAC's / mmseg's configs replace without passing SyncBN). A
module with `keep_plain_bn = True` keeps its BatchNorms per process; everything else converts.
"""

from __future__ import annotations

from torch import nn


def convert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """nn.SyncBatchNorm.convert_sync_batchnorm, except inside modules flagged `keep_plain_bn`."""
    if getattr(module, "keep_plain_bn", False):
        return module
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in module.named_children():
        converted = convert_sync_batchnorm(child)
        if converted is not child:
            setattr(module, name, converted)
    return module
