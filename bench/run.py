#!/usr/bin/env python3
"""Benchmark asyckpt against lsof, lsfd and a C "floor" scanner, side by side, in one run.

For each workload (a tree made by ``python -m asyckpt.testing.spawn_tree CHILDREN FDS
[DEPTH]``: see WORKLOADS), each repetition runs, in a rotating order so all see the same
machine state:

* ``asyckpt tree ROOT -o IMG --force -q`` (wall time end to end, peak RSS), then reads
  freezing_ms / frozen_ms / capture_ms back with ``asyckpt show IMG --json``;
* ``lsof -n -P -p PID,PID,...`` (wall time, output discarded);
* ``lsfd -p "PID PID ..."`` (util-linux), when installed (wall time, output discarded);
* ``floor_scan PID PID ...`` (``floor_scan.c`` beside this file), compiled here with
  ``cc -O2``: per fd one readlink, one
  stat and one fdinfo read, in one thread: what reading the same /proc data must cost.

It prints Markdown tables (for docs/performance.md) with medians and ratios, one row per
workload.  Everything it starts is killed by process group and reaped, the temporary
directory is removed, and leftover asyckpt cgroups are reported.

Stdlib only (plus asyckpt, for its version).  Run as root: asyckpt needs the freezer.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import glob
import json
import os
import platform
import resource
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, NamedTuple

import asyckpt
from asyckpt.testing.spawn_tree import fds_opened, tasks_spawned

FLOOR_SOURCE = Path(__file__).resolve().parent / "floor_scan.c"
SPAWN_TREE = [sys.executable, "-m", "asyckpt.testing.spawn_tree"]
ASYCKPT = [sys.executable, "-m", "asyckpt"]
TOOLS = ("asyckpt", "lsof", "lsfd", "floor", "startup", "python")


class Workload(NamedTuple):
    """A tree to measure on: ``spawn_tree CHILDREN FDS DEPTH``."""

    name: str
    children: int
    fds: int
    depth: int
    what: str
    maps: int = 0
    """Files every task maps (``spawn_tree --maps``)."""

    def spec(self) -> str:
        depth = f" {self.depth}" if self.depth != 1 else ""
        maps = f" --maps {self.maps}" if self.maps else ""
        return f"{self.children} {self.fds}{depth}{maps}"


WORKLOADS = {
    w.name: w
    for w in (
        Workload("S0", 0, 30, 1, "one small process: start-up dominates"),
        Workload("S1", 0, 8000, 1, "one process with 10k fds: one table read whole"),
        Workload("W1", 20, 500, 1, "21 tasks, 27k fds, half of them shared"),
        Workload("W4", 166, 3, 2, "499 small tasks: per-task overhead"),
        Workload("W3", 49, 800, 1, "50 tasks, 106k fds: throughput and memory"),
    )
}
DEFAULT_WORKLOADS = ("S0", "S1", "W1")
"""About a minute on 2 cores; ``--all`` adds W4 and W3."""
MAPPING_WORKLOADS = {
    w.name: w
    for w in (
        Workload("M0", 20, 50, 1, "21 tasks, 1.3k fds: M1 without its mappings"),
        Workload("M1", 20, 50, 1, "M0, every task mapping 600 more files", maps=600),
    )
}
"""The cost of reading each task's mappings: the same tree without and with 600 mapped
files per task (``--maps``, or ``-w M0 -w M1``)."""
PR_SET_CHILD_SUBREAPER = 36
SPAWN_TIMEOUT = 120.0
REAP_TIMEOUT = 10.0


class BenchError(Exception):
    """A setup or measurement step failed; the message says which."""


# --------------------------------------------------------------------------- processes


def _become_subreaper() -> bool:
    """Adopt our orphans: when spawn_tree's root dies, its children become ours to reap,
    not init's (which, in some containers, never reaps them)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _raise_interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Let a command interrupted by Ctrl-C finish its own cleanup, then SIGTERM it (asyckpt
    thaws and removes its cgroup on SIGTERM, too), then SIGKILL; always reap it."""
    for action in (None, proc.terminate, proc.kill):
        if action is not None:
            with contextlib.suppress(ProcessLookupError):
                action()
        try:
            proc.wait(timeout=5 if action is None else 30)
            return
        except subprocess.TimeoutExpired:
            continue
    proc.wait()


# A child forked from this (large) Python process inherits its memory high-water mark:
# exec records the old mm's peak in the child's maxrss, so wait4() on a Popen'd child
# reports at least our own RSS.  Forking from this tiny C launcher instead gives each
# measured command a maxrss of its own; the launcher also times fork-to-reap.
TIMED_EXEC_C = r"""
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
static volatile pid_t child;
static void forward(int sig) { if (child > 0) kill(child, sig); }
static void ignore(int sig) { (void)sig; }  /* a caught signal is default again in exec */
int main(int argc, char **argv) {
    if (argc < 3) { fprintf(stderr, "usage: timed_exec RESULT CMD...\n"); return 127; }
    /* asyckpt thaws on SIGTERM: pass it on and keep waiting.  Ctrl-C reaches the child
     * from the terminal already; forwarding SIGINT too would interrupt its cleanup. */
    struct sigaction sa = {0}, quiet = {0};
    sa.sa_handler = forward;
    quiet.sa_handler = ignore;
    sigaction(SIGTERM, &sa, 0); sigaction(SIGHUP, &sa, 0); sigaction(SIGINT, &quiet, 0);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    pid_t pid = fork();
    if (pid < 0) { perror("fork"); return 127; }
    if (pid == 0) { execvp(argv[2], argv + 2); perror(argv[2]); _exit(127); }
    child = pid;
    int status; struct rusage ru;
    while (wait4(pid, &status, 0, &ru) < 0)
        if (errno != EINTR) { perror("wait4"); return 127; }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    FILE *f = fopen(argv[1], "w");
    if (!f) { perror(argv[1]); return 127; }
    fprintf(f, "%lld %ld %d\n", (long long)(t1.tv_sec - t0.tv_sec) * 1000000000LL
            + (t1.tv_nsec - t0.tv_nsec), ru.ru_maxrss, status);
    return fclose(f) == 0 ? 0 : 127;
}
"""


@dataclass
class Exec:
    """One finished command: wall time, exit code, peak RSS, captured output."""

    wall_ms: float
    returncode: int
    maxrss_kib: int
    stdout: str
    stderr: str


class Runner:
    """Runs commands through the timed_exec launcher compiled into ``tmp``."""

    def __init__(self, tmp: Path, env: dict[str, str] | None = None) -> None:
        self.launcher = compile_c(TIMED_EXEC_C, tmp / "timed_exec")
        self.result = tmp / "timed_exec.result"
        self.env = env
        """The environment of every command (None: this one's)."""

    def run(self, cmd: Sequence[str], *, keep_stdout: bool = False) -> Exec:
        """Run ``cmd`` to completion; wall time from before fork to after wait4.

        stdout goes to /dev/null unless kept; kept streams go to unnamed temporary
        files, so a chatty command can never block on a full pipe.
        """
        with tempfile.TemporaryFile() as err, contextlib.ExitStack() as stack:
            out: IO[bytes] | int = subprocess.DEVNULL
            if keep_stdout:
                out = stack.enter_context(tempfile.TemporaryFile())
            proc = subprocess.Popen(
                [str(self.launcher), str(self.result), *cmd],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=self.env,
            )
            try:
                launcher_rc = proc.wait()
            except BaseException:
                _stop(proc)
                raise
            err.seek(0)
            stderr = err.read().decode(errors="replace")
            if launcher_rc != 0:
                raise BenchError(f"timed_exec failed ({launcher_rc}) on {cmd}: {stderr}")
            stdout = ""
            if not isinstance(out, int):
                out.seek(0)
                stdout = out.read().decode(errors="replace")
        wall_ns, maxrss, status = map(int, self.result.read_text().split())
        self.result.unlink()
        return Exec(wall_ns / 1e6, os.waitstatus_to_exitcode(status), maxrss, stdout, stderr)


def compile_c(source: str | Path, out: Path) -> Path:
    """``cc -O2`` a C file (or source text) into ``out``."""
    if isinstance(source, str):
        src = out.with_suffix(".c")
        src.write_text(source)
    else:
        src = source
    cc = subprocess.run(
        ["cc", "-O2", "-o", str(out), str(src)], capture_output=True, text=True, check=False
    )
    if cc.returncode != 0:
        raise BenchError(f"cc -O2 {src.name} failed:\n{cc.stderr}")
    return out


def _cgroup_mounts() -> list[tuple[str, set[str], str]]:
    """(fstype, super options, mount point) of every cgroup and cgroup2 mount."""
    mounts = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            pre, post = line.split(" - ", 1)
            fstype, _source, opts = post.split()[:3]
            if fstype in ("cgroup", "cgroup2"):
                mounts.append((fstype, set(opts.split(",")), pre.split()[4]))
    return mounts


def _pids_headroom() -> tuple[int, str]:
    """How many more tasks this process may create, and which limit says so."""
    limits: list[tuple[int, str]] = []
    used = sum(1 for name in os.listdir("/proc") if name.isdigit())
    for sysctl in ("pid_max", "threads-max"):
        with contextlib.suppress(OSError, ValueError):
            value = int(Path(f"/proc/sys/kernel/{sysctl}").read_text())
            limits.append((value - used, f"kernel.{sysctl}"))
    if os.geteuid() != 0:
        soft, _ = resource.getrlimit(resource.RLIMIT_NPROC)
        if soft != resource.RLIM_INFINITY:
            limits.append((soft - used, "RLIMIT_NPROC"))
    # pids.max of our cgroup and its ancestors, in the v1 pids hierarchy or in cgroup2.
    own = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        own["cgroup2" if controllers == "" else controllers] = path
    for fstype, opts, mount in _cgroup_mounts():
        path = own.get("cgroup2") if fstype == "cgroup2" else None
        if fstype == "cgroup" and "pids" in opts:
            path = next((v for k, v in own.items() if "pids" in k.split(",")), None)
        if path is None:
            continue
        cg = Path(mount + path.rstrip("/"))
        while True:
            with contextlib.suppress(OSError, ValueError):
                maximum = (cg / "pids.max").read_text().strip()
                if maximum != "max":
                    current = int((cg / "pids.current").read_text())
                    limits.append((int(maximum) - current, f"{cg}/pids.max"))
            if str(cg) == mount or cg == cg.parent:
                break
            cg = cg.parent
    return min(limits, default=(1 << 30, "no limit found"))


def preflight(children: int, per: int, depth: int) -> None:
    """Refuse a tree that the fd or task limits would make spawn_tree fail on."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # A child holds the root's fds (inherited) plus its own, plus a few.
    need = (2 if children else 1) * fds_opened(per) + 32
    if hard != resource.RLIM_INFINITY and need > hard:
        raise BenchError(
            f"{per} fds per task needs about {need} open files per process, but the hard "
            f"RLIMIT_NOFILE is {hard}; lower --fds or raise the limit"
        )
    headroom, which = _pids_headroom()
    # The tree, plus asyckpt's worker threads, lsof, the floor and some slack.
    tasks = tasks_spawned(children, depth)
    if tasks + 32 > headroom:
        raise BenchError(
            f"a tree of {tasks} tasks does not fit: only {headroom} more tasks allowed ({which})"
        )


def _read_root_pid(proc: subprocess.Popen[bytes], timeout: float) -> int:
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + timeout
    data = b""
    while b"\n" not in data:
        left = deadline - time.monotonic()
        if left <= 0:
            raise BenchError(f"spawn_tree printed no pid within {timeout:g} s")
        ready, _, _ = select.select([fd], [], [], min(left, 0.5))
        if ready:
            chunk = os.read(fd, 64)
            if not chunk:
                proc.wait()
                raise BenchError(f"spawn_tree exited ({proc.returncode}) without a pid")
            data += chunk
    return int(data.split(b"\n", 1)[0])


def tree_pids(root: int) -> list[int]:
    """The tree's processes in pre-order, from /proc/PID/task/*/children."""
    out: list[int] = []
    stack = [root]
    while stack:
        pid = stack.pop()
        children: set[int] = set()
        try:
            for tid in os.listdir(f"/proc/{pid}/task"):
                with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                    text = Path(f"/proc/{pid}/task/{tid}/children").read_text()
                    children.update(int(c) for c in text.split())
        except FileNotFoundError:
            continue
        out.append(pid)
        stack.extend(sorted(children, reverse=True))
    return out


def _group_members(pgid: int) -> list[int]:
    """Processes (zombies included) whose process group is ``pgid``."""
    members = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            # Bytes: a comm is any bytes (another process's may not be UTF-8).
            stat = Path(f"/proc/{name}/stat").read_bytes()
        except OSError:
            continue
        fields = stat.rsplit(b")", 1)[1].split()
        if int(fields[2]) == pgid:
            members.append(int(name))
    return members


def _set_thawed(cgroup: str) -> None:
    for name, value in (("freezer.state", "THAWED"), ("cgroup.freeze", "0")):
        with contextlib.suppress(OSError):
            Path(cgroup, name).write_text(value)


def _kill_tree(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the whole process group (spawn_tree's pgid is its pid), reap everything."""
    # Only if asyckpt died without cleaning up: a frozen task cannot die, so thaw first.
    stale = sorted(cg for cg in _asyckpt_cgroups() if cg.endswith(f"-{proc.pid}"))
    for cgroup in stale:
        warn(f"asyckpt left {cgroup} behind (a bug); thawing it to kill the tree")
        _set_thawed(cgroup)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()
    # As subreaper we inherited the orphaned children: reap them by process group.
    deadline = time.monotonic() + REAP_TIMEOUT
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-proc.pid, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            time.sleep(0.01)
    left = _group_members(proc.pid)
    if left:
        warn(f"processes of the tree's group {proc.pid} still exist: {left}")
    for cgroup in stale:
        with contextlib.suppress(OSError):
            os.rmdir(cgroup)  # empty now that its tasks are gone; main() reports failures


@contextlib.contextmanager
def spawned_tree(
    children: int, per: int, tmp: Path, depth: int = 1, maps: int = 0
) -> Iterator[tuple[int, list[int]]]:
    """Start ``python -m asyckpt.testing.spawn_tree children per depth [--maps N]``;
    yield (root pid, all pids); always kill it."""
    preflight(children, per, depth)
    proc = subprocess.Popen(
        [
            *SPAWN_TREE,
            str(children),
            str(per),
            str(depth),
            *(["--maps", str(maps)] if maps else []),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        cwd=tmp,
        env={**os.environ, "TMPDIR": str(tmp)},  # its scratch files land in our tmp
        process_group=0,  # pgid == pid from the start: killpg can never miss
    )
    try:
        root = _read_root_pid(proc, SPAWN_TIMEOUT)
        if root != proc.pid:
            raise BenchError(f"spawn_tree printed pid {root}, but it is {proc.pid}")
        pids = tree_pids(root)
        if len(pids) != tasks_spawned(children, depth):
            warn(f"expected {tasks_spawned(children, depth)} tasks under {root}, found {len(pids)}")
        yield root, pids
    finally:
        _kill_tree(proc)


# --------------------------------------------------------------------------- measuring


@dataclass
class Rep:
    """One repetition: all tools against one tree."""

    asyckpt_wall_ms: float = 0.0
    asyckpt_rss_kib: int = 0
    freezing_ms: float = 0.0
    frozen_ms: float = 0.0
    capture_ms: float = 0.0
    lsof_wall_ms: float = 0.0
    lsof_rss_kib: int = 0
    lsfd_wall_ms: float = 0.0
    lsfd_rss_kib: int = 0
    floor_wall_ms: float = 0.0
    floor_rss_kib: int = 0
    floor_fds: int = 0
    startup_wall_ms: float = 0.0
    python_wall_ms: float = 0.0


@dataclass
class Series:
    """All repetitions against one tree, and what the tree was."""

    workload: Workload
    tasks: int = 0
    fds: int = 0
    files: int = 0
    freezer: str = ""
    reps: list[Rep] = field(default_factory=list)

    def values(self, name: str) -> list[float]:
        return [float(getattr(r, name)) for r in self.reps]

    def median(self, name: str) -> float:
        return statistics.median(self.values(name))

    def ratio(self, num: str, den: str) -> float:
        """Median of the per-repetition ratios (each pair ran back to back)."""
        return statistics.median(getattr(r, num) / getattr(r, den) for r in self.reps)


def _check(what: str, ex: Exec) -> None:
    if ex.returncode != 0:
        raise BenchError(f"{what} exited with {ex.returncode}: {ex.stderr.strip()[-2000:]}")


def measure_asyckpt(runner: Runner, root: int, image: Path, rep: Rep, series: Series) -> None:
    ex = runner.run([*ASYCKPT, "tree", str(root), "-o", str(image), "--force", "-q"])
    _check("asyckpt tree", ex)
    rep.asyckpt_wall_ms = ex.wall_ms
    rep.asyckpt_rss_kib = ex.maxrss_kib
    show = subprocess.run(
        [*ASYCKPT, "show", str(image), "--json"], capture_output=True, check=False, env=runner.env
    )
    if show.returncode != 0:
        raise BenchError(f"asyckpt show failed: {show.stderr.decode(errors='replace')}")
    doc = json.loads(show.stdout)
    image.unlink()
    stats = doc["stats"]
    rep.freezing_ms = stats["freezing_ms"]
    rep.frozen_ms = stats["frozen_ms"]
    rep.capture_ms = stats["capture_ms"]
    series.tasks, series.fds, series.files = stats["tasks"], stats["fds"], stats["files"]
    series.freezer = doc.get("freezer", "?")


def measure_lsof(runner: Runner, lsof: str, pids: list[int], rep: Rep) -> None:
    ex = runner.run([lsof, "-n", "-P", "-p", ",".join(map(str, pids))])
    _check("lsof", ex)
    rep.lsof_wall_ms = ex.wall_ms
    rep.lsof_rss_kib = ex.maxrss_kib


def measure_lsfd(runner: Runner, lsfd: str, pids: list[int], rep: Rep) -> None:
    ex = runner.run([lsfd, "-p", " ".join(map(str, pids))])
    _check("lsfd", ex)
    rep.lsfd_wall_ms = ex.wall_ms
    rep.lsfd_rss_kib = ex.maxrss_kib


def measure_floor(runner: Runner, floor: Path, pids: list[int], rep: Rep) -> None:
    ex = runner.run([str(floor), *map(str, pids)], keep_stdout=True)
    _check("floor_scan", ex)
    rep.floor_wall_ms = ex.wall_ms
    rep.floor_rss_kib = ex.maxrss_kib
    rep.floor_fds = int(ex.stdout.split()[0])


def measure_startup(runner: Runner, rep: Rep) -> None:
    ex = runner.run([*ASYCKPT, "--version"])
    _check("asyckpt --version", ex)
    rep.startup_wall_ms = ex.wall_ms


def measure_python(runner: Runner, rep: Rep) -> None:
    # The interpreter alone, as this environment starts it (site-packages' .pth files
    # included): what every Python command pays before its first import.
    ex = runner.run([sys.executable, "-c", "pass"])
    _check("python -c pass", ex)
    rep.python_wall_ms = ex.wall_ms


def bench_tree(
    args: argparse.Namespace, runner: Runner, floor: Path, tmp: Path, workload: Workload
) -> Series:
    """Warm-up rounds, then ``args.repeat`` measured rounds, each tool once per round."""
    series = Series(workload)
    w = workload
    with spawned_tree(w.children, w.fds, tmp, w.depth, w.maps) as (root, pids):
        image = tmp / f"tree-{root}.ackpt"
        steps = {
            "asyckpt": lambda rep: measure_asyckpt(runner, root, image, rep, series),
            "lsof": lambda rep: measure_lsof(runner, args.lsof, pids, rep),
            "lsfd": lambda rep: measure_lsfd(runner, args.lsfd, pids, rep),
            "floor": lambda rep: measure_floor(runner, floor, pids, rep),
            "startup": lambda rep: measure_startup(runner, rep),
            "python": lambda rep: measure_python(runner, rep),
        }
        tools = [t for t in TOOLS if t != "lsfd" or args.lsfd]
        for i in range(args.warmup + args.repeat):
            rep = Rep()
            # Rotate the order so no tool always runs right after another's caches.
            for name in tools[i % len(tools) :] + tools[: i % len(tools)]:
                steps[name](rep)
            if i >= args.warmup:
                series.reps.append(rep)
            progress(
                f"  {w.name}, round {i + 1}/{args.warmup + args.repeat}"
                f"{' (warm-up)' if i < args.warmup else ''}: asyckpt "
                f"{rep.asyckpt_wall_ms:.0f} ms (frozen {rep.frozen_ms:.0f}), lsof "
                f"{rep.lsof_wall_ms:.0f} ms, lsfd {rep.lsfd_wall_ms:.0f} ms, floor "
                f"{rep.floor_wall_ms:.0f} ms"
            )
        if any(r.floor_fds != series.fds for r in series.reps):
            warn(
                f"floor_scan saw {sorted({r.floor_fds for r in series.reps})} fds, "
                f"asyckpt {series.fds}"
            )
    return series


# --------------------------------------------------------------------------- reporting


def warn(msg: str) -> None:
    print(f"bench: warning: {msg}", file=sys.stderr, flush=True)


def progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def ms(v: float) -> str:
    return f"{v:.2f}" if v < 10 else f"{v:.1f}" if v < 100 else f"{v:,.0f}"


def mib(kib: float) -> str:
    return f"{kib / 1024:.1f}"


def spread(s: Series, name: str) -> str:
    vals = s.values(name)
    return f"{ms(min(vals))}–{ms(max(vals))}"


def _lsfd_version(lsfd_bin: str | None) -> str:
    if not lsfd_bin:
        return "not installed"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run([lsfd_bin, "--version"], capture_output=True, text=True, check=False)
        return out.stdout.split()[-1] if out.stdout.split() else "?"
    return "?"


def machine_line(freezer: str, lsof_bin: str, lsfd_bin: str | None) -> str:
    cpus = len(os.sched_getaffinity(0))
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = " ".join(line.split(":", 1)[1].split())
                break
    mem = "?"
    with contextlib.suppress(OSError, ValueError, IndexError):
        kib = int(Path("/proc/meminfo").read_text().split("\n", 1)[0].split()[1])
        mem = f"{kib / 1024**2:.0f} GiB"
    lsof = "?"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run([lsof_bin, "-v"], capture_output=True, text=True, check=False)
        for line in (out.stdout + out.stderr).splitlines():
            if line.strip().startswith("revision:"):
                lsof = line.split(":", 1)[1].strip()
                break
    return (
        f"nproc {cpus} ({model}), {mem} RAM, Linux {platform.release()} "
        f"{platform.machine()}, Python {platform.python_version()}, "
        f"asyckpt {asyckpt.__version__} (freezer {freezer}), lsof {lsof}, "
        f"lsfd {_lsfd_version(lsfd_bin)}"
    )


def _secs(v_ms: float) -> str:
    return f"{v_ms / 1000:.3f}"


def _ratio(s: Series, num: str, den: str, digits: int = 2) -> str:
    if not all(getattr(r, den) for r in s.reps):
        return "—"
    return f"{s.ratio(num, den):.{digits}f}×"


def workloads_table(series: list[Series], lsfd: bool) -> str:
    """One row per workload: every tool's median wall time, asyckpt's own stats."""
    out = [
        "| workload | tasks / fds | asyckpt end to end s | lsof -n -P -p s "
        + ("| lsfd -p s " if lsfd else "")
        + "| floor s | freezing ms | frozen ms | capture ms | asyckpt peak RSS MiB |",
        "|---|---|---:|---:|" + ("---:|" if lsfd else "") + "---:|---:|---:|---:|---:|",
    ]
    for s in series:
        w = s.workload
        out.append(
            f"| {w.name} `{w.spec()}` | {s.tasks:,} / {s.fds:,} "
            f"| {_secs(s.median('asyckpt_wall_ms'))} ({spread_s(s, 'asyckpt_wall_ms')}) "
            f"| {_secs(s.median('lsof_wall_ms'))} "
            + (f"| {_secs(s.median('lsfd_wall_ms'))} " if lsfd else "")
            + f"| {_secs(s.median('floor_wall_ms'))} | {ms(s.median('freezing_ms'))} "
            f"| {ms(s.median('frozen_ms'))} ({spread(s, 'frozen_ms')}) "
            f"| {ms(s.median('capture_ms'))} | {mib(s.median('asyckpt_rss_kib'))} |"
        )
    return "\n".join(out)


def spread_s(s: Series, name: str) -> str:
    vals = s.values(name)
    return f"{_secs(min(vals))}–{_secs(max(vals))}"


def ratios_table(series: list[Series], lsfd: bool) -> str:
    """The issue's goals as ratios: medians of per-round ratios (each pair ran seconds
    apart, in the same round)."""
    out = [
        "| workload | frozen / floor | capture / floor | end to end / lsof "
        + ("| end to end / lsfd " if lsfd else "")
        + "| end to end − `--version` s | `--version` s | `python -c pass` s |",
        "|---|---:|---:|---:|" + ("---:|" if lsfd else "") + "---:|---:|---:|",
    ]
    for s in series:
        own = statistics.median(r.asyckpt_wall_ms - r.startup_wall_ms for r in s.reps)
        out.append(
            f"| {s.workload.name} | {_ratio(s, 'frozen_ms', 'floor_wall_ms')} "
            f"| {_ratio(s, 'capture_ms', 'floor_wall_ms')} "
            f"| {_ratio(s, 'asyckpt_wall_ms', 'lsof_wall_ms')} "
            + (f"| {_ratio(s, 'asyckpt_wall_ms', 'lsfd_wall_ms')} " if lsfd else "")
            + f"| {_secs(own)} | {_secs(s.median('startup_wall_ms'))} "
            f"| {_secs(s.median('python_wall_ms'))} |"
        )
    return "\n".join(out)


# --------------------------------------------------------------------------- cgroups


def _asyckpt_cgroups() -> set[str]:
    """asyckpt-* cgroups at the top of every freezer hierarchy (v1 freezer, cgroup2)."""
    mounts = {"/sys/fs/cgroup/freezer", "/sys/fs/cgroup/unified"}
    mounts.update(
        mount
        for fstype, opts, mount in _cgroup_mounts()
        if fstype == "cgroup2" or "freezer" in opts
    )
    return {path for mount in mounts for path in glob.glob(os.path.join(mount, "asyckpt-*"))}


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    every = {**WORKLOADS, **MAPPING_WORKLOADS}
    listing = "; ".join(f"{w.name} `{w.spec()}`: {w.what}" for w in every.values())
    p = argparse.ArgumentParser(
        description="Benchmark `asyckpt tree` against `lsof`, `lsfd` and a C floor scanner "
        "(readlink + stat + fdinfo per fd) on the same process trees.  Prints Markdown.",
        epilog=f"Workloads (spawn_tree CHILDREN FDS [DEPTH]): {listing}.  Run as root "
        "(asyckpt needs the cgroup freezer).  The default run (S0, S1, W1) takes about a "
        "minute on 2 cores, --all about three.",
    )
    p.add_argument(
        "--workload",
        "-w",
        action="append",
        choices=list(every),
        metavar="NAME",
        help=f"measure this workload (repeatable; one of {', '.join(every)}; "
        f"default: {', '.join(DEFAULT_WORKLOADS)})",
    )
    p.add_argument("--all", action="store_true", help="measure every W and S workload")
    p.add_argument(
        "--maps",
        action="store_true",
        help="also measure M0 and M1: the frozen window without and with 600 mapped files per task",
    )
    p.add_argument(
        "--tree",
        nargs="+",
        type=int,
        metavar="N",
        help="also measure spawn_tree CHILDREN FDS [DEPTH] (a workload named 'custom')",
    )
    p.add_argument(
        "--repeat", type=int, default=5, metavar="R", help="measured rounds (default: 5)"
    )
    p.add_argument(
        "--warmup",
        type=int,
        default=1,
        metavar="N",
        help="unmeasured rounds first, per tree (default: 1)",
    )
    p.add_argument(
        "--lsof",
        default=shutil.which("lsof") or "/usr/bin/lsof",
        help="lsof binary (default: %(default)s)",
    )
    p.add_argument(
        "--lsfd",
        default=shutil.which("lsfd") or "",
        help="lsfd binary, '' for none (default: %(default)s, from PATH)",
    )
    p.add_argument(
        "--compile-each-run",
        action="store_true",
        help="run asyckpt in this environment as it is, even if it makes Python compile "
        "asyckpt's modules on every start (an editable install with "
        "PYTHONDONTWRITEBYTECODE=1); by default they are compiled once, beforehand, into "
        "a bytecode cache of the run's own, as an installed package's are",
    )
    p.add_argument(
        "--json",
        type=Path,
        metavar="FILE",
        help="also write every measurement to FILE (bench/results/ is git-ignored)",
    )
    args = p.parse_args(argv)
    if args.repeat < 1 or args.warmup < 0:
        p.error("--repeat must be at least 1 and --warmup at least 0")
    names = list(WORKLOADS) if args.all else args.workload or []
    if not names and not args.tree and not args.maps:
        names = list(DEFAULT_WORKLOADS)
    if args.maps:
        names += list(MAPPING_WORKLOADS)
    args.workloads = [every[n] for n in dict.fromkeys(names)]
    if args.tree:
        if len(args.tree) not in (2, 3) or min(args.tree) < 0:
            p.error("--tree takes CHILDREN FDS [DEPTH], none negative")
        children, fds, depth = [*args.tree, 1][:3]
        args.workloads.append(Workload("custom", children, fds, depth, "--tree"))
    return args


def bytecode_env(tmp: Path) -> dict[str, str]:
    """The environment of an installed asyckpt: its modules' bytecode compiled once (as
    ``pip install`` does), not on every run.

    An editable install under PYTHONDONTWRITEBYTECODE=1 (as in some CI and container
    setups) recompiles every module of asyckpt and its plugins at each start, which is
    no cost a user's install pays.  The commands get a bytecode cache of their own
    (PYTHONPYCACHEPREFIX in ``tmp``), filled here before anything is measured; the
    source tree is left untouched.
    """
    from importlib.metadata import entry_points
    from importlib.util import find_spec

    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(tmp / "pycache")
    dirs = {Path(asyckpt.__file__).parent}
    for ep in entry_points(group="asyckpt.fd_types"):
        spec = find_spec(ep.module.split(".")[0])
        if spec is not None and spec.submodule_search_locations:
            dirs.update(Path(p) for p in spec.submodule_search_locations)
    cc = subprocess.run(
        [sys.executable, "-m", "compileall", "-q", *map(str, sorted(dirs))],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if cc.returncode != 0:
        raise BenchError(f"compileall failed:\n{cc.stdout}{cc.stderr}")
    return env


def run(args: argparse.Namespace, tmp: Path) -> None:
    floor = compile_c(FLOOR_SOURCE, tmp / "floor_scan")
    runner = Runner(tmp, None if args.compile_each_run else bytecode_env(tmp))
    if not args.lsfd:
        warn("lsfd (util-linux) not found: its column is left out")

    series = []
    for w in args.workloads:
        progress(f"{w.name}: spawn_tree {w.spec()}")
        series.append(bench_tree(args, runner, floor, tmp, w))

    load_after = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    bytecode = "compiled on every run" if args.compile_each_run else "compiled once, beforehand"
    machine = machine_line(series[0].freezer, args.lsof, args.lsfd or None)
    print(
        f"Machine: {machine}; load average before the run {args.load_before}, after "
        f"{load_after}; asyckpt's bytecode {bytecode}; {args.repeat} rounds after "
        f"{args.warmup} warm-up per workload, tools interleaved; medians (min–max)."
    )
    print()
    print(workloads_table(series, bool(args.lsfd)))
    print()
    print(ratios_table(series, bool(args.lsfd)))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        doc = {
            "machine": machine,
            "load_before": args.load_before,
            "load_after": load_after,
            "argv": sys.argv,
            "workloads": [asdict(s) for s in series],
        }
        args.json.write_text(json.dumps(doc, indent=1) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        warn("not root: asyckpt will probably fail to create its freezer cgroup")
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_interrupt)
    if not _become_subreaper():
        warn("could not become a child subreaper; killed tasks are left to init to reap")
    load = os.getloadavg()
    args.load_before = ", ".join(f"{x:.2f}" for x in load)
    if load[0] > 0.5 * len(os.sched_getaffinity(0)):
        warn(f"load average {load[0]:.2f}: something else is running; expect noisy numbers")
    cgroups_before = _asyckpt_cgroups()
    status = 0
    try:
        with tempfile.TemporaryDirectory(prefix="asyckpt-bench-run-") as tmp:
            run(args, Path(tmp))
    except BenchError as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        status = 1
    except KeyboardInterrupt:
        print("bench: interrupted; the tree was killed", file=sys.stderr)
        status = 130
    finally:
        left = _asyckpt_cgroups()
        for path in sorted(left):
            note = " (it existed before this run)" if path in cgroups_before else ""
            warn(f"asyckpt cgroup left behind: {path}{note}")
    return status


if __name__ == "__main__":
    sys.exit(main())
