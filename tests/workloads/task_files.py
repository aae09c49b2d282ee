"""A tree holding files by reference, not through fds (issue 13).

Prints one JSON line describing what it set up, then idles until killed.  Layout:
  root: this script under the test's interpreter;
  child "held": runs from a copy of the interpreter that it unlinked, its working
        directory a removed directory; maps (shared, read-only) a file it then unlinked
        and closed, a file whose name holds a newline and a byte that is not UTF-8, and a
        memfd it closed; a second thread that unshare(CLONE_FS) and
        chdir'd to a directory of its own;
  grandchild "ns": forked by "held", in network and UTS namespaces of its own.
The mapped file and the memfd hold known bytes (``DATA`` and ``MEMFD_DATA``), so their
content in the image can be compared byte for byte.
"""

import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import threading

CLONE_FS = 0x200
CLONE_NEWUTS = 0x04000000
CLONE_NEWNET = 0x40000000
PROT_READ = 1
MAP_SHARED = 1
PAGE = os.sysconf("SC_PAGE_SIZE")
DATA = bytes(range(256)) * (3 * PAGE // 256) + b"tail"
MEMFD_DATA = b"memfd mapped, then closed\n" * 300
ODD_NAME = b"odd\nname \xff.bin"


def idle() -> None:
    while True:
        signal.pause()


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_long,
    ]
    return libc


def map_and_close(libc: ctypes.CDLL, fd: int, size: int) -> int:
    """Map the file shared, read-only, and close the fd: only the mapping holds it.
    (Python's mmap keeps a dup of the fd open.)"""
    addr = libc.mmap(None, size, PROT_READ, MAP_SHARED, fd, 0)
    if addr in (None, ctypes.c_void_p(-1).value):
        raise OSError(ctypes.get_errno(), "mmap")
    os.close(fd)
    return int(addr)


def held(workdir: str, report: int) -> None:
    """The child, running from the interpreter's copy."""
    libc = _libc()
    os.unlink(os.path.join(workdir, "python-copy"))

    gone = os.path.join(workdir, "gone")
    os.mkdir(gone)
    os.chdir(gone)
    os.rmdir(gone)

    path = os.path.join(workdir, "mapped-data")
    with open(path, "wb") as f:
        f.write(DATA)
    fd = os.open(path, os.O_RDONLY)
    mapped = map_and_close(libc, fd, len(DATA))
    os.unlink(path)

    # A name with a newline (maps shows it as \012) and a byte that is not UTF-8.
    odd_fd = os.open(os.path.join(os.fsencode(workdir), ODD_NAME), os.O_RDWR | os.O_CREAT)
    os.write(odd_fd, b"odd")
    odd = map_and_close(libc, odd_fd, 3)

    memfd = os.memfd_create("tf-memfd")
    os.write(memfd, MEMFD_DATA)
    memfd_addr = map_and_close(libc, memfd, len(MEMFD_DATA))

    own_dir = os.path.join(workdir, "thread-dir")
    os.mkdir(own_dir)
    ready = threading.Event()
    tid: list[int] = []

    def own_fs() -> None:
        if libc.unshare(CLONE_FS) != 0:
            raise OSError(ctypes.get_errno(), "unshare(CLONE_FS)")
        os.chdir(own_dir)
        tid.append(threading.get_native_id())
        ready.set()
        idle()

    threading.Thread(target=own_fs, daemon=True).start()
    ready.wait()

    r, w = os.pipe()
    ns_child = os.fork()
    if ns_child == 0:
        os.close(r)
        if libc.unshare(CLONE_NEWNET | CLONE_NEWUTS) != 0:
            os._exit(1)
        os.write(w, b"ready\n")
        idle()
    os.close(w)
    with os.fdopen(r) as f:
        assert f.readline() == "ready\n"
    info = {
        "held": os.getpid(),
        "mapped": mapped,
        "memfd": memfd_addr,
        "odd": odd,
        "thread": tid[0],
        "ns_child": ns_child,
    }
    os.write(report, json.dumps(info).encode() + b"\n")
    os.close(report)
    idle()


def main(workdir: str) -> None:
    copy = os.path.join(workdir, "python-copy")
    real = os.path.realpath(sys.executable)
    shutil.copy2(real, copy)
    r, w = os.pipe()
    # The copy finds its library and standard library where the original does.
    env = dict(os.environ, PYTHONHOME=sys.base_prefix)
    libdir = sysconfig.get_config_var("LIBDIR")
    if libdir:
        env["LD_LIBRARY_PATH"] = libdir
    child = subprocess.Popen(
        [copy, "-S", __file__, "--held", workdir, str(w)], pass_fds=(w,), env=env
    )
    os.close(w)
    with os.fdopen(r) as f:
        info = json.loads(f.readline())
    info |= {"pid": os.getpid(), "workdir": workdir, "exe": real}
    with open(real, "rb") as f:
        info["exe_size"] = len(f.read())
    assert child.pid == info["held"]
    print(json.dumps(info), flush=True)
    idle()


if __name__ == "__main__":
    if sys.argv[1] == "--held":
        held(sys.argv[2], int(sys.argv[3]))
    else:
        main(sys.argv[1])
