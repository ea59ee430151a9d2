"""Label sanity scan: out-of-range values are the usual cause of NaN losses and zero IoU."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ctxseg.data.dataset import reduce_zero_label
from ctxseg.data.index import PreparedIndex, Sample
from ctxseg.io import read_label


def _scan(sample: Sample, num_classes: int, ignore_index: int, reduce_zero: bool):
    lab = read_label(sample.label).astype(np.int64)
    if reduce_zero:
        lab = reduce_zero_label(lab)
    bad = np.unique(lab[(lab >= num_classes) & (lab != ignore_index)])
    return sample.label, bad.tolist()


def check_labels(index: PreparedIndex, split: str, num_classes: int, ignore_index: int, reduce_zero_label: bool,
                 workers: int = 4) -> list[tuple[str, list[int]]]:
    """Files of `split` whose label values fall outside [0, num_classes) and the ignore index."""
    samples = [s for s in index.samples(split) if s.label is not None]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(lambda s: _scan(s, num_classes, ignore_index, reduce_zero_label), samples)
        return [(str(p), bad) for p, bad in results if bad]
