"""Names for sockets' numbers, through pyroute2 after the thaw (names.py): the pure tables
on literal input, then real sockets in a network namespace the test makes (named with
``ip netns add``, holding a veth pair), captured through the whole pipeline."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from asyckpt_sockets import Socket, SocketHandler
from asyckpt_sockets.names import (
    generic_groups,
    interfaces,
    netlink_protocols,
    netns_names,
    route_groups,
)

from asyckpt.testing import capture_fd, hold_fd

# --- pure -----------------------------------------------------------------------------------


def test_netlink_protocols_keep_the_families_not_the_socket_options() -> None:
    constants = {
        "NETLINK_ROUTE": 0,
        "NETLINK_UNUSED": 1,
        "NETLINK_USERSOCK": 2,
        "NETLINK_SOCK_DIAG": 4,
        "NETLINK_GENERIC": 16,
        "NLM_F_DUMP": 0x300,
        "NETLINK_ADD_MEMBERSHIP": 1,  # socket options, defined after the families
        "NETLINK_DROP_MEMBERSHIP": 2,
        "NETLINK_PKTINFO": 3,
        "NETLINK_NAME": "not a number",
        "NETLINK_FLAG": True,
    }
    assert netlink_protocols(constants) == {
        0: "route",
        2: "usersock",
        4: "sock_diag",
        16: "generic",
        3: "pktinfo",
    }


def test_netlink_protocols_from_pyroute2() -> None:
    import pyroute2.netlink

    names = netlink_protocols(vars(pyroute2.netlink))
    assert {n: names[n] for n in (0, 4, 9, 12, 15, 16)} == {
        socket.NETLINK_ROUTE: "route",
        4: "sock_diag",
        9: "audit",
        12: "netfilter",
        15: "kobject_uevent",
        16: "generic",
    }


def test_route_groups() -> None:
    constants = {"RTNLGRP_NONE": 0, "RTNLGRP_LINK": 1, "RTNLGRP_IPV4_IFADDR": 5, "RTMGRP_LINK": 1}
    assert route_groups(constants) == {1: "link", 5: "ipv4_ifaddr"}


def test_generic_groups() -> None:
    families = [("nlctrl", [("notify", 16)]), ("thermal", [("sampling", 2), ("event", 3)])]
    assert generic_groups(families) == {
        16: "nlctrl:notify",
        2: "thermal:sampling",
        3: "thermal:event",
    }
    assert generic_groups([("empty", [])]) == {}


def test_interfaces_and_netns_names() -> None:
    assert interfaces([(1, "lo"), (2, None), (3, "eth0")]) == {1: "lo", 3: "eth0"}
    entries = [("zeta", 7), ("alpha", 7), ("gone", None), ("other", 9)]
    assert netns_names(entries) == {7: "alpha", 9: "other"}


# --- real namespaces, interfaces and sockets ---------------------------------------------------


def ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)


@pytest.fixture
def netns() -> Iterator[str]:
    """A network namespace of the test's own, named, with a veth pair in it."""
    name = f"asyckpt-test-{os.getpid()}"
    proc = ip("netns", "add", name)
    assert proc.returncode == 0, proc.stderr
    try:
        proc = ip("-n", name, "link", "add", "ackv0", "type", "veth", "peer", "name", "ackv1")
        assert proc.returncode == 0, proc.stderr
        yield name
    finally:
        ip("netns", "del", name)


HOLDER = """\
import ctypes, os, socket
# Made before the move: a socket of the first namespace, which no task of the tree is in.
outside = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
outside.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"lo")
outside.bind(("127.0.0.1", 0))  # bound: sock_diag reports only sockets with a port
ns = os.open({path!r}, os.O_RDONLY)
assert ctypes.CDLL(None, use_errno=True).setns(ns, 0x40000000) == 0
os.close(ns)
packet = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x88B5))
packet.bind(("ackv0", 0x88B5))
bound = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
bound.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"ackv1")
bound.bind(("0.0.0.0", 0))
route = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
route.bind((0, 0x1 | 0x10 | 0x80000000))  # RTMGRP_LINK, RTMGRP_IPV4_IFADDR and group 32
generic = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 16)
generic.bind((0, 0))
generic.setsockopt(270, 1, 16)  # SOL_NETLINK, NETLINK_ADD_MEMBERSHIP: nlctrl's "notify"
uevent = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 15)  # NETLINK_KOBJECT_UEVENT
uevent.bind((0, 1))
fd = packet.fileno()
"""


def records(image: object) -> list[Socket]:
    files = image.files.values()  # type: ignore[attr-defined]
    return [msgspec.msgpack.decode(f.data, type=Socket) for f in files if f.handler == "sockets"]


def test_names_in_a_named_namespace_and_outside_it(netns: str) -> None:
    links = {
        link["ifname"]: link["ifindex"] for link in json.loads(ip("-j", "-n", netns, "link").stdout)
    }
    ns_ino = os.stat(f"/run/netns/{netns}").st_ino
    own_ino = os.stat("/proc/self/ns/net").st_ino
    with hold_fd(code=HOLDER.format(path=f"/run/netns/{netns}")) as holder:
        captured = capture_fd(SocketHandler, holder.pid, holder.fd)
    got = records(captured.image)

    (packet,) = [r for r in got if r.family == "packet"]
    assert (packet.ifindex, packet.interface) == (links["ackv0"], "ackv0")
    assert (packet.netns, packet.netns_name, packet.netns_outside_tree) == (ns_ino, netns, False)

    bound = [r for r in got if r.family == "inet"]
    (inside,) = [r for r in bound if r.netns == ns_ino]
    assert (inside.ifindex, inside.interface, inside.netns_name) == (links["ackv1"], "ackv1", netns)
    # Named in its own namespace, not in the tree's nor in asyckpt's.
    (outside,) = [r for r in bound if r.netns == own_ino]
    assert (outside.interface, outside.ifindex) == ("lo", socket.if_nametoindex("lo"))
    assert outside.netns_outside_tree
    assert outside.netns_name is None

    (route,) = [r for r in got if r.proto == "route"]
    assert route.groups == [1, 5, 32]
    assert route.group_names == ["link", "ipv4_ifaddr", None]
    (generic,) = [r for r in got if r.proto == "generic"]
    assert (generic.groups, generic.group_names) == ([16], ["nlctrl:notify"])
    (uevent,) = [r for r in got if r.proto == "kobject_uevent"]
    assert (uevent.groups, uevent.group_names) == ([1], [])  # nobody names those

    text = {r.ino: " ".join(SocketHandler().render_text(r).split()) for r in got}
    assert "if ackv0 proto 0x88b5" in text[packet.ino]
    assert f"netns {netns}" in text[packet.ino]
    assert "bound to lo" in text[outside.ino]
    assert "no task of the tree in it" in text[outside.ino]
    assert "groups link,ipv4_ifaddr,32" in text[route.ino]


IMPORTED = """\
import sys
from asyckpt._cli import main
assert main(["tree", sys.argv[1], "-o", sys.argv[2], "-q"]) == 0
print("pyroute2" in sys.modules, file=sys.stderr)
"""


@pytest.mark.parametrize(
    ("code", "imported"),
    [
        ("import socket; a, b = socket.socketpair(); fd = a.fileno()", False),
        ("import socket; s = socket.socket(socket.AF_INET); fd = s.fileno()", False),
        (
            "import socket; s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW); fd = s.fileno()",
            True,
        ),
    ],
)
def test_pyroute2_is_imported_only_when_a_record_needs_a_name(
    code: str, imported: bool, tmp_path: Path
) -> None:
    if imported is False and os.path.isdir("/run/netns") and os.listdir("/run/netns"):
        pytest.skip("named namespaces exist here: any socket's namespace may need a name")
    with hold_fd(code=code) as holder:
        proc = subprocess.run(
            [sys.executable, "-c", IMPORTED, str(holder.pid), str(tmp_path / "i.ackpt")],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == str(imported)
