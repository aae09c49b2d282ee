"""Links: the kcmp search behind a handler's ``link(record, links)`` hook.

While the tree is still frozen, a record may name other descriptions of the tree by
their image file id (an epoll's targets).  :class:`CaptureLinks` finds them: candidates
by (device, inode), then kcmp(2) decides among them, by binary search in kcmp order.
"""

from __future__ import annotations

import errno
import functools
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any, final

from .._errors import AsyckptError, translate_oserror
from .._kernel import KCMP_FILE, kcmp, kcmp_epoll_tfd, kcmp_raw
from .contract import LinkRef
from .session import CaptureSession, Stateful

__all__ = ["CaptureLinks"]


Candidate = tuple[int, int, int]
"""(file id, tid, fd): a description of the tree, and an fd it can be reached through."""


def _kcmp_order(a: Candidate, b: Candidate) -> int:
    """A sort comparison in kcmp's KCMP_FILE order (the kernel's obfuscated pointer
    order, the one KCMP_EPOLL_TFD answers in too)."""
    return (0, -1, 1)[kcmp(a[1], b[1], KCMP_FILE, a[2], b[2])]


def _gone(exc: OSError, c: Candidate) -> int:
    """A candidate whose task or fd is gone (only in an unfrozen capture) is not the
    one; any other failure of kcmp is an error."""
    if exc.errno in (errno.ESRCH, errno.EBADF):
        return -1
    raise translate_oserror(exc, pid=c[1], fd=c[2], what="kcmp") from exc


@final
class CaptureLinks:
    """What a handler's optional ``link(record, links)`` sees: every description of the
    tree, resolved, while the tree is still frozen, so that fd tables are as they were
    read and kcmp(2) compares what the records describe.

    ``file_of`` and ``epoll_target`` name a description by its image file id.  Both find
    candidates by (device, inode) in an index of every resolved description, built on
    first use (a capture whose handlers never ask pays nothing), then let kcmp decide
    among them: inode numbers alone cannot tell two opens of one file apart (nor, for
    eventfds, timerfds, epolls... which share one anonymous inode, two objects).
    """

    def __init__(
        self,
        session: CaptureSession,
        files: Iterable[tuple[int, int, int, int, int]],
        tables: Callable[[int], Mapping[int, int]] | None = None,
    ) -> None:
        self.session = session
        self.pids = frozenset(session.pids)
        """The processes of the tree."""
        self.ref = LinkRef(0, 0, -1)
        """The fd the record being linked was captured through (its first fd)."""
        self._files = files
        self._tables = tables
        self._table_cache: dict[int, Mapping[int, int]] = {}
        self._groups: dict[tuple[int, int], list[Candidate]] | None = None
        self._by_ino: dict[int, list[tuple[int, int]]] = {}
        self._dev_ino: dict[int, tuple[int, int]] = {}
        self._sorted: set[tuple[int, int]] = set()
        self._handler: Stateful | None = None
        self._states: dict[str, Any] = {}

    @property
    def state(self) -> Any:
        """What this handler's ``begin`` returned (as ``HandlerContext.state``)."""
        if self._handler is None:
            raise LookupError("these CaptureLinks are not bound to a handler")
        name = self._handler.name
        if name not in self._states:
            self._states[name] = self.session._state_of(self._handler)
        return self._states[name]

    def _index(self) -> dict[tuple[int, int], list[Candidate]]:
        if self._groups is None:
            groups: dict[tuple[int, int], list[Candidate]] = {}
            for dev, ino, file_id, tid, fd in self._files:
                groups.setdefault((dev, ino), []).append((file_id, tid, fd))
                self._dev_ino[file_id] = (dev, ino)
            for dev, ino in groups:
                self._by_ino.setdefault(ino, []).append((dev, ino))
            self._groups = groups
        return self._groups

    def _candidates(self, dev: int | None, ino: int) -> tuple[tuple[int, int], list[Candidate]]:
        """The group of descriptions on inode ``ino`` of device ``dev``; of every device
        when none is on ``dev`` (a filesystem whose stat shows another device than its
        superblock's, as btrfs subvolumes do: kcmp still decides)."""
        groups = self._index()
        if dev is not None and (dev, ino) in groups:
            return (dev, ino), groups[(dev, ino)]
        keys = self._by_ino.get(ino, [])
        return (-1, ino), [c for key in keys for c in groups[key]]

    def _in_order(self, key: tuple[int, int], group: list[Candidate]) -> bool:
        """Sort a group in kcmp order, once, for binary search; False if it cannot be
        (an unfrozen capture whose task exited)."""
        if key in self._sorted:
            return True
        if key[0] < 0:
            return False
        try:
            group.sort(key=functools.cmp_to_key(_kcmp_order))
        except AsyckptError:
            return False
        self._sorted.add(key)
        return True

    def _table(self, tid: int) -> Mapping[int, int]:
        if self._tables is None:
            return {}
        if tid not in self._table_cache:
            self._table_cache[tid] = self._tables(tid)
        return self._table_cache[tid]

    def file_of(self, fd: int) -> int | None:
        """The image file id of the open file description that ``fd`` (a descriptor of
        asyckpt's own process: one taken with ``take_fd``, or received) refers to, or
        None if no task of the tree holds it."""
        st = os.fstat(fd)
        me = os.getpid()

        def compare(c: Candidate) -> int:
            try:
                return kcmp_raw(c[1], me, KCMP_FILE, c[2], fd)
            except OSError as exc:
                return _gone(exc, c)

        return self._search(st.st_dev, st.st_ino, compare, None)

    def epoll_target(
        self, tid: int, epfd: int, tfd: int, toff: int, dev: int | None, ino: int
    ) -> int | None:
        """The image file id of the description an epoll watches, or None if no task of
        the tree holds it: the epoll is ``epfd`` in thread ``tid``'s fd table, and the
        target its ``toff``-th watch added as fd ``tfd`` (in fdinfo order), on inode
        ``ino`` of device ``dev`` (userspace ``st_dev``) as its fdinfo says.  Decided by
        kcmp(2) KCMP_EPOLL_TFD, which finds the watch by the number it was added with:
        right even when that fd was closed or now names another file."""

        def compare(c: Candidate) -> int:
            try:
                return kcmp_epoll_tfd(c[1], c[2], tid, epfd, tfd, toff)
            except OSError as exc:
                if exc.errno == errno.ENOENT:
                    raise LookupError("the epoll has no such watch") from None
                return _gone(exc, c)

        # The kernel walks the epoll's watches for each such kcmp, so they are kept
        # few: the fd of that number in the epoll's own table first (most often the
        # target), then a binary search of the others in kcmp order.
        hint = self._table(tid).get(tfd)
        try:
            return self._search(dev, ino, compare, hint)
        except LookupError:
            return None

    def _search(
        self, dev: int | None, ino: int, compare: Callable[[Candidate], int], hint: int | None
    ) -> int | None:
        key, group = self._candidates(dev, ino)
        if not group:
            return None
        tried = None
        if hint is not None and self._dev_ino.get(hint) == key:
            for c in group:
                if c[0] == hint:
                    if compare(c) == 0:
                        return hint
                    tried = hint
                    break
        if len(group) > 2 and self._in_order(key, group):
            lo, hi = 0, len(group)
            while lo < hi:
                mid = (lo + hi) // 2
                order = compare(group[mid])
                if order == 0:
                    return group[mid][0]
                if order == 1:  # the candidate orders before the target
                    lo = mid + 1
                elif order == 2:
                    hi = mid
                else:
                    break  # a candidate gone (unfrozen): no order to rely on
            else:
                return None
        for c in group:
            if c[0] != tried and compare(c) == 0:
                return c[0]
        return None
