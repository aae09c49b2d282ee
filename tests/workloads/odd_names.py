"""A tree whose names are bytes, not text, and whose sockets are of every state.

Prints one JSON line describing what it set up (names as latin-1 strings: each char one
byte), then idles until killed.  Layout:
  root: files named b"bad\\xff\\xfebytes", "line\\nbreak", "esc\\x1b[31mred"; a live
        file really named "x (deleted)"; an unlinked file also named "x (deleted)"; an
        unlinked "plain"; a file named "y (deleted)" whose name was unlinked while
        another hard link keeps it; a memfd b"mem\\xff"; an inotify watch on
        b"watched\\xff"; a FIFO b"fifo\\xff" (both ends); a file whose path is longer
        than PATH_MAX, and an unlinked one; a unix listener bound at b"sock\\xff\\xfe"
        and a client connected to it; an abstract unix socket b"\\0abs\\xff"; an unbound
        unix datagram socket; an unconnected UDP socket; a TCP connection over ::1 (both
        ends); the read end of a pipe and one end of a unix socketpair whose other ends
        only "outsider" holds;
  child "odd": comm b"c\\xff\\x1b[2J", in a mount and network namespace of its own: a
        tmpfs from source b"src\\xff" mounted on b"mnt\\xff" (its root: it chroots
        there), a file b"in\\xff" on it, a tun device named b"t\\xff\\xfe" (its fdinfo
        says so);
  child "deep_root": chrooted in the directory longer than PATH_MAX;
  "outsider": forked twice, so that it is not in the tree (its parent exits), in the
        tree's process group (killed with it).
"""

import ctypes
import fcntl
import json
import os
import signal
import socket
import struct
import sys

from ghosts import start  # a sibling script: this directory is sys.path[0]

CLONE_NEWNS = 0x20000
CLONE_NEWNET = 0x40000000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
PR_SET_NAME = 15
TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000

ODD_COMM = b"c\xff\x1b[2J"


def idle() -> None:
    while True:
        signal.pause()


def odd_child(ready: int, workdir: bytes) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_NAME, ctypes.c_char_p(ODD_COMM), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl")
    if libc.unshare(CLONE_NEWNS | CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "unshare")
    if libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) != 0:
        raise OSError(ctypes.get_errno(), "mount --make-rprivate /")
    mnt = os.path.join(workdir, b"mnt\xff")
    os.mkdir(mnt)
    if libc.mount(b"src\xff", mnt, b"tmpfs", 0, b"size=1m") != 0:
        raise OSError(ctypes.get_errno(), "mount tmpfs")
    tun = os.open(b"/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(tun, TUNSETIFF, struct.pack("16sH", b"t\xff\xfe", IFF_TUN | IFF_NO_PI))
    os.chroot(mnt)
    os.chdir(b"/")
    inner = os.open(b"/in\xff", os.O_RDWR | os.O_CREAT, 0o644)
    os.write(ready, json.dumps({"tun": tun, "inner": inner}).encode() + b"\n")
    idle()


def deep_root_child(ready: int, level: int) -> None:
    """Chrooted where its root's path is longer than PATH_MAX."""
    os.fchdir(level)
    os.chroot(".")
    os.write(ready, b"{}\n")
    idle()


def outsider(ready: int, pipe_w: int, pair: socket.socket) -> None:
    """The grandchild: its parent exits at once, so it is reparented out of the tree."""
    if os.fork() != 0:
        os._exit(0)
    os.write(ready, json.dumps({"pid": os.getpid(), "pipe_w": pipe_w}).encode() + b"\n")
    os.close(ready)
    del pair  # its fd stays open: the peer asyckpt must find
    idle()


def main(workdir: str) -> None:
    wd = os.fsencode(workdir)
    p = lambda name: os.path.join(wd, name)  # noqa: E731
    out: dict[str, object] = {"pid": os.getpid(), "workdir": workdir}
    names: dict[str, str] = {}

    for key, name in (("bad", b"bad\xff\xfebytes"), ("line", b"line\nbreak"),
                      ("esc", b"esc\x1b[31mred"), ("live_deleted", b"x (deleted)")):  # fmt: skip
        out[key] = os.open(p(name), os.O_RDWR | os.O_CREAT, 0o644)
        names[key] = name.decode("latin-1")

    out["memfd"] = os.memfd_create("mem\udcff")  # b"mem\xff"
    os.mkdir(p(b"watched\xff"))
    libc = ctypes.CDLL(None, use_errno=True)
    out["inotify"] = libc.inotify_init1(0)
    if libc.inotify_add_watch(out["inotify"], p(b"watched\xff"), 0x100) < 0:
        raise OSError(ctypes.get_errno(), "inotify_add_watch")
    os.mkfifo(p(b"fifo\xff"))
    out["fifo"] = os.open(p(b"fifo\xff"), os.O_RDWR)
    names["fifo"] = "fifo\xff"

    sub = p(b"gone")
    os.mkdir(sub)
    out["dead_deleted"] = os.open(os.path.join(sub, b"x (deleted)"), os.O_RDWR | os.O_CREAT)
    os.unlink(os.path.join(sub, b"x (deleted)"))
    out["plain_deleted"] = os.open(p(b"plain"), os.O_RDWR | os.O_CREAT, 0o644)
    os.unlink(p(b"plain"))
    # A path longer than PATH_MAX: made one directory at a time, relative to the last.
    level = os.open(wd, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(45):
        os.mkdir(b"d" * 100, dir_fd=level)
        deeper = os.open(b"d" * 100, os.O_RDONLY | os.O_DIRECTORY, dir_fd=level)
        os.close(level)
        level = deeper
    deep_root, _ = start(deep_root_child, level)
    out["deep_root"] = deep_root
    out["deep"] = os.open(b"deep", os.O_RDWR | os.O_CREAT, 0o644, dir_fd=level)
    os.write(out["deep"], b"far down")  # type: ignore[arg-type]
    out["deep_unlinked"] = os.open(b"gone", os.O_RDWR | os.O_CREAT, 0o644, dir_fd=level)
    os.write(out["deep_unlinked"], b"far down, unlinked")  # type: ignore[arg-type]
    os.unlink(b"gone", dir_fd=level)
    os.close(level)
    linked = os.path.join(sub, b"y (deleted)")
    out["linked_deleted"] = os.open(linked, os.O_RDWR | os.O_CREAT, 0o644)
    os.link(linked, p(b"y-other-name"))
    os.unlink(linked)

    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(p(b"sock\xff\xfe"))
    listener.listen(4)
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(p(b"sock\xff\xfe"))
    accepted, _ = listener.accept()
    abstract = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    abstract.bind(b"\0abs\xff")
    unbound = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    server6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    server6.bind(("::1", 0))
    server6.listen(1)
    client6 = socket.create_connection(("::1", server6.getsockname()[1]))
    accepted6, _ = server6.accept()
    out.update(
        listener=listener.fileno(), client=client.fileno(), accepted=accepted.fileno(),
        abstract=abstract.fileno(), unbound=unbound.fileno(), udp=udp.fileno(),
        client6=client6.fileno(), accepted6=accepted6.fileno(),
        port6=server6.getsockname()[1], client6_port=client6.getsockname()[1],
    )  # fmt: skip

    pipe_r, pipe_w = os.pipe()
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    middle, outside = start(outsider, pipe_w, theirs)
    os.waitpid(middle, 0)
    os.close(pipe_w)
    theirs.close()
    out.update(pipe_r=pipe_r, pair=mine.fileno(), outsider=outside)

    odd_pid, odd = start(odd_child, wd)
    out["odd"] = {"pid": odd_pid, **odd}
    out["names"] = names
    keep = [listener, client, accepted, abstract, unbound, udp, server6, client6, accepted6, mine]
    print(json.dumps(out), flush=True)
    idle()
    del keep


if __name__ == "__main__":
    main(sys.argv[1])
