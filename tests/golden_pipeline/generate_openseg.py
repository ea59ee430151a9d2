"""Golden data of openseg's (ContrastiveSeg's) training pipeline, from the official classes.

Run with the reference environment (/work/refenv/venv/bin/python: torch, opencv-python-headless) and
the official tree of tfzhou/ContrastiveSeg (commit 287e5d3):

    python tests/golden_pipeline/generate_openseg.py --contrast-repo GIT_DIR --seed 0 \
        --out tests/golden_pipeline/openseg            # or --contrast-tree DIR (an exported tree)
    python tests/golden_pipeline/generate_openseg.py --list

For each case (an official json, its transform settings scaled down so that the arrays stay small,
or a variant exercising the options the recipes do not use) and each generated image/label pair
(several sizes, smaller and larger than the crop), it runs the official code path of one training
item: CV2AugCompose(configer, 'train') -> ToTensor + Normalize(div_value, mean, std) -> ToLabel +
ReLabel(255, -1) -> collate(trans_dict=train.data_transformer), with Python's `random` of the
official modules replaced by a recorder around `random.Random(seed_i)`. It writes per case
`config.json` (the official json blocks, the scaled settings that ran, the seeds, every recorded
draw: method, arguments, value) and `arrays.npz` (uint8 arrays stored as PNG bytes, a structured
dtype with one field "png"; inputs, the augmented uint8 image and label before
ToTensor, the final normalised image and label, with -1 as 255).

The generator contains no code of the official repository: it imports its classes and calls them.
Shim: Python >= 3.10 has no `collections.Iterable` (RandomCrop's isinstance check); it is set to
`collections.abc.Iterable` before the official module is imported.
"""

from __future__ import annotations

import argparse
import collections
import collections.abc
import copy
import hashlib
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

COMMIT = "287e5d3"

# (case, official json, scale factor of the json's sizes, image sizes (w, h), overrides of the scaled config)
CASES = {
    "cityscapes-H_48_D_4": ("configs/cityscapes/H_48_D_4.json", 1 / 16, [(128, 64), (150, 80), (60, 40), (97, 51)], {}),
    "cityscapes-R_101_D_8": ("configs/cityscapes/R_101_D_8.json", 1 / 16, [(128, 64), (70, 30)], {}),
    "camvid-H_48_D_4": ("configs/camvid/H_48_D_4.json", 1 / 8, [(60, 45), (90, 60), (30, 20)], {}),
    "coco_stuff-H_48_D_4": ("configs/coco_stuff/H_48_D_4.json", 1 / 8, [(80, 60), (60, 90), (40, 25)], {}),
    "pascal_context-H_48_D_4": (
        "configs/pascal_context/H_48_D_4.json",
        1 / 8,
        [(100, 75), (75, 100), (65, 65), (193, 130)],
        {},
    ),  # 193 x 65/130 = 96.5: round half to even
    # options no recipe uses: shuffled order, RGB input, bound resize, grid crop, swap pairs, pad_border,
    # skip probabilities below 1
    "variant-shuffle-rgb-bound-grid": (
        "configs/cityscapes/H_48_D_4.json",
        1 / 16,
        [(100, 64), (50, 40), (90, 70)],
        {
            "data": {"input_mode": "RGB"},
            "train_trans": {
                "trans_seq": ["random_resize", "random_crop"],
                "shuffle_trans_seq": ["random_hflip", "random_brightness"],
                "random_resize": {
                    "ratio": 0.6,
                    "method": "bound",
                    "resize_bound": [40, 90],
                    "aspect_range": [0.8, 1.2],
                },
                "random_crop": {"ratio": 0.7, "crop_size": [64, 32], "method": "grid", "grid": [3, 2]},
                "random_hflip": {"ratio": 0.5, "swap_pair": [[1, 2], [3, 4]]},
                "random_brightness": {"ratio": 0.5, "shift_value": 40},
            },
            "train": {"data_transformer": {"input_size": [112, 112], "pad_mode": "pad_border"}},
        },
    ),
    "variant-target-center-maxside": (
        "configs/pascal_context/H_48_D_4.json",
        1 / 8,
        [(100, 75), (40, 60)],
        {
            "train_trans": {
                "trans_seq": ["resize", "random_resize", "random_crop", "random_hflip", "random_brightness"],
                "resize": {"target_size": [70, 50], "max_side_bound": 64},
                "random_resize": {
                    "ratio": 0.5,
                    "method": "random",
                    "scale_range": [0.5, 2.0],
                    "aspect_range": [0.9, 1.1],
                    "max_side_bound": 90,
                },
                "random_crop": {"ratio": 1.0, "crop_size": [48, 48], "method": "center"},
            },
            "train": {"data_transformer": {"input_size": [64, 64], "pad_mode": "pad_center"}},
        },
    ),
}
SAMPLES_PER_SIZE = 2
NUM_CLASSES = 8


class Recorder:
    """Python's random with every call recorded as [method, args, value] (shuffle: the list after)."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        self.log: list = []

    def random(self):
        v = self.rng.random()
        self.log.append(["random", [], v])
        return v

    def uniform(self, a, b):
        v = self.rng.uniform(a, b)
        self.log.append(["uniform", [a, b], v])
        return v

    def randint(self, a, b):
        v = self.rng.randint(a, b)
        self.log.append(["randint", [a, b], v])
        return v

    def shuffle(self, x):
        self.rng.shuffle(x)
        self.log.append(["shuffle", [len(x)], list(x)])

    def __getattr__(self, name):  # any other use of `random` would go unrecorded: refuse it
        raise AttributeError(f"the official pipeline called random.{name}, which the recorder does not replay")


def export_tree(git_dir: str, rev: str = COMMIT) -> str:
    dest = tempfile.mkdtemp(prefix="contrastiveseg_")
    archive = subprocess.run(["git", "--git-dir", git_dir, "archive", rev], capture_output=True, check=True).stdout
    subprocess.run(["tar", "x", "-C", dest], input=archive, check=True)
    return dest


def merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def scaled(cfg: dict, f: float) -> dict:
    """The json with its pixel sizes (crop, input size, resize lengths) multiplied by f."""
    cfg = copy.deepcopy(cfg)
    tt = cfg["train_trans"]
    tt["random_crop"]["crop_size"] = [round(v * f) for v in tt["random_crop"]["crop_size"]]
    if "resize" in tt:
        for k in ("min_side_length", "max_side_length", "max_side_bound"):
            if tt["resize"].get(k) is not None:
                tt["resize"][k] = round(tt["resize"][k] * f)
        if tt["resize"].get("target_size") is not None:
            tt["resize"]["target_size"] = [round(v * f) for v in tt["resize"]["target_size"]]
    cfg["train"]["data_transformer"]["input_size"] = [
        round(v * f) for v in cfg["train"]["data_transformer"]["input_size"]
    ]
    return cfg


def make_pair(rng: np.random.Generator, w: int, h: int):
    """A piecewise smooth BGR image (gradients, rectangles with sharp edges, some saturated) and a
    label of rectangles (classes 0..NUM_CLASSES-1, some 255)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([xx / max(w - 1, 1) * 255, yy / max(h - 1, 1) * 255, (xx // 8 + yy // 8) % 8 * 32], -1)
    lab = np.full((h, w), rng.integers(NUM_CLASSES), np.uint8)
    for _ in range(6):
        x0, y0 = int(rng.integers(0, w - 2)), int(rng.integers(0, h - 2))
        x1, y1 = int(rng.integers(x0 + 1, w)), int(rng.integers(y0 + 1, h))
        img[y0:y1, x0:x1] = rng.integers(0, 256, 3)
        lab[y0:y1, x0:x1] = 255 if rng.random() < 0.15 else rng.integers(NUM_CLASSES)
    return np.clip(img, 0, 255).astype(np.uint8), lab


def run_case(name: str, tree: str, seed: int) -> tuple[dict, dict]:
    import lib.datasets.tools.collate as collate_mod
    import lib.datasets.tools.cv2_aug_transforms as aug_mod
    import lib.datasets.tools.transforms as trans
    from lib.extensions.parallel.data_container import DataContainer
    from lib.utils.tools.configer import Configer

    json_path, factor, sizes, overrides = CASES[name]
    with open(os.path.join(tree, json_path)) as f:
        official = json.load(f)
    ran = merge(scaled(official, factor), overrides)
    ran["train_trans"] = {
        k: v
        for k, v in ran["train_trans"].items()
        if k in ("trans_seq", "shuffle_trans_seq")
        or k in ran["train_trans"]["trans_seq"] + ran["train_trans"].get("shuffle_trans_seq", [])
    }
    norm = ran["normalize"]
    img_transform = trans.Compose(
        [trans.ToTensor(), trans.Normalize(div_value=norm["div_value"], mean=norm["mean"], std=norm["std"])]
    )
    label_transform = trans.Compose([trans.ToLabel(), trans.ReLabel(255, -1)])
    data_rng = np.random.default_rng(seed)
    arrays: dict[str, np.ndarray] = {}
    samples = []
    i = 0
    for w, h in sizes:
        for _ in range(SAMPLES_PER_SIZE):
            img, lab = make_pair(data_rng, w, h)
            s = seed * 1000 + i
            rec = Recorder(s)
            aug_mod.random = rec
            collate_mod.random = rec
            # a fresh config per item: openseg shuffles shuffle_trans_seq inside its config, in place
            configer = Configer(config_dict=copy.deepcopy(ran))
            compose = aug_mod.CV2AugCompose(configer, split="train")
            src = img if ran["data"]["input_mode"] == "BGR" else np.ascontiguousarray(img[..., ::-1])
            a_img, a_lab = compose(src.copy(), labelmap=lab.copy())
            item = {
                "img": DataContainer(img_transform(a_img), stack=True),
                "labelmap": DataContainer(label_transform(a_lab), stack=True),
            }
            batch = collate_mod.collate([item], trans_dict=configer.get("train", "data_transformer"))
            out_img = batch["img"][0].numpy().astype(np.float32)
            out_lab = batch["labelmap"][0].numpy()
            out_lab = np.where(out_lab == -1, 255, out_lab).astype(np.uint8)
            k = f"s{i}"
            arrays[f"{k}_in_image"], arrays[f"{k}_in_label"] = img, lab
            # the augmented image in BGR order (the input_mode RGB path converts back at the end)
            arrays[f"{k}_aug_image"] = a_img if ran["data"]["input_mode"] == "BGR" else a_img[..., ::-1]
            arrays[f"{k}_aug_label"] = np.asarray(a_lab).astype(np.uint8)
            arrays[f"{k}_out_label"] = out_lab
            if i == 0:  # the final float32 image of the first item; the others by their sha256
                arrays[f"{k}_out_image"] = out_img
            samples.append(
                {
                    "key": k,
                    "size_wh": [w, h],
                    "seed": s,
                    "draws": rec.log,
                    "out_image_shape": list(out_img.shape),
                    "out_image_sha256": hashlib.sha256(np.ascontiguousarray(out_img).tobytes()).hexdigest(),
                }
            )
            i += 1
    config = {
        "case": name,
        "official_json": json_path,
        "commit": COMMIT,
        "official": {k: official[k] for k in ("train_trans", "normalize")}
        | {
            "data": {"input_mode": official["data"]["input_mode"]},
            "train": {"data_transformer": official["train"]["data_transformer"]},
        },
        "ran": {k: ran[k] for k in ("train_trans", "normalize")}
        | {
            "data": {"input_mode": ran["data"]["input_mode"]},
            "train": {"data_transformer": ran["train"]["data_transformer"]},
        },
        "scale_factor": factor,
        "overrides": overrides,
        "seed": seed,
        "num_classes": NUM_CLASSES,
        "samples": samples,
    }
    return config, arrays


def png(a: np.ndarray) -> np.ndarray:
    import cv2

    ok, buf = cv2.imencode(".png", a, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    assert ok
    return np.frombuffer(buf.tobytes(), np.uint8).copy().view(np.dtype([("png", np.uint8)]))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--contrast-repo", default=os.environ.get("CTXSEG_CONTRAST_REPO"), help="git dir of ContrastiveSeg")
    p.add_argument("--contrast-tree", default=os.environ.get("CTXSEG_CONTRAST_TREE"), help="an exported tree instead")
    p.add_argument("--case", action="append", help="case name (default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path)
    p.add_argument("--list", action="store_true")
    args = p.parse_args(argv)
    if args.list:
        for n, (j, f, sizes, o) in CASES.items():
            print(f"{n}\t{j}\tx{f}\t{sizes}{'  (variant)' if o else ''}")
        return
    if args.out is None or not (args.contrast_repo or args.contrast_tree):
        p.error("--out and --contrast-repo (or --contrast-tree) are required")
    tree = args.contrast_tree or export_tree(args.contrast_repo)
    collections.Iterable = collections.abc.Iterable  # removed in Python 3.10; RandomCrop still checks it
    sys.path.insert(0, tree)
    import cv2
    import torch

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    for name in args.case or list(CASES):
        config, arrays = run_case(name, tree, args.seed)
        config["versions"] = {
            "opencv": cv2.__version__,
            "numpy": np.__version__,
            "torch": torch.__version__,
            "python": sys.version.split()[0],
        }
        d = args.out / name
        d.mkdir(parents=True, exist_ok=True)
        (d / "config.json").write_text(json.dumps(config, indent=1) + "\n")
        # uint8 images and labels as lossless PNG bytes (PNG's row filters compress the gradients well)
        packed = {k: (png(v) if v.dtype == np.uint8 else v) for k, v in arrays.items()}
        np.savez_compressed(d / "arrays.npz", **packed)
        print(f"{name}: {len(config['samples'])} items, {sum(len(s['draws']) for s in config['samples'])} draws")


if __name__ == "__main__":
    main()
