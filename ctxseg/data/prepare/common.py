"""Machinery shared by the dataset preparers.

A preparer lists `Job`s (one per sample: image path, where its label comes from, how to convert
it) and hands them to `prepare_index`, which
  * converts labels in parallel worker processes (or in-process for workers <= 1),
  * skips a label only when it exists (writes are atomic, so an existing file is complete) AND
    its source is unchanged: a per-file fingerprint (path, size, mtime; or the job's own
    fingerprint) is kept in <out>/.prepare_state.json, so a changed raw label is converted again,
    and re-running an interrupted prepare resumes it,
  * decodes every file the index will point at (images and in-place labels included) once;
    unchanged files already validated are not decoded again,
  * collects every unreadable / corrupt raw file and fails with one message per file (exit 2)
    instead of a traceback at the first one,
  * never writes into, moves or copies the raw download (images are referenced in place),
  * counts per-class pixels and per-image class presence on the training split, as training
    sees the labels (after reduce_zero_label, ignore excluded),
  * checksums the source listing, checks split sizes against the official counts,
  * writes splits/<split>.txt, class_presence.npy and meta.json (ctxseg.data.index format).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import zipfile
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ctxseg.errors import UserError
from ctxseg.io import read_label, write_json, write_png, write_text

PRESENCE_FILE = "class_presence.npy"


class BadFilesError(UserError):
    """Raw files that cannot be read: one message per file (the CLI prints each on its own line)."""

    label = "bad file"  # what the CLI prints before each message

    def __init__(self, dataset: str, messages: list[str]):
        self.messages = messages
        self.summary = (
            f"{len(messages)} file(s) of {dataset} could not be read (truncated or corrupt?); nothing was "
            f"indexed. Replace them from the download and re-run (finished labels are kept)."
        )
        super().__init__(self.summary + "\n" + "\n".join(f"  {m}" for m in messages))


@dataclass
class Job:
    """One sample for `prepare_index`: an image, and its label used in place or converted.

    Args:
        split: the split the sample belongs to.
        image: image path relative to the index's image_root.
        label: label path relative to label_root (converted labels: under the output folder; labels used
            in place: under the raw root); None: no label (test splits).
        source: where a converted label comes from (a path, or "zip::member").
        convert: top-level function fn(source, *args) -> HxW uint8 label (top-level so it can run in a
            worker process); None: the label file is used in place.
        args: extra arguments of `convert`.
        fingerprint: identity of the source when it is not a plain file (default: path, size, mtime),
            used to skip labels converted by an earlier run.
    """

    split: str
    image: str  # relative to the index's image_root
    label: str | None = None  # relative to label_root (converted: under <out>; in place: under the raw root)
    source: str | None = None  # where a converted label comes from (path, or "zip::member")
    convert: Callable | None = None  # top-level fn(source, *args) -> HxW uint8 label; None: label used in place
    args: tuple = ()
    fingerprint: str | None = None  # identity of the source when it is not a plain file (default: path, size, mtime)


@dataclass
class DatasetInfo:
    """What a dataset module tells `prepare_index` about its dataset (written to meta.json).

    Args:
        name: dataset name.
        classes: class names, in class-id order.
        palette: one RGB colour per class.
        ignore_index: label value not trained on nor scored.
        reduce_zero_label: labels use 0 for "other" (mmseg's reduce_zero_label is applied when loading).
        flip_pairs: (left, right) class pairs swapped by a horizontal flip (LIP).
        official: official split sizes, {split: count}, checked after preparing.
        extra: more meta.json keys (label conventions, notes).
    """

    name: str
    classes: list[str]
    palette: list[list[int]]
    ignore_index: int = 255
    reduce_zero_label: bool = False
    flip_pairs: list[tuple[int, int]] = field(default_factory=list)
    official: dict[str, int] = field(default_factory=dict)  # official split sizes
    extra: dict = field(default_factory=dict)  # more meta.json keys (label conventions, notes)


# --------------------------------------------------------------------------------------------
# small helpers used by the dataset modules


def require_scipy():
    try:
        import scipy.io
    except ImportError:  # pragma: no cover - scipy is in the datasets extra
        raise UserError(
            "This dataset's annotations are MATLAB .mat files: install scipy "
            "(pip install 'ctxseg[datasets]' or pip install scipy)"
        ) from None
    return scipy.io


def need_root(root, name: str) -> Path:
    if root is None:
        raise UserError(
            f"`ctxseg prepare {name}` needs --root: the folder with the official download (see docs/datasets.md)"
        )
    root = Path(root).expanduser()
    if not root.is_dir():
        raise UserError(f"--root {root} is not a folder")
    return root.resolve()


def find_dir(root: Path, *candidates: str, what: str) -> Path:
    """The first of root/<candidate> that exists (the user may point at the dataset or its parent)."""
    for c in candidates:
        p = root / c
        if p.is_dir():
            return p
    raise UserError(
        f"{what} not found under {root} (looked for {', '.join(candidates)}); see docs/datasets.md for the layout"
    )


def read_list(path: Path) -> list[str]:
    """Non-empty, stripped lines of a split list file."""
    if not path.is_file():
        raise UserError(f"Split list {path} not found")
    return [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]


def read_indexed_png(path: str | Path) -> np.ndarray:
    """A label PNG as its stored values. Palette ('P') PNGs give their indices, not colours
    (OpenCV would expand the palette to BGR, which is why VOC labels are read with PIL)."""
    from PIL import Image

    with Image.open(path) as im:
        if im.mode not in ("P", "L", "I", "I;16"):
            raise UserError(f"{path}: expected a single-channel or palette label PNG, got mode {im.mode}")
        return np.array(im)


def read_source_png(source: str) -> np.ndarray:
    """Read a label PNG from a path or from inside a zip archive ("archive.zip::member")."""
    if "::" in source:
        import cv2

        archive, member = source.split("::", 1)
        with open_zip(archive) as z:
            data = np.frombuffer(z.read(member), np.uint8)
        lab = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
        if lab is None:
            raise UserError(f"Cannot decode {member} in {archive}")
        return lab
    return read_label(source)


def lut_from_dict(mapping: dict[int, int], default: int, size: int = 256) -> np.ndarray:
    lut = np.full(size, default, np.uint8)
    for k, v in mapping.items():
        lut[k] = v
    return lut


def bitmap_palette(n: int) -> list[list[int]]:
    """The PASCAL VOC colour map (bit-interleaved class index), extended to n classes."""
    pal = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal.append([r, g, b])
    return pal


def open_zip(archive: str | Path) -> zipfile.ZipFile:
    """A zip archive, or a user error naming it (a truncated download is the usual cause)."""
    try:
        return zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as e:
        raise UserError(f"{archive}: not a readable zip archive ({e}); download it again") from None


def extract_zip(archive: Path, dest: Path, prefix: str, progress=None) -> int:
    """Extract the members of `archive` under `prefix` into dest (skipping complete ones); returns the count.

    Only used when the user has the official zips and not the extracted folders: the loader needs
    files, so the archive is unpacked once into the prepared folder (the zip itself is untouched)."""
    with open_zip(archive) as z:
        members = [m for m in z.infolist() if m.filename.startswith(prefix) and not m.is_dir()]
        for k, m in enumerate(members):
            target = dest / m.filename
            # the member's time stamp is given to the extracted file (as unzip does): a re-run skips a file
            # only if size and time stamp still match, so a replaced archive is extracted again
            stamp = time.mktime(m.date_time + (0, 0, -1))
            if not (
                target.is_file() and target.stat().st_size == m.file_size and int(target.stat().st_mtime) == int(stamp)
            ):
                target.parent.mkdir(parents=True, exist_ok=True)
                tmp = target.with_name(f".{target.name}.part")
                with z.open(m) as src, open(tmp, "wb") as dst:
                    while chunk := src.read(1 << 20):
                        dst.write(chunk)
                os.utime(tmp, (stamp, stamp))
                os.replace(tmp, target)
            if progress:
                progress(k + 1, len(members))
    return len(members)


# --------------------------------------------------------------------------------------------
# the parallel conversion


def _training_view(lab: np.ndarray, reduce_zero: bool) -> np.ndarray:
    lab = lab.astype(np.int64)
    if reduce_zero:  # mmseg: 0 -> 255, shift down, 254 -> 255 (a raw 255 stays ignore)
        lab = np.where(lab == 0, 255, lab) - 1
        lab[lab == 254] = 255
    return lab


STATE_FILE = ".prepare_state.json"


def file_fingerprint(path: str) -> str | None:
    """path, size and mtime of a file (None: missing). A zip member: the archive's, plus the member name."""
    archive = str(path).partition("::")[0]
    try:
        st = os.stat(archive)
    except OSError:
        return None
    return f"{path}\t{st.st_size}\t{st.st_mtime_ns}"


def job_fingerprint(job: Job) -> str | None:
    """What a converted label depends on: its source (or the job's own fingerprint) and the converter."""
    src = job.fingerprint if job.fingerprint is not None else file_fingerprint(job.source)
    if src is None:
        return None
    fn = f"{job.convert.__module__}.{job.convert.__qualname__}" if job.convert else "-"
    return f"{src}\t{fn}"


def describe_error(path: str, exc: BaseException) -> str:
    """One line, "<path>: <what is wrong>"."""
    text = str(exc).strip()
    if isinstance(exc, UserError):
        reason = " ".join(text.replace(f"{path}: ", "").replace(str(path), "").split()) or "unreadable"
    else:
        reason = f"unreadable or corrupt ({type(exc).__name__}: {text.splitlines()[0] if text else 'no detail'})"
    return f"{path}: {reason}"


def validate_file(path: str | Path) -> None:
    """Decode an image / label file completely (a truncated JPEG still 'opens' in OpenCV, so PIL
    decodes it: a missing tail raises). Raises on a missing, truncated or corrupt file."""
    from PIL import Image, ImageFile

    if ImageFile.LOAD_TRUNCATED_IMAGES:  # someone relaxed PIL globally: a truncated file would pass
        ImageFile.LOAD_TRUNCATED_IMAGES = False
    with Image.open(path) as im:
        if im.format == "JPEG":  # decode at 1/8 scale: every byte of the stream is still parsed, ~5x faster
            im.draft(im.mode, (max(1, im.width // 8), max(1, im.height // 8)))
        im.load()


def _process(task) -> tuple:
    """Validate the image, convert (or reuse / validate) the label of one job.

    Returns (job index, per-class counts or None, skipped, label fingerprint or None,
             [(validated path, fingerprint)], [(path, error message)])."""
    k, job, image_root, label_root, num_classes, ignore_index, reduce_zero, want_stats, known = task
    errors: list[tuple[str, str]] = []
    validated: list[tuple[str, str]] = []

    def check(path: Path) -> bool:
        fp = file_fingerprint(str(path))
        if fp is not None and known.get(str(path)) == fp:
            return True
        try:
            validate_file(path)
        except Exception as e:  # noqa: BLE001 - any decoder error is a bad file, named in the message
            errors.append((str(path), describe_error(str(path), e)))
            return False
        validated.append((str(path), fp))
        return True

    check(Path(image_root) / job.image)
    if job.label is None:
        return k, None, True, None, validated, errors
    dst = Path(label_root) / job.label
    skipped, label_fp, lab = True, None, None
    if job.convert is None:  # used in place: it must decode
        if check(dst) and want_stats:
            lab = _read(dst, errors)
    else:
        label_fp = job_fingerprint(job)
        if dst.is_file() and label_fp is not None and known.get(f"label:{job.label}") == label_fp:
            lab = _read(dst, errors) if want_stats else None  # finished earlier from the same source
        else:
            try:
                lab = job.convert(job.source, *job.args)
                if not isinstance(lab, np.ndarray) or lab.ndim != 2:
                    raise UserError(f"{job.source}: the converted label is not a 2-D array")
                if lab.dtype != np.uint8:
                    raise UserError(f"{job.source}: converted label must be uint8, got {lab.dtype}")
            except Exception as e:  # noqa: BLE001 - a corrupt source: reported with all the others
                errors.append((str(job.source), describe_error(str(job.source), e)))
                return k, None, True, None, validated, errors
            write_png(dst, lab)
            skipped = False
    if lab is None:
        return k, None, skipped, label_fp, validated, errors
    view = _training_view(lab, reduce_zero)
    view = view[(view != ignore_index) & (view >= 0) & (view < num_classes)]
    return k, np.bincount(view.ravel(), minlength=num_classes)[:num_classes], skipped, label_fp, validated, errors


def _read(path: Path, errors: list) -> np.ndarray | None:
    try:
        return read_label(path)
    except Exception as e:  # noqa: BLE001
        errors.append((str(path), describe_error(str(path), e)))
        return None


class _State:
    """<out>/.prepare_state.json: fingerprints of converted labels' sources ("label:<rel>") and of
    files already decoded once (absolute path). Saved atomically now and then, so an interrupted
    run keeps what it finished."""

    def __init__(self, out: Path):
        self.path = out / STATE_FILE
        try:
            self.data = json.loads(self.path.read_text())
            assert isinstance(self.data, dict)
        except (OSError, ValueError, AssertionError):
            self.data = {}
        self._saved = time.monotonic()
        self._every = 5.0

    def save(self, force: bool = False) -> None:
        # at most every 5 s, and never more than ~5% of the time (the state of COCO-164k is tens of MB)
        if force or time.monotonic() - self._saved > self._every:
            t0 = time.monotonic()
            write_text(self.path, json.dumps(self.data, separators=(",", ":")))
            self._saved = time.monotonic()
            self._every = max(5.0, 20 * (self._saved - t0))


def _known_for(job: Job, known: dict, image_root: Path, label_root: Path) -> dict:
    """The part of the saved state one job needs (keeps what is sent to a worker small)."""
    keys = [str(image_root / job.image)]
    if job.label is not None:
        keys.append(f"label:{job.label}" if job.convert is not None else str(label_root / job.label))
    return {key: known[key] for key in keys if key in known}


def paired(images: dict[str, Path], labels: dict[str, Path], split: str, warnings: list[str]) -> list[str]:
    """Keys present as both image and annotation, sorted; files without a partner are reported."""
    lonely = sorted(set(images) ^ set(labels))
    if lonely:
        warnings.append(
            f"split '{split}': {len(lonely)} image(s)/annotation(s) without a partner were left out, "
            f"e.g. {', '.join(lonely[:5])}"
        )
    return sorted(set(images) & set(labels))


def source_checksum(paths: list[str]) -> str:
    """sha256 of the sorted (path, size) listing of the raw files a prepare read."""
    h = hashlib.sha256()
    for p in sorted(set(paths)):
        if "::" in p:
            archive, member = p.split("::", 1)
            entry = f"{Path(archive).name}::{member}"
            size = -1  # zip members: the archive size is hashed once below
        else:
            entry = p
            try:
                size = os.stat(p).st_size
            except OSError:
                size = -1
        h.update(f"{entry}\t{size}\n".encode())
    for archive in sorted({p.split("::", 1)[0] for p in paths if "::" in p}):
        h.update(f"{Path(archive).name}\t{os.stat(archive).st_size}\n".encode())
    return h.hexdigest()


def check_split_sizes(found: dict[str, int], official: dict[str, int]) -> list[str]:
    """Human-readable differences between found and official split sizes (empty: all match)."""
    msgs = []
    for split, n_off in official.items():
        n = found.get(split, 0)
        if n < n_off:
            msgs.append(f"split '{split}': {n} samples, the official count is {n_off} ({n_off - n} missing)")
        elif n > n_off:
            msgs.append(f"split '{split}': {n} samples, the official count is {n_off} ({n - n_off} extra)")
    return msgs


def prepare_index(
    info: DatasetInfo,
    jobs: list[Job],
    out: Path,
    image_root: Path,
    label_root: Path | str,
    workers: int = 2,
    progress=None,
    sources: list[str] | None = None,
    warnings: list[str] | None = None,
    stats_split: str = "train",
) -> dict:
    """Run the jobs and write the prepared index; returns meta (plus a 'run' report not written to disk)."""
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    image_root = Path(image_root).resolve()
    label_root_abs = Path(label_root) if Path(label_root).is_absolute() else out / label_root
    num_classes = len(info.classes)
    state = _State(out)
    known = state.data
    tasks = [
        (
            k,
            j,
            str(image_root),
            str(label_root_abs),
            num_classes,
            info.ignore_index,
            info.reduce_zero_label,
            j.split == stats_split,
            _known_for(j, known, image_root, label_root_abs),
        )
        for k, j in enumerate(jobs)
    ]
    counts = np.zeros(num_classes, np.int64)
    train_jobs = [k for k, j in enumerate(jobs) if j.split == stats_split and j.label is not None]
    row_of = {k: r for r, k in enumerate(train_jobs)}
    presence = np.zeros((len(train_jobs), num_classes), bool)
    converted = skipped = 0
    errors: dict[str, str] = {}

    def collect(result):
        nonlocal converted, skipped
        k, c, was_skipped, label_fp, validated, errs = result
        for path, msg in errs:
            errors.setdefault(path, msg)
        for path, fp in validated:
            if fp is not None:
                known[path] = fp
        job = jobs[k]
        if job.label is not None and job.convert is not None and not errs:
            skipped += was_skipped
            converted += not was_skipped
            if label_fp is not None:
                known[f"label:{job.label}"] = label_fp
        if c is not None and k in row_of:
            counts[:] += c
            presence[row_of[k]] = c > 0
        state.save()

    total = len(tasks)
    try:
        if workers <= 1 or total < 2:
            for i, t in enumerate(tasks):
                collect(_process(t))
                if progress:
                    progress(i + 1, total)
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                for i, r in enumerate(
                    pool.map(_process, tasks, chunksize=max(1, min(64, total // (workers * 8) or 1)))
                ):
                    collect(r)
                    if progress:
                        progress(i + 1, total)
    finally:
        state.save(force=True)
    if errors:
        raise BadFilesError(info.name, list(errors.values()))

    splits: dict[str, list[str]] = {}
    for j in jobs:
        splits.setdefault(j.split, []).append(j.image if j.label is None else f"{j.image} {j.label}")
    for split, lines in splits.items():
        write_text(out / "splits" / f"{split}.txt", "\n".join(lines) + "\n")
    if train_jobs:
        with open(out / f".{PRESENCE_FILE}.tmp", "wb") as f:
            np.save(f, presence)
        os.replace(out / f".{PRESENCE_FILE}.tmp", out / PRESENCE_FILE)

    found = {s: len(v) for s, v in splits.items()}
    warnings = list(warnings or []) + check_split_sizes(found, info.official)
    if "train" in splits and "val" in splits and "trainval" not in splits:
        # papers' test-server settings train on train + val (e.g. MCIBI Cityscapes trainval -> test)
        write_text(out / "splits" / "trainval.txt", "\n".join(splits["train"] + splits["val"]) + "\n")
        found["trainval"] = found["train"] + found["val"]

    def rel_or_abs(p):
        p = Path(p)
        if not p.is_absolute():
            return str(p)
        try:
            return str(p.relative_to(out)) or "."
        except ValueError:
            return str(p)

    meta = {
        "name": info.name,
        "classes": list(info.classes),
        "palette": [list(c) for c in info.palette],
        "num_classes": num_classes,
        "ignore_index": info.ignore_index,
        "reduce_zero_label": info.reduce_zero_label,
        "image_root": rel_or_abs(image_root),
        "label_root": rel_or_abs(label_root_abs if Path(label_root).is_absolute() else label_root),
        "flip_pairs": [list(p) for p in info.flip_pairs],
        "splits": found,
        "official_splits": dict(info.official),
        "class_pixel_counts": counts.tolist(),
        "class_pixel_counts_split": stats_split,
        "class_presence": PRESENCE_FILE if train_jobs else None,
        "source_checksum": source_checksum(sources or []),
        "warnings": warnings,
        **info.extra,
    }
    write_json(out / "meta.json", meta)
    return {**meta, "run": {"converted": converted, "skipped": skipped, "jobs": len(jobs)}}
