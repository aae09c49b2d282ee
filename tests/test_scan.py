"""The fd table readers and kcmp against real processes.

The C reader (asyckpt._fdscan) and the pure-Python fallback must return the same thing
for the same table; the C one is what a normal install runs.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from asyckpt import NoSuchProcess
from asyckpt._kernel import KCMP_FILE, kcmp, kcmp_files
from asyckpt._procread import RawFd, _read_table_py, read_fds

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
