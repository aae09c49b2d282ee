"""Names for the numbers sock_diag reports, looked up with pyroute2 after the thaw.

* interface names for an ``ifindex`` (a packet socket's interface, the device an inet
  socket is bound to), asked in the socket's own network namespace: an index means
  something only there;
* the names of network namespaces, as ``ip netns`` gives them (``/run/netns`` entries,
  listed by ``pyroute2.netns``), by namespace inode;
* a netlink socket's protocol (pyroute2's ``NETLINK_*``) and its groups: rtnetlink's
  (``RTNLGRP_*``) and generic netlink's (``family:group``, from the controller of the
  socket's namespace; their numbers are given out at run time).

pyroute2 is the right tool for these (it knows the constants and speaks rtnetlink and
generic netlink), but it is slow to import (a few hundred ms) and to decode: nothing
here runs while the tree is frozen, and pyroute2 is imported only once a record needs a
name (a tree of unix sockets never imports it).  Each lookup is made once per capture.
The tables are built by pure functions of what pyroute2 returns, tested on literals.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .dump import NetnsDump

__all__ = [
    "Names",
    "generic_groups",
    "interfaces",
    "netlink_protocols",
    "netns_names",
    "route_groups",
]

NETLINK_ROUTE = 0
NETLINK_GENERIC = 16
NETNS_RUN_DIR = "/run/netns"
"""Where ``ip netns`` keeps its names (pyroute2.netns.NETNS_RUN_DIR, through the
/var/run link): looked at before pyroute2 is imported, as most machines have none."""


def netlink_protocols(constants: Mapping[str, object]) -> dict[int, str]:
    """Netlink protocol numbers to names (``NETLINK_GENERIC`` = 16: ``generic``) from a
    module's constants.  The module also defines netlink socket options with the same
    prefix (``NETLINK_ADD_MEMBERSHIP`` = 1, ...): the protocols come first, so the first
    name of each number is kept; ``NETLINK_UNUSED`` names none."""
    out: dict[int, str] = {}
    for name, value in constants.items():
        if name.startswith("NETLINK_") and type(value) is int:
            out.setdefault(value, name.removeprefix("NETLINK_").lower())
    return {number: name for number, name in out.items() if name != "unused"}


def route_groups(constants: Mapping[str, object]) -> dict[int, str]:
    """rtnetlink multicast group numbers to names (``RTNLGRP_LINK`` = 1: ``link``)."""
    return {
        value: name.removeprefix("RTNLGRP_").lower()
        for name, value in constants.items()
        if name.startswith("RTNLGRP_") and type(value) is int and value > 0
    }


def generic_groups(families: Iterable[tuple[str, Iterable[tuple[str, int]]]]) -> dict[int, str]:
    """Generic netlink group ids to ``family:group`` names, from the controller's families
    with their (group name, id) pairs."""
    return {gid: f"{family}:{group}" for family, groups in families for group, gid in groups}


def interfaces(links: Iterable[tuple[int, str | None]]) -> dict[int, str]:
    """ifindex -> interface name, from (index, IFLA_IFNAME) pairs."""
    return {index: name for index, name in links if name is not None}


def netns_names(entries: Iterable[tuple[str, int | None]]) -> dict[int, str]:
    """Namespace inode -> name, from (name, inode of its /run/netns entry) pairs; an
    entry that is not a namespace mount (inode None) is left out.  Several names for one
    namespace: the first in alphabetical order, so that the choice does not depend on the
    directory's order."""
    out: dict[int, str] = {}
    for name, ino in sorted(entries):
        if ino is not None:
            out.setdefault(ino, name)
    return out


# --- pyroute2 -----------------------------------------------------------------------------


def _links() -> dict[int, str]:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        return interfaces((link["index"], link.get_attr("IFLA_IFNAME")) for link in ipr.get_links())


def _generic_groups() -> dict[int, str]:
    from pyroute2.netlink import (
        CTRL_CMD_GETFAMILY,
        GENL_ID_CTRL,
        NLM_F_DUMP,
        NLM_F_REQUEST,
        ctrlmsg,
    )
    from pyroute2.netlink.nlsocket import NetlinkSocket

    with NetlinkSocket(NETLINK_GENERIC) as sock:
        sock.marshal.msg_map[GENL_ID_CTRL] = ctrlmsg
        msg = ctrlmsg()
        msg["cmd"] = CTRL_CMD_GETFAMILY
        msg["version"] = 1
        replies = sock.nlm_request(msg, msg_type=GENL_ID_CTRL, msg_flags=NLM_F_REQUEST | NLM_F_DUMP)
        return generic_groups(
            (
                reply.get_attr("CTRL_ATTR_FAMILY_NAME"),
                [
                    (g.get_attr("CTRL_ATTR_MCAST_GRP_NAME"), g.get_attr("CTRL_ATTR_MCAST_GRP_ID"))
                    for g in reply.get_attr("CTRL_ATTR_MCAST_GROUPS") or []
                ],
            )
            for reply in replies
        )


def _named_namespaces() -> dict[int, str]:
    try:
        if not os.listdir(NETNS_RUN_DIR):
            return {}  # no names now: no need for pyroute2
    except OSError:
        return {}  # no name was ever given
    from pyroute2 import netns

    def ino(name: str) -> int | None:
        try:
            st = os.stat(os.path.join(NETNS_RUN_DIR, name))
        except OSError:
            return None  # removed meanwhile
        # A name whose namespace is gone is an empty file on the tmpfs, not an nsfs
        # mount: only nsfs inodes are namespaces.
        return st.st_ino if st.st_dev != os.stat(NETNS_RUN_DIR).st_dev else None

    return netns_names((name, ino(name)) for name in netns.listnetns(NETNS_RUN_DIR))


class Names:
    """The names of one capture, each table looked up once, on first use (from the
    capture's finish threads: a lock)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._per_netns: dict[tuple[str, int], dict[int, str]] = {}
        self._global: dict[str, dict[int, str]] = {}

    def _once(self, key: str, make: Callable[[], dict[int, str]]) -> dict[int, str]:
        with self._lock:
            table = self._global.get(key)
            if table is None:
                table = self._global[key] = make()
            return table

    def _in(self, dump: NetnsDump, key: str, make: Callable[[], dict[int, str]]) -> dict[int, str]:
        """``make()`` run in ``dump``'s namespace (empty if it cannot be entered)."""
        from .dump import in_netns

        with self._lock:
            table = self._per_netns.get((key, dump.netns))
            if table is None:
                try:
                    table = in_netns(dump.ns_fd, make) if dump.ns_fd is not None else make()
                except OSError:
                    table = {}
                self._per_netns[(key, dump.netns)] = table
            return table

    def interface(self, dump: NetnsDump, ifindex: int) -> str | None:
        """The name of interface ``ifindex`` of ``dump``'s namespace."""
        return self._in(dump, "links", _links).get(ifindex)

    def netns(self, ino: int) -> str | None:
        """The ``ip netns`` name of the namespace ``ino``, if it has one."""
        return self._once("netns", _named_namespaces).get(ino)

    def netlink_protocol(self, protocol: int) -> str | None:
        return self._once("protocols", _protocols).get(protocol)

    def netlink_groups(
        self, dump: NetnsDump | None, protocol: int, groups: Iterable[int]
    ) -> list[str | None]:
        """Each group's name (None: unknown), for a socket of netlink ``protocol``."""
        table: dict[int, str] = {}
        if protocol == NETLINK_ROUTE:
            table = self._once("route", _route_groups)
        elif protocol == NETLINK_GENERIC and dump is not None:
            table = self._in(dump, "generic", _generic_groups)
        return [table.get(g) for g in groups]


def _protocols() -> dict[int, str]:
    import pyroute2.netlink

    return netlink_protocols(vars(pyroute2.netlink))


def _route_groups() -> dict[int, str]:
    import pyroute2.netlink.rtnl

    constants: dict[str, Any] = vars(pyroute2.netlink.rtnl)
    return route_groups(constants)
