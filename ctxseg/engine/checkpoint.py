"""Checkpoints: model weights as .safetensors with the resolved recipe in the metadata.

The resume state (optimizer, grad scaler, step, RNG states as tensors) is a separate
`<name>.state.pt` written next to it and read with `torch.load(weights_only=True)`; both are
written atomically (temp file + fsync + rename).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from ctxseg.config import Recipe, recipe_from_json
from ctxseg.errors import UserError
from ctxseg.io import atomic_path

FORMAT = "ctxseg-v1"


def save_weights(path: str | Path, model: nn.Module, recipe: Recipe, extra: dict | None = None) -> Path:
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    meta = {"format": FORMAT, "recipe": recipe.to_json(), **{k: json.dumps(v) for k, v in (extra or {}).items()}}
    with atomic_path(path, ".safetensors") as tmp:
        save_file(state, str(tmp), metadata=meta)
    return Path(path)


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], Recipe, dict]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"Checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 - a corrupt or foreign file is the user's input
        raise UserError(
            f"{path} is not a readable .safetensors checkpoint ({e}). Foreign .pth files go through `ctxseg convert`."
        ) from None
    if meta.get("format") != FORMAT or "recipe" not in meta:
        raise UserError(f"{path} has no ctxseg recipe metadata; convert it with `ctxseg convert`")
    extra = {k: json.loads(v) for k, v in meta.items() if k not in ("format", "recipe")}
    return state, recipe_from_json(meta["recipe"]), extra


def load_model(path: str | Path, overrides: list[str] | None = None):
    """Build the model a checkpoint describes and load its weights (strict). Never fetches pretrained
    backbone weights (ctxseg.engine.offline)."""
    from ctxseg.config import apply_overrides, validate_recipe
    from ctxseg.engine.offline import build_for_loading

    state, recipe, extra = read_checkpoint(path)
    if overrides:
        recipe = validate_recipe(apply_overrides(recipe.to_dict(), overrides))
    model = build_for_loading(recipe)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise UserError(f"{path} does not match its recipe: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model.eval(), recipe, extra


def save_state(path: str | Path, state: dict) -> None:
    """The resume state must hold only tensors, numbers, strings, lists and dicts (RNG states are
    stored as tensors): it is read back with `weights_only=True`, which refuses anything else."""
    with atomic_path(path, ".pt") as tmp:
        torch.save(state, tmp)


def load_state(path: str | Path) -> dict:
    # weights_only=True: a resume state from a shared run folder cannot execute code on load
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"Resume state not found: {path}") from None
    except Exception as e:  # noqa: BLE001 - unpickling refused, truncated or foreign file
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(
            f"{path} is not a loadable ctxseg resume state ({first[:300]}). It may be truncated, "
            "or hold objects other than tensors and numbers (refused for safety)."
        ) from None
