"""Pretrained weights for backbones: a timm model name (downloaded by timm) or a local file."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ctxseg.errors import UserError


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read tensors from .safetensors or .pth/.pt (only ever with weights_only=True)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"Pretrained weights not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file for the user
        raise UserError(f"Cannot read {path} as a weights-only checkpoint: {e}") from None
    for key in ("state_dict", "model", "module"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def load_pretrained(module: nn.Module, pretrained: str, timm_name: str | None = None) -> None:
    """`pretrained` is a local file, `timm` (timm's default tag for `timm_name`), or `timm:NAME.TAG`."""
    if pretrained.startswith("timm"):
        import timm

        name = pretrained.split(":", 1)[1] if ":" in pretrained else timm_name
        src = timm.create_model(name, pretrained=True, num_classes=0).state_dict()
    else:
        src = read_state_dict(pretrained)
    missing, unexpected = module.load_state_dict(src, strict=False)
    missing = [k for k in missing if "num_batches_tracked" not in k]
    if len(missing) > len(module.state_dict()) // 2:
        raise UserError(f"Pretrained weights '{pretrained}' do not fit this backbone ({len(missing)} keys missing, e.g. {missing[:3]})")
