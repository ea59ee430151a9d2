"""The plug-in contract, proven from outside ctxseg/: toy plug-ins defined and registered in this
file are listed in a recipe (`imports = ["tests.test_plugin_contract"]`), validated against
their constructors, composed in recipe order, trained, evaluated and exported through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from ctxseg.config import load_recipe, validate_recipe
from ctxseg.errors import UserError
from ctxseg.models.builder import register_plugin
from ctxseg.models.context.base import ContextPlugin
from ctxseg.models.segmentor import build_segmentor
from tests.conftest import REPO, run_cli

THIS_MODULE = "tests.test_plugin_contract"


class ClassPriorBias(ContextPlugin):
    """Toy: a learned per-class bias on the final logits, an L2 penalty on it, and a buffer counting
    the labelled pixels of each class seen in training (synchronised across processes)."""

    synchronised_buffers = ("class_pixels",)

    def __init__(self, *, num_classes: int, ignore_index: int, init_bias: float = 0.0, loss_weight: float = 0.01):
        super().__init__()
        self.ignore_index = ignore_index
        self.loss_weight = loss_weight
        self.bias = nn.Parameter(torch.full((num_classes,), init_bias))
        self.register_buffer("class_pixels", torch.zeros(num_classes))
        self.register_buffer("steps_seen", torch.zeros((), dtype=torch.long))
        self.last_lr: float | None = None

    def forward(self, outputs, backbone_feats, targets=None):
        return {"logits": outputs["logits"] + self.bias.view(1, -1, 1, 1)}

    def losses(self, outputs, targets, step):
        return {"loss_toy_bias": self.loss_weight * self.bias.pow(2).sum()}

    def before_train_step(self, step, lr, iters_per_epoch=None):
        self.last_lr = lr

    def after_train_step(self, outputs, targets, step, lr):
        n = self.bias.numel()
        valid = targets[(targets != self.ignore_index) & (targets >= 0) & (targets < n)]
        self.class_pixels += torch.bincount(valid.flatten().long(), minlength=n).to(self.class_pixels.dtype)
        self.steps_seen += 1
        self.synchronise_state()


class LogitScale(ContextPlugin):
    """Toy: multiplies the logits by a constant (no parameters): composing with ClassPriorBias in
    one order or the other gives different logits, which makes the recipe order observable."""

    def __init__(self, *, factor: float = 2.0):
        super().__init__()
        self.factor = factor

    def forward(self, outputs, backbone_feats, targets=None):
        return {"logits": outputs["logits"] * self.factor}


register_plugin("toy_prior", ClassPriorBias)
register_plugin("toy_scale", LogitScale)


def _raw(plugins: list[dict], **data) -> dict:
    return {
        "imports": [THIS_MODULE],
        "data": {"num_classes": 4, **data},
        "model": {
            "backbone": {"type": "resnet", "depth": 18, "stem_channels": 8, "base_channels": 8},
            "head": {"type": "fcn", "channels": 8, "num_convs": 1},
            "plugins": plugins,
        },
    }


def test_recipe_order_is_composition_order():
    torch.manual_seed(0)
    x = torch.randn(1, 3, 32, 32)
    bias_then_scale = build_segmentor(
        validate_recipe(_raw([{"type": "toy_prior", "init_bias": 1.0}, {"type": "toy_scale"}]))
    )
    scale_then_bias = build_segmentor(
        validate_recipe(_raw([{"type": "toy_scale"}, {"type": "toy_prior", "init_bias": 1.0}]))
    )
    scale_then_bias.load_state_dict(bias_then_scale.state_dict())
    assert list(bias_then_scale.plugins) == ["toy_prior", "toy_scale"]
    assert list(scale_then_bias.plugins) == ["toy_scale", "toy_prior"]
    with torch.no_grad():
        a = bias_then_scale.eval()(x)["logits"]
        b = scale_then_bias.eval()(x)["logits"]
    plain = a / 2 - 1.0  # the head's logits
    torch.testing.assert_close(a, (plain + 1.0) * 2)
    torch.testing.assert_close(b, plain * 2 + 1.0)


def test_plugin_keys_are_validated_against_the_constructor():
    with pytest.raises(UserError, match=r"unknown key 'model\.plugins\[0\]\.init_bais'; did you mean 'init_bias'"):
        validate_recipe(_raw([{"type": "toy_prior", "init_bais": 1.0}]))
    with pytest.raises(UserError, match=r"'model\.plugins\[0\]\.loss_weight' must be a number"):
        validate_recipe(_raw([{"type": "toy_prior", "loss_weight": "heavy"}]))
    with pytest.raises(UserError, match=r"model\.plugins\[0\]\.ignore_index.*data\.ignore_index"):
        validate_recipe(_raw([{"type": "toy_prior", "ignore_index": 3}]))
    with pytest.raises(UserError, match=r"'toy_prior_x' is not a known plugin; did you mean 'toy_prior'.*imports"):
        validate_recipe(_raw([{"type": "toy_prior_x"}]))
    with pytest.raises(UserError, match=r"already listed"):
        validate_recipe(_raw([{"type": "toy_scale"}, {"type": "toy_scale"}]))
    # two entries of one type need names; the names become the state-dict prefixes
    model = build_segmentor(
        validate_recipe(_raw([{"type": "toy_scale"}, {"type": "toy_scale", "name": "again", "factor": 3.0}]))
    )
    assert list(model.plugins) == ["toy_scale", "again"] and model.plugins["again"].factor == 3.0
    with pytest.raises(UserError, match=r"cannot import 'no_such_module_xyz'"):
        validate_recipe({**_raw([]), "imports": ["no_such_module_xyz"]})


def test_data_facts_reach_every_plugin_from_one_place():
    raw = _raw(
        [
            {"type": "toy_prior"},
            {
                "type": "mcibi",
                "feats_channels": 8,
                "transform_channels": 4,
                "out_channels": 8,
                "use_context_within_image": False,
            },
        ],
        ignore_index=7,
    )
    raw["model"]["plugins"] = [raw["model"]["plugins"][1], raw["model"]["plugins"][0]]
    raw["model"]["align_corners"] = True
    model = build_segmentor(validate_recipe(raw))
    assert model.plugins["toy_prior"].ignore_index == 7 and model.plugins["toy_prior"].bias.numel() == 4
    assert model.plugins["memory"].ignore_index == 7 and model.plugins["memory"].align_corners is True
    assert model.plugins["memory"].num_classes == 4


def test_extends_merges_plugins_by_type_and_set_addresses_them(tmp_path: Path):
    base = tmp_path / "base.toml"
    base.write_text(
        f'imports = ["{THIS_MODULE}"]\n[data]\nnum_classes = 4\n[model.backbone]\ntype = "resnet"\ndepth = 18\n'
        'stem_channels = 8\nbase_channels = 8\n[model.head]\ntype = "fcn"\nchannels = 8\n\n'
        '[[model.plugins]]\ntype = "toy_prior"\ninit_bias = 1.0\nloss_weight = 0.5\n\n'
        '[[model.plugins]]\ntype = "toy_scale"\n'
    )
    child = tmp_path / "child.toml"
    child.write_text(
        'extends = "base.toml"\n\n[[model.plugins]]\ntype = "toy_prior"\ninit_bias = 2.0\n\n'
        '[[model.plugins]]\ntype = "toy_scale"\n_remove = true\n'
    )
    recipe = load_recipe(child)
    assert recipe.model.plugins == [{"type": "toy_prior", "init_bias": 2.0, "loss_weight": 0.5}]
    recipe = load_recipe(child, ["model.plugins.toy_prior.loss_weight=0.25"])
    assert recipe.model.plugins[0]["loss_weight"] == 0.25
    with pytest.raises(UserError, match="matches no entry"):
        load_recipe(child, ["model.plugins.toy_scale.factor=3"])


def test_plugin_from_a_python_file_next_to_the_recipe(tmp_path: Path):
    (tmp_path / "my_plugin.py").write_text(
        "from ctxseg.models.builder import register_plugin\n"
        "from ctxseg.models.context.base import ContextPlugin\n\n"
        "@register_plugin('file_toy')\n"
        "class FileToy(ContextPlugin):\n"
        "    def __init__(self, *, num_classes: int, offset: float = 0.0):\n"
        "        super().__init__()\n        self.offset = offset\n\n"
        "    def forward(self, outputs, backbone_feats, targets=None):\n"
        "        return {'logits': outputs['logits'] + self.offset}\n"
    )
    (tmp_path / "r.toml").write_text(
        'imports = ["my_plugin.py"]\n[data]\nnum_classes = 3\n[model.backbone]\ntype = "resnet"\n'
        'depth = 18\nstem_channels = 8\nbase_channels = 8\n[model.head]\ntype = "fcn"\nchannels = 8\n'
        '[[model.plugins]]\ntype = "file_toy"\noffset = 0.5\n'
    )
    recipe = load_recipe(tmp_path / "r.toml")
    assert recipe.imports == [str((tmp_path / "my_plugin.py").resolve())]  # stored absolute: eval finds it too
    assert build_segmentor(recipe).plugins["file_toy"].offset == 0.5


def test_old_plugin_sections_are_a_clear_user_error(tmp_path: Path):
    old = tmp_path / "old.toml"
    old.write_text(
        'extends = "%s"\n\n[model.memory]\ntype = "mcibi"\nbase_lr = 0.01\n' % (REPO / "recipes" / "demo.toml")
    )
    proc = run_cli("recipes", "show", str(old), cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "[model.memory] is the old plug-in syntax" in proc.stderr + proc.stdout
    assert "[[model.plugins]]" in proc.stderr + proc.stdout and 'type = "mcibi"' in proc.stderr + proc.stdout


def test_toy_plugin_trains_evaluates_and_exports_through_the_cli(synthetic_small: Path, tmp_path: Path):
    recipe = tmp_path / "toy.toml"
    recipe.write_text(
        f'extends = "{REPO / "recipes" / "demo.toml"}"\nimports = ["{THIS_MODULE}"]\n\n'
        '[[model.plugins]]\ntype = "toy_prior"\ninit_bias = 0.25\nloss_weight = 0.1\n'
    )
    data = [
        "--set",
        f"data.root='{synthetic_small}'",
        "--set",
        "data.num_workers=0",
        "--set",
        "data.batch_size=2",
        "--set",
        "data.crop_size=[64, 64]",
    ]
    run_cli(
        "train",
        "--recipe",
        str(recipe),
        "--set",
        "train.iters=3",
        "--set",
        "train.eval_interval=3",
        *data,
        "--no-progress",
        cwd=tmp_path,
    )
    run = (tmp_path / "runs" / "latest").resolve()
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    steps = [r for r in log if "loss" in r]
    assert steps and all(r["loss_toy_bias"] > 0 for r in steps)  # the plug-in's loss term reached the trainer
    state = load_file(str(run / "final.safetensors"))
    assert int(state["plugins.toy_prior.steps_seen"]) == 3  # after_train_step ran once per step
    assert float(state["plugins.toy_prior.class_pixels"].sum()) > 0  # its state is checkpointed
    assert not torch.allclose(state["plugins.toy_prior.bias"], torch.full_like(state["plugins.toy_prior.bias"], 0.25))

    run_cli("eval", "--limit", "2", cwd=tmp_path)  # the checkpoint's recipe brings its own imports
    assert json.loads((run / "eval" / "metrics.json").read_text())["num_images"] == 2
    proc = run_cli(
        "convert",
        "onnx",
        "--checkpoint",
        str(run / "final.safetensors"),
        "-o",
        str(tmp_path / "toy.onnx"),
        "--height",
        "64",
        "--width",
        "64",
        cwd=tmp_path,
    )
    assert (tmp_path / "toy.onnx").stat().st_size > 0, proc.stdout


def test_checkpoint_written_by_ctxseg_0_1_still_loads(tmp_path: Path):
    """0.1 stored `model.memory` / `model.cac` / `model.contrast` in the checkpoint's recipe: it is
    upgraded on load to the same plug-ins, in the old order, with the same state-dict keys."""
    from safetensors.torch import save_file

    from ctxseg.engine.checkpoint import load_model, save_weights

    recipe = load_recipe(REPO / "tests" / "recipes" / "compose_all.toml")
    torch.manual_seed(0)
    model = build_segmentor(recipe)
    path = save_weights(tmp_path / "new.safetensors", model, recipe)
    old = recipe.to_dict()
    old.pop("imports")
    plugins = old["model"].pop("plugins")
    for section, entry in zip(("memory", "cac", "contrast"), plugins):
        old["model"][section] = {**entry, "ignore_index": old["data"]["ignore_index"]}
    meta = {"format": "ctxseg", "recipe": json.dumps(old)}
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta["format"] = f.metadata()["format"]
    save_file(load_file(str(path)), str(tmp_path / "old.safetensors"), metadata=meta)
    loaded, upgraded, _ = load_model(tmp_path / "old.safetensors")
    assert [p["type"] for p in upgraded.model.plugins] == ["mcibi", "cac", "pixel_contrast"]
    assert list(loaded.plugins) == ["memory", "cac", "contrast"]
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_resolved_recipe_round_trips_through_toml():
    """Runs store the resolved recipe as TOML (`recipes show` prints it): [[model.plugins]] survive, in order."""
    import tomllib

    from ctxseg.config import to_toml

    recipe = load_recipe(REPO / "tests" / "recipes" / "compose_all.toml")
    text = to_toml(recipe.to_dict())
    assert text.count("[[model.plugins]]") == 3
    assert validate_recipe(tomllib.loads(text)).to_dict() == recipe.to_dict()
