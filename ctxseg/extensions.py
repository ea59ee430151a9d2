"""Components defined outside ctxseg: how a recipe, or an installed package, brings them in.

Two ways, both ending in a module that calls `ctxseg.models.builder.register_plugin` (or
`register_head` / `register_backbone`) when imported:

* the recipe names the module: `imports = ["my_lab.plugins", "./toy_plugin.py"]` (top level). A
  dotted name is imported from sys.path and the current directory; a `.py` path is relative to
  the recipe that lists it. The list is stored with the recipe in runs and checkpoints, so
  `ctxseg eval`, `predict`, `viz` and `convert onnx` rebuild the same model with no extra flag.
* an installed package declares an entry point in the `ctxseg.plugins` group, e.g. in its
  pyproject.toml: `[project.entry-points."ctxseg.plugins"] my_lab = "my_lab.plugins"`. Every
  such module is imported once, the first time a recipe is validated.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from importlib.metadata import entry_points
from pathlib import Path

from ctxseg.errors import UserError

ENTRY_POINT_GROUP = "ctxseg.plugins"

_entry_points_loaded = False


def load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()
        except Exception as e:  # a broken third-party package: name it, do not crash with its traceback
            raise UserError(
                f"The '{ep.name}' entry point of group {ENTRY_POINT_GROUP} ({ep.value}) failed to load: "
                f"{type(e).__name__}: {e}"
            ) from None


def _import_file(path: Path) -> None:
    if not path.is_file():
        raise UserError(f"imports: plug-in file {path} does not exist")
    name = f"ctxseg_user_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
    if name in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception:
        del sys.modules[name]
        raise


def import_module(entry: str) -> None:
    """Import one `imports` entry (a dotted module name, or a path to a .py file)."""
    try:
        if entry.endswith(".py"):
            _import_file(Path(entry).expanduser().resolve())
            return
        cwd = str(Path.cwd())
        if cwd not in sys.path and "" not in sys.path:
            sys.path.append(cwd)  # the console script does not put the working directory on sys.path
        importlib.import_module(entry)
    except UserError:
        raise
    except ImportError as e:
        raise UserError(f"imports: cannot import '{entry}': {e}") from None
    except Exception as e:
        raise UserError(f"imports: importing '{entry}' failed: {type(e).__name__}: {e}") from None


def load_extensions(imports: list[str] = ()) -> None:
    """Make every registered component available: entry points, then the recipe's own imports."""
    load_entry_points()
    for entry in imports:
        import_module(entry)
