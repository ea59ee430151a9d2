"""Two CPU processes (gloo) train a few steps through Accelerate; replicas must stay identical."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO


def test_two_process_cpu_training_keeps_replicas_identical(synthetic_small: Path, tmp_path: Path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "CTXSEG_RUNS": str(tmp_path / "runs")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533", "-m", "ctxseg",
           "train", "--recipe", "demo", "--set", f"data.root='{synthetic_small}'", "--set", "train.iters=3",
           "--set", "train.eval_interval=3", "--set", "data.batch_size=2", "--set", "data.num_workers=0",
           "--set", "model.norm='SyncBN'", "--no-progress"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = [json.loads(l) for l in ((tmp_path / "runs" / "latest").resolve() / "log.jsonl").read_text().splitlines()]
    rep = [r for r in log if "replicas" in r]
    assert rep and rep[-1]["replicas"] == 2 and rep[-1]["replicas_identical"] is True
    assert any("val/mIoU" in r for r in log)
