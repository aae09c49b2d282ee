"""Tasks holding files only through their working directory, executable and mappings.

Prints one JSON line describing what it set up, then idles until killed:
  root:  its working directory is a subdirectory of the work directory; it maps a file
         (shared, read-only), a file it then deletes (shared, read-write), and a memfd;
         every fd used to map them is closed, so the mappings alone hold them;
  child: runs a copy of sleep(1) that was deleted once it ran, in a directory removed
         since.
"""

import json
import mmap
import os
import shutil
import signal
import sys
import time

PAGE = mmap.PAGESIZE


def mapped(fd: int, size: int, prot: int) -> mmap.mmap:
    m = mmap.mmap(fd, size, prot=prot)
    os.close(fd)
    return m


def deleted_child(work: str) -> int:
    """A child running a deleted copy of sleep(1) in a removed directory."""
    exe = os.path.join(work, "sleep-copy")
    shutil.copy2(shutil.which("sleep") or "/bin/sleep", exe)
    gone = os.path.join(work, "gone-dir")
    os.mkdir(gone)
    pid = os.fork()
    if pid == 0:
        os.chdir(gone)
        os.execv(exe, [exe, "1000000"])
    for _ in range(1000):  # until it runs the copy
        try:
            if os.readlink(f"/proc/{pid}/exe") == exe:
                break
        except OSError:
            pass
        time.sleep(0.01)
    os.unlink(exe)
    os.rmdir(gone)
    return pid


def main() -> None:
    work = os.path.join(sys.argv[1], "cwd")
    os.mkdir(work)
    os.chdir(work)
    with open("kept.bin", "wb") as f:
        f.write(b"k" * 2 * PAGE)
    with open("gone.bin", "wb") as f:
        f.write(b"mapped, then deleted\n" * 100)
    held = [
        mapped(os.open("kept.bin", os.O_RDONLY), 2 * PAGE, mmap.PROT_READ),
        mapped(os.open("gone.bin", os.O_RDWR), 2100, mmap.PROT_READ | mmap.PROT_WRITE),
    ]
    os.unlink("gone.bin")
    memfd = os.memfd_create("asyckpt-mapped")
    os.write(memfd, b"m" * PAGE)
    held.append(mapped(memfd, PAGE, mmap.PROT_READ))
    # mmap.mmap keeps a dup of each fd: close those too, so no fd holds the files.
    for fd in map(int, os.listdir("/proc/self/fd")):
        if fd > 2 and os.path.exists(f"/proc/self/fd/{fd}"):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith((work, "/memfd:")):
                os.close(fd)
    info = {"pid": os.getpid(), "cwd": work, "kept": os.path.join(work, "kept.bin")}
    info["gone"] = os.path.join(work, "gone.bin")
    info["child"] = deleted_child(sys.argv[1])
    print(json.dumps(info), flush=True)
    while True:
        signal.pause()


main()
