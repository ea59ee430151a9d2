"""The CLI starts without importing torch (or numpy, OpenCV, pydantic): `ctxseg --help`, every
subcommand's `--help` and the recipe/weights listings only pay for what they use."""

from __future__ import annotations

import subprocess
import sys
import tomllib

from tests.conftest import REPO

HEAVY = ("torch", "numpy", "cv2", "pydantic", "matplotlib")


def _loaded_after(code: str) -> set[str]:
    probe = f"import sys\n{code}\nprint(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return set(proc.stdout.split())


def test_cli_import_and_registration_load_no_heavy_module():
    # _register() imports every subcommand module, as `ctxseg --help` does
    assert _loaded_after("import ctxseg.cli as c; c._register()") == set()


def test_help_of_every_subcommand_loads_no_heavy_module():
    code = (
        "import contextlib, io\n"
        "import ctxseg.cli as c\n"
        "from typer.main import get_command\n"
        "c._register()\n"
        "seen = []\n"
        "def walk(cmd, path):\n"
        "    for name, sub in getattr(cmd, 'commands', {}).items():\n"
        "        with contextlib.redirect_stdout(io.StringIO()):\n"
        "            try:\n"
        "                sub.main(['--help'], prog_name=' '.join(path + [name]), standalone_mode=False)\n"
        "            except SystemExit:\n"
        "                pass\n"
        "        seen.append(' '.join(path + [name]))\n"
        "        walk(sub, path + [name])\n"
        "walk(get_command(c.app), [])\n"
        "assert {'train', 'eval', 'convert mmseg', 'viz overlay', 'recipes show'} <= set(seen), seen\n"
    )
    assert _loaded_after(code) == set()


def test_version_has_one_source():
    import ctxseg

    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "ctxseg.__version__"}
    assert ctxseg.__version__ == "0.3.0"


def test_recipe_listing_and_showing_a_bundled_recipe_load_no_torch():
    code = (
        "import contextlib, io, sys\n"
        "import ctxseg.cli as c\n"
        "c._register()\n"
        "for argv in (['recipes', 'list'], ['recipes', 'show', 'ocrnet-hr48-cityscapes-80k']):\n"
        "    with contextlib.redirect_stdout(io.StringIO()):\n"
        "        c.app(args=argv, prog_name='ctxseg', standalone_mode=False)\n"
    )
    assert not {"torch", "cv2", "matplotlib"} & _loaded_after(code)


def test_overrides_still_get_the_full_component_check(tmp_path):
    from tests.conftest import run_cli

    proc = run_cli("recipes", "show", "demo", "--set", "model.head.chanels=8", check=False, cwd=tmp_path)
    assert proc.returncode == 2 and "chanels" in proc.stderr and "channels" in proc.stderr
