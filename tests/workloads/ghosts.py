"""A tree holding unlinked files, stale paths, /proc files and a private mount.

Prints one JSON line describing what it set up, then idles until killed.  Layout:
  root: a sparse unlinked file (data, a hole, data, a hole to the end) at offset 123, a
        dup of it and a second open() of its inode; an unlinked file over 1 MiB
        allocated; a write-only unlinked file; an unlinked file held by an O_PATH fd; a
        memfd with data and a seal; a file whose name was unlinked while another hard
        link remains; a file renamed over (its old inode is unlinked); /proc/CHILD/status
        of a live child; its own net namespace file;
  child "proc":  holds /proc/G/status of its child G, which has exited and been reaped;
  child "mntns": in a mount namespace of its own, with a private tmpfs mounted where the
        parent's namespace has an empty directory: a file on it, and an unlinked one;
        and two files opened before a second tmpfs was mounted over their directory,
        where one of their names now names another file ("replaced") and the other
        nothing ("missing").
"""

import ctypes
import fcntl
import json
import os
import signal
import sys

CLONE_NEWNS = 0x20000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18

SPARSE_SIZE = 2 << 20
MIB = 1 << 20


def idle() -> None:
    while True:
        signal.pause()


def proc_child(ready: int) -> None:
    grandchild = os.fork()
    if grandchild == 0:
        idle()
    fd = os.open(f"/proc/{grandchild}/status", os.O_RDONLY)
    os.kill(grandchild, signal.SIGKILL)
    os.waitpid(grandchild, 0)
    os.write(ready, json.dumps({"fd": fd, "grandchild": grandchild}).encode() + b"\n")
    idle()


def mntns_child(ready: int, mnt: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNS) != 0:
        raise OSError(ctypes.get_errno(), "unshare")
    if libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) != 0:
        raise OSError(ctypes.get_errno(), "mount --make-rprivate /")
    if libc.mount(b"asyckpt-test", mnt.encode(), b"tmpfs", 0, b"size=4m") != 0:
        raise OSError(ctypes.get_errno(), "mount tmpfs")
    fd = os.open(os.path.join(mnt, "inside"), os.O_RDWR | os.O_CREAT, 0o644)
    os.write(fd, b"in a private tmpfs")
    ghost = os.open(os.path.join(mnt, "ghost"), os.O_RDWR | os.O_CREAT, 0o600)
    os.write(ghost, b"unlinked in a private tmpfs")
    os.unlink(os.path.join(mnt, "ghost"))
    over = os.path.join(mnt, "over")
    os.mkdir(over)
    replaced = os.open(os.path.join(over, "replaced"), os.O_RDWR | os.O_CREAT, 0o644)
    missing = os.open(os.path.join(over, "missing"), os.O_RDWR | os.O_CREAT, 0o644)
    if libc.mount(b"asyckpt-over", over.encode(), b"tmpfs", 0, b"size=1m") != 0:
        raise OSError(ctypes.get_errno(), "mount tmpfs over")
    with open(os.path.join(over, "replaced"), "w") as f:
        f.write("another file")
    info = {"fd": fd, "ghost": ghost, "replaced": replaced, "missing": missing}
    os.write(ready, json.dumps(info).encode() + b"\n")
    idle()


def start(child: object, *args: object) -> tuple[int, dict[str, int]]:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            child(w, *args)  # type: ignore[operator]
        finally:
            os._exit(1)
    os.close(w)
    with os.fdopen(r) as f:
        return pid, json.loads(f.readline())


def main(workdir: str) -> None:
    p = lambda name: os.path.join(workdir, name)  # noqa: E731
    out: dict[str, object] = {"pid": os.getpid(), "workdir": workdir}

    sparse = os.open(p("sparse"), os.O_RDWR | os.O_CREAT, 0o640)
    os.pwrite(sparse, b"A" * 5000, 0)
    os.pwrite(sparse, b"B" * 3000, MIB)
    os.ftruncate(sparse, SPARSE_SIZE)
    os.fsync(sparse)
    os.lseek(sparse, 123, os.SEEK_SET)
    out["sparse"] = sparse
    out["sparse_dup"] = os.dup(sparse)
    out["sparse_again"] = os.open(p("sparse"), os.O_RDONLY)
    os.lseek(out["sparse_again"], 7, os.SEEK_SET)  # type: ignore[arg-type]
    os.unlink(p("sparse"))

    big = os.open(p("big"), os.O_RDWR | os.O_CREAT, 0o600)
    os.write(big, os.urandom(3 * MIB))
    os.fsync(big)
    os.unlink(p("big"))
    out["big"] = big

    wronly = os.open(p("wronly"), os.O_WRONLY | os.O_CREAT, 0o200)
    os.write(wronly, b"written, never readable by its owner")
    os.unlink(p("wronly"))
    out["wronly"] = wronly

    with open(p("opath"), "w") as f:
        f.write("held only by an O_PATH fd")
    out["opath"] = os.open(p("opath"), os.O_PATH)
    os.unlink(p("opath"))

    memfd = os.memfd_create("ghost-test", os.MFD_ALLOW_SEALING)
    os.write(memfd, b"memfd-data" * 100)
    os.lseek(memfd, 5, os.SEEK_SET)
    fcntl.fcntl(memfd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_GROW)
    out["memfd"] = memfd

    with open(p("linked"), "w") as f:
        f.write("two names")
    os.link(p("linked"), p("other-name"))
    out["linked"] = os.open(p("linked"), os.O_RDONLY)
    os.unlink(p("linked"))

    with open(p("renamed-over"), "w") as f:
        f.write("old")
    out["renamed_over"] = os.open(p("renamed-over"), os.O_RDONLY)
    with open(p("renamed-over.new"), "w") as f:
        f.write("new")
    os.replace(p("renamed-over.new"), p("renamed-over"))

    out["plain"] = os.open(p("plain"), os.O_RDWR | os.O_CREAT, 0o644)
    out["netns"] = os.open("/proc/self/ns/net", os.O_RDONLY)

    proc_pid, proc_info = start(proc_child)
    out["proc_child"] = proc_pid
    out["proc_fd"] = proc_info["fd"]
    out["grandchild"] = proc_info["grandchild"]
    out["live_proc"] = os.open(f"/proc/{proc_pid}/status", os.O_RDONLY)

    os.mkdir(p("mnt"))
    mnt_pid, mnt_info = start(mntns_child, p("mnt"))
    out["mntns_child"] = mnt_pid
    out["mntns_fd"] = mnt_info["fd"]
    out["mntns_ghost"] = mnt_info["ghost"]
    out["mntns_replaced"] = mnt_info["replaced"]
    out["mntns_missing"] = mnt_info["missing"]

    print(json.dumps(out), flush=True)
    idle()


if __name__ == "__main__":
    main(sys.argv[1])
