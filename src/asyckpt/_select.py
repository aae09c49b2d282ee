"""Picking the root of the tree to capture by name or owner (``asyckpt tree --name/--user``).

The choice is made on psutil's cheap, unfrozen view of every process (pid, parent, name,
real uid): one pass over /proc, nothing frozen, nothing opened but /proc's own files.
Among the processes that match, the root is the topmost one: a match whose ancestors
do not match (the master of a server whose workers match too).  More than one such
process is ambiguous and refused, with the candidates listed; so is none.

Never candidates, and never standing in the way of their descendants: init (pid 1),
kernel threads, and asyckpt itself with its ancestors (the shell that runs it) and its
descendants (its guardian).  The selection is pure (:func:`pick_root`, tested on
literal process lists); :func:`process_view` is its only I/O.
"""

from __future__ import annotations

import fnmatch
import os
import pwd
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from ._errors import AmbiguousTarget, NoSuchProcess

__all__ = ["ProcView", "parse_user", "pick_root", "process_view", "select_root"]

KTHREADD = 2
SHOWN_CANDIDATES = 10
"""At most this many candidates are listed in the error; the rest are counted."""


class ProcView(NamedTuple):
    """What the selection knows about one process."""

    pid: int
    ppid: int
    name: str
    uid: int


class Criteria(NamedTuple):
    """``--name`` (a shell pattern, as fnmatch) and ``--user`` (a uid); None: any."""

    pattern: str | None
    uid: int | None

    def matches(self, proc: ProcView) -> bool:
        if self.uid is not None and proc.uid != self.uid:
            return False
        return self.pattern is None or fnmatch.fnmatchcase(proc.name, self.pattern)

    def describe(self) -> str:
        words = []
        if self.pattern is not None:
            words.append(f"--name {self.pattern}")
        if self.uid is not None:
            words.append(f"--user {self.uid}")
        return " ".join(words)


def parse_user(text: str) -> int:
    """``--user``: a user name, else a numeric uid; ValueError if it is neither."""
    try:
        return pwd.getpwnam(text).pw_uid
    except KeyError:
        if text.isascii() and text.isdigit() and int(text) < 1 << 32:
            return int(text)
    raise ValueError(f"no user named {text!r}, and not a uid")


def _excluded(procs: dict[int, ProcView], me: int) -> set[int]:
    """init, kernel threads, ``me``, its ancestors and its descendants."""
    out = {1, KTHREADD, me}
    pid = me
    for _ in range(len(procs)):  # bounded: a parent loop in a racy view cannot hang us
        parent = procs.get(pid)
        if parent is None or parent.ppid in (0, pid):
            break
        pid = parent.ppid
        out.add(pid)
    out.update(p.pid for p in procs.values() if p.ppid == KTHREADD)
    for proc in procs.values():
        if _has_ancestor(proc, procs, {me}):
            out.add(proc.pid)
    return out


def _has_ancestor(proc: ProcView, procs: dict[int, ProcView], among: set[int]) -> bool:
    pid = proc.ppid
    for _ in range(len(procs)):
        if pid in among:
            return True
        parent = procs.get(pid)
        if parent is None or parent.ppid == pid:
            return False
        pid = parent.ppid
    return False


def pick_root(view: Iterable[ProcView], criteria: Criteria, me: int) -> ProcView:
    """The topmost process matching ``criteria`` in ``view``, for asyckpt running as
    ``me``; NoSuchProcess if none does, AmbiguousTarget if several do."""
    procs = {p.pid: p for p in view}
    excluded = _excluded(procs, me)
    matched = {p.pid for p in procs.values() if p.pid not in excluded and criteria.matches(p)}
    roots = sorted(
        (procs[pid] for pid in matched if not _has_ancestor(procs[pid], procs, matched)),
        key=lambda p: p.pid,
    )
    if not roots:
        raise NoSuchProcess(f"no process matches {criteria.describe()}")
    if len(roots) > 1:
        raise AmbiguousTarget(ambiguity(criteria, roots))
    return roots[0]


def ambiguity(criteria: Criteria, roots: Sequence[ProcView]) -> str:
    """How many separate trees match, and which (at most :data:`SHOWN_CANDIDATES`).
    Names are raw, as in every error: the command escapes the line it prints."""
    shown = ", ".join(f"{p.pid} ({p.name}, uid {p.uid})" for p in roots[:SHOWN_CANDIDATES])
    more = len(roots) - SHOWN_CANDIDATES
    tail = f" and {more} more" if more > 0 else ""
    return (
        f"{criteria.describe()} matches {len(roots)} separate process trees: "
        f"{shown}{tail}; give one's pid instead, or a narrower --name/--user"
    )


def process_view() -> list[ProcView]:
    """Every live process now, as psutil sees it: zombies (dead, holding no fds, and
    with no children) and those exiting meanwhile left out."""
    import psutil

    view = []
    for proc in psutil.process_iter(["pid", "ppid", "name", "uids", "status"]):
        info = proc.info
        if None in (info["ppid"], info["name"], info["uids"]):
            continue  # vanished between the listing and the reads, or unreadable
        if info["status"] in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):
            continue
        view.append(ProcView(info["pid"], info["ppid"], info["name"], info["uids"].real))
    return view


def select_root(pattern: str | None, uid: int | None) -> ProcView:
    """The root ``asyckpt tree --name/--user`` captures (see the module's docstring)."""
    return pick_root(process_view(), Criteria(pattern, uid), os.getpid())
