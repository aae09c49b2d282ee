"""A process whose names were chosen to attack whoever reads asyckpt's output.

Its comm holds an escape sequence and a newline followed by a forged ``# pid 1`` row;
it holds open files (and a FIFO) whose names hold a newline, a terminal escape, a whole
forged row and a C1 control.  Prints one JSON line (its pid, comm and names, which the
JSON cannot mangle), then idles until killed."""

import json
import os
import signal
import sys

COMM = "\x1b[2J\n# pid 1"  # 12 bytes: the kernel keeps 15
NAMES = [
    "line\nbreak",
    "esc\x1b[31mred",
    "x\n# pid 1 (systemd) ppid 0, state S",
    "title\x1b]0;pwned\x07",
    "c1\u009b2J",
]
FIFO = "fifo\nforged"


def main(workdir: str) -> None:
    fds = {}
    for name in NAMES:
        fds[name] = os.open(os.path.join(workdir, name), os.O_RDWR | os.O_CREAT, 0o600)
    os.mkfifo(os.path.join(workdir, FIFO))
    fds[FIFO] = os.open(os.path.join(workdir, FIFO), os.O_RDWR)  # O_RDWR: no waiting
    with open("/proc/self/comm", "w") as f:
        f.write(COMM)
    info = {"pid": os.getpid(), "comm": COMM, "workdir": workdir, "fds": fds}
    print(json.dumps(info), flush=True)
    while True:
        signal.pause()


if __name__ == "__main__":
    main(sys.argv[1])
