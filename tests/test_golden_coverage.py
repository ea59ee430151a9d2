"""Every golden folder is read by a test, and the guard that makes each golden test compare every
tensor it stores works: a stored tensor that is neither compared nor a documented input fails by
name (tests/golden_cases.py Stored, GOLDEN_INPUTS)."""

from __future__ import annotations

import re

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from tests.conftest import GOLDEN
from tests.golden_cases import GOLDEN_INPUTS, NOT_COMPARABLE, Stored

# golden folder (pattern) -> the reference it belongs to and the test module that reads it
OWNERS = {
    r"mmseg-(?!manifests$).+": ("mmseg", "tests/test_mmseg_golden.py"),
    r"mmseg-manifests": (None, "tests/test_mmseg_manifests.py"),
    r"ssseg-mcibi-(?!manifests$).+": ("ssseg-mcibi", "tests/test_mcibi_golden.py"),
    r"ssseg-mcibi-manifests": (None, "tests/test_mcibi_manifests.py"),
    r"contrastiveseg": ("contrastiveseg", "tests/test_contrast_golden.py"),
    r"cac": ("cac", "tests/test_cac_golden.py"),
}


def _owner(folder: str):
    return next((v for p, v in OWNERS.items() if re.fullmatch(p, folder)), None)


def test_every_golden_folder_has_a_test():
    from tests.conftest import REPO

    folders = sorted(p.name for p in GOLDEN.iterdir() if p.is_dir())
    orphans = [f for f in folders if _owner(f) is None]
    assert not orphans, f"golden folders no test reads: {orphans} (add them to OWNERS and a test module)"
    for f in folders:
        assert (REPO / _owner(f)[1]).is_file(), f"{f}: {_owner(f)[1]} is missing"


def _stored_keys(reference: str) -> set[str]:
    keys: set[str] = set()
    for pattern, (ref, _) in OWNERS.items():
        if ref != reference:
            continue
        for folder in (p for p in GOLDEN.iterdir() if p.is_dir() and re.fullmatch(pattern, p.name)):
            for path in folder.rglob("*.safetensors"):
                with safe_open(str(path), "pt") as f:
                    keys |= set(f.keys())
    return keys


@pytest.mark.parametrize("reference", sorted(GOLDEN_INPUTS))
def test_every_listed_input_exists(reference):
    """No stale allow-list entry: each GOLDEN_INPUTS / NOT_COMPARABLE pattern matches a stored key."""
    keys = _stored_keys(reference)
    assert keys, reference
    for pattern in {**GOLDEN_INPUTS[reference], **NOT_COMPARABLE.get(reference, {})}:
        assert any(re.fullmatch(pattern, k) for k in keys), f"{reference}: {pattern!r} matches no stored tensor"


def test_guard_names_an_uncompared_tensor(tmp_path):
    path = tmp_path / "io.safetensors"
    save_file({"input.feat": torch.zeros(1), "test.feat": torch.ones(1), "test.new_tensor": torch.ones(2)}, str(path))
    s = Stored("cac", str(path))  # an absolute part replaces the golden root
    assert torch.equal(s["input.feat"], torch.zeros(1))  # an input listed for cac: read without comparing
    s.ref("test.feat")
    with pytest.raises(AssertionError, match=r"test\.new_tensor"):
        s.assert_all_compared()
    s.ref("test.new_tensor")
    s.assert_all_compared()
    with pytest.raises(AssertionError, match="GOLDEN_INPUTS"):
        s["test.feat"]  # an output read as an input would escape the guard: refused
