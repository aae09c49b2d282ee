"""Plugins installed for real: each test distribution gets a directory on sys.path (and
PYTHONPATH, for the asyckpt commands run as subprocesses) holding its modules and a
``*.dist-info`` with its METADATA and entry_points.txt, as pip would install it, and
asyckpt finds it through importlib.metadata like any other.  Uninstalling removes the
directory from the paths; the environment is left as it was found."""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio

import asyckpt
from asyckpt import PluginError, read_image
from asyckpt._plugins.loading import AUTOLOAD_ENV, load_handlers

from .conftest import WORKLOADS, Tree, asyckpt_cgroups, task_state

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "chardev-plugin"
ASYCKPT = [sys.executable, "-m", "asyckpt"]


class Site:
    """Test distributions installed into the running interpreter and its subprocesses."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.dirs: dict[str, Path] = {}
        self.modules: dict[str, list[str]] = {}

    def install(
        self,
        dist: str,
        version: str,
        entry_points: dict[str, str],
        *,
        modules: dict[str, str] | None = None,
        packages: dict[str, Path] | None = None,
    ) -> None:
        home = self.root / f"{dist}-{version}"
        info = home / f"{re.sub(r'[-_.]+', '_', dist)}-{version}.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        eps = "".join(f"{name} = {value}\n" for name, value in entry_points.items())
        (info / "entry_points.txt").write_text(f"[asyckpt.fd_types]\n{eps}")
        for name, source in (modules or {}).items():
            (home / f"{name}.py").write_text(source)
        for name, src in (packages or {}).items():
            shutil.copytree(src, home / name)
        self.dirs[dist] = home
        self.modules[dist] = [*(modules or {}), *(packages or {})]
        sys.path.insert(0, str(home))
        importlib.invalidate_caches()

    def uninstall(self, dist: str) -> None:
        sys.path.remove(str(self.dirs.pop(dist)))
        for name in self.modules.pop(dist):
            for mod in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
                del sys.modules[mod]
        importlib.invalidate_caches()

    def install_example(self, version: str | None = None) -> None:
        """The example plugin, with the name, version and entry points of its pyproject."""
        project = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]
        self.install(
            project["name"],
            version or project["version"],
            project["entry-points"]["asyckpt.fd_types"],
            packages={"asyckpt_example_chardev": EXAMPLE / "src" / "asyckpt_example_chardev"},
        )

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != AUTOLOAD_ENV}
        env["PYTHONPATH"] = os.pathsep.join(
            [*map(str, self.dirs.values()), *filter(None, [os.environ.get("PYTHONPATH")])]
        )
        env.update(extra)
        return env

    def run(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*ASYCKPT, *args], capture_output=True, text=True, timeout=120, env=self.env(**env)
        )

    def close(self) -> None:
        for dist in list(self.dirs):
            self.uninstall(dist)


@pytest.fixture
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    s = Site(tmp_path_factory.mktemp("site"))
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def mem(spawn: Any) -> Tree:
    """A process holding /dev/null (also as its stdin), /dev/zero and /dev/urandom."""
    tree: Tree = spawn(WORKLOADS / "mem_devices.py")
    return tree


def bundled_handlers() -> list[str]:
    """Handlers installed from distributions other than asyckpt (the bundled plugins, if
    installed): tests of generic records disable them."""
    from asyckpt._plugins.loading import installed_handlers

    return [i.name for i in installed_handlers() if not i.builtin]


def one_line_error(proc: subprocess.CompletedProcess[str], code: int) -> str:
    assert proc.returncode == code, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("asyckpt: error: "), proc.stderr
    return lines[0]


def plugin_rows(stdout: str) -> dict[str, list[str]]:
    lines = stdout.splitlines()
    assert lines[0].split()[:4] == ["NAME", "DISTRIBUTION", "VERSION", "STATE"]
    rows = {}
    for line in lines[1:]:
        if not line.strip():
            break
        cells = re.split(r"\s{2,}", line.strip())
        rows[cells[0]] = cells
    return rows


def files_by_fd(image: asyckpt.Image, pid: int) -> dict[int, asyckpt.File]:
    task = next(t for t in image.tasks if t.pid == pid)
    return {fd.fd: f for fd, f in image.fds(task.fd_table)}


# --- the example plugin, installed ---------------------------------------------------------


def test_plugins_lists_every_handler(site: Site) -> None:
    site.install_example()
    proc = site.run("plugins")
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    rows = plugin_rows(proc.stdout)
    assert rows["chardev"] == [
        "chardev",
        "asyckpt-example-chardev",
        "0.1.0",
        "on",
        "0",
        "asyckpt_example_chardev.mem",
        "render_json,render_text,restore",
        "chr 1:3, chr 1:5, chr 1:7, chr 1:8, chr 1:9",
    ]
    assert rows["reg"] == ["reg", "asyckpt", "0.1.0", "on", "0", "asyckpt.reg", "-", "kind reg"]
    assert rows["link"][6] == "render_text"
    # The bundled plugins (plugins/) may be installed too; none other is.
    mine = {name for name, row in rows.items() if row[1] in ("asyckpt", "asyckpt-example-chardev")}
    assert mine == {"chardev", "dir", "link", "reg"}


def test_example_plugin_captures_and_show_renders_it(site: Site, mem: Tree, tmp_path: Path) -> None:
    site.install_example()
    info = mem.info
    # The library, loading handlers itself: the entry point is found like any other.
    dest = tmp_path / "lib.ackpt"
    trio.run(lambda: asyckpt.checkpoint_tree(mem.pid, dest))
    files = files_by_fd(read_image(dest), mem.pid)
    expected = {"null": (3, "null"), "zero": (5, "zero"), "urandom": (9, "urandom")}
    for key, (minor, device) in expected.items():
        f = files[info[key]]
        assert (f.type, f.handler, f.error) == ("chr", "chardev", None)
        assert msgspec.msgpack.decode(f.data) == {
            "kind": "asyckpt_example_chardev.mem",
            "major": 1,
            "minor": minor,
            "device": device,
        }
    assert files[0].handler == "chardev"  # its stdin, another open of /dev/null
    header = read_image(dest).header
    assert {
        "name": "chardev",
        "distribution": "asyckpt-example-chardev",
        "version": "0.1.0",
        "record_tag": "asyckpt_example_chardev.mem",
    } in msgspec.to_builtins(header.plugins)

    # The command line, end to end.
    image = str(tmp_path / "cli.ackpt")
    proc = site.run("tree", str(mem.pid), "-o", image)
    assert proc.returncode == 0, proc.stderr
    assert "chr" not in proc.stderr  # nothing recorded generically but its stdout pipe
    doc = json.loads(site.run("show", image, "--json").stdout)
    plugin = next(p for p in doc["plugins"] if p["name"] == "chardev")
    assert (plugin["installed"], plugin["loaded"], plugin["note"]) == ("0.1.0", True, None)
    zero = next(f for f in doc["files"] if f["path"] == "/dev/zero")
    assert zero["handler"] == "chardev"
    assert zero["data"] == {
        "kind": "asyckpt_example_chardev.mem",
        "major": 1,
        "minor": 5,
        "device": "zero",
    }
    assert zero["rendered"] == {"device": "zero", "dev_t": "1:5"}
    assert zero["note"] is None
    table = site.run("show", image).stdout
    assert "/dev/zero [zero, chr 1:5]" in table
    assert "chardev (asyckpt-example-chardev 0.1.0)" in table

    # Without the plugin the image still shows, raw, and says so.
    site.uninstall("asyckpt-example-chardev")
    proc = site.run("show", image, "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    plugin = next(p for p in doc["plugins"] if p["name"] == "chardev")
    assert (plugin["installed"], plugin["loaded"], plugin["note"]) == (None, False, "not installed")
    raw = next(f for f in doc["files"] if f["path"] == "/dev/zero")
    assert raw["data"] == zero["data"] and raw["rendered"] is None
    assert raw["note"] == "raw fields: handler 'chardev' is not installed"
    reg = next(f for f in doc["files"] if f["type"] == "reg")
    assert reg["note"] is None  # asyckpt's own handlers are always there
    table = site.run("show", image).stdout
    assert "/dev/zero [asyckpt_example_chardev.mem: major=1 minor=5 device=zero (raw)]" in table
    assert "chardev (asyckpt-example-chardev 0.1.0; not installed: records shown raw)" in table

    # Another version of it renders them, and says so.
    site.install_example(version="0.2.0")
    doc = json.loads(site.run("show", image, "--json").stdout)
    plugin = next(p for p in doc["plugins"] if p["name"] == "chardev")
    assert plugin["installed"] == "0.2.0" and plugin["loaded"] is True
    assert plugin["note"] == "written by version 0.1.0, rendered with 0.2.0"
    zero = next(f for f in doc["files"] if f["path"] == "/dev/zero")
    assert zero["rendered"] == {"device": "zero", "dev_t": "1:5"} and zero["note"] is None


def test_disable_plugin(site: Site, mem: Tree, tmp_path: Path) -> None:
    site.install_example()
    with_it, without = str(tmp_path / "with.ackpt"), str(tmp_path / "without.ackpt")
    assert site.run("tree", str(mem.pid), "-o", with_it, "-q").returncode == 0
    # Without chardev, and without any bundled plugin that would claim its fds.
    others = [f"--disable-plugin={name}" for name in bundled_handlers()]
    proc = site.run("tree", str(mem.pid), "-o", without, "--disable-plugin", "chardev", *others)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"recorded generically \(no handler for them\): .*chr 4", proc.stderr)
    null = files_by_fd(read_image(without), mem.pid)[mem.info["null"]]
    assert (null.type, null.handler) == ("chr", None)
    assert "chardev" not in {p.name for p in read_image(without).header.plugins}

    doc = json.loads(site.run("show", with_it, "--json", "--disable-plugin", "chardev").stdout)
    zero = next(f for f in doc["files"] if f["path"] == "/dev/zero")
    assert zero["note"] == "raw fields: handler 'chardev' is disabled (--disable-plugin)"
    rows = plugin_rows(site.run("plugins", "--disable-plugin", "chardev").stdout)
    assert rows["chardev"][3] == "disabled"

    # A name that is not installed is an error, not silently ignored.
    line = one_line_error(site.run("tree", str(mem.pid), "-o", without, "--disable-plugin", "x"), 9)
    assert "no fd-type handler named 'x' is installed" in line
    assert one_line_error(site.run("plugins", "-p", "nope"), 9)


def test_autoload_can_be_disabled(
    site: Site, mem: Tree, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site.install_example()
    image = str(tmp_path / "x.ackpt")
    off = {AUTOLOAD_ENV: "1"}
    proc = site.run("plugins", **off)
    rows = plugin_rows(proc.stdout)
    assert rows["chardev"][3] == "not autoloaded"
    assert {rows[n][3] for n in ("reg", "dir", "link")} == {"on"}  # asyckpt's own stay
    assert f"{AUTOLOAD_ENV} is set" in proc.stdout

    proc = site.run("tree", str(mem.pid), "-o", image, **off)
    assert proc.returncode == 0 and "chr 4" in proc.stderr
    proc = site.run("tree", str(mem.pid), "-o", image, "--force", "-p", "chardev", **off)
    assert proc.returncode == 0 and "chr" not in proc.stderr, proc.stderr
    doc = json.loads(site.run("show", image, "--json", **off).stdout)
    zero = next(f for f in doc["files"] if f["path"] == "/dev/zero")
    assert zero["note"] == (
        f"raw fields: handler 'chardev' is not loaded: {AUTOLOAD_ENV} is set (-p chardev loads it)"
    )
    doc = json.loads(site.run("show", image, "--json", "-p", "chardev", **off).stdout)
    zero = next(f for f in doc["files"] if f["path"] == "/dev/zero")
    assert zero["rendered"] == {"device": "zero", "dev_t": "1:5"}

    # The library reads the same variable; "0" and "" mean autoload.
    monkeypatch.setenv(AUTOLOAD_ENV, "1")
    assert "chardev" not in load_handlers().by_name
    assert "chardev" in load_handlers(enabled=["chardev"]).by_name
    monkeypatch.setenv(AUTOLOAD_ENV, "0")
    assert "chardev" in load_handlers().by_name


# --- conflicts and failures ----------------------------------------------------------------

NULLISH = """\
import msgspec
from asyckpt import Device


class NullishRecord(msgspec.Struct, tag={tag!r}, tag_field="kind"):
    pass


class Nullish:
    name = {name!r}
    record_type = NullishRecord
    devices = frozenset({{Device("chr", 1, 3)}})
    priority = {priority}

    def capture(self, facts, ctx):
        {body}
"""


def nullish(name: str, tag: str, *, priority: int = 0, body: str = "return NullishRecord()") -> str:
    return NULLISH.format(name=name, tag=tag, priority=priority, body=body)


def test_two_plugins_claiming_one_device_are_reported(
    site: Site, mem: Tree, tmp_path: Path
) -> None:
    site.install_example()
    site.install(
        "other-null",
        "1.0",
        {"nullish": "othernull:Nullish"},
        modules={"othernull": nullish("nullish", "other_null.rec")},
    )
    warning = (
        "asyckpt: warning: handlers asyckpt-example-chardev[chardev] and other-null[nullish] "
        "both claim chr 1:3 at priority 0; asyckpt-example-chardev[chardev] is tried first "
        "only by name: give one of them a higher priority"
    )
    proc = site.run("plugins")
    assert proc.returncode == 0 and proc.stderr.strip() == warning
    proc = site.run("tree", str(mem.pid), "-o", str(tmp_path / "x.ackpt"))
    assert proc.returncode == 0 and warning in proc.stderr.splitlines()
    null = files_by_fd(read_image(tmp_path / "x.ackpt"), mem.pid)[mem.info["null"]]
    assert null.handler == "chardev"


def test_plugins_listing_escapes_what_a_distribution_declares(site: Site) -> None:
    # Every cell of the listing comes from whatever is installed: an escape sequence in
    # a distribution's metadata must not reach the terminal.
    site.install(
        "odd-null",
        "1.0\x1b[31m\x07",
        {"oddnull": "oddnull:Nullish"},
        modules={"oddnull": nullish("oddnull", "odd_null.rec")},
    )
    proc = site.run("plugins", "-p", "oddnull")
    assert proc.returncode == 0, proc.stderr
    assert "\x1b" not in proc.stdout and "\x07" not in proc.stdout
    (row,) = [line for line in proc.stdout.splitlines() if line.startswith("oddnull ")]
    assert "1.0\\x1b[31m\\x07" in row.split(), row


def test_record_tags_that_collide_fail_at_load(site: Site, mem: Tree, tmp_path: Path) -> None:
    site.install_example()
    site.install(
        "tag-thief",
        "0.3",
        {"thief": "thief:Nullish"},
        modules={"thief": nullish("thief", "asyckpt_example_chardev.mem", priority=1)},
    )
    message = (
        "asyckpt: error: handlers tag-thief[thief] and asyckpt-example-chardev[chardev] use "
        "the same record tag 'asyckpt_example_chardev.mem'"
    )
    assert one_line_error(site.run("plugins"), 9) == message
    before = {pid: task_state(pid) for pid in mem.pids()}
    assert one_line_error(site.run("tree", str(mem.pid), "-o", str(tmp_path / "x")), 9) == message
    assert list(tmp_path.iterdir()) == [] and not asyckpt_cgroups()
    assert {pid: task_state(pid) for pid in mem.pids()} == before
    with pytest.raises(PluginError, match="use the same record tag"):
        load_handlers()
    assert site.run("plugins", "--disable-plugin", "thief").returncode == 0


def test_a_plugin_that_fails_to_load(site: Site, tmp_path: Path) -> None:
    site.install(
        "broken-plugin",
        "0.1",
        {"broken": "brokenmod:Handler", "misnamed": "othernull:Nullish"},
        modules={
            "brokenmod": "raise ImportError('needs libfoo')\n",
            "othernull": nullish("nullish", "broken_plugin.rec"),
        },
    )
    line = one_line_error(site.run("plugins"), 9)
    assert line == (
        "asyckpt: error: failed to load fd-type handler broken-plugin[broken] "
        "(brokenmod:Handler): ImportError: needs libfoo (--disable-plugin broken runs without it)"
    )
    line = one_line_error(site.run("plugins", "--disable-plugin", "broken"), 9)
    assert "its entry point is named 'misnamed' but the handler 'nullish'" in line
    proc = site.run("plugins", "--disable-plugin", "broken", "--disable-plugin", "misnamed")
    assert proc.returncode == 0, proc.stderr
    assert plugin_rows(proc.stdout)["broken"][3] == "disabled"


RAISE = "raise RuntimeError('no luck with ' + facts.path)"


def test_a_plugin_that_raises_on_one_fd(site: Site, mem: Tree, tmp_path: Path) -> None:
    site.install(
        "boom-plugin",
        "0.1",
        {"boom": "boom:Nullish"},
        modules={
            "boom": nullish("boom", "boom.rec", priority=1, body=RAISE),
        },
    )
    image = str(tmp_path / "x.ackpt")
    proc = site.run("tree", str(mem.pid), "-o", image)
    assert proc.returncode == 0, proc.stderr
    null_fds = (0, mem.info["null"])
    for fd in null_fds:
        assert (
            f"asyckpt: warning: handler 'boom' failed: RuntimeError: no luck with /dev/null "
            f"(pid={mem.pid}, fd={fd}, kind=chr)"
        ) in proc.stderr.splitlines()
    doc = json.loads(site.run("show", image, "--json").stdout)
    assert doc["stats"]["handler_errors"] == 2
    failed = [f for f in doc["files"] if f["error"]]
    assert {f["path"] for f in failed} == {"/dev/null"}
    assert all(f["handler"] is None and f["data"] is None for f in failed)
    assert "[generic: handler 'boom' failed" in site.run("show", image).stdout

    # fd 0 is /dev/null, so under --strict the failure is the first thing found.
    proc = site.run("tree", str(mem.pid), "-o", str(tmp_path / "s.ackpt"), "--strict")
    line = one_line_error(proc, 8)
    assert line == (
        "asyckpt: error: handler 'boom' failed: RuntimeError: no luck with /dev/null on a chr "
        f"fd (pid={mem.pid}, fd=0)"
    )
    assert not (tmp_path / "s.ackpt").exists() and not asyckpt_cgroups()


def test_plugins_and_show_do_not_import_trio(site: Site, mem: Tree, tmp_path: Path) -> None:
    site.install_example()
    image = str(tmp_path / "x.ackpt")
    assert site.run("tree", str(mem.pid), "-o", image, "-q").returncode == 0
    code = (
        "import sys\n"
        "from asyckpt._cli import main\n"
        "for argv in (['plugins'], ['show', sys.argv[1]], ['show', sys.argv[1], '--json']):\n"
        "    assert main(argv) == 0\n"
        "print('trio' in sys.modules, file=sys.stderr)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, image],
        capture_output=True,
        text=True,
        timeout=60,
        env=site.env(),
    )
    assert proc.returncode == 0 and proc.stderr.strip() == "False", proc.stderr
