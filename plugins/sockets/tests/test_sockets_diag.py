"""The sock_diag parser: table-driven on literal replies (as a 6.x kernel sent them,
x86_64, netlink header included), the requests as bytes, and the errors a dump can end
in.  Then the same parser against pyroute2's decoder on a live dump of sockets this
test makes: two independent readings of one reply must agree."""

from __future__ import annotations

import os
import socket

import pytest
from asyckpt_sockets import diag
from asyckpt_sockets.dump import Entry, _index, dump_netns

UNIX_LISTENER = (
    "6400000014000200010000006317000001010a00b084a5003f30000000000000120000002f746d702f6c"
    "69742e736f636b0000000c000100e3c020000000e00f08000300b184a5000c0004000100000005000000"
    "05000600000000000800070000000000"
)
UNIX_PENDING_CLIENT = (
    "4400000014000200010000006317000001010100b184a5003c3000000000000008000200000000000c00"
    "0400000000000000000005000600000000000800070000000000"
)
UNIX_SEQPACKET_SHUT = (
    "4400000014000200010000006317000001050100b284a5003d3000000000000008000200b384a5000c00"
    "0400050000000000000005000600020000000800070000000000"
)
TCP_LISTENER = (
    "7c000000140002000200000063170000020a00001f9000007f0000010000000000000000000000000000"
    "000000000000000000000000000000000000403000000000000000000000000000000700000000000000"
    "b484a500050008000000000008000f00000000000c00150001000000000000000600160052000000"
)
TCP6_ESTABLISHED = (
    "7c0000001400020006000000631700000a010000895c9eb7000000000000000000000000000000010000"
    "000000000000000000000000000100000000423000000000000000000000000000000000000000000000"
    "b684a500050008000000000008000f00000000000c00150001000000000000000600160012000000"
)
NETLINK_ROUTE = (
    "38000000140002000a0000006317000010030007631700000000000000000000b784a500443000000000"
    "00000c0001001100000000000000"
)
PACKET_ON_LO = (
    "44000000140002000b000000631700001103b588b884a50046300000000000001c000000010000000000"
    "0000000000000000000000000000010000000800050000000000"
)


@pytest.mark.parametrize(
    ("hexdump", "family", "expected"),
    [
        (
            UNIX_LISTENER,
            diag.AF_UNIX,
            diag.UnixDiag(
                type=1,
                state=10,
                ino=10847408,
                name=b"/tmp/lit.sock\0",
                vfs=(266338304, 2146531),
                peer=0,
                pending=(10847409,),  # the client waiting to be accepted
                rqueue=1,
                wqueue=5,
                shutdown=0,
                uid=0,
            ),
        ),
        (
            UNIX_PENDING_CLIENT,
            diag.AF_UNIX,
            diag.UnixDiag(1, 1, 10847409, None, None, 0, (), 0, 0, 0, 0),
        ),
        (
            UNIX_SEQPACKET_SHUT,
            diag.AF_UNIX,
            diag.UnixDiag(5, 1, 10847410, None, None, 10847411, (), 5, 0, 2, 0),
        ),
        (
            TCP_LISTENER,
            diag.AF_INET,
            diag.InetDiag(
                family=2,
                state=10,
                src="127.0.0.1",
                sport=8080,
                dst="0.0.0.0",
                dport=0,
                ifindex=0,
                rqueue=0,
                wqueue=7,
                uid=0,
                ino=10847412,
                protocol=None,
                shutdown=0,
                v6only=None,
            ),
        ),
        (
            TCP6_ESTABLISHED,
            diag.AF_INET6,
            diag.InetDiag(10, 1, "::1", 35164, "::1", 40631, 0, 0, 0, 0, 10847414, None, 0, None),
        ),
        (
            NETLINK_ROUTE,
            diag.AF_NETLINK,
            diag.NetlinkDiag(
                type=3,
                protocol=0,
                state=7,
                portid=5987,
                dst_portid=0,
                dst_group=0,
                ino=10847415,
                groups=(1, 5),
            ),
        ),
        (
            PACKET_ON_LO,
            diag.AF_PACKET,
            diag.PacketDiag(type=3, protocol=0x88B5, ino=10847416, ifindex=1, uid=0),
        ),
    ],
    ids=["unix-listener", "unix-pending", "unix-seqpacket", "tcp", "tcp6", "netlink", "packet"],
)
def test_decode_literal_replies(hexdump: str, family: int, expected: diag.Diag) -> None:
    buf = bytes.fromhex(hexdump)
    [(mtype, _flags, off, length)] = list(diag.messages(buf))
    assert mtype == diag.SOCK_DIAG_BY_FAMILY
    assert diag.inode_at(buf, family, off, length) == expected.ino
    assert diag.decode(buf, family, off, length) == expected
    assert not diag.check_end(buf, mtype, off, length)


def test_several_messages_and_the_end_of_a_dump() -> None:
    done = bytes.fromhex("14000000030002006317000000000000" + "00000000")
    buf = bytes.fromhex(UNIX_PENDING_CLIENT + UNIX_SEQPACKET_SHUT) + done
    msgs = list(diag.messages(buf))
    assert [(t, length) for t, _, _, length in msgs] == [(20, 52), (20, 52), (3, 4)]
    assert diag.check_end(buf, *(msgs[2][:1] + msgs[2][2:]))


@pytest.mark.parametrize(
    ("hexdump", "errno_"),
    [
        ("14000000030002000100000000000000feffffff", 2),  # DONE carrying -ENOENT
        ("24000000020000000100000000000000eaffffff" + "00" * 16, 22),  # ERROR -EINVAL
    ],
)
def test_a_refused_dump_is_an_error(hexdump: str, errno_: int) -> None:
    buf = bytes.fromhex(hexdump)
    [(mtype, _, off, length)] = list(diag.messages(buf))
    with pytest.raises(diag.DiagError) as exc:
        diag.check_end(buf, mtype, off, length)
    assert exc.value.errno == errno_


@pytest.mark.parametrize(
    "hexdump",
    [
        "6400000014000200",  # a header cut short: nothing to read
        "ff00000014000200010000006317000001010a00",  # a length past the buffer
        "0400000014000200010000006317000001010a00",  # a length below the header's
    ],
)
def test_truncated_replies_are_refused(hexdump: str) -> None:
    buf = bytes.fromhex(hexdump)
    if len(buf) < 16:
        assert list(diag.messages(buf)) == []
    else:
        with pytest.raises(ValueError, match="runs past"):
            list(diag.messages(buf))


DONE = "14000000030002006317000000000000" + "00000000"


@pytest.mark.parametrize(
    ("buffers", "indexed", "error"),
    [
        # Two buffers, as two recvs of one dump return them; the DONE ends it.
        (
            [UNIX_LISTENER, UNIX_PENDING_CLIENT + UNIX_SEQPACKET_SHUT + DONE],
            [10847408, 10847409, 10847410],
            None,
        ),
        ([DONE], [], None),  # nothing of that family
        ([UNIX_LISTENER], None, "the dump ended without NLMSG_DONE"),
        (["14000000030002000100000000000000feffffff"], None, "No such file or directory"),
    ],
    ids=["two-buffers", "empty", "no-done", "enoent"],
)
def test_indexing_a_received_dump(
    buffers: list[str], indexed: list[int] | None, error: str | None
) -> None:
    by_ino: dict[int, Entry] = {}
    bufs = [bytes.fromhex(b) for b in buffers]
    if error is None:
        _index("unix", diag.AF_UNIX, bufs, by_ino)
        assert sorted(by_ino) == indexed
        if indexed:
            assert by_ino[10847410].decode() == diag.decode(
                bytes.fromhex(UNIX_SEQPACKET_SHUT), diag.AF_UNIX, 16, 52
            )
    else:
        with pytest.raises(OSError, match=error):
            _index("unix", diag.AF_UNIX, bufs, by_ino)


def test_a_reply_too_short_for_its_family_is_refused() -> None:
    buf = bytes.fromhex(UNIX_PENDING_CLIENT)
    with pytest.raises(ValueError, match="too short for family 2"):
        diag.decode(buf, diag.AF_INET, 16, 52)


@pytest.mark.parametrize(
    ("request_", "hexdump"),
    [
        (
            diag.unix_request(1),
            "28000000140001030100000000000000010000" + "00ffffffff000000005f000000" + "00" * 8,
        ),
        (
            diag.inet_request(socket.AF_INET6, 6, 2),
            "48000000140001030200000000000000" + "0a060000b60f0000" + "00" * 48,
        ),
        (
            diag.inet_request(socket.AF_INET, 255, 3),
            "48000000140001030300000000000000" + "02ff00ffb60f0000" + "00" * 48,
        ),
        (
            diag.netlink_request(4),
            "24000000140001030400000000000000" + "10ff00000000000002000000" + "00" * 8,
        ),
        (
            diag.packet_request(5),
            "24000000140001030500000000000000" + "11000000000000000100000000" + "00" * 7,
        ),
    ],
    ids=["unix", "tcp6", "raw", "netlink", "packet"],
)
def test_requests(request_: bytes, hexdump: str) -> None:
    assert request_ == bytes.fromhex(hexdump)


def test_the_parser_agrees_with_pyroute2_on_a_live_dump(tmp_path: object) -> None:
    """Our sockets, dumped by this plugin and by pyroute2, decoded by each."""
    from pyroute2.netlink.diag import DiagSocket

    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(f"\0asyckpt-diag-test-{os.getpid()}")
    listener.listen(3)
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(f"\0asyckpt-diag-test-{os.getpid()}")
    a, b = socket.socketpair()
    a.send(b"12345")
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.bind(("127.0.0.1", 0))
    tcp.listen(4)
    mine = [listener, client, a, b]
    try:
        ours = dump_netns(os.stat("/proc/thread-self/ns/net").st_ino)
        with DiagSocket() as ds:
            ds.bind()
            theirs_unix = {m["udiag_ino"]: m for m in ds.get_sock_stats(family=socket.AF_UNIX)}
            theirs_tcp = {m["idiag_inode"]: m for m in ds.get_sock_stats(family=socket.AF_INET)}
        for s in mine:
            ino = os.fstat(s.fileno()).st_ino
            d = ours.by_ino[ino].decode()
            assert isinstance(d, diag.UnixDiag)
            t = theirs_unix[ino]
            attrs = dict(t["attrs"])
            assert (d.type, d.state) == (t["udiag_type"], t["udiag_state"])
            assert d.peer == attrs.get("UNIX_DIAG_PEER", 0)
            assert d.shutdown == attrs.get("UNIX_DIAG_SHUTDOWN")
            if "UNIX_DIAG_NAME" in attrs:
                assert d.name is not None
                assert d.name.rstrip(b"\0").lstrip(b"\0").decode() == attrs[
                    "UNIX_DIAG_NAME"
                ].lstrip("\0")
        ino = os.fstat(tcp.fileno()).st_ino
        d = ours.by_ino[ino].decode()
        t = theirs_tcp[ino]
        assert isinstance(d, diag.InetDiag)
        assert (d.state, d.src, d.sport, d.rqueue, d.wqueue, d.uid) == (
            t["idiag_state"],
            t["idiag_src"],
            t["idiag_sport"],
            t["idiag_rqueue"],
            t["idiag_wqueue"],
            t["idiag_uid"],
        )
    finally:
        for s in [*mine, tcp]:
            s.close()


@pytest.mark.parametrize(
    ("vfs", "node", "state"),
    [
        # UNIX_DIAG_VFS spells the device as the kernel keeps it (major << 20 | minor).
        ((254 << 20, 2146531), (os.makedev(254, 0), 2146531), "ok"),
        ((8 << 20 | 3, 12), (os.makedev(8, 3), 12), "ok"),
        ((8 << 20 | 3, 12), (os.makedev(8, 3), 13), "replaced"),  # another inode
        ((8 << 20 | 3, 12), (os.makedev(8, 4), 12), "replaced"),  # another filesystem
        ((8 << 20 | 3, 12), None, "unlinked"),
    ],
)
def test_name_state(vfs: tuple[int, int], node: tuple[int, int] | None, state: str) -> None:
    assert diag.name_state(vfs, node) == state


def test_the_vfs_attribute_of_a_bound_listener() -> None:
    d = diag.decode(bytes.fromhex(UNIX_LISTENER), diag.AF_UNIX, 16, len(UNIX_LISTENER) // 2 - 16)
    assert isinstance(d, diag.UnixDiag)
    assert d.vfs is not None
    assert diag.kernel_dev(d.vfs[0]) == os.makedev(254, 0)
