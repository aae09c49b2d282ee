#!/usr/bin/env python3
"""A filesystem without O_TMPFILE, to test asyckpt's fallback for such filesystems: a
small in-memory FUSE server speaking the kernel's protocol on /dev/fuse directly (no
libfuse on this machine, and none needed).

usage: notmpfile_fs.py MOUNTPOINT [--noreplace]
Mounts itself at MOUNTPOINT, prints "ready", and serves until unmounted.  It answers
TMPFILE with ENOSYS, as a filesystem that lacks it does (the kernel then says EOPNOTSUPP
to open(O_TMPFILE)), and RENAME2 likewise (renameat2 with any flag is EINVAL), or with
--noreplace, supports RENAME_NOREPLACE but not RENAME_EXCHANGE (as vfat did before 6.0).
Regular files, directories, hard links, rename and unlink are real; nothing else is.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
import struct
import sys
import time
from collections.abc import Callable

IN = struct.Struct("<IIQQIIIHH")
OUT = struct.Struct("<IiQ")
ATTR = struct.Struct("<QQQQQQIIIIIIIIII")
ENTRY = struct.Struct("<QQQQII")
OPEN_OUT = struct.Struct("<QII")
WRITE_IN = struct.Struct("<QQIIQII")
READ_IN = WRITE_IN
SETATTR_IN = struct.Struct("<IIQQQQQQIIIIIIII")
INIT_OUT = struct.Struct("<IIIIHHIIHHI7I")
STATFS_OUT = struct.Struct("<QQQQQIIII6I")
DIRENT = struct.Struct("<QQII")

FATTR_MODE, FATTR_SIZE = 1 << 0, 1 << 3
FUSE_BIG_WRITES = 1 << 5
NO_REPLY = {2, 36, 42}  # FORGET, INTERRUPT, BATCH_FORGET


class Node:
    def __init__(self, ino: int, mode: int) -> None:
        self.ino = ino
        self.mode = mode
        self.data = bytearray()
        self.nlink = 2 if stat.S_ISDIR(mode) else 1
        self.children: dict[bytes, Node] = {}
        self.time = int(time.time())


class Fs:
    def __init__(self, noreplace: bool) -> None:
        self.nodes = {1: Node(1, stat.S_IFDIR | 0o755)}
        self.noreplace = noreplace

    def new(self, mode: int) -> Node:
        node = Node(max(self.nodes) + 1, mode)
        self.nodes[node.ino] = node
        return node

    @staticmethod
    def attr(n: Node) -> bytes:
        size = len(n.data)
        t = n.time
        return ATTR.pack(
            n.ino, size, (size + 511) // 512, t, t, t, 0, 0, 0, n.mode, n.nlink, 0, 0, 0, 4096, 0
        )

    def entry(self, n: Node) -> bytes:
        # Nothing cached: every lookup and stat comes here, so changes show at once.
        return ENTRY.pack(n.ino, 0, 0, 0, 0, 0) + self.attr(n)

    def attr_out(self, n: Node) -> bytes:
        return struct.pack("<QII", 0, 0, 0) + self.attr(n)

    def child(self, parent: int, name: bytes) -> Node:
        try:
            return self.nodes[parent].children[name]
        except KeyError:
            raise OSError(errno.ENOENT, "") from None

    def handle(self, op: int, nodeid: int, body: bytes) -> bytes:
        def names() -> list[bytes]:
            return body.split(b"\0")

        if op == 26:  # INIT (of no node)
            readahead = struct.unpack_from("<I", body, 8)[0]
            return INIT_OUT.pack(7, 31, readahead, FUSE_BIG_WRITES, 16, 12, 1 << 17, 1, 0, 0, 0,
                                 *[0] * 7)  # fmt: skip
        node = self.nodes.get(nodeid)
        if node is None:
            raise OSError(errno.ENOENT, "")
        if op == 1:  # LOOKUP
            return self.entry(self.child(nodeid, names()[0]))
        if op == 3:  # GETATTR
            return self.attr_out(node)
        if op == 4:  # SETATTR
            fields = SETATTR_IN.unpack_from(body)
            valid, size, mode = fields[0], fields[3], fields[11]
            if valid & FATTR_SIZE:
                del node.data[size:]
                node.data.extend(bytes(size - len(node.data)))
            if valid & FATTR_MODE:
                node.mode = stat.S_IFMT(node.mode) | stat.S_IMODE(mode)
            return self.attr_out(node)
        if op in (35, 8, 9):  # CREATE, MKNOD, MKDIR
            mode = struct.unpack_from("<I", body, 4 if op == 35 else 0)[0]
            if op == 9:
                mode |= stat.S_IFDIR
            name = body[16 if op != 9 else 8 :].split(b"\0")[0]
            if name in node.children:
                raise OSError(errno.EEXIST, "")
            child = node.children[name] = self.new(mode)
            out = self.entry(child)
            return out + OPEN_OUT.pack(0, 0, 0) if op == 35 else out
        if op in (10, 11):  # UNLINK, RMDIR
            child = self.child(nodeid, names()[0])
            if op == 11 and child.children:
                raise OSError(errno.ENOTEMPTY, "")
            del node.children[names()[0]]
            child.nlink -= 1
            return b""
        if op in (12, 45):  # RENAME, RENAME2
            (newdir,) = struct.unpack_from("<Q", body)
            skip, flags = 8, 0
            if op == 45:
                if not self.noreplace:
                    raise OSError(errno.ENOSYS, "")
                skip, flags = 16, struct.unpack_from("<I", body, 8)[0]
                if flags & ~1:
                    raise OSError(errno.EINVAL, "")
            old, new = body[skip:].split(b"\0")[:2]
            if flags and new in self.nodes[newdir].children:
                raise OSError(errno.EEXIST, "")
            moved = self.child(nodeid, old)
            target = self.nodes[newdir]
            replaced = target.children.get(new)
            if replaced is not None and replaced is not moved:
                replaced.nlink -= 1
            del node.children[old]
            target.children[new] = moved
            return b""
        if op == 13:  # LINK
            (old,) = struct.unpack_from("<Q", body)
            name = body[8:].split(b"\0")[0]
            if name in node.children:
                raise OSError(errno.EEXIST, "")
            linked = node.children[name] = self.nodes[old]
            linked.nlink += 1
            return self.entry(linked)
        if op in (14, 27):  # OPEN, OPENDIR
            return OPEN_OUT.pack(0, 0, 0)
        if op == 15:  # READ
            _, offset, size, *_ = READ_IN.unpack_from(body)
            return bytes(node.data[offset : offset + size])
        if op == 16:  # WRITE
            _, offset, size, *_ = WRITE_IN.unpack_from(body)
            data = body[WRITE_IN.size : WRITE_IN.size + size]
            if offset > len(node.data):
                node.data.extend(bytes(offset - len(node.data)))
            node.data[offset : offset + size] = data
            return struct.pack("<II", size, 0)
        if op == 17:  # STATFS
            return STATFS_OUT.pack(1 << 20, 1 << 19, 1 << 19, 1 << 20, 1 << 19, 4096, 255, 4096,
                                   0, *[0] * 6)  # fmt: skip
        if op == 28:  # READDIR
            _, offset, size, *_ = READ_IN.unpack_from(body)
            entries = [(b".", node), (b"..", node), *node.children.items()]
            out = b""
            for i, (name, child) in enumerate(entries[offset:], offset):
                rec = DIRENT.pack(child.ino, i + 1, len(name), stat.S_IFMT(child.mode) >> 12)
                rec += name + bytes(-(len(rec) + len(name)) % 8)
                if len(out) + len(rec) > size:
                    break
                out += rec
            return out
        if op in (18, 20, 25, 29, 30, 38):  # RELEASE, FSYNC, FLUSH, RELEASEDIR, FSYNCDIR, DESTROY
            return b""
        # TMPFILE (51) among them: what this filesystem lacks.
        raise OSError(errno.ENOSYS, "")


def serve(fd: int, reply: Callable[[int, int, bytes], None], noreplace: bool) -> None:
    fs = Fs(noreplace)
    while True:
        try:
            buf = os.read(fd, (1 << 17) + (1 << 16))
        except OSError as exc:
            if exc.errno in (errno.EINTR, errno.EAGAIN, errno.ENOENT):
                continue
            return  # ENODEV: unmounted
        _, op, unique, nodeid, *_ = IN.unpack_from(buf)
        if op in NO_REPLY:
            continue
        try:
            payload, err = fs.handle(op, nodeid, buf[IN.size :]), 0
        except OSError as exc:
            payload, err = b"", exc.errno or errno.EIO
        reply(unique, err, payload)
        if op == 38:
            return


def main() -> None:
    mountpoint = sys.argv[1]
    fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
    libc = ctypes.CDLL(None, use_errno=True)
    opts = f"fd={fd},rootmode=40000,user_id=0,group_id=0,allow_other".encode()
    if libc.mount(b"notmpfile", mountpoint.encode(), b"fuse.notmpfile", 0, opts) != 0:
        err = ctypes.get_errno()
        sys.exit(f"mount: {os.strerror(err)}")

    def reply(unique: int, err: int, payload: bytes) -> None:
        try:
            os.write(fd, OUT.pack(OUT.size + len(payload), -err, unique) + payload)
        except OSError as exc:
            if exc.errno != errno.ENOENT:  # the request was interrupted meanwhile
                raise

    print("ready", flush=True)
    serve(fd, reply, "--noreplace" in sys.argv[2:])


if __name__ == "__main__":
    main()
