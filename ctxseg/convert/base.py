"""The converter mechanism: a key-rename table + a few functional fix-ups, applied strictly.

A foreign checkpoint is opened only with torch.load(weights_only=True). Zoo files often carry
non-tensor metadata pickled with classes we do not have (mmengine's HistoryBuffer, numpy
scalars, ConfigDicts); those globals are mapped to an inert stub so the load never executes
foreign code, and the metadata is dropped.

Strict means: every source key is used or matched by an explicit ignore pattern, every target
key is filled, and shapes are equal. Otherwise the report lists the first mismatches and the
CLI exits with code 2 without writing anything.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ctxseg.errors import UserError

# the key-map mechanism is a leaf module (models use it for pretrained files); re-exported here
from ctxseg.keymap import FixUp, KeyMap, Report, apply_keymap  # noqa: E402,F401


class _Inert:
    """Stand-in for any non-tensor class found in checkpoint metadata; it keeps nothing."""

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass

    def __call__(self, *args, **kwargs):
        return _Inert()


def _inert_global(name: str):
    module, _, qual = name.rpartition(".")
    stub = type(qual or "Inert", (_Inert,), {"__module__": module})
    return (stub, name)


def load_foreign(path: str | Path, max_retries: int = 64) -> dict[str, torch.Tensor]:
    """Tensors of a foreign .pth (state_dict/model/net wrappers and `module.` prefixes removed)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"Source checkpoint not found: {path}")
    stubs: list = []
    for _ in range(max_retries):
        try:
            with torch.serialization.safe_globals(stubs):
                obj = torch.load(path, map_location="cpu", weights_only=True)
            break
        except Exception as e:  # noqa: BLE001 - unpickling errors name the unsupported global
            m = re.search(r"(?:Unsupported global: GLOBAL|global) ([\w\.]+)", str(e))
            if not m or any(s[1] == m.group(1) for s in stubs):
                raise UserError(f"Cannot read {path} as a weights-only checkpoint: {str(e).splitlines()[0]}") from None
            stubs.append(_inert_global(m.group(1)))
    else:
        raise UserError(f"{path}: too many unknown classes in its metadata")
    for key in ("state_dict", "model", "net", "module"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict):
        raise UserError(f"{path} does not hold a state dict")
    out = {}
    for k, v in obj.items():
        if isinstance(v, torch.Tensor):
            out[k[7:] if k.startswith("module.") else k] = v
    if not out:
        raise UserError(f"{path} holds no tensors")
    return out


def convert_state_dict(src: dict[str, torch.Tensor], model: torch.nn.Module, keymap: KeyMap) -> tuple[dict, Report]:
    target = model.state_dict()
    out, report = apply_keymap(src, target, keymap)
    for k in report.defaulted:
        out[k] = target[k]
    out = {k: v.to(target[k].dtype) for k, v in out.items() if k in target}
    return out, report
