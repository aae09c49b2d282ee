"""asyckpt-anon keeps the plugin contract: its handlers load as their entry points
name them, claim what they should ahead of (or behind) the others, and their records
survive a trip through a real image and render as ``asyckpt show`` prints them."""

from __future__ import annotations

import importlib.metadata
import json
import os
import stat
import tomllib
from pathlib import Path
from typing import ClassVar

import msgspec
import pytest
from asyckpt_anon import (
    HANDLERS,
    AnonHandler,
    AnonInode,
    Epoll,
    EpollHandler,
    EpollTarget,
    EventFd,
    EventFdHandler,
    FileHandle,
    Inotify,
    InotifyHandler,
    InotifyWatch,
    MemFd,
    MemFdHandler,
    PidFd,
    PidFdHandler,
    SignalFd,
    SignalFdHandler,
    TimerFd,
    TimerFdHandler,
)

from asyckpt import FdFacts, HandlerContext
from asyckpt.testing import dispatch_with, load_handler, make_facts, roundtrip

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
ANON = 0o600  # an anon inode's st_mode: no file type bits


def test_entry_points_name_every_handler() -> None:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    declared = project["entry-points"]["asyckpt.fd_types"]
    assert declared == {h.name: f"asyckpt_anon:{h.__name__}" for h in HANDLERS}
    installed = {
        ep.name: ep.value
        for ep in importlib.metadata.entry_points(group="asyckpt.fd_types")
        if ep.dist is not None and ep.dist.name == project["name"]
    }
    assert installed == declared


@pytest.mark.parametrize("handler", HANDLERS, ids=lambda h: h.__name__)
def test_each_handler_keeps_the_contract(handler: type) -> None:
    loaded = load_handler(handler)
    assert loaded.record_tag == f"asyckpt.{loaded.name}"
    assert loaded.selective  # declared claims, never a predicate over every fd


def test_no_conflicts_among_them_and_the_core() -> None:
    assert dispatch_with(*HANDLERS).conflicts == []


@pytest.mark.parametrize(
    ("facts", "chosen"),
    [
        (make_facts("anon_inode:[eventfd]", st_mode=ANON), "eventfd"),
        (make_facts("anon_inode:[eventpoll]", st_mode=ANON), "epoll"),
        (make_facts("anon_inode:[timerfd]", st_mode=ANON), "timerfd"),
        (make_facts("anon_inode:[signalfd]", st_mode=ANON), "signalfd"),
        (make_facts("anon_inode:inotify", st_mode=ANON), "inotify"),
        (make_facts("anon_inode:[fanotify]", st_mode=ANON), "fanotify"),
        (make_facts("anon_inode:[pidfd]", st_mode=0o700), "pidfd"),
        (make_facts("pidfd:[12345]", st_mode=stat.S_IFREG | 0o600), "pidfd"),
        (make_facts("anon_inode:[io_uring]", st_mode=ANON), "anon"),
        (make_facts("anon_inode:bpf-map", st_mode=ANON), "anon"),
        # The prefix includes the closing bracket: a longer name is another kind.
        (make_facts("anon_inode:[eventfd2]", st_mode=ANON), "anon"),
        (make_facts("[aio]", st_mode=ANON), "anon"),
        # A memfd is a regular file, unlinked from birth: memfd, not reg.
        (make_facts("/memfd:x (deleted)", st_mode=stat.S_IFREG | 0o777, nlink=0), "memfd"),
        # A real file named /memfd:x stays reg's.
        (make_facts("/memfd:x", st_mode=stat.S_IFREG | 0o644), "reg"),
        (make_facts("/tmp/memfd:x (deleted)", st_mode=stat.S_IFREG | 0o644, nlink=0), "reg"),
        (make_facts("/dev/null", st_mode=stat.S_IFCHR | 0o666, rdev=os.makedev(1, 3)), None),
    ],
)
def test_what_they_claim(facts: FdFacts, chosen: str | None) -> None:
    handler = dispatch_with(*HANDLERS).choose(facts)
    assert (handler.name if handler else None) == chosen


class OtherAnonRecord(msgspec.Struct, tag="elsewhere.anon", tag_field="kind"):
    pass


class OtherAnon:
    """A third party's handler of every anon inode, at the default priority."""

    name: ClassVar[str] = "otheranon"
    record_type: ClassVar[type[msgspec.Struct]] = OtherAnonRecord
    kinds: ClassVar[frozenset[str]] = frozenset({"anon"})

    def capture(self, facts: FdFacts, ctx: HandlerContext) -> OtherAnonRecord:
        return OtherAnonRecord()


def test_the_catch_all_gives_way_without_a_conflict() -> None:
    # The catch-all is at priority -1: another handler of all anon inodes goes first,
    # and the named kinds still go to their own handlers.
    dispatch = dispatch_with(OtherAnon, *HANDLERS)
    assert dispatch.conflicts == []
    io_uring = dispatch.choose(make_facts("anon_inode:[io_uring]", st_mode=ANON))
    eventfd = dispatch.choose(make_facts("anon_inode:[eventfd]", st_mode=ANON))
    assert (io_uring and io_uring.name, eventfd and eventfd.name) == ("otheranon", "eventfd")


@pytest.mark.parametrize(
    ("handler", "record", "text", "rendered"),
    [
        (
            EventFdHandler,
            EventFd(count=26, semaphore=True, id=1, nonblock=True),
            "[eventfd count=26 semaphore]",
            None,
        ),
        (
            EpollHandler,
            Epoll(
                targets=[
                    EpollTarget(tfd=3, events=0x80000019, data=2**64 - 1, pos=0, ino=9, dev=16)
                ]
            ),
            "[epoll 1 targets: 3]",
            {
                "targets": [
                    {
                        "tfd": 3,
                        "events": ["EPOLLIN", "EPOLLERR", "EPOLLHUP", "EPOLLET"],
                        "data": "0xffffffffffffffff",
                        "ino": 9,
                        "dev": 16,
                        "file": None,
                        "in_tree": None,  # an image from before linking: not known
                    }
                ]
            },
        ),
        (
            EpollHandler,
            Epoll(
                targets=[
                    EpollTarget(tfd=3, events=0x1, data=0, pos=0, ino=9, dev=16, file=5),
                    EpollTarget(tfd=4, events=0x4, data=1, pos=0, ino=7, dev=16, file=None),
                ],
                linked=True,
            ),
            "[epoll 2 targets: 3->file 5,4->outside]",
            {
                "targets": [
                    {
                        "tfd": 3,
                        "events": ["EPOLLIN"],
                        "data": "0x0",
                        "ino": 9,
                        "dev": 16,
                        "file": 5,
                        "in_tree": True,
                    },
                    {
                        "tfd": 4,
                        "events": ["EPOLLOUT"],
                        "data": "0x1",
                        "ino": 7,
                        "dev": 16,
                        "file": None,
                        "in_tree": False,
                    },
                ]
            },
        ),
        (
            InotifyHandler,
            Inotify(
                watches=[
                    InotifyWatch(
                        wd=1, ino=2, dev=3, mask=2, ignored_mask=0, handle=None, path="/srv/a"
                    ),
                    InotifyWatch(
                        wd=2,
                        ino=4,
                        dev=3,
                        mask=2,
                        ignored_mask=0,
                        handle=FileHandle(type=1, handle="00"),
                        path="/srv/b",
                        deleted=True,
                    ),
                    InotifyWatch(wd=3, ino=5, dev=3, mask=2, ignored_mask=0, handle=None),
                ],
                resolved=True,
            ),
            "[inotify 3 watches: 1=/srv/a,2=/srv/b (deleted),3]",
            None,
        ),
        (
            TimerFdHandler,
            TimerFd(clockid=1, ticks=2, settime_flags=3, it_value=(1, 5), it_interval=(0, 0)),
            "[timerfd CLOCK_MONOTONIC value=1.000000005s interval=0.000000000s ticks=2]",
            {
                "clock": "CLOCK_MONOTONIC",
                "settime_flags": ["TFD_TIMER_ABSTIME", "TFD_TIMER_CANCEL_ON_SET"],
            },
        ),
        (
            SignalFdHandler,
            SignalFd(sigmask=0x4200, signals=[10, 15]),
            "[signalfd SIGUSR1,SIGTERM]",
            {"signals": ["SIGUSR1", "SIGTERM"]},
        ),
        (
            PidFdHandler,
            PidFd(pid=812, nspid=[812, 1], thread=False),
            "[pidfd pid 812 (nspid 812 1)]",
            None,
        ),
        (PidFdHandler, PidFd(pid=-1, nspid=[-1], thread=True), "[pidfd thread exited]", None),
        (
            MemFdHandler,
            MemFd(name="a b", size=10, blocks=8, seals=0x43, hugetlb=True),
            "[memfd 'a b' size=10 seals=F_SEAL_SEAL|F_SEAL_SHRINK|0x40 hugetlb]",
            {"seals": ["F_SEAL_SEAL", "F_SEAL_SHRINK", "0x40"]},
        ),
        (
            AnonHandler,
            AnonInode(type="bpf-map", values={"map_type": 2, "key_size": 4}),
            "[bpf-map map_type=2 key_size=4]",
            None,
        ),
        (AnonHandler, AnonInode(type="perf_event"), "[perf_event]", None),
    ],
)
def test_roundtrip_and_rendering(
    handler: type, record: msgspec.Struct, text: str, rendered: object
) -> None:
    rt = roundtrip(handler, record, kind="anon", path="anon_inode:[x]")
    assert rt.record == record
    assert rt.data == json.loads(msgspec.json.encode(record))
    assert (rt.text, rt.rendered, rt.note) == (text, rendered, None)
