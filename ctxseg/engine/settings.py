"""InferenceSettings: everything `ctxseg.engine.inference.infer` needs besides the model and images.

Built once per command from the recipe (`from_recipe`) and passed whole to `infer`, so eval,
predict, `viz overlay`, bench and the trainer's periodic eval cannot drop a setting (scales, flip,
LIP's flip pairs) by unpacking it by hand.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from ctxseg.config import Recipe


@dataclass(frozen=True)
class InferenceSettings:
    """How `infer` runs a model over images (see the module docstring); build with `from_recipe`.

    Args:
        num_classes: channels of the returned scores.
        mode: "whole" (one forward per image) or "slide" (mmseg's overlapping windows).
        crop: sliding-window size (h, w); slide mode only.
        stride: sliding-window stride (h, w); slide mode only.
        scales: image scales; probabilities are averaged over scales (and flips) unless the
            only scale is 1.0 without flip, which returns logits.
        flip: also run the horizontally flipped image.
        flip_pairs: left/right class pairs swapped when a flip is undone (LIP).
        window_batch: windows per forward pass in slide mode.
        align_corners: of every resize (the model's convention).
        resize: the official test-time Resize of the image before inference, (long, short) edges (None:
            native size); logits are resized back to the label's size before scoring.
        keep_ratio: the test-time Resize keeps the aspect ratio (mmseg's keep_ratio=True) or
            stretches to `resize` (LIP).
    """

    num_classes: int
    mode: Literal["whole", "slide"] = "whole"
    crop: tuple[int, int] = (512, 512)
    stride: tuple[int, int] = (341, 341)
    scales: tuple[float, ...] = (1.0,)
    flip: bool = False
    flip_pairs: tuple[tuple[int, int], ...] = ()
    window_batch: int = 4
    align_corners: bool = False
    resize: tuple[int, int] | None = None
    keep_ratio: bool = True

    @classmethod
    def from_recipe(
        cls,
        recipe: Recipe,
        ms_flip: bool = False,
        scales: list[float] | None = None,
        flip: bool | None = None,
        flip_pairs=None,
    ) -> InferenceSettings:
        """The recipe's eval settings; `ms_flip` switches to eval.ms_scales + flip; explicit `scales` /
        `flip` win. `flip_pairs`: the dataset's (meta.json), unless data.flip_pairs is set."""
        e = recipe.eval
        pairs = recipe.data.flip_pairs if recipe.data.flip_pairs is not None else (flip_pairs or ())
        return cls(
            num_classes=recipe.data.num_classes,
            mode=(e.ms_mode or e.mode) if ms_flip else e.mode,
            crop=tuple(e.crop_size),
            stride=tuple(e.stride),
            scales=tuple(float(s) for s in (scales or (e.ms_scales if ms_flip else e.scales))),
            flip=bool(flip if flip is not None else (ms_flip or e.flip)),
            flip_pairs=tuple((int(a), int(b)) for a, b in pairs),
            window_batch=e.window_batch,
            align_corners=recipe.model.align_corners,
            resize=tuple(e.resize) if e.resize is not None else None,
            keep_ratio=e.keep_ratio,
        )

    def with_(self, **changes: Any) -> InferenceSettings:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (metrics.json `inference`)."""
        d = asdict(self)
        for k in ("crop", "stride", "scales", "resize"):
            d[k] = list(d[k]) if d[k] is not None else None
        d["flip_pairs"] = [list(p) for p in d["flip_pairs"]]
        return d
