"""ctxseg.engine.allocator: freed large blocks stay mapped, so repeated steps stop re-faulting pages."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from ctxseg.engine import allocator

# In a fresh process (the setting is process-wide): allocate and free a 64 MiB block 20 times, touching
# every page, and count the minor page faults that cost.
PROBE = """
import json, resource, sys
import torch
from ctxseg.engine.allocator import keep_freed_memory
choice = keep_freed_memory()
torch.set_num_threads(1)
# warm-up: glibc's heap reaches its steady state (a few freed blocks coalesce) within a few rounds
for _ in range(12):
    torch.ones(16 * 2**20).sum()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    torch.ones(16 * 2**20).sum()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"name": choice.name, "reason": choice.reason, "faults": faults}))
"""


def _probe(setting: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != allocator.ENV}
    if setting is not None:
        env[allocator.ENV] = setting
    env.pop("LD_PRELOAD", None)
    res = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(allocator._glibc() is None, reason="glibc malloc only (Linux)")
def test_freed_blocks_are_not_faulted_in_again():
    kept, system = _probe(None), _probe("system")
    assert (kept["name"], system["name"]) == ("keep", "system")
    assert system["reason"] == "CTXSEG_MALLOC=system"
    pages = 20 * 64 * 2**20 // 4096
    # glibc's default returns every 64 MiB block to the kernel: each round faults all its pages in again
    assert system["faults"] > 0.9 * pages
    # kept: the block is reused from the heap, no new pages
    assert kept["faults"] < 0.1 * pages


def test_bad_setting_is_a_user_error(monkeypatch):
    from ctxseg.errors import UserError

    monkeypatch.setattr(allocator, "_applied", None)
    monkeypatch.setenv(allocator.ENV, "fast")
    with pytest.raises(UserError, match="CTXSEG_MALLOC='fast'"):
        allocator.keep_freed_memory()


def test_a_preloaded_allocator_is_left_alone(monkeypatch):
    monkeypatch.setattr(allocator, "_applied", None)
    monkeypatch.delenv(allocator.ENV, raising=False)
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2")
    choice = allocator.keep_freed_memory()
    assert (choice.name, choice.reason) == ("system", "jemalloc is preloaded")
