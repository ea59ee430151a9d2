"""Re-runs that notice changed sources, and corrupt / truncated raw files reported one per file.

Raw trees are built in each official layout by the per-dataset tests' makers; files are then
changed or cut short the way a re-download or an interrupted copy would."""

from __future__ import annotations

import json
import os

import cv2
import numpy as np
import scipy.io

from tests.test_prepare_common import cli_inproc, read_back, split_lines, write_gray, write_image


def truncate(path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: max(1, int(len(data) * keep))])


def prepare(name, root, out, monkeypatch, capsys, *extra):
    return cli_inproc(
        "prepare",
        name,
        "--root",
        str(root),
        "--out",
        str(out),
        "--workers",
        "1",
        *extra,
        monkeypatch=monkeypatch,
        capsys=capsys,
    )


def test_changed_raw_label_is_converted_again(tmp_path, monkeypatch, capsys):
    """Same size, new content and mtime (a .mat of the same shape): the skip rule compares a per-file
    fingerprint of the source, not just the existence of the converted label."""
    from tests.test_prepare_pascal_context import make_context

    root = tmp_path / "raw"
    raw = make_context(root)
    out = tmp_path / "pc"
    code, text = prepare("pascal-context-60", root, out, monkeypatch, capsys)
    assert code == 0 and "3 converted" in text, text
    before = json.loads((out / "meta.json").read_text())
    mat = root / "trainval" / "2008_000003.mat"
    size = mat.stat().st_size
    new = np.full_like(raw["2008_000003"], 284)  # everything 'person' now
    scipy.io.savemat(mat, {"LabelMap": new})
    assert mat.stat().st_size == size
    st = mat.stat()
    os.utime(mat, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    code, text = prepare("pascal-context-60", root, out, monkeypatch, capsys)
    assert code == 0 and "1 converted, 2 already done" in text, text
    assert np.all(read_back(out, before, "label_root", "2008_000003.png") == 37)
    code, text = prepare("pascal-context-60", root, out, monkeypatch, capsys)
    assert code == 0 and "0 converted, 3 already done" in text, text
    # a touched file (same bytes, new mtime) is converted again too: cheap, and never stale
    os.utime(mat, ns=(st.st_atime_ns, st.st_mtime_ns + 2 * 10**9))
    code, text = prepare("pascal-context-60", root, out, monkeypatch, capsys)
    assert code == 0 and "1 converted, 2 already done" in text, text


def test_corrupt_mat_files_each_named_once(tmp_path, monkeypatch, capsys):
    """COCO-Stuff-10k: two truncated .mat files and one without variable S: three lines, exit 2, no traceback."""
    root = tmp_path / "raw"
    names = [f"COCO_train2014_{i:012d}" for i in range(1, 6)]
    (root / "imageLists").mkdir(parents=True)
    (root / "imageLists" / "train.txt").write_text("\n".join(names[:4]) + "\n")
    (root / "imageLists" / "test.txt").write_text(names[4] + "\n")
    (root / "annotations").mkdir()
    for k, n in enumerate(names):
        write_image(root / "images" / f"{n}.jpg", 4, 5, k)
        scipy.io.savemat(root / "annotations" / f"{n}.mat", {"S": np.full((4, 5), k + 1, np.uint16)})
    truncate(root / "annotations" / f"{names[1]}.mat", 0.4)
    truncate(root / "annotations" / f"{names[4]}.mat", 0.1)
    scipy.io.savemat(root / "annotations" / f"{names[2]}.mat", {"T": np.zeros((4, 5), np.uint16)})
    code, text = prepare("coco-stuff10k", root, tmp_path / "out", monkeypatch, capsys)
    assert code == 2 and "Traceback" not in text, text
    for n in (names[1], names[4], names[2]):
        assert text.count(f"{n}.mat") == 1, text
    assert names[0] not in text and names[3] not in text
    assert "3 file(s)" in text and not (tmp_path / "out" / "meta.json").exists()
    # after a fix, a re-run keeps the labels already converted and finishes
    for k in (1, 2, 4):
        scipy.io.savemat(root / "annotations" / f"{names[k]}.mat", {"S": np.full((4, 5), 7, np.uint16)})
    code, text = prepare("coco-stuff10k", root, tmp_path / "out", monkeypatch, capsys)
    assert code == 0 and "3 converted, 2 already done" in text, text


def test_corrupt_voc_png_and_sbd_mat(tmp_path, monkeypatch, capsys):
    from tests.test_prepare_voc import write_palette_png

    root = tmp_path / "raw"
    voc, sbd = root / "VOCdevkit" / "VOC2012", root / "benchmark_RELEASE" / "dataset"
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True)
    (voc / "ImageSets" / "Segmentation" / "train.txt").write_text("2007_000001\n")
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("2007_000002\n")
    (sbd / "cls").mkdir(parents=True)
    (sbd / "train.txt").write_text("2008_000001\n2008_000002\n")
    (sbd / "val.txt").write_text("")
    for k, n in enumerate(("2007_000001", "2007_000002", "2008_000001", "2008_000002")):
        write_image(voc / "JPEGImages" / f"{n}.jpg", 20, 30, k)
    rng = np.random.default_rng(0)
    for n in ("2007_000001", "2007_000002"):
        write_palette_png(voc / "SegmentationClass" / f"{n}.png", rng.integers(0, 21, (20, 30)).astype(np.uint8))
    for n in ("2008_000001", "2008_000002"):
        scipy.io.savemat(
            sbd / "cls" / f"{n}.mat", {"GTcls": {"Segmentation": rng.integers(0, 21, (20, 30)).astype(np.uint8)}}
        )
    truncate(voc / "SegmentationClass" / "2007_000002.png", 0.6)
    truncate(sbd / "cls" / "2008_000002.mat", 0.5)
    code, text = prepare("voc-aug", root, tmp_path / "out", monkeypatch, capsys)
    assert code == 2 and "Traceback" not in text, text
    assert text.count("2007_000002.png") == 1 and text.count("2008_000002.mat") == 1, text
    assert "2 file(s)" in text


def test_corrupt_cityscapes_polygons_json(tmp_path, monkeypatch, capsys):
    from tests.test_prepare_cityscapes import make_cityscapes

    root = tmp_path / "raw"
    make_cityscapes(root, polygons_for="aachen_000001_000020")
    poly = root / "gtFine" / "train" / "aachen" / "aachen_000001_000020_gtFine_polygons.json"
    truncate(poly, 0.5)
    png = root / "gtFine" / "val" / "frankfurt" / "frankfurt_000000_000019_gtFine_labelIds.png"
    truncate(png, 0.5)
    code, text = prepare("cityscapes", root, tmp_path / "out", monkeypatch, capsys)
    assert code == 2 and "Traceback" not in text, text
    assert text.count(poly.name) == 1 and text.count(png.name) == 1, text


def test_truncated_in_place_annotation_and_image_fail_prepare(tmp_path, monkeypatch, capsys):
    """ADE20K labels are read in place (not converted): every file the index points at is decoded once."""
    from ctxseg.data.prepare import common

    base = tmp_path / "raw" / "ADEChallengeData2016"
    rng = np.random.default_rng(1)
    for folder, prefix in (("training", "ADE_train"), ("validation", "ADE_val")):
        for i in (1, 2):
            write_image(base / "images" / folder / f"{prefix}_{i:08d}.jpg", 40, 50, i)
            write_gray(
                base / "annotations" / folder / f"{prefix}_{i:08d}.png", rng.integers(0, 151, (40, 50)).astype(np.uint8)
            )
    bad_ann = base / "annotations" / "validation" / "ADE_val_00000002.png"
    bad_img = base / "images" / "validation" / "ADE_val_00000001.jpg"
    good = bad_ann.read_bytes(), bad_img.read_bytes()
    truncate(bad_ann, 0.5)
    truncate(bad_img, 0.6)
    assert cv2.imread(str(bad_img)) is not None  # OpenCV 'reads' a truncated JPEG: not a check
    out = tmp_path / "ade"
    code, text = prepare("ade20k", tmp_path / "raw", out, monkeypatch, capsys)
    assert code == 2 and "Traceback" not in text, text
    assert text.count(bad_ann.name) == 1 and text.count(bad_img.name) == 1 and "2 file(s)" in text, text
    bad_ann.write_bytes(good[0])
    bad_img.write_bytes(good[1])
    calls = []
    real = common.validate_file
    monkeypatch.setattr(common, "validate_file", lambda p: (calls.append(str(p)), real(p)))
    code, text = prepare("ade20k", tmp_path / "raw", out, monkeypatch, capsys)
    assert code == 0, text
    assert sorted(calls) == sorted([str(bad_ann), str(bad_img)])  # the files validated before are not decoded again
    calls.clear()
    code, text = prepare("ade20k", tmp_path / "raw", out, monkeypatch, capsys)
    assert code == 0 and calls == [], text


def test_check_lists_every_bad_file_once_and_continues(tmp_path, monkeypatch, capsys):
    from tests.test_prepare_lip import make_lip

    root = make_lip(tmp_path / "raw")
    out = tmp_path / "out"
    code, text = prepare("lip", root, out, monkeypatch, capsys)
    assert code == 0, text
    assert len(split_lines(out, "trainval")) == 4  # trainval repeats train and val
    seg = root / "TrainVal_parsing_annotations"
    truncate(seg / "train_segmentations" / "100034_483681.png", 0.5)  # unreadable, first in the scan
    (seg / "train_segmentations" / "100035_11.png").write_bytes(b"")  # empty
    lab = cv2.imread(str(seg / "val_segmentations" / "val_b.png"), cv2.IMREAD_UNCHANGED)
    lab[0, 0] = 42
    cv2.imwrite(str(seg / "val_segmentations" / "val_b.png"), lab)
    code, text = cli_inproc("prepare", "lip", "--out", str(out), "--check", monkeypatch=monkeypatch, capsys=capsys)
    assert code == 2 and "Traceback" not in text, text
    for name in ("100034_483681.png", "100035_11.png", "val_b.png"):
        assert text.count(name) == 1, text
    assert "val_a.png" not in text and "42" in text and "3 label file(s)" in text


def test_changed_cityscapes_zips_are_read_again(tmp_path, monkeypatch, capsys):
    """Official zips: a re-downloaded gtFine zip with one changed label converts again; a changed image in
    leftImg8bit_trainvaltest.zip (same size) is extracted again."""
    import time
    import zipfile

    from tests.test_prepare_cityscapes import make_cityscapes

    staging = tmp_path / "staging"
    make_cityscapes(staging)
    root = tmp_path / "raw"
    root.mkdir()

    def pack():
        for name, top in (("leftImg8bit_trainvaltest.zip", "leftImg8bit"), ("gtFine_trainvaltest.zip", "gtFine")):
            with zipfile.ZipFile(root / name, "w") as z:
                for p in sorted((staging / top).rglob("*")):
                    if p.is_file():
                        z.write(p, p.relative_to(staging).as_posix())

    pack()
    out = tmp_path / "cs"
    code, text = prepare("cityscapes", root, out, monkeypatch, capsys)
    assert code == 0 and "4 converted" in text, text
    lab = staging / "gtFine" / "val" / "frankfurt" / "frankfurt_000000_000019_gtFine_labelIds.png"
    write_gray(lab, np.full((6, 10), 7, np.uint8))  # all road
    img = staging / "leftImg8bit" / "val" / "frankfurt" / "frankfurt_000000_000019_leftImg8bit.png"
    write_image(img, 6, 10, seed=99)
    time.sleep(2.1)  # zip time stamps have 2 s resolution
    os.utime(img)
    pack()
    code, text = prepare("cityscapes", root, out, monkeypatch, capsys)
    assert code == 0, text
    meta = json.loads((out / "meta.json").read_text())
    got = read_back(out, meta, "label_root", "gtFine/val/frankfurt/frankfurt_000000_000019_gtFine_labelTrainIds.png")
    assert np.all(got == 0)
    extracted = out / "raw" / "leftImg8bit" / "val" / "frankfurt" / img.name
    assert extracted.read_bytes() == img.read_bytes()
