"""One process holding an unlinked regular file through three descriptions, for
tests/test_restore_unlinked.py.

Usage: restore_unlinked.py WORKDIR DIR [MODE].  Makes DIR/data.bin (mode MODE, octal,
default 0640) with a hole
between "head" and "tail", opens it read-write (and dups that), read-only and
write-only with O_APPEND, each at its own position, and unlinks it; makes another file
in DIR with O_TMPFILE (as tempfile.TemporaryFile does: never named); prints one JSON line
(its pid and the fd numbers), then idles until killed.  Its stdin and stderr are
/dev/null.
"""

import json
import os
import signal
import sys

null = os.open("/dev/null", os.O_RDWR)
os.dup2(null, 0)
os.dup2(null, 2)
os.close(null)
directory = sys.argv[2]
path = os.path.join(directory, "data.bin")
fds = {}
mode = int(sys.argv[3], 8) if len(sys.argv) > 3 else 0o640
fds["rw"] = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
os.pwrite(fds["rw"], b"head", 0)
os.pwrite(fds["rw"], b"tail", 1 << 20)  # a hole of a MiB between
fds["rw_dup"] = os.dup(fds["rw"])
fds["ro"] = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
fds["wo"] = os.open(path, os.O_WRONLY | os.O_APPEND)
os.fchmod(fds["rw"], mode)  # once opened, whatever the umask
os.unlink(path)
os.lseek(fds["rw"], 5, os.SEEK_SET)
os.lseek(fds["ro"], 3, os.SEEK_SET)
os.lseek(fds["wo"], 7, os.SEEK_SET)
fds["tmpfile"] = os.open(directory, os.O_TMPFILE | os.O_RDWR, 0o600)
os.write(fds["tmpfile"], b"made unnamed")
print(json.dumps({"pid": os.getpid(), "fds": fds}), flush=True)
signal.pause()
