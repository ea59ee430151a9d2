"""`ctxseg prepare folder`: your own images and masks in the plain, CVAT/VOC and Roboflow layouts.

Every export is generated here (cv2 / PIL / numpy, a few pixels per image) and every converted label
is compared, label for label, with the array that generated it. The prepares run through the real
CLI entry point in-process (tests/test_prepare_common.cli_inproc); the bad-input case runs the CLI in
a subprocess (exit code 2, one line per problem, nothing written).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from ctxseg.data.index import PreparedIndex
from ctxseg.io import read_image, read_label
from tests.conftest import run_cli
from tests.test_prepare_common import cli_inproc, snapshot, split_lines


def img(path: Path, h: int = 5, w: int = 7, seed: int = 0) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    a = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    assert cv2.imwrite(str(path), a)
    return a


def gray(path: Path, lab: np.ndarray) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), lab)
    return lab


def rgb_mask(path: Path, idx: np.ndarray, colours: list) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.array(colours, np.uint8)[idx]
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def lab(seed: int, n: int, h: int = 5, w: int = 7, dtype=np.uint8) -> np.ndarray:
    return np.random.default_rng(100 + seed).integers(0, n, (h, w)).astype(dtype)


def prepare(root: Path, out: Path, *extra: str, monkeypatch, capsys, ok: bool = True) -> tuple[int, str]:
    args = ("prepare", "folder", "--root", str(root), "--out", str(out), "--workers", "1", *extra)
    code, text = cli_inproc(*args, monkeypatch=monkeypatch, capsys=capsys)
    if ok:
        assert code == 0, text
    return code, " ".join(text.split())  # rich wraps long lines


def labels_of(out: Path, split: str) -> dict[str, np.ndarray]:
    """{image stem: label array} of a split, read from the prepared index."""
    return {Path(i).stem: read_label(out / "labels" / lb) for i, lb in split_lines(out, split)}


def bitmap_palette_flat() -> list[int]:
    from ctxseg.data.prepare.common import bitmap_palette

    return [c for rgb in bitmap_palette(256) for c in rgb]


def meta_of(out: Path) -> dict:
    return json.loads((out / "meta.json").read_text())


# --------------------------------------------------------------------------------------------
# layouts


def test_plain_by_stem_val_fraction(tmp_path, monkeypatch, capsys):
    root, out = tmp_path / "export", tmp_path / "out"
    raw = {}
    for k in range(10):
        img(root / "images" / f"im{k}.jpg", seed=k)
        raw[f"im{k}"] = gray(root / "masks" / f"im{k}.png", lab(k, 3))
    raw["im0"][0, 0] = 255  # the ignore index stays
    gray(root / "masks" / "im0.png", raw["im0"])
    img(root / "images" / "nomask.png", seed=99)  # no mask -> test
    _, text = prepare(root, out, monkeypatch=monkeypatch, capsys=capsys)
    meta = meta_of(out)
    assert meta["classes"] == ["class_0", "class_1", "class_2"] and meta["num_classes"] == 3
    assert meta["ignore_index"] == 255 and meta["reduce_zero_label"] is False and meta["preparer"] == "folder"
    assert len(meta["palette"]) == 3 and meta["layout"] == "plain"
    assert meta["splits"] == {"train": 9, "val": 1, "test": 1, "trainval": 10}
    assert "--val-fraction 0.1 --seed 0" in text and "1 image(s) without mask -> test" in text
    assert split_lines(out, "test") == [["test/nomask.png"]]
    got = {**labels_of(out, "train"), **labels_of(out, "val")}
    assert got.keys() == raw.keys()
    for k, v in raw.items():
        assert got[k].dtype == np.uint8 and np.array_equal(got[k], v), k
    counts = sum(np.bincount(raw[k][raw[k] != 255], minlength=3) for k in labels_of(out, "train"))
    assert meta["class_pixel_counts"] == counts.tolist()
    # images are linked, not copied, and read back as the raw ones
    index = PreparedIndex.open(out)
    for s in index.samples("train"):
        assert s.image.is_symlink()
        assert np.array_equal(read_image(s.image), cv2.imread(str(root / "images" / s.image.name)))
    # deterministic: another seed moves the val image, the same seed does not
    val = split_lines(out, "val")
    prepare(root, tmp_path / "out2", monkeypatch=monkeypatch, capsys=capsys)
    assert split_lines(tmp_path / "out2", "val") == val
    prepare(root, tmp_path / "out3", "--seed", "3", monkeypatch=monkeypatch, capsys=capsys)
    assert split_lines(tmp_path / "out3", "val") != val
    code, text = cli_inproc("prepare", "folder", "--out", str(out), "--check", monkeypatch=monkeypatch, capsys=capsys)
    assert code == 0 and "labels OK" in text


def test_plain_suffix_split_folders_16bit_tiff_classes(tmp_path, monkeypatch, capsys):
    root, out = tmp_path / "export", tmp_path / "out"
    raw = {}
    for split, n in (("train", 3), ("valid", 2), ("test", 1)):
        for k in range(n):
            stem = f"{split}{k}"
            img(root / "images" / split / f"{stem}.png", seed=k)
            v = lab(k, 4, dtype=np.uint16)
            v[0, :2] = 1000  # the input's ignore value
            if k == 0:  # 16-bit PNG
                gray(root / "labels" / split / f"{stem}_m.png", v)
            else:  # TIFF (16-bit)
                gray(root / "labels" / split / f"{stem}_m.tif", v)
            raw[stem] = np.where(v == 1000, 255, v).astype(np.uint8)
    names = tmp_path / "names.json"
    names.write_text(json.dumps(["sky", "road", "car", "tree"]))
    prepare(
        root,
        out,
        "--mask-suffix",
        "_m",
        "--classes",
        str(names),
        "--ignore-index",
        "1000",
        monkeypatch=monkeypatch,
        capsys=capsys,
    )
    meta = meta_of(out)
    assert meta["classes"] == ["sky", "road", "car", "tree"] and meta["num_classes"] == 4
    assert meta["splits"] == {"train": 3, "val": 2, "test": 1, "trainval": 5}
    assert meta["input_ignore_index"] == 1000 and meta["ignore_index"] == 255
    for split in ("train", "val", "test"):
        for stem, v in labels_of(out, split).items():
            assert np.array_equal(v, raw[stem]), stem
    assert len(labels_of(out, "test")) == 1  # a labelled test split keeps its labels


def test_split_lists_reduce_zero_label(tmp_path, monkeypatch, capsys):
    root, out, lists = tmp_path / "export", tmp_path / "out", tmp_path / "lists"
    raw = {}
    for k in range(5):
        img(root / "images" / f"a{k}.{'webp' if k == 4 else 'bmp'}", seed=k)
        raw[f"a{k}"] = gray(root / "annotations" / f"a{k}.png", lab(k, 4))  # 0 = other, classes 1..3
    img(root / "images" / "unlisted.webp", seed=9)
    lists.mkdir()
    (lists / "train.txt").write_text("a0\na1.bmp\na2\n")
    (lists / "val.txt").write_text("a3\n")
    (lists / "test.txt").write_text("a4\n")
    classes = tmp_path / "classes.txt"
    classes.write_text("cat\ndog\nbird\n")
    _, text = prepare(
        root,
        out,
        "--splits",
        str(lists),
        "--reduce-zero-label",
        "--classes",
        str(classes),
        monkeypatch=monkeypatch,
        capsys=capsys,
    )
    meta = meta_of(out)
    assert meta["reduce_zero_label"] is True and meta["num_classes"] == 3 and meta["classes"] == ["cat", "dog", "bird"]
    assert meta["splits"] == {"train": 3, "val": 1, "test": 1, "trainval": 4}
    assert "1 image(s) in no list" in text
    for split in ("train", "val", "test"):
        for stem, v in labels_of(out, split).items():
            assert np.array_equal(v, raw[stem])  # stored raw; reduced when loading (as ADE20K)
    test = PreparedIndex.open(out).samples("test")
    assert test[0].image.suffix == ".webp" and read_image(test[0].image).shape == (5, 7, 3)
    train = [raw[f"a{k}"] for k in range(3)]
    assert meta["class_pixel_counts"] == sum(np.bincount(v[v > 0] - 1, minlength=3) for v in train).tolist()


LABELMAP = "# label:color_rgb:parts:actions\nbackground:0,0,0::\ncat:255,0,0::\ndog:0,255,0::\n"


def test_cvat_colour_masks_with_labelmap(tmp_path, monkeypatch, capsys):
    root, out = tmp_path / "cvat", tmp_path / "out"
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "labelmap.txt").write_text(LABELMAP)
    colours = [(0, 0, 0), (255, 0, 0), (0, 255, 0)]
    raw = {}
    for k in range(4):
        img(root / "JPEGImages" / f"frame_{k:06d}.jpg", seed=k)
        raw[f"frame_{k:06d}"] = idx = lab(k, 3)
        rgb_mask(root / "SegmentationClass" / f"frame_{k:06d}.png", idx, colours)
    # a VOC-style palette PNG whose border colour (224,224,192) becomes the ignore index
    img(root / "JPEGImages" / "frame_000004.jpg", seed=4)
    p = lab(4, 3)
    p[2, :] = 3
    im = Image.fromarray(p)
    im.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 224, 224, 192] + [0] * (256 * 3 - 12))
    im.save(root / "SegmentationClass" / "frame_000004.png")
    raw["frame_000004"] = np.where(p == 3, 255, p).astype(np.uint8)
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("frame_000000\nframe_000001\nframe_000004\n")
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("frame_000002\nframe_000003\n")
    prepare(root, out, monkeypatch=monkeypatch, capsys=capsys)
    meta = meta_of(out)
    assert meta["layout"] == "cvat" and meta["mask_format"] == "colour"
    assert meta["classes"] == ["background", "cat", "dog"]
    assert meta["palette"] == [[0, 0, 0], [255, 0, 0], [0, 255, 0]]
    assert meta["splits"] == {"train": 3, "val": 2, "trainval": 5}
    for split in ("train", "val"):
        for stem, v in labels_of(out, split).items():
            assert np.array_equal(v, raw[stem]), stem


def test_voc_palette_masks_without_labelmap_default_list(tmp_path, monkeypatch, capsys):
    root, out = tmp_path / "voc", tmp_path / "out"
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    raw = {}
    for k in range(4):
        img(root / "JPEGImages" / f"{k}.jpg", seed=k)
        v = lab(k, 21)
        v[0, 0] = 255
        (root / "SegmentationClass").mkdir(exist_ok=True)
        pim = Image.fromarray(v)
        pim.putpalette(bitmap_palette_flat())
        assert pim.mode == "P"
        pim.save(root / "SegmentationClass" / f"{k}.png")
        raw[str(k)] = v
    img(root / "JPEGImages" / "extra.jpg")  # not listed, no mask: left out
    (root / "ImageSets" / "Segmentation" / "default.txt").write_text("0\n1\n2\n3\n")
    _, text = prepare(root, out, "--val-fraction", "0.25", monkeypatch=monkeypatch, capsys=capsys)
    meta = meta_of(out)
    assert meta["layout"] == "voc" and meta["mask_format"] == "index"
    assert meta["num_classes"] == max(int(v[v != 255].max()) for v in raw.values()) + 1
    assert meta["splits"]["train"] == 3 and meta["splits"]["val"] == 1 and "test" not in meta["splits"]
    for split in ("train", "val"):
        for stem, v in labels_of(out, split).items():
            assert np.array_equal(v, raw[stem])


def test_roboflow_classes_csv(tmp_path, monkeypatch, capsys):
    root, out = tmp_path / "rf", tmp_path / "out"
    raw = {}
    for split, n in (("train", 3), ("valid", 1), ("test", 1)):
        (root / split).mkdir(parents=True)
        (root / split / "_classes.csv").write_text("Pixel Value, Class\n0, background\n1, crack\n2, rust\n")
        for k in range(n):
            stem = f"IMG_{k}_jpg.rf.{split}{k:04x}"
            img(root / split / f"{stem}.jpg", seed=k)
            raw[stem] = gray(root / split / f"{stem}_mask.png", lab(k, 3))
    prepare(root, out, monkeypatch=monkeypatch, capsys=capsys)
    meta = meta_of(out)
    assert meta["layout"] == "roboflow" and meta["classes"] == ["background", "crack", "rust"]
    assert meta["splits"] == {"train": 3, "val": 1, "test": 1, "trainval": 4}
    for split in ("train", "val", "test"):
        for stem, v in labels_of(out, split).items():
            assert np.array_equal(v, raw[stem])


def test_colour_masks_without_palette_are_listed(tmp_path, monkeypatch, capsys):
    root, out = tmp_path / "export", tmp_path / "out"
    colours = [(10, 200, 30), (0, 0, 0), (250, 0, 5)]  # numbered in RGB order: black, (10,200,30), (250,0,5)
    order = {c: i for i, c in enumerate(sorted(colours))}
    raw = {}
    for k in range(3):
        img(root / "images" / f"p{k}.png", seed=k)
        idx = lab(k, 3)
        rgb_mask(root / "masks" / f"p{k}.png", idx, colours)
        raw[f"p{k}"] = np.vectorize(lambda i: order[colours[i]])(idx).astype(np.uint8)
    _, text = prepare(root, out, monkeypatch=monkeypatch, capsys=capsys)
    assert "3 colour(s) found, numbered in RGB order: 0 (0,0,0)" in text and "1 (10,200,30)" in text
    assert "2 (250,0,5)" in text and "--classes FILE" in text
    meta = meta_of(out)
    assert meta["palette"] == [[0, 0, 0], [10, 200, 30], [250, 0, 5]] and meta["num_classes"] == 3
    for split in ("train", "val"):
        for stem, v in labels_of(out, split).items():
            assert np.array_equal(v, raw[stem])
    # --palette gives names and the order
    pal = tmp_path / "palette.txt"
    pal.write_text("leaf: 10,200,30\nsoil:0,0,0\nbug:250,0,5\n")
    prepare(root, tmp_path / "named", "--palette", str(pal), monkeypatch=monkeypatch, capsys=capsys)
    m2 = meta_of(tmp_path / "named")
    assert m2["classes"] == ["leaf", "soil", "bug"] and m2["palette"] == [list(c) for c in colours]
    named = {**labels_of(tmp_path / "named", "train"), **labels_of(tmp_path / "named", "val")}
    for k in range(3):
        assert np.array_equal(named[f"p{k}"], lab(k, 3))


def test_image_kinds_rgba_grey_16bit_odd_sizes_exif(tmp_path, monkeypatch, capsys):
    root, out = tmp_path / "export", tmp_path / "out"
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    rgba = rng.integers(0, 256, (3, 9, 4), dtype=np.uint8)
    cv2.imwrite(str(root / "images" / "rgba.png"), rgba)
    grey = rng.integers(0, 256, (1, 5), dtype=np.uint8)
    cv2.imwrite(str(root / "images" / "grey.png"), grey)
    deep = rng.integers(0, 65536, (4, 3), dtype=np.uint16)
    cv2.imwrite(str(root / "images" / "deep.tif"), deep)
    # a phone photo: stored 4 rows x 6 columns, EXIF orientation 6 (shown rotated: 6 rows x 4 columns)
    photo = rng.integers(0, 256, (4, 6, 3), dtype=np.uint8)
    pim = Image.fromarray(photo)
    exif = pim.getexif()
    exif[0x0112] = 6
    pim.save(root / "images" / "photo.jpg", exif=exif.tobytes(), quality=95)
    # the same, but annotated unrotated (the mask matches the stored pixels)
    pim.save(root / "images" / "raw.jpg", exif=exif.tobytes(), quality=95)
    masks = {"rgba": lab(0, 2, 3, 9), "grey": lab(1, 2, 1, 5), "deep": lab(2, 2, 4, 3), "photo": lab(3, 2, 6, 4)}
    masks["raw"] = lab(4, 2, 4, 6)
    for k, v in masks.items():
        gray(root / "masks" / f"{k}.png", v)
    _, text = prepare(root, out, "--val-fraction", "0", monkeypatch=monkeypatch, capsys=capsys)
    assert "1 greyscale and 1 RGBA image(s) are read as RGB" in text
    assert "raw.jpg: mask matches the unrotated image" in text
    index = PreparedIndex.open(out)
    got = {s.name.split("/")[-1]: s for s in index.samples("train")}
    assert got.keys() == masks.keys()
    for k, s in got.items():
        im = read_image(s.image)  # what training reads
        assert im.shape[:2] == masks[k].shape and np.array_equal(read_label(s.label), masks[k]), k
    assert np.array_equal(read_image(got["rgba"].image), rgba[..., :3])
    assert np.array_equal(read_image(got["grey"].image), np.repeat(grey[..., None], 3, 2))
    assert np.array_equal(read_image(got["deep"].image)[..., 0], np.round(deep / 257).astype(np.uint8))
    # the EXIF photo: the copy is what cv2.imread shows by default (EXIF applied), rotated 90 degrees clockwise
    shown = cv2.imread(str(root / "images" / "photo.jpg"))
    assert shown.shape[:2] == (6, 4) and np.array_equal(read_image(got["photo"].image), shown)
    stored = cv2.imread(str(root / "images" / "photo.jpg"), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    assert np.array_equal(shown, cv2.rotate(stored, cv2.ROTATE_90_CLOCKWISE))
    assert not got["photo"].image.is_symlink() and got["rgba"].image.is_symlink()
    assert read_image(got["raw"].image).shape[:2] == (4, 6) and not got["raw"].image.is_symlink()
    with Image.open(got["raw"].image) as im:  # no EXIF orientation left for any reader to apply
        assert im.size == (6, 4) and im.getexif().get(0x0112, 1) == 1


# --------------------------------------------------------------------------------------------
# problems and re-runs


def test_bad_inputs_listed_one_line_each_exit_2(tmp_path):
    root, out = tmp_path / "export", tmp_path / "out"
    (root / "images" / "val").mkdir(parents=True)  # an empty split folder
    colours = [(0, 0, 0), (255, 0, 0), (0, 0, 255)]
    for k in range(3):
        img(root / "images" / "train" / f"ok{k}.png", seed=k)
        rgb_mask(root / "masks" / "train" / f"ok{k}.png", lab(k, 3), colours)
    (root / "images" / "train" / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    rgb_mask(root / "masks" / "train" / "broken.png", lab(0, 3), colours)
    img(root / "images" / "train" / "badmask.png")
    (root / "masks" / "train" / "badmask.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    img(root / "images" / "train" / "small.png", 5, 7)
    rgb_mask(root / "masks" / "train" / "small.png", lab(0, 3, 4, 7), colours)
    rgb_mask(root / "masks" / "train" / "orphan.png", lab(0, 3), colours)
    odd = lab(1, 3)
    rgb = np.array(colours, np.uint8)[odd]
    rgb[0, :3] = (1, 2, 3)
    cv2.imwrite(str(root / "images" / "train" / "colour.png"), np.zeros((5, 7, 3), np.uint8))
    cv2.imwrite(str(root / "masks" / "train" / "colour.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    img(root / "images" / "train" / "index.png")
    v = lab(2, 3)
    v[1, 1] = 7
    gray(root / "masks" / "train" / "index.png", v)
    img(root / "images" / "train" / "dup.png")
    img(root / "images" / "train" / "dup.jpg")
    rgb_mask(root / "masks" / "train" / "dup.png", lab(0, 3), colours)
    pal = tmp_path / "pal.txt"
    pal.write_text("bg:0,0,0\nred:255,0,0\nblue:0,0,255\n")
    before = snapshot(root)
    proc = run_cli("prepare", "folder", "--root", str(root), "--out", str(out), "--palette", str(pal), check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.startswith("problem: ")]
    t = root / "images" / "train"
    m = root / "masks" / "train"
    expected = {
        f"{t / 'broken.jpg'}: unreadable image",
        f"{m / 'badmask.png'}: unreadable mask",
        f"{m / 'small.png'}: mask is 7x4 but its image {t / 'small.png'} is 7x5",
        f"{m / 'orphan.png'}: mask without image",
        f"{m / 'colour.png'}: unknown colour(s) (1,2,3) 3 px",
        f"{m / 'index.png'}: label value(s) 7 (1 px) >= the class count 3",
        f"{t / 'dup.png'}: duplicate stem 'dup'",
        f"{root / 'images' / 'val'}: split 'val' is empty",
    }
    for e in expected:
        assert sum(ln.startswith(f"problem: {e}") for ln in lines) == 1, (e, lines)
    assert len(lines) == len(expected), lines
    assert "8 problem(s)" in proc.stdout + proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()  # nothing written
    assert snapshot(root) == before


def test_bad_split_lists_and_classes(tmp_path, monkeypatch, capsys):
    root, lists = tmp_path / "export", tmp_path / "lists"
    for k in range(2):
        img(root / "images" / f"s{k}.png")
        gray(root / "masks" / f"s{k}.png", lab(k, 2))
    lists.mkdir()
    (lists / "train.txt").write_text("s0\nghost\n")
    (lists / "val.txt").write_text("s0\n")
    (lists / "test.txt").write_text("")
    code, text = prepare(
        root, tmp_path / "out", "--splits", str(lists), monkeypatch=monkeypatch, capsys=capsys, ok=False
    )
    assert code == 2
    assert f"{lists / 'train.txt'}: 'ghost' is listed but there is no image" in text
    assert f"{lists / 'val.txt'}: duplicate stem 's0'" in text
    assert f"{lists / 'test.txt'}: split 'test' is empty" in text
    names = tmp_path / "names.txt"
    names.write_text("a\n")
    code, text = prepare(
        root, tmp_path / "out", "--classes", str(names), monkeypatch=monkeypatch, capsys=capsys, ok=False
    )
    assert code == 2 and f"{root / 'masks' / 's1.png'}: label value(s) 1 (" in text and ">= the class count 1" in text
    code, text = prepare(root, tmp_path / "o", "--layout", "roboflow", monkeypatch=monkeypatch, capsys=capsys, ok=False)
    assert code == 2 and "roboflow layout needs" in text
    code, text = cli_inproc(
        "prepare", "camvid", "--root", str(root), "--layout", "plain", monkeypatch=monkeypatch, capsys=capsys
    )
    assert code == 2 and "only for `ctxseg prepare folder`" in text
    code, text = prepare(tmp_path / "lists", tmp_path / "o", monkeypatch=monkeypatch, capsys=capsys, ok=False)
    assert code == 2 and "No known layout" in text


def test_rerun_converts_only_what_changed(tmp_path, monkeypatch, capsys):
    root, out = tmp_path / "export", tmp_path / "out"
    for k in range(4):
        img(root / "images" / f"r{k}.png", seed=k)
        gray(root / "masks" / f"r{k}.png", lab(k, 3))
    _, text = prepare(root, out, monkeypatch=monkeypatch, capsys=capsys)
    assert "4 converted, 0 already done" in text
    labels = {k: v for k, v in snapshot(out).items() if k.startswith("labels/")}
    _, text = prepare(root, out, monkeypatch=monkeypatch, capsys=capsys)
    assert "0 converted, 4 already done" in text
    assert {k: v for k, v in snapshot(out).items() if k.startswith("labels/")} == labels
    new = lab(9, 3)
    gray(root / "masks" / "r1.png", new)
    st = os.stat(root / "masks" / "r1.png")
    os.utime(root / "masks" / "r1.png", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    (root / "images" / "r3.png").unlink()
    (root / "masks" / "r3.png").unlink()
    _, text = prepare(root, out, monkeypatch=monkeypatch, capsys=capsys)
    assert "1 converted, 2 already done" in text and "removed" in text
    got = {**labels_of(out, "train"), **labels_of(out, "val")}
    assert set(got) == {"r0", "r1", "r2"} and np.array_equal(got["r1"], new)
    assert not list((out / "labels").rglob("r3.png")) and not list((out / "images").rglob("r3.png"))
    # another class mapping re-converts everything (the mapping is part of the fingerprint)
    names = tmp_path / "names.txt"
    names.write_text("a\nb\nc\n")
    _, text = prepare(root, out, "--classes", str(names), monkeypatch=monkeypatch, capsys=capsys)
    assert "0 converted, 3 already done" in text  # same values -> same mapping
    _, text = prepare(root, out, "--classes", str(names), "--ignore-index", "0", monkeypatch=monkeypatch, capsys=capsys)
    assert "3 converted, 0 already done" in text
    got = {**labels_of(out, "train"), **labels_of(out, "val")}
    assert np.array_equal(got["r1"], np.where(new == 0, 255, new))


def test_found_suffix_nested_names_with_spaces_and_out_checks(tmp_path, monkeypatch, capsys):
    root, out = tmp_path / "export", tmp_path / "out"
    raw = {}
    for k, stem in enumerate(["site A/img 1", "site A/img 2", "site B/img 1"]):
        img(root / "images" / f"{stem}.jpg", seed=k)
        raw[stem] = gray(root / "labels" / f"{stem}_label.png", lab(k, 2))
    _, text = prepare(root, out, "--val-fraction", "0", monkeypatch=monkeypatch, capsys=capsys)
    assert "stem + '_label' (found" in text
    lines = split_lines(out, "train")
    assert [ln[0] for ln in lines] == ["train/site_A/img_1.jpg", "train/site_A/img_2.jpg", "train/site_B/img_1.jpg"]
    for (_, lb), stem in zip(lines, raw, strict=True):
        assert np.array_equal(read_label(out / "labels" / lb), raw[stem])
    code, text = prepare(root, root / "images" / "out", monkeypatch=monkeypatch, capsys=capsys, ok=False)
    assert code == 2 and "inside the raw data" in text
    other = tmp_path / "cityscapes"
    other.mkdir()
    (other / "meta.json").write_text(json.dumps({"name": "cityscapes"}))
    code, text = prepare(root, other, monkeypatch=monkeypatch, capsys=capsys, ok=False)
    assert code == 2 and "already holds a prepared 'cityscapes' index" in text


def test_roboflow_empty_split_and_class_tables(tmp_path, monkeypatch, capsys):
    root = tmp_path / "rf"
    for split in ("train", "valid"):
        (root / split).mkdir(parents=True)
        (root / split / "_classes.csv").write_text("Pixel Value, Class\n0, bg\n1, " + split + "\n")
    img(root / "train" / "a.jpg")
    gray(root / "train" / "a_mask.png", lab(0, 2))
    code, text = prepare(root, tmp_path / "out", monkeypatch=monkeypatch, capsys=capsys, ok=False)
    assert code == 2 and not (tmp_path / "out").exists()
    assert f"{root / 'valid'}: split 'val' is empty" in text
    assert f"{root / 'valid' / '_classes.csv'}: classes differ from {root / 'train' / '_classes.csv'}" in text
