"""The Python API: a model by recipe name or checkpoint, predictions with the recipe's test protocol.

    import ctxseg
    model = ctxseg.load("ocrnet-hr48-cityscapes-80k", weights="official")
    labels = model.predict("street.png")                     # H x W class indices (numpy int64)
    labels, probs = model.predict([a, b], ms_flip=True, return_probs=True)
    model.classes, model.palette, model.published

`predict` runs `ctxseg.engine.evaluate.predict_scores` with the recipe's `InferenceSettings`, the
same function and settings `ctxseg predict` uses, so both give the same labels for the same
checkpoint and image. Nothing here touches the network unless `weights="official"` must fetch the
released model (`ctxseg.weights.get`: downloaded, verified and converted once, then cached).

Importing this module imports neither torch nor the models: they load on the first `load`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ctxseg.errors import UserError

if TYPE_CHECKING:
    import torch

    from ctxseg.config import Published, Recipe
    from ctxseg.data.meta import DatasetMeta

__all__ = ["SegModel", "load", "list_recipes", "list_weights"]

CHECKPOINT_SUFFIXES = (".safetensors",)


class SegModel:
    """A segmentation model with its recipe, ready to predict (build one with `ctxseg.load`).

    Args:
        model: the ctxseg Segmentor (a torch.nn.Module), already on `device` and in eval mode.
        recipe: the recipe that describes it (a checkpoint's embedded recipe, or the named one).
        device: the torch.device it runs on.
        checkpoint: the .safetensors file its weights came from; None for a randomly initialised model.
        meta: class names, palette and flip pairs (default: `ctxseg.data.meta.dataset_meta(recipe)`).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        recipe: Recipe,
        device: torch.device,
        *,
        checkpoint: Path | None = None,
        meta: DatasetMeta | None = None,
    ):
        from ctxseg.data.meta import dataset_meta

        self._model = model
        self._recipe = recipe
        self._device = device
        self._checkpoint = Path(checkpoint) if checkpoint is not None else None
        self._meta = meta or dataset_meta(recipe)

    # ---------------------------------------------------------------------------------------
    # what the model is

    @property
    def recipe(self) -> Recipe:
        """The resolved recipe (a checkpoint's embedded one)."""
        return self._recipe

    @property
    def name(self) -> str:
        """The recipe's name."""
        return self._recipe.name

    @property
    def classes(self) -> list[str]:
        """Class names in class-index order (the prepared index's, else the dataset's, else numbers)."""
        return list(self._meta.classes)

    @property
    def palette(self) -> list[list[int]]:
        """One RGB colour per class, in class-index order."""
        return [list(c) for c in self._meta.palette]

    @property
    def num_classes(self) -> int:
        """Number of classes the model predicts."""
        return self._recipe.data.num_classes

    @property
    def published(self) -> Published:
        """The paper's numbers from the recipe: `.miou` (single scale), `.miou_flip`, `.miou_ms`
        (multi-scale + flip), in percent (None where not published), and `.paper`, `.table`."""
        return self._recipe.published

    @property
    def device(self) -> torch.device:
        """The device the model runs on."""
        return self._device

    @property
    def checkpoint(self) -> Path | None:
        """The checkpoint file the weights came from (None: random initialisation)."""
        return self._checkpoint

    @property
    def torch_model(self) -> torch.nn.Module:
        """The underlying torch.nn.Module (ctxseg Segmentor; `model(x)["logits"]` for normalised RGB NCHW)."""
        return self._model

    def to(self, device: str | torch.device) -> SegModel:
        """Move the model to `device` (e.g. "cuda", "cpu"); returns self.

        Args:
            device: a torch device or its name.
        """
        self._device = _device(device)
        self._model.to(self._device)
        return self

    def __repr__(self) -> str:
        src = str(self._checkpoint) if self._checkpoint else "random init"
        return f"SegModel({self.name!r}, {self.num_classes} classes, {src}, device={self._device})"

    # ---------------------------------------------------------------------------------------
    # predicting

    def settings(
        self, *, ms_flip: bool = False, scales: Sequence[float] | None = None, flip: bool | None = None
    ) -> Any:
        """The InferenceSettings `predict` uses: the recipe's test protocol, as `ctxseg predict` builds it.

        Args:
            ms_flip: the recipe's multi-scale + flip protocol (eval.ms_scales, eval.ms_mode).
            scales: explicit image scales (e.g. [0.75, 1.0, 1.25]); win over the recipe's.
            flip: horizontal-flip test-time augmentation on/off; None: the protocol's.
        """
        from ctxseg.engine.settings import InferenceSettings

        if scales is not None:
            scales = [float(s) for s in scales]
            if not scales or not all(0 < s <= 16 for s in scales):
                raise UserError(f"scales must be numbers in (0, 16], got {scales}")
        return InferenceSettings.from_recipe(self._recipe, ms_flip, scales, flip, flip_pairs=self._meta.flip_pairs)

    def predict(
        self,
        images: Any,
        *,
        ms_flip: bool = False,
        scales: Sequence[float] | None = None,
        flip: bool | None = None,
        return_probs: bool = False,
        batch_size: int | None = None,
    ) -> Any:
        """Class indices per pixel, with the recipe's official test protocol (that of `ctxseg predict`).

        Inputs are RGB with values 0..255: an image file path (str or Path; read as `ctxseg predict`
        reads it), an HxWx3 uint8 numpy array (HxW grayscale and HxWx4 RGBA are accepted too), a
        torch tensor CxHxW or NxCxHxW (float or uint8, values 0..255, RGB channel order), or a list
        / tuple of any of these. A float array or tensor is used as it is (no rounding to uint8).

        Args:
            images: one image, or a list of images (see above); an NxCxHxW tensor counts as a list.
            ms_flip: the recipe's multi-scale + flip protocol instead of its default one.
            scales: explicit image scales, e.g. [0.75, 1.0, 1.25] (win over the protocol's).
            flip: horizontal-flip augmentation on/off (None: the protocol's).
            return_probs: also return class probabilities, float32 CxHxW per image (softmax of the
                logits for a single scale without flip; else the average over scales and flips).
            batch_size: images per forward pass (default: the recipe's eval.batch_size); only
                consecutive images of the same size are batched. Results equal those of one image at
                a time up to float rounding.

        Returns:
            For one image, its HxW int64 numpy array of class indices at the image's own size (and
            with return_probs a tuple (labels, probs)); for a list, a list of those (with
            return_probs a tuple (list of labels, list of probs)).
        """
        import torch

        from ctxseg.engine.evaluate import predict_scores
        from ctxseg.engine.inference import returns_logits

        single, arrays = _as_images(images)
        settings = self.settings(ms_flip=ms_flip, scales=scales, flip=flip)
        batch = int(batch_size or self._recipe.eval.batch_size or 1)
        if batch < 1:
            raise UserError(f"batch_size must be at least 1, got {batch_size}")
        logits = returns_logits(settings)
        labels: list[np.ndarray] = []
        probs: list[np.ndarray] = []
        self._model.eval()
        with torch.no_grad():
            for group in _same_size_groups(arrays, batch):
                one = group if len(group) > 1 else group[0]
                scores = predict_scores(self._model, self._recipe, one, settings, self._device)
                labels += list(scores.argmax(1).cpu().numpy())
                if return_probs:
                    p = scores.softmax(1) if logits else scores
                    probs += list(p.float().cpu().numpy())
                del scores
        if single:
            return (labels[0], probs[0]) if return_probs else labels[0]
        return (labels, probs) if return_probs else labels

    __call__ = predict

    def colorize(self, labels: np.ndarray) -> np.ndarray:
        """HxW class indices -> HxWx3 RGB uint8 in the model's palette (ignore / unknown ids white).

        Args:
            labels: an HxW array of class indices (e.g. from `predict`).
        """
        from ctxseg.viz.palette import colorize

        return colorize(np.asarray(labels), self._meta.palette, self.num_classes, self._recipe.data.ignore_index)


# -------------------------------------------------------------------------------------------
# inputs


def _as_images(images: Any) -> tuple[bool, list[np.ndarray]]:
    """(single input?, HxWx3 BGR arrays as `predict_scores` takes them: uint8 as read from a file, or
    float32 0..255)."""
    if isinstance(images, (str, Path, np.ndarray)):
        return True, [_one(images, "image")]
    if _is_tensor(images):
        if images.dim() == 3:
            return True, [_one(images, "image")]
        if images.dim() == 4:
            return False, [_one(t, f"images[{i}]") for i, t in enumerate(images)]
        raise UserError(f"A tensor image must be CxHxW or NxCxHxW, got shape {tuple(images.shape)}")
    if isinstance(images, (list, tuple)):
        if not images:
            raise UserError("predict() got an empty list of images")
        return False, [_one(im, f"images[{i}]") for i, im in enumerate(images)]
    raise UserError(
        f"predict() takes a path, an HxWx3 uint8 RGB numpy array, a CxHxW / NxCxHxW tensor, or a list of them; "
        f"got {type(images).__name__}"
    )


def _is_tensor(x: Any) -> bool:
    import sys

    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def _one(im: Any, what: str) -> np.ndarray:
    if isinstance(im, (str, Path)):
        from ctxseg.io import read_image

        return read_image(im)  # BGR uint8, exactly as `ctxseg predict` reads it
    if _is_tensor(im):
        if im.dim() != 3 or im.shape[0] not in (1, 3):
            raise UserError(f"{what}: a tensor image must be CxHxW with 1 or 3 (RGB) channels, got {tuple(im.shape)}")
        im = im.detach().cpu()
        if im.is_floating_point():
            im = im.float()
        arr = im.permute(1, 2, 0).numpy()
        if arr.shape[2] == 1:
            arr = np.repeat(arr, 3, axis=2)
    elif isinstance(im, np.ndarray):
        arr = im
        if arr.ndim == 2:
            arr = np.repeat(arr[..., None], 3, axis=2)
        elif arr.ndim == 3 and arr.shape[2] == 4:
            arr = arr[..., :3]
        if arr.ndim != 3 or arr.shape[2] != 3:
            raise UserError(f"{what}: a numpy image must be HxWx3 RGB (or HxW / HxWx4), got shape {arr.shape}")
    else:
        raise UserError(f"{what}: expected a path, a numpy array or a tensor, got {type(im).__name__}")
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise UserError(f"{what}: empty image of shape {arr.shape}")
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr[..., ::-1])  # RGB -> BGR, the order predict_scores takes
    if np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer):
        return np.ascontiguousarray(arr[..., ::-1], dtype=np.float32)
    raise UserError(f"{what}: unsupported dtype {arr.dtype} (uint8 or float, values 0..255)")


def _same_size_groups(arrays: list[np.ndarray], batch: int) -> list[list[np.ndarray]]:
    groups: list[list[np.ndarray]] = []
    for a in arrays:
        last = groups[-1] if groups else None
        if last is not None and len(last) < batch and last[0].shape == a.shape and last[0].dtype == a.dtype:
            last.append(a)
        else:
            groups.append([a])
    return groups


# -------------------------------------------------------------------------------------------
# loading


def _device(device: Any) -> torch.device:
    import torch

    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise UserError(f"Unknown device {device!r}: {e}") from None


def _is_checkpoint_path(x: str | Path) -> bool:
    """A .safetensors file or a run folder, rather than a recipe name or .toml file."""
    p = Path(x)
    if p.suffix in CHECKPOINT_SUFFIXES:
        return True
    if p.suffix == ".toml":
        return False
    from ctxseg.config import list_recipes as _list

    return str(x) not in _list() and p.exists()


def _official_checkpoint(recipe_name: str) -> Path:
    """The released model of a recipe through the weights registry (fetched, verified, converted once)."""
    import importlib

    return Path(importlib.import_module("ctxseg.weights").get(recipe_name))


def load(
    recipe_or_checkpoint: str | Path | None,
    *,
    weights: str | Path | None = None,
    device: str | torch.device | None = None,
    overrides: list[str] | None = None,
) -> SegModel:
    """A model ready to predict: by recipe name, recipe file or ctxseg checkpoint.

    - `load("ocrnet-hr48-cityscapes-80k")`: the recipe's model with random weights (nothing is
      downloaded, not even the backbone's ImageNet initialisation).
    - `load("ocrnet-hr48-cityscapes-80k", weights="official")`: the recipe's released model from the
      weights registry (`ctxseg.weights.get`: downloaded once, verified, converted, cached; later
      calls need no network).
    - `load("runs/latest/best.safetensors")` or `load(R, weights="model.safetensors")`: a ctxseg
      checkpoint, built from the recipe embedded in it (a run folder means its best checkpoint).

    Args:
        recipe_or_checkpoint: a bundled recipe name, a recipe .toml file, or a ctxseg .safetensors
            checkpoint (or run folder); None with `weights=PATH`.
        weights: None (random initialisation, or the checkpoint given first), "official" (the recipe's
            released model), or a path to a ctxseg .safetensors checkpoint; with a path, a recipe given
            first must be the checkpoint's (same name), since the checkpoint's own recipe builds the model.
        device: where to run ("cuda", "cpu", a torch.device); None: CUDA when available, else the CPU.
        overrides: recipe keys to override, as `--set` takes them, e.g. ["eval.mode='slide'"].

    Returns:
        A SegModel in eval mode on `device`.
    """
    from ctxseg.engine.checkpoint import load_model

    if recipe_or_checkpoint is None and (weights is None or weights == "official"):
        raise UserError("ctxseg.load() needs a recipe name, a recipe file or a checkpoint")
    dev = _device(device)
    ckpt: Path | None = None
    if weights is None:
        if _is_checkpoint_path(recipe_or_checkpoint):
            ckpt = _resolve_checkpoint(recipe_or_checkpoint)
        else:
            from ctxseg.config import load_recipe
            from ctxseg.engine.offline import build_for_loading

            recipe = load_recipe(recipe_or_checkpoint, overrides)
            model = build_for_loading(recipe).eval().to(dev)
            return SegModel(model, recipe, dev)
    elif isinstance(weights, str) and weights == "official":
        if _is_checkpoint_path(recipe_or_checkpoint):
            raise UserError(
                f"weights='official' needs a recipe name (whose released model to load), got the checkpoint "
                f"{recipe_or_checkpoint}; load a checkpoint with ctxseg.load(PATH)"
            )
        name = _recipe_name(recipe_or_checkpoint)
        ckpt = _official_checkpoint(name)
        # the registry row's published numbers (SegModel.published), the caller's overrides after them
        from ctxseg.weights import published_overrides

        overrides = [*published_overrides(name), *(overrides or [])]
    else:
        ckpt = _resolve_checkpoint(weights)
    model, recipe, _ = load_model(ckpt, list(overrides or []))
    if weights is not None and weights != "official":
        _check_same_recipe(recipe_or_checkpoint, ckpt, recipe.name)
    return SegModel(model.to(dev), recipe, dev, checkpoint=ckpt)


def _resolve_checkpoint(path: str | Path) -> Path:
    from ctxseg.engine.runs import resolve_checkpoint

    return resolve_checkpoint(str(path))


def _recipe_name(recipe: str | Path) -> str:
    """A recipe file's `name` (its stem unless it sets one); a recipe or registry entry name as given."""
    if Path(recipe).suffix == ".toml":
        from ctxseg.config import load_recipe

        return load_recipe(recipe).name
    return str(recipe)


def _check_same_recipe(recipe: str | Path | None, ckpt: Path, have: str) -> None:
    if recipe is None or _is_checkpoint_path(recipe):
        return
    name = _recipe_name(recipe)
    if have != name:
        raise UserError(
            f"{ckpt} holds a model of recipe '{have}', not '{name}'; load it with ctxseg.load('{ckpt}') "
            "(its embedded recipe builds the model)"
        )


# -------------------------------------------------------------------------------------------
# listings


def list_recipes() -> list[str]:
    """Names of the bundled recipes (for `load`), sorted."""
    from ctxseg.config import list_recipes as _list

    return sorted(_list())


def list_weights() -> list[Any]:
    """The weights registry's entries (built-in and `CTXSEG_WEIGHTS_REGISTRY` ones): `ctxseg.weights.Entry`
    objects with name, kind ("released" / "init"), recipe, url, sha256, layout, published, cached, ..."""
    import importlib

    return list(importlib.import_module("ctxseg.weights").list_entries())
