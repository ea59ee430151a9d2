"""Two CPU processes (gloo) through Accelerate, with all three context plug-ins composed (MCIBI
memory all-reduce, pixel-contrast queue all-gather, CAC) in bf16: replicas stay identical, the
logged val mIoU is the one `ctxseg eval` gives for the saved weights, and a fault that only one
process sees stops both processes quickly with its message (issue 12, items 9 and 11)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, run_cli

RECIPE = REPO / "tests" / "recipes" / "compose_all.toml"
TINY = [
    "--set",
    "data.batch_size=2",
    "--set",
    "data.num_workers=0",
    "--set",
    "data.crop_size=[64, 64]",
    "--set",
    "train.mixed_precision='bf16'",
    "--set",
    "model.plugins.pixel_contrast.use_queue=true",
    "--set",
    "model.plugins.pixel_contrast.memory_size=8",
    "--no-progress",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def synthetic_tiny(tmp_path_factory) -> Path:
    from ctxseg.data.prepare.synthetic import prepare_synthetic

    root = tmp_path_factory.mktemp("synthetic_tiny_dist")
    prepare_synthetic(root, seed=0, sizes={"train": 8, "val": 2}, workers=1)
    return root


def torchrun(tmp_path: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "CTXSEG_RUNS": str(tmp_path / "runs")}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        "-m",
        "ctxseg",
        "train",
        "--recipe",
        str(RECIPE),
        *TINY,
        *args,
    ]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)


def test_two_process_training_keeps_replicas_identical_and_evaluates_the_saved_weights(
    synthetic_tiny: Path, tmp_path: Path
):
    proc = torchrun(
        tmp_path,
        "--set",
        f"data.root='{synthetic_tiny}'",
        "--set",
        "train.iters=3",
        "--set",
        "train.eval_interval=3",
        "--set",
        "model.norm='SyncBN'",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 processes on cpu, mixed precision bf16" in proc.stdout
    run = (tmp_path / "runs" / "latest").resolve()
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    rep = [r for r in log if "replicas" in r]
    assert rep and rep[-1]["replicas"] == 2 and rep[-1]["replicas_identical"] is True
    val = [r for r in log if "val/mIoU" in r]
    assert val and val[-1]["step"] == 3 and val[-1]["eval_weights"] == "process 0 (saved)"
    # the periodic evaluation (split over both processes) equals a one-process `ctxseg eval` of the file
    run_cli(
        "eval",
        "--checkpoint",
        str(run / "final.safetensors"),
        "--no-save-preds",
        "--out",
        str(tmp_path / "ev"),
        cwd=tmp_path,
    )
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["mIoU"] == pytest.approx(val[-1]["val/mIoU"], abs=1e-12)
    assert metrics["aAcc"] == pytest.approx(val[-1]["val/aAcc"], abs=1e-12)


def _damage(path: Path) -> None:
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)


def launch_each(tmp_path: Path, *args: str, timeout: int) -> list[subprocess.CompletedProcess]:
    """Start the two processes directly (no launcher that kills the rest when one fails), so each
    one has to stop by itself; a process still waiting in a collective fails the test."""
    port = free_port()
    procs = []
    for rank in range(2):
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "OMP_NUM_THREADS": "1",
            "CTXSEG_RUNS": str(tmp_path / "runs"),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": "2",
            "LOCAL_WORLD_SIZE": "2",
        }
        cmd = [sys.executable, "-m", "ctxseg", "train", "--recipe", str(RECIPE), *TINY, *args]
        procs.append(
            subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        )
    results, deadline = [], time.time() + timeout
    try:
        for rank, p in enumerate(procs):
            out, err = p.communicate(timeout=max(1.0, deadline - time.time()))
            results.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    except subprocess.TimeoutExpired:
        pytest.fail(f"process {len(results)} did not stop within {timeout}s (hung in a collective?)")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return results


@pytest.mark.parametrize("where", ["data_check", "training"])
def test_a_fault_only_process_1_sees_stops_both_processes(synthetic_tiny: Path, tmp_path: Path, where: str):
    import shutil

    from ctxseg.data.dataset import TrainBatchSampler

    data = Path(
        shutil.copytree(synthetic_tiny, tmp_path / "data", ignore=shutil.ignore_patterns(".ctxseg-check-cache.json"))
    )
    train = [line.split() for line in (data / "splits" / "train.txt").read_text().splitlines()]
    if where == "data_check":
        # process r checks samples r, r+2, ...: sample 1 belongs to process 1 only
        bad = [data / train[1][1]]
        extra = ["--set", "train.iters=2"]
    else:
        # the second batch of process 1 (process 0 never reads those samples in two steps)
        batches = iter(TrainBatchSampler(len(train), 2, 0, rank=1, world=2))
        next(batches)
        bad = [data / train[i][0] for i, _ in next(batches)]
        extra = ["--set", "train.iters=2", "--set", "train.check_labels=false"]
    for p in bad:
        _damage(p)
    # generous for a busy 2-core machine; an unagreed stop waits for the 30-minute gloo timeout
    rank0, rank1 = launch_each(tmp_path, "--set", f"data.root='{data}'", *extra, timeout=300)
    for proc in (rank0, rank1):
        err = " ".join(proc.stderr.split())
        assert proc.returncode == 2, proc.stderr[-3000:]
        assert str(bad[0]) in err and "Traceback" not in proc.stderr
    if where == "training":  # only process 1 read the file; process 0 stopped with its message
        assert "seen by process 1 of 2" in " ".join(rank0.stderr.split())
        assert "seen by process" not in rank1.stderr
    else:  # the check's findings are shared: both report them as their own
        assert "nothing was trained" in rank0.stderr and not any((tmp_path / "runs").rglob("log.jsonl"))


def _agree_worker(rank: int, port: int, results):
    import types

    import torch
    import torch.distributed as dist

    from ctxseg.engine.trainer import Trainer, TrainingDiverged

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    fake = types.SimpleNamespace(world=2, rank=rank, acc=types.SimpleNamespace(device=torch.device("cpu")))
    try:
        Trainer._agree(fake, None)  # nobody saw a fault: everyone continues
        error = TrainingDiverged("Loss became nan at step 7") if rank == 1 else None
        Trainer._agree(fake, error)
        results.put((rank, "continued"))
    except TrainingDiverged as e:
        results.put((rank, f"{type(e).__name__}: {e}"))
    finally:
        dist.destroy_process_group()


def test_stop_flags_are_agreed_across_processes():
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_agree_worker, args=(r, port, results)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert all(p.exitcode == 0 for p in procs)
    got = dict(results.get(timeout=5) for _ in range(2))
    assert got[1] == "TrainingDiverged: Loss became nan at step 7"
    assert got[0] == "TrainingDiverged: Loss became nan at step 7 (seen by process 1 of 2)"
