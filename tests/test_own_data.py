"""Your own data (issue 21 §2-3): a recipe adapted to a custom-class prepared dataset (`train --data`,
`recipes show --data`), fine-tuning with `--init` onto another class count, and eval / predict / viz
with the dataset's class names and palette. The chain starts from a `ctxseg prepare folder` export and
`--init official` goes through the real weights registry (a user registry and a loopback zoo,
tests/weights_zoo.py)."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.conftest import REPO, run_cli
from tests.weights_zoo import Zoo, write_registry

_registered = False


def invoke(*args: str) -> str:
    """Run `ctxseg ARGS` in-process (no second torch import); return its output."""
    from typer.testing import CliRunner

    import ctxseg.cli as cli

    global _registered
    if not _registered:
        cli._register()
        _registered = True
    result = CliRunner().invoke(cli.app, list(args), catch_exceptions=True)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture
def in_workdir(workdir: Path, monkeypatch):
    """cwd and runs/ of in-process commands inside the work folder."""
    from ctxseg.engine import runs as runs_mod
    from ctxseg.viz import sources

    monkeypatch.chdir(workdir)
    monkeypatch.setattr(sources, "RUNS_DIR", workdir / "runs")
    monkeypatch.setattr(runs_mod, "RUNS_DIR", workdir / "runs")
    return workdir


RECIPE = str(REPO / "tests" / "recipes" / "owndata_tiny.toml")
FRUIT = (["apple", "pear", "plum"], [[200, 30, 30], [40, 200, 40], [90, 40, 160]])
TOOLS = (
    ["hammer", "saw", "drill", "wrench", "pliers"],
    [[230, 160, 20], [20, 120, 220], [240, 240, 60], [120, 60, 20], [10, 200, 190]],
)
FAST = [
    "--set",
    "data.num_workers=0",
    "--set",
    "data.batch_size=2",
    "--set",
    "train.log_interval=1",
    "--set",
    "train.eval_interval=1000",
    "--set",
    "train.check_labels=false",
    "--no-progress",
]


def _samples(classes: list[str], palette: list[list[int]], size_hw: tuple[int, int], n: int, rng):
    """Images whose regions have their class's palette colour plus noise (RGB), and labels with the
    class ids and a band of ignore (255) pixels."""
    h, w = size_hw
    for _ in range(n):
        cut_y, cut_x = int(rng.integers(h // 4, 3 * h // 4)), int(rng.integers(w // 4, 3 * w // 4))
        ids = rng.permutation(len(classes))[:3] if len(classes) >= 3 else [0, 1, 0]
        label = np.full((h, w), ids[0], np.uint8)
        label[cut_y:, :cut_x] = ids[1]
        label[:, cut_x:] = ids[2 % len(ids)]
        label[cut_y - 1 : cut_y + 1] = 255
        color = np.asarray(palette, np.float32)[np.minimum(label, len(classes) - 1)]
        yield np.clip(color + rng.normal(0, 12, color.shape), 0, 255).astype(np.uint8), label


def make_export(
    root: Path, classes: list[str], palette: list[list[int]], size_hw: tuple[int, int], train: int = 6, val: int = 3
) -> Path:
    """A plain export as an annotation tool writes it (`ctxseg prepare folder` input): images/<split>/*.png,
    class-index masks/<split>/*.png (255: not labelled) and classes.txt."""
    rng = np.random.default_rng(len(classes))
    for split, n in (("train", train), ("val", val)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "masks" / split).mkdir(parents=True, exist_ok=True)
        for i, (image, label) in enumerate(_samples(classes, palette, size_hw, n, rng)):
            assert cv2.imwrite(str(root / "images" / split / f"{split}_{i:02d}.png"), image[..., ::-1])
            assert cv2.imwrite(str(root / "masks" / split / f"{split}_{i:02d}.png"), label)
    (root / "classes.txt").write_text("\n".join(classes) + "\n")
    return root


def make_dataset(
    root: Path, classes: list[str], palette: list[list[int]], size_hw: tuple[int, int], train: int = 6, val: int = 3
) -> Path:
    """A prepared index written by hand (the format of ctxseg.data.index), the samples of `_samples`."""
    rng = np.random.default_rng(len(classes))
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(exist_ok=True)
    (root / "splits").mkdir(exist_ok=True)
    counts = np.zeros(len(classes), np.int64)
    for split, n in (("train", train), ("val", val)):
        lines = []
        for i, (image, label) in enumerate(_samples(classes, palette, size_hw, n, rng)):
            name = f"{split}_{i:02d}"
            cv2.imwrite(str(root / "images" / f"{name}.png"), image[..., ::-1])
            cv2.imwrite(str(root / "labels" / f"{name}.png"), label)
            lines.append(f"images/{name}.png labels/{name}.png")
            if split == "train":
                counts += np.bincount(label[label != 255], minlength=len(classes))
        (root / "splits" / f"{split}.txt").write_text("\n".join(lines) + "\n")
    meta = {
        "name": root.name,
        "classes": classes,
        "palette": palette,
        "num_classes": len(classes),
        "ignore_index": 255,
        "reduce_zero_label": False,
        "image_root": ".",
        "label_root": ".",
        "flip_pairs": [],
        "splits": {"train": train, "val": val},
        "class_pixel_counts": counts.tolist(),
    }
    (root / "meta.json").write_text(json.dumps(meta, indent=1))
    return root


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """data/fruit: a plain export (3 classes, 40x56) through `ctxseg prepare folder`; data/tools: a
    prepared index written by hand (5 classes, 48x64)."""
    wd = tmp_path_factory.mktemp("owndata")
    export = make_export(wd / "exports" / "fruit", *FRUIT, size_hw=(40, 56))
    out = invoke(
        "prepare", "folder", "--root", str(export), "--out", str(wd / "data" / "fruit"), "--workers", "1",
        "--classes", str(export / "classes.txt"),
    )  # fmt: skip
    assert "3 classes; train 6, val 3" in " ".join(out.split())
    meta = json.loads((wd / "data" / "fruit" / "meta.json").read_text())
    assert meta["classes"] == FRUIT[0] and meta["splits"]["train"] == 6 and meta["splits"]["val"] == 3
    make_dataset(wd / "data" / "tools", *TOOLS, size_hw=(48, 64))
    return wd


# --------------------------------------------------------------------------------------------
# adapting a recipe (in-process: no model is built)


def test_adapt_sizes_classes_and_clips_the_crop(workdir: Path):
    from ctxseg.config import load_recipe
    from ctxseg.data.adapt import adapt_to_data

    base = load_recipe(RECIPE)
    assert base.data.num_classes == 7 and tuple(base.data.crop_size) == (128, 128)
    result = adapt_to_data(base, workdir / "data" / "fruit")
    d = result.recipe.data
    assert (d.num_classes, d.ignore_index, d.dataset, d.root) == (3, 255, "fruit", str(workdir / "data" / "fruit"))
    assert tuple(d.crop_size) == (40, 56)  # the demo keeps the image size (scale unset): 40x56 images
    text = "\n".join(result.notes)
    assert "data.num_classes: 7 -> 3" in text and "apple, pear, plum" in text
    assert "data.crop_size: [128, 128] -> [40, 56]" in text and "padded" in text
    # --set keys are kept
    kept = adapt_to_data(base, workdir / "data" / "fruit", keep={"data.crop_size"})
    assert tuple(kept.recipe.data.crop_size) == (128, 128)


def test_adapt_a_paper_recipe(workdir: Path):
    from ctxseg.config import load_recipe
    from ctxseg.data.adapt import adapt_to_data

    base = load_recipe("ocrnet-hr18-cityscapes-80k", ["train.loss.class_weight=[" + ",".join(["1.0"] * 19) + "]"])
    result = adapt_to_data(base, workdir / "data" / "tools")
    r, text = result.recipe, "\n".join(result.notes)
    assert r.data.num_classes == 5 and r.train.loss.class_weight is None and "19 weights" in text
    assert r.published.miou is None and "published: dropped" in text
    # a crop the resized images fill exactly stays (CamVid: 48x64 -> 360x480 at the mmseg scale (480, 360))
    mm = load_recipe("contrast-hrnet48-camvid-mem", ["data.pipeline='mmseg'"])
    camvid = adapt_to_data(mm, workdir / "data" / "tools").recipe
    assert tuple(camvid.data.crop_size) == (360, 480) and camvid.data.val_split == "val"
    assert camvid.data.ignore_index == 255
    # its own (openseg) pipeline has no fixed resize: the crop shrinks to the 48x64 images, openseg's follow
    own = adapt_to_data(load_recipe("contrast-hrnet48-camvid-mem"), workdir / "data" / "tools").recipe
    assert tuple(own.data.crop_size) == (48, 64) and tuple(own.data.openseg.data_transformer.input_size) == (64, 48)
    # Cityscapes' RandomResize (2048, 1024) blows 48x64 images up to 1024x1365, which the 512x1024 crop fits;
    # the note says how far they are scaled
    assert tuple(r.data.crop_size) == tuple(base.data.crop_size) and "x21.33" in text


# --------------------------------------------------------------------------------------------
# fine-tuning plans (in-process)


def test_class_dependent_keys_cover_classifiers_memory_and_queues():
    from ctxseg.config import load_recipe
    from ctxseg.engine.finetune import class_dependent_keys

    rec = load_recipe(
        RECIPE,
        [
            'model.plugins=[{type="mcibi", feats_channels=16, transform_channels=8, out_channels=16}, {type="cac"}, '
            '{type="pixel_contrast", proj="linear", proj_dim=8, use_queue=true, memory_size=4}]'
        ],
    )
    keys = class_dependent_keys(rec)
    assert {
        "auxiliary_head.conv_seg.weight",
        "auxiliary_head.conv_seg.bias",
        "plugins.memory.memory",
        "plugins.memory.decoder_stage1.conv_seg.weight",
        "plugins.memory.decoder_stage2.conv_seg.weight",
        "plugins.contrast.segment_queue",
        "plugins.contrast.pixel_queue_ptr",
    } <= keys
    assert not any(k.startswith(("backbone.", "plugins.cac.")) for k in keys)


def test_init_official_resolves_through_the_weights_registry(monkeypatch, tmp_path: Path):
    import sys
    import types

    from ctxseg.engine.finetune import resolve_init

    asked = []
    fake = types.ModuleType("ctxseg.weights")
    fake.get = lambda name, **kw: asked.append(name) or tmp_path / "released.safetensors"
    monkeypatch.setitem(sys.modules, "ctxseg.weights", fake)
    import ctxseg

    monkeypatch.setattr(ctxseg, "weights", fake, raising=False)
    assert resolve_init("official", "ocrnet-hr18-cityscapes-80k") == tmp_path / "released.safetensors"
    assert asked == ["ocrnet-hr18-cityscapes-80k"]


# --------------------------------------------------------------------------------------------
# the CLI, end to end


def test_recipes_show_data_round_trip(in_workdir: Path):
    from ctxseg.config import load_recipe

    workdir = in_workdir
    text = invoke("recipes", "show", "ocrnet-hr18-cityscapes-80k", "--data", "data/tools")
    path = workdir / "my.toml"
    path.write_text(text)
    raw = tomllib.loads(text)
    assert raw["data"]["num_classes"] == 5 and raw["data"]["root"] == "data/tools"
    assert text.startswith("# ocrnet-hr18-cityscapes-80k adapted to data/tools:")
    back = load_recipe(path)
    assert back.data.num_classes == 5 and back.name == "ocrnet-hr18-cityscapes-80k"
    assert back.to_dict() == load_recipe(path).to_dict()
    from ctxseg.data.adapt import adapt_to_data

    assert adapt_to_data(back, workdir / "data" / "tools").recipe.data == back.data.model_copy(
        update={"root": str(workdir / "data" / "tools")}
    )


def test_train_eval_predict_then_finetune(in_workdir: Path):
    workdir = in_workdir
    # train a context-plug-in model (MCIBI + CAC) on the 3-class `prepare folder` export
    proc = run_cli("train", "--recipe", RECIPE, "--data", "data/fruit", "--set", "train.iters=2", *FAST, cwd=workdir)
    assert "adapted owndata-tiny to data/fruit" in proc.stdout
    assert "data.num_classes: 7 -> 3" in proc.stdout and "data.crop_size: [128, 128] -> [40, 56]" in proc.stdout
    run = Path(proc.stdout.split("run folder ")[-1].strip().split()[0])
    source = run / "final.safetensors"
    assert source.is_file()
    run_toml = tomllib.loads((run / "recipe.toml").read_text())
    assert run_toml["data"]["num_classes"] == 3 and run_toml["data"]["crop_size"] == [40, 56]

    # eval: per-class IoU/Acc under the dataset's class names
    text = invoke("eval", "-c", str(source))
    for name in FRUIT[0]:
        assert name in text
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert list(metrics["IoU"]) == FRUIT[0]
    # eval --predictions scores the PNGs eval wrote, against the same labels
    proc = run_cli("eval", "--predictions", str(run / "eval" / "predictions"), "--data-root", "data/fruit", cwd=workdir)
    assert "plum" in proc.stdout
    scored = json.loads((run / "eval" / "predictions_eval" / "metrics.json").read_text())
    assert scored["mIoU"] == pytest.approx(metrics["mIoU"])

    # predict --color: colours from the dataset's palette, and a legend with its names
    invoke("predict", "-c", str(source), "data/fruit/images/val", "--out", "preds", "--color")
    pred = cv2.imread(str(workdir / "preds" / "val_00.png"), cv2.IMREAD_UNCHANGED)
    colour = cv2.imread(str(workdir / "preds" / "val_00_color.png"))[..., ::-1]
    assert pred.max() < 3
    palette = json.loads((workdir / "data" / "fruit" / "meta.json").read_text())["palette"]  # prepare's colours
    assert len(palette) == 3 and len({tuple(c) for c in palette}) == 3
    assert np.array_equal(colour, np.asarray(palette, np.uint8)[pred])
    assert (workdir / "preds" / "legend.png").is_file()
    legend = json.loads((workdir / "preds" / "legend.json").read_text())
    assert legend == {"classes": FRUIT[0], "palette": palette, "ignore_index": 255}

    # viz overlay: the HTML gallery carries a legend with the class names and colours
    invoke("viz", "overlay", "--predictions", "preds", "--out", "overlays")
    page = (workdir / "overlays" / "index.html").read_text()
    assert "apple" in page and "rgb({},{},{})".format(*palette[2]) in page

    # fine-tune onto the 5-class dataset: class-dependent tensors re-initialised, the rest loaded. At lr 0 the
    # parameters stay where --init put them (buffers - BatchNorm statistics, the memory - still move)
    # `--init official` asks the real weights registry for the recipe's released model: a user registry
    # lists the checkpoint just trained (recipe: the recipe file, whose name is owndata-tiny), served by a
    # loopback zoo; it is downloaded and verified (its published sha256 prefix) into an empty cache
    frozen = ["--set", "train.optimizer.lr=0.0", "--set", "train.schedule.policy='constant'"]
    with Zoo.running() as zoo:
        row = zoo.serve("owndata_tiny_fruit.safetensors", source.read_bytes(), recipe=RECIPE, prefix=True)
        env = zoo.env(workdir / "home", write_registry(workdir / "lab.toml", {"fruit-released": row}))
        proc = run_cli(
            "train", "--recipe", RECIPE, "--data", "data/tools", "--init", "official", "--set", "train.iters=2",
            "--set", "train.checkpoint_interval=1", *frozen, *FAST, cwd=workdir, env=env,
        )  # fmt: skip
        assert [r["status"] for r in zoo.log] == [200]
    cached = workdir / "home" / "weights" / "raw" / "fruit-released" / "owndata_tiny_fruit.safetensors"
    assert cached.read_bytes() == source.read_bytes()
    assert "--init official" in proc.stdout and "3 -> 5 classes" in proc.stdout
    assert "re-initialised" in proc.stdout and "loaded" in proc.stdout
    tuned = Path(proc.stdout.split("run folder ")[-1].strip().split()[0])
    record = json.loads((tuned / "init.json").read_text())
    assert record["source_num_classes"] == 3 and record["num_classes"] == 5
    assert set(record["reinitialised"]) == {
        f"{m}.conv_seg.{p}"
        for m in ("auxiliary_head", "plugins.memory.decoder_stage1", "plugins.memory.decoder_stage2")
        for p in ("weight", "bias")
    } | {"plugins.memory.memory"}
    assert record["counts"]["unused"] == 0 and record["counts"]["loaded"] > 100
    assert str(record["counts"]["loaded"]) in proc.stdout
    import torch
    from safetensors.torch import load_file

    from ctxseg.engine.checkpoint import load_model

    before, after = load_file(str(source)), load_file(str(tuned / "final.safetensors"))
    model, _, _ = load_model(tuned / "final.safetensors")
    params = {k for k, _ in model.named_parameters()}
    loaded_params = [k for k in record["loaded"] if k in params]
    assert any(k.startswith("backbone.") for k in loaded_params) and any("plugins.cac." in k for k in loaded_params)
    for k in loaded_params:
        assert torch.equal(before[k], after[k]), k
    assert after["plugins.memory.decoder_stage2.conv_seg.weight"].shape[0] == 5

    # resume works on a fine-tuned run: its own checkpoint, no second --init
    proc = run_cli("train", "--resume", str(tuned / "checkpoints" / "iter_0000001.safetensors"), *FAST, cwd=workdir)
    assert "done 2 iterations" in proc.stdout and "re-initialised" not in proc.stdout


def test_incompatible_init_is_refused(workdir: Path, tmp_path: Path):
    import torch

    from ctxseg.config import load_recipe
    from ctxseg.engine.checkpoint import save_weights
    from ctxseg.models.segmentor import build_segmentor

    other = load_recipe(REPO / "tests" / "recipes" / "cac_fcn_tiny.toml")
    torch.manual_seed(0)
    path = tmp_path / "other.safetensors"
    save_weights(path, build_segmentor(other), other)
    proc = run_cli(
        "train", "--recipe", RECIPE, "--data", "data/fruit", "--init", str(path), *FAST, cwd=workdir, check=False
    )
    assert proc.returncode == 2, proc.stderr
    assert "first mismatching key backbone." in proc.stderr and "Traceback" not in proc.stderr
    from ctxseg.engine.finetune import resolve_init
    from ctxseg.errors import UserError

    with pytest.raises(UserError, match="no such checkpoint file"):
        resolve_init(tmp_path / "missing.safetensors", "owndata-tiny")
