"""Recipe schema, TOML loading with `extends`, and `--set` overrides.

A recipe is data. Its fixed sections (data, train, eval, published) are pydantic models with
`extra="forbid"`; the model components (backbone, heads, context plug-ins) are validated against
the signature of the builder their `type` names, so adding a component never means editing a
schema by hand. Every error names the dotted key and, for typos, the closest valid key.
"""

from __future__ import annotations

import copy
import difflib
import inspect
import json
import tomllib
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, NonNegativeInt, PositiveInt, ValidationError, create_model

from ctxseg.errors import UserError

RECIPE_SUFFIX = ".toml"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Published(_Section):
    """The published result a recipe reproduces, printed by eval beside the measured one."""

    paper: str = ""
    table: str = ""
    miou: float | None = None  # single scale, no flip, percent
    miou_flip: float | None = None  # single scale + horizontal flip (the LIP protocol), percent
    miou_ms: float | None = None  # multi-scale (eval.ms_scales) + flip, percent
    checkpoint: str = ""
    notes: str = ""


class DataConfig(_Section):
    dataset: str = "synthetic"
    root: str = "data/synthetic"  # prepared index folder (meta.json, splits/)
    num_classes: int = 7
    ignore_index: int = 255
    reduce_zero_label: bool = False
    train_split: str = "train"
    val_split: str = "val"
    # training pipeline (mmseg semantics): RandomResize(scale, ratio_range, keep_ratio) ->
    # RandomCrop(crop_size, cat_max_ratio) -> RandomFlip -> PhotoMetricDistortion -> Normalize -> Pad
    scale: tuple[int, int] | None = None  # (long, short) edge target; None keeps the image size
    keep_ratio: bool = True  # false: stretch to scale x ratio (ssseg LIP Resize keep_ratio=False)
    ratio_range: tuple[float, float] = (0.5, 2.0)
    crop_size: tuple[int, int] = (512, 512)  # (h, w)
    cat_max_ratio: float = 0.75
    flip_prob: float = 0.5
    # ssseg RandomRotation after the flip (LIP: 30 degrees at p = 0.6); 0 switches it off
    rotate_prob: float = 0.0
    rotate_degree: int = 30
    photometric: bool = True
    mean: tuple[float, float, float] = (123.675, 116.28, 103.53)  # RGB
    std: tuple[float, float, float] = (58.395, 57.12, 57.375)
    batch_size: PositiveInt = 2  # per process
    num_workers: NonNegativeInt = 2
    flip_pairs: list[tuple[int, int]] | None = None  # None: take them from meta.json (LIP)
    sampler: Literal["uniform", "repeat_factor", "class_balanced"] = "uniform"
    repeat_thresh: float = 0.1  # repeat-factor sampling threshold (LVIS-style, on class image frequency)


class OptimizerConfig(_Section):
    type: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    head_lr_mult: float = 1.0  # lr multiplier for everything outside the backbone
    no_decay_norm_bias: bool = False  # no weight decay on norm layers and biases
    # mmseg-style custom keys: {"pos_embed" = {decay_mult = 0.0}, "backbone" = {lr_mult = 0.1}}
    custom_keys: dict[str, dict[str, float]] = {}


class ScheduleConfig(_Section):
    policy: Literal["poly", "constant"] = "poly"
    power: float = 0.9
    min_lr: float = 1e-4
    warmup_iters: int = 0
    warmup_ratio: float = 1e-6


class OhemConfig(_Section):
    thresh: float = 0.7
    min_kept: int = 100000


class LossConfig(_Section):
    decode_weight: float = 1.0
    aux_weight: float = 0.4
    # mmseg's CrossEntropyLoss default averages over ALL pixels (ignored ones count in the
    # denominator); avg_non_ignore=true divides by the non-ignored pixels only.
    avg_non_ignore: bool = False
    # a list of per-class weights, or "inverse_log_freq" (openseg-style, from meta.json counts)
    class_weight: list[float] | Literal["inverse_log_freq"] | None = None
    # with class weights: "pixels" divides the weighted sum by the pixel count (mmseg);
    # "weights" divides by the summed weights of the counted pixels (torch's mean, openseg)
    class_weight_norm: Literal["pixels", "weights"] = "pixels"
    ohem: OhemConfig | None = None


class TrainConfig(_Section):
    # The paper's process count: its global batch is processes x data.batch_size (per process).
    # Launch with this many processes to train at the published batch; None: not a paper setting.
    processes: int | None = None
    iters: int | None = 1000
    epochs: float | None = None  # converted to iterations from the train split and global batch
    optimizer: OptimizerConfig = OptimizerConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    loss: LossConfig = LossConfig()
    grad_accum: PositiveInt = 1
    grad_clip: float | None = None
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    seed: int = 0
    deterministic: bool = False
    log_interval: PositiveInt = 10
    eval_interval: PositiveInt = 500
    checkpoint_interval: PositiveInt = 500
    keep_checkpoints: PositiveInt = 2
    tensorboard: bool = False
    check_labels: bool = True  # read every image and label of the run's splits before training (sizes, values)


class EvalConfig(_Section):
    mode: Literal["whole", "slide"] = "whole"
    crop_size: tuple[int, int] = (512, 512)  # sliding window (h, w)
    stride: tuple[int, int] = (341, 341)
    window_batch: int = 4  # windows per forward pass in slide mode
    # Test-time Resize of the official test pipelines: the image is resized to `resize` ((long, short)
    # edges with keep_ratio, mmseg Resize(scale, keep_ratio=True); without keep_ratio a plain resize,
    # ssseg LIP (473, 473)); logits are resized back to the label's size before scoring. None: native.
    resize: tuple[int, int] | None = None
    keep_ratio: bool = True
    scales: list[float] = [1.0]
    ms_scales: list[float] = [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]  # used by --ms-flip
    # mode of the --ms-flip protocol when the official config tests it differently from the
    # single-scale one (ssseg MCIBI HRNet ADE20K: single scale whole, ms+flip slide); None: `mode`
    ms_mode: Literal["whole", "slide"] | None = None
    flip: bool = False
    batch_size: int = 1


class ModelConfig(_Section):
    """Components are tables whose `type` names a builder; the rest are that builder's arguments."""

    backbone: dict[str, Any]
    head: dict[str, Any]
    aux_head: dict[str, Any] | None = None
    align_corners: bool = False
    norm: Literal["BN", "SyncBN"] = "BN"  # SyncBN falls back to BN when one process runs
    # context plug-ins (each optional): validated against their builders like the components
    memory: dict[str, Any] | None = None  # MCIBI dataset-level memory
    contrast: dict[str, Any] | None = None  # ContrastiveSeg projection + pixel contrast
    cac: dict[str, Any] | None = None  # CAC context-aware classifier


class Recipe(_Section):
    name: str = ""
    description: str = ""
    published: Published = Published()
    data: DataConfig = DataConfig()
    model: ModelConfig
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


# --------------------------------------------------------------------------------------------
# recipe lookup


def recipe_dirs() -> list[Path]:
    """Recipe folders: the repo's recipes/ (editable install) and the packaged copy (wheel)."""
    here = Path(__file__).resolve().parent
    dirs = [here.parent / "recipes", here / "recipes"]
    return [d for d in dirs if d.is_dir()]


def list_recipes() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for d in recipe_dirs():
        for p in sorted(d.glob(f"*{RECIPE_SUFFIX}")):
            found.setdefault(p.stem, p)
    return found


def find_recipe(name_or_path: str | Path) -> Path:
    p = Path(name_or_path)
    if p.suffix == RECIPE_SUFFIX and p.is_file():
        return p
    recipes = list_recipes()
    name = p.stem if p.suffix == RECIPE_SUFFIX else str(name_or_path)
    if name in recipes:
        return recipes[name]
    close = difflib.get_close_matches(name, list(recipes), n=3)
    hint = f" Did you mean: {', '.join(close)}?" if close else " Run `ctxseg recipes list`."
    raise UserError(f"Recipe '{name_or_path}' not found.{hint}")


# --------------------------------------------------------------------------------------------
# loading


def deep_merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and not v.get("_replace", False):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy({kk: vv for kk, vv in v.items() if kk != "_replace"} if isinstance(v, dict) else v)
    return out


def _read_toml(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{path}: invalid TOML: {e}") from None
    except OSError as e:
        raise UserError(f"Cannot read recipe {path}: {e.strerror}") from None


def load_raw(path: Path, _chain: tuple[Path, ...] = ()) -> dict:
    """Read a TOML recipe and resolve `extends` (a path or a list, relative to the file)."""
    path = path.resolve()
    if path in _chain:
        raise UserError(f"Recipe `extends` cycle: {' -> '.join(str(p) for p in (*_chain, path))}")
    raw = _read_toml(path)
    extends = raw.pop("extends", [])
    if isinstance(extends, str):
        extends = [extends]
    merged: dict = {}
    for base in extends:
        base_path = (path.parent / base).resolve()
        if not base_path.is_file():
            raise UserError(f"{path.name}: extends '{base}', which does not exist ({base_path})")
        merged = deep_merge(merged, load_raw(base_path, (*_chain, path)))
    return deep_merge(merged, raw)


def parse_override(expr: str) -> tuple[list[str], Any]:
    """`train.lr=0.02` -> (["train", "lr"], 0.02); values are parsed as TOML, else kept as strings."""
    if "=" not in expr:
        raise UserError(f"--set expects KEY=VALUE, got '{expr}'")
    key, value = expr.split("=", 1)
    try:
        parsed = tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value
    return key.strip().split("."), parsed


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    raw = copy.deepcopy(raw)
    for expr in overrides:
        keys, value = parse_override(expr)
        node = raw
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise UserError(f"--set {expr}: '{k}' is not a table")
        node[keys[-1]] = value
    return raw


def load_recipe(name_or_path: str | Path, overrides: list[str] | None = None) -> Recipe:
    path = find_recipe(name_or_path)
    raw = load_raw(path)
    raw.setdefault("name", path.stem)
    raw = apply_overrides(raw, overrides or [])
    return validate_recipe(raw)


def recipe_from_json(text: str) -> Recipe:
    return validate_recipe(json.loads(text))


# --------------------------------------------------------------------------------------------
# validation


_EXPECTED = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true/false",
    "bool_parsing": "true/false",
    "string_type": "a string",
    "list_type": "a list",
    "tuple_type": "a list",
    "dict_type": "a table",
    "model_type": "a table",
}


def _valid_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """The valid keys of the table at `loc` (for did-you-mean hints)."""
    node: Any = model
    for part in loc:
        if isinstance(node, type) and issubclass(node, BaseModel) and part in node.model_fields:
            ann = node.model_fields[part].annotation
            node = next((a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type) and issubclass(a, BaseModel)), ann)
        else:
            return []
    if isinstance(node, type) and issubclass(node, BaseModel):
        return list(node.model_fields)
    return []


def _format_errors(e: ValidationError, model: type[BaseModel], prefix: str = "") -> str:
    lines = []
    for err in e.errors():
        loc = tuple(p for p in err["loc"] if not isinstance(p, int) or True)
        key = prefix + ".".join(str(p) for p in loc)
        if err["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
            valid = _valid_keys(model, loc[:-1])
            close = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.5)
            hint = f"; did you mean '{close[0]}'?" if close else (f"; valid keys: {', '.join(valid)}" if valid else "")
            lines.append(f"unknown key '{key}'{hint}")
        elif err["type"] == "missing":
            lines.append(f"missing required key '{key}'")
        elif err["type"] in _EXPECTED:
            lines.append(f"'{key}' must be {_EXPECTED[err['type']]}, got {err.get('input')!r}")
        else:
            lines.append(f"'{key}': {err['msg']} (got {err.get('input')!r})")
    return "\n".join(lines)


@lru_cache(maxsize=None)
def _signature_model(fn) -> type[BaseModel]:
    """A pydantic model with one field per keyword argument of a component builder."""
    fields: dict[str, Any] = {}
    for name, p in inspect.signature(fn).parameters.items():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or name in ("self", "in_channels", "num_classes", "align_corners", "head"):
            continue
        ann = p.annotation if p.annotation is not inspect.Parameter.empty else Any
        default = p.default if p.default is not inspect.Parameter.empty else ...
        fields[name] = (ann, default)
    return create_model(
        f"{getattr(fn, '__name__', 'component')}_args", __config__=ConfigDict(extra="forbid", arbitrary_types_allowed=True), **fields
    )


def validate_component(kind: str, cfg: dict[str, Any], where: str) -> None:
    from ctxseg.models.builder import component_builder  # local: models import this module

    if "type" not in cfg:
        raise UserError(f"'{where}' needs a 'type' key")
    builder, choices = component_builder(kind, cfg["type"])
    if builder is None:
        close = difflib.get_close_matches(str(cfg["type"]), choices, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else f"; choose one of: {', '.join(sorted(choices))}"
        raise UserError(f"'{where}.type' = '{cfg['type']}' is not a known {kind}{hint}")
    model = _signature_model(builder)
    args = {k: v for k, v in cfg.items() if k != "type"}
    try:
        model.model_validate(args)
    except ValidationError as e:
        raise UserError(f"Invalid recipe:\n{_format_errors(e, model, where + '.')}") from None


COMPONENT_KINDS = {"backbone": "backbone", "head": "head", "aux_head": "aux_head", "memory": "memory", "contrast": "contrast", "cac": "cac"}


def validate_recipe(raw: dict) -> Recipe:
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as e:
        raise UserError(f"Invalid recipe '{raw.get('name', '?')}':\n{_format_errors(e, Recipe)}") from None
    for field, kind in COMPONENT_KINDS.items():
        cfg = getattr(recipe.model, field)
        if cfg is not None:
            validate_component(kind, cfg, f"model.{field}")
    if recipe.train.iters is None and recipe.train.epochs is None:
        raise UserError("Invalid recipe: set 'train.iters' or 'train.epochs'")
    return recipe


def to_toml(d: dict) -> str:
    """Render a resolved recipe dict as TOML (tables after scalars), for `recipes show` and runs.

    Written by tomli-w, so any key (e.g. `custom_keys."decode_head.conv_seg"`) is quoted as
    needed and the text reads back with tomllib to the same dict; None (TOML has no null) is left out."""
    import tomli_w

    return tomli_w.dumps(_drop_none(d)).strip("\n")


def _drop_none(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _drop_none(x) for k, x in v.items() if x is not None}
    if isinstance(v, (list, tuple)):
        return [_drop_none(x) for x in v]
    return v
