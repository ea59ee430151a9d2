"""A killed run, resumed, reaches the same weights as an uninterrupted one (CPU, deterministic),
with all three context plug-ins composed (MCIBI memory, CAC, pixel contrast with its queues) and
in bf16; the resumed run leaves no temp files of the killed one and logs each step once."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import REPO, run_cli

# one thread per process: on a small, busy machine OpenMP threads spinning against each other
# make a step 30x slower
ENV = {"OMP_NUM_THREADS": "1"}
RECIPE = REPO / "tests" / "recipes" / "compose_all.toml"
ARGS = [
    "--recipe",
    str(RECIPE),
    "--set",
    "train.iters=6",
    "--set",
    "train.checkpoint_interval=2",
    "--set",
    "train.eval_interval=100",
    "--set",
    "train.log_interval=1",
    "--set",
    "train.deterministic=true",
    "--set",
    "data.num_workers=1",
    "--set",
    "data.batch_size=2",
    "--set",
    "data.crop_size=[64, 64]",
    "--set",
    "train.grad_accum=2",
    "--set",
    "train.mixed_precision='bf16'",
    "--set",
    "model.plugins.pixel_contrast.use_queue=true",
    "--set",
    "model.plugins.pixel_contrast.memory_size=8",
    "--no-progress",
]


@pytest.fixture(scope="module")
def synthetic_tiny(tmp_path_factory) -> Path:
    """8 training and 2 validation images: enough for a few steps and the final evaluation."""
    from ctxseg.data.prepare.synthetic import prepare_synthetic

    root = tmp_path_factory.mktemp("synthetic_tiny")
    prepare_synthetic(root, seed=0, sizes={"train": 8, "val": 2}, workers=1)
    return root


def test_killed_and_resumed_run_matches_uninterrupted(synthetic_tiny: Path, tmp_path: Path):
    data = ["--set", f"data.root='{synthetic_tiny}'"]
    run_cli("train", *ARGS, *data, "--runs-dir", str(tmp_path / "a"), cwd=tmp_path, env=ENV)
    ref = load_file(str((tmp_path / "a" / "latest" / "final.safetensors").resolve()))

    killed = run_cli(
        "train",
        *ARGS,
        *data,
        "--runs-dir",
        str(tmp_path / "b"),
        cwd=tmp_path,
        check=False,
        env={**ENV, "CTXSEG_FAULT_AT_STEP": "4"},
    )
    assert killed.returncode != 0  # SIGKILL right after the step-4 checkpoint
    run_b = (tmp_path / "b" / "latest").resolve()
    assert not (run_b / "final.safetensors").exists()
    state = torch.load(run_b / "checkpoints" / "iter_0000004.state.pt", weights_only=True)  # plain data only
    assert state["mixed_precision"] == "bf16" and state["step"] == 4
    # what a write killed half-way leaves, and log lines of steps the resumed run will redo
    stale = run_b / "checkpoints" / ".iter_0000006.safetensors.ctxseg-tmp-k1ll3d.safetensors"
    stale.write_bytes(b"half")
    with open(run_b / "log.jsonl", "a") as f:
        f.write(json.dumps({"step": 5, "loss": 1.0}) + "\n" + '{"step": 6, "lo')

    # `--resume <runs>/latest` given as a path (a symlink) resumes that run, in its own folder
    run_cli(
        "train",
        "--resume",
        str(tmp_path / "b" / "latest"),
        "--runs-dir",
        str(tmp_path / "b"),
        "--no-progress",
        cwd=tmp_path,
        env=ENV,
    )
    got = load_file(str(run_b / "final.safetensors"))
    assert ref.keys() == got.keys()
    assert any("memory" in k for k in got) and any("queue" in k for k in got)  # the plug-in state is part of it
    for k in ref:
        assert torch.equal(ref[k], got[k]), k
    assert not stale.exists()
    # the run's recipe.toml reads back as the recipe it trained (keys quoted as TOML needs)
    from ctxseg.config import validate_recipe
    from ctxseg.engine.checkpoint import read_checkpoint

    _, trained, _ = read_checkpoint(run_b / "final.safetensors")
    assert validate_recipe(tomllib.loads((run_b / "recipe.toml").read_text())).to_dict() == trained.to_dict()
    steps = [r["step"] for r in map(json.loads, (run_b / "log.jsonl").read_text().splitlines()) if "loss" in r]
    assert steps == [1, 2, 3, 4, 5, 6]
