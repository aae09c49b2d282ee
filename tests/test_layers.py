"""The modules of src/asyckpt stand in layers, read statically from their import
statements (ast, nothing imported): no import circle among them, and no import reaching
up a layer.

Two graphs are checked.  The module-level one holds every import that runs or is type
checked when a module is imported (``if TYPE_CHECKING:`` blocks included: mypy follows
them, and the circle issue 18 found was one).  The full one adds the imports made inside
functions.  Those are how asyckpt keeps start-up fast (``show`` and ``--version`` never
import trio or the pipeline), which is why they exist; they are not a way to reach up a
layer, so they must not close a circle either.  The C extension's imports are those of
its stub, ``_fdscan.pyi``.  A package's ``__init__`` being imported before its
submodules is Python's doing, not an edge.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "asyckpt"

Graph = dict[str, set[str]]


def _modules(root: Path) -> dict[str, Path]:
    out = {}
    for path in sorted([*root.rglob("*.py"), *root.rglob("*.pyi")]):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _nodes(
    node: ast.AST, in_function: bool = False
) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.Import | ast.ImportFrom):
            yield child, in_function
        nested = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
        yield from _nodes(child, nested)


def import_graphs(source: dict[str, str], package: str = "asyckpt") -> tuple[Graph, Graph]:
    """(module-level, full) import graphs among the modules of ``source`` (module name
    -> its text; a name ending in ``.__init__`` is a package)."""
    names = {m.removesuffix(".__init__") for m in source}
    top: Graph = {m: set() for m in names}
    full: Graph = {m: set() for m in names}
    for module, text in source.items():
        is_package = module.endswith(".__init__")
        module = module.removesuffix(".__init__")
        here = module.split(".") if is_package else module.split(".")[:-1]
        for node, in_function in _nodes(ast.parse(text)):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif node.level:
                base = ".".join(here[: len(here) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
                # `from . import x`: x is a submodule, or a name of the package itself.
                targets = [
                    f"{base}.{a.name}" if f"{base}.{a.name}" in names else base for a in node.names
                ]
            elif node.module is not None:
                targets = [
                    f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in names else node.module
                    for a in node.names
                ]
            for target in targets:
                if target in names and target != module and target.startswith(package):
                    full[module].add(target)
                    if not in_function:
                        top[module].add(target)
    return top, full


def find_cycle(graph: Graph) -> list[str] | None:
    """One import circle of ``graph`` (its modules in order, the first repeated at the
    end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def _source() -> dict[str, str]:
    out = {}
    for name, path in _modules(PACKAGE).items():
        key = f"{name}.__init__" if path.stem == "__init__" else name
        out[key] = path.read_text()
    return out


# --- the checker itself, on literal modules -----------------------------------------------

_TYPE_CHECKING_CIRCLE = {
    "pkg._kernel": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
    "    from ._build import DedupRows\n",
    "pkg._build": "from ._discover import TaskPlan\n",
    "pkg._discover": "from ._kernel import kcmp\n",
}


def test_a_circle_through_type_checking_is_a_module_level_circle() -> None:
    top, full = import_graphs(_TYPE_CHECKING_CIRCLE, "pkg")
    assert find_cycle(top) == ["pkg._build", "pkg._discover", "pkg._kernel", "pkg._build"]
    assert find_cycle(full) is not None


def test_a_circle_closed_inside_a_function_is_only_in_the_full_graph() -> None:
    source = {
        "pkg.__init__": "",
        "pkg.low": "def f():\n    from .high import g\n",
        "pkg.high": "from . import low\n",
    }
    top, full = import_graphs(source, "pkg")
    assert find_cycle(top) is None
    assert find_cycle(full) == ["pkg.high", "pkg.low", "pkg.high"]


def test_package_names_submodules_and_absolute_imports() -> None:
    source = {
        "pkg.__init__": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
        "    from ._api import run\n",
        "pkg._api": "def v():\n    from . import __version__\n",
        "pkg.sub.__init__": "",
        "pkg.sub.room": "from .. import _api\nfrom pkg.sub import other\nimport os\n",
        "pkg.sub.other": "from ..._outside import x\n",
    }
    top, full = import_graphs(source, "pkg")
    assert top == {
        "pkg": {"pkg._api"},
        "pkg._api": set(),
        "pkg.sub": set(),
        "pkg.sub.room": {"pkg._api", "pkg.sub.other"},
        "pkg.sub.other": set(),
    }
    assert full["pkg._api"] == {"pkg"}  # __version__ is a name of the package
    assert find_cycle(full) == ["pkg", "pkg._api", "pkg"]


# --- asyckpt ------------------------------------------------------------------------------


def test_no_import_circle_among_modules_at_import_time() -> None:
    top, _ = import_graphs(_source())
    assert find_cycle(top) is None


def test_no_import_circle_among_modules_counting_function_imports() -> None:
    _, full = import_graphs(_source())
    assert find_cycle(full) is None


# Bottom to top.  A module may import its own layer and those below; every module of the
# package is in exactly one (test_every_module_is_in_one_layer), so a new one is placed
# when it is added.
LAYERS: list[tuple[str, set[str]]] = [
    (
        "pure: parsers, records and rules",
        {
            "asyckpt._version",
            "asyckpt._errors",
            "asyckpt._escape",
            "asyckpt._records",
            "asyckpt._names",
            "asyckpt._procparse",
            "asyckpt._rows",
            "asyckpt._dedup",
            "asyckpt._order",
            "asyckpt._classify",
            "asyckpt._validate",
            "asyckpt._decode",
            "asyckpt._jsondata",
            "asyckpt._commit",
            "asyckpt._plugins",
            "asyckpt._restore_model",
            "asyckpt._restore_rules",
            "asyckpt._restore_unix",
        },
    ),
    (
        "kernel access",
        {
            "asyckpt._fdscan",
            "asyckpt._kernel",
            "asyckpt._procread",
            "asyckpt._taskread",
            "asyckpt._discover",
            "asyckpt._freeze",
            "asyckpt._guardian",
            "asyckpt._scope",
            "asyckpt._rundir",
            "asyckpt._claim",
            "asyckpt._recover",
            "asyckpt._select",
            "asyckpt._ghost",
            "asyckpt._target",
            "asyckpt._signals",
            "asyckpt._image",
            "asyckpt._demo",
            "asyckpt._restore_sockets",
            "asyckpt._restore_unlinked",
            "asyckpt._restore_pidfd",
            "asyckpt.testing.spawn_tree",
        },
    ),
    (
        "pipeline",
        {
            # Pure when run (test_pure_modules_import_no_kernel_access), but its FdHandler
            # protocol names the HandlerContext a handler is handed, for the type checker.
            "asyckpt._plugins.contract",
            "asyckpt._plugins.session",
            "asyckpt._plugins.links",
            "asyckpt._plugins.loaded",
            "asyckpt._plugins.dispatch",
            "asyckpt._plugins.entrypoints",
            "asyckpt._plugins.loading",
            "asyckpt.handlers",
            "asyckpt._facts",
            "asyckpt._parts",
            "asyckpt._paths",
            "asyckpt._taskfiles",
            "asyckpt._handoff",
            "asyckpt._build",
            "asyckpt._materialize",
            "asyckpt._outside",
            "asyckpt._begins",
            "asyckpt._tuning",
            "asyckpt._scanning",
            "asyckpt._capture",
            "asyckpt._api",
        },
    ),
    # Views of a written image (they read it, and name the plugins that render records).
    (
        "image views",
        {
            "asyckpt._show",
            "asyckpt._show_taskfiles",
            "asyckpt._show_namespaces",
            "asyckpt._endpoints",
            "asyckpt._jsonexport",
            "asyckpt._diff",
            "asyckpt._diff_taskfiles",
            "asyckpt._graph",
            "asyckpt._graphviz",
        },
    ),
    # Restore reads an image and may call the handlers' restore hooks.
    (
        "restore",
        {
            "asyckpt._restore_plan",
            "asyckpt._restore_hooks",
            "asyckpt._restore",
            "asyckpt._restore_hold",
        },
    ),
    # What an embedding program and a plugin author import.
    ("public API", {"asyckpt", "asyckpt.aio", "asyckpt._watch", "asyckpt.testing"}),
    # asyckpt's own handlers import only the public namespace, as a third party's do.
    (
        "built-in handlers",
        {"asyckpt.handlers.reg", "asyckpt.handlers.dir", "asyckpt.handlers.link"},
    ),
    ("command line: what the commands share", {"asyckpt._cliargs"}),
    (
        "command line: the commands",
        {
            "asyckpt._cmd_tree",
            "asyckpt._cmd_show",
            "asyckpt._graph_cmd",
            "asyckpt._cmd_plugins",
            "asyckpt._cmd_diff",
            "asyckpt._cmd_watch",
            "asyckpt._cmd_recover",
            "asyckpt._restore_cmd",
        },
    ),
    ("command line", {"asyckpt._cli", "asyckpt.__main__"}),
]


def test_imports_go_down_the_layers() -> None:
    layer_of = {m: i for i, (_, members) in enumerate(LAYERS) for m in members}
    _, full = import_graphs(_source())
    up = []
    for module, targets in sorted(full.items()):
        for target in sorted(targets):
            if module in layer_of and target in layer_of and layer_of[target] > layer_of[module]:
                up.append(f"{module} ({LAYERS[layer_of[module]][0]}) imports {target}")
    assert up == []


def test_every_module_is_in_one_layer() -> None:
    names = set(_modules(PACKAGE))
    placed = [m for _, members in LAYERS for m in members]
    assert sorted(set(placed) - names) == []  # listed, but no such module
    assert sorted(names - set(placed)) == []  # a module in no layer
    assert len(placed) == len(set(placed))  # one layer each


@pytest.mark.parametrize(
    "module", ["asyckpt._plugins.contract", "asyckpt._rows", "asyckpt._restore_unix"]
)
def test_pure_modules_import_no_kernel_access(module: str) -> None:
    # Run, not read: what importing it really loads, transitively.
    code = (
        f"import sys, {module}; "
        "print(sorted(m for m in sys.modules if m in "
        "{'ctypes', 'asyckpt._kernel', 'asyckpt._fdscan', 'asyckpt._procread', 'trio'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
