"""One process holding every kind of fd ``asyckpt restore`` rebuilds, for
tests/test_restore.py.

Usage: restore_zoo.py WORKDIR.  Prints one JSON line (its pid and the fd numbers), then
idles until killed.  Its stdin and stderr are /dev/null; its stdout stays the pipe the
test reads (one end of a pipe whose other end is outside the table).  The epoll is made
with x86-64's packed struct epoll_event.
"""

import ctypes
import fcntl
import json
import os
import select
import signal
import socket
import struct
import sys

libc = ctypes.CDLL(None, use_errno=True)

work = sys.argv[1]
null = os.open("/dev/null", os.O_RDWR)
os.dup2(null, 0)
os.dup2(null, 2)
os.close(null)
fds = {}

# A regular file opened for append, moved; shared by two fds (dup) and a third, cloexec.
path = os.path.join(work, "data.txt")
with open(path, "wb") as f:
    f.write(b"0123456789" * 100)
reg = os.open(path, os.O_RDWR | os.O_APPEND)
os.lseek(reg, 123, os.SEEK_SET)
fds["reg"] = reg
fds["reg_dup"] = os.dup(reg)  # not inheritable: close-on-exec
os.set_inheritable(reg, True)
ro = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
os.lseek(ro, 7, os.SEEK_SET)
fds["reg_ro"] = ro
# Locks: an OFD write lock (bytes 10-19) through the shared description, a flock (shared)
# and a POSIX read lock (bytes 100 to the end) through the read-only one.
fcntl.fcntl(
    reg, fcntl.F_OFD_SETLK, struct.pack("@hhqqi", fcntl.F_WRLCK, 0, 10, 10, 0).ljust(32, b"\0")
)
fcntl.flock(ro, fcntl.LOCK_SH)
fcntl.lockf(ro, fcntl.LOCK_SH, 0, 100)
fds["dir"] = os.open(work, os.O_RDONLY | os.O_DIRECTORY)
fds["opath"] = os.open(path, os.O_PATH)
fds["null"] = os.open("/dev/null", os.O_WRONLY)

# A pipe with data queued, both ends in the table; a packet pipe; a pipe whose write
# end alone is kept.
r, w = os.pipe()
fcntl.fcntl(r, fcntl.F_SETPIPE_SZ, 65536 * 2)
os.write(w, b"queued bytes\n")
os.set_blocking(r, False)
fds["pipe_r"], fds["pipe_w"] = r, w
pr, pw = os.pipe2(os.O_DIRECT)
for packet in (b"one", b"two two", b"three"):
    os.write(pw, packet)
fds["packet_r"], fds["packet_w"] = pr, pw
lone_r, lone_w = os.pipe()
os.close(lone_r)
fds["lone_w"] = lone_w

# A FIFO open at both ends (the reader non-blocking, so that opening it did not wait).
fifo = os.path.join(work, "fifo")
os.mkfifo(fifo)
fds["fifo_r"] = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
fds["fifo_w"] = os.open(fifo, os.O_WRONLY)

# eventfds: a counter and a non-blocking semaphore.
fds["eventfd"] = os.eventfd(41)
os.eventfd_write(fds["eventfd"], 1)
fds["semaphore"] = os.eventfd(3, os.EFD_SEMAPHORE | os.EFD_NONBLOCK)

# A sealed memfd with a hole, and an unlinked regular file with content.
m = os.memfd_create("zoo memfd", os.MFD_ALLOW_SEALING)
os.pwrite(m, b"head", 0)
os.pwrite(m, b"tail", 3 * 65536)
fcntl.fcntl(m, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)
os.lseek(m, 2, os.SEEK_SET)
fds["memfd"] = m
gone = os.path.join(work, "gone.bin")
g = os.open(gone, os.O_RDWR | os.O_CREAT, 0o600)
os.write(g, b"unlinked content")
os.unlink(gone)
fds["unlinked"] = g

# A connected unix socketpair, one end shut for writing.
a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
b.shutdown(socket.SHUT_WR)
fds["sock_a"], fds["sock_b"] = a.detach(), b.detach()

# A timerfd (Python 3.11 has no os.timerfd_create): an hour away, then every 90 s.
fds["timerfd"] = libc.timerfd_create(1, 0)  # CLOCK_MONOTONIC
spec = (ctypes.c_long * 4)(90, 0, 3600, 0)  # interval, value
assert libc.timerfd_settime(fds["timerfd"], 0, spec, None) == 0
# A non-blocking signalfd for SIGUSR1 and SIGUSR2.
sigset = (ctypes.c_ulong * 16)((1 << (signal.SIGUSR1 - 1)) | (1 << (signal.SIGUSR2 - 1)))
fds["signalfd"] = libc.signalfd(-1, sigset, os.O_NONBLOCK)
# An epoll watching the pipe's read end (edge-triggered, with user data that is not an
# fd number) and the counter, added through a fd number closed since.


class Event(ctypes.Structure):
    _pack_ = 1  # x86-64's packed struct epoll_event
    _fields_ = (("events", ctypes.c_uint32), ("data", ctypes.c_uint64))


fds["epoll"] = libc.epoll_create1(0)
edge = Event(select.EPOLLIN | select.EPOLLET, 0xDEADBEEFCAFE)
assert libc.epoll_ctl(fds["epoll"], 1, fds["pipe_r"], ctypes.byref(edge)) == 0
spare = os.dup(fds["eventfd"])
assert libc.epoll_ctl(fds["epoll"], 1, spare, ctypes.byref(Event(select.EPOLLOUT, 7))) == 0
os.close(spare)

# A TCP listener (SO_REUSEADDR, backlog 7) and a bound UDP socket, on ports the kernel
# chose.
tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
tcp.bind(("127.0.0.1", 0))
tcp.listen(7)
udp = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
udp.bind(("::1", 0))
fds["tcp"], fds["udp"] = tcp.detach(), udp.detach()

# An inotify watching the work directory and the data file.
fds["inotify"] = libc.inotify_init1(os.O_NONBLOCK)
assert libc.inotify_add_watch(fds["inotify"], work.encode(), 0x100 | 0x200) == 1  # CREATE|DELETE
assert libc.inotify_add_watch(fds["inotify"], path.encode(), 0x2) == 2  # MODIFY

print(json.dumps({"pid": os.getpid(), "fds": fds}), flush=True)
signal.pause()
