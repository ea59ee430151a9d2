"""Reliability of what ctxseg writes and reads back: run folders, atomic writes, resume states,
TOML that round-trips, and clear errors for bad settings (issue 12, items 1, 4, 6, 7, 8, 12, 13)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch

from ctxseg.config import load_recipe, to_toml, validate_recipe
from ctxseg.errors import UserError
from tests.conftest import REPO, run_cli

# ---- item 1: --resume resolves runs/latest once -------------------------------------------------


def test_resume_path_is_resolved_so_a_new_run_cannot_capture_the_resumed_one(tmp_path: Path):
    from ctxseg.cli.train import _resume_path
    from ctxseg.engine.runs import new_run_dir, set_latest

    runs = tmp_path / "runs"
    old = new_run_dir("demo", runs)
    (old / "checkpoints" / "iter_0000002.safetensors").write_bytes(b"x")
    (old / "checkpoints" / "iter_0000002.state.pt").write_bytes(b"x")
    set_latest(old)
    path = _resume_path(str(runs / "latest"), runs)  # the user's `--resume runs/latest`
    new = new_run_dir("demo-new", runs)
    set_latest(new)  # a new run starts meanwhile and takes `latest`
    assert path.parent.parent == old.resolve()
    assert "latest" not in path.parts


# ---- item 4: temp files of killed writes are recognisable and removed ----------------------------


def test_stale_temp_files_are_removed_and_real_files_kept(tmp_path: Path):
    from ctxseg.io import TEMP_MARK, atomic_path, remove_stale_temp_files, write_text

    write_text(tmp_path / "keep.txt", "ok")
    with pytest.raises(KeyError):
        with atomic_path(tmp_path / "sub" / "x.safetensors") as tmp:
            assert TEMP_MARK in tmp.name
            tmp.write_bytes(b"half")
            raise KeyError("a bug inside the block")
    # a write killed by SIGKILL leaves its temp file (no `finally` runs): simulate one
    stale = tmp_path / "sub" / f".iter_0000004.safetensors{TEMP_MARK}abc123.safetensors"
    stale.write_bytes(b"half")
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == [stale.name]  # the failed write cleaned up
    removed = remove_stale_temp_files(tmp_path)
    assert removed == [stale] and not stale.exists()
    assert (tmp_path / "keep.txt").read_text() == "ok"


# ---- item 6: file-system faults -------------------------------------------------------------------


def test_run_folders_are_unique_even_when_created_in_the_same_instant(tmp_path: Path, monkeypatch):
    from ctxseg.engine.runs import new_run_dir

    # another process creating the same name between a check and the mkdir: make every
    # existence check answer "free" so only an atomic create can tell
    monkeypatch.setattr(Path, "exists", lambda self: False)
    made = [new_run_dir("demo", tmp_path) for _ in range(5)]
    assert len({p.name for p in made}) == 5
    assert all((p / "checkpoints").is_dir() for p in made)


def test_recipe_name_cannot_escape_the_runs_folder(tmp_path: Path):
    from ctxseg.engine.runs import new_run_dir

    runs = tmp_path / "runs"
    for name in ("../../evil", "/abs/path", "..", "a/../../b"):
        path = new_run_dir(name, runs)
        assert path.resolve().parent == runs.resolve(), name
    assert not (tmp_path / "evil").exists() and list(tmp_path.iterdir()) == [runs]


def test_unwritable_runs_folder_is_one_clear_error(tmp_path: Path, monkeypatch):
    import errno

    from ctxseg.engine.runs import new_run_dir

    def readonly(self, *a, **k):
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(Path, "mkdir", readonly)
    with pytest.raises(UserError, match="Cannot create a run folder.*Read-only"):
        new_run_dir("demo", tmp_path / "runs")


def test_disk_full_while_writing_is_a_user_error_and_leaves_nothing(tmp_path: Path):
    # RLIMIT_FSIZE makes writes past the limit fail like a full disk (EFBIG; Python ignores SIGXFSZ)
    code = (
        "import resource, torch; from ctxseg.engine.checkpoint import save_state\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))\n"
        f"save_state(r'{tmp_path / 'big.state.pt'}', {{'w': torch.zeros(100000)}})\n"
    )
    code = (
        "import sys\nfrom ctxseg.errors import UserError\ntry:\n"
        + "".join("    " + l + "\n" for l in code.splitlines())
        + "except UserError as e:\n    print('USERERROR', e); sys.exit(2)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "USERERROR Could not write" in proc.stdout and "big.state.pt" in proc.stdout
    assert list(tmp_path.iterdir()) == []  # neither the file nor a temp file


# ---- item 13: permissions and durability of written files ---------------------------------------


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_written_files_follow_the_umask(tmp_path: Path, mask: int, mode: int):
    from ctxseg.engine.checkpoint import save_state
    from ctxseg.io import write_text

    old = os.umask(mask)
    try:
        write_text(tmp_path / "a.txt", "x")
        save_state(tmp_path / "s.state.pt", {"step": 1})
    finally:
        os.umask(old)
    for name in ("a.txt", "s.state.pt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name


def test_data_is_fsynced_before_the_rename(tmp_path: Path, monkeypatch):
    from ctxseg import io

    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(
        io.os, "fsync", lambda fd: (events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))), real_fsync(fd))
    )
    monkeypatch.setattr(io.os, "replace", lambda a, b: (events.append(("replace", str(a))), real_replace(a, b)))
    io.write_text(tmp_path / "f.txt", "data")
    kinds = [k for k, _ in events]
    assert "fsync" in kinds and kinds.index("fsync") < kinds.index("replace")
    assert events[kinds.index("fsync")][1] == events[kinds.index("replace")][1]  # the temp file itself


# ---- item 12: resume state is data, loaded with weights_only=True --------------------------------


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_resume_state_never_executes_code(tmp_path: Path, monkeypatch):
    from ctxseg.engine.checkpoint import load_state

    monkeypatch.chdir(tmp_path)
    path = tmp_path / "iter_0000002.state.pt"
    torch.save({"step": 2, "evil": _Payload()}, path)
    with pytest.raises(UserError, match="not a loadable ctxseg resume state"):
        load_state(path)
    assert not (tmp_path / "PWNED").exists()


def test_rng_and_scaler_states_round_trip_through_weights_only(tmp_path: Path):
    import random

    import numpy as np

    from ctxseg.engine.checkpoint import load_state, save_state
    from ctxseg.engine.trainer import rng_state, set_rng_state

    random.seed(3), np.random.seed(3), torch.manual_seed(3)
    np.random.randn()  # leaves a cached gaussian in numpy's state
    scaler = torch.amp.GradScaler("cpu", init_scale=512.0, growth_interval=7)
    save_state(tmp_path / "s.state.pt", {"rng": [rng_state()], "scaler": scaler.state_dict()})
    expected = (random.random(), np.random.randn(), torch.rand(3))
    state = load_state(tmp_path / "s.state.pt")  # weights_only=True inside
    set_rng_state(state["rng"][0])
    got = (random.random(), np.random.randn(), torch.rand(3))
    assert got[0] == expected[0] and got[1] == expected[1] and torch.equal(got[2], expected[2])
    again = torch.amp.GradScaler("cpu")
    again.load_state_dict(state["scaler"])
    assert again.get_scale() == 512.0 and again.get_growth_interval() == 7


# ---- item 7: TOML that round-trips ----------------------------------------------------------------


def test_recipe_toml_round_trips_with_keys_that_need_quoting():
    recipe = load_recipe(
        "demo",
        [
            'train.optimizer.custom_keys={"decode_head.conv_seg"={lr_mult=10.0}, "pos embed"={decay_mult=0.0}}',
            "description='" + "a long description " * 10 + "'",
        ],
    )
    text = to_toml(recipe.to_dict())
    again = validate_recipe(tomllib.loads(text))
    assert again.to_dict() == recipe.to_dict()
    assert again.train.optimizer.custom_keys["decode_head.conv_seg"] == {"lr_mult": 10.0}


def test_recipes_show_redirected_to_a_file_is_valid_toml(tmp_path: Path):
    long_desc = "description='" + "x" * 150 + "'"
    proc = run_cli(
        "recipes",
        "show",
        "demo",
        "--set",
        long_desc,
        "--set",
        'train.optimizer.custom_keys={"decode_head.conv_seg"={lr_mult=10.0}}',
        cwd=tmp_path,
    )
    parsed = tomllib.loads(proc.stdout)
    expected = load_recipe("demo", [long_desc, 'train.optimizer.custom_keys={"decode_head.conv_seg"={lr_mult=10.0}}'])
    assert validate_recipe(parsed).to_dict() == expected.to_dict()


# ---- item 8: bad settings are one message, exit 2 -------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        "train.log_interval",
        "train.eval_interval",
        "train.checkpoint_interval",
        "train.grad_accum",
        "train.keep_checkpoints",
        "data.batch_size",
    ],
)
def test_zero_intervals_are_rejected_when_the_recipe_loads(key: str):
    with pytest.raises(UserError, match=key.replace(".", r"\.")):
        load_recipe("demo", [f"{key}=0"])


def test_bad_scales_value_is_a_clear_error(tmp_path: Path):
    from ctxseg.cli.eval import parse_scales

    for bad in ("0.5,abc", "0,1.0", ",", "-1", "nan"):
        with pytest.raises(UserError, match="--scales"):
            parse_scales(bad)
    assert parse_scales("0.75, 1.0,1.25") == [0.75, 1.0, 1.25]
    proc = run_cli("eval", "--scales", "0.5,abc", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "--scales" in proc.stderr and "Traceback" not in proc.stderr


def test_a_plugin_import_error_does_not_make_bench_disappear(tmp_path: Path):
    code = (
        "import sys; sys.modules['ctxseg.cli.bench'] = None\n"  # importing it now raises ImportError
        "sys.argv = ['ctxseg', 'bench', '--recipe', 'demo']\nfrom ctxseg.cli import main; main()\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "`ctxseg bench` is unavailable" in proc.stderr and "ctxseg.cli.bench" in proc.stderr
    assert "No such command" not in proc.stderr and "Traceback" not in proc.stderr
