"""The Python API (ctxseg.api, issue 20 §4) and `--weights official` on eval / predict / viz / convert
onnx (§3).

One small demo checkpoint (random weights with randomised BatchNorm statistics, so predictions vary
over the image) on the small synthetic dataset feeds every test. `--weights official` goes through
the real `ctxseg.weights`: a user registry (CTXSEG_WEIGHTS_REGISTRY) lists the checkpoint, served by
a loopback zoo (tests/weights_zoo.py) behind CTXSEG_WEIGHTS_MIRROR, into a cache in a temp folder.
Downloading faults, verifying and converting other layouts are the registry's own tests
(tests/test_weights.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import ctxseg
import ctxseg.cli as cli
from ctxseg.engine import runs as runs_mod
from ctxseg.errors import UserError
from ctxseg.viz import sources
from tests.conftest import REPO, run_cli
from tests.weights_zoo import Zoo, write_registry

PUBLISHED = [
    "published.paper='Test paper'",
    "published.table='Table 1'",
    "published.miou=12.5",
    "published.miou_ms=23.25",
]

_registered = False


def invoke(*args: str) -> str:
    """Run `ctxseg ARGS` in-process; return its output (raises what the command raised)."""
    global _registered
    if not _registered:
        cli._register()
        _registered = True
    result = CliRunner().invoke(cli.app, list(args), catch_exceptions=True)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == 0, result.output
    return result.output


def _varied(model: torch.nn.Module) -> torch.nn.Module:
    """Random BatchNorm affine parameters and statistics: a random model whose labels vary per pixel
    (a freshly initialised one predicts one class everywhere, which would compare nothing)."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.weight.data.uniform_(0.5, 1.5, generator=g)
            m.bias.data.normal_(0, 0.3, generator=g)
            m.running_mean.normal_(0, 0.3, generator=g)
            m.running_var.uniform_(0.5, 2.0, generator=g)
    return model


@pytest.fixture(scope="module")
def demo(tmp_path_factory, synthetic_small):
    """A demo checkpoint with published numbers (and its SegModel), 2 small val images, cwd and runs/
    in a temp folder."""
    from ctxseg.config import load_recipe
    from ctxseg.engine.checkpoint import save_weights
    from ctxseg.models.segmentor import build_segmentor

    tmp = tmp_path_factory.mktemp("api")
    recipe = load_recipe("demo", [f"data.root='{synthetic_small}'", *PUBLISHED])
    torch.manual_seed(0)
    ckpt = save_weights(tmp / "zoo" / "demo.safetensors", _varied(build_segmentor(recipe).eval()), recipe)
    images = tmp / "images"
    images.mkdir()
    for src in sorted((synthetic_small / "images" / "val").glob("*.png"))[:2]:  # small crops: fast
        cv2.imwrite(str(images / src.name), cv2.imread(str(src), cv2.IMREAD_COLOR)[:56, :72])
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp)
        mp.setattr(sources, "RUNS_DIR", tmp / "runs")
        mp.setattr(runs_mod, "RUNS_DIR", tmp / "runs")
        yield types.SimpleNamespace(
            tmp=tmp,
            ckpt=ckpt,
            images=sorted(images.glob("*.png")),
            folder=images,
            data=synthetic_small,
            model=ctxseg.load(ckpt, device="cpu"),
        )


@pytest.fixture(scope="module")
def registry(demo):
    """The demo checkpoint as the released model of recipe "demo" (entry "demo-official", published
    miou 12.5) in a user registry, served by a loopback zoo, CTXSEG_HOME in a temp folder; fetched
    once here, so the tests after it read the cache."""
    from ctxseg import weights

    with Zoo.running() as zoo, pytest.MonkeyPatch.context() as mp:
        row = zoo.serve("demo.safetensors", demo.ckpt.read_bytes(), recipe="demo", published={"miou": 12.5})
        path = write_registry(demo.tmp / "lab.toml", {"demo-official": row})
        for key, value in zoo.env(demo.tmp / "home", path).items():
            mp.setenv(key, value)
        cached = weights.get("demo-official", progress=False)
        assert cached.read_bytes() == demo.ckpt.read_bytes() and len(zoo.log) == 1
        yield types.SimpleNamespace(zoo=zoo, ckpt=cached)


@pytest.fixture
def official(monkeypatch, registry):
    """The real `ctxseg.weights.get`, spied on: returns the list of names asked for."""
    from ctxseg import weights

    asked: list[str] = []
    real = weights.get

    def get(name, **kw):
        asked.append(name)
        return real(name, **kw)

    monkeypatch.setattr(weights, "get", get)
    return asked


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a network connection fails the test."""
    import socket

    def refuse(*a, **k):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _rgb(path: Path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_COLOR)[..., ::-1].copy()


def _cli_labels(out_dir: Path, images: list[Path]) -> list[np.ndarray]:
    return [cv2.imread(str(out_dir / f"{p.stem}.png"), cv2.IMREAD_UNCHANGED).astype(np.int64) for p in images]


# -------------------------------------------------------------------------------------------
# import cost


def test_import_ctxseg_does_not_import_torch():
    code = (
        "import sys, ctxseg\n"
        "v = ctxseg.__version__\n"
        "names = ctxseg.list_recipes()\n"
        "assert 'demo' in names, names\n"
        "assert {'load', 'SegModel', 'list_recipes', 'list_weights'} <= set(dir(ctxseg))\n"
        "print('torch' in sys.modules)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120, check=True
    )
    assert proc.stdout.strip() == "False", proc.stderr


def test_unknown_attribute_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no_such_thing"):
        ctxseg.no_such_thing  # noqa: B018


# -------------------------------------------------------------------------------------------
# same labels as `ctxseg predict`


@pytest.mark.parametrize("ms_flip", [False, True])
def test_predict_matches_cli(demo, ms_flip):
    out_dir = demo.tmp / f"cli_{ms_flip}"
    invoke("predict", str(demo.folder), "-c", str(demo.ckpt), "-o", str(out_dir), *(["--ms-flip"] if ms_flip else []))
    expected = _cli_labels(out_dir, demo.images)
    got = demo.model.predict([str(p) for p in demo.images], ms_flip=ms_flip)
    assert isinstance(got, list) and len(got) == len(demo.images)
    for e, g in zip(expected, got):
        assert g.dtype == np.int64 and g.shape == e.shape
        np.testing.assert_array_equal(g, e)
    assert len(np.unique(np.concatenate([g.ravel() for g in got]))) > 1  # the comparison compares something


def test_every_input_kind_gives_the_same_labels(demo):
    model = demo.model
    path = demo.images[0]
    ref = model.predict(path)
    rgb = _rgb(path)
    chw = torch.from_numpy(rgb).permute(2, 0, 1)
    same = {
        "str": model.predict(str(path)),
        "numpy uint8 RGB": model.predict(rgb),
        "numpy float RGB": model.predict(rgb.astype(np.float32)),
        "tensor float CHW": model.predict(chw.float()),
        "tensor uint8 CHW": model.predict(chw),
        "list of mixed": model.predict([rgb, str(path), chw.float()])[1],
        "tensor NCHW": model.predict(chw.float()[None].repeat(2, 1, 1, 1))[1],
        "call": model(rgb),
    }
    assert isinstance(ref, np.ndarray) and ref.shape == rgb.shape[:2]
    for kind, labels in same.items():
        np.testing.assert_array_equal(labels, ref, err_msg=kind)
    # grayscale and RGBA arrays are accepted (expanded / alpha dropped)
    assert model.predict(rgb[..., 0]).shape == ref.shape
    np.testing.assert_array_equal(model.predict(np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])), ref)


def test_bad_inputs_are_user_errors(demo):
    model = demo.model
    with pytest.raises(UserError, match="HxWx3"):
        model.predict(np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(UserError, match="CxHxW"):
        model.predict(torch.zeros(1, 1, 3, 8, 8))
    with pytest.raises(UserError, match="empty list"):
        model.predict([])
    with pytest.raises(UserError, match="takes a path"):
        model.predict(42)
    with pytest.raises(UserError, match="Cannot read image"):
        model.predict(demo.tmp / "missing.png")
    with pytest.raises(UserError, match="scales"):
        model.predict(demo.images[0], scales=[0.0])


def test_return_probs_and_batching(demo):
    model = demo.model
    rgb = _rgb(demo.images[0])
    for kw in ({}, {"ms_flip": True}, {"scales": [0.75, 1.0], "flip": False}):
        labels, probs = model.predict(rgb, return_probs=True, **kw)
        assert probs.dtype == np.float32 and probs.shape == (model.num_classes, *rgb.shape[:2])
        np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-4)
        np.testing.assert_array_equal(probs.argmax(0), labels)
    # several images: lists; batch_size stacks images of one size into one forward pass
    batch = [rgb, rgb[:, ::-1].copy(), rgb]
    one_by_one, p1 = model.predict(batch, return_probs=True, batch_size=1)
    batched, p3 = model.predict(batch, return_probs=True, batch_size=3)
    assert len(one_by_one) == len(batched) == len(p3) == 3
    for a, b, pa, pb in zip(one_by_one, batched, p1, p3):
        np.testing.assert_allclose(pa, pb, atol=1e-5)
        assert (a == b).mean() > 0.999


def test_properties_and_random_init(demo, no_network):
    model = demo.model
    assert model.classes[0] == "background" and len(model.classes) == model.num_classes == 7
    assert len(model.palette) == 7 and all(len(c) == 3 for c in model.palette)
    assert model.published.miou == 12.5 and model.published.miou_ms == 23.25
    assert model.recipe.name == "demo" and model.checkpoint == demo.ckpt
    assert model.device == torch.device("cpu")
    assert isinstance(model.torch_model, torch.nn.Module) and not model.torch_model.training
    assert model.colorize(model.predict(demo.images[0])).shape[-1] == 3
    # a recipe name: random initialisation, nothing fetched (the network is refused here)
    fresh = ctxseg.load("demo", overrides=[f"data.root='{demo.data}'"])
    assert fresh.checkpoint is None and fresh.classes == model.classes
    assert fresh.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert "demo" in ctxseg.list_recipes()
    # without a prepared index the dataset's own class names are used
    elsewhere = ctxseg.load("demo", overrides=["data.root='/nonexistent'"], device="cpu")
    assert elsewhere.classes == model.classes
    with pytest.raises(UserError, match="Unknown device"):
        ctxseg.load("demo", device="nonsense")
    with pytest.raises(UserError, match="not found"):
        ctxseg.load("no-such-recipe")


def test_load_official_and_weights_path(demo, registry, official, no_network):
    model = ctxseg.load("demo", weights="official", device="cpu")  # cached by the fixture: no network
    assert official == ["demo"] and model.checkpoint == registry.ckpt
    np.testing.assert_array_equal(model.predict(demo.images[0]), ctxseg.load(demo.ckpt).predict(demo.images[0]))
    assert "demo-official" in [e.name for e in ctxseg.list_weights()]
    # weights=PATH: the checkpoint, cross-checked against the recipe named first
    assert ctxseg.load("demo", weights=demo.ckpt).checkpoint == demo.ckpt
    assert ctxseg.load(None, weights=demo.ckpt).recipe.name == "demo"
    with pytest.raises(UserError, match="holds a model of recipe 'demo'"):
        ctxseg.load("ocrnet-hr18-cityscapes-80k", weights=demo.ckpt)
    with pytest.raises(UserError, match="needs a recipe name"):
        ctxseg.load(demo.ckpt, weights="official")


# -------------------------------------------------------------------------------------------
# --weights official on the commands


def test_eval_weights_official_prints_published(demo, registry, official):
    text = invoke("eval", "--weights", "official", "--recipe", "demo", "--limit", "2", "--no-save-preds")
    assert official == ["demo"]
    assert "published 12.50 (single scale; Test paper Table 1)" in " ".join(text.split())
    metrics = json.loads((demo.tmp / "runs" / "official-demo" / "eval" / "metrics.json").read_text())
    assert metrics["checkpoint"] == str(registry.ckpt) and metrics["published_mIoU"] == 12.5
    assert metrics["protocol"] == "ss"
    text = invoke("eval", "--weights", "official", "-r", "demo", "--limit", "1", "--ms-flip", "--no-save-preds")
    assert "published 23.25 (multi-scale + flip" in " ".join(text.split())
    assert not (registry.ckpt.parent / "eval").exists()  # nothing written into the weights cache
    assert len(registry.zoo.log) == 1  # the fixture's download only


def test_predict_viz_onnx_weights_official(demo, official):
    out_dir = demo.tmp / "official_preds"
    invoke("predict", str(demo.folder), "--weights", "official", "--recipe", "demo", "-o", str(out_dir))
    ref_dir = demo.tmp / "ckpt_preds"
    invoke("predict", str(demo.folder), "-c", str(demo.ckpt), "-o", str(ref_dir))
    for a, b in zip(_cli_labels(out_dir, demo.images), _cli_labels(ref_dir, demo.images)):
        np.testing.assert_array_equal(a, b)
    overlays = demo.tmp / "official_overlays"
    invoke(
        "viz", "overlay", "--weights", "official", "--recipe", "demo", "--images", str(demo.folder), "-o", str(overlays)
    )
    assert len(list(overlays.glob("*.png"))) == len(demo.images)
    onnx_path = demo.tmp / "official.onnx"
    invoke(
        "convert", "onnx", "--weights", "official", "--recipe", "demo", "-o", str(onnx_path),
        "--height", "64", "--width", "64", "--no-check",
    )  # fmt: skip
    assert onnx_path.stat().st_size > 0
    assert official == ["demo"] * 3


@pytest.mark.parametrize(
    "args, message",
    [
        (["eval", "--weights", "official"], "needs --recipe NAME"),
        (["eval", "--weights", "official", "--recipe", "demo", "-c", "x.safetensors"], "not both"),
        (["eval", "--weights", "official", "--recipe", "demo", "--run", "runs/x"], "not both"),
        (["eval", "--weights", "latest", "--recipe", "demo"], "takes 'official'"),
        (["eval", "--recipe", "demo"], "only used with --weights official"),
        (["predict", "IMAGES", "--weights", "official"], "needs --recipe NAME"),
        (["predict", "IMAGES", "--weights", "official", "-r", "demo", "-c", "x.safetensors"], "not both"),
        (["viz", "overlay", "--weights", "official", "--images", "IMAGES"], "needs --recipe NAME"),
        (["viz", "overlay", "--weights", "official", "--recipe", "demo"], "needs --images"),
        (["convert", "onnx", "--weights", "official", "-o", "m.onnx"], "needs --recipe NAME"),
        (["convert", "onnx", "--weights", "official", "-r", "demo", "-c", "x", "-o", "m.onnx"], "not both"),
        (["viz", "memory", "--weights", "official"], "needs --recipe NAME"),
        (["viz", "embed", "--weights", "official", "-r", "demo", "-c", "x"], "not both"),
    ],
)
def test_weights_official_usage_errors(demo, official, args, message):
    args = [str(demo.folder) if a == "IMAGES" else a for a in args]
    with pytest.raises(UserError, match=message):
        invoke(*args)
    assert official == []  # refused before anything is fetched


def test_weights_official_end_to_end_through_a_registry(demo, tmp_path, monkeypatch):
    """A checkpoint with no published numbers of its own, listed in a user registry that publishes
    miou 12.5, served by a loopback zoo behind CTXSEG_WEIGHTS_MIRROR into an empty CTXSEG_HOME: the
    real `ctxseg eval --weights official` downloads and verifies it once, prints the registry's number
    beside the measured one, and a second call runs with the server gone; `ctxseg.load(entry,
    weights="official")` predicts what `ctxseg predict -c PATH` writes."""
    from ctxseg.config import load_recipe
    from ctxseg.engine.checkpoint import save_weights

    plain = load_recipe("demo", [f"data.root='{demo.data}'"])
    assert plain.published.miou is None
    ckpt = save_weights(tmp_path / "lab" / "mine.safetensors", demo.model.torch_model, plain)
    home, registry_file = tmp_path / "home", tmp_path / "lab.toml"
    with Zoo.running() as zoo:
        row = zoo.serve("mine.safetensors", ckpt.read_bytes(), recipe="demo", published={"miou": 12.5})
        write_registry(registry_file, {"lab-demo": row})
        env = zoo.env(home, registry_file)
        first = run_cli(
            "eval", "--weights", "official", "--recipe", "lab-demo", "--limit", "2", "--no-save-preds",
            cwd=tmp_path, env=env,
        )  # fmt: skip
        assert [r["status"] for r in zoo.log] == [200]
    cached = home / "weights" / "raw" / "lab-demo" / "mine.safetensors"
    assert cached.read_bytes() == ckpt.read_bytes()
    text = " ".join(first.stdout.split())
    assert "published 12.50 (single scale)" in text, first.stdout
    metrics = json.loads((tmp_path / "runs" / "official-demo" / "eval" / "metrics.json").read_text())
    assert metrics["published_mIoU"] == 12.5 and metrics["checkpoint"] == str(cached)
    assert f"mIoU {100 * metrics['mIoU']:.2f} (single scale)" in text
    # the server is gone: the cache answers (by recipe name this time)
    again = run_cli(
        "eval", "--weights", "official", "-r", "demo", "--limit", "2", "--no-save-preds", cwd=tmp_path, env=env
    )
    assert "published 12.50 (single scale)" in " ".join(again.stdout.split())
    # the Python API through the same registry and cache, against `ctxseg predict -c PATH`
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    model = ctxseg.load("lab-demo", weights="official", device="cpu")
    assert model.checkpoint == cached and model.published.miou == 12.5
    out_dir = tmp_path / "preds"
    invoke("predict", str(demo.folder), "-c", str(ckpt), "-o", str(out_dir))
    for got, expected in zip(model.predict(demo.images), _cli_labels(out_dir, demo.images)):
        np.testing.assert_array_equal(got, expected)
