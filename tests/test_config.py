"""Recipe loading, extends, overrides and validation errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from ctxseg.config import apply_overrides, deep_merge, list_recipes, load_recipe, parse_override, to_toml
from ctxseg.errors import UserError
from tests.conftest import run_cli


def test_demo_recipe_resolves_extends_and_defaults():
    r = load_recipe("demo")
    assert r.name == "demo"
    assert r.data.dataset == "synthetic" and r.data.num_classes == 7  # from _base/synthetic.toml
    assert r.model.backbone["type"] == "resnet" and r.model.head["type"] == "aspp"
    assert r.train.loss.aux_weight == 0.4


def test_extends_list_deep_merge_later_wins(tmp_path: Path):
    (tmp_path / "a.toml").write_text(
        '[data]\nnum_classes = 3\nbatch_size = 4\n[model.backbone]\ntype = "resnet"\ndepth = 18\n'
    )
    (tmp_path / "b.toml").write_text('[data]\nbatch_size = 6\n[model.head]\ntype = "fcn"\nchannels = 8\n')
    (tmp_path / "c.toml").write_text('extends = ["a.toml", "b.toml"]\n[model.head]\nchannels = 16\n')
    r = load_recipe(tmp_path / "c.toml")
    assert (r.data.num_classes, r.data.batch_size) == (3, 6)
    assert r.model.backbone == {"type": "resnet", "depth": 18}
    assert r.model.head == {"type": "fcn", "channels": 16}


def test_set_overrides_parse_toml_values():
    assert parse_override("train.optimizer.lr=0.02") == (["train", "optimizer", "lr"], 0.02)
    assert parse_override("eval.scales=[0.5, 1.0]") == (["eval", "scales"], [0.5, 1.0])
    assert parse_override("data.root=some/path") == (["data", "root"], "some/path")
    r = load_recipe("demo", ["train.optimizer.lr=0.02", "model.head.channels=256"])
    assert r.train.optimizer.lr == 0.02 and r.model.head["channels"] == 256


def test_unknown_key_suggests_closest():
    with pytest.raises(UserError, match=r"unknown key 'train\.optimizer\.lrr'; did you mean 'lr'"):
        load_recipe("demo", ["train.optimizer.lrr=0.1"])
    with pytest.raises(UserError, match=r"unknown key 'model\.head\.chanels'; did you mean 'channels'"):
        load_recipe("demo", ["model.head.chanels=3"])


def test_wrong_type_names_key_and_expected_type():
    with pytest.raises(UserError, match=r"'train\.iters' must be an integer"):
        load_recipe("demo", ["train.iters='many'"])
    with pytest.raises(UserError, match=r"model\.head\.channels"):
        load_recipe("demo", ["model.head.channels='wide'"])


def test_unknown_component_type():
    with pytest.raises(UserError, match=r"'model\.head\.type' = 'asp' is not a known head; did you mean 'aspp'"):
        load_recipe("demo", ["model.head.type='asp'"])


def test_extends_cycle_and_missing_base(tmp_path: Path):
    (tmp_path / "x.toml").write_text('extends = "y.toml"\n')
    (tmp_path / "y.toml").write_text('extends = "x.toml"\n')
    with pytest.raises(UserError, match="cycle"):
        load_recipe(tmp_path / "x.toml")
    (tmp_path / "z.toml").write_text('extends = "nope.toml"\n')
    with pytest.raises(UserError, match="does not exist"):
        load_recipe(tmp_path / "z.toml")


def test_deep_merge_does_not_mutate():
    a = {"x": {"y": 1}}
    b = {"x": {"z": 2}}
    assert deep_merge(a, b) == {"x": {"y": 1, "z": 2}} and a == {"x": {"y": 1}}
    assert apply_overrides(a, ["x.y=5"])["x"]["y"] == 5 and a["x"]["y"] == 1


def test_to_toml_round_trips():
    import tomllib

    r = load_recipe("demo")
    again = tomllib.loads(to_toml(r.to_dict()))
    assert again["model"]["head"] == r.model.head
    assert again["train"]["optimizer"]["lr"] == r.train.optimizer.lr


def test_every_shipped_recipe_validates():
    names = list_recipes()
    assert "demo" in names
    for name in names:
        load_recipe(name)


def test_cli_bad_recipe_exit_code_2_no_traceback(tmp_path: Path):
    proc = run_cli("recipes", "show", "demo", "--set", "train.optimizer.lrr=1", cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert "did you mean 'lr'" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli("train", "--recipe", "no-such-recipe", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "not found" in proc.stderr and "Traceback" not in proc.stderr


def test_cli_recipes_list_and_show(tmp_path: Path):
    proc = run_cli("recipes", "list", cwd=tmp_path)
    assert "demo" in proc.stdout
    proc = run_cli("recipes", "show", "demo", "--set", "train.iters=7", cwd=tmp_path)
    assert "iters = 7" in proc.stdout
