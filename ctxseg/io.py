"""Atomic file writes: write to a temporary file in the same folder, fsync, then rename.

Temporary files are named `.<name>.ctxseg-tmp-<random><suffix>` so a run that is resumed after a
kill can recognise and remove what a killed write left behind (`remove_stale_temp_files`). The
final file gets the permissions a plain `open()` would give (0666 minus the user's umask), not
mkstemp's private 0600, so a shared run folder stays readable to the group the user chose.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ctxseg.errors import UserError

TEMP_MARK = ".ctxseg-tmp-"
# unreadable files are reported as one UserError naming the file; OpenCV's own log lines about
# the same failure (one per decode attempt, from every loader worker) would only bury it
cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
_umask_lock = threading.Lock()


def current_umask() -> int:
    """The process umask (read by setting and restoring it: there is no read-only call)."""
    with _umask_lock:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def write_error(path: str | Path, err: BaseException) -> UserError:
    """A file-system fault while writing `path`, as one message the user can act on."""
    import errno

    code = getattr(err, "errno", None)
    reason = {
        errno.ENOSPC: "the disk is full",
        errno.EDQUOT: "the disk quota is exceeded",
        errno.EFBIG: "the file size limit was reached",
        errno.EROFS: "the file system is read-only",
        errno.EACCES: "permission denied",
        errno.EPERM: "permission denied",
    }.get(code)
    if reason is None:
        text = str(err).strip() or type(err).__name__
        # torch.save reports a short write (full disk) as "unexpected pos"
        reason = "the disk may be full" if "unexpected pos" in text else text
    return UserError(
        f"Could not write {path}: {reason} ({type(err).__name__}: {str(err).strip()[:200]}). "
        "Free space or choose another folder (--runs-dir)."
    )


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems do not support syncing a directory
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """Yields a temporary path next to `path`; renamed over `path` only if the block succeeds.

    The data is fsynced before the rename (so a crash never leaves a renamed but empty file) and
    the file gets the user's umask permissions. Write faults (disk full, read-only folder, size
    limit) become one UserError naming `path`; the temporary file is always removed."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{TEMP_MARK}", suffix=suffix or path.suffix, dir=path.parent)
        os.close(fd)
    except OSError as e:
        raise write_error(path, e) from None
    try:
        try:
            yield Path(tmp)
        except UserError:
            raise
        except (OSError, RuntimeError) as e:  # torch.save: "unexpected pos"; safetensors: I/O errors
            raise write_error(path, e) from None
        except Exception as e:
            if type(e).__name__ == "SafetensorError":
                raise write_error(path, e) from None
            raise
        try:
            os.chmod(tmp, 0o666 & ~current_umask())
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as e:
            raise write_error(path, e) from None
        _fsync_dir(path.parent)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def remove_stale_temp_files(folder: str | Path) -> list[Path]:
    """Delete temporary files a killed write left under `folder` (recursively); returns them."""
    removed = []
    for p in Path(folder).rglob(f".*{TEMP_MARK}*"):
        if p.is_file():
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_png(path: str | Path, array: np.ndarray) -> None:
    with atomic_path(path, suffix=".png") as tmp:
        if not cv2.imwrite(str(tmp), array):
            raise UserError(f"Could not write image {path}")


def read_image(path: str | Path) -> np.ndarray:
    """Read an image as uint8 BGR HxWx3. Grayscale is expanded, RGBA drops alpha, 16-bit is rejected."""
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise UserError(f"Cannot read image {path} (missing or corrupt)")
    if img.dtype != np.uint8:
        raise UserError(f"{path}: {img.dtype} images are not supported; convert to 8-bit (e.g. cv2.convertScaleAbs)")
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    elif img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
    elif img.shape[2] != 3:
        raise UserError(f"{path}: {img.shape[2]}-channel images are not supported")
    return img


def read_label(path: str | Path) -> np.ndarray:
    """Read a label map (single-channel PNG of class ids) as uint8/uint16 HxW."""
    lab = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if lab is None:
        raise UserError(f"Cannot read label {path} (missing or corrupt)")
    if lab.ndim == 3:
        raise UserError(f"{path}: label maps must be single-channel class-id PNGs, got {lab.shape[2]} channels")
    return lab
