"""Socket names are bytes, kept exactly; endpoints and states printed as lsof and ss
print them.  Pure: literal input (the real sockets: tests/test_names.py)."""

from __future__ import annotations

from typing import Any

import pytest
from asyckpt_sockets import Socket, SocketHandler, endpoint_text, unix_name


@pytest.mark.parametrize(
    ("sun_path", "expected"),
    [
        (b"/run/x.sock\0junk", ("/run/x.sock", None, False)),
        (b"/run/\xff.sock", ("/run/\\xff.sock", b"/run/\xff.sock", False)),
        (b"\0abstract", ("@abstract", None, True)),
        (b"\0abs\xff", ("\\x00abs\\xff", b"\0abs\xff", True)),
        (b"\0a\0b", ("\\x00a\\x00b", b"\0a\0b", True)),  # NULs inside: no longer as @
        (b"", (None, None, False)),
    ],
)
def test_unix_socket_names(sun_path: bytes, expected: tuple[Any, ...]) -> None:
    assert unix_name(sun_path) == expected


@pytest.mark.parametrize(
    ("address", "port", "text"),
    [("127.0.0.1", 80, "127.0.0.1:80"), ("::1", 41460, "[::1]:41460"), ("::", 0, "[::]:0")],
)
def test_endpoints_print_as_lsof_and_ss_do(address: str, port: int, text: str) -> None:
    assert endpoint_text(address, port) == text


def test_unconnected_sockets_print_unconn() -> None:
    base: dict[str, Any] = {"ino": 1, "domain": 2, "protocol": 17, "diag": True}
    udp = Socket(family="inet", type="dgram", proto="udp", state="CLOSE", state_number=7,
                 local_address="::1", local_port=53, **base)  # fmt: skip
    text = SocketHandler().render_text(udp)
    assert text.startswith("[udp UNCONN, [::1]:53")
    listening = Socket(family="inet", type="stream", proto="tcp", state="LISTEN",
                       state_number=10, **base)  # fmt: skip
    assert "tcp LISTEN" in SocketHandler().render_text(listening)


def test_a_name_is_rendered_as_the_kernel_has_it() -> None:
    """render_text gives the name itself (show escapes each line it prints, once)."""
    base: dict[str, Any] = {"ino": 1, "family": "unix", "domain": 1, "type": "dgram"}
    sock = Socket(protocol=0, diag=True, name="\\x00a\\xff", name_bytes=b"\0a\xff",
                  abstract=True, **base)  # fmt: skip
    assert "name @a\udcff]" in SocketHandler().render_text(sock)
    sock = Socket(protocol=0, diag=True, name="/run/line\nbreak", **base)
    assert "name /run/line\nbreak]" in SocketHandler().render_text(sock)
