"""asyckpt's own reg, dir and link handlers are an example of the plugin model: one
module per handler, registered through the entry-point group as any plugin is, and
written against the public ``asyckpt`` namespace only."""

from __future__ import annotations

import ast
import importlib.metadata
from pathlib import Path

import msgspec

HANDLERS = Path(__file__).resolve().parents[1] / "src" / "asyckpt" / "handlers"


def _builtin_entry_points() -> list[importlib.metadata.EntryPoint]:
    return [
        ep
        for ep in importlib.metadata.entry_points(group="asyckpt.fd_types")
        if ep.dist is not None and ep.dist.metadata["Name"] == "asyckpt"
    ]


def test_each_builtin_handler_has_a_module_of_its_own() -> None:
    eps = _builtin_entry_points()
    assert sorted(ep.name for ep in eps) == ["dir", "link", "reg"]
    for ep in eps:
        assert ep.module == f"asyckpt.handlers.{ep.name}"
        handler = ep.load()
        assert handler.name == ep.name
        assert handler.__module__ == ep.module
        # Its record type lives with it.
        assert issubclass(handler.record_type, msgspec.Struct)
        assert handler.record_type.__module__ == ep.module


def test_builtin_handlers_import_only_the_public_namespace() -> None:
    for path in sorted(HANDLERS.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert node.level == 0, f"{path.name}: relative import of {node.module}"
                assert not (node.module or "").startswith("asyckpt."), f"{path.name}: {node.module}"
            elif isinstance(node, ast.Import):
                assert not any(a.name.startswith("asyckpt.") for a in node.names), path.name
