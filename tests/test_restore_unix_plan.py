"""The plan for unix sockets bound to names (``_restore_unix``), on literal images:
listeners, the connections they accepted, bound and connected datagram sockets, and
every refusal naming pid, fd and why."""

from __future__ import annotations

from typing import Any

import pytest

from asyckpt._restore_model import SocketEnd, UnixConnection, UnixSocket
from tests.crafted import _file, _socket
from tests.test_restore_plan import PID, image, plan, refused

NETNS = 4026531833


def sock(id: int, ino: int, **fields: Any) -> dict[str, Any]:
    data = _socket(ino, **({"netns": NETNS} | fields))
    return _file(id, "socket", f"socket:[{ino}]", data=data)


def listener(id: int = 1, ino: int = 70, name: str = "/run/app.sock", **fields: Any) -> Any:
    fields = {"state": "LISTEN", "backlog": 16, "accept_queue": 0, "name": name} | fields
    return sock(id, ino, **fields)


def test_listener_bound_again_with_its_backlog() -> None:
    (d,) = plan(image((3, listener()))).descriptions
    assert d.make == UnixSocket(
        socktype="stream", address=b"/run/app.sock", backlog=16, connect=None, netns=NETNS,
        shutdown=None,
    )  # fmt: skip
    # An abstract name not UTF-8: its exact bytes, with the leading NUL.
    raw = b"\0ab\xff"
    (d,) = plan(image((3, listener(name="@ab\\xff", name_bytes=raw, abstract=True)))).descriptions
    assert isinstance(d.make, UnixSocket) and d.make.address == raw
    (d,) = plan(image((3, listener(name="@x", abstract=True, type="seqpacket")))).descriptions
    assert isinstance(d.make, UnixSocket) and d.make.address == b"\0x"


def test_connection_accepted_from_a_restored_listener() -> None:
    accepted = sock(2, 71, name="/run/app.sock", peer_ino=72, shutdown="read")
    client = sock(3, 72, peer_ino=71, shutdown="write")
    p = plan(image((3, listener()), (4, accepted), (5, client)))
    assert [d.make for d in p.descriptions][1:] == [
        UnixConnection(listener=1, accepted=2, end="accepted", socktype="stream", shutdown="read"),
        UnixConnection(listener=1, accepted=2, end="client", socktype="stream", shutdown="write"),
    ]
    assert p.pairs == []
    # Without its listener, or with two of its name, or its client bound too: refused.
    refused(image((4, accepted), (5, client)), "pid=100, fd=4", "listener (/run/app.sock) not")
    two = image((3, listener()), (4, accepted), (5, client), (6, listener(id=4, ino=73)))
    refused(two, "more than one listener")
    bound_client = sock(3, 72, peer_ino=71, name="/run/client.sock")
    refused(image((3, listener()), (4, accepted), (5, bound_client)), "bound to a name of its own")
    # An abstract listener of another namespace does not name it.
    abstract = sock(2, 71, name="@a", abstract=True, peer_ino=72)
    other = listener(name="@a", abstract=True, netns=NETNS + 1)
    refused(image((3, other), (4, abstract), (5, client)), "listener (@a) not restored")


def test_socketpair_stays_a_socketpair() -> None:
    a, b = sock(1, 7, peer_ino=8), sock(2, 8, peer_ino=7)
    p = plan(image((3, a), (4, b)))
    assert [d.make for d in p.descriptions] == [
        SocketEnd(pair=0, end=0, shutdown=None),
        SocketEnd(pair=0, end=1, shutdown=None),
    ]


def test_datagram_bound_and_connected_to_it() -> None:
    server = sock(1, 80, type="dgram", name="/run/log.sock")
    sender = sock(2, 81, type="dgram", peer_ino=80)
    lone = sock(3, 82, type="stream", state="CLOSE")
    p = plan(image((3, server), (4, sender), (5, lone)))
    assert [d.make for d in p.descriptions] == [
        UnixSocket(socktype="dgram", address=b"/run/log.sock", backlog=None, connect=None,
                   netns=NETNS, shutdown=None),
        UnixSocket(socktype="dgram", address=None, backlog=None, connect=1, netns=NETNS,
                   shutdown=None),
        UnixSocket(socktype="stream", address=None, backlog=None, connect=None, netns=NETNS,
                   shutdown=None),
    ]  # fmt: skip
    refused(image((4, sender)), "pid=100, fd=4", "peer is not restored")
    unnamed = sock(1, 80, type="dgram")
    refused(image((3, unnamed), (4, sender)), "fd=4", "socket without a name")


@pytest.mark.parametrize(
    ("rec", "words"),
    [
        (listener(accept_queue=2), ["accept queue"]),
        (listener(pending=[99]), ["accept queue"]),
        (listener(recv_queue=3), ["data queued"]),
        (listener(backlog=-1), ["backlog -1"]),
        (listener(backlog="9"), ["backlog '9'"]),
        (listener(name="/" + "x" * 108), ["109 bytes", "sun_path holds 108"]),
        (listener(name="@" + "x" * 108, abstract=True), ["109 bytes"]),
        (listener(name="run/app.sock"), ["relative name"]),
        (listener(name="/run/"), ["no file's"]),
        (listener(name="/run/.."), ["no file's"]),
        (listener(name="/run/a\0b"), ["NUL"]),
        (listener(name="x", abstract=True), ["without its @"]),
        (listener(name="/a", name_bytes=b"\0a"), ["disagree"]),
        (listener(name_state="unlinked"), ["was unlinked since"]),
        (listener(name_state="replaced"), ["was replaced since"]),
        (listener(name=None), ["without a name"]),
        (listener(type="raw"), ["type 'raw'"]),
        (sock(1, 70, peer_ino=99), ["peer is not restored"]),
        (sock(1, 70, peer_queued_on=5, state="ESTABLISHED"), ["waits in a queue"]),
    ],
)
def test_refused_naming_pid_fd_and_why(rec: dict[str, Any], words: list[str]) -> None:
    err = refused(image((3, rec)), "cannot restore the socket", *words)
    assert err.pid == PID and err.fd == 3 and err.exit_code == 13
