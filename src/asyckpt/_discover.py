"""Discover: which tasks make up the tree, whether it may be frozen, and how its fd
tables are shared."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import NamedTuple

from ._errors import AccessDenied, InvalidTarget, NoSuchProcess, translate_oserror
from ._kernel import KCMP_FILES, kcmp
from ._procparse import TaskStat, parse_tgid
from ._procread import TaskMeta, TaskRead, read_stat, read_task
from ._scope import Protected

__all__ = ["TaskPlan", "check_target", "own_lineage", "plan_tables", "survey_tree", "walk_tree"]


def _ancestors(pid: int) -> list[int]:
    chain = []
    while pid > 1:
        pid = read_stat(pid).ppid
        chain.append(pid)
    return chain


def own_lineage(guardian: int | None) -> list[Protected]:
    """asyckpt itself, its guardian and every ancestor of either: what no freeze may
    hold.  (The guardian's ancestors are asyckpt's, or init once asyckpt is gone.)"""
    me = os.getpid()
    found = [Protected(me, f"asyckpt itself (pid {me})")]
    if guardian is not None:
        found.append(Protected(guardian, f"asyckpt's guardian (pid {guardian})"))
    pid = me
    while pid != 1:  # init too: freezing it would stop the whole system
        try:
            pid = read_stat(pid).ppid
            if pid <= 0:
                break  # the top of a pid namespace
            comm = read_stat(pid).comm
        except NoSuchProcess:
            break  # it exited meanwhile: what is left of the chain is init's
        found.append(Protected(pid, f"pid {pid} ({comm}), an ancestor of asyckpt"))
    return found


def _thread_group(pid: int) -> int:
    """The process ``pid`` belongs to: itself, unless ``pid`` is a thread's id."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            return parse_tgid(f.read())
    except FileNotFoundError:
        raise NoSuchProcess("no such process", pid=pid) from None
    except OSError as exc:
        raise translate_oserror(exc, pid=pid, what=f"/proc/{pid}/status") from exc


def check_target(pid: int) -> TaskStat:
    """Refuse, with a clear reason, a pid that must not or cannot be frozen."""
    if pid <= 0:
        raise NoSuchProcess("not a valid pid", pid=pid)
    stat = read_stat(pid)
    if stat.is_kernel_thread or pid == 2:
        raise InvalidTarget(f"{stat.comm} is a kernel thread; it has no fds to capture", pid=pid)
    # /proc/TID answers for a thread too, as if it were a process of its own.
    tgid = _thread_group(pid)
    if tgid != pid:
        raise InvalidTarget(f"{pid} is a thread of {tgid}; capture {tgid}", pid=pid)
    if pid == 1:
        raise InvalidTarget("refusing to freeze init (pid 1) and with it the whole system", pid=pid)
    me = os.getpid()
    if pid == me or pid in _ancestors(me):
        raise InvalidTarget("the tree contains asyckpt itself; freezing it would deadlock", pid=pid)
    if stat.state == "Z":
        raise InvalidTarget("the process is a zombie; it holds no fds", pid=pid)
    if os.geteuid() != 0 and os.stat(f"/proc/{pid}").st_uid != os.geteuid():
        raise AccessDenied("the process belongs to another user; run as root", pid=pid)
    return stat


def survey_tree(root: int) -> list[TaskRead]:
    """The tree rooted at ``root`` in pre-order, children by ascending pid, with what
    :func:`plan_tables` needs of each task."""
    out: list[TaskRead] = []
    stack = [root]
    while stack:
        pid = stack.pop()
        try:
            task = read_task(pid)
        except NoSuchProcess:
            if pid == root:
                raise
            continue  # exited between its parent's listing and ours
        out.append(task)
        stack.extend(reversed(task.children))
    return out


def walk_tree(root: int) -> list[TaskStat]:
    """The tree rooted at ``root`` in pre-order, children by ascending pid."""
    return [task.stat for task in survey_tree(root)]


class TaskPlan(NamedTuple):
    stat: TaskStat
    meta: TaskMeta
    threads: tuple[tuple[int, int | None], ...]
    """(tid, fd table id) of every thread, the leader first."""
    scan: tuple[tuple[int, int], ...]
    """(tid, fd table id) of the tables first seen in this task: read them here."""


_ZOMBIE_META = TaskMeta(uid=0, gid=0, root="/", mnt_ns=0)


def plan_tables(tasks: Sequence[TaskRead]) -> list[TaskPlan]:
    """Group every thread of every task by fd table (kcmp KCMP_FILES), ids in pre-order,
    and read each task's metadata (owner, root, mount namespace).

    Threads nearly always share their leader's table, so each is compared with its leader
    first; the rest are placed in one kcmp-ordered list and found by binary search.
    """
    from ._dedup import KcmpIndex

    index: KcmpIndex[int, int] = KcmpIndex(lambda a, b: kcmp(a, b, KCMP_FILES))
    next_id = 1

    def new_id() -> int:
        nonlocal next_id
        next_id += 1
        return next_id - 1

    plans = []
    for stat, tids, _, meta in tasks:
        if stat.state == "Z":
            plans.append(TaskPlan(stat, _ZOMBIE_META, ((stat.pid, None),), ()))
            continue
        threads: list[tuple[int, int | None]] = []
        scan: list[tuple[int, int]] = []
        leader_table: int | None = None
        for tid in [stat.pid] + [t for t in tids if t != stat.pid]:
            try:
                if leader_table is not None and kcmp(stat.pid, tid, KCMP_FILES) == 0:
                    threads.append((tid, leader_table))
                    continue
                table, new = index.lookup(None, tid, new_id)
            except NoSuchProcess:
                continue  # the thread exited (only possible when not frozen)
            if new:
                scan.append((tid, table))
            if tid == stat.pid:
                leader_table = table
            threads.append((tid, table))
        if not threads or threads[0][0] != stat.pid:
            continue  # its leader exited while we looked (only possible when not frozen)
        plans.append(TaskPlan(stat, meta, tuple(threads), tuple(scan)))
    return plans
