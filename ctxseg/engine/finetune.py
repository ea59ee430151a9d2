"""Fine-tuning: start a run from another model's weights (`ctxseg train --init PATH|official`).

Every tensor of the new model whose name and shape the source checkpoint has is loaded. The
class-dependent tensors (the decode / auxiliary / MCIBI classifiers' conv_seg, the MCIBI memory,
the contrast queues; CAC reads the classifier it refines and holds nothing class-dependent of its
own) keep their fresh initialisation when the class count differs. They are found without a list:
the model is built twice on the meta device (no memory, no weights), with C and C + 1 classes,
and every tensor whose shape changes is class-dependent, so a plug-in from outside ctxseg is
covered too. Any other tensor missing from the source or of another shape means another
architecture: refused, naming the first such key. Source tensors the new model has no place for
are reported as unused.

This happens once, at a fresh start; a resumed run loads its own checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ctxseg.config import Recipe, recipe_from_json, validate_recipe
from ctxseg.errors import UserError

EXAMPLES = 3  # keys shown per row of the table


@dataclass
class InitPlan:
    """Which tensors of the new model come from the source checkpoint.

    Args:
        spec: what the user passed to --init (a path, or "official").
        path: the checkpoint file.
        loaded: keys taken from the checkpoint (name and shape fit).
        reinitialised: class-dependent keys that keep the new model's initialisation.
        unused: checkpoint keys the new model has no place for.
        source_recipe: the recipe stored in the checkpoint (name), when it has one.
        source_num_classes: its data.num_classes, when known.
        num_classes: the new model's class count.
    """

    spec: str
    path: Path
    loaded: list[str] = field(default_factory=list)
    reinitialised: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)
    source_recipe: str | None = None
    source_num_classes: int | None = None
    num_classes: int = 0

    def to_dict(self) -> dict:
        """The record written to the run folder (init.json)."""
        return {
            "init": self.spec,
            "checkpoint": str(self.path),
            "source_recipe": self.source_recipe,
            "source_num_classes": self.source_num_classes,
            "num_classes": self.num_classes,
            "counts": {
                "loaded": len(self.loaded),
                "reinitialised": len(self.reinitialised),
                "unused": len(self.unused),
            },
            "loaded": self.loaded,
            "reinitialised": self.reinitialised,
            "unused": self.unused,
        }


def resolve_init(spec: str | Path, recipe_name: str) -> Path:
    """`official` -> the released model of the recipe's paper row (ctxseg.weights, downloaded and converted
    once); anything else is a path to a ctxseg .safetensors checkpoint."""
    if str(spec) == "official":
        try:  # imported here: the registry is only needed for `official`
            from ctxseg import weights
        except ImportError as e:
            raise UserError(f"--init official needs the weights registry (ctxseg.weights): {e}") from None
        return Path(weights.get(recipe_name))
    path = Path(spec)
    if not path.is_file():
        raise UserError(f"--init {spec}: no such checkpoint file (give a ctxseg .safetensors file, or `official`)")
    return path


def _meta_shapes(recipe: Recipe, num_classes: int | None = None) -> dict[str, tuple[int, ...]]:
    """State-dict shapes of the recipe's model, built on the meta device (no memory, no weights read)."""
    from ctxseg.engine.offline import build_for_loading

    if num_classes is not None:
        raw = recipe.to_dict()
        raw["data"]["num_classes"] = num_classes
        recipe = validate_recipe(raw)
    with torch.device("meta"):
        model = build_for_loading(recipe)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def class_dependent_keys(recipe: Recipe) -> set[str]:
    """State-dict keys whose shape depends on data.num_classes (module docstring)."""
    a = _meta_shapes(recipe)
    b = _meta_shapes(recipe, recipe.data.num_classes + 1)
    return {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)}


def _source(path: Path) -> tuple[dict[str, tuple[int, ...]], dict]:
    """Tensor shapes (header only) and metadata of a .safetensors file."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}, f.metadata() or {}
    except Exception as e:  # noqa: BLE001 - a corrupt or foreign file is the user's input
        raise UserError(
            f"--init {path}: not a readable .safetensors checkpoint ({e}). Foreign .pth files go through "
            "`ctxseg convert` first."
        ) from None


def plan_init(recipe: Recipe, path: Path, spec: str | None = None) -> InitPlan:
    """Decide, from shapes alone, what --init loads; UserError (exit 2) for another architecture."""
    spec = str(path) if spec is None else spec
    src, meta = _source(path)
    plan = InitPlan(spec, path, num_classes=recipe.data.num_classes)
    if "recipe" in meta:
        try:
            source = recipe_from_json(meta["recipe"])
            plan.source_recipe, plan.source_num_classes = source.name, source.data.num_classes
        except UserError:
            pass  # components the source recipe used but this process cannot import: shapes still decide
    target = _meta_shapes(recipe)
    dependent: set[str] | None = None
    for key, shape in target.items():
        if src.get(key) == shape:
            plan.loaded.append(key)
            continue
        if dependent is None:
            dependent = class_dependent_keys(recipe)
        if key in dependent:
            plan.reinitialised.append(key)
            continue
        why = (
            "missing from the checkpoint"
            if key not in src
            else f"shape {list(src[key])} in the checkpoint, {list(shape)} in this model"
        )
        source = f" (a model of {plan.source_recipe})" if plan.source_recipe else ""
        raise UserError(
            f"--init {spec}: {path}{source} does not fit the architecture of {recipe.name or 'this recipe'}: "
            f"first mismatching key {key} ({why}). --init takes a checkpoint of the same backbone, heads and "
            f"plug-ins; only class-dependent tensors (classifiers, MCIBI memory, contrast queues) may differ."
        )
    plan.unused = [k for k in src if k not in target]
    return plan


def apply_init(model: torch.nn.Module, plan: InitPlan) -> None:
    """Load the planned tensors into `model` (built from the same recipe, on the CPU)."""
    from safetensors import safe_open

    with safe_open(str(plan.path), framework="pt") as f:
        state = {k: f.get_tensor(k) for k in plan.loaded}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if set(missing) != set(plan.reinitialised) or unexpected:
        raise UserError(
            f"--init {plan.spec}: the model does not match the plan (missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}); was the recipe changed while loading?"
        )


def init_table(plan: InitPlan):
    """The rich table printed at the start of a fine-tuning run."""
    from rich.table import Table

    src = plan.source_recipe or "a checkpoint without recipe metadata"
    classes = f"{plan.source_num_classes} -> {plan.num_classes} classes" if plan.source_num_classes else ""
    title = f"--init {plan.spec}: {src}" + (f", {classes}" if classes else "")
    table = Table(title=title, title_justify="left")
    table.add_column("tensors")
    table.add_column("count", justify="right")
    table.add_column("examples", overflow="fold")
    rows = [
        ("loaded", plan.loaded, "green"),
        ("re-initialised", plan.reinitialised, "yellow"),
        ("unused", plan.unused, "dim"),
    ]
    for name, keys, style in rows:
        if name == "re-initialised":  # few and telling: every module, without .weight / .bias
            shown = list(dict.fromkeys(k.rsplit(".", 1)[0] if k.endswith((".weight", ".bias")) else k for k in keys))
            more = ""
        else:
            shown = _examples(keys)
            more = f", ... (+{len(keys) - len(shown)})" if len(keys) > len(shown) else ""
        table.add_row(f"[{style}]{name}[/]", str(len(keys)), ", ".join(shown) + more)
    return table


def _examples(keys: list[str]) -> list[str]:
    """A few keys, from different top-level modules where there are several."""
    picked, seen = [], set()
    for k in keys:
        top = k.split(".", 2)[:2] if k.startswith("plugins.") else k.split(".", 1)[:1]
        if tuple(top) not in seen:
            seen.add(tuple(top))
            picked.append(k)
    for k in keys:
        if len(picked) >= EXAMPLES:
            break
        if k not in picked:
            picked.append(k)
    return picked[:EXAMPLES]
