"""PASCAL-Context from the official trainval/*.mat (LabelMap, 459 ids): 59 and 60 class variants."""

from __future__ import annotations

import numpy as np
import scipy.io

from ctxseg.data.dataset import reduce_zero_label
from tests.test_prepare_common import prepare_twice, read_back, split_lines, write_gray, write_image

# (459-class id, 59-class index) spot values from the official 59-class list
KNOWN = {2: 1, 9: 2, 284: 37, 458: 59, 1: 0, 3: 0, 459: 0, 0: 0}


def make_context(root):
    voc = root / "VOCdevkit" / "VOC2010"
    rng = np.random.default_rng(6)
    ids = {"train": ["2008_000002", "2008_000003"], "val": ["2008_000007"]}
    raw = {}
    (voc / "ImageSets" / "Main").mkdir(parents=True)
    for split, names in ids.items():
        (voc / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(names) + "\n")
        for k, n in enumerate(names):
            write_image(voc / "JPEGImages" / f"{n}.jpg", 4, 5, k)
            lab = rng.choice([2, 9, 284, 458, 1, 3, 459, 18, 440], (4, 5)).astype(np.uint16)
            raw[n] = lab
            (root / "trainval").mkdir(exist_ok=True)
            scipy.io.savemat(root / "trainval" / f"{n}.mat", {"LabelMap": lab})
    return raw


def test_prepare_pascal_context_59_and_60(tmp_path, monkeypatch, capsys):
    root = tmp_path / "raw"
    raw = make_context(root)
    lut = {**KNOWN, 18: 3, 440: 56}
    m59, _ = prepare_twice("pascal-context", root, tmp_path / "pc59", monkeypatch, capsys)
    m60, _ = prepare_twice("pascal-context-60", root, tmp_path / "pc60", monkeypatch, capsys)
    assert m59["num_classes"] == 59 and m59["reduce_zero_label"] is True and m59["classes"][0] == "aeroplane"
    assert (
        m60["num_classes"] == 60
        and m60["reduce_zero_label"] is False
        and m60["classes"][:2] == ["background", "aeroplane"]
    )
    assert m59["classes"][36] == "person" and m60["classes"][37] == "person" and m59["classes"][-1] == "wood"
    assert m59["official_splits"] == {"train": 4998, "val": 5105}
    for out, meta in ((tmp_path / "pc59", m59), (tmp_path / "pc60", m60)):
        for split in ("train", "val"):
            for img, lab in split_lines(out, split):
                n = img.split("/")[-1][:-4]
                assert img == f"VOCdevkit/VOC2010/JPEGImages/{n}.jpg"
                got = read_back(out, meta, "label_root", lab)
                assert np.array_equal(got, np.vectorize(lut.get)(raw[n]).astype(np.uint8))
    # 59: background ignored, counts over 59 classes; 60: background is class 0
    t59 = [reduce_zero_label(np.vectorize(lut.get)(raw[n])) for n in ("2008_000002", "2008_000003")]
    assert m59["class_pixel_counts"] == sum(np.bincount(t[t != 255], minlength=59) for t in t59).tolist()
    assert m60["class_pixel_counts"][0] == sum(
        int((np.vectorize(lut.get)(raw[n]) == 0).sum()) for n in ("2008_000002", "2008_000003")
    )


# ---------------------------------------------------------------------------------------------
# mmsegmentation's route: VOC2010 + trainval_merged.json (PASCAL in Detail), read without the Detail API


def _detail_json(path, paint: dict[str, list[tuple[int, np.ndarray]]], phases: dict[str, str], extra_image=None):
    """A trainval_merged.json in the PASCAL in Detail schema; masks as COCO RLE (pycocotools encodes them,
    an implementation independent of ctxseg's decoder)."""
    from pycocotools import mask as mask_utils

    images, anns, aid = [], [], 1
    for name, layers in paint.items():
        h, w = layers[0][1].shape
        iid = int(name[:4] + name[5:])
        images.append({"image_id": iid, "file_name": f"{name}.jpg", "height": h, "width": w, "phase": phases[name]})
        for cat, m in layers:
            rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
            rle["counts"] = rle["counts"].decode()
            anns.append(
                {
                    "id": aid,
                    "image_id": iid,
                    "category_id": cat,
                    "segmentation": rle,
                    "iscrowd": 0,
                    "area": int(m.sum()),
                    "bbox": [0, 0, w, h],
                }
            )
            aid += 1
    if extra_image:
        images.append(extra_image)
    data = {
        "info": {},
        "images": images,
        "annos_segmentation": anns,
        "annos_occlusion": [],
        "annos_boundary": [],
        "annos_joints": [],
        "parts": [],
        "categories": [
            {"category_id": c, "name": f"c{c}", "supercategory": "x", "onlysemantic": 1, "parts": []}
            for c in (2, 9, 18, 284, 440, 458, 3)
        ],
    }
    path.write_text(__import__("json").dumps(data))


def make_context_both_routes(root):
    """One tree with the Stanford .mat files AND VOC2010 + trainval_merged.json, holding the same masks:
    overlapping annotations painted in file order (later wins), as Detail.getMask does."""
    voc = root / "VOCdevkit" / "VOC2010"
    rng = np.random.default_rng(8)
    names = {"2008_000002": "train", "2008_000003": "train", "2008_000007": "val"}
    (voc / "ImageSets" / "Main").mkdir(parents=True)
    for split in ("train", "val"):
        (voc / "ImageSets" / "Main" / f"{split}.txt").write_text(
            "\n".join(n for n, s in names.items() if s == split) + "\n"
        )
    paint, raw = {}, {}
    for k, n in enumerate(names):
        h, w = 9, 11 + k
        write_image(voc / "JPEGImages" / f"{n}.jpg", h, w, k)
        label = np.zeros((h, w), np.uint16)
        layers = []
        for cat in (2, 284, 9, 18, 440, 458, 3):  # 3 is outside the 59 classes: background on both routes
            m = rng.random((h, w)) < 0.35
            m[: k + 1, :] = cat == 284  # long runs (multi-chunk RLE values)
            layers.append((cat, m))
            label[m] = cat
        paint[n], raw[n] = layers, label
        (root / "trainval").mkdir(exist_ok=True)
        scipy.io.savemat(root / "trainval" / f"{n}.mat", {"LabelMap": label})
    _detail_json(voc / "trainval_merged.json", paint, names)
    return raw, names


def test_rle_decoder_matches_pycocotools():
    from pycocotools import mask as mask_utils

    from ctxseg.data.prepare.pascal_context import decode_rle

    rng = np.random.default_rng(0)
    for h, w, p in ((1, 1, 0.5), (7, 300, 0.01), (64, 48, 0.5), (40, 40, 0.999), (5, 9, 0.0)):
        m = rng.random((h, w)) < p
        rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
        assert np.array_equal(decode_rle({"size": rle["size"], "counts": rle["counts"].decode()}), m)
        assert np.array_equal(decode_rle(mask_utils.frPyObjects({"size": [h, w], "counts": _runs(m)}, h, w)), m)
        assert np.array_equal(decode_rle({"size": [h, w], "counts": _runs(m)}), m)  # uncompressed counts


def _runs(m):
    flat = m.T.ravel().astype(np.int8)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1] if len(flat) else 0]])))
    runs = np.diff(np.concatenate([[0], edges, [len(flat)]])).tolist()
    return [r for r in runs if r] if not flat[0] else [0] + [r for r in runs if r]


def test_pascal_context_json_route_equals_mat_route(tmp_path, monkeypatch, capsys):
    import shutil

    from ctxseg.data.prepare.pascal_context import _prepare, prepare59

    root = tmp_path / "both"
    raw, names = make_context_both_routes(root)
    lut = {**KNOWN, 18: 3, 440: 56}
    # JSON only (the .mat folder removed): through the CLI, 59 and 60 classes
    json_root = tmp_path / "json_only"
    shutil.copytree(root, json_root)
    shutil.rmtree(json_root / "trainval")
    (json_root / "VOCdevkit" / "VOC2010" / "ImageSets" / "Main").rename(
        json_root / "no_lists"
    )  # splits from the JSON's phase
    m59, _ = prepare_twice("pascal-context", json_root, tmp_path / "j59", monkeypatch, capsys)
    m60, _ = prepare_twice("pascal-context-60", json_root, tmp_path / "j60", monkeypatch, capsys)
    assert "trainval_merged.json" in m59["annotation_route"] and m59["num_classes"] == 59 and m60["num_classes"] == 60
    assert m59["splits"] == {"train": 2, "val": 1, "trainval": 3}
    mat = prepare59(root, tmp_path / "m59", workers=1, progress=None)  # the tree with both: .mat route by default
    assert "trainval/*.mat" in mat["annotation_route"]
    js = _prepare(root, tmp_path / "b59", 1, None, "pascal-context", sixty=False, route="json")
    for n, split in names.items():
        want = np.vectorize(lut.get)(raw[n]).astype(np.uint8)
        got_mat = read_back(tmp_path / "m59", mat, "label_root", f"{n}.png")
        assert np.array_equal(got_mat, want)
        for out, meta in ((tmp_path / "j59", m59), (tmp_path / "j60", m60), (tmp_path / "b59", js)):
            assert np.array_equal(read_back(out, meta, "label_root", f"{n}.png"), got_mat), (out, n)
        assert [f"{n}.png"] == [ln[1] for ln in split_lines(tmp_path / "j59", split) if ln[1] == f"{n}.png"]
    assert js["class_pixel_counts"] == mat["class_pixel_counts"] == m59["class_pixel_counts"]


def test_pascal_context_converted_pngs_in_place(tmp_path, monkeypatch, capsys):
    """sssegmentation's layout (mmseg's converter output): SegmentationClassContext + SegmentationContext lists."""
    voc = tmp_path / "raw" / "VOCdevkit" / "VOC2010"
    rng = np.random.default_rng(9)
    sets = voc / "ImageSets" / "SegmentationContext"
    sets.mkdir(parents=True)
    (sets / "train.txt").write_text("2008_000002\n")
    (sets / "val.txt").write_text("2008_000007\n")
    labs = {}
    for k, n in enumerate(("2008_000002", "2008_000007")):
        write_image(voc / "JPEGImages" / f"{n}.jpg", 4, 6, k)
        labs[n] = rng.integers(0, 60, (4, 6)).astype(np.uint8)
        write_gray(voc / "SegmentationClassContext" / f"{n}.png", labs[n])
    meta, _ = prepare_twice("pascal-context", tmp_path / "raw", tmp_path / "pc", monkeypatch, capsys)
    assert "SegmentationClassContext" in meta["annotation_route"] and meta["splits"]["train"] == 1
    img, lab = split_lines(tmp_path / "pc", "val")[0]
    assert lab == "VOCdevkit/VOC2010/SegmentationClassContext/2008_000007.png"
    assert np.array_equal(read_back(tmp_path / "pc", meta, "label_root", lab), labs["2008_000007"])
    assert not (tmp_path / "pc" / "labels").exists()  # nothing converted
