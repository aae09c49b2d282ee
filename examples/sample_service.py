"""A small asyncio HTTP service with clients connected, for checking that a capture of an
ordinary service leaves no fd opaque.

    python examples/sample_service.py [CLIENTS] [LOGDIR]

Prints the server's pid once its clients are connected, then serves until killed.  The
clients are child processes holding keep-alive connections open; the server also keeps
a log file, an eventfd-backed wakeup (asyncio's self-pipe) and its epoll.  Capture it with
``asyckpt tree PID``: with the bundled plugins installed, nothing is recorded generically.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import tempfile

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: keep-alive\r\n\r\nok\n"


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while await reader.readuntil(b"\r\n\r\n"):
        writer.write(RESPONSE)
        await writer.drain()


def client(port: int, ready: int) -> None:
    """A child holding one keep-alive connection after one request."""
    conn = socket.create_connection(("127.0.0.1", port))
    conn.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    conn.recv(4096)
    os.write(ready, b".")
    signal.pause()


async def serve(clients: int, logdir: str) -> None:
    # Opened once and held, as a service holds its log; a blocking open at start-up.
    log = open(os.path.join(logdir, "sample-service.log"), "a")  # noqa: ASYNC230, SIM115
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    r, w = os.pipe()
    for _ in range(clients):
        if os.fork() == 0:
            os.close(r)
            client(port, w)
    os.close(w)
    got = 0
    loop = asyncio.get_running_loop()
    while got < clients:
        got += len(await loop.run_in_executor(None, os.read, r, 64))
    os.close(r)
    log.write(f"serving on {port} with {clients} clients\n")
    log.flush()
    print(os.getpid(), flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(
        serve(
            int(sys.argv[1]) if len(sys.argv) > 1 else 3,
            sys.argv[2] if len(sys.argv) > 2 else tempfile.gettempdir(),
        )
    )
