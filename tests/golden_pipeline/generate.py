"""Pipeline goldens (issue 22 §1 "Pipelines"): the official training transforms, their random draws and outputs.

Run with the reference environment (mmsegmentation 1.2.2 + mmcv-lite 2.1.0 + mmengine, sssegmentation 1.7.0;
for the CAC case the fork's git dir $CTXSEG_CAC_REPO and pure-python mmcv 1.7.2 in $CTXSEG_CAC_MMCV; see
README.md), never in CI:

    python tests/golden_pipeline/generate.py --list
    python tests/golden_pipeline/generate.py --seed 0 --out tests/golden_pipeline/cases [--case NAME ...]

Each case is one official training pipeline, built from the official config (mmseg: the installed package's
configs, or $CTXSEG_REF_MMSEG_CONFIGS; ssseg: the dataset configs of commit eb1878c1 read from the git dir
$CTXSEG_SSSEG_REPO; CAC: the fork's configs) with its sizes (scale, crop) divided by the case's `shrink` factor
so that the arrays stay small; everything else (ratio range, cat_max_ratio, flip probability, photometric
ranges, interpolation, fill values) is the official config's. The file loading steps are replaced by in-memory
random images and labels (several sizes; labels dominated by one class, with ignore regions, so that
cat_max_ratio retries happen).

Every call the official transforms make into numpy's global random generator is intercepted and recorded, in
the order made, as (kind, low, high, value): "integers" (randint, high exclusive), "uniform" (uniform(low,
high)), "random" (a unit draw: random_sample / rand, and the one unit draw of choice(..., p=...)). After every
step a shadow generator replays the recorded calls and must land in the same state as the global one, so no
draw is missed. The case file <case>.npz holds, per sample i and step k (in the pipeline's order):
`s{i}_in_img`, `s{i}_in_lab` (the original), `s{i}_{k}_img`, `s{i}_{k}_lab` (the step's output),
`s{i}_{k}_draws` (kind codes 0 integers, 1 uniform, 2 random) and `s{i}_{k}_draw_vals` ([low, high, value]
float64 rows). Images are HxWx3 uint8 BGR until the last step, "normalize_pad", whose image is the float32
CHW tensor the model receives; labels are uint8 with the ignore index 255 (ssseg's -100 is mapped to 255).
<case>.json: the case's settings (recipe it stands for, shrink, official sizes, step names, versions).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import tempfile
import warnings
import zlib
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: tests.golden_train
from tests.golden_train.generate import _ensure_mmcv_ops  # noqa: E402 - mmcv-lite has no compiled ops

MMSEG_VERSION = "1.2.2"
SSSEG_VERSION = "1.7.0"
SSSEG_REV = "eb1878c1"
KINDS = {"integers": 0, "uniform": 1, "random": 2}

# name -> (code base, official config, ctxseg recipe it stands for, shrink, image sizes (h, w), classes)
CASES = {
    "mmseg-cityscapes": (
        "mmseg",
        "ocrnet/ocrnet_hr18_4xb2-80k_cityscapes-512x1024.py",
        "ocrnet-hr18-cityscapes-80k",
        32,
        [(32, 64), (25, 50), (19, 45), (40, 30), (12, 23), (32, 64)],
        19,
    ),
    "mmseg-ade20k": (
        "mmseg",
        "ocrnet/ocrnet_hr18_4xb4-160k_ade20k-512x512.py",
        "ocrnet-hr18-ade20k-160k",
        16,
        [(48, 64), (33, 47), (70, 52), (20, 27), (41, 41)],
        150,
    ),
    "ssseg-ade20k": (
        "ssseg",
        "ade20k_512x512",
        "mcibi-deeplabv3-r50-ade20k",
        16,
        [(48, 64), (33, 47), (70, 52), (20, 27), (41, 41)],
        150,
    ),
    "ssseg-cityscapes": (
        "ssseg",
        "cityscapes_512x1024",
        "mcibi-deeplabv3-r50-cityscapes",
        32,
        [(32, 64), (25, 50), (19, 45), (40, 30), (12, 23), (32, 64)],
        19,
    ),
    "cac-ade20k": (
        "cac",
        "configs/ocrnet/ocrnet_hr18_512x512_160k_ade20k_cac.py",
        "ocrnet-cac-hr18-ade20k-160k",
        16,
        [(48, 64), (33, 47), (70, 52), (20, 27), (41, 41)],
        150,
    ),
    "ssseg-lip": (
        "ssseg",
        "lip_473x473",
        "mcibi-deeplabv3-r50-lip",
        16,
        [(30, 20), (23, 35), (33, 33), (15, 26), (36, 16), (25, 25)],
        20,
    ),
}

# official step -> ctxseg step name (steps merged into one: the last of them names it)
MMSEG_STEPS = {
    "RandomResize": "resize",
    "RandomCrop": "crop",
    "RandomFlip": "flip",
    "PhotoMetricDistortion": "photometric",
    "PackSegInputs": "normalize_pad",  # + the model's SegDataPreProcessor (normalise, pad to size)
}
SSSEG_STEPS = {
    "Resize": "resize",
    "RandomCrop": "crop",
    "RandomFlip": "flip",
    "RandomRotation": "rotate",
    "PhotoMetricDistortion": "photometric",
    "Normalize": None,  # merged into the Padding step
    "ToTensor": None,
    "Padding": "normalize_pad",
}
SSSEG_SKIPPED = {"EdgeExtractor"}
CAC_STEPS = {  # the CAC fork: mmseg 0.x on mmcv 1.x
    "Resize": "resize",
    "RandomCrop": "crop",
    "RandomFlip": "flip",
    "PhotoMetricDistortion": "photometric",
    "Normalize": None,  # merged into the DefaultFormatBundle step
    "Pad": None,
    "DefaultFormatBundle": "normalize_pad",
}  # LIP's edge target: no ctxseg model (nor MCIBI) uses it


# ------------------------------------------------------------------------------------------------
# recording numpy's global random calls


class Recorder:
    """Wraps numpy.random's module-level functions the official transforms call; records every draw."""

    def __init__(self):
        self.draws: list[tuple[str, float, float, float]] = []
        self._orig = {}

    def install(self):
        npr = np.random
        names = ("randint", "uniform", "random_sample", "rand", "random", "choice")
        self._orig = {n: getattr(npr, n) for n in names}
        o = self._orig
        rec = self.draws

        def randint(low, high=None, size=None, dtype=int):
            assert size is None, "vector draws are not recorded"
            v = o["randint"](low, high, size, dtype)
            lo, hi = (0, low) if high is None else (low, high)
            rec.append(("integers", float(lo), float(hi), float(v)))
            return v

        def uniform(low=0.0, high=1.0, size=None):
            assert size is None
            v = o["uniform"](low, high, size)
            rec.append(("uniform", float(low), float(high), float(v)))
            return v

        def unit(name):
            def f(*args, **kwargs):
                assert not args and not kwargs.get("size"), f"{name}: vector draws are not recorded"
                v = o[name]()
                rec.append(("random", 0.0, 1.0, float(v)))
                return v

            return f

        def choice(a, size=None, replace=True, p=None):
            assert size is None and p is not None, "only choice(a, p=...) is supported"
            state = npr.get_state()
            v = o["choice"](a, size, replace, p)
            shadow = npr.RandomState()
            shadow.set_state(state)
            u = float(shadow.random_sample())
            cdf = np.cumsum(p) / np.sum(p)
            assert a[int(np.searchsorted(cdf, u, side="right"))] == v
            rec.append(("random", 0.0, 1.0, u))
            return v

        npr.randint, npr.uniform, npr.choice = randint, uniform, choice
        npr.random_sample, npr.rand, npr.random = unit("random_sample"), unit("rand"), unit("random")

    def uninstall(self):
        for n, f in self._orig.items():
            setattr(np.random, n, f)

    def step(self, fn, *args):
        """Run fn(*args); return (its result, the draws it made), checking that no draw was missed."""
        start = len(self.draws)
        state = np.random.get_state()
        out = fn(*args)
        draws = self.draws[start:]
        shadow = np.random.RandomState()
        shadow.set_state(state)
        for kind, lo, hi, v in draws:
            if kind == "integers":
                got = float(shadow.randint(int(lo), int(hi)))
            elif kind == "uniform":
                got = float(shadow.uniform(lo, hi))
            else:
                got = float(shadow.random_sample())
            assert got == v, (kind, lo, hi, v, got)
        a, b = shadow.get_state(), np.random.get_state()
        assert a[2] == b[2] and np.array_equal(a[1], b[1]), f"{fn}: a random draw was not recorded"
        return out, draws


# ------------------------------------------------------------------------------------------------
# inputs


def make_sample(rng: np.random.Generator, h: int, w: int, num_classes: int, kind: int):
    """A BGR uint8 image (smooth colour fields + noise, full range) and a label of `kind`:
    0 one dominant class + small blobs + an ignore band; 1 nearly one class (retries exhaust);
    2 mostly ignore (crops with no class happen); 3 several balanced regions."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.zeros((h, w, 3))
    for c in range(3):
        fy, fx, ph = rng.uniform(0.02, 0.3), rng.uniform(0.02, 0.3), rng.uniform(0, 6.3)
        img[..., c] = 127.5 + 110 * np.sin(fy * yy + ph) * np.cos(fx * xx + 2 * ph)
    img += rng.normal(0, 18, img.shape)
    img[rng.random((h, w)) < 0.01] = 255  # saturated pixels: the clip paths of the photometric steps
    img[rng.random((h, w)) < 0.01] = 0
    img = np.clip(np.rint(img), 0, 255).astype(np.uint8)

    classes = rng.permutation(num_classes)
    lab = np.full((h, w), classes[0], np.uint8)
    if kind == 3:
        for k in range(1, 4):
            y0, x0 = int(rng.integers(0, h)), int(rng.integers(0, w))
            lab[y0:, x0:] = classes[k]
    else:
        lo, hi = (0.2, 0.6) if kind == 0 else (0.05, 0.3)
        for k in range(1, 4 if kind == 0 else 2):
            bh, bw = max(1, int(h * rng.uniform(lo, hi))), max(1, int(w * rng.uniform(lo, hi)))
            y0, x0 = int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1))
            lab[y0 : y0 + bh, x0 : x0 + bw] = classes[k]
    if kind == 2:
        keep = np.zeros((h, w), bool)
        keep[: max(1, h // 4), : max(1, w // 4)] = True
        lab[~keep] = 255
    else:
        y0 = int(rng.integers(0, h))
        lab[y0 : y0 + max(1, h // 8)] = 255
    return img, lab


# ------------------------------------------------------------------------------------------------
# mmseg


def _shrink(v, f):
    return tuple(int(round(x / f)) for x in v)


def mmseg_pipeline(config: str, shrink: int):
    """[(official step name, ctxseg step name, callable(results) -> results)], settings."""
    warnings.filterwarnings("ignore")
    _ensure_mmcv_ops()
    import mmseg
    from mmengine import Config
    from mmseg.registry import MODELS, TRANSFORMS
    from mmseg.utils import register_all_modules

    register_all_modules(init_default_scope=True)
    assert mmseg.__version__ == MMSEG_VERSION, mmseg.__version__
    root = Path(os.environ.get("CTXSEG_REF_MMSEG_CONFIGS", Path(mmseg.__file__).parent / ".mim" / "configs"))
    cfg = Config.fromfile(str(root / config))
    settings = {"official_config": f"mmseg {MMSEG_VERSION} configs/{config}", "official_pipeline": []}
    steps = []
    for t in cfg.train_dataloader.dataset.pipeline:
        t = dict(t)
        settings["official_pipeline"].append(dict(t))
        if t["type"] in ("LoadImageFromFile", "LoadAnnotations"):
            continue
        if t["type"] == "RandomResize":
            t["scale"] = _shrink(t["scale"], shrink)
        if t["type"] == "RandomCrop":
            t["crop_size"] = settings["crop_size"] = _shrink(t["crop_size"], shrink)
        steps.append((t["type"], MMSEG_STEPS[t["type"]], TRANSFORMS.build(t)))
    dp = dict(cfg.model.data_preprocessor)
    settings["official_data_preprocessor"] = dict(dp)
    dp["size"] = _shrink(dp["size"], shrink)
    pre = MODELS.build(dp)
    pack = steps[-1][2]
    from mmengine.dataset import pseudo_collate

    steps[-1] = ("PackSegInputs+SegDataPreProcessor", "normalize_pad", lambda r: pre(pseudo_collate([pack(r)]), True))
    return steps, settings


def run_mmseg(steps, img, lab, rec: Recorder):
    results = {"img": img, "gt_seg_map": lab, "seg_fields": ["gt_seg_map"], "img_shape": img.shape[:2]}
    results["ori_shape"] = img.shape[:2]
    out = []
    for _, name, fn in steps:
        results, draws = rec.step(fn, results)
        if name == "normalize_pad":
            image = results["inputs"][0].numpy().astype(np.float32)
            label = results["data_samples"][0].gt_sem_seg.data[0].numpy().astype(np.uint8)
        else:
            image, label = results["img"], results["gt_seg_map"]
        out.append((name, image, label, draws))
    return out


# ------------------------------------------------------------------------------------------------
# the CAC fork (mmseg 0.x on pure-python mmcv 1.7.2)


def cac_pipeline(config: str, shrink: int):
    warnings.filterwarnings("ignore")
    repo, mmcv_dir = os.environ.get("CTXSEG_CAC_REPO"), os.environ.get("CTXSEG_CAC_MMCV")
    if not repo or not mmcv_dir:
        sys.exit("set CTXSEG_CAC_REPO (git dir of tianzhuotao/CAC) and CTXSEG_CAC_MMCV (folder holding mmcv 1.7.2)")
    src = tempfile.mkdtemp(prefix="cac_")
    archive = subprocess.run(["git", f"--git-dir={repo}", "archive", "HEAD"], capture_output=True, check=True).stdout
    subprocess.run(["tar", "x", "-C", src], input=archive, check=True)
    rev = subprocess.run(["git", f"--git-dir={repo}", "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    sys.path[:0] = [os.path.abspath(mmcv_dir), src]
    import mmcv

    _ensure_mmcv_ops()
    real, mmcv.__version__ = mmcv.__version__, "1.5.0"  # the fork's import-time mmcv<=1.5.0 check only
    try:
        import mmseg
    finally:
        mmcv.__version__ = real
    assert mmseg.__file__.startswith(src), mmseg.__file__
    import mmseg.datasets.pipelines  # noqa: F401 - registers the transforms
    from mmcv.utils import build_from_cfg
    from mmseg.datasets.builder import PIPELINES

    cfg = mmcv.Config.fromfile(os.path.join(src, config))
    settings = {
        "official_config": f"tianzhuotao/CAC {rev.strip()[:10]} {config} (mmcv {real})",
        "official_pipeline": [dict(t) for t in cfg.train_pipeline],
    }
    steps = []
    for t in cfg.train_pipeline:
        t = dict(t)
        if t["type"] in ("LoadImageFromFile", "LoadAnnotations", "Collect"):
            continue
        if t["type"] == "Resize":
            t["img_scale"] = _shrink(t["img_scale"], shrink)
        if t["type"] in ("RandomCrop", "Pad"):
            key = "crop_size" if t["type"] == "RandomCrop" else "size"
            t[key] = _shrink(t[key], shrink)
            if key == "crop_size":
                settings["crop_size"] = t[key]
        steps.append((t["type"], CAC_STEPS[t["type"]], build_from_cfg(t, PIPELINES)))
    return steps, settings


def run_cac(steps, img, lab, rec: Recorder):
    results = {"img": img, "gt_semantic_seg": lab, "seg_fields": ["gt_semantic_seg"], "img_shape": img.shape}
    results |= {"ori_shape": img.shape, "pad_shape": img.shape, "scale_factor": 1.0, "filename": None}
    out, pending = [], []
    for _, name, fn in steps:
        results, draws = rec.step(fn, results)
        if name is None:  # Normalize, Pad: checked with the DefaultFormatBundle step that follows them
            pending += draws
            continue
        draws, pending = pending + draws, []
        if name == "normalize_pad":
            image = results["img"].data.numpy().astype(np.float32)
            label = results["gt_semantic_seg"].data[0].numpy().astype(np.uint8)
        else:
            image, label = results["img"], results["gt_semantic_seg"]
        out.append((name, np.ascontiguousarray(image), np.ascontiguousarray(label), draws))
    return out


# ------------------------------------------------------------------------------------------------
# sssegmentation


def _ssseg_dataset_config(name: str):
    repo = os.environ.get("CTXSEG_SSSEG_REPO")
    if not repo:
        sys.exit("set CTXSEG_SSSEG_REPO to a git dir of SegmentationBLWX/sssegmentation (github fetch)")
    tmp = Path(tempfile.mkdtemp()) / "ssseg_datasets"
    tmp.mkdir()
    sys.modules.pop("ssseg_datasets", None)  # one fresh package per config
    (tmp / "__init__.py").write_text("")
    for f in ("default_dataset", name):
        src = subprocess.run(
            ["git", f"--git-dir={repo}", "show", f"{SSSEG_REV}:ssseg/configs/_base_/datasets/{f}.py"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        (tmp / f"{f}.py").write_text(src)
    sys.path.insert(0, str(tmp.parent))
    importlib.invalidate_caches()
    mod = importlib.import_module(f"ssseg_datasets.{name}")
    sys.path.remove(str(tmp.parent))
    (cfg,) = [v for k, v in vars(mod).items() if k.startswith("DATASET_CFG_")]
    return cfg


def ssseg_pipeline(config: str, shrink: int):
    import copy

    import ssseg
    from ssseg.modules.datasets.pipelines import BuildDataTransform

    warnings.filterwarnings("ignore")
    version = getattr(ssseg, "__version__", None)
    if version is None:
        from importlib.metadata import version as _v

        version = _v("sssegmentation")
    assert version == SSSEG_VERSION, version
    cfg = _ssseg_dataset_config(config)
    pipeline = cfg["train"]["data_pipelines"]
    settings = {
        "official_config": f"ssseg {SSSEG_REV} configs/_base_/datasets/{config}.py (sssegmentation {version})",
        "official_pipeline": [[t, dict(c)] for t, c in pipeline],
    }
    steps = []
    for t, c in pipeline:
        c = copy.deepcopy(c)
        if t in SSSEG_SKIPPED:
            continue
        for key in ("output_size", "crop_size"):
            if key in c and t in ("Resize", "RandomCrop", "Padding"):
                c[key] = _shrink(c[key], shrink)
        if t == "RandomCrop":
            settings["crop_size"] = c["crop_size"]
        c["type"] = t
        steps.append((t, SSSEG_STEPS[t], BuildDataTransform(c)))
    return steps, settings


def run_ssseg(steps, img, lab, rec: Recorder):
    seg = lab.astype(np.float32)
    seg[lab == 255] = -100  # ssseg's ignore index
    meta = {"image": img, "seg_target": seg, "width": img.shape[1], "height": img.shape[0]}
    out, pending = [], []
    for _, name, fn in steps:
        meta, draws = rec.step(fn, meta)
        if name is None:  # Normalize, ToTensor: checked with the Padding step that follows them
            pending += draws
            continue
        draws, pending = pending + draws, []
        if name == "normalize_pad":
            image, s = meta["image"].numpy(), meta["seg_target"].numpy()
        else:
            image, s = meta["image"], meta["seg_target"]
        label = np.where(s == -100, 255, s).astype(np.uint8)
        assert np.array_equal(label.astype(np.float32), np.where(s == -100, 255, s))
        out.append((name, np.ascontiguousarray(image), label, draws))
    return out


# ------------------------------------------------------------------------------------------------


def _photometric_ops(draws) -> list[str]:
    """Which distortions the draws applied (the same draw order in mmseg and ssseg)."""
    v = [d[3] for d in draws]
    i, ops = 0, []

    def coin(name):
        nonlocal i
        on = bool(v[i])
        i += 1 + on
        if on:
            ops.append(name)

    coin("brightness")
    mode = int(v[i])
    i += 1
    if mode == 1:
        coin("contrast_first")
    coin("saturation")
    coin("hue")
    if mode == 0:
        coin("contrast_last")
    assert i == len(v)
    return ops


def _coverage(res, crop_size) -> dict:
    """What one sample exercised: crop offsets drawn, crop kept whole, flip, photometric ops, padding."""
    by = {r[0]: r for r in res}
    cov = {"crop_offsets": sum(d[0] == "integers" for d in by["crop"][3]) // 2}
    cov["uncropped"] = any(a > b for a, b in zip(by["crop"][2].shape, crop_size, strict=True))
    cov["flipped"] = by["flip"][3][0][3] < 0.5
    if "rotate" in by:
        cov["rotated"] = len(by["rotate"][3]) == 2
    cov["photometric"] = _photometric_ops(by["photometric"][3])
    cov["padded"] = any(a < b for a, b in zip(by["crop"][2].shape, crop_size, strict=True))
    return cov


def generate(name: str, seed: int, out_dir: Path):
    import cv2

    base, config, recipe, shrink, sizes, num_classes = CASES[name]
    steps, settings = {"mmseg": mmseg_pipeline, "ssseg": ssseg_pipeline, "cac": cac_pipeline}[base](config, shrink)
    run = {"mmseg": run_mmseg, "ssseg": run_ssseg, "cac": run_cac}[base]
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    rec = Recorder()
    arrays, coverage = {}, []
    step_names = None
    rec.install()
    try:
        for i, (h, w) in enumerate(sizes):
            img, lab = make_sample(rng, h, w, num_classes, i % 4)
            np.random.seed(int(rng.integers(2**31)))
            res = run(steps, img.copy(), lab.copy(), rec)
            names = [r[0] for r in res]
            assert step_names in (None, names)
            step_names = names
            coverage.append(_coverage(res, settings["crop_size"]))
            arrays[f"s{i}_in_img"], arrays[f"s{i}_in_lab"] = img, lab
            for k, (_, image, label, draws) in enumerate(res):
                arrays[f"s{i}_{k}_img"], arrays[f"s{i}_{k}_lab"] = image, label
                arrays[f"s{i}_{k}_draws"] = np.array([KINDS[d[0]] for d in draws], np.int8)
                arrays[f"s{i}_{k}_draw_vals"] = np.array([d[1:] for d in draws], np.float64).reshape(-1, 3)
    finally:
        rec.uninstall()
    import torch

    meta = {
        "case": name,
        "code_base": base,
        "recipe": recipe,
        "shrink": shrink,
        "num_classes": num_classes,
        "samples": len(sizes),
        "steps": step_names,
        "seed": seed,
        "crop_size": settings.pop("crop_size"),
        "coverage": coverage,
        "versions": {
            "numpy": np.__version__,
            "opencv": cv2.__version__,
            "torch": torch.__version__,
            base: {"mmseg": MMSEG_VERSION, "ssseg": SSSEG_VERSION, "cac": "mmseg 0.x fork, mmcv 1.7.2"}[base],
        },
        **settings,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out_dir / f"{name}.npz", **arrays)
    (out_dir / f"{name}.json").write_text(json.dumps(meta, indent=1, default=str) + "\n")
    draws = sum(len(v) for k, v in arrays.items() if k.endswith("_draws"))
    size = (out_dir / f"{name}.npz").stat().st_size
    print(f"{name}: {len(sizes)} samples, steps {step_names}, {draws} draws, {size / 1024:.0f} KiB")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--list", action="store_true", help="print the case names")
    ap.add_argument("--case", action="append", help="case name (repeatable; default all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "cases")
    args = ap.parse_args()
    if args.list:
        print("\n".join(CASES))
        return
    names = args.case or list(CASES)
    if len(names) > 1:  # one process per case: mmseg 1.2.2 and the CAC fork are both called `mmseg`
        for name in names:
            cmd = [sys.executable, __file__, "--case", name, "--seed", str(args.seed), "--out", str(args.out)]
            subprocess.run(cmd, check=True)
        return
    import torch

    torch.set_num_threads(1)
    generate(names[0], args.seed, args.out)


if __name__ == "__main__":
    main()
