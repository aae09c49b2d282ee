"""A deterministic, structure-aware fuzz of the image reader and every ``show`` renderer.

Each mutant is the seed image (tests/crafted.py) decoded to plain maps, changed one to
three times (a field given a value of another type, out of range, another enumeration
word or a garbage one, another id; a field or record deleted, duplicated, moved; a
value nested too deep; an unknown field added), re-encoded, its trailer's counts made to
agree with the body (most of the time) and its digest recomputed, as anyone editing an
image can.  The reader must reject it with an ImageError or accept it; an accepted one
must render as a table, as endpoints and as JSON without any exception, every line of
text printable and the JSON strict.

Mutants are numbered, and mutant N is the same on every run (``random.Random(seed, N)``):
a failure names the number that reproduces it.  The suite runs ``FUZZ_MUTANTS`` (3000);
a long run outside CI sets ``ASYCKPT_FUZZ_MUTANTS`` (and ``ASYCKPT_FUZZ_SEED`` to explore
another sequence), for example::

    ASYCKPT_FUZZ_MUTANTS=200000 ASYCKPT_FUZZ_SEED=7 python -m pytest tests/test_fuzz_images.py
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from asyckpt._endpoints import endpoints, render_endpoints
from asyckpt._errors import ImageError
from asyckpt._image import Image, parse_image
from asyckpt._plugins.loading import ImagePlugin, image_plugins
from asyckpt._show import render_table, to_json_doc

from .crafted import Rec, build, nested, seed

FUZZ_MUTANTS = int(os.environ.get("ASYCKPT_FUZZ_MUTANTS", "3000"))
FUZZ_SEED = int(os.environ.get("ASYCKPT_FUZZ_SEED", "11"))

WORDS = [
    # every enumeration word the format knows, and record and handler kinds
    "reg", "dir", "link", "pipe", "fifo", "socket", "chr", "blk", "anon",
    "r", "w", "rw", "path", "2w", "ok", "deleted", "deleted-linked", "replaced", "missing",
    "proc-exited", "none", "unchecked", "saved", "too-big", "off", "failed",
    "cgroup-v1", "cgroup-v2", "transient", "in-place", "tid", "pid", "pgrp",
    "POSIX", "FLOCK", "LEASE", "READ", "WRITE", "header", "mounts", "fdtable", "file",
    "content", "fd", "task", "trailer", "asyckpt.socket", "asyckpt.epoll", "asyckpt.pipe",
    "asyckpt.tty", "sockets", "pipes", "epoll", "tty", "ESTABLISHED", "LISTEN",
]  # fmt: skip
HOSTILE = [
    "x\n# pid 1 (systemd) ppid 0, state S",
    "\x1b[2J\x1b]0;pwned\x07",
    "bidi\u202eevil",
    "c1\u009b31m",
    "back\\slash",
    "",
]
SCALARS: list[Any] = [
    0, 1, -1, 2, 3, 7, 100, 2**31 - 1, 2**31, 2**32, 2**63 - 1, 2**64 - 1, -(2**63),
    1.5, -0.0, math.nan, math.inf, -math.inf, None, True, False, b"", b"\xff\xfe",
    [], {}, [1, 2], {"k": 1}, {1: "int key"}, [[1], {"a": [2]}],
]  # fmt: skip


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place inside a record: map keys and array indexes, at any depth."""
    out = []
    if isinstance(value, dict):
        for k, v in value.items():
            out.append((*prefix, k))
            out += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out.append((*prefix, i))
            out += _paths(v, (*prefix, i))
    return out


def _parent(rec: Any, path: tuple[Any, ...]) -> Any:
    for step in path[:-1]:
        rec = rec[step]
    return rec


def _new_value(rng: random.Random, old: Any, records: list[Any]) -> Any:
    roll = rng.random()
    if isinstance(old, int) and not isinstance(old, bool) and roll < 0.35:
        new = rng.choice([old + 1, old - 1, -old, old * 2**32, rng.randrange(0, 20)])
        return min(max(new, -(2**63)), 2**64 - 1)  # what MessagePack can hold
    if isinstance(old, str) and roll < 0.35:
        return rng.choice(WORDS + HOSTILE + [old + rng.choice(HOSTILE)])
    if roll < 0.45:
        return rng.choice(HOSTILE + WORDS)
    if roll < 0.5:
        return nested(rng.choice([33, 1000]))
    if roll < 0.55:
        deep: Any = {"kind": "asyckpt.socket"}
        for _ in range(rng.choice([31, 40])):
            deep = {"k": deep}
        return deep
    if roll < 0.6:  # a whole record where a value was
        return copy.deepcopy(rng.choice(records))
    return copy.deepcopy(rng.choice(SCALARS))


def _mutate(rng: random.Random, records: list[Any]) -> str:
    """Change ``records`` in place once; returns what was done."""
    op = rng.random()
    i = rng.randrange(len(records))
    if op < 0.08:
        del records[i]
        return f"delete record {i}"
    if op < 0.13:
        records.insert(rng.randrange(len(records) + 1), copy.deepcopy(records[i]))
        return f"duplicate record {i}"
    if op < 0.18:
        j = rng.randrange(len(records))
        records[i], records[j] = records[j], records[i]
        return f"swap records {i} and {j}"
    if op < 0.2:
        records[i] = copy.deepcopy(rng.choice(SCALARS))
        return f"record {i} replaced by a non-map"
    rec = records[i]
    paths = _paths(rec)
    if not paths:
        return "nothing"
    path = rng.choice(paths)
    parent = _parent(rec, path)
    if op < 0.3 and isinstance(parent, dict):
        del parent[path[-1]]
        return f"record {i}: delete {path}"
    if op < 0.35 and isinstance(parent, dict):
        parent[f"future_{rng.randrange(9)}"] = copy.deepcopy(rng.choice(SCALARS))
        return f"record {i}: unknown field in {path[:-1]}"
    parent[path[-1]] = value = _new_value(rng, parent[path[-1]], records)
    return f"record {i}: {path} = {value!r:.60}"


def mutant(n: int, base: list[Rec]) -> tuple[bytes, str]:
    rng = random.Random(f"{FUZZ_SEED}-{n}")
    records: list[Any] = copy.deepcopy(base)
    done = [_mutate(rng, records) for _ in range(rng.choice([1, 1, 2, 3]))]
    counts = rng.random() < 0.9
    try:
        data = build(records, counts=counts)
    except (TypeError, ValueError, RecursionError) as exc:  # MessagePack cannot hold it
        return b"", f"unencodable: {exc}"
    return data, "; ".join(done) + ("" if counts else "; trailer counts left as they were")


def _strict_json(text: str) -> Any:
    def refuse(name: str) -> Any:
        raise ValueError(f"not JSON: {name}")

    return json.loads(text, parse_constant=refuse)


def render_all(image: Image, plugins: dict[str, ImagePlugin]) -> None:
    """Every renderer of ``show``, checked for what must hold of its output."""
    for text in (render_table(image, plugins), render_endpoints(image)):
        lines = text.split("\n")
        bad = [line for line in lines if not line.isprintable()]
        assert not bad, f"unprintable line: {bad[0]!r}"
    table = render_table(image, plugins)
    assert sum(line.startswith("# pid ") for line in table.split("\n")) == len(image.tasks)
    doc = to_json_doc(image, plugins)
    doc["endpoints"] = [e.to_json() for e in endpoints(image)]
    _strict_json(json.dumps(doc, allow_nan=False))


@pytest.fixture(scope="module")
def plugins() -> dict[str, ImagePlugin]:
    """The bundled handlers, loaded once, so their decoders and renderers are fuzzed too."""
    image = parse_image(build(seed()))
    loaded = image_plugins(image.header.plugins)
    assert all(p.loaded is not None for p in loaded.values()), loaded
    return loaded


def test_seed_is_valid_and_renders(plugins: dict[str, ImagePlugin]) -> None:
    image = parse_image(build(seed()))
    render_all(image, plugins)
    assert len(image.files) == 14 and len(image.tasks) == 3


def test_mutants_are_rejected_or_rendered(plugins: dict[str, ImagePlugin]) -> None:
    base = seed()
    failures: list[str] = []
    verdicts = {"accepted": 0, "rejected": 0, "unencodable": 0}
    for n in range(FUZZ_MUTANTS):
        data, what = mutant(n, base)
        if not data:
            verdicts["unencodable"] += 1
            continue
        try:
            image = parse_image(data)
        except ImageError:
            verdicts["rejected"] += 1
            continue
        except Exception as exc:
            failures.append(f"mutant {n} ({what}): reader: {type(exc).__name__}: {exc}")
            continue
        verdicts["accepted"] += 1
        try:
            render_all(image, plugins)
        except Exception as exc:
            failures.append(f"mutant {n} ({what}): show: {type(exc).__name__}: {exc}")
    assert not failures, f"{len(failures)} of {FUZZ_MUTANTS}:\n" + "\n".join(failures[:15])
    # The fuzz means something only if mutants land on both sides.
    assert verdicts["accepted"] > FUZZ_MUTANTS // 10, verdicts
    assert verdicts["rejected"] > FUZZ_MUTANTS // 10, verdicts


def _pick(want_accepted: bool, count: int) -> list[tuple[int, bytes]]:
    base, out = seed(), []
    n = 0
    while len(out) < count:
        data, _ = mutant(n, base)
        n += 1
        if not data:
            continue
        try:
            parse_image(data)
            accepted = True
        except ImageError:
            accepted = False
        if accepted == want_accepted:
            out.append((n - 1, data))
    return out


ASYCKPT = [sys.executable, "-m", "asyckpt"]
Check = Callable[[subprocess.CompletedProcess[str]], None]


def _show(path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*ASYCKPT, "show", str(path), *args], capture_output=True, text=True, timeout=60
    )


def test_mutants_through_the_command(tmp_path: Path) -> None:
    """A handful of mutants, through ``asyckpt show``: exit 0 with printable output and
    strict JSON, or exit 6 with one escaped line."""
    for n, data in _pick(True, 4):
        path = tmp_path / f"accepted-{n}.ackpt"
        path.write_bytes(data)
        table = _show(path)
        assert table.returncode == 0 and not table.stderr, (n, table.stderr)
        assert all(line.isprintable() for line in table.stdout.splitlines()), n
        exported = _show(path, "--json", "--endpoints")
        assert exported.returncode == 0, (n, exported.stderr)
        _strict_json(exported.stdout)
    for n, data in _pick(False, 6):
        path = tmp_path / f"rejected-{n}.ackpt"
        path.write_bytes(data)
        shown = _show(path, "--json")
        assert shown.returncode == 6, (n, shown.stderr)
        lines = shown.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("asyckpt: error: "), (n, shown.stderr)
        assert lines[0].isprintable() and not shown.stdout, n
