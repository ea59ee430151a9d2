"""Recipe schema, TOML loading with `extends`, and `--set` overrides.

A recipe is data. Its fixed sections (data, train, eval, published) are pydantic models with
`extra="forbid"`; the model components (backbone, heads, and the ordered `[[model.plugins]]`
list of context plug-ins) are validated against the signature of the constructor their `type`
names (ctxseg.models.builder, which owns component validation), so adding a component never
means editing a schema. Every error names the dotted key and, for typos, the closest valid key.

`imports = ["my_package.plugins", "./my_plugin.py"]` (top level) imports modules that register
components defined outside ctxseg before the recipe is validated; it is stored with the recipe
in runs and checkpoints, so eval, predict and export find the same components (ctxseg.extensions).
"""

from __future__ import annotations

import copy
import difflib
import json
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, NonNegativeInt, PositiveInt, ValidationError, model_validator

from ctxseg.errors import UserError

RECIPE_SUFFIX = ".toml"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Published(_Section):
    """The published result a recipe reproduces, printed by eval beside the measured one.

    Args:
        paper: the paper (title or citation) the result comes from.
        table: where in the paper (e.g. "Table 3").
        miou: published single-scale mIoU without flip, in percent; None when not published.
        miou_flip: published single-scale + horizontal-flip mIoU (the LIP protocol), in percent.
        miou_ms: published multi-scale (eval.ms_scales) + flip mIoU, in percent.
        checkpoint: the released checkpoint (URL or file name), if any.
        notes: free text (differences from the paper's setting, caveats).
    """

    paper: str = ""
    table: str = ""
    miou: float | None = None  # single scale, no flip, percent
    miou_flip: float | None = None  # single scale + horizontal flip (the LIP protocol), percent
    miou_ms: float | None = None  # multi-scale (eval.ms_scales) + flip, percent
    checkpoint: str = ""
    notes: str = ""


class OpensegResize(_Section):
    """openseg `train_trans.random_resize` (cv2_aug_transforms.RandomResize).

    Args:
        ratio: probability of applying it (the skip bit is drawn after the scale and aspect draws).
        method: "random" (scale drawn uniformly from scale_range) or "bound" (scale that fits resize_bound).
        scale_range: (min, max) of the uniformly drawn scale (method "random").
        aspect_range: (min, max) of the uniformly drawn aspect ratio a; width x sqrt(a), height / sqrt(a).
        resize_bound: (short, long) side bounds of method "bound".
        max_side_bound: cap on the scaled image's longer side (method "random" only, as openseg); None: no cap.
    """

    ratio: float
    method: Literal["random", "bound"] = "random"
    scale_range: tuple[float, float] | None = None
    aspect_range: tuple[float, float]
    resize_bound: tuple[float, float] | None = None
    max_side_bound: float | None = None


class OpensegFixedResize(_Section):
    """openseg `train_trans.resize` (cv2_aug_transforms.Resize, deterministic); the first of
    target_size, min_side_length, max_side_length that is set decides.

    Args:
        target_size: (w, h) to resize to.
        min_side_length: the shorter side becomes this (keep ratio, sizes rounded half to even).
        max_side_length: the longer side becomes this (keep ratio).
        max_side_bound: cap on the longer side after the above.
    """

    target_size: tuple[int, int] | None = None
    min_side_length: int | None = None
    max_side_length: int | None = None
    max_side_bound: int | None = None


class OpensegCrop(_Section):
    """openseg `train_trans.random_crop` (cv2_aug_transforms.RandomCrop): a crop of min(crop, image)
    size, no retries, no padding (the collate pads).

    Args:
        ratio: probability of applying it.
        crop_size: (w, h) of the crop.
        method: "random" (offset uniform), "center" or "grid" (one of grid cells' corners).
        grid: (columns, rows) of method "grid".
        allow_outside_center: accepted as in the json; openseg's RandomCrop does not read it.
    """

    ratio: float
    crop_size: tuple[int, int]
    method: Literal["random", "center", "grid"] = "random"
    grid: tuple[int, int] | None = None
    allow_outside_center: bool = True


class OpensegFlip(_Section):
    """openseg `train_trans.random_hflip` (cv2_aug_transforms.RandomHFlip).

    Args:
        ratio: flip probability.
        swap_pair: (left, right) label ids swapped after a flip; None: the dataset's flip pairs (meta.json).
    """

    ratio: float
    swap_pair: list[tuple[int, int]] | None = None


class OpensegBrightness(_Section):
    """openseg `train_trans.random_brightness` (cv2_aug_transforms.RandomBrightness).

    Args:
        ratio: probability of applying it.
        shift_value: the integer shift is drawn from [-shift_value, shift_value].
    """

    ratio: float
    shift_value: int


class OpensegDataTransformer(_Section):
    """openseg `train.data_transformer` (lib/datasets/tools/collate.py) for training batches.

    Args:
        size_mode: "fix_size" (every item padded to input_size); the only one ctxseg stacks.
        input_size: (w, h) every item is padded to.
        align_method: "only_pad".
        pad_mode: where the padding goes: "random" (offsets drawn uniformly), "pad_left_up",
            "pad_right_down", "pad_center" or "pad_border" (left-up or right-down at random).
    """

    size_mode: Literal["fix_size"] = "fix_size"
    input_size: tuple[int, int]
    align_method: Literal["only_pad"] = "only_pad"
    pad_mode: Literal["random", "pad_left_up", "pad_right_down", "pad_center", "pad_border"] = "random"


class OpensegNormalize(_Section):
    """openseg `normalize` block (lib/datasets/tools/transforms.py ToTensor + Normalize).

    Args:
        div_value: pixel values are divided by it first (255.0 or 1.0).
        mean: subtracted per channel, in the order of the image's channels (input_mode).
        std: divided by per channel, same order.
    """

    div_value: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


OPENSEG_TRANSFORMS = ("random_resize", "resize", "random_crop", "random_hflip", "random_brightness")


class OpensegConfig(_Section):
    """The recipe's `[data.openseg]` table: openseg's (ContrastiveSeg's) training pipeline, with the
    settings of the official json's `train_trans`, `train.data_transformer`, `normalize` and
    `data.input_mode` (ctxseg/data/openseg_pipeline.py; used when `data.pipeline = "openseg"`).

    Args:
        trans_seq: transforms applied in this order (names of the blocks below).
        shuffle_trans_seq: transforms applied first, in an order shuffled for every image.
        input_mode: channel order of the network input: "BGR" (openseg's cv2 configs) or "RGB";
            normalize's mean/std apply in this order. Evaluation uses the same normalisation.
        random_resize: see OpensegResize.
        resize: see OpensegFixedResize.
        random_crop: see OpensegCrop.
        random_hflip: see OpensegFlip.
        random_brightness: see OpensegBrightness.
        data_transformer: see OpensegDataTransformer.
        normalize: see OpensegNormalize.
    """

    trans_seq: list[Literal[OPENSEG_TRANSFORMS]]  # type: ignore[valid-type]
    shuffle_trans_seq: list[Literal[OPENSEG_TRANSFORMS]] = []  # type: ignore[valid-type]
    input_mode: Literal["BGR", "RGB"] = "BGR"
    random_resize: OpensegResize | None = None
    resize: OpensegFixedResize | None = None
    random_crop: OpensegCrop | None = None
    random_hflip: OpensegFlip | None = None
    random_brightness: OpensegBrightness | None = None
    data_transformer: OpensegDataTransformer
    normalize: OpensegNormalize

    @model_validator(mode="after")
    def _blocks_present(self):
        for name in [*self.trans_seq, *self.shuffle_trans_seq]:
            if getattr(self, name) is None:
                raise ValueError(f"trans_seq names '{name}' but the table has no [data.openseg.{name}] block")
        return self


class DataConfig(_Section):
    """The recipe's `[data]` table: the prepared dataset and the training pipeline.

    The training pipeline follows mmseg: RandomResize(scale, ratio_range, keep_ratio) ->
    RandomCrop(crop_size, cat_max_ratio) -> RandomFlip -> (RandomRotation) -> PhotoMetricDistortion
    -> Normalize -> Pad to crop_size. With `pipeline = "openseg"` it is openseg's instead (ContrastiveSeg,
    ctxseg/data/openseg_pipeline.py), set by the `[data.openseg]` table (OpensegConfig).

    Args:
        dataset: dataset name (as `ctxseg prepare` knows it), used in reports.
        root: the prepared index folder (meta.json, splits/).
        num_classes: number of classes the model predicts; given to every component that takes it.
        ignore_index: label value that is not scored nor trained on; given to every component that takes it.
        reduce_zero_label: mmseg's reduce_zero_label: label 0 becomes ignore_index and every other id shifts
            down by one (ADE20K, COCO-Stuff-164k style labels).
        train_split: split name (splits/<name>.txt) trained on.
        val_split: split name evaluated on.
        scale: (long, short) edge target of RandomResize before the ratio is applied; None keeps the
            image's own size.
        keep_ratio: keep the aspect ratio when resizing; False stretches to scale x ratio (ssseg's LIP
            Resize(keep_ratio=False)).
        ratio_range: (min, max) of the uniformly drawn resize ratio.
        crop_size: (h, w) of the random training crop; smaller images are padded (label: ignore_index).
        cat_max_ratio: RandomCrop retries (up to 10) until the largest class covers less than this fraction
            of the crop; 1.0 disables it.
        flip_prob: probability of a horizontal flip.
        rotate_prob: probability of ssseg's RandomRotation after the flip (LIP: 0.6); 0 switches it off.
        rotate_degree: maximum rotation angle, in degrees (both directions).
        photometric: apply mmseg's PhotoMetricDistortion (brightness, contrast, saturation, hue).
        pipeline: which official implementation of these transforms to reproduce, draw for draw:
            "mmseg" (mmsegmentation 1.2.2), "mmseg0" (mmseg 0.x on mmcv 1.x, the CAC recipes: normalised
            by multiplying with 1/std), "ssseg" (sssegmentation 1.7.0, the MCIBI recipes: 10 crop draws,
            photometric HSV from the BGR image read as RGB, centred padding; see
            `ctxseg.data.transforms.train_steps`) or "openseg": ContrastiveSeg's own augmentation,
            normalisation and padding from the `[data.openseg]` table (the mmseg keys, mean and std are
            then unused; `ctxseg.data.openseg_pipeline`).
        openseg: the openseg pipeline's settings (required with pipeline = "openseg").
        mean: per-channel mean subtracted, RGB order, on 0..255 pixel values.
        std: per-channel standard deviation divided by, RGB order, on 0..255 pixel values.
        batch_size: images per process per step (the global batch is processes x batch_size x grad_accum).
        num_workers: DataLoader worker processes per training process.
        flip_pairs: (left, right) class pairs swapped by a horizontal flip (LIP); None takes them from
            meta.json.
        sampler: how training images are drawn: "uniform", "repeat_factor" (LVIS-style repeat factors from
            class image frequency) or "class_balanced" (every class drawn equally often).
        repeat_thresh: threshold t of repeat-factor sampling: a class seen in a fraction f_c of the images
            gets repeat factor max(1, sqrt(t / f_c)).
    """

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
    pipeline: Literal["mmseg", "mmseg0", "ssseg", "openseg"] = "mmseg"  # whose transforms, draw for draw
    openseg: OpensegConfig | None = None
    mean: tuple[float, float, float] = (123.675, 116.28, 103.53)  # RGB
    std: tuple[float, float, float] = (58.395, 57.12, 57.375)
    batch_size: PositiveInt = 2  # per process
    num_workers: NonNegativeInt = 2
    flip_pairs: list[tuple[int, int]] | None = None  # None: take them from meta.json (LIP)
    sampler: Literal["uniform", "repeat_factor", "class_balanced"] = "uniform"
    repeat_thresh: float = 0.1  # repeat-factor sampling threshold (LVIS-style, on class image frequency)

    @model_validator(mode="after")
    def _openseg_table(self):
        if self.pipeline == "openseg":
            if self.openseg is None:
                raise ValueError('pipeline = "openseg" needs a [data.openseg] table')
            w, h = self.openseg.data_transformer.input_size
            if tuple(self.crop_size) != (h, w):
                raise ValueError(
                    f"crop_size {list(self.crop_size)} (h, w) must equal openseg data_transformer.input_size "
                    f"{[w, h]} (w, h) reversed: it is the training input size"
                )
        return self


class OptimizerConfig(_Section):
    """The recipe's `[train.optimizer]` table.

    Args:
        type: "sgd" (with momentum) or "adamw".
        lr: base learning rate (before the schedule).
        momentum: SGD momentum.
        weight_decay: weight decay (decoupled for AdamW, L2 for SGD).
        betas: AdamW's (beta1, beta2).
        eps: AdamW's epsilon.
        head_lr_mult: learning-rate multiplier for every parameter outside the backbone.
        no_decay_norm_bias: no weight decay on normalisation layers and biases.
        custom_keys: mmseg-style per-parameter-name multipliers, e.g. `{"pos_embed" = {decay_mult = 0.0},
            "backbone" = {lr_mult = 0.1}}`: a parameter whose name contains the key gets those multipliers.
    """

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
    """The recipe's `[train.schedule]` table (mmseg's PolyLR with an optional LinearLR warm-up).

    Args:
        policy: "poly": lr = (base_lr - min_lr) * (1 - iter / total) ** power + min_lr; "constant": base_lr.
        power: exponent of the poly decay.
        min_lr: learning rate the poly decay ends at.
        warmup_iters: length of the linear warm-up, in iterations; 0: no warm-up.
        warmup_ratio: the warm-up starts at warmup_ratio x lr and rises linearly to lr.
        form: how the official code computes it (ctxseg.engine.schedule): "mmengine" (mmsegmentation 1.x:
            chainable LinearLR warm-up, then PolyLR from the end of the warm-up to the last iteration) or
            "mmcv" (mmcv 1.x hooks, as in the CAC fork; the same closed form as ContrastiveSeg's poly:
            decay over the whole budget, warm-up factor on top, min_lr absolute) or "ssseg"
            (sssegmentation's PolyScheduler: the mmcv curve of the base lr, times each group's lr
            multiplier, min_lr included).
        decay_end: the iteration where the poly decay ends, the lr staying at min_lr after it (an
            official config's PolyLR `end` shorter than its run: ocrnet_r101-d8_8xb2-80k decays over
            40000 of its 80000 iterations); 0: the last iteration of the run.
    """

    policy: Literal["poly", "constant"] = "poly"
    power: float = 0.9
    min_lr: float = 1e-4
    warmup_iters: int = 0
    warmup_ratio: float = 1e-6
    form: Literal["mmengine", "mmcv", "ssseg"] = "mmengine"
    decay_end: NonNegativeInt = 0


class OhemConfig(_Section):
    """Online hard example mining of the cross-entropy (mmseg's OHEMPixelSampler).

    Args:
        thresh: pixels whose predicted probability of the true class is below this are kept.
        min_kept: at least this many pixels per image are kept (the threshold rises to the
            (min_kept x batch)-th smallest probability).
    """

    thresh: float = 0.7
    min_kept: int = 100000


class LossConfig(_Section):
    """The recipe's `[train.loss]` table: the cross-entropy of the decode and auxiliary heads.

    Args:
        decode_weight: weight of the decode head's cross-entropy.
        aux_weight: weight of the auxiliary head's cross-entropy.
        avg_non_ignore: divide by the non-ignored pixels only; False (mmseg's CrossEntropyLoss default)
            averages over all pixels, ignored ones included in the denominator.
        class_weight: a list of per-class weights, or "inverse_log_freq" (openseg-style, from meta.json's
            pixel counts); None: unweighted.
        class_weight_norm: with class weights, "pixels" divides the weighted sum by the pixel count (mmseg);
            "weights" divides by the summed weights of the counted pixels (torch's mean, openseg).
        ohem: online hard example mining settings; None: off.
    """

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
    """The recipe's `[train]` table.

    Args:
        processes: the paper's process count (its global batch is processes x data.batch_size); launch
            this many to train at the published batch. None: not a paper setting.
        iters: training length in optimizer steps; ignored when `epochs` is set.
        epochs: training length in epochs, converted to iterations from the train split's size and the
            global batch.
        optimizer: optimizer settings.
        schedule: learning-rate schedule.
        loss: cross-entropy settings.
        grad_accum: micro-batches accumulated per optimizer step.
        grad_clip: maximum gradient norm (clip_grad_norm_); None: no clipping.
        mixed_precision: "no", "fp16" or "bf16" (Accelerate's mixed precision).
        seed: random seed (weights, sampling, augmentation).
        deterministic: ask torch for deterministic algorithms (warn-only) and seed every worker.
        log_interval: iterations between log lines (log.jsonl).
        eval_interval: iterations between evaluations on the val split.
        checkpoint_interval: iterations between resumable checkpoints.
        keep_checkpoints: how many of the newest iteration checkpoints to keep.
        tensorboard: also log to TensorBoard (Accelerate's tracker).
        check_labels: before training, read every image and label of the run's splits (sizes, values);
            False only checks the index.
    """

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
    """The recipe's `[eval]` table: how validation and `ctxseg eval` run inference.

    Args:
        mode: "whole" image or sliding-window ("slide") inference.
        crop_size: sliding window (h, w).
        stride: sliding window step (h, w).
        window_batch: windows per forward pass in slide mode.
        resize: the official test pipeline's Resize, (long, short) edges: with keep_ratio the image is
            rescaled to fit them (mmseg Resize(scale, keep_ratio=True)); without it stretched so its
            longer side becomes the long edge and the other the short one (ssseg LIP (473, 473)).
            Logits are resized back to the label's size before scoring. None: native size.
        keep_ratio: see `resize`.
        scales: image scales of the default protocol (probabilities averaged over scales and flips).
        ms_scales: image scales of the `--ms-flip` protocol (with flip).
        ms_mode: mode of the `--ms-flip` protocol when the official config tests it differently from the
            single-scale one (ssseg MCIBI HRNet ADE20K: single scale whole, ms+flip slide); None: `mode`.
        flip: also average over the horizontally flipped image in the default protocol.
        batch_size: images per evaluation forward pass.
    """

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
    """The recipe's `[model]` table. Components are tables whose `type` names a registered constructor
    (ctxseg.models.builder); the other keys are that constructor's arguments.

    Args:
        backbone: the backbone table (`type` one of builder.BACKBONES).
        head: the decode head table (`type` one of builder.HEADS).
        aux_head: the auxiliary head table (a HEADS or AUX_HEADS type); None: no auxiliary head.
        align_corners: `align_corners` of every bilinear resize of the model; given to every component that
            takes it.
        norm: "BN" or "SyncBN" (falls back to BN when one process runs).
        plugins: context plug-ins, `[[model.plugins]]` tables with a `type` (builder.PLUGINS), composed in
            the order listed (e.g. mcibi -> cac -> pixel_contrast); validated against their constructors.
    """

    backbone: dict[str, Any]
    head: dict[str, Any]
    aux_head: dict[str, Any] | None = None
    align_corners: bool = False
    norm: Literal["BN", "SyncBN"] = "BN"  # SyncBN falls back to BN when one process runs
    # context plug-ins, `[[model.plugins]]` tables with a `type`, composed in the order listed
    # (e.g. mcibi -> cac -> pixel_contrast); validated against their constructors like the components
    plugins: list[dict[str, Any]] = []

    def plugin(self, type_name: str) -> dict[str, Any] | None:
        """The first `[[model.plugins]]` entry of this type, or None."""
        return next((p for p in self.plugins if p.get("type") == type_name), None)


class Recipe(_Section):
    """A whole recipe (one TOML file after `_base` inheritance and `--set` overrides).

    Args:
        name: recipe name (the file's stem for a shipped recipe).
        description: one line shown by `ctxseg recipes list`.
        imports: modules imported before validation that register components defined outside ctxseg.
        published: the published result this recipe reproduces.
        data: dataset and training pipeline.
        model: the model's components.
        train: training settings.
        eval: evaluation settings.
    """

    name: str = ""
    description: str = ""
    imports: list[str] = []  # modules registering components defined outside ctxseg
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


def plugin_key(entry: dict) -> str:
    """Identity of a `[[model.plugins]]` entry across `extends` and `--set`: its name, else its type."""
    return str(entry.get("name") or entry.get("type", ""))


def merge_plugin_lists(base: list, override: list) -> list:
    """An extending recipe's plug-in list merges into its base's entry by entry: an entry with the
    same name (else type) is deep-merged in place (`_remove = true` drops it), others are appended.
    So `[[model.plugins]] type = "mcibi"  base_lr = 0.004` overrides one key of the base's MCIBI."""
    out = [copy.deepcopy(e) for e in base]
    for entry in override:
        if not isinstance(entry, dict):
            raise UserError(f"model.plugins entries must be tables, got {entry!r}")
        key = plugin_key(entry)
        at = next((i for i, e in enumerate(out) if isinstance(e, dict) and plugin_key(e) == key), None)
        if entry.get("_remove", False):
            if at is not None:
                out.pop(at)
            continue
        if at is None:
            out.append(copy.deepcopy(entry))
        else:
            out[at] = deep_merge(out[at], entry)
    return out


def deep_merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and not v.get("_replace", False):
            out[k] = deep_merge(out[k], v)
        elif k == "plugins" and isinstance(v, list) and isinstance(out.get(k), list):
            out[k] = merge_plugin_lists(out[k], v)
        elif k == "imports" and isinstance(v, list) and isinstance(out.get(k), list):
            out[k] = out[k] + [x for x in v if x not in out[k]]
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
    check_legacy_plugins(raw, path.name)
    if isinstance(raw.get("imports"), list):  # plug-in files relative to the recipe that names them
        raw["imports"] = [
            str((path.parent / x).resolve()) if isinstance(x, str) and x.endswith(".py") else x for x in raw["imports"]
        ]
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


def _list_item(items: list, k: str, expr: str) -> Any:
    """`model.plugins.0` (position) or `model.plugins.mcibi` (name, else type) in a --set key."""
    if k.lstrip("-").isdigit() and -len(items) <= int(k) < len(items):
        return items[int(k)]
    found = [e for e in items if isinstance(e, dict) and k in (e.get("name"), e.get("type"))]
    if len(found) != 1:
        have = ", ".join(plugin_key(e) for e in items if isinstance(e, dict)) or "none"
        why = "is ambiguous" if found else "matches no entry"
        raise UserError(f"--set {expr}: '{k}' {why} (entries: {have}; or use a position 0..{len(items) - 1})")
    return found[0]


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    raw = copy.deepcopy(raw)
    for expr in overrides:
        keys, value = parse_override(expr)
        node = raw
        for k in keys[:-1]:
            node = _list_item(node, k, expr) if isinstance(node, list) else node.setdefault(k, {})
            if not isinstance(node, (dict, list)):
                raise UserError(f"--set {expr}: '{k}' is not a table")
        if isinstance(node, list):
            raise UserError(f"--set {expr}: '{keys[-2]}' is a list; name one entry (e.g. {'.'.join(keys)}.KEY=VALUE)")
        node[keys[-1]] = value
    return raw


def load_recipe(name_or_path: str | Path, overrides: list[str] | None = None, *, components: bool = True) -> Recipe:
    """Find, merge (`extends`), override and validate a recipe.

    `components=False` skips the component tables' check against the constructors' signatures,
    which imports the whole model zoo (torch, timm): `recipes list/show` of a bundled recipe
    without overrides (the test suite validates every bundled recipe in full) start at once."""
    path = find_recipe(name_or_path)
    raw = load_raw(path)
    raw.setdefault("name", path.stem)
    raw = apply_overrides(raw, overrides or [])
    return validate_recipe(raw, components=components)


def recipe_from_json(text: str) -> Recipe:
    """A recipe stored in a run or checkpoint; one written before `[[model.plugins]]` is upgraded."""
    return validate_recipe(upgrade_legacy_plugins(json.loads(text)))


# --------------------------------------------------------------------------------------------
# plug-in sections of ctxseg 0.1 ([model.memory], [model.cac], [model.contrast])

# old section -> the type it held; the order is the fixed composition order of 0.1
LEGACY_PLUGIN_SECTIONS = {"memory": "mcibi", "cac": "cac", "contrast": "pixel_contrast"}


def check_legacy_plugins(raw: dict, where: str) -> None:
    """A hand-written recipe with 0.1's plug-in sections gets one clear error naming the new syntax."""
    model = raw.get("model")
    old = [k for k in LEGACY_PLUGIN_SECTIONS if isinstance(model, dict) and k in model]
    if not old:
        return
    k = old[0]
    raise UserError(
        f"{where}: [model.{k}] is the old plug-in syntax. Context plug-ins are now an ordered list, one table "
        f'per plug-in, composed in the order written:\n\n  [[model.plugins]]\n  type = "{LEGACY_PLUGIN_SECTIONS[k]}"\n'
        f"  # ...the keys of [model.{k}] (without ignore_index: it is data.ignore_index)\n\n"
        f"The old order was memory -> cac -> contrast (docs/architecture.md, 'Context plug-ins')."
    )


def upgrade_legacy_plugins(raw: dict) -> dict:
    """0.1 recipe dict (resolved, as stored in checkpoints) -> `model.plugins`, same model and state keys."""
    model = raw.get("model")
    if not isinstance(model, dict) or not any(model.get(k) is not None for k in LEGACY_PLUGIN_SECTIONS):
        if isinstance(model, dict):
            for k in LEGACY_PLUGIN_SECTIONS:
                model.pop(k, None)  # explicit nulls of 0.1's schema
        return raw
    raw = copy.deepcopy(raw)
    model = raw["model"]
    ignore = raw.get("data", {}).get("ignore_index", 255)
    plugins = list(model.get("plugins") or [])
    for section in LEGACY_PLUGIN_SECTIONS:
        cfg = model.pop(section, None)
        if cfg is None:
            continue
        cfg = dict(cfg)
        own = cfg.pop("ignore_index", ignore)
        if own != ignore:
            raise UserError(
                f"model.{section}.ignore_index = {own} differs from data.ignore_index = {ignore}; "
                "plug-ins now take data.ignore_index"
            )
        plugins.append(cfg)
    model["plugins"] = plugins
    return raw


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
            node = next(
                (a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type) and issubclass(a, BaseModel)), ann
            )
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


COMPONENT_KINDS = {"backbone": "backbone", "head": "head", "aux_head": "aux_head"}


def validate_components(recipe: Recipe) -> None:
    """Component tables are checked by the components' own module (signatures live with them)."""
    # imported here: the recipe layer sits above the models (which never import it), and loading
    # the model zoo is not needed to list or show recipes
    from ctxseg.models.builder import validate_component, validate_plugins

    for field, kind in COMPONENT_KINDS.items():
        cfg = getattr(recipe.model, field)
        if cfg is not None:
            validate_component(kind, cfg, f"model.{field}", _format_errors)
    validate_plugins(recipe.model.plugins, _format_errors)


def validate_recipe(raw: dict, *, components: bool = True) -> Recipe:
    from ctxseg.extensions import load_extensions

    check_legacy_plugins(raw, f"recipe '{raw.get('name', '?')}'")
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as e:
        raise UserError(f"Invalid recipe '{raw.get('name', '?')}':\n{_format_errors(e, Recipe)}") from None
    load_extensions(recipe.imports)
    if components:
        validate_components(recipe)
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
