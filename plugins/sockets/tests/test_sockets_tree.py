"""The socket handler on a real tree (sockets_tree.py): every field of every socket is
checked against what the tree set up.  One capture, through the command line as a user
runs it, serves every test of the module; the tree is killed by process group after it,
and no cgroup of the capture may be left."""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest

HERE = Path(__file__).resolve().parent
ASYCKPT = [sys.executable, "-m", "asyckpt"]
CGROUP_ROOTS = ("/sys/fs/cgroup/freezer", "/sys/fs/cgroup/unified", "/sys/fs/cgroup")


class Captured(NamedTuple):
    info: dict[str, Any]
    doc: dict[str, Any]
    """``asyckpt show --json --endpoints`` of the capture."""
    endpoints_text: str
    table: str
    files: dict[tuple[int, int], dict[str, Any]]
    """(pid, fd) -> the file as the JSON export has it."""
    outside_peer_ino: int
    outside_pipe_ino: int


def leftover_cgroups(root: int) -> list[Path]:
    return [p for base in CGROUP_ROOTS for p in Path(base).glob(f"asyckpt-*-{root}")]


@pytest.fixture(scope="module")
def captured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Captured]:
    tmp = tmp_path_factory.mktemp("sockets")
    keep, give = socket.socketpair()  # the test keeps one end: a peer outside the tree
    pipe_r, pipe_w = os.pipe()  # the tree gets the write end only
    proc = subprocess.Popen(
        [*ASYCKPT[:1], str(HERE / "sockets_tree.py"), str(tmp), str(give.fileno()), str(pipe_w)],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
        pass_fds=(give.fileno(), pipe_w),
    )
    try:
        give.close()
        os.close(pipe_w)
        assert proc.stdout is not None
        # Its children hold its stdout too: a root that failed would not close it.
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        line = proc.stdout.readline() if ready else ""
        assert line, "sockets_tree.py failed to start"
        info = json.loads(line)
        image = str(tmp / "s.ackpt")
        run = subprocess.run(
            [*ASYCKPT, "tree", str(proc.pid), "-o", image], capture_output=True, text=True
        )
        assert run.returncode == 0, run.stderr
        assert "recorded generically" not in run.stderr, run.stderr
        assert not leftover_cgroups(proc.pid)
        show = subprocess.run(
            [*ASYCKPT, "show", image, "--json", "--endpoints"], capture_output=True, text=True
        )
        assert show.returncode == 0, show.stderr
        doc = json.loads(show.stdout)
        endpoints = subprocess.run(
            [*ASYCKPT, "show", image, "--endpoints"], capture_output=True, text=True
        )
        table = subprocess.run([*ASYCKPT, "show", image], capture_output=True, text=True)
        by_id = {f["id"]: f for f in doc["files"]}
        files = {(t["pid"], fd["fd"]): by_id[fd["file"]] for t in doc["tasks"] for fd in t["fds"]}
        yield Captured(
            info,
            doc,
            endpoints.stdout,
            table.stdout,
            files,
            os.fstat(keep.fileno()).st_ino,
            os.fstat(pipe_r).st_ino,
        )
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()
        keep.close()
        os.close(pipe_r)


def sock(c: Captured, who: str, name: str) -> dict[str, Any]:
    """The record of the socket ``name`` of ``who`` (root, child, netns or moved)."""
    pid = {
        "root": c.info["pid"],
        "child": c.info["child_pid"],
        "netns": c.info["netns_pid"],
        "moved": c.info["moved_pid"],
    }[who]
    part = c.info[who]
    f = c.files[(pid, part[name])]
    assert f["type"] == "socket", f
    assert f["handler"] == "sockets", f
    assert f["ino"] == part[name + "_ino"] == f["data"]["ino"]
    data: dict[str, Any] = f["data"]
    return data


def test_every_socket_is_captured_by_the_handler(captured: Captured) -> None:
    sockets = [f for f in captured.doc["files"] if f["type"] == "socket"]
    assert sockets
    assert all(f["handler"] == "sockets" and f["error"] is None for f in sockets)
    assert captured.doc["stats"]["generic"].get("socket") is None
    plugin = next(p for p in captured.doc["plugins"] if p["name"] == "sockets")
    assert plugin["distribution"] == "asyckpt-sockets"
    assert plugin["record_tag"] == "asyckpt.socket"


def test_unix_socketpair_between_parent_and_child(captured: Captured) -> None:
    root, child = captured.info["root"], captured.info["child"]
    a = sock(captured, "root", "pair_a")
    b = sock(captured, "child", "pair_b")
    common = {
        "family": "unix",
        "domain": socket.AF_UNIX,
        "type": "stream",
        "protocol": 0,
        "diag": True,
        "netns": root["netns"],
        "state": "ESTABLISHED",
        "owner_uid": os.getuid(),
        "peer_in_tree": True,
        # SO_PEERCRED of a socketpair: the process that made it, for both ends.
        "peer_pid": captured.info["pid"],
        "peer_uid": os.getuid(),
        "peer_gid": os.getgid(),
    }
    assert a.items() >= common.items()
    assert b.items() >= common.items()
    assert a["peer_ino"] == child["pair_b_ino"]
    assert b["peer_ino"] == root["pair_a_ino"]
    assert b["recv_queue"] == 7  # "7 bytes", written by the root, not read
    assert a["recv_queue"] == 0
    assert "name" not in a
    assert "shutdown" not in a
    assert "pending" not in a


def test_unix_seqpacket_shutdown_and_dgram_queue(captured: Captured) -> None:
    shut = sock(captured, "root", "seq_shut")
    other = sock(captured, "root", "seq_other")
    assert (shut["type"], shut["shutdown"], other["shutdown"]) == ("seqpacket", "write", "read")
    assert shut["peer_ino"] == captured.info["root"]["seq_other_ino"]
    receiver = sock(captured, "root", "dgram_receiver")
    sender = sock(captured, "root", "dgram_sender")
    assert (receiver["type"], receiver["recv_queue"]) == ("dgram", 3)  # b"abc"
    assert sender["peer_ino"] == captured.info["root"]["dgram_receiver_ino"]


def test_unix_listener_with_a_pending_connection(captured: Captured) -> None:
    root, child = captured.info["root"], captured.info["child"]
    listener = sock(captured, "root", "unix_listener")
    assert listener["state"] == "LISTEN"
    assert listener["name"] == root["listen_path"]
    assert "abstract" not in listener  # false, the default, is left out
    # Receive queue of a listener: connections waiting; send queue: its backlog.
    assert (listener["recv_queue"], listener["send_queue"]) == (1, 5)
    # The listener lists the clients waiting to be accepted.
    assert listener["pending"] == [child["unix_pending_ino"]]
    client = sock(captured, "child", "unix_pending")
    assert client["state"] == "ESTABLISHED"
    # The client's peer is the connection waiting in the listener's queue: it has no
    # file (so no inode) yet, but the listener it waits on is the tree's.
    assert "peer_ino" not in client
    assert client["peer_queued_on"] == root["unix_listener_ino"]
    assert client["peer_in_tree"] is True
    # The client got the listener's credentials (those of listen(2)).
    assert client["peer_pid"] == captured.info["pid"]


def test_abstract_listener_and_accepted_connection(captured: Captured) -> None:
    root, child = captured.info["root"], captured.info["child"]
    listener = sock(captured, "root", "abstract_listener")
    assert listener["name"] == "@" + root["abstract_name"]
    assert listener["abstract"] is True
    assert (listener["state"], listener["recv_queue"], listener["send_queue"]) == ("LISTEN", 0, 4)
    conn = sock(captured, "root", "unix_conn")
    client = sock(captured, "child", "unix_client")
    assert conn["peer_ino"] == child["unix_client_ino"]
    assert client["peer_ino"] == conn["ino"]
    assert conn["peer_pid"] == captured.info["child_pid"]  # who connected
    # The accepted socket carries the listener's name too.
    assert conn["name"] == listener["name"]
    assert conn["peer_in_tree"]
    assert client["peer_in_tree"]


def test_a_peer_outside_the_tree(captured: Captured) -> None:
    outside = sock(captured, "root", "outside_sock")
    assert outside["peer_ino"] == captured.outside_peer_ino
    assert outside["peer_in_tree"] is False
    assert "peer_queued_on" not in outside
    assert outside["peer_pid"] == os.getpid()  # the test made the pair


def test_tcp_listen_established_and_pending_on_127_0_0_1(captured: Captured) -> None:
    root, child = captured.info["root"], captured.info["child"]
    port = root["tcp_port"]
    listener = sock(captured, "root", "tcp_listener")
    assert (
        listener.items()
        >= {
            "family": "inet",
            "domain": socket.AF_INET,
            "type": "stream",
            "protocol": socket.IPPROTO_TCP,
            "proto": "tcp",
            "diag": True,
            "state": "LISTEN",
            "local_address": "127.0.0.1",
            "local_port": port,
            "recv_queue": 1,  # the pending connection
            "send_queue": 7,  # the backlog
            "reuseaddr": True,
            "reuseport": False,
            "keepalive": False,
            "nodelay": False,
            "owner_uid": os.getuid(),
            "netns": root["netns"],
        }.items()
    )
    assert "remote_address" not in listener
    assert "peer_ino" not in listener
    assert (listener["accept_queue"], listener["backlog"]) == (1, 7)
    # The connection waiting in its accept queue, as the listener's side of it says.
    assert listener["pending_connections"] == [
        {
            "local_address": "127.0.0.1",
            "local_port": port,
            "remote_address": "127.0.0.1",
            "remote_port": child["tcp_pending_port"],
            "peer_ino": child["tcp_pending_ino"],
        }
    ]
    assert listener["pending"] == [child["tcp_pending_ino"]]
    conn = sock(captured, "root", "tcp_conn")
    client = sock(captured, "child", "tcp_client")
    assert (
        conn.items()
        >= {
            "state": "ESTABLISHED",
            "local_port": port,
            "remote_address": "127.0.0.1",
            "remote_port": child["tcp_client_port"],
            "recv_queue": 11,  # b"eleven byte", not read
            "peer_ino": child["tcp_client_ino"],
            "peer_in_tree": True,
        }.items()
    )
    assert (
        client.items()
        >= {
            "state": "ESTABLISHED",
            "local_address": "127.0.0.1",
            "local_port": child["tcp_client_port"],
            "remote_address": "127.0.0.1",
            "remote_port": port,
            "keepalive": True,
            "nodelay": True,
            "rcvbuf": 2 * 65536,  # the kernel doubles what setsockopt asks (socket(7))
            "peer_ino": root["tcp_conn_ino"],
        }.items()
    )
    pending = sock(captured, "child", "tcp_pending")
    assert (pending["state"], pending["remote_port"]) == ("ESTABLISHED", port)
    assert "peer_ino" not in pending  # its other end waits in the accept queue, fd-less
    assert pending["peer_queued_on"] == root["tcp_listener_ino"]
    assert pending["peer_in_tree"] is True
    assert "accept_queue" not in conn  # not a listener


def test_tcp_listener_with_two_connections_never_accepted(captured: Captured) -> None:
    root, child = captured.info["root"], captured.info["child"]
    listener = sock(captured, "root", "tcp_q")
    assert (listener["state"], listener["accept_queue"], listener["backlog"]) == ("LISTEN", 2, 5)
    clients = sorted(
        zip(child["queued_ports"], (child["queued_1_ino"], child["queued_2_ino"]), strict=True)
    )
    assert sorted(listener["pending_connections"], key=lambda c: c["remote_port"]) == [
        {
            "local_address": "127.0.0.1",
            "local_port": root["tcp_q_port"],
            "remote_address": "127.0.0.1",
            "remote_port": client_port,
            "peer_ino": client_ino,
        }
        for client_port, client_ino in clients
    ]
    assert sorted(listener["pending"]) == sorted(ino for _, ino in clients)
    for name in ("queued_1", "queued_2"):
        client = sock(captured, "child", name)
        assert client["peer_queued_on"] == root["tcp_q_ino"]
        assert client["peer_in_tree"] is True
        assert "peer_ino" not in client


def test_unix_path_names_unlinked_or_replaced(captured: Captured) -> None:
    root = captured.info["root"]
    listener = sock(captured, "root", "unix_listener")
    assert (listener["name"], listener["name_state"]) == (root["listen_path"], "ok")
    gone = sock(captured, "root", "gone")
    # sock_diag still names the path the socket was bound to; the node is gone.
    assert (gone["name"], gone["name_state"], gone["state"]) == (
        root["gone_path"],
        "unlinked",
        "LISTEN",
    )
    replaced = sock(captured, "root", "replaced")
    assert (replaced["name"], replaced["name_state"]) == (root["replaced_path"], "replaced")
    assert os.path.isfile(root["replaced_path"])  # another file is there now
    assert "name_state" not in sock(captured, "root", "abstract_listener")  # not a path
    line = next(x for x in captured.table.splitlines() if f"socket:[{root['gone_ino']}]" in x)
    assert f"name {root['gone_path']} (unlinked)" in line


def test_tcp_on_ipv6_loopback(captured: Captured) -> None:
    root, child = captured.info["root"], captured.info["child"]
    listener = sock(captured, "root", "tcp6_listener")
    assert (
        listener.items()
        >= {
            "family": "inet6",
            "domain": socket.AF_INET6,
            "proto": "tcp",
            "state": "LISTEN",
            "local_address": "::1",
            "local_port": root["tcp6_port"],
            "send_queue": 3,
            "recv_queue": 0,
        }.items()
    )
    conn = sock(captured, "root", "tcp6_conn")
    client = sock(captured, "child", "tcp6_client")
    assert (
        conn.items()
        >= {
            "state": "ESTABLISHED",
            "local_address": "::1",
            "remote_address": "::1",
            "remote_port": child["tcp6_client_port"],
            "peer_ino": child["tcp6_client_ino"],
        }.items()
    )
    assert client["peer_ino"] == root["tcp6_conn_ino"]
    assert client["remote_port"] == root["tcp6_port"]


def test_udp_udplite_and_raw(captured: Captured) -> None:
    root = captured.info["root"]
    recv = sock(captured, "root", "udp_recv")
    send = sock(captured, "root", "udp_send")
    assert (
        recv.items()
        >= {
            "proto": "udp",
            "type": "dgram",
            "protocol": socket.IPPROTO_UDP,
            "state": "CLOSE",  # not connected
            "local_address": "127.0.0.1",
            "local_port": root["udp_recv_port"],
            "reuseport": True,
            "diag": True,
        }.items()
    )
    assert recv["recv_queue"] >= 4  # b"udp!" with its kernel overhead
    assert "nodelay" not in recv
    assert "remote_address" not in recv
    assert (
        send.items()
        >= {
            "state": "ESTABLISHED",  # connected to recv
            "remote_address": "127.0.0.1",
            "remote_port": root["udp_recv_port"],
            "sndbuf": 2 * 32768,
            "reuseport": False,
        }.items()
    )
    lite = sock(captured, "root", "udplite")
    assert (
        lite.items()
        >= {
            "family": "inet6",
            "proto": "udplite",
            "protocol": 136,
            "local_address": "::1",
            "local_port": root["udplite_port"],
        }.items()
    )
    raw = sock(captured, "root", "raw")
    assert raw.items() >= {"proto": "raw", "type": "raw", "protocol": socket.IPPROTO_ICMP}.items()
    # Whether the kernel has the raw sock_diag module (raw_diag) decides whether raw
    # sockets are dumped; without it the failed dump is said, not hidden.
    if raw["diag"]:
        assert raw["state"] == "CLOSE"
    else:
        assert raw["diag_error"].startswith("raw: ENOENT")
        assert "state" not in raw


def test_netlink_and_packet(captured: Captured) -> None:
    root = captured.info["root"]
    nl = sock(captured, "root", "netlink")
    assert (
        nl.items()
        >= {
            "family": "netlink",
            "domain": socket.AF_NETLINK,
            "type": "raw",
            "protocol": socket.NETLINK_ROUTE,
            "proto": "route",
            "port_id": root["netlink_port"],
            "groups": [1, 5],
            "group_names": ["link", "ipv4_ifaddr"],
            "diag": True,
        }.items()
    )
    packet = sock(captured, "root", "packet")
    assert (
        packet.items()
        >= {
            "family": "packet",
            "type": "raw",
            "ethertype": 0x88B5,
            "interface": "lo",
            "ifindex": root["lo_index"],
            "diag": True,
        }.items()
    )


def test_families_and_protocols_nobody_handles_are_recorded_generically(
    captured: Captured,
) -> None:
    vsock = sock(captured, "root", "vsock")
    assert vsock.items() >= {"family": "vsock", "domain": 40, "type": "stream"}.items()
    assert vsock["diag"] is False
    assert "state" not in vsock
    mptcp = sock(captured, "root", "mptcp")
    assert mptcp.items() >= {"family": "inet", "protocol": 262, "diag": False}.items()
    assert "proto" not in mptcp


def test_a_process_in_its_own_network_namespace(captured: Captured) -> None:
    root, ns = captured.info["root"], captured.info["netns"]
    assert ns["netns"] != root["netns"]
    listener = sock(captured, "netns", "tcp")
    # The same address and port as the root's listener, in the other namespace: its own
    # dump found it, with its own state and backlog.
    assert (
        listener.items()
        >= {
            "netns": ns["netns"],
            "state": "LISTEN",
            "local_address": "127.0.0.1",
            "local_port": root["tcp_port"],
            "send_queue": 3,
            "diag": True,
        }.items()
    )
    abstract = sock(captured, "netns", "abstract")
    assert (
        abstract.items()
        >= {
            "netns": ns["netns"],
            "name": "@" + root["abstract_name"],  # abstract names are per namespace
            "state": "LISTEN",
        }.items()
    )
    ping = sock(captured, "netns", "ping")
    assert ping.items() >= {"family": "inet", "proto": "icmp", "type": "dgram"}.items()
    assert ping["diag"] is False  # sock_diag has no module for ping sockets
    assert ping["netns"] == ns["netns"]  # as the socket itself says (SIOCGSKNS)
    assert "netns_outside_tree" not in ping
    # Made before the child unshared: a socket of the root's namespace, found there.
    before = sock(captured, "netns", "udp_before")
    assert (
        before.items()
        >= {
            "netns": root["netns"],
            "local_port": ns["udp_before_port"],
            "diag": True,
        }.items()
    )


def test_sockets_in_a_namespace_no_task_of_the_tree_is_in(captured: Captured) -> None:
    root, moved = captured.info["root"], captured.info["moved"]
    away = moved["away"]
    assert away not in {captured.info["netns"]["netns"], root["netns"]}
    # No task of the tree is in it now (the child went back to the root's namespace).
    for pid in (captured.info[k] for k in ("pid", "child_pid", "netns_pid", "moved_pid")):
        assert os.stat(f"/proc/{pid}/ns/net").st_ino != away
    for name in ("listener", "client", "conn", "waiting", "abstract"):
        rec = sock(captured, "moved", name)
        assert (rec["netns"], rec["netns_outside_tree"], rec["diag"]) == (away, True, True)
    listener = sock(captured, "moved", "listener")
    assert (listener["state"], listener["local_port"], listener["accept_queue"]) == (
        "LISTEN",
        moved["port"],
        1,
    )
    assert [(c["remote_port"], c.get("peer_ino")) for c in listener["pending_connections"]] == [
        (moved["waiting_port"], moved["waiting_ino"])
    ]
    client, conn = sock(captured, "moved", "client"), sock(captured, "moved", "conn")
    assert (client["peer_ino"], conn["peer_ino"]) == (moved["conn_ino"], moved["client_ino"])
    assert sock(captured, "moved", "waiting")["peer_queued_on"] == moved["listener_ino"]
    abstract = sock(captured, "moved", "abstract")
    assert (abstract["state"], abstract["abstract"]) == ("LISTEN", True)
    # The tree's own namespaces are not flagged.
    assert "netns_outside_tree" not in sock(captured, "root", "tcp_listener")


def test_show_endpoints_lists_both_ends_and_flags_the_outside(captured: Captured) -> None:
    info, root, child = captured.info, captured.info["root"], captured.info["child"]
    eps = captured.doc["endpoints"]

    def ends_of(ino: int) -> list[dict[str, Any]]:
        ep = next(e for e in eps if e["kind"] == "socket" and ino in [x["ino"] for x in e["ends"]])
        return sorted(ep["ends"], key=lambda e: e["ino"] != ino)

    mine, theirs = ends_of(root["pair_a_ino"])
    assert mine["fds"] == [{"pid": info["pid"], "tid": info["pid"], "fd": root["pair_a"]}]
    assert theirs["fds"] == [
        {"pid": info["child_pid"], "tid": info["child_pid"], "fd": child["pair_b"]}
    ]
    assert not mine["outside"]
    assert not theirs["outside"]
    mine, theirs = ends_of(root["outside_sock_ino"])
    assert theirs["ino"] == captured.outside_peer_ino
    assert theirs["outside"]
    assert not theirs["fds"]
    _client, queued = ends_of(child["unix_pending_ino"])
    assert queued["pending_on"] is not None
    assert not queued["outside"]
    # TCP pairs within the tree are connections too, and so are TCP clients pending on
    # a listener of the tree.
    mine, theirs = ends_of(root["tcp_conn_ino"])
    assert theirs["ino"] == child["tcp_client_ino"]
    _client, queued = ends_of(child["queued_1_ino"])
    assert queued["pending_on"] == captured.files[(info["pid"], root["tcp_q"])]["id"]
    # The pipe whose read end the test holds.
    pipe = next(e for e in eps if e["name"] == f"pipe:[{captured.outside_pipe_ino}]")
    assert [(e["role"], e["outside"]) for e in pipe["ends"]] == [("write", False), ("read", True)]

    text = captured.endpoints_text
    assert f"socket:[{captured.outside_peer_ino}]" in text
    assert "! outside the tree" in text
    assert f"pending on listener socket:[{root['unix_listener_ino']}]" in text
    assert f"fd {root['pair_a']}u" in text
    assert f"fd {child['pair_b']}u" in text


def test_show_renders_the_records(captured: Captured) -> None:
    root = captured.info["root"]
    line = next(
        x for x in captured.table.splitlines() if f"socket:[{root['tcp_listener_ino']}]" in x
    )
    assert f"tcp LISTEN, 127.0.0.1:{root['tcp_port']}" in line
    line = next(x for x in captured.table.splitlines() if f"socket:[{root['pair_a_ino']}]" in x)
    assert "unix stream ESTABLISHED" in line
    assert "in the tree" in line


def test_an_unfrozen_capture_records_every_socket(captured: Captured, tmp_path: Path) -> None:
    image = str(tmp_path / "n.ackpt")
    pid = captured.info["pid"]
    run = subprocess.run(
        [*ASYCKPT, "tree", str(pid), "-o", image, "--freeze", "none"],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    assert "recorded generically" not in run.stderr
    doc = json.loads(
        subprocess.run([*ASYCKPT, "show", image, "--json"], capture_output=True, text=True).stdout
    )
    assert doc["consistent"] is False
    sockets = [f for f in doc["files"] if f["type"] == "socket"]
    assert len(sockets) == sum(1 for f in captured.doc["files"] if f["type"] == "socket")
    assert all(f["handler"] == "sockets" for f in sockets)
