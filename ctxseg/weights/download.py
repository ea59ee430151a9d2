"""Download one file over HTTP(S) into the cache: resumable, verified, atomic, once per machine.

- The bytes go to `<file>.part`; an interrupted download (dropped connection, Ctrl-C, a killed
  process) resumes from there with an HTTP Range request. A server that answers 206 appends; one
  that ignores the Range (200) restarts from the first byte.
- A dropped connection or a 5xx answer is retried with exponential backoff; a 404 is not.
- The sha256 (full digest, or the published prefix as torch.hub's check_hash) is checked before
  the file gets its final name; a mismatch deletes the partial file and caches nothing.
- The finished file is fsynced and renamed: a file under its final name is always complete.
- An exclusive `fcntl.flock` on `.<file>.lock` beside it: two processes asking for the same file
  download it once; the second waits and finds it there.
Retry count, backoff and timeout: CTXSEG_WEIGHTS_RETRIES (4), CTXSEG_WEIGHTS_BACKOFF (1 s, doubled
per try, at most 30 s), CTXSEG_WEIGHTS_TIMEOUT (30 s per connect / read).
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ctxseg.errors import UserError

CHUNK = 1 << 20
USER_AGENT = "ctxseg-weights"


class NotFound(Exception):
    """The server answered 404/410."""


class Unreachable(Exception):
    """No connection to the server at all (offline, refused, DNS): nothing was received."""


class Dropped(Exception):
    """The connection broke (or the server answered 5xx) after it was made; resumable."""


def _env_number(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        raise UserError(f"{name} must be a number, got '{os.environ[name]}'") from None


def settings() -> tuple[int, float, float]:
    return (
        int(_env_number("CTXSEG_WEIGHTS_RETRIES", 4)),
        _env_number("CTXSEG_WEIGHTS_BACKOFF", 1.0),
        _env_number("CTXSEG_WEIGHTS_TIMEOUT", 30.0),
    )


def hash_matches(digest: str, expected: str) -> bool:
    """Full digest equality, or (a published prefix) the digest starts with it."""
    return digest.lower().startswith(expected.lower()) and len(expected) >= 6


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def write_fault(path: Path, err: OSError) -> UserError:
    """A file-system fault in the cache as one message the user can act on."""
    reason = {
        errno.ENOSPC: "the disk is full",
        errno.EDQUOT: "the disk quota is exceeded",
        errno.EROFS: "the file system is read-only",
        errno.EACCES: "permission denied (read-only cache folder?)",
        errno.EPERM: "permission denied (read-only cache folder?)",
        errno.EFBIG: "the file size limit was reached",
    }.get(err.errno, err.strerror or str(err))
    return UserError(
        f"Could not write {path}: {reason} ({type(err).__name__}: {err}). Nothing was cached. "
        "Free space, or point CTXSEG_HOME at a writable folder with room."
    )


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive inter-process lock held while the block runs (fcntl.flock on `path`)."""
    import fcntl

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        raise write_fault(path, e) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _progress(label: str, enabled: bool):
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not enabled,
        transient=False,
    )


def _request_once(url: str, part: Path, timeout: float, on_bytes: Callable[[int, int | None], None]) -> None:
    """One request: append to `part` from its current size (Range), or restart it when the server
    ignores the Range. Raises NotFound / Unreachable / Dropped; write faults as OSError."""
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": USER_AGENT}
    if have:
        headers["Range"] = f"bytes={have}-"
    req = urllib.request.Request(url, headers=headers)
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)  # noqa: S310 - http(s) only (registry checks it)
    except urllib.error.HTTPError as e:
        if e.code in (404, 410):
            raise NotFound(f"HTTP {e.code} {e.reason}") from None
        if e.code == 416 and have:  # our .part is at or past the end: start over
            part.unlink(missing_ok=True)
            raise Dropped("HTTP 416 (range not satisfiable); restarting") from None
        if e.code >= 500 or e.code == 429:
            raise Dropped(f"HTTP {e.code} {e.reason}") from None
        raise NotFound(f"HTTP {e.code} {e.reason}") from None
    except http.client.HTTPException as e:  # the connection broke before a status line came
        raise Dropped(f"{type(e).__name__}: {e}") from None
    except (TimeoutError, urllib.error.URLError, ConnectionError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise Unreachable(f"{type(reason).__name__}: {reason}") from None
    with resp:
        status = resp.status
        length = resp.headers.get("Content-Length")
        length = int(length) if length and length.isdigit() else None
        if status == 206:
            start = _range_start(resp.headers.get("Content-Range", ""))
            if start != have:  # an answer for another range: start over
                part.unlink(missing_ok=True)
                raise Dropped(f"server sent bytes from {start}, not {have}; restarting")
            mode = "ab"
        else:  # 200: the server ignored the Range; the whole file comes again
            have, mode = 0, "wb"
        total = have + length if length is not None else None
        on_bytes(have, total)
        got = 0
        with open(part, mode) as f:
            while True:
                try:
                    block = resp.read(CHUNK)
                except (TimeoutError, http.client.HTTPException, ConnectionError) as e:
                    f.flush()
                    raise Dropped(f"connection dropped after {have + got} bytes ({type(e).__name__})") from None
                if not block:
                    break
                f.write(block)
                got += len(block)
                on_bytes(have + got, total)
            f.flush()
            os.fsync(f.fileno())
        if length is not None and got < length:
            raise Dropped(f"connection closed after {have + got} of {total} bytes")


def _range_start(content_range: str) -> int | None:
    # "bytes 100-199/200"
    try:
        return int(content_range.split()[1].split("-")[0])
    except (IndexError, ValueError):
        return None


def download(
    url: str,
    dest: Path,
    sha256: str,
    *,
    size: int | None = None,
    progress: bool = True,
    label: str | None = None,
    on_failure: Callable[[str, str], str] | None = None,
) -> Path:
    """Make `dest` the verified file behind `url` (no request at all when it is already there).

    `on_failure(kind, detail)` returns the user message for an unrecoverable failure (kind:
    "unreachable", "not found", "dropped"); the default names the URL and the detail."""
    dest = Path(dest)
    if dest.is_file():
        return dest
    lock = dest.parent / f".{dest.name}.lock"
    part = dest.parent / f"{dest.name}.part"
    message = on_failure or (lambda kind, detail: f"Cannot download {url} ({kind}): {detail}")
    with file_lock(lock):
        if dest.is_file():  # another process finished it while we waited
            return dest
        retries, backoff, timeout = settings()
        with _progress(label or dest.name, progress) as bar:
            task = bar.add_task(label or dest.name, total=size)

            def on_bytes(done: int, total: int | None) -> None:
                bar.update(task, completed=done, total=total or size)

            tries, last = 0, ""
            while True:
                tries += 1
                try:
                    _request_once(url, part, timeout, on_bytes)
                    break
                except NotFound as e:
                    raise UserError(message("not found", str(e))) from None
                except (Unreachable, Dropped) as e:
                    last = str(e)
                    if tries > retries:
                        kind = "unreachable" if isinstance(e, Unreachable) else "dropped"
                        raise UserError(message(kind, f"{last}; gave up after {tries} tries")) from None
                    time.sleep(min(30.0, backoff * 2 ** (tries - 1)))
                except OSError as e:  # writing the .part: full disk, read-only folder
                    part.unlink(missing_ok=True)
                    raise write_fault(part, e) from None
        digest = sha256_of(part)
        if sha256 and not hash_matches(digest, sha256):  # "": no published hash (the caller records one)
            part.unlink(missing_ok=True)
            raise UserError(
                f"Downloaded file from {url} has the wrong sha256; nothing was cached.\n"
                f"  expected: {sha256}\n  got:      {digest}"
            )
        try:
            os.replace(part, dest)
        except OSError as e:
            raise write_fault(dest, e) from None
        _fsync_dir(dest.parent)
    return dest
