"""A process holding fds on memory devices, for the plugin tests (the example plugin
claims them): /dev/null on stdin and again write-only, /dev/zero read-write,
/dev/urandom read-only, and one regular file.  Prints one JSON line with the fd
numbers, then idles until killed."""

import json
import os
import signal
import sys


def main(workdir: str) -> None:
    # Whatever stdin the test runner had (a terminal, /dev/null), it is /dev/null here:
    # the tests rely on fd 0 being the first fd a handler of /dev/null sees.
    stdin = os.open("/dev/null", os.O_RDONLY)
    os.dup2(stdin, 0)
    os.close(stdin)
    out = {
        "null": os.open("/dev/null", os.O_WRONLY | os.O_APPEND),
        "zero": os.open("/dev/zero", os.O_RDWR),
        "urandom": os.open("/dev/urandom", os.O_RDONLY),
        "file": os.open(os.path.join(workdir, "plain"), os.O_RDWR | os.O_CREAT, 0o644),
        "pid": os.getpid(),
    }
    print(json.dumps(out), flush=True)
    while True:
        signal.pause()


if __name__ == "__main__":
    main(sys.argv[1])
