"""openseg's (ContrastiveSeg's) training pipeline, reproduced transform by transform.

The official code (tfzhou/ContrastiveSeg, lib/datasets/tools/cv2_aug_transforms.py, transforms.py,
collate.py, loader/default_loader.py) trains on images read by OpenCV (BGR, `data.input_mode`) and
runs, per image, the json's `train_trans.shuffle_trans_seq` (shuffled) then `trans_seq`; then
ToTensor + Normalize (x / div_value - mean) / std in the image's channel order, labels 255 -> -1,
and the collate pads every item to `train.data_transformer.input_size` (image 0, label -1) at
offsets drawn per item. Facts carried over (per transform, the draws in the order they are made):

* random_resize: scale = uniform(scale_range) (method "random"; "bound" draws none), aspect a =
  uniform(aspect_range), then the skip bit random() > ratio. Size (int(w * sqrt(a) * s),
  int(h / sqrt(a) * s)) (truncated), optional max_side_bound cap; image bicubic, label nearest.
* resize: no draw; min_side_length: factor = L / min(w, h), sizes int(round(.)) (Python's round,
  half to even); image bicubic, label nearest.
* random_crop: target min(crop, image); x = randint(0, w - tw) then y = randint(0, h - th) (both
  inclusive; randint(0, 0) still consumes random bits), then the skip bit. No category-ratio
  retries, no padding here.
* random_hflip: the skip bit random() > ratio; cv2.flip; swap_pair ids exchanged in the label.
* random_brightness: the skip bit, then shift = randint(-v, v); float32 + shift, around, clip 0..255.
* collate (size_mode fix_size, align_method only_pad, pad_mode random): pad_w, pad_h = input -
  item; if either is positive, left = randint(0, pad_w) then up = randint(0, pad_h).

Every random choice goes through a `Draws` source (`random.Random` has exactly the methods used):
training uses `random.Random(seed)` per image, the golden test replays the official draws.
"""

from __future__ import annotations

import math
import random as _random
from typing import Protocol

import cv2
import numpy as np

from ctxseg.config import DataConfig, OpensegConfig
from ctxseg.errors import UserError


class Draws(Protocol):
    """The random source of the pipeline: the four methods of Python's `random` openseg calls.

    Args:
        (protocol) random: float in [0, 1); uniform(a, b): float; randint(a, b): int in [a, b];
            shuffle(x): permute the list in place.
    """

    def random(self) -> float: ...

    def uniform(self, a: float, b: float) -> float: ...

    def randint(self, a: int, b: int) -> int: ...

    def shuffle(self, x: list) -> None: ...


class ReplayDraws:
    """Replays recorded draws: a list of (method, args, value); each call must match the next record's
    method and arguments (a mismatch means the call sequence differs from the official one).

    Args:
        records: [(method name, [args...], value), ...] as recorded from the official run; for
            `shuffle` the value is the list after shuffling.
    """

    def __init__(self, records):
        self.records = list(records)
        self.pos = 0

    def _next(self, name, args):
        if self.pos >= len(self.records):
            raise AssertionError(f"draw {self.pos}: {name}{tuple(args)} requested, but the record has ended")
        rname, rargs, value = self.records[self.pos]
        if rname != name or not np.allclose(np.asarray(rargs, float), np.asarray(args, float), rtol=0, atol=1e-12):
            raise AssertionError(
                f"draw {self.pos}: {name}{tuple(args)} requested, the record has {rname}{tuple(rargs)}"
            )
        self.pos += 1
        return value

    def random(self) -> float:
        return self._next("random", [])

    def uniform(self, a, b) -> float:
        return self._next("uniform", [a, b])

    def randint(self, a, b) -> int:
        return self._next("randint", [a, b])

    def shuffle(self, x: list) -> None:
        x[:] = self._next("shuffle", [len(x)])

    def done(self) -> bool:
        return self.pos == len(self.records)


def _resize(img, label, size_wh):
    img = cv2.resize(img, size_wh, interpolation=cv2.INTER_CUBIC).astype(np.uint8)
    if label is not None:
        label = cv2.resize(label, size_wh, interpolation=cv2.INTER_NEAREST)
    return img, label


def random_resize(img, label, s, draws: Draws):
    """RandomResize; `s`: OpensegResize."""
    h, w = img.shape[:2]
    if s.method == "random":
        scale = draws.uniform(s.scale_range[0], s.scale_range[1])
    else:  # "bound": (short, long) bounds
        scale = min(s.resize_bound[0] / min(w, h), s.resize_bound[1] / max(w, h))
    aspect = draws.uniform(s.aspect_range[0], s.aspect_range[1])
    sw, sh = math.sqrt(aspect) * scale, math.sqrt(1.0 / aspect) * scale
    # openseg builds method 'bound' without max_side_bound (TRANSFORM_SPEC passes it to 'random' only)
    if s.method == "random" and s.max_side_bound is not None and max(h * sh, w * sw) > s.max_side_bound:
        d = s.max_side_bound / max(h * sh, w * sw)
        sw, sh = sw * d, sh * d
    size = (int(w * sw), int(h * sh))
    if draws.random() > s.ratio:
        return img, label
    return _resize(img, label, size)


def fixed_resize(img, label, s):
    """Resize (no draws); `s`: OpensegFixedResize."""
    return _resize(img, label, fixed_size(img.shape[0], img.shape[1], s))


def fixed_size(h: int, w: int, s) -> tuple[int, int]:
    """(w, h) an h x w image is resized to by Resize `s` (OpensegFixedResize)."""
    if s.target_size is not None:
        size = list(s.target_size)
        fw, fh = size[0] / w, size[1] / h
    else:
        f = s.min_side_length / min(w, h) if s.min_side_length is not None else s.max_side_length / max(w, h)
        fw = fh = f
        size = [int(round(w * fw)), int(round(h * fh))]
    if s.max_side_bound is not None and max(size) > s.max_side_bound:
        d = s.max_side_bound / max(size)
        fw, fh = d * fw, d * fh
        size = [int(round(w * fw)), int(round(h * fh))]
    return int(size[0]), int(size[1])


def random_crop(img, label, s, draws: Draws):
    """RandomCrop; `s`: OpensegCrop (crop_size is (w, h))."""
    h, w = img.shape[:2]
    tw, th = min(s.crop_size[0], w), min(s.crop_size[1], h)
    if s.method == "center":
        x, y = (w - tw) // 2, (h - th) // 2
    elif s.method == "random":
        x = draws.randint(0, w - tw)
        y = draws.randint(0, h - th)
    else:  # grid
        gx, gy = draws.randint(0, s.grid[0] - 1), draws.randint(0, s.grid[1] - 1)
        x, y = gx * ((w - tw) // (s.grid[0] - 1)), gy * ((h - th) // (s.grid[1] - 1))
    if draws.random() > s.ratio:
        return img, label
    return img[y : y + th, x : x + tw], (label[y : y + th, x : x + tw] if label is not None else None)


def random_hflip(img, label, s, draws: Draws, swap_pair=None):
    """RandomHFlip; `s`: OpensegFlip; `swap_pair` the pairs to exchange (s.swap_pair or the dataset's)."""
    if draws.random() > s.ratio:
        return img, label
    img = cv2.flip(np.ascontiguousarray(img), 1)
    if label is not None:
        label = cv2.flip(np.ascontiguousarray(label), 1)
        if swap_pair:
            before = label.copy()
            for a, b in swap_pair:
                label[before == a] = b
                label[before == b] = a
    return img, label


def random_brightness(img, s, draws: Draws):
    """RandomBrightness; `s`: OpensegBrightness."""
    if draws.random() > s.ratio:
        return img
    shift = draws.randint(-s.shift_value, s.shift_value)
    out = img.astype(np.float32)
    out += shift
    return np.clip(np.around(out), 0, 255).astype(np.uint8)


def augment(img, label, cfg: OpensegConfig, draws: Draws, swap_pair=None):
    """The per-image transforms (CV2AugCompose, train split) on a BGR uint8 image and its label.

    shuffle_trans_seq is shuffled per image and applied before trans_seq. (openseg shuffles the list
    held by its config in place, so each image's order is a shuffle of the previous image's order;
    either way every order is a uniform random permutation. Here each image shuffles the table's order.)"""
    seq = list(cfg.shuffle_trans_seq)
    if seq:
        draws.shuffle(seq)
    pairs = (
        cfg.random_hflip.swap_pair
        if cfg.random_hflip is not None and cfg.random_hflip.swap_pair is not None
        else swap_pair
    )
    for name in [*seq, *cfg.trans_seq]:
        if name == "random_resize":
            img, label = random_resize(img, label, cfg.random_resize, draws)
        elif name == "resize":
            img, label = fixed_resize(img, label, cfg.resize)
        elif name == "random_crop":
            img, label = random_crop(img, label, cfg.random_crop, draws)
        elif name == "random_hflip":
            img, label = random_hflip(img, label, cfg.random_hflip, draws, pairs)
        elif name == "random_brightness":
            img = random_brightness(img, cfg.random_brightness, draws)
        else:  # the schema admits no other name
            raise UserError(f"openseg transform '{name}' is not implemented")
    return img, label


def normalize(img: np.ndarray, cfg: OpensegConfig) -> np.ndarray:
    """ToTensor + Normalize: HxWx3 BGR (uint8 or float 0..255) -> float32 CxHxW in `input_mode` order,
    (x / div_value - mean) / std, each step in float32 as torch does."""
    x = img if cfg.input_mode == "BGR" else img[..., ::-1]
    x = x.astype(np.float32).transpose(2, 0, 1)
    x = x / np.float32(cfg.normalize.div_value)
    mean = np.asarray(cfg.normalize.mean, np.float32)[:, None, None]
    std = np.asarray(cfg.normalize.std, np.float32)[:, None, None]
    return np.ascontiguousarray((x - mean) / std)


def pad_offsets(h: int, w: int, cfg: OpensegConfig, draws: Draws) -> tuple[int, int, int, int]:
    """(up, down, left, right) padding of the collate for an item of size h x w."""
    t = cfg.data_transformer
    tw, th = t.input_size
    pw, ph = tw - w, th - h
    if pw < 0 or ph < 0:
        raise UserError(f"openseg collate: item {w}x{h} is larger than data_transformer.input_size {tw}x{th}")
    if pw == 0 and ph == 0:
        return 0, 0, 0, 0
    left = up = 0
    if t.pad_mode == "random":
        left = draws.randint(0, pw)
        up = draws.randint(0, ph)
    elif t.pad_mode == "pad_left_up":
        left, up = pw, ph
    elif t.pad_mode == "pad_center":
        left, up = pw // 2, ph // 2
    elif t.pad_mode == "pad_border":
        if draws.randint(0, 1) == 0:
            left, up = pw, ph
    return up, ph - up, left, pw - left


def train_item(img, label, data: DataConfig, draws: Draws, swap_pair=None):
    """One training item: (float32 [3, H, W] image, label [H, W] with data.ignore_index where openseg
    has -1), H x W = data_transformer.input_size."""
    cfg = data.openseg
    img, label = augment(img, label, cfg, draws, swap_pair)
    image = normalize(img, cfg)
    up, down, left, right = pad_offsets(image.shape[1], image.shape[2], cfg, draws)
    if up or down or left or right:
        image = np.pad(image, ((0, 0), (up, down), (left, right)))
        label = np.pad(label, ((up, down), (left, right)), constant_values=data.ignore_index)
    return image, np.ascontiguousarray(label)


def draws_for(rng: np.random.Generator) -> _random.Random:
    """The per-image Python `random.Random` of a training item, seeded from its numpy generator."""
    return _random.Random(int(rng.integers(2**63)))


def normalize_input(img: np.ndarray, data: DataConfig) -> np.ndarray:
    """The network input of a recipe for a BGR image: openseg's normalisation with pipeline = "openseg",
    else ctxseg's (RGB, data.mean / data.std). Training and evaluation share it."""
    if data.pipeline == "openseg":
        return normalize(img, data.openseg)
    from ctxseg.data.transforms import normalize as mmseg_normalize

    return mmseg_normalize(img, data.mean, data.std)


def table_from_json(official: dict) -> dict:
    """The `[data.openseg]` table of an official openseg json (its `train_trans`, `normalize`,
    `data.input_mode` and `train.data_transformer`): the blocks of the transforms in trans_seq /
    shuffle_trans_seq, verbatim (blocks no sequence names, e.g. an unused random_rotate, are dropped;
    normalize's `mean_value`, the pad colour of transforms ctxseg does not run, too)."""
    tt = official["train_trans"]
    seq, shuffled = list(tt["trans_seq"]), list(tt.get("shuffle_trans_seq", []))
    table: dict = {"trans_seq": seq}
    if shuffled:
        table["shuffle_trans_seq"] = shuffled
    table["input_mode"] = official.get("data", {}).get("input_mode", "BGR")
    for name in dict.fromkeys([*seq, *shuffled]):
        table[name] = dict(tt[name])
    n = official["normalize"]
    table["normalize"] = {"div_value": n["div_value"], "mean": list(n["mean"]), "std": list(n["std"])}
    table["data_transformer"] = dict(official["train"]["data_transformer"])
    return table
