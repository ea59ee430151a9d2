"""The dependency graph stays layered (docs/architecture.md): read every module's imports with
`ast`, including imports inside functions, leaving out those under `if TYPE_CHECKING:`."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

PACKAGE = REPO / "ctxseg"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(imported module, at module level) for every runtime import of a file."""
    tree = ast.parse(path.read_text())
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.Import):
                found.extend((a.name, top) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                found.append((child.module, top))
                found.extend((f"{child.module}.{a.name}", top) for a in child.names)
            inner = top and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
            visit(child, inner)

    visit(tree, True)
    return found


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
GRAPH = {name: _imports(path) for name, path in MODULES.items()}


def _violations(layer: str, forbidden: tuple[str, ...]) -> list[str]:
    bad = []
    for name, imports in GRAPH.items():
        if name == layer or name.startswith(layer + "."):
            bad += [
                f"{name} imports {mod}"
                for mod, _ in imports
                if any(mod == f or mod.startswith(f + ".") for f in forbidden)
            ]
    return sorted(set(bad))


def test_typer_commands_only_in_cli():
    offenders = sorted(
        {n for n, imports in GRAPH.items() if not n.startswith("ctxseg.cli") and any(m == "typer" for m, _ in imports)}
    )
    assert offenders == []


def test_models_never_import_converters_cli_engine_or_recipes():
    assert _violations("ctxseg.models", ("ctxseg.convert", "ctxseg.cli", "ctxseg.engine", "ctxseg.config")) == []


def test_losses_and_keymaps_sit_below_the_recipe_layer():
    assert _violations("ctxseg.losses", ("ctxseg.config", "ctxseg.engine", "ctxseg.cli", "ctxseg.convert")) == []
    assert _violations("ctxseg.keymap", ("ctxseg",)) == []


def test_converters_do_not_reach_up():
    # key tables and the mechanism: no CLI, no training engine, no recipe loading, no model building
    assert (
        _violations(
            "ctxseg.convert",
            ("ctxseg.cli", "ctxseg.engine", "ctxseg.config", "ctxseg.models.segmentor", "ctxseg.models.builder"),
        )
        == []
    )


def test_viz_does_not_import_the_cli():
    assert _violations("ctxseg.viz", ("ctxseg.cli",)) == []


def test_no_import_cycles_at_module_level():
    def resolve(mod: str) -> str | None:
        while mod and mod not in MODULES:
            mod = mod.rpartition(".")[0]
        return mod or None

    edges = {
        n: {r for m, top in imports if top and m.startswith("ctxseg") and (r := resolve(m)) and r != n}
        for n, imports in GRAPH.items()
    }
    # a package's __init__ importing its own submodules is not a cycle of interest
    edges = {n: {m for m in targets if not m.startswith(n + ".")} for n, targets in edges.items()}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def dfs(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in edges.get(node, ()):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                dfs(nxt, stack + [nxt])
        state[node] = 2

    for n in sorted(edges):
        if n not in state:
            dfs(n, [n])
    assert cycles == []


def test_registered_components_take_keyword_arguments_only():
    """A recipe table becomes keyword arguments; a positional parameter could silently take another's value."""
    import inspect

    from ctxseg.models import builder

    positional = []
    for kind, table in builder.KINDS.items():
        for name, ctor in table.items():
            if not ctor.__module__.startswith("ctxseg."):
                continue  # toy plug-ins registered by other test files
            params = [p for p in inspect.signature(ctor).parameters.values() if p.name != "self"]
            positional += [f"{kind} {name}: {p.name}" for p in params if p.kind not in (p.KEYWORD_ONLY, p.VAR_KEYWORD)]
    assert positional == []
