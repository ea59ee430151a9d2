"""Shared helpers for the dataset-preparer tests, and tests of ctxseg.data.prepare.common.

Every prepare goes through the real CLI entry point (ctxseg.cli.main, argv parsing included);
the Cityscapes test runs it in a subprocess (run_cli), the others in-process, because each
subprocess pays several seconds of CLI start-up on this shared machine.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import cv2
import numpy as np

from ctxseg.data.prepare.common import bitmap_palette, check_split_sizes, source_checksum
from tests.conftest import run_cli


def write_image(path: Path, h: int = 6, w: int = 8, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    assert cv2.imwrite(str(path), img)


def write_gray(path: Path, lab: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), lab)


def snapshot(root: Path) -> dict[str, tuple[int, str]]:
    """Every file under root with its size, mtime and content hash (raw data must stay untouched)."""
    snap = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            st = p.stat()
            snap[p.relative_to(root).as_posix()] = (st.st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
    return snap


def cli_inproc(*args: str, monkeypatch, capsys) -> tuple[int, str]:
    """Run `ctxseg ARGS` in this process (same entry point as the console script)."""
    from ctxseg.cli import main

    monkeypatch.setattr(sys, "argv", ["ctxseg", *args])
    code = 0
    try:
        main()
    except SystemExit as e:
        code = int(e.code or 0)
    cap = capsys.readouterr()
    return code, cap.out + cap.err


def prepare_twice(
    name: str, root: Path, out: Path, monkeypatch, capsys, workers: int = 2, subprocess: bool = False
) -> tuple[dict, str]:
    """Prepare through the CLI (in a subprocess, or the same entry point in-process: each
    subprocess pays the CLI's start-up), then again: the second run must skip every label and
    leave every converted file byte-identical (and untouched); raw files never change."""
    raw_before = snapshot(root)
    args = ("prepare", name, "--root", str(root), "--out", str(out), "--workers", str(workers))
    if subprocess:
        stdout = run_cli(*args).stdout
    else:
        code, stdout = cli_inproc(*args, monkeypatch=monkeypatch, capsys=capsys)
        assert code == 0, stdout
    assert "prepared" in stdout, stdout
    meta = json.loads((out / "meta.json").read_text())
    written = {k: v for k, v in snapshot(out).items() if k.startswith("labels/")}
    code, text = cli_inproc(
        "prepare",
        name,
        "--root",
        str(root),
        "--out",
        str(out),
        "--workers",
        "1",
        monkeypatch=monkeypatch,
        capsys=capsys,
    )
    assert code == 0, text
    assert " 0 converted" in text, text
    after = {k: v for k, v in snapshot(out).items() if k.startswith("labels/")}
    assert after == written  # nothing rewritten
    assert json.loads((out / "meta.json").read_text()) == meta
    assert snapshot(root) == raw_before  # raw download untouched
    code, text = cli_inproc("prepare", name, "--out", str(out), "--check", monkeypatch=monkeypatch, capsys=capsys)
    assert code == 0 and "labels OK" in text, text
    return meta, stdout


def split_lines(out: Path, split: str) -> list[list[str]]:
    return [ln.split() for ln in (out / "splits" / f"{split}.txt").read_text().splitlines() if ln.strip()]


def read_back(meta_root: Path, meta: dict, key: str, rel: str) -> np.ndarray:
    base = Path(meta[key])
    base = base if base.is_absolute() else meta_root / base
    lab = cv2.imread(str(base / rel), cv2.IMREAD_UNCHANGED)
    assert lab is not None, base / rel
    return lab


def assert_no_copied_images(out: Path) -> None:
    assert not [p for p in out.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg")], "raw images must not be copied"


# --------------------------------------------------------------------------------------------


def test_split_size_messages():
    msgs = check_split_sizes({"train": 3, "val": 7}, {"train": 5, "val": 5, "test": 2})
    assert msgs == [
        "split 'train': 3 samples, the official count is 5 (2 missing)",
        "split 'val': 7 samples, the official count is 5 (2 extra)",
        "split 'test': 0 samples, the official count is 2 (2 missing)",
    ]
    assert check_split_sizes({"train": 5}, {"train": 5}) == []


def test_checksum_depends_on_listing(tmp_path):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    a.write_bytes(b"1")
    b.write_bytes(b"22")
    c1 = source_checksum([str(a), str(b)])
    assert c1 == source_checksum([str(b), str(a)])  # order-free
    b.write_bytes(b"333")
    assert source_checksum([str(a), str(b)]) != c1


def test_voc_bitmap_palette():
    pal = bitmap_palette(21)
    assert pal[0] == [0, 0, 0] and pal[1] == [128, 0, 0] and pal[15] == [192, 128, 128] and pal[20] == [0, 64, 128]


def test_strict_reports_and_fails_on_size_mismatch(tmp_path, monkeypatch, capsys):
    """A miniature dataset is smaller than the official one: a warning by default, exit 2 with --strict."""
    from tests.test_prepare_lip import make_lip

    root = make_lip(tmp_path / "raw")
    code, text = cli_inproc(
        "prepare",
        "lip",
        "--root",
        str(root),
        "--out",
        str(tmp_path / "out"),
        "--workers",
        "1",
        monkeypatch=monkeypatch,
        capsys=capsys,
    )
    assert code == 0 and "official count is 30462" in text and "missing" in text, text
    code, text = cli_inproc(
        "prepare",
        "lip",
        "--root",
        str(root),
        "--out",
        str(tmp_path / "out"),
        "--strict",
        monkeypatch=monkeypatch,
        capsys=capsys,
    )
    assert code == 2 and "--strict" in text, text


def test_check_reports_bad_files(tmp_path, monkeypatch, capsys):
    from tests.test_prepare_lip import make_lip

    root = make_lip(tmp_path / "raw")
    out = tmp_path / "out"
    code, _ = cli_inproc(
        "prepare",
        "lip",
        "--root",
        str(root),
        "--out",
        str(out),
        "--workers",
        "1",
        monkeypatch=monkeypatch,
        capsys=capsys,
    )
    assert code == 0
    bad = root / "TrainVal_parsing_annotations" / "val_segmentations" / "val_b.png"
    lab = cv2.imread(str(bad), cv2.IMREAD_UNCHANGED)
    lab[0, 0] = 42
    cv2.imwrite(str(bad), lab)
    code, text = cli_inproc("prepare", "lip", "--out", str(out), "--check", monkeypatch=monkeypatch, capsys=capsys)
    assert code == 2 and "val_b.png" in text and "42" in text, text
