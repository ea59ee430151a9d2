"""Joint image + label transforms with OpenCV, following mmseg's training pipeline semantics.

Images are HxWx3 uint8 BGR until `normalize`; labels are HxW integer maps, always resized with
nearest neighbour and padded with the ignore index. Every random choice comes from the
`np.random.Generator` passed in, so a sample's augmentation is a function of (seed, epoch, index).
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

    keep_ratio=False is ssseg's Resize(keep_ratio=False) of the LIP pipeline: a square (520, 520)
    scaled by the ratio, the image stretched to it."""
    ratio = rng.uniform(*ratio_range)
    base = scale if scale is not None else (max(img.shape[:2]), min(img.shape[:2]))
    target = (base[0] * ratio, base[1] * ratio)
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


def random_crop(img, label, crop_size, cat_max_ratio: float, ignore_index: int, rng: np.random.Generator):
    """mmseg RandomCrop: up to 10 tries for a crop whose largest class covers < cat_max_ratio."""
    crop_h, crop_w = crop_size
    h, w = img.shape[:2]
    box = _crop_box(h, w, crop_h, crop_w, rng)
    if cat_max_ratio < 1.0 and label is not None:
        for _ in range(10):
            y1, y2, x1, x2 = box
            values, counts = np.unique(label[y1:y2, x1:x2], return_counts=True)
            counts = counts[values != ignore_index]
            if len(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio:
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


def photometric_distortion(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """mmseg PhotoMetricDistortion: brightness, contrast (before or after HSV), saturation, hue."""
    img = img.astype(np.float32)

    def maybe_contrast(x):
        if rng.integers(2):
            x = x * rng.uniform(0.5, 1.5)
        return np.clip(x, 0, 255)

    if rng.integers(2):
        img = np.clip(img + rng.uniform(-32, 32), 0, 255)
    contrast_first = rng.integers(2) == 1
    if contrast_first:
        img = maybe_contrast(img)
    sat, hue = rng.integers(2), rng.integers(2)
    if sat or hue:
        hsv = cv2.cvtColor(img.astype(np.uint8), cv2.COLOR_BGR2HSV).astype(np.int32)
        if sat:
            hsv[..., 1] = np.clip(hsv[..., 1] * rng.uniform(0.5, 1.5), 0, 255)
        if hue:
            hsv[..., 0] = (hsv[..., 0] + rng.integers(-18, 19)) % 180
        img = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2BGR).astype(np.float32)
    if not contrast_first:
        img = maybe_contrast(img)
    return img.astype(np.uint8)


def normalize(img: np.ndarray, mean, std) -> np.ndarray:
    """BGR uint8 HxWx3 -> RGB float32 CxHxW, (x - mean) / std (mean/std in RGB order)."""
    rgb = img[..., ::-1].astype(np.float32)
    rgb = (rgb - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
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
