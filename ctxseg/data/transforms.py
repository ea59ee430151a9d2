"""Joint image + label transforms with OpenCV, following mmseg's training pipeline semantics.

Images are HxWx3 uint8 BGR until `normalize`; labels are HxW integer maps, always resized with
nearest neighbour and padded with the ignore index. Every random choice comes from the `rng`
passed in, so a sample's augmentation is a function of (seed, epoch, index). `rng` is a
`np.random.Generator` or any object with its `random()`, `uniform(low, high)` and
`integers(low, high)` methods: `RecordedDraws` replays the draws an official pipeline made, which
is how tests/test_pipeline_golden.py checks every transform against mmseg's and ssseg's.

Three flavours (`DataConfig.pipeline`, see `train_steps`): "mmseg" (mmsegmentation 1.2.2, the
default), "mmseg0" (mmseg 0.x on mmcv 1.x, the CAC fork: mmseg's transforms, mmcv's normalisation)
and "ssseg" (sssegmentation 1.7.0, the MCIBI recipes), which differ in the crop retries, the colour
space of the photometric distortion, the normalisation arithmetic and the padding.
"""

from __future__ import annotations

import cv2
import numpy as np


def rescale_size(h: int, w: int, scale: tuple[float, float]) -> tuple[int, int]:
    """mmseg keep-ratio rescale: fit the long edge to max(scale) and the short edge to min(scale)."""
    long_edge, short_edge = max(scale), min(scale)
    factor = min(long_edge / max(h, w), short_edge / min(h, w))
    return int(h * factor + 0.5), int(w * factor + 0.5)


def resize_pair(img: np.ndarray, label: np.ndarray | None, size_hw: tuple[int, int]):
    h, w = size_hw
    img = cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)
    if label is not None:
        label = cv2.resize(label, (w, h), interpolation=cv2.INTER_NEAREST)
    return img, label


def stretch_size(h: int, w: int, scale: tuple[float, float]) -> tuple[int, int]:
    """ssseg Resize(keep_ratio=False): the image's longer side becomes max(scale), the other min(scale)
    (truncated to integers, as ssseg does); for a square scale this is a plain resize to it."""
    long_edge, short_edge = int(max(scale)), int(min(scale))
    return (long_edge, short_edge) if h > w else (short_edge, long_edge)


def test_size(h: int, w: int, scale: tuple[int, int], keep_ratio: bool = True) -> tuple[int, int]:
    """(h, w) the test pipeline resizes an image to: mmseg/ssseg Resize(scale, keep_ratio)."""
    return rescale_size(h, w, scale) if keep_ratio else stretch_size(h, w, scale)


def random_resize(img, label, scale, ratio_range, rng: np.random.Generator, keep_ratio: bool = True):
    """RandomResize(scale, ratio_range, keep_ratio); scale None means the image's own size.

    As mmcv's RandomResize and ssseg's Resize(scale_range) do, the scaled target is truncated to
    integers (int(scale * ratio)) before the keep-ratio rescale; the image is resized bilinearly,
    the label with nearest neighbour (cv2, as both). keep_ratio=False is ssseg's
    Resize(keep_ratio=False) of the LIP pipeline: a square (520, 520) scaled by the ratio, the image
    stretched to it."""
    ratio = rng.uniform(*ratio_range)
    base = scale if scale is not None else (max(img.shape[:2]), min(img.shape[:2]))
    target = (int(base[0] * ratio), int(base[1] * ratio))
    h, w = img.shape[:2]
    size = rescale_size(h, w, target) if keep_ratio else stretch_size(h, w, target)
    return resize_pair(img, label, size)


def random_rotate(
    img, label, prob: float, max_degree: int, ignore_index: int, rng: np.random.Generator, image_fill: float = 0.0
):
    """ssseg RandomRotation: with probability `prob`, rotate about the centre by an integer angle
    drawn from [-max_degree, max_degree) (numpy randint), keeping the size. The image is resampled
    bicubically (ssseg's default) and filled with `image_fill` (0, black); the label with nearest
    neighbour, the uncovered corners filled with the ignore index (ssseg fills its ignore id -100)."""
    if prob <= 0 or rng.random() >= prob:
        return img, label
    angle = int(rng.integers(-max_degree, max_degree))
    h, w = img.shape[:2]
    matrix = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1)
    img = cv2.warpAffine(
        np.ascontiguousarray(img),
        matrix,
        (w, h),
        flags=cv2.INTER_CUBIC,
        borderValue=(image_fill, image_fill, image_fill),
    )
    if label is not None:
        dtype = label.dtype  # OpenCV warps uint8/uint16 labels directly; wider ids go through float32 (exact)
        src = label if dtype in (np.uint8, np.uint16) else label.astype(np.float32)
        label = cv2.warpAffine(
            np.ascontiguousarray(src), matrix, (w, h), flags=cv2.INTER_NEAREST, borderValue=float(ignore_index)
        ).astype(dtype)
    return img, label


def _crop_box(h, w, crop_h, crop_w, rng):
    margin_h, margin_w = max(h - crop_h, 0), max(w - crop_w, 0)
    y = int(rng.integers(0, margin_h + 1))
    x = int(rng.integers(0, margin_w + 1))
    return y, min(y + crop_h, h), x, min(x + crop_w, w)


def _balanced(label, box, cat_max_ratio, ignore_index):
    """(crop accepted, number of labelled classes in it): more than one class, the largest < cat_max_ratio."""
    y1, y2, x1, x2 = box
    values, counts = np.unique(label[y1:y2, x1:x2], return_counts=True)
    counts = counts[values != ignore_index]
    return len(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio, len(counts)


def random_crop(
    img,
    label,
    crop_size,
    cat_max_ratio: float,
    ignore_index: int,
    rng: np.random.Generator,
    retries: str = "mmseg",
):
    """RandomCrop(crop_size, cat_max_ratio): retry the offset until the crop's largest labelled class
    covers less than cat_max_ratio of its labelled pixels (and it holds two classes at least).

    retries="mmseg" (RandomCrop of mmseg 1.2.2): a first offset, then up to 10 checked re-draws; the
    last draw (the 11th) is kept unchecked; cat_max_ratio >= 1 draws once. retries="ssseg"
    (RandomCrop(one_category_max_ratio) of sssegmentation 1.7.0): up to 10 draws, the 10th kept, the
    check made whatever the ratio; and when the kept crop holds no labelled pixel at all the sample
    is left uncropped (ssseg returns it unchanged; its centred Padding then cuts it to the crop size,
    see `pad_center`)."""
    crop_h, crop_w = crop_size
    h, w = img.shape[:2]
    if retries == "ssseg" and label is not None:
        for _ in range(10):
            box = _crop_box(h, w, crop_h, crop_w, rng)
            ok, labelled = _balanced(label, box, cat_max_ratio, ignore_index)
            if ok:
                break
        if labelled == 0:
            return img, label
        y1, y2, x1, x2 = box
        return img[y1:y2, x1:x2], label[y1:y2, x1:x2]
    if retries not in ("mmseg", "ssseg"):
        raise ValueError(f"retries must be 'mmseg' or 'ssseg', not {retries!r}")
    box = _crop_box(h, w, crop_h, crop_w, rng)
    if cat_max_ratio < 1.0 and label is not None:
        for _ in range(10):
            if _balanced(label, box, cat_max_ratio, ignore_index)[0]:
                break
            box = _crop_box(h, w, crop_h, crop_w, rng)
    y1, y2, x1, x2 = box
    return img[y1:y2, x1:x2], (label[y1:y2, x1:x2] if label is not None else None)


def swap_flip_pairs(label: np.ndarray, flip_pairs, ignore_index: int | None = None) -> np.ndarray:
    """After a horizontal flip, left/right classes (LIP arms, legs, shoes) must trade ids."""
    if not flip_pairs:
        return label
    lut = np.arange(max(int(label.max()) + 1, 256 if label.dtype == np.uint8 else 65536), dtype=label.dtype)
    for a, b in flip_pairs:
        lut[a], lut[b] = b, a
    return lut[label]


def random_flip(img, label, prob: float, flip_pairs, rng: np.random.Generator):
    if rng.random() < prob:
        img = img[:, ::-1]
        if label is not None:
            label = swap_flip_pairs(label[:, ::-1], flip_pairs)
    return img, label


def _convert(x: np.ndarray, alpha: float = 1, beta: float = 0) -> np.ndarray:
    """x * alpha + beta in float32, clipped to [0, 255] and truncated to uint8 (mmseg/ssseg `convert`)."""
    return np.clip(x.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)


def photometric_distortion(img: np.ndarray, rng: np.random.Generator, hsv_order: str = "bgr") -> np.ndarray:
    """PhotoMetricDistortion of mmseg 1.2.2 (and, identically, of ssseg 1.7.0), draw for draw:

    1. brightness: coin, then delta ~ U(-32, 32) added;  2. mode coin: 1 = contrast now, 0 = at the end;
    3. contrast (if mode 1): coin, then alpha ~ U(0.5, 1.5) multiplied;  4. saturation: coin, then
    to HSV, S x U(0.5, 1.5), back;  5. hue: coin, then to HSV, H + randint(-18, 18) mod 180, back;
    6. contrast (if mode 0). Each step rounds to uint8 (clip, truncate), as the official `convert`
    does, and saturation and hue each make their own HSV round trip. The hue delta is in [-18, 17]
    (numpy's randint excludes its upper end; the official range, kept).

    hsv_order="bgr" converts with OpenCV's BGR<->HSV (mmseg's bgr2hsv); "rgb" is ssseg's quirk: it
    converts the BGR image with COLOR_RGB2HSV / COLOR_HSV2RGB, i.e. reads blue as red."""
    to_hsv, from_hsv = {
        "bgr": (cv2.COLOR_BGR2HSV, cv2.COLOR_HSV2BGR),
        "rgb": (cv2.COLOR_RGB2HSV, cv2.COLOR_HSV2RGB),
    }[hsv_order]
    img = np.ascontiguousarray(img, dtype=np.uint8)

    def contrast(x):
        return _convert(x, alpha=rng.uniform(0.5, 1.5)) if rng.integers(2) else x

    if rng.integers(2):
        img = _convert(img, beta=rng.uniform(-32, 32))
    mode = rng.integers(2)
    if mode == 1:
        img = contrast(img)
    if rng.integers(2):
        hsv = cv2.cvtColor(img, to_hsv)
        hsv[..., 1] = _convert(hsv[..., 1], alpha=rng.uniform(0.5, 1.5))
        img = cv2.cvtColor(hsv, from_hsv)
    if rng.integers(2):
        hsv = cv2.cvtColor(img, to_hsv)
        hsv[..., 0] = (hsv[..., 0].astype(int) + rng.integers(-18, 18)) % 180
        img = cv2.cvtColor(hsv, from_hsv)
    if mode == 0:
        img = contrast(img)
    return img


def normalize(img: np.ndarray, mean, std, reciprocal: bool = False) -> np.ndarray:
    """BGR uint8 HxWx3 -> RGB float32 CxHxW, (x - mean) / std (mean/std in RGB order), in float32.

    reciprocal=True multiplies by float32(1 / std) instead of dividing (mmcv 1.x's imnormalize and
    ssseg's Normalize, with cv2.multiply; up to one float32 ulp, 2.4e-7, away from the division mmseg
    1.x's SegDataPreProcessor makes)."""
    rgb = img[..., ::-1].astype(np.float32)
    rgb = rgb - np.asarray(mean, np.float32)
    if reciprocal:
        rgb = rgb * (1 / np.asarray(std, np.float64)).astype(np.float32)
    else:
        rgb = rgb / np.asarray(std, np.float32)
    return np.ascontiguousarray(rgb.transpose(2, 0, 1))


def pad_to(img: np.ndarray, label: np.ndarray | None, size_hw, ignore_index: int):
    """Pad bottom/right to at least size_hw: image with 0 (after normalisation), label with ignore."""
    c, h, w = img.shape
    ph, pw = max(size_hw[0] - h, 0), max(size_hw[1] - w, 0)
    if ph or pw:
        img = np.pad(img, ((0, 0), (0, ph), (0, pw)))
        if label is not None:
            label = np.pad(label, ((0, ph), (0, pw)), constant_values=ignore_index)
    return img, label


def _pad_axis(x: np.ndarray, axis: int, before: int, after: int, value) -> np.ndarray:
    """Pad `before`/`after` elements along `axis` with `value`; negative amounts cut (torch F.pad's rule)."""
    n = x.shape[axis]
    index = [slice(None)] * x.ndim
    index[axis] = slice(max(-before, 0), n - max(-after, 0))
    x = x[tuple(index)]
    width = [(0, 0)] * x.ndim
    width[axis] = (max(before, 0), max(after, 0))
    return np.pad(x, width, constant_values=value) if any(width[axis]) else x


def pad_center(img: np.ndarray, label: np.ndarray | None, size_hw, ignore_index: int):
    """ssseg 1.7.0 Padding(output_size, data_type="tensor") on the CxHxW image: the target size is
    swapped to the image's orientation (output_size_auto_adaptive: a portrait image gets a portrait
    size), the padding is split evenly between top/bottom and left/right (the extra pixel at the
    bottom/right), image filled with 0, label with the ignore index; a side longer than the target
    is cut the same way (negative padding), which is what happens to a sample RandomCrop left whole."""
    c, h, w = img.shape
    out_h, out_w = size_hw
    if (h > w and out_h < out_w) or (h < w and out_h > out_w):
        out_h, out_w = out_w, out_h
    top, left = (out_h - h) // 2, (out_w - w) // 2
    bottom, right = out_h - h - top, out_w - w - left
    img = _pad_axis(_pad_axis(img, 1, top, bottom, 0), 2, left, right, 0)
    if label is not None:
        label = _pad_axis(_pad_axis(label, 0, top, bottom, ignore_index), 1, left, right, ignore_index)
    return np.ascontiguousarray(img), label


class RecordedDraws:
    """Replays recorded random draws in place of a `np.random.Generator` (the `rng` of the transforms).

    `draws` is a sequence of (kind, low, high, value): "integers" (an integer in [low, high)),
    "uniform" (a float drawn uniformly in [low, high)) or "random" (a unit draw in [0, 1)). Each call
    consumes the next draw and must match it: `integers(low, high)` an "integers" draw with the same
    bounds, `uniform(low, high)` a "uniform" draw with the same bounds or a unit draw u, which gives
    u * (high - low) + low (what mmcv's RandomResize and ssseg's Resize compute from
    random_sample(), and numpy's own uniform from its unit draw), `random()` a unit draw. A mismatch
    (another kind, other bounds, no draw left) raises AssertionError: the draws' order and count are
    checked as well as their values. `done()` asserts that all draws were consumed.

    Args:
        draws: the recorded draws, in the order made: (kind, low, high, value) tuples.
    """

    def __init__(self, draws):
        self.draws = [(str(k), float(lo), float(hi), float(v)) for k, lo, hi, v in draws]
        self.pos = 0

    def _next(self, want: str, low, high):
        assert self.pos < len(self.draws), f"no recorded draw left for {want}({low}, {high})"
        kind, lo, hi, v = self.draws[self.pos]
        self.pos += 1
        if want == "uniform" and kind == "random":
            return v * (high - low) + low
        assert kind == want and (lo, hi) == (float(low), float(high)), (
            f"draw {self.pos - 1}: called {want}({low}, {high}), recorded {kind}({lo}, {hi})"
        )
        return v

    def integers(self, low, high=None):
        low, high = (0, low) if high is None else (low, high)
        return int(self._next("integers", low, high))

    def uniform(self, low=0.0, high=1.0):
        return self._next("uniform", low, high)

    def random(self):
        return self._next("random", 0.0, 1.0)

    def done(self):
        assert self.pos == len(self.draws), f"{len(self.draws) - self.pos} recorded draws not consumed"


def train_steps(cfg, flip_pairs=None):
    """The training pipeline of a DataConfig as named steps [(name, fn(img, label, rng) -> (img, label))]:
    resize, crop, flip, rotate (only with rotate_prob > 0), photometric (only if enabled),
    normalize_pad (uint8 HxWx3 BGR -> float32 CxHxW RGB, padded to crop_size). cfg.pipeline picks the
    official flavour: "mmseg" (mmseg 1.2.2: RandomCrop's 1 + 10 draws; BGR HSV; division by std;
    bottom/right padding, as SegDataPreProcessor), "mmseg0" (mmseg 0.x on mmcv 1.x, the CAC fork: the
    same, but mmcv's imnormalize multiplies by 1/std) or "ssseg" (sssegmentation 1.7.0: 10 draws,
    uncropped when the crop holds no label; ssseg's RGB2HSV on BGR; multiplication by 1/std; centred,
    orientation-adaptive Padding)."""
    c = cfg
    ssseg = c.pipeline == "ssseg"
    reciprocal = c.pipeline in ("ssseg", "mmseg0")
    retries = "ssseg" if ssseg else "mmseg"

    def normalize_pad(img, lab, rng):
        image = normalize(np.ascontiguousarray(img), c.mean, c.std, reciprocal=reciprocal)
        pad = pad_center if ssseg else pad_to
        return pad(image, np.ascontiguousarray(lab), c.crop_size, c.ignore_index)

    steps = [
        ("resize", lambda img, lab, rng: random_resize(img, lab, c.scale, c.ratio_range, rng, c.keep_ratio)),
        (
            "crop",
            lambda img, lab, rng: random_crop(
                img, lab, c.crop_size, c.cat_max_ratio, c.ignore_index, rng, retries=retries
            ),
        ),
        ("flip", lambda img, lab, rng: random_flip(img, lab, c.flip_prob, flip_pairs, rng)),
    ]
    if c.rotate_prob > 0:
        steps.append(
            (
                "rotate",
                lambda img, lab, rng: random_rotate(img, lab, c.rotate_prob, c.rotate_degree, c.ignore_index, rng),
            )
        )
    if c.photometric:
        hsv = "rgb" if ssseg else "bgr"
        steps.append(("photometric", lambda img, lab, rng: (photometric_distortion(img, rng, hsv), lab)))
    steps.append(("normalize_pad", normalize_pad))
    return steps
