"""A killed run, resumed, reaches the same weights as an uninterrupted one (CPU, deterministic)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from tests.conftest import run_cli

ARGS = ["--recipe", "demo", "--set", "train.iters=6", "--set", "train.checkpoint_interval=2", "--set", "train.eval_interval=100",
        "--set", "train.deterministic=true", "--set", "data.num_workers=1", "--set", "data.batch_size=2",
        "--set", "train.grad_accum=2", "--no-progress"]


def test_killed_and_resumed_run_matches_uninterrupted(synthetic_small: Path, tmp_path: Path):
    data = ["--set", f"data.root='{synthetic_small}'"]
    run_cli("train", *ARGS, *data, "--runs-dir", str(tmp_path / "a"), cwd=tmp_path)
    ref = load_file(str((tmp_path / "a" / "latest" / "final.safetensors").resolve()))

    killed = run_cli("train", *ARGS, *data, "--runs-dir", str(tmp_path / "b"), cwd=tmp_path, check=False,
                     env={"CTXSEG_FAULT_AT_STEP": "4"})
    assert killed.returncode != 0  # SIGKILL right after the step-4 checkpoint
    run_b = (tmp_path / "b" / "latest").resolve()
    assert not (run_b / "final.safetensors").exists()
    assert (run_b / "checkpoints" / "iter_0000004.state.pt").is_file()

    run_cli("train", "--resume", "--runs-dir", str(tmp_path / "b"), "--no-progress", cwd=tmp_path)
    got = load_file(str(run_b / "final.safetensors"))
    assert ref.keys() == got.keys()
    for k in ref:
        assert torch.equal(ref[k], got[k]), k
