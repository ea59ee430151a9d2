"""Every recipe against the official settings it reproduces (recipes/provenance/official.toml)."""

from __future__ import annotations

import copy

import pytest

from ctxseg.config import list_recipes, load_recipe
from ctxseg.provenance import KEYS, REQUIRED, compare, load_table, resolve_row

TABLE = load_table()
RECIPES = list_recipes()


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_matches_its_official_settings(name):
    if name not in TABLE["recipes"]:
        assert name in TABLE.get("own", {}), f"{name}: no provenance row and not marked as the project's own setting"
        assert len(TABLE["own"][name]) > 20  # says what it is instead
        return
    values, sources, row = resolve_row(name, TABLE)
    assert row.get("config"), f"{name}: the row names no official config"
    for key in REQUIRED:
        assert key in values, f"{name}: the row does not state '{key}'"
        assert sources[key], f"{name}: '{key}' has no source"
    assert ("iters" in values) != ("epochs" in values), f"{name}: state iters or epochs"
    if values["test_mode"] == "slide" or values.get("ms_mode") == "slide":
        assert "test_crop" in values and "test_stride" in values, name
    if values["optimizer"] == "sgd":
        assert "momentum" in values, name
    for key, reason in row.get("deviations", {}).items():
        assert key in values and len(reason) > 15, f"{name}: deviation '{key}' needs a stated setting and a reason"
    bad = [
        f"{l.key}: recipe {l.recipe!r} != official {l.official!r} ({l.source})"
        for l in compare(load_recipe(name), TABLE)
        if l.status == "MISMATCH"
    ]
    assert not bad, f"{name}:\n" + "\n".join(bad)


def test_every_row_names_a_recipe_and_own_ones_have_no_row():
    assert set(TABLE["recipes"]) <= set(RECIPES)
    assert not set(TABLE.get("own", {})) & set(TABLE["recipes"])
    for prof in TABLE["profiles"].values():
        assert prof.get("source")
        assert all(k in KEYS or "." in k or k == "source" for k in prof)
    for name, row in TABLE["recipes"].items():
        unknown = [
            k
            for k in row
            if k not in KEYS and "." not in k and k not in ("use", "config", "deviations", "published_source", "notes")
        ]
        assert not unknown, f"{name}: unknown keys {unknown}"


def test_a_changed_setting_is_caught():
    """The check is live: altering any compared setting of a recipe turns its line into a mismatch."""
    r = load_recipe("mcibi-deeplabv3-r50-lip")
    for override, key in [
        ("data.rotate_prob=0.0", "rotate_prob"),
        ("data.batch_size=8", "batch"),
        ("eval.keep_ratio=true", "test_keep_ratio"),
        ("model.plugins.mcibi.base_lr=0.009", "model.plugins.mcibi.base_lr"),
        ("published.miou_flip=55.0", "miou_flip"),
    ]:
        changed = load_recipe("mcibi-deeplabv3-r50-lip", [override])
        lines = {l.key: l.status for l in compare(changed, TABLE)}
        assert lines[key] == "MISMATCH", override
    assert all(l.status != "MISMATCH" for l in compare(r, TABLE))
    # a deviation is accepted only for the key it names
    table = copy.deepcopy(TABLE)
    table["recipes"]["mcibi-deeplabv3-r50-lip"]["deviations"] = {"batch": "a reason long enough to count"}
    lines = {l.key: l.status for l in compare(load_recipe("mcibi-deeplabv3-r50-lip", ["data.batch_size=8"]), table)}
    assert lines["batch"] == "deviation"


def test_recipe_without_row_fails():
    table = copy.deepcopy(TABLE)
    del table["recipes"]["contrast-hrnet48"]
    from ctxseg.errors import UserError

    with pytest.raises(UserError, match="No provenance row"):
        compare(load_recipe("contrast-hrnet48"), table)


def test_recipes_show_provenance_cli():
    from tests.conftest import run_cli

    out = run_cli("recipes", "show", "mcibi-deeplabv3-r50-cityscapes", "--provenance", env={"COLUMNS": "250"}).stdout
    assert "test_crop" in out and "[1024, 512]" in out and "mcibi_deeplabv3_resnet50os8_cityscapes.py" in out
    assert "deviation" in out and "val_split" in out and "MISMATCH" not in out
    own = run_cli("recipes", "show", "demo", "--provenance").stdout
    assert "own setting" in own
