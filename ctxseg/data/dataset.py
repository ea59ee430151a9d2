"""Dataset over a prepared index, and the deterministic, resumable sampler that feeds it."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset

from ctxseg.config import DataConfig
from ctxseg.data import openseg_pipeline as OS
from ctxseg.data import transforms as T
from ctxseg.data.index import PreparedIndex, Sample
from ctxseg.errors import UserError
from ctxseg.io import read_image, read_label


def reduce_zero_label(label: np.ndarray) -> np.ndarray:
    """mmseg's reduce_zero_label: 0 ('other') -> ignore 255, every other id shifts down by one."""
    label = label.astype(np.int32)
    label[label == 0] = 255
    label = label - 1
    label[label == 254] = 255  # 0 and the original ignore 255 both end as 255
    return label


def load_label(sample: Sample, cfg: DataConfig, image_shape: tuple[int, int] | None = None) -> np.ndarray:
    """Read, reduce and validate a label map; HxW uint8 (int32 when ids exceed 255), values in [0, C) or ignore.

    Labels stay in a dtype OpenCV can resize (nearest) and become int64 tensors only at the end."""
    lab = read_label(sample.label)
    if image_shape is not None and lab.shape[:2] != tuple(image_shape):
        raise UserError(
            f"{sample.label}: label size {lab.shape[1]}x{lab.shape[0]} differs from its image "
            f"{image_shape[1]}x{image_shape[0]} ({sample.image})"
        )
    lab = reduce_zero_label(lab) if cfg.reduce_zero_label else lab.astype(np.int64)
    bad = (lab >= cfg.num_classes) & (lab != cfg.ignore_index)
    if bad.any():
        values = sorted(int(v) for v in np.unique(lab[bad]))[:8]
        raise UserError(
            f"{sample.label}: label values {values} are outside [0, {cfg.num_classes}) and not the ignore "
            f"index {cfg.ignore_index} (check num_classes / reduce_zero_label, or run `ctxseg prepare --check`)"
        )
    return lab.astype(np.uint8) if max(cfg.num_classes, cfg.ignore_index) < 256 else lab.astype(np.int32)


class SegDataset(Dataset):
    """Items are indexed by (sample index, augmentation seed) pairs from `TrainBatchSampler`
    during training, or by a plain index for evaluation (no augmentation).

    Training items are {"image": float [3, h, w] normalised, "label": int64 [h, w]} after the
    recipe's augmentation (padded to crop_size); evaluation items add "index" and "size" (the
    original (h, w)) and carry a label only where the split has one.

    Args:
        index: the prepared dataset (meta.json, splits/).
        split: split name (splits/<split>.txt).
        cfg: the recipe's data section (augmentation, normalisation, num_classes, ignore_index).
        train: apply the training augmentation (items then need a seed and a label).
        test_resize: the official test pipeline's Resize applied to the image (never the label):
            (long, short) edges with keep_ratio, else (h, w); None: native size.
        keep_ratio: see `test_resize`.
    """

    def __init__(
        self,
        index: PreparedIndex,
        split: str,
        cfg: DataConfig,
        train: bool,
        test_resize: tuple[int, int] | None = None,
        keep_ratio: bool = True,
    ):
        """`test_resize` (evaluation only): the official test pipeline's Resize, applied to the image
        (never the label) before normalisation; items then carry `size`, the original (h, w)."""
        self.test_resize, self.test_keep_ratio = test_resize, keep_ratio
        self.index = index
        self.samples = index.samples(split)
        if not self.samples:
            raise UserError(f"Split '{split}' of {index.root} is empty")
        self.cfg = cfg
        self.train = train
        self.flip_pairs = cfg.flip_pairs if cfg.flip_pairs is not None else index.flip_pairs

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key):
        if not self.train:
            return self._load(key)
        try:
            return self._load(key)
        except UserError as e:
            # Raised inside a DataLoader worker, the error would reach the trainer re-wrapped with
            # the worker's whole traceback as its message; an error item carries the message alone
            # (the trainer stops all processes with it, see Trainer._next_batch).
            return {"error": str(e)}

    def _load(self, key):
        i, seed = key if isinstance(key, tuple) else (key, None)
        s = self.samples[i]
        img = read_image(s.image)
        lab = load_label(s, self.cfg, img.shape[:2]) if s.label is not None else None
        if self.train:
            return self._augment(img, lab, np.random.default_rng(seed))
        size = img.shape[:2]
        if self.test_resize is not None:
            img, _ = T.resize_pair(img, None, T.test_size(*size, self.test_resize, self.test_keep_ratio))
        image = OS.normalize_input(img, self.cfg)
        out = {"image": torch.from_numpy(image), "index": i, "size": tuple(size)}
        if lab is not None:
            out["label"] = torch.from_numpy(lab.astype(np.int64))
        return out

    def _augment(self, img, lab, rng: np.random.Generator):
        c = self.cfg
        if lab is None:
            raise UserError("Training needs labels, but the training split has none")
        if c.pipeline == "openseg":  # ContrastiveSeg's own augmentation, normalisation and padding
            image, lab = OS.train_item(img, lab, c, OS.draws_for(rng), self.flip_pairs)
            return {"image": torch.from_numpy(image), "label": torch.from_numpy(lab.astype(np.int64))}
        for _, step in T.train_steps(c, self.flip_pairs):
            img, lab = step(img, lab, rng)
        return {"image": torch.from_numpy(img), "label": torch.from_numpy(lab.astype(np.int64))}


class TrainBatchSampler:
    """Infinite, deterministic batches for one process, resumable at any micro-batch.

    The global sample stream is the concatenation of per-epoch permutations seeded by (seed,
    epoch); global batch b takes stream positions [b*G, (b+1)*G) with G = batch * world, and rank r
    takes its contiguous share. Each sample's augmentation seed is (seed, stream position), so the
    data a step sees does not depend on worker count, restarts or timing.

    Args:
        num_samples: size of the training split.
        batch_size: images per process per micro-batch.
        seed: seed of the permutations and of the augmentation seeds.
        rank: this process's rank.
        world: number of processes.
        start_batch: global micro-batch to start at (resuming).
        weights: per-sample repeat factors (repeat-factor / class-balanced sampling; an "epoch" holds each
            sample floor(w + u) times, u uniform); None: each sample once per epoch.
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world: int = 1,
        start_batch: int = 0,
        weights: np.ndarray | None = None,
    ):
        self.n, self.batch, self.seed = num_samples, batch_size, seed
        self.rank, self.world, self.start = rank, world, start_batch
        self.weights = None if weights is None else np.asarray(weights, np.float64)
        if self.weights is not None and (
            len(self.weights) != num_samples or not np.all(self.weights >= 0) or self.weights.sum() <= 0
        ):
            raise UserError("Sampler weights must be one non-negative repeat factor per training sample, not all zero")
        self._epoch_cache: dict[int, np.ndarray] = {}
        self._epoch_ends: list[int] = []  # weighted: cumulative stream length after each epoch

    def _repeats(self, rng: np.random.Generator) -> np.ndarray:
        # stochastic rounding of repeat factors (LVIS): one "epoch" holds each sample floor(w + u) times
        return np.floor(self.weights + rng.random(self.n)).astype(np.int64)

    def epoch_order(self, epoch: int) -> np.ndarray:
        if epoch not in self._epoch_cache:
            rng = np.random.default_rng([self.seed, epoch])
            if self.weights is None:
                order = rng.permutation(self.n)
            else:
                order = rng.permutation(np.repeat(np.arange(self.n), self._repeats(rng)))
            self._epoch_cache = {epoch: order}
        return self._epoch_cache[epoch]

    def _epoch_of(self, pos: int) -> tuple[int, int]:
        """(epoch, offset) of stream position `pos` with variable-length epochs: epoch lengths are
        computed once each (only the repeat draw, no permutation) and searched by bisection, so a
        resume at step s costs O(epochs) once instead of re-walking every epoch on every call."""
        import bisect

        while not self._epoch_ends or self._epoch_ends[-1] <= pos:
            e = len(self._epoch_ends)
            length = int(self._repeats(np.random.default_rng([self.seed, e])).sum())
            self._epoch_ends.append((self._epoch_ends[-1] if self._epoch_ends else 0) + length)
        epoch = bisect.bisect_right(self._epoch_ends, pos)
        return epoch, pos - (self._epoch_ends[epoch - 1] if epoch else 0)

    def _position(self, pos: int) -> int:
        if self.weights is None:
            epoch, k = divmod(pos, self.n)
            return int(self.epoch_order(epoch)[k])
        epoch, k = self._epoch_of(pos)
        return int(self.epoch_order(epoch)[k])

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        b = self.start
        g = self.batch * self.world
        while True:
            base = b * g + self.rank * self.batch
            yield [(self._position(base + k), (self.seed * 1_000_003 + base + k) % (2**63)) for k in range(self.batch)]
            b += 1


def collate(items: list[dict]) -> dict:
    errors = [it["error"] for it in items if "error" in it]
    if errors:
        return {"error": errors[0]}
    out = {"image": torch.stack([it["image"] for it in items])}
    if "label" in items[0]:
        out["label"] = torch.stack([it["label"] for it in items])
    if "index" in items[0]:
        out["index"] = torch.tensor([it["index"] for it in items])
    return out
