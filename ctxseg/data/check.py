"""Data checks before training: every image and label a run will read is readable, each label
matches its image's size and holds only valid class ids (out-of-range values are the usual cause
of NaN losses and zero IoU).

`check_data` runs before the first step, so a bad file costs seconds, not a training run. It is
parallel (threads: OpenCV decodes without the GIL), split across processes in multi-process runs,
and cached: files that passed are remembered by fingerprint (path, size, mtime) and settings in
`<data root>/.ctxseg-check-cache.json`, so the next run re-reads only what changed.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ctxseg.data.dataset import load_label, reduce_zero_label
from ctxseg.data.index import PreparedIndex, Sample
from ctxseg.errors import UserError
from ctxseg.io import read_image, read_label, write_json

CACHE_NAME = ".ctxseg-check-cache.json"
CACHE_VERSION = 1


def _scan(sample: Sample, num_classes: int, ignore_index: int, reduce_zero: bool):
    lab = read_label(sample.label).astype(np.int64)
    if reduce_zero:
        lab = reduce_zero_label(lab)
    bad = np.unique(lab[(lab >= num_classes) & (lab != ignore_index)])
    return sample.label, bad.tolist()


def check_labels(
    index: PreparedIndex, split: str, num_classes: int, ignore_index: int, reduce_zero_label: bool, workers: int = 4
) -> list[tuple[str, list[int]]]:
    """Files of `split` whose label values fall outside [0, num_classes) and the ignore index."""
    samples = [s for s in index.samples(split) if s.label is not None]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(lambda s: _scan(s, num_classes, ignore_index, reduce_zero_label), samples)
        return [(str(p), bad) for p, bad in results if bad]


def check_sample(sample: Sample, cfg) -> str | None:
    """None if the sample loads as training would load it, else one line naming the file and the fault."""
    try:
        img = read_image(sample.image)
        if sample.label is not None:
            load_label(sample, cfg, img.shape[:2])  # size and value checks, as the dataset does
    except UserError as e:
        return str(e)
    except Exception as e:  # noqa: BLE001 - a decoder fault on a damaged file is still the file's fault
        return f"{sample.image}: cannot be read ({type(e).__name__}: {e})"
    return None


class _Cache:
    def __init__(self, root: Path, cfg):
        self.path = Path(root) / CACHE_NAME
        self.settings = f"{cfg.num_classes}|{cfg.ignore_index}|{cfg.reduce_zero_label}"
        self.ok: set[str] = set()
        try:
            data = json.loads(self.path.read_text())
            if data.get("version") == CACHE_VERSION:
                self.ok = set(data.get("ok", []))
        except (OSError, ValueError):
            pass

    def key(self, s: Sample) -> str | None:
        parts = [self.settings]
        for p in (s.image, s.label):
            if p is None:
                parts.append("-")
                continue
            try:
                st = os.stat(p)
            except OSError:
                return None  # missing: never cached
            parts.append(f"{Path(p).resolve()}|{st.st_size}|{st.st_mtime_ns}")
        return hashlib.sha1("\n".join(parts).encode()).hexdigest()

    def save(self, new: list[str]) -> None:
        if not new:
            return
        try:
            write_json(self.path, {"version": CACHE_VERSION, "ok": sorted(self.ok | set(new))})
        except UserError:
            pass  # a read-only data folder: checks simply are not cached


def check_data(
    index: PreparedIndex,
    splits: list[str],
    cfg,
    full: bool = True,
    rank: int = 0,
    world: int = 1,
    gather: Callable[[object], list] | None = None,
    workers: int | None = None,
) -> list[str]:
    """Problems (one line each) in the splits a run reads; empty when all is well.

    Missing or empty splits are always reported; with `full`, every image and label is also read.
    In a multi-process run each process checks its share and `gather` (an all-gather of Python
    objects) combines them; every process must call this."""
    problems: list[str] = []
    samples: dict[tuple, Sample] = {}
    for split in dict.fromkeys(splits):
        try:
            found = index.samples(split)
        except UserError as e:
            problems.append(str(e))
            continue
        if not found:
            problems.append(f"split '{split}' of {index.root} is empty")
        for s in found:
            samples.setdefault((str(s.image), str(s.label)), s)
    if not full:
        return problems
    cache = _Cache(index.root, cfg)
    mine = list(samples.values())[rank::world]
    keys = [cache.key(s) for s in mine]
    todo = [(s, k) for s, k in zip(mine, keys) if k is None or k not in cache.ok]
    with ThreadPoolExecutor(max_workers=workers or min(8, (os.cpu_count() or 1) + 2)) as pool:
        results = list(pool.map(lambda sk: check_sample(sk[0], cfg), todo))
    found_problems = [r for r in results if r is not None]
    passed = [k for (_, k), r in zip(todo, results) if r is None and k is not None]
    shares = gather((found_problems, passed)) if gather is not None else [(found_problems, passed)]
    problems += [p for share_problems, _ in shares for p in share_problems]
    if rank == 0:
        cache.save([k for _, share_passed in shares for k in share_passed])
    return problems
