"""The restore plan's pidfds and handler hooks (``_restore_plan`` with
``_restore_pidfd.plan_pidfd``), table-tested on literal images: what a pidfd becomes,
which targets are refused, and when a file goes to its handler's restore hook."""

from __future__ import annotations

import os
from typing import Any

import pytest

from asyckpt._restore_model import Hook, OpenPath, PidFd
from tests.crafted import _file
from tests.test_restore_plan import PID, eventfd, image, lock, plan, refused, reg


def pidfd(id: int = 1, flags: int = os.O_RDWR, **fields: Any) -> dict[str, Any]:
    data = {"kind": "asyckpt.pidfd", "pid": PID, "nspid": [PID], "thread": False}
    data |= {"in_tree": True} | fields
    return _file(id, "anon", "anon_inode:[pidfd]", handler="pidfd", flags=flags, data=data)


def test_a_pidfd_of_the_task_itself() -> None:
    p = plan(image((3, pidfd(flags=os.O_RDWR | os.O_NONBLOCK)), (4, pidfd(2))))
    assert p.descriptions[0].make == PidFd(target=PID, nonblock=True)
    assert p.descriptions[0].setfl is None and p.descriptions[0].pos is None
    assert p.descriptions[1].make == PidFd(target=PID, nonblock=False)


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"pid": 4242, "in_tree": False}, "(pid 4242) is not restored with it"),
        ({"pid": -1, "in_tree": None}, "had exited"),
        ({"pid": 0}, "not visible"),
        ({"pid": "100"}, "had exited"),
        ({"thread": True}, "PIDFD_THREAD"),
        ({"thread": None}, "PIDFD_THREAD"),
    ],
)
def test_pidfds_refused(fields: dict[str, Any], words: str) -> None:
    img = image((5, pidfd(**fields)))
    refused(img, "cannot restore the pidfd", words, "--skip pidfd", f"pid={PID}", "fd=5")
    assert plan(img, skip=frozenset({"pidfd"})).skipped[0].kind == "pidfd"


FANOTIFY = {"kind": "asyckpt.fanotify", "flags": 0, "event_flags": 0, "marks": []}


def test_a_file_restore_refuses_goes_to_its_handlers_hook() -> None:
    f = _file(1, "anon", "anon_inode:[fanotify]", handler="fanotify", data=FANOTIFY)
    img = image((6, f), (7, f))
    refused(img, "cannot restore the fanotify", "not restored by this version")
    refused(img, "cannot restore the fanotify", hooks={"other"})
    p = plan(img, hooks={"fanotify"})
    (d,) = p.descriptions
    assert isinstance(d.make, Hook) and d.make.handler == "fanotify"
    assert d.make.file.id == 1 and d.make.task.pid == PID
    assert (d.kind, d.pid, d.fd, d.setfl, d.pos) == ("fanotify", PID, 6, None, None)
    assert [(s.fd, s.description) for s in p.fds] == [(6, 0), (7, 0)]  # one description


def test_restore_rebuilds_what_it_can_whatever_the_hooks() -> None:
    # The core's own restore wins: a hook is only asked for a file it would refuse.
    p = plan(image((3, reg(handler="reg")), (4, eventfd())), hooks={"reg", "eventfd"})
    assert isinstance(p.descriptions[0].make, OpenPath)
    assert not any(isinstance(d.make, Hook) for d in p.descriptions)


def test_a_hooked_files_locks_are_still_checked() -> None:
    locks = [lock("LEASE")]
    f = _file(1, "anon", "anon_inode:[fanotify]", handler="fanotify", data=FANOTIFY, locks=locks)
    refused(image((6, f)), "cannot be taken again", hooks={"fanotify"})
