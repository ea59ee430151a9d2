"""Every public class and registered builder of ctxseg documents its constructor arguments.

Google style, as torchvision and timm: an `Args:` section in the class docstring (or in its
`__init__`'s; for a function, its own docstring) with one entry per parameter, `name: text` or
`name (type): text`. What is checked:

- every value of the registries in ctxseg.models.builder (backbones, heads, auxiliary heads,
  plug-ins) that is defined in ctxseg (the tests register toy components of their own);
- every public class of every public ctxseg module (dataclasses, pydantic schema models and
  settings objects included: their fields are their constructor's parameters).

Not walked: ctxseg.__main__ (runs the CLI on import) and ctxseg.tools (benchmark scripts, not an API).
A class that inherits its constructor from a ctxseg class may rely on that class's `Args:`.

The walk runs in a fresh interpreter: importing every ctxseg module inside the test process would
change what later tests see (a module imported early binds names they monkeypatch later).
`python tests/test_docstrings.py` prints the coverage and what is missing.
"""

from __future__ import annotations

import dataclasses
import enum
import importlib
import inspect
import json
import os
import pkgutil
import re
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SKIPPED_MODULES = ("ctxseg.__main__", "ctxseg.tools")

# an entry of an Args: section: "name: ..." or "name (type): ...", at the section's first indentation level
_ENTRY = re.compile(r"^(\*{0,2}\w+)\s*(\([^)]*\))?\s*:")


@dataclass
class Documented:
    """One constructor and what its docstrings say about it.

    Args:
        name: dotted name of the class or function.
        params: the constructor's parameter names (no `self`, no `*args` / `**kwargs`).
        documented: the names listed in its `Args:` section(s).
    """

    name: str
    params: list[str]
    documented: set[str]

    @property
    def missing(self) -> list[str]:
        return [p for p in self.params if p not in self.documented]

    @property
    def stale(self) -> list[str]:
        """Names documented that the constructor does not take (a renamed or removed argument)."""
        return sorted(n for n in self.documented if not n.startswith("*") and n not in self.params)


def args_section_names(doc: str | None) -> set[str]:
    """Parameter names listed in the `Args:` section of a Google-style docstring."""
    if not doc:
        return set()
    lines = inspect.cleandoc(doc).splitlines()
    names: set[str] = set()
    for i, line in enumerate(lines):
        if line.strip() not in ("Args:", "Arguments:"):
            continue
        header_indent = len(line) - len(line.lstrip())
        entry_indent = None
        for body in lines[i + 1 :]:
            if not body.strip():
                continue
            indent = len(body) - len(body.lstrip())
            if indent <= header_indent:
                break  # the next section (Returns:, Example:, ...) or the end of the section
            if entry_indent is None:
                entry_indent = indent
            if indent == entry_indent:
                m = _ENTRY.match(body.strip())
                if m:
                    names.add(m.group(1).lstrip("*") if m.group(1).startswith("**") else m.group(1))
    return names


def constructor_params(obj) -> list[str]:
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return []
    return [
        n
        for n, p in sig.parameters.items()
        if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and n not in ("self", "cls")
    ]


def _defines_own_constructor(cls) -> bool:
    if "__init__" in vars(cls) or "__new__" in vars(cls):
        return True
    if dataclasses.is_dataclass(cls) and "__dataclass_fields__" in vars(cls):
        return bool(vars(cls).get("__annotations__"))
    return bool(vars(cls).get("__annotations__")) and hasattr(cls, "model_fields")  # pydantic


def class_docs(cls) -> list[str | None]:
    """The docstrings that may hold a class's Args: its own, its __init__'s, and where it inherits
    the constructor, those of the class (of the same package) it inherits it from."""
    docs = [vars(cls).get("__doc__")]
    if "__init__" in vars(cls):
        docs.append(vars(cls)["__init__"].__doc__)
    if not _defines_own_constructor(cls):
        for base in cls.__mro__[1:]:
            same_package = base.__module__.split(".")[0] == cls.__module__.split(".")[0]  # not torch's, pydantic's
            if same_package and _defines_own_constructor(base):
                docs.extend(class_docs(base))
                break
    return docs


def _is_public_api_class(cls) -> bool:
    if issubclass(cls, (enum.Enum, BaseException)):
        return False  # enum members are not constructed; exceptions take a message
    return True


def public_modules():
    import ctxseg

    for info in pkgutil.walk_packages(ctxseg.__path__, "ctxseg."):
        name = info.name
        if name.startswith(SKIPPED_MODULES) or any(part.startswith("_") for part in name.split(".")[1:]):
            continue
        yield importlib.import_module(name)


def document(obj, name: str) -> Documented | None:
    """What the docstrings of a class or function say about its constructor; None: no parameters."""
    params = constructor_params(obj)
    if not params:
        return None
    docs = class_docs(obj) if inspect.isclass(obj) else [obj.__doc__]
    return Documented(name, params, set().union(*(args_section_names(d) for d in docs)))


def collect() -> list[Documented]:
    from ctxseg.models import builder

    found: dict[int, Documented] = {}

    def add(obj, name: str):
        if id(obj) not in found and (doc := document(obj, name)) is not None:
            found[id(obj)] = doc

    for kind, table in builder.KINDS.items():
        for type_name, obj in table.items():
            if getattr(obj, "__module__", "").startswith("ctxseg."):
                add(obj, f"{obj.__module__}.{obj.__qualname__} ({kind} '{type_name}')")
    for module in public_modules():
        for attr, obj in vars(module).items():
            if (
                inspect.isclass(obj)
                and obj.__module__ == module.__name__
                and not attr.startswith("_")
                and _is_public_api_class(obj)
            ):
                add(obj, f"{module.__name__}.{obj.__qualname__}")
    return sorted(found.values(), key=lambda d: d.name)


def coverage(items: list[Documented]) -> float:
    return 100.0 * sum(not d.missing for d in items) / max(len(items), 1)


def test_args_section_parser():
    doc = """Summary.

    Args:
        in_channels (int): channels of the input.
        ratios: list of ratios, e.g.
            channels: not an entry (deeper indentation).
        **kwargs: passed on.

    Returns:
        x: not an argument.
    """
    assert args_section_names(doc) == {"in_channels", "ratios", "kwargs"}
    assert args_section_names("No sections.") == set()


def test_missing_stale_and_inherited_arguments_are_found():
    class Documented_:
        """Toy.

        Args:
            a: first.
            old: renamed since.
        """

        def __init__(self, a: int, b: int = 0):
            pass

    d = document(Documented_, "toy")
    assert d.missing == ["b"] and d.stale == ["old"]

    class InheritsConstructor(Documented_):
        """No Args of its own: the constructor's are its base's."""

    assert document(InheritsConstructor, "sub").missing == ["b"]  # the base's Args count, nothing more

    def builder(*, depth: int = 50, pretrained: str | None = None):
        """A builder.

        Args:
            depth: layers.
            pretrained: weights.
        """

    assert document(builder, "builder").missing == []
    assert document(lambda: None, "no parameters") is None


@pytest.fixture(scope="module")
def walked() -> list[Documented]:
    """collect() in a fresh interpreter (see the module docstring)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, __file__, "--json"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr
    return [Documented(d["name"], d["params"], set(d["documented"])) for d in json.loads(proc.stdout)]


def test_registries_are_walked(walked):
    names = {d.name for d in walked}
    assert any("(backbone 'resnet')" in n for n in names)
    assert any("(plugin 'mcibi')" in n for n in names)
    assert any(n.endswith("(head 'ocr')") for n in names)


def test_every_public_constructor_documents_its_arguments(walked):
    items = walked
    problems = [f"{d.name}: no Args entry for {', '.join(d.missing)}" for d in items if d.missing]
    problems += [f"{d.name}: Args names {', '.join(d.stale)}, which it does not take" for d in items if d.stale]
    assert not problems, f"{len(problems)} constructor docstring problem(s) (coverage {coverage(items):.0f}%):\n" + (
        "\n".join(problems)
    )


if __name__ == "__main__":
    items = collect()
    if "--json" in sys.argv:
        print(json.dumps([{**asdict(d), "documented": sorted(d.documented)} for d in items]))
        sys.exit(0)
    for d in items:
        if d.missing or d.stale:
            print(f"{d.name}: missing {d.missing} stale {d.stale}")
    print(f"{sum(not d.missing for d in items)}/{len(items)} documented: {coverage(items):.1f}%")
