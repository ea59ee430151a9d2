"""The wheel ships every subpackage and the recipes (a pip-installed user gets `ctxseg recipes list`)."""

from __future__ import annotations

import tomllib
import zipfile
from pathlib import Path

from tests.conftest import REPO


def test_every_subpackage_is_listed():
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "ctxseg").rglob("*.py")}
    assert found <= listed, f"add to pyproject [tool.setuptools] packages: {sorted(found - listed)}"
    # the side-by-side tools against the official code are development scripts, not product (issue 23 §5)
    assert not any(p == "benchmarks" or p.startswith("benchmarks.") for p in listed)
    assert not (REPO / "ctxseg" / "tools" / "side_by_side.py").exists()
    assert not (REPO / "ctxseg" / "tools" / "ref_inputs.py").exists()


def test_wheel_contains_recipes(tmp_path: Path):
    import subprocess
    import sys

    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(REPO),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    wheel = next(tmp_path.glob("ctxseg-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    shipped = {n.split("/")[-1] for n in names if n.startswith("ctxseg/recipes/") and n.endswith(".toml")}
    expected = {p.name for p in (REPO / "recipes").rglob("*.toml")}
    assert expected <= shipped
    assert not any(n.startswith("benchmarks/") or n.endswith(("side_by_side.py", "ref_inputs.py")) for n in names)
    assert "ctxseg/cli/__init__.py" in names and "ctxseg/recipes/_base/synthetic.toml" in names
    # the Apache-2.0 text and the NOTICE crediting ContrastiveSeg (MIT) and sssegmentation ship in the wheel
    meta = [n for n in names if ".dist-info/" in n]
    assert any(n.endswith("/LICENSE") for n in meta) and any(n.endswith("/NOTICE") for n in meta), meta


def test_license_and_notice_files():
    assert "Apache License" in (REPO / "LICENSE").read_text() and "Version 2.0" in (REPO / "LICENSE").read_text()
    notice = (REPO / "NOTICE").read_text()
    assert "ContrastiveSeg" in notice and "MIT License" in notice and "sssegmentation" in notice
