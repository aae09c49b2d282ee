"""Unix sockets bound to names, for tests/test_restore_unix.py's round trips.

Usage: restore_unix.py WORKDIR [tree].  Under WORKDIR/run: a stream listener at a path
(backlog 7) with one connection accepted (its client shut for writing), a bound datagram
socket with an unbound one connected to it, an abstract seqpacket listener (named after
this pid) with one connection accepted, non-blocking, and two abstract datagram sockets
connected to each other.  With ``tree`` it forks a child
that keeps the clients, the parent the listeners and the accepted ends: each connection
spans the two tasks.  Prints one JSON line (pids, fd numbers, names) once ready, then
idles until killed.
"""

import json
import os
import signal
import socket
import sys

work = sys.argv[1]
tree = sys.argv[2:] == ["tree"]
null = os.open("/dev/null", os.O_RDWR)
os.dup2(null, 0)
os.dup2(null, 2)
os.close(null)
run = os.path.join(work, "run")
os.mkdir(run)
stream_path = os.path.join(run, "listen.sock")
dgram_path = os.path.join(run, "dgram.sock")
abstract = f"asyckpt-restore-unix-{os.getpid()}"

listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
listener.bind(stream_path)
listener.listen(7)
client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
client.connect(stream_path)
accepted, _ = listener.accept()
client.shutdown(socket.SHUT_WR)

server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
server.bind(dgram_path)
sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
sender.connect(dgram_path)
# Two bound datagram sockets connected to each other, in the abstract namespace.
peer1 = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
peer1.bind(f"\0{abstract}-1")
peer2 = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
peer2.bind(f"\0{abstract}-2")
peer1.connect(f"\0{abstract}-2")
peer2.connect(f"\0{abstract}-1")

alistener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
alistener.bind("\0" + abstract)
alistener.listen(3)
aclient = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
aclient.connect("\0" + abstract)
aaccepted, _ = alistener.accept()
aaccepted.setblocking(False)

clients = {"client": client, "sender": sender, "aclient": aclient, "peer2": peer2}
kept = {"listener": listener, "accepted": accepted, "server": server,
        "alistener": alistener, "aaccepted": aaccepted, "peer1": peer1}  # fmt: skip
fds = {name: s.fileno() for name, s in (clients | kept).items()}
info = {"pid": os.getpid(), "fds": fds, "stream": stream_path, "dgram": dgram_path,
        "abstract": "@" + abstract}  # fmt: skip
if tree:
    ready_r, ready_w = os.pipe()
    child = os.fork()
    if child == 0:
        for s in kept.values():
            s.close()
        os.close(ready_r)
        os.close(ready_w)  # ready
        signal.pause()
        os._exit(0)
    for s in clients.values():
        s.close()
    os.close(ready_w)
    os.read(ready_r, 1)
    os.close(ready_r)
    info["child"] = child
print(json.dumps(info), flush=True)
signal.pause()
