"""The converter mechanism: safe loading of foreign files and strict key mapping."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
import torch

from ctxseg.convert.base import KeyMap, apply_keymap, load_foreign
from ctxseg.errors import UserError


def _fake_module(tmp_path: Path):
    """A module with a metadata class and an object whose unpickling would run a command."""
    mod = types.ModuleType("fakezoo.history")

    class HistoryBuffer:
        def __init__(self):
            self.values = [1, 2, 3]

    class Evil:
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))

    HistoryBuffer.__module__ = Evil.__module__ = "fakezoo.history"
    HistoryBuffer.__qualname__, Evil.__qualname__ = "HistoryBuffer", "Evil"
    mod.HistoryBuffer, mod.Evil = HistoryBuffer, Evil
    sys.modules["fakezoo"] = types.ModuleType("fakezoo")
    sys.modules["fakezoo.history"] = mod
    return mod


def test_metadata_classes_are_stubbed_and_never_executed(tmp_path: Path):
    mod = _fake_module(tmp_path)
    path = tmp_path / "zoo.pth"
    torch.save(
        {
            "meta": {"hist": mod.HistoryBuffer(), "evil": mod.Evil()},
            "state_dict": {"module.backbone.w": torch.ones(2), "head.b": torch.zeros(3)},
        },
        path,
    )
    del sys.modules["fakezoo.history"], sys.modules["fakezoo"]
    sd = load_foreign(path)
    assert set(sd) == {"backbone.w", "head.b"} and torch.equal(sd["backbone.w"], torch.ones(2))
    assert not (tmp_path / "pwned").exists()


def test_not_a_checkpoint_is_a_user_error(tmp_path: Path):
    (tmp_path / "x.pth").write_bytes(b"nope")
    with pytest.raises(UserError):
        load_foreign(tmp_path / "x.pth")
    with pytest.raises(UserError, match="not found"):
        load_foreign(tmp_path / "missing.pth")


def test_apply_keymap_is_strict():
    src = {"a.w": torch.zeros(2), "b.w": torch.zeros(3), "junk.x": torch.zeros(1), "c.w": torch.zeros(4)}
    target = {"A.w": torch.zeros(2), "B.w": torch.zeros(3), "C.w": torch.zeros(5), "D.w": torch.zeros(1)}
    km = KeyMap(rules=[(r"a\.(.*)", r"A.\1"), (r"b\.(.*)", r"B.\1"), (r"c\.(.*)", r"C.\1")], ignore=[r"junk\..*"])
    out, rep = apply_keymap(src, target, km)
    assert rep.ignored == ["junk.x"] and rep.missing == ["D.w"]
    assert rep.shape_mismatches == [("C.w", (4,), (5,))] and not rep.ok
    src2 = {k: v for k, v in src.items() if k != "c.w"} | {"extra.y": torch.zeros(1)}
    _, rep2 = apply_keymap(src2, {"A.w": torch.zeros(2), "B.w": torch.zeros(3)}, km)
    assert rep2.unused == ["extra.y"] and "extra.y" in rep2.problems()
