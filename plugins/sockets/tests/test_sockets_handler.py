"""The socket handler through asyckpt.testing, as a plugin author tests one: the
contract, a socket held by a real process captured through the whole pipeline, a
socket the sock_diag dump did not see, the rendering, and start-up costs."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from asyckpt_sockets import Socket, SocketHandler

from asyckpt.testing import (
    capture_fd,
    facts_of,
    finish_record,
    handler_context,
    hold_fd,
    load_handler,
    roundtrip,
)


def test_it_keeps_the_contract() -> None:
    loaded = load_handler(SocketHandler)
    assert loaded.record_tag == "asyckpt.socket"
    assert loaded.selectors() == ["kind socket"]
    assert loaded.hooks() == ["begin", "finish", "render_json", "render_text"]


def test_a_bound_dgram_socket_held_by_a_real_process() -> None:
    name = f"\0asyckpt-sockets-holder-{os.getpid()}"
    code = (
        "import socket; s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); "
        f"s.bind({name!r}); fd = s.fileno()"
    )
    with hold_fd(code=code) as holder:
        captured = capture_fd(SocketHandler, holder.pid, holder.fd)
        netns = os.stat(f"/proc/{holder.pid}/ns/net").st_ino
    assert captured.file.handler == "sockets", captured.file.error
    assert captured.record == Socket(
        ino=captured.file.ino,
        family="unix",
        domain=socket.AF_UNIX,
        type="dgram",
        protocol=0,
        diag=True,
        netns=netns,
        state="CLOSE",
        state_number=7,
        recv_queue=0,
        send_queue=0,
        owner_uid=os.getuid(),
        name="@" + name[1:],
        abstract=True,
    )
    # Fields that do not apply are left out of the image and of the JSON export.
    assert "peer_ino" not in captured.json["data"]
    assert captured.json["data"]["name"] == "@" + name[1:]


def test_a_socket_the_dump_did_not_see_keeps_what_its_fd_tells() -> None:
    # As with --freeze=none, when a socket appears after the dump: the dump is taken
    # first (ctx.state runs begin), the socket made afterwards.
    with handler_context(SocketHandler, os.getpid()) as ctx:
        assert ctx.state is not None
        late = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            late.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            late.bind(("127.0.0.1", 0))
            late.listen(1)
            record = SocketHandler().capture(facts_of(os.getpid(), late.fileno()), ctx)
            record = finish_record(SocketHandler, record, ctx)
            port = late.getsockname()[1]
        finally:
            late.close()
    assert isinstance(record, Socket)
    assert (record.family, record.proto, record.type, record.diag) == (
        "inet",
        "tcp",
        "stream",
        False,
    )
    assert (record.local_address, record.local_port, record.reuseaddr) == ("127.0.0.1", port, True)
    assert record.state is None
    assert record.diag_error is None


def test_rendering() -> None:
    record = Socket(
        ino=7,
        family="unix",
        domain=1,
        type="stream",
        protocol=0,
        diag=True,
        state="ESTABLISHED",
        peer_ino=8,
        peer_in_tree=False,
        recv_queue=3,
        send_queue=0,
        shutdown="write",
        peer_pid=42,
        peer_uid=0,
        peer_gid=0,
    )
    rt = roundtrip(SocketHandler, record, kind="socket", path="socket:[7]")
    assert rt.record == record
    assert rt.text == (
        "[unix stream ESTABLISHED, peer socket:[8] outside the tree, rq 3 sq 0, shut write, "
        "peer pid 42 uid 0]"
    )
    assert rt.rendered["peer_ino"] == 8
    assert rt.rendered["shutdown"] == "write"


def test_show_and_plugins_import_neither_trio_nor_sock_diag(tmp_path: Path) -> None:
    """Start-up stays lean: listing plugins and showing an image of sockets need neither
    trio nor this plugin's sock_diag code (nor pyroute2, which only names numbers after a
    capture's thaw)."""
    image = str(tmp_path / "s.ackpt")
    with hold_fd(code="import socket; a, b = socket.socketpair(); fd = a.fileno()") as holder:
        proc = subprocess.run(
            [sys.executable, "-m", "asyckpt", "tree", str(holder.pid), "-o", image, "-q"],
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, proc.stderr
    code = (
        "import sys\n"
        "from asyckpt._cli import main\n"
        "for argv in (['plugins'], ['show', sys.argv[1]], ['show', sys.argv[1], '--json', "
        "'--endpoints'], ['show', sys.argv[1], '--endpoints']):\n"
        "    assert main(argv) == 0\n"
        "heavy = ('trio', 'pyroute2', 'asyckpt_sockets.dump', 'asyckpt_sockets.diag')\n"
        "print(sorted(m for m in heavy if m in sys.modules), file=sys.stderr)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, image], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == "[]"
    assert "unix stream ESTABLISHED" in proc.stdout  # rendered by the handler
