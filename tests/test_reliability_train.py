"""Training meets faults (issue 12, items 2, 3, 5, 6, 10): a diverging run keeps its last finite
checkpoint, bad data stops the run before the first step or with one clear message, file-system
faults and launch mistakes are reported, never a traceback."""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.conftest import REPO, run_cli

TINY = [
    "--recipe",
    "demo",
    "--set",
    "model.backbone.stem_channels=8",
    "--set",
    "model.backbone.base_channels=8",
    "--set",
    "model.head.channels=16",
    "--set",
    "model.aux_head.channels=8",
    "--set",
    "data.crop_size=[64, 64]",
    "--set",
    "data.batch_size=2",
    "--set",
    "data.num_workers=0",
    "--no-progress",
]


@pytest.fixture
def data(synthetic_small: Path, tmp_path: Path) -> Path:
    """A private copy of the small dataset that a test may damage."""
    return Path(
        shutil.copytree(synthetic_small, tmp_path / "data", ignore=shutil.ignore_patterns(".ctxseg-check-cache.json"))
    )


# one thread per process: on a small, busy machine OpenMP threads spinning against each other
# make a step 30x slower
ENV = {"OMP_NUM_THREADS": "1"}


def _train(data: Path, tmp_path: Path, *extra: str, **kw) -> subprocess.CompletedProcess:
    return run_cli(
        "train",
        *TINY,
        "--set",
        f"data.root='{data}'",
        *extra,
        "--runs-dir",
        str(tmp_path / "runs"),
        cwd=tmp_path,
        check=False,
        env=ENV,
        **kw,
    )


def _one_clear_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "DataLoader worker" not in proc.stderr, proc.stderr[-3000:]
    return proc.stderr


def _damage(path: Path) -> None:
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)  # a PNG signature, then nothing decodable


# ---- item 2 ----------------------------------------------------------------------------------------


def test_diverging_run_never_writes_or_rotates_away_to_non_finite_checkpoints(data: Path, tmp_path: Path):
    import torch

    proc = _train(
        data,
        tmp_path,
        "--set",
        "train.optimizer.type='sgd'",
        "--set",
        "train.optimizer.lr=1000.0",
        "--set",
        "train.schedule.warmup_iters=0",
        "--set",
        "train.iters=8",
        "--set",
        "train.checkpoint_interval=1",
        "--set",
        "train.eval_interval=100",
    )
    err = _one_clear_error(proc)
    run = (tmp_path / "runs" / "latest").resolve()
    ckpts = sorted((run / "checkpoints").glob("iter_*.safetensors"))
    assert ckpts, "the first steps were finite and must have been kept"
    for c in ckpts:
        assert all(bool(torch.isfinite(t).all()) for t in load_file(str(c)).values() if t.is_floating_point()), c
    assert not (run / "final.safetensors").exists()
    newest = ckpts[-1]
    step = int(newest.stem.split("_")[-1])
    flat = " ".join(err.split())
    assert f"last good checkpoint is {newest}" in flat and f"(step {step})" in flat
    assert f"at step {step + 1}" in flat  # the step that diverged is the one after the last good one


# ---- item 3 ----------------------------------------------------------------------------------------


def test_missing_val_split_stops_before_the_first_step(data: Path, tmp_path: Path):
    (data / "splits" / "val.txt").unlink()
    err = _one_clear_error(_train(data, tmp_path, "--set", "train.iters=2"))
    assert "Split 'val' not found" in err
    runs = tmp_path / "runs"
    assert not any(runs.rglob("iter_*")) and not any(runs.rglob("log.jsonl"))  # nothing trained


def test_every_image_and_label_is_checked_before_training(data: Path, tmp_path: Path):
    import cv2
    import numpy as np

    val = [line.split() for line in (data / "splits" / "val.txt").read_text().splitlines()]
    train = [line.split() for line in (data / "splits" / "train.txt").read_text().splitlines()]
    corrupt_val_image, small_val_label = data / val[3][0], data / val[5][1]
    bad_value_label, missing_label = data / train[5][1], data / train[9][1]
    _damage(corrupt_val_image)
    cv2.imwrite(str(small_val_label), np.zeros((10, 12), np.uint8))  # not its image's size
    lab = cv2.imread(str(bad_value_label), cv2.IMREAD_UNCHANGED)
    lab[0, 0] = 42  # 7 classes
    cv2.imwrite(str(bad_value_label), lab)
    missing_label.unlink()
    err = " ".join(_one_clear_error(_train(data, tmp_path, "--set", "train.iters=2")).split())
    assert "4 problem(s)" in err
    for bad in (corrupt_val_image, small_val_label, bad_value_label, missing_label):
        assert str(bad) in err, bad
    assert "label size 12x10 differs" in err and "[42]" in err
    assert not any((tmp_path / "runs").rglob("log.jsonl"))  # nothing trained


def test_data_check_is_cached_by_file_fingerprint(data: Path, monkeypatch):
    from ctxseg.config import load_recipe
    from ctxseg.data import check
    from ctxseg.data.index import PreparedIndex

    cfg = load_recipe("demo", [f"data.root='{data}'"]).data
    index = PreparedIndex.open(data)
    calls = []
    real = check.check_sample
    monkeypatch.setattr(check, "check_sample", lambda s, c: (calls.append(s.image), real(s, c))[1])
    assert check.check_data(index, ["train", "val"], cfg) == []
    assert len(calls) == 32  # 24 train + 8 val, all read once
    calls.clear()
    assert check.check_data(index, ["train", "val"], cfg) == []
    assert calls == []  # nothing changed: nothing re-read
    changed = data / (data / "splits" / "val.txt").read_text().split()[0]
    os.utime(changed, ns=(1, 1))  # a new fingerprint
    assert check.check_data(index, ["train", "val"], cfg) == []
    assert calls == [changed]


# ---- item 5 ----------------------------------------------------------------------------------------


def test_corrupt_image_met_during_training_is_one_message(data: Path, tmp_path: Path):
    first = (data / "splits" / "train.txt").read_text().split("\n")
    for line in first:  # every training image: the very first batch meets one
        if line:
            _damage(data / line.split()[0])
    err = _one_clear_error(
        _train(
            data, tmp_path, "--set", "train.iters=2", "--set", "train.check_labels=false", "--set", "data.num_workers=1"
        )
    )
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) <= 3, err
    assert "Cannot read image" in err and "images/train/train_00" in err.replace("\n", "")


# ---- item 6 ----------------------------------------------------------------------------------------


def test_unwritable_runs_folder_is_one_clear_error(data: Path, tmp_path: Path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    proc = run_cli(
        "train",
        *TINY,
        "--set",
        f"data.root='{data}'",
        "--set",
        "train.iters=1",
        "--runs-dir",
        str(blocker / "runs"),
        cwd=tmp_path,
        check=False,
        env=ENV,
    )
    assert "Cannot create a run folder" in _one_clear_error(proc)


def test_disk_full_during_a_checkpoint_is_one_clear_error(data: Path, tmp_path: Path):
    def limit_file_size():  # writes past 64 KiB fail with EFBIG, like a full disk (Python ignores SIGXFSZ)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))

    cmd = [
        sys.executable,
        "-m",
        "ctxseg",
        "train",
        *TINY,
        "--set",
        f"data.root='{data}'",
        "--set",
        "train.iters=1",
        "--set",
        "train.check_labels=false",
        "--runs-dir",
        str(tmp_path / "runs"),
    ]
    proc = subprocess.run(
        cmd,
        cwd=tmp_path,
        env={**os.environ, **ENV, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=600,
        preexec_fn=limit_file_size,
    )
    err = _one_clear_error(proc)
    assert "Could not write" in err and "File too large" in err
    run = (tmp_path / "runs" / "latest").resolve()
    written = sorted(p.name for p in run.rglob("*") if p.is_file())
    assert written == ["log.jsonl", "recipe.toml"], written  # no partial weights, no temp files


# ---- item 10 ---------------------------------------------------------------------------------------


def test_launch_that_asked_for_more_processes_warns(data: Path, tmp_path: Path):
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--num_processes",
        "2",
        "--cpu",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "-m",
        "ctxseg",
        "train",
        *TINY,
        "--set",
        f"data.root='{data}'",
        "--set",
        "train.iters=1",
        "--runs-dir",
        str(tmp_path / "runs"),
    ]
    proc = subprocess.run(
        cmd,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "1 process on cpu, mixed precision no" in proc.stdout
    assert "asked for 2 processes but 1 is running" in " ".join(proc.stderr.split())


# ---- item 12 ---------------------------------------------------------------------------------------


def test_grad_scaler_state_is_saved_and_restored_on_resume(synthetic_small: Path, tmp_path: Path, monkeypatch):
    """fp16 runs on GPUs keep a loss scale that changes during training; resume must restore it.
    (On this CPU machine Accelerate makes no scaler, so one is given to the trainer.)"""
    import torch

    from ctxseg.config import load_recipe
    from ctxseg.engine.checkpoint import load_state
    from ctxseg.engine.trainer import Trainer

    monkeypatch.setenv("CTXSEG_RUNS", str(tmp_path / "runs"))
    recipe = load_recipe(
        "demo",
        [
            f"data.root='{synthetic_small}'",
            "model.backbone.stem_channels=8",
            "model.backbone.base_channels=8",
            "model.head.channels=16",
            "model.aux_head.channels=8",
            "train.iters=2",
            "train.check_labels=false",
        ],
    )
    trainer = Trainer(recipe, tmp_path / "runs", progress=False)
    trainer.acc.scaler = torch.amp.GradScaler("cpu", init_scale=256.0, growth_interval=5)
    trainer.save(1)
    path = trainer.run_dir / "checkpoints" / "iter_0000001.safetensors"
    state = load_state(path.with_suffix(".state.pt"))
    assert state["scaler"]["scale"] == 256.0 and state["scaler"]["growth_interval"] == 5

    import accelerate

    real_prepare = accelerate.Accelerator.prepare

    def prepare_with_scaler(self, *args, **kw):  # what Accelerate does for fp16 on a GPU
        self.scaler = torch.amp.GradScaler("cpu")
        return real_prepare(self, *args, **kw)

    monkeypatch.setattr(accelerate.Accelerator, "prepare", prepare_with_scaler)
    resumed = Trainer(recipe, tmp_path / "runs", resume=path, progress=False)
    assert resumed.acc.scaler.get_scale() == 256.0 and resumed.acc.scaler.get_growth_interval() == 5
    assert resumed.step == 1 and resumed.run_dir == trainer.run_dir
