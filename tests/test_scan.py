"""The fd table readers and kcmp against real processes.

The C reader (asyckpt._fdscan) and the pure-Python fallback must return the same thing
for the same table; the C one is what a normal install runs.
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path
from typing import Any

import pytest

from asyckpt import NoSuchProcess
from asyckpt._kernel import KCMP_FILE, kcmp, kcmp_files
from asyckpt._procread import _read_table_py, read_fds
from asyckpt._rows import RawFd

from .conftest import Tree


def test_c_reader_is_built() -> None:
    # pip install builds it wherever a C compiler exists, as on every machine we test on;
    # a silent fallback here would leave the fast path untested.
    import asyckpt._fdscan  # noqa: F401


def test_c_and_python_readers_agree(zoo: Tree) -> None:
    from asyckpt._fdscan import read_table

    for pid in zoo.pids():
        base = f"/proc/{pid}/task/{pid}"
        c_rows = [RawFd(*row) for row in read_table(f"{base}/fd", f"{base}/fdinfo")]
        py_rows = [RawFd(*row) for row in _read_table_py(f"{base}/fd", f"{base}/fdinfo")]
        assert c_rows == py_rows
        assert [r.fd for r in c_rows] == sorted(int(n) for n in os.listdir(f"/proc/{pid}/fd"))


def test_inherited_rows_c_and_python_agree(zoo: Tree) -> None:
    """With a parent, an fd kcmp finds shared with the parent's fd of the same number is
    the short row (fd, flags); both readers agree on which, and on everything else."""
    from asyckpt._fdscan import read_tables

    info = zoo.info
    fork = info["fork"]
    base = f"/proc/{fork}/task/{fork}"
    c_rows = read_tables([(f"{base}/fd", f"{base}/fdinfo")], [(zoo.pid, fork)])[0]
    py_rows = _read_table_py(f"{base}/fd", f"{base}/fdinfo", zoo.pid, fork)
    assert c_rows == py_rows
    full = {row[0]: RawFd(*row) for row in read_fds(fork, fork)}
    assert [row[0] for row in c_rows] == sorted(full)
    short = {row[0]: row[1] for row in c_rows if len(row) == 2}
    # Inherited: the shared offset, the dup, the fd above 1024; its own file is not.
    assert {info["rw"], info["dup"], info["high"]} <= short.keys()
    assert info["child_own"] not in short
    # The flags are the fd's own, close-on-exec included (dup2 made "high" cloexec).
    for fd, flags in short.items():
        assert flags == full[fd].flags
    assert short[info["high"]] & os.O_CLOEXEC and not short[info["rw"]] & os.O_CLOEXEC
    # Every other fd is one the parent does not share at that number.
    parent_fds = {int(n) for n in os.listdir(f"/proc/{zoo.pid}/fd")}
    for fd in (full.keys() - short.keys()) & parent_fds:
        assert kcmp(zoo.pid, fork, KCMP_FILE, fd, fd) != 0


def test_rows_have_names_and_one_type_whichever_reader(zoo: Tree) -> None:
    """Rows are read by name: both readers make the C extension's struct sequences,
    whose fields are _rows' NamedTuples' (the types without the C extension)."""
    from asyckpt import _fdscan
    from asyckpt._rows import InheritedFd

    assert _fdscan.FdRow.n_fields == len(RawFd._fields)  # no hidden field
    assert [f for f in RawFd._fields if hasattr(_fdscan.FdRow, f)] == list(RawFd._fields)
    assert _fdscan.InheritedFd.n_fields == len(InheritedFd._fields) == 2
    assert all(hasattr(_fdscan.InheritedFd, f) for f in InheritedFd._fields)
    fork = zoo.info["fork"]
    base = f"/proc/{fork}/task/{fork}"
    c_rows = _fdscan.read_tables([(f"{base}/fd", f"{base}/fdinfo")], [(zoo.pid, fork)])[0]
    py_rows = _read_table_py(f"{base}/fd", f"{base}/fdinfo", zoo.pid, fork)
    assert isinstance(c_rows, list)
    for c_row, py_row in zip(c_rows, py_rows, strict=True):
        assert type(c_row) is type(py_row)
        expected = _fdscan.InheritedFd if len(c_row) == 2 else _fdscan.FdRow
        assert type(c_row) is expected
    full = next(r for r in c_rows if len(r) == 16)
    assert isinstance(full, _fdscan.FdRow)
    assert (full.fd, full.st_ino, full.fdinfo_rest) == (full[0], full[4], full[15])
    short = next(r for r in c_rows if len(r) == 2)
    assert isinstance(short, _fdscan.InheritedFd)
    assert (short.fd, short.flags) == tuple(short)


def test_reader_sees_what_the_task_did(zoo: Tree) -> None:
    rows = {r.fd: r for r in map(RawFd._make, read_fds(zoo.pid, zoo.pid))}
    rw = rows[zoo.info["rw"]]
    st = os.stat(f"/proc/{zoo.pid}/fd/{zoo.info['rw']}")
    assert (rw.st_ino, rw.st_dev, rw.st_size) == (st.st_ino, st.st_dev, st.st_size)
    assert rw.pos == 50
    assert rw.flags & os.O_ACCMODE == os.O_RDWR
    assert rw.fdinfo_rest == b""
    assert rows[zoo.info["deleted"]].link.endswith("/gone (deleted)")
    assert zoo.info["high"] in rows


def test_reader_of_a_vanished_task(zoo: Tree) -> None:
    with pytest.raises(NoSuchProcess):
        read_fds(4194999, 4194999)


def test_kcmp_files_orders_and_matches(zoo: Tree) -> None:
    info = zoo.info
    same = kcmp_files((zoo.pid, info["rw"]), (zoo.pid, info["dup"]))
    inherited = kcmp_files((info["fork"], info["rw"]), (zoo.pid, info["rw"]))
    other = kcmp_files((zoo.pid, info["rw"]), (zoo.pid, info["again"]))
    reverse = kcmp_files((zoo.pid, info["again"]), (zoo.pid, info["rw"]))
    assert (same, inherited) == (0, 0)
    assert {other, reverse} == {1, 2}
    assert other == kcmp(zoo.pid, zoo.pid, KCMP_FILE, info["rw"], info["again"])


def test_kcmp_of_a_closed_fd_is_an_asyckpt_error(zoo: Tree) -> None:
    from asyckpt import AsyckptError

    with pytest.raises(AsyckptError) as exc_info:
        kcmp_files((zoo.pid, 60000), (zoo.pid, 0))
    assert exc_info.value.pid == zoo.pid


def test_python_reader_on_a_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        _read_table_py(str(tmp_path / "fd"), str(tmp_path / "fdinfo"))


_EPOLL_HOLDER = """\
import os, select
ep = select.epoll()
r, w = os.pipe()
ep.register(r)
ep.register(w, select.EPOLLOUT)
keep = os.dup(r)
os.close(r)  # the watch stays: `keep` holds the description
again = os.eventfd(0)  # numbered as `r` was (the lowest free): a tfd that lies
fd = ep.fileno()
"""


def test_kcmp_epoll_tfd_finds_the_watch_not_the_fd() -> None:
    from asyckpt._kernel import kcmp_epoll_tfd
    from asyckpt.testing import hold_fd

    with hold_fd(code=_EPOLL_HOLDER) as holder:
        pid, ep = holder.pid, holder.fd
        info = Path(f"/proc/{pid}/fdinfo/{ep}").read_text().splitlines()
        r_tfd, w_tfd = sorted(int(line.split()[1]) for line in info if line.startswith("tfd:"))
        fds = {int(n): os.readlink(f"/proc/{pid}/fd/{n}") for n in os.listdir(f"/proc/{pid}/fd")}
        # (fd 1 is hold_fd's own pipe to this test.)
        assert fds[r_tfd] == "anon_inode:[eventfd]"  # the number now names another file
        (keep,) = [n for n, ln in fds.items() if ln.startswith("pipe:") and n not in (1, w_tfd)]
        # The watch is found by the number it was added with, not in the fd table.
        assert kcmp_epoll_tfd(pid, keep, pid, ep, r_tfd, 0) == 0
        assert kcmp_epoll_tfd(pid, w_tfd, pid, ep, w_tfd, 0) == 0
        assert kcmp_epoll_tfd(pid, r_tfd, pid, ep, r_tfd, 0) in (1, 2)
        assert kcmp_epoll_tfd(pid, keep, pid, ep, w_tfd, 0) in (1, 2)
        for tfd, toff in ((r_tfd, 1), (999, 0)):  # no such watch
            with pytest.raises(FileNotFoundError):
                kcmp_epoll_tfd(pid, keep, pid, ep, tfd, toff)
        with pytest.raises(OSError, match="Bad file descriptor") as exc_info:  # not open
            kcmp_epoll_tfd(pid, 60000, pid, ep, r_tfd, 0)
        assert exc_info.value.errno == errno.EBADF


def test_pidfd_getfd_c_and_ctypes_agree(zoo: Tree) -> None:
    from asyckpt._fdscan import pidfd_getfd as c_getfd
    from asyckpt._kernel import _pidfd_getfd as ctypes_getfd

    pidfd = os.pidfd_open(zoo.pid)
    try:
        for getfd in (c_getfd, ctypes_getfd):
            fd = getfd(pidfd, zoo.info["rw"])
            try:
                # The same description: kcmp says so, and it sees the offset the tree set.
                assert kcmp(os.getpid(), zoo.pid, KCMP_FILE, fd, zoo.info["rw"]) == 0
                assert os.lseek(fd, 0, os.SEEK_CUR) == 50
                assert not os.get_inheritable(fd)
            finally:
                os.close(fd)
            with pytest.raises(OSError, match="Bad file descriptor") as exc_info:
                getfd(pidfd, 60000)
            assert exc_info.value.errno == 9  # EBADF
    finally:
        os.close(pidfd)


def _resolve_zoo(zoo: Tree, dedup_rows: Any, *, expect: bool = False) -> tuple[list[Any], Any]:
    """Resolve every task of the (idle) zoo as a frozen capture would, with or without
    the C dedup loop (and, with ``expect``, told the tree first, as a capture tells it);
    what came out, and the builder."""
    import asyckpt
    from asyckpt._build import RecordBuilder
    from asyckpt._capture import _read_mountinfo
    from asyckpt._discover import plan_tables, survey_tree
    from asyckpt._scanning import scan_chunk

    plans = plan_tables(survey_tree(zoo.pid))
    inherit = {p.stat.pid for p in plans if p.threads[0][1] is not None}
    scans = scan_chunk(list(enumerate(plans)), inherit)
    builder = RecordBuilder(
        asyckpt.load_handlers(autoload=False),
        compare_files=kcmp_files,
        read_mountinfo=_read_mountinfo,
        dedup_rows=dedup_rows,
    )
    out = []
    if expect:
        builder.expect((p.stat.pid, p.stat.ppid) for p in plans)
    with contextlib.closing(builder):
        parts = [builder.resolve(scan) for scan in scans]
    for part in parts:
        assert part is not None
        for tid, table, entries in part.tables:
            out.append(
                (
                    tid,
                    table,
                    [
                        (
                            fd,
                            cloexec,
                            file_id,
                            None if new is None else (new.raw, new.kind, new.handler),
                        )
                        for fd, cloexec, file_id, new in entries
                    ],
                )
            )
    return out, builder


def test_dedup_loop_c_and_python_agree(zoo: Tree) -> None:
    from asyckpt._kernel import dedup_rows

    assert dedup_rows is not None
    c_out, c_builder = _resolve_zoo(zoo, dedup_rows)
    py_out, py_builder = _resolve_zoo(zoo, None)
    assert c_out == py_out
    for attr in ("file_count", "fd_count", "hint_hits"):
        assert getattr(c_builder, attr) == getattr(py_builder, attr), attr
    assert c_builder._files.compares == py_builder._files.compares
    assert c_builder._files.buckets == py_builder._files.buckets
    assert c_builder._table_fds == py_builder._table_fds
    assert c_builder._more_locks == py_builder._more_locks
    # The zoo shares descriptions by fork (hints) and by dup within one table (found in
    # the index with kcmp): both paths were taken.
    assert c_builder.hint_hits > 0
    assert c_builder._files.compares > 0


@pytest.mark.parametrize("accelerated", [True, False], ids=["C", "Python"])
def test_only_parents_tables_are_kept_as_hints(zoo: Tree, accelerated: bool) -> None:
    """Told the tree, the resolver keeps the fd map of a parent's table only (what its
    children's fds are checked against first), and drops its index once told every
    task is resolved: the same resolution, without holding a map per fd of the tree."""
    from asyckpt._kernel import dedup_rows

    kept_out, kept = _resolve_zoo(zoo, dedup_rows if accelerated else None)
    lean_out, lean = _resolve_zoo(zoo, dedup_rows if accelerated else None, expect=True)
    assert lean_out == kept_out
    assert (lean.hint_hits, lean.file_count) == (kept.hint_hits, kept.file_count)
    assert lean.hint_hits > 0  # the children were resolved against their parent's map
    # The root's tables (its own thread's, and one a thread unshared), not its children's.
    root_tables = {table for tid, table, _ in lean_out[:2]}
    assert lean_out[0][0] == zoo.pid and len(root_tables) == 2
    assert set(lean._table_fds) == root_tables
    assert len(kept._table_fds) == len(kept_out) > 1
    lean.resolved()
    assert lean._table_fds == {} and lean._files.buckets == {}


def test_dedup_loop_kcmp_failure_names_the_other_side(zoo: Tree) -> None:
    from asyckpt._fdscan import dedup_rows

    row = next(r for r in read_fds(zoo.pid, zoo.pid) if r[0] == zoo.info["rw"])
    key = (row[3], row[4], row[12], row[13] & ~os.O_CLOEXEC)
    gone = (4194999, 3)  # no such pid: kcmp fails with ESRCH
    buckets: dict[Any, list[Any]] = {key: [(gone, 7)]}
    entries, new, count, hits, compares, error = dedup_rows([row], zoo.pid, {}, {}, buckets, 10)
    assert (entries, new, error) == (None, None, (3, *gone))  # ESRCH
    assert (count, hits, compares) == (10, 0, 1)
    # Without a bucket it is a new description, numbered after file_count.
    entries, new, count, hits, compares, error = dedup_rows([row], zoo.pid, {}, {}, {}, 10)
    assert entries == [(row[0], False, 11, None)]
    assert (new, count, error) == ([0], 11, None)


def test_dedup_loop_makes_one_ref_per_description(zoo: Tree) -> None:
    # A description's (tid, fd) is held by the index and the fd map to the capture's
    # end: one tuple for both, one tid object for all of a call's refs.
    from asyckpt._fdscan import dedup_rows

    rows = read_fds(zoo.pid, zoo.pid)
    seen: dict[Any, Any] = {}
    buckets: dict[Any, list[Any]] = {}
    _, new, *_ = dedup_rows(rows, zoo.pid, {}, seen, buckets, 0)
    assert len(new) > 2
    # A bucket of one is its (ref, file id) itself, not a list.
    entries = [e for b in buckets.values() for e in (b if type(b) is list else [b])]
    refs = [ref for ref, _ in entries]
    assert len(refs) == len(new)
    for ref in refs:
        assert seen[ref[1]][1] is ref
        assert ref[0] is refs[0][0] == zoo.pid


def test_a_child_read_against_a_parent_that_vanished_is_an_error() -> None:
    # With two readers a child's chunk can be read (its inherited fds as short rows)
    # before its parent's, and the parent killed in between (SIGKILL reaches a frozen
    # task): the child's rows then have nothing to be resolved against.
    import asyckpt
    from asyckpt._build import RecordBuilder
    from asyckpt._discover import TaskPlan
    from asyckpt._parts import ScannedTable, TaskScan
    from asyckpt._procparse import TaskStat
    from asyckpt._procread import TaskMeta

    def plan(pid: int, ppid: int, table: int) -> TaskPlan:
        stat = TaskStat(pid, "t", "S", ppid, 0, 1, 100)
        return TaskPlan(stat, TaskMeta(0, 0, "/", 0), ((pid, table),), ((pid, table),))

    builder = RecordBuilder(
        asyckpt.load_handlers(autoload=False),
        compare_files=kcmp_files,
        read_mountinfo=lambda pid: "",
    )
    with contextlib.closing(builder):
        parent = TaskScan(1, plan(4000001, 4000000, 2), (ScannedTable(4000001, 2, None),))
        assert builder.resolve(parent) is None  # it vanished before its table was read
        child = TaskScan(2, plan(4000002, 4000001, 3), (ScannedTable(4000002, 3, [(0, 0o2)]),))
        with pytest.raises(NoSuchProcess) as exc_info:
            builder.resolve(child)
    assert exc_info.value.pid == 4000001


def test_scanned_and_resolved_tables_have_names(zoo: Tree) -> None:
    """TaskScan.tables and TaskPart.tables are named, table by table, and say the same
    tables: each thread's table, its fds and what they resolved to."""
    import asyckpt
    from asyckpt._build import RecordBuilder
    from asyckpt._capture import _read_mountinfo
    from asyckpt._discover import plan_tables, survey_tree
    from asyckpt._parts import ResolvedTable, ScannedTable
    from asyckpt._scanning import scan_chunk

    plans = plan_tables(survey_tree(zoo.pid))
    scans = scan_chunk(list(enumerate(plans)))
    builder = RecordBuilder(
        asyckpt.load_handlers(autoload=False),
        compare_files=kcmp_files,
        read_mountinfo=_read_mountinfo,
    )
    with contextlib.closing(builder):
        for scan in scans:
            part = builder.resolve(scan)
            assert part is not None
            assert all(type(t) is ScannedTable for t in scan.tables)
            assert all(type(t) is ResolvedTable for t in part.tables)
            for scanned, resolved in zip(scan.tables, part.tables, strict=True):
                assert (resolved.tid, resolved.table) == (scanned.tid, scanned.table)
                assert scanned.fds is not None
                assert [e[0] for e in resolved.entries] == [row.fd for row in scanned.fds]


def test_a_tables_rows_share_their_repeated_ints(tmp_path: Path) -> None:
    # st_mode, st_dev, uid, gid, flags and mnt_id repeat across a table's fds: one int
    # object per value (past 256 each would be an object of its own, held with the row).
    opened = [os.open(tmp_path / f"f{i}", os.O_RDWR | os.O_CREAT, 0o644) for i in range(6)]
    try:
        rows = [r for r in read_fds(os.getpid(), os.getpid()) if r[0] in opened]
        assert len(rows) == 6
        first = rows[0]
        for row in rows[1:]:
            for field in ("st_mode", "st_dev", "st_uid", "st_gid", "flags", "mnt_id"):
                assert getattr(row, field) == getattr(first, field)
                assert getattr(row, field) is getattr(first, field), field
            assert row.st_ino != first.st_ino
    finally:
        for fd in opened:
            os.close(fd)


def test_task_reader_c_and_python_agree(zoo: Tree) -> None:
    """read_task (stat, threads, children, owner, root, mount namespace in one C call)
    and its Python twin, on live tasks (threads, one with its own table), a zombie and
    a task that is gone."""
    from asyckpt import _fdscan
    from asyckpt._procread import _read_task_py, read_task

    pids = [*zoo.pids(), os.getpid()]
    for pid in pids:
        assert _fdscan.read_task(pid) == _read_task_py(pid)
    root = _fdscan.read_task(zoo.pid)
    assert len(root[1]) >= 3 and root[1] == sorted(root[1])  # the leader and two threads
    assert set(root[2]) <= set(pids) and root[2] == sorted(set(root[2]))
    assert root[5] == os.readlink(f"/proc/{zoo.pid}/root")
    assert root[6] == os.stat(f"/proc/{zoo.pid}/ns/mnt").st_ino
    child = os.fork()
    if child == 0:
        os._exit(0)
    try:
        for _ in range(1000):
            if read_task(child).stat.state == "Z":
                break
        raw = _fdscan.read_task(child)
        assert raw == _read_task_py(child)
        assert raw[5] is None and raw[6] == 0  # a zombie has no root nor namespaces
        assert read_task(child).meta.root == "/"
        assert child in _fdscan.read_task(os.getpid())[2]
    finally:
        os.waitpid(child, 0)
    for reader in (_fdscan.read_task, _read_task_py):
        with pytest.raises(FileNotFoundError):
            reader(4194999)
    with pytest.raises(NoSuchProcess):
        read_task(4194999)
    with pytest.raises(ValueError, match="out of range"):
        _fdscan.read_task(0)


def test_kcmp_c_and_ctypes_agree(zoo: Tree) -> None:
    """_kernel.kcmp goes through the C extension when it is built (plan_tables calls it
    for every task of a frozen tree); the ctypes call is the fallback: both give the
    same order and the same errors."""
    from asyckpt import _fdscan, _kernel
    from asyckpt._kernel import KCMP_EPOLL_TFD, KCMP_FILES

    pids = zoo.pids()
    fds = sorted(int(n) for n in os.listdir(f"/proc/{zoo.pid}/fd"))[:6]
    cases = [(a, b, KCMP_FILES, 0, 0) for a in pids for b in pids]
    cases += [(zoo.pid, zoo.pid, KCMP_FILE, x, y) for x in fds for y in fds]
    for case in cases:
        assert _fdscan.kcmp(*case) == _kernel._kcmp_ctypes(*case) == _kernel.kcmp_raw(*case)
    assert {_fdscan.kcmp(*c) for c in cases} == {0, 1, 2}
    errors = []
    for kcmp_call in (_fdscan.kcmp, _kernel._kcmp_ctypes):
        with pytest.raises(OSError, match="Bad file descriptor") as info:
            kcmp_call(zoo.pid, zoo.pid, KCMP_FILE, 0, 1 << 30)
        errors.append(info.value.errno)
    assert errors == [errno.EBADF, errno.EBADF]
    with pytest.raises(ValueError, match="EPOLL_TFD"):
        _fdscan.kcmp(zoo.pid, zoo.pid, KCMP_EPOLL_TFD, 0, 0)
