"""A process holding a character device node its test made: /dev/kmsg's numbers (1:11),
a device ``restore`` does not reopen itself, for tests/test_restore_hooks.py.

Usage: device_node.py WORKDIR.  Makes WORKDIR/kmsg (mknod, chr 1:11) and a hard link
WORKDIR/other/kmsg to it, opens the node read-only and non-blocking (opening the kmsg
device for reading only starts a reader: it writes nothing) and dups it, prints one JSON
line (pid, fd, dup, path), then keeps its fds until killed.
"""

import json
import os
import signal
import sys

work = sys.argv[1]
node = os.path.join(work, "kmsg")
os.mknod(node, 0o600 | 0o020000, os.makedev(1, 11))
os.mkdir(os.path.join(work, "other"))
os.link(node, os.path.join(work, "other", "kmsg"))
null = os.open("/dev/null", os.O_RDWR)
os.dup2(null, 0)
os.dup2(null, 2)
os.close(null)
fd = os.open(node, os.O_RDONLY | os.O_NONBLOCK)
dup = os.dup(fd)  # one description at two fds (dup is close-on-exec)
print(json.dumps({"pid": os.getpid(), "fd": fd, "dup": dup, "path": node}), flush=True)
os.dup2(0, 1)
signal.pause()
