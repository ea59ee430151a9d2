"""Keep freed memory in the process between training/inference steps (glibc malloc on Linux).

A CPU training step allocates and frees hundreds of large tensors (activations, their gradients,
oneDNN scratch buffers), many above glibc's mmap threshold (128 KiB, growing up to 32 MiB). Such a
block is returned to the kernel when freed, so the next step maps it again and touches every page
anew: on a 2-core host a b2 256x512 OCRNet-HR18 step took ~0.95 million minor page faults and 4.4-4.9 s
of system time out of 6-7 s (see docs/benchmarks.md, "Allocator"). Telling malloc never to serve
large blocks by mmap and never to trim the heap keeps those pages mapped: the same step then takes
~80 k faults and < 1 s of system time (AMD EPYC, AVX2: ~20% faster). How much that buys depends on
what a page fault costs on the host: 8% on an AVX-512 Xeon VM with cheaper faults. The pages were in
use at the peak anyway, but heap fragmentation adds to the peak resident memory (measured +7% in the
training phase, +12% for the whole process), and the memory is kept until the process ends, which is
what a training or evaluation process wants.

`CTXSEG_MALLOC=system` leaves the C library's defaults alone (e.g. to compare, or when another
allocator such as jemalloc is preloaded).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from dataclasses import dataclass

ENV = "CTXSEG_MALLOC"
# <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
# the largest value mallopt takes (an int); the heap is then never trimmed in practice
_NEVER_TRIM = 2**31 - 1


@dataclass(frozen=True)
class AllocatorChoice:
    """What `keep_freed_memory` did, for the run log and `ctxseg bench`.

    Args:
        name: "keep" (freed blocks stay mapped) or "system" (the C library's defaults).
        reason: why, in a few words.
    """

    name: str
    reason: str


_applied: AllocatorChoice | None = None


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version.restype = ctypes.c_char_p
        libc.gnu_get_libc_version()  # musl and others have no such symbol
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        return libc
    except (OSError, AttributeError):
        return None


def _preloaded_allocator() -> str | None:
    preload = os.environ.get("LD_PRELOAD", "")
    for name in ("jemalloc", "tcmalloc", "mimalloc"):
        if name in preload:
            return name
    return None


def keep_freed_memory() -> AllocatorChoice:
    """Tune glibc malloc for repeated large allocations (once per process); says what was done and why."""
    global _applied
    if _applied is not None:
        return _applied
    setting = os.environ.get(ENV, "").strip().lower()
    if setting == "system":
        _applied = AllocatorChoice("system", f"{ENV}=system")
        return _applied
    if setting not in ("", "keep"):
        from ctxseg.errors import UserError

        raise UserError(f"{ENV}={setting!r}: use 'keep' (the default) or 'system'")
    other = _preloaded_allocator()
    if other:
        _applied = AllocatorChoice("system", f"{other} is preloaded")
        return _applied
    libc = _glibc()
    if libc is None:
        _applied = AllocatorChoice("system", "not glibc")
        return _applied
    ok = libc.mallopt(_M_MMAP_MAX, 0) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM) == 1
    _applied = (
        AllocatorChoice("keep", "glibc keeps freed blocks: no mmap, no trim")
        if ok
        else AllocatorChoice("system", "mallopt refused")
    )
    return _applied
