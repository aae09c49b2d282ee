"""What pyroute2 would cost the sockets handler, against its own sock_diag code.

usage: python plugins/sockets/bench/pyroute2_cost.py [PAIRS] [ROUNDS]

Measures (minimum over ROUNDS, the machine being shared):

* import time, in fresh interpreters with ``-X importtime`` and byte code cached (as an
  installed package has it): what ``pyroute2.netlink.diag`` (what a dump needs) and
  this plugin's ``asyckpt_sockets.dump`` (which imports ``diag``) each add to an
  interpreter that loaded the handler (``asyckpt_sockets``) already;
* one unix dump of PAIRS socketpairs (2 x PAIRS sockets, plus the host's): pyroute2's
  ``DiagSocket.get_sock_stats`` (receive and decode every message), this plugin's
  ``dump_netns`` (receive only: what the frozen window pays), its index by inode, and
  decoding every reply.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import tempfile
import time


def _top_level(code: str, env: dict[str, str]) -> dict[str, int]:
    """Cumulative microseconds of each top-level import of ``python -c CODE``."""
    err = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    ).stderr
    out = {}
    for m in re.finditer(r"^import time:\s+\d+ \|\s+(\d+) \|( +)(\S+)$", err, re.M):
        if len(m.group(2)) == 1:  # not nested in another import
            out[m.group(3)] = int(m.group(1))
    return out


def import_us(module: str, after: str, rounds: int, cache: str) -> int:
    """What importing ``module`` adds to an interpreter that imported ``after`` already
    (minimum of rounds), with byte code cached (in ``cache``) as an installed package
    has it."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = cache
    before = set(_top_level(f"import {after}", env))
    code = f"import {after}; import {module}"
    _top_level(code, env)  # writes the byte code
    return min(
        sum(us for name, us in _top_level(code, env).items() if name not in before)
        for _ in range(rounds)
    )


def best_of(rounds: int, fn: object) -> float:
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - t)
    return min(times) * 1000


def main(pairs: int = 3500, rounds: int = 7) -> None:
    print(f"python {sys.version.split()[0]}, {os.uname().release}, load {os.getloadavg()}")
    with tempfile.TemporaryDirectory() as cache:
        for module in ("pyroute2.netlink.diag", "asyckpt_sockets.dump"):
            us = import_us(module, "asyckpt_sockets", rounds, cache)
            print(f"import {module} (after asyckpt_sockets): {us / 1000:.1f} ms")

    from asyckpt_sockets import diag, dump
    from pyroute2.netlink.diag import UDIAG_SHOW_NAME, UDIAG_SHOW_PEER, DiagSocket

    keep = [socket.socketpair() for _ in range(pairs)]
    ns = os.stat("/proc/thread-self/ns/net").st_ino
    with DiagSocket() as ds:
        ds.bind()
        n = len(ds.get_sock_stats(family=socket.AF_UNIX, show=UDIAG_SHOW_NAME | UDIAG_SHOW_PEER))
        ms = best_of(
            rounds,
            lambda: ds.get_sock_stats(
                family=socket.AF_UNIX, show=UDIAG_SHOW_NAME | UDIAG_SHOW_PEER
            ),
        )
    print(f"pyroute2 get_sock_stats(AF_UNIX), {n} sockets: {ms:.1f} ms", end=" ")
    print(f"({ms / n * 1000:.1f} us/socket)")

    receive = best_of(rounds, lambda: dump.dump_netns(ns))
    d = dump.dump_netns(ns)
    n = len(d.by_ino)

    def index() -> None:
        assert dump.dump_netns(ns).by_ino

    indexed = best_of(rounds, index)

    def decode_all() -> None:
        for e in d.by_ino.values():
            e.decode()

    decoded = best_of(rounds, decode_all)
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, diag.NETLINK_SOCK_DIAG) as nl:
        unix_only = best_of(rounds, lambda: dump._receive(nl, diag.unix_request()))
    print(f"asyckpt_sockets, {n} sockets (all families):")
    print(f"  receive unix dump only: {unix_only:.1f} ms")
    print(f"  receive every dump (dump_netns): {receive:.1f} ms")
    per = (indexed - receive) / n * 1000
    print(f"  receive + index by inode: {indexed:.1f} ms ({per:.2f} us/socket)")
    print(f"  decode every reply: {decoded:.1f} ms ({decoded / n * 1000:.2f} us/socket)")
    del keep


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:3]]
    main(*args)
