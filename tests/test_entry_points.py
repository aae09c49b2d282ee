"""asyckpt's entry-point reader (``_plugins.entrypoints``) against importlib.metadata:
the same entry points, distributions and versions, in the same order, on the installed
environment and on crafted path entries."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from asyckpt._plugins.entrypoints import EntryPoint, entry_points
from asyckpt._plugins.loading import ENTRY_POINT_GROUP


def by_importlib(group: str, path: list[str]) -> list[tuple[str, str, str | None, str | None]]:
    out: list[tuple[str, str, str | None, str | None]] = []
    seen: set[str] = set()
    for dist in importlib.metadata.distributions(path=path):
        norm = dist._normalized_name  # type: ignore[attr-defined]
        if norm in seen:
            continue
        seen.add(norm)
        for ep in dist.entry_points.select(group=group):
            out.append((ep.name, ep.value, dist.metadata["Name"], dist.metadata["Version"]))
    return out


def by_asyckpt(group: str, path: list[str]) -> list[tuple[str, str, str | None, str | None]]:
    return [(ep.name, ep.value, d, v) for ep, d, v in entry_points(group, path)]


def test_the_installed_handlers_are_found_as_importlib_finds_them() -> None:
    ours = by_asyckpt(ENTRY_POINT_GROUP, sys.path)
    assert ours == by_importlib(ENTRY_POINT_GROUP, sys.path)
    assert {"reg", "dir", "link"} <= {name for name, *_ in ours}
    assert ours == [(ep.name, ep.value, d, v) for ep, d, v in entry_points(ENTRY_POINT_GROUP)]


def dist(
    root: Path, dirname: str, entry_points: str | None, meta: str, name: str = "METADATA"
) -> None:
    d = root / dirname
    d.mkdir(parents=True)
    if entry_points is not None:
        (d / "entry_points.txt").write_text(entry_points)
    (d / name).write_text(meta)


def test_crafted_distributions(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    group = "asyckpt.fd_types"
    dist(
        a,
        "First_Pkg-1.0.dist-info",
        f"[{group}]\nx = m:X\n# a comment\n  y=m.n:Y.z [extra]\n\n[other]\nz = m:Z\n",
        "Metadata-Version: 2.1\nName: First-Pkg\nVersion: 1.0\n\nName: not this\n",
    )
    dist(
        a,
        "old.egg-info",
        f"[ {group} ]\nq = m:Q\n[{group}]\nw = m:W\n",
        "Name: old\nVersion: 0.1\n",
        name="PKG-INFO",
    )
    dist(a, "noeps-2.dist-info", None, "Name: noeps\nVersion: 2\n")
    # The same distribution again, later on the path: importlib.metadata keeps the first.
    dist(
        b, "first.pkg-9.dist-info", f"[{group}]\nshadowed = m:S\n", "Name: first.pkg\nVersion: 9\n"
    )
    dist(b, "other-3.dist-info", f"[{group}]\nv = m:V\n", "Name: other\n")
    path = [str(a), str(tmp_path / "missing"), str(b)]
    ours = by_asyckpt(group, path)
    assert ours == by_importlib(group, path)
    assert [name for name, *_ in ours] == ["x", "y", "w", "v"]
    assert ours[0][2:] == ("First-Pkg", "1.0")
    assert ours[3][2:] == ("other", None)


def test_a_zip_on_the_path_is_left_to_importlib(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = tmp_path / "z.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("zipped-1.dist-info/entry_points.txt", "[g]\nk = m:K\n")
        z.writestr("zipped-1.dist-info/METADATA", "Name: zipped\nVersion: 1\n")
    monkeypatch.setattr(sys, "path", [str(archive)])
    found = entry_points("g")
    assert [(ep.name, d, v) for ep, d, v in found] == [("k", "zipped", "1")]


def test_load_resolves_module_and_attributes() -> None:
    assert EntryPoint("p", "os.path:join", "g").load() is __import__("os").path.join
    assert EntryPoint("p", "os.path", "g").load() is __import__("os").path
    assert (
        EntryPoint("p", "asyckpt._plugins.entrypoints:EntryPoint.load [x]", "g").load()
        is EntryPoint.load
    )
    with pytest.raises(ValueError, match="malformed"):
        EntryPoint("p", "not a value!", "g").load()


def test_loading_handlers_does_not_import_importlib_metadata() -> None:
    code = (
        "import sys, asyckpt; asyckpt.load_handlers(); "
        "print('importlib.metadata' in sys.modules, 'email' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
