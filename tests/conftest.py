"""Shared test helpers: golden data location, CLI runner, a small prepared synthetic dataset."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
GOLDEN = Path(os.environ.get("CTXSEG_GOLDEN", REPO.parent / "shared" / "golden"))

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
# the suite never writes into the user's cache (~/.cache/ctxseg): the layout verdict of this machine
# (ctxseg.engine.layout) is measured once into a shared temp folder; tests that need an empty cache
# set their own CTXSEG_HOME
os.environ.setdefault("CTXSEG_HOME", str(Path(tempfile.gettempdir()) / f"ctxseg-tests-home-{os.getuid()}"))


def golden(*parts: str) -> Path:
    """Path inside ../shared/golden (or $CTXSEG_GOLDEN). Missing golden data is a failure, not a skip."""
    path = GOLDEN.joinpath(*parts)
    assert path.exists(), f"golden data missing: {path} (set CTXSEG_GOLDEN)"
    return path


def run_cli(
    *args: str, cwd: Path | None = None, check: bool = True, env: dict | None = None, timeout: int = 600
) -> subprocess.CompletedProcess:
    """Run the real `ctxseg` CLI (python -m ctxseg) in a subprocess."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), "CTXSEG_RUNS": str((cwd or Path.cwd()) / "runs"), **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-m", "ctxseg", *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"ctxseg {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def synthetic_small(tmp_path_factory) -> Path:
    """A small prepared synthetic dataset (same generator and format as `ctxseg prepare synthetic`)."""
    from ctxseg.data.prepare.synthetic import prepare_synthetic

    root = tmp_path_factory.mktemp("synthetic")
    prepare_synthetic(root, seed=0, sizes={"train": 24, "val": 8}, workers=1)
    return root
