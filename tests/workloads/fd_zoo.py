"""A process tree holding one fd of each shape the capture tests check.

Prints one JSON line describing what it set up, then idles until killed.  Layout:
  root: files at known offsets and flags, a dup, a second open() of one file, an O_PATH
        symlink and file, a directory, an unlinked file, an fd above 1024, a pipe, a
        thread sharing the table and a thread with its own (unshare(CLONE_FILES));
  child "fork":  inherits everything, moves the shared offset, opens a file of its own;
  child "bare":  closes everything but 0-2;
  child "clone": clone(CLONE_FILES) sibling sharing the root's fd table.
"""

import ctypes
import json
import os
import resource
import signal
import sys
import threading
import time

CLONE_FILES = 0x400


def main(workdir: str) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 4096), max(hard, 4096)))
    p = lambda name: os.path.join(workdir, name)  # noqa: E731
    out = {}

    rw = os.open(p("data"), os.O_RDWR | os.O_CREAT, 0o644)
    os.write(rw, b"x" * 100)
    os.lseek(rw, 37, os.SEEK_SET)
    os.set_inheritable(rw, True)  # no close-on-exec
    out["rw"] = rw
    again = os.open(p("data"), os.O_RDONLY)
    os.read(again, 5)
    out["again"] = again
    out["dup"] = os.dup(rw)  # dup() gives close-on-exec=False, same description
    out["append"] = os.open(p("log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NONBLOCK)
    os.symlink("/etc/hostname", p("link"))
    out["opath_link"] = os.open(p("link"), os.O_PATH | os.O_NOFOLLOW)
    out["opath_file"] = os.open(p("data"), os.O_PATH)
    out["dir"] = os.open(workdir, os.O_RDONLY | os.O_DIRECTORY)
    gone = os.open(p("gone"), os.O_RDWR | os.O_CREAT, 0o600)
    os.write(gone, b"gone")
    os.unlink(p("gone"))
    out["deleted"] = gone
    out["high"] = os.dup2(rw, 1500, inheritable=False)
    r, w = os.pipe()
    out["pipe_r"], out["pipe_w"] = r, w

    libc = ctypes.PyDLL(None, use_errno=True)  # PyDLL keeps the GIL across clone()
    libc.syscall.restype = ctypes.c_long
    ready_r, ready_w = os.pipe()

    # A clone(CLONE_FILES) child shares the fd table itself, not copies of its entries.
    cloned = libc.syscall(56, CLONE_FILES | signal.SIGCHLD, 0, 0, 0, 0)
    if cloned == 0:
        while True:
            signal.pause()
    out["clone"] = cloned

    fork_child = os.fork()
    if fork_child == 0:
        os.lseek(rw, 50, os.SEEK_SET)  # moves the offset the parent sees too
        own = os.open(p("child-own"), os.O_RDWR | os.O_CREAT, 0o644)
        os.write(ready_w, f"{own}\n".encode())
        while True:
            signal.pause()
    out["fork"] = fork_child

    bare_child = os.fork()
    if bare_child == 0:
        os.closerange(3, 65536)
        while True:
            signal.pause()
    out["bare"] = bare_child
    # Ready only once the bare child has closed what it inherited: it cannot say so
    # itself (its pipes are closed with the rest), and a scan racing its closerange
    # would find fds vanishing under it.
    while any(int(fd) > 2 for fd in os.listdir(f"/proc/{bare_child}/fd")):
        time.sleep(0.001)

    out["child_own"] = int(os.read(ready_r, 64).decode().split()[0])

    unshared_ready = threading.Event()

    def unsharer() -> None:
        if libc.unshare(CLONE_FILES) != 0:
            raise OSError(ctypes.get_errno(), "unshare")
        out["thread_own"] = os.open(p("thread-own"), os.O_RDWR | os.O_CREAT, 0o644)
        out["thread_unshared"] = threading.get_native_id()
        unshared_ready.set()
        threading.Event().wait()

    def sharer() -> None:
        out["thread_shared"] = threading.get_native_id()
        threading.Event().wait()

    threading.Thread(target=sharer, daemon=True).start()
    threading.Thread(target=unsharer, daemon=True).start()
    unshared_ready.wait()
    while "thread_shared" not in out:
        pass
    out["pid"] = os.getpid()
    print(json.dumps(out), flush=True)
    while True:
        signal.pause()


if __name__ == "__main__":
    main(sys.argv[1])
