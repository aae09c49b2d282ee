"""The entry points of one group, read as ``importlib.metadata`` reads them, without it.

``importlib.metadata`` costs every command that loads handlers about 8 ms of start-up
(it imports ``email`` for the metadata it parses, and ``zipfile``), which is a fifth of
what separates a one-process capture from its goal (docs/performance.md).  For the
common installation, every ``sys.path`` entry a directory, this module lists the same
distributions in the same order (``*.dist-info`` then ``*.egg-info`` directories of each
path entry, in directory order, the first of each normalized name winning), reads their
``entry_points.txt`` and the ``Name`` and ``Version`` of their metadata, and loads an
entry point the way ``EntryPoint.load`` does.  Anything else on ``sys.path`` (a zip
file, an ``.egg``) is left to ``importlib.metadata``.  ``tests/test_plugins.py`` checks
the two agree on the installed environment.
"""

from __future__ import annotations

import functools
import importlib
import importlib.machinery
import os
import re
import sys
from collections.abc import Sequence
from typing import Any, NamedTuple

__all__ = ["EntryPoint", "Found", "entry_points"]

_PATTERN = re.compile(r"(?P<module>[\w.]+)\s*(:\s*(?P<attr>[\w.]+)\s*)?((?P<extras>\[.*\])\s*)?$")
"""``EntryPoint.pattern`` of importlib.metadata: ``module:attr.attr [extras]``."""


class EntryPoint(NamedTuple):
    """What ``importlib.metadata.EntryPoint`` holds and does, for the loader."""

    name: str
    value: str
    group: str

    def load(self) -> Any:
        """Import the module and look the attributes up, as ``EntryPoint.load`` does."""
        match = _PATTERN.match(self.value)
        if match is None:
            raise ValueError(f"entry point {self.name!r}: malformed value {self.value!r}")
        module = importlib.import_module(match.group("module"))
        attrs = filter(None, (match.group("attr") or "").split("."))
        return functools.reduce(getattr, attrs, module)


class Found(NamedTuple):
    """One entry point and the distribution that declares it (None: unknown)."""

    entry_point: EntryPoint
    distribution: str | None
    version: str | None


def _normalize(name: str) -> str:
    # importlib.metadata's Prepared.normalize.
    return re.sub(r"[-_.]+", "-", name).lower().replace("-", "_")


def _distributions(path: Sequence[str]) -> list[str] | None:
    """The metadata directories of ``path``'s distributions, as importlib.metadata
    orders and deduplicates them; None if a path entry is not a plain directory."""
    seen: set[str] = set()
    out: list[str] = []
    for entry in path:
        root = entry or "."
        if os.path.basename(root).lower().endswith(".egg"):
            return None
        try:
            children = os.listdir(root)
        except NotADirectoryError:
            return None  # a zip file: importlib.metadata reads it
        except OSError:
            continue
        # Grouped by name in order of first appearance, as importlib.metadata's Lookup.
        infos: dict[str, list[str]] = {}
        for child in children:
            low = child.lower()
            if low.endswith((".dist-info", ".egg-info")):
                if not child.endswith((".dist-info", ".egg-info")):
                    return None  # its name would come from its metadata, not from here
                name = _normalize(low.rpartition(".")[0].partition("-")[0])
                infos.setdefault(name, []).append(os.path.join(root, child))
        for name, dirs in infos.items():
            if name not in seen:
                seen.add(name)
                out.append(dirs[0])
    return out


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError):
        return None


def _about(directory: str) -> tuple[str | None, str | None]:
    """``Name`` and ``Version`` from the metadata's header (the first of each)."""
    text = (
        _read(os.path.join(directory, "METADATA"))
        or _read(os.path.join(directory, "PKG-INFO"))
        or ""
    )
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line:
            break  # the end of the header: the description follows
        key, sep, value = line.partition(":")
        if sep and key in ("Name", "Version"):
            fields.setdefault(key, value.strip())
    return fields.get("Name"), fields.get("Version")


def _group_entries(text: str, group: str) -> list[tuple[str, str]]:
    # importlib.metadata's Sectioned: stripped lines, "#" comments, [section] headers,
    # then "name = value" pairs.
    out = []
    section = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line.strip("[]")
            continue
        if section == group:
            name, value = line.split("=", 1)  # as importlib.metadata: a line without "=" raises
            out.append((name.strip(), value.strip()))
    return out


def entry_points(group: str, path: Sequence[str] | None = None) -> list[Found]:
    """The entry points of ``group`` on ``path`` (default ``sys.path``), in
    importlib.metadata's order."""
    # Another finder on sys.meta_path may list distributions of its own.
    others = any(
        hasattr(finder, "find_distributions") and finder is not importlib.machinery.PathFinder
        for finder in sys.meta_path
    )
    dirs = None if others else _distributions(sys.path if path is None else path)
    if dirs is None:
        return _with_importlib(group)
    out = []
    for directory in dirs:
        text = _read(os.path.join(directory, "entry_points.txt"))
        if not text or f"[{group}]" not in text.replace(" ", ""):
            continue
        name, version = _about(directory)
        for ep_name, value in _group_entries(text, group):
            out.append(Found(EntryPoint(ep_name, value, group), name, version))
    return out


def _with_importlib(group: str) -> list[Found]:
    import importlib.metadata

    out = []
    about: dict[int, tuple[str, str]] = {}
    for ep in importlib.metadata.entry_points(group=group):
        dist = version = None
        if ep.dist is not None:
            if id(ep.dist) not in about:
                meta = ep.dist.metadata
                about[id(ep.dist)] = (meta["Name"], meta["Version"])
            dist, version = about[id(ep.dist)]
        out.append(Found(EntryPoint(ep.name, ep.value, group), dist, version))
    return out
