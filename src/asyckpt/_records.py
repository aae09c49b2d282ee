"""The records of an image, as msgspec Structs.

Tags are pinned by hand: a class rename must never change the on-disk format.  Fields are
only ever added, with defaults, never renamed or reordered (docs/image-format.md).

A name (path, comm, mount point...) is bytes to the kernel: its field holds it when it is
valid UTF-8, else its escaped form, with the exact bytes in the field's ``_bytes``
companion (format version 3; ``_names``).
"""

from __future__ import annotations

import struct
from typing import Annotated, Literal

import msgspec

__all__ = [
    "BE32",
    "FORMAT_VERSION",
    "MAGIC",
    "MAX_IMAGE_SIZE",
    "NO_DATA",
    "READABLE_VERSIONS",
    "Content",
    "Fd",
    "FdTable",
    "File",
    "Header",
    "Holders",
    "Lock",
    "Mapping",
    "MountEntry",
    "MountTable",
    "OutsideFd",
    "Owner",
    "PluginInfo",
    "Record",
    "Task",
    "Thread",
    "Trailer",
]

MAGIC = b"\x89ACKPT\r\n\x1a\n"
"""The first bytes of every image (docs/image-format.md)."""
BE32 = struct.Struct(">I")
"""The version field and every frame's length: unsigned 32 bits, big-endian."""
MAX_IMAGE_SIZE = 1 << 34
"""The largest input a reader accepts (16 GiB), unless told otherwise."""

FORMAT_VERSION = 4
"""Written by this asyckpt; 2 added the ``content`` record, 3 the ``_bytes`` companions
of name fields, 4 a task's files held by reference (cwd, root, exe, mappings,
namespaces; docs/image-format.md)."""

READABLE_VERSIONS = (1, 2, 3, 4)
"""Format versions this asyckpt reads."""

# Ranges a reader enforces (docs/image-format.md, "What a reader checks"): a record that
# breaks one is ImageCorrupt, never a value the renderers must guess about.
Id = Annotated[int, msgspec.Meta(ge=1)]
"""An id of the image (fd table, file): numbered from 1."""
U32 = Annotated[int, msgspec.Meta(ge=0, le=0xFFFFFFFF)]
U64 = Annotated[int, msgspec.Meta(ge=0)]
"""Non-negative; MessagePack holds nothing above 2**64 - 1."""
Offset = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
"""A size or offset in a file: what the kernel's loff_t holds."""
Pid = Annotated[int, msgspec.Meta(ge=0, le=0x7FFFFFFF)]
FdNumber = Annotated[int, msgspec.Meta(ge=0, le=0x7FFFFFFF)]
TtyNr = Annotated[int, msgspec.Meta(ge=-(2**31), le=0xFFFFFFFF)]
"""stat's tty_nr: a 32-bit device number the kernel prints signed."""
Millis = Annotated[float, msgspec.Meta(ge=0.0, le=1e15)]
"""A duration: finite and non-negative (NaN and infinities are refused)."""

FileType = Literal["reg", "dir", "link", "pipe", "fifo", "socket", "chr", "blk", "anon"]
Access = Literal["r", "w", "rw", "path"]
PathState = Literal[
    "ok",
    "deleted",
    "deleted-linked",
    "replaced",
    "missing",
    "proc-exited",
    "none",
    "unchecked",
    "too-long",
]
GhostState = Literal["none", "saved", "too-big", "off", "failed", "unchecked"]
FreezerKind = Literal["cgroup-v1", "cgroup-v2", "none"]
FreezerScope = Literal["transient", "in-place", "none"]

# msgpack nil: File.data of a generic record.  (msgspec cannot decode ``Raw | None``.)
NO_DATA = msgspec.Raw(b"\xc0")


class _Record(msgspec.Struct, tag_field="kind", kw_only=True, omit_defaults=False):
    pass


class PluginInfo(msgspec.Struct, kw_only=True):
    """One handler whose records appear in the image."""

    name: str
    distribution: str
    version: str
    record_tag: str


class Header(_Record, tag="header", kw_only=True):
    format_version: int
    asyckpt_version: str
    kernel: str
    machine: str
    hostname: str
    time: str
    """Capture time, ISO 8601 in UTC."""
    root_pid: Pid
    freezer: str
    """``cgroup-v1``, ``cgroup-v2`` or ``none``."""
    freezer_cgroup: str | None = None
    consistent: bool = True
    """False when the tree was not frozen, so the image may mix moments."""
    plugins: list[PluginInfo] = []
    freeze_mode: str = "auto"
    """What was asked: auto, cgroup:PATH, cgroup-v1, cgroup-v2 or none."""
    freezer_scope: str = "transient"
    """``transient`` (tree moved into a cgroup of asyckpt's), ``in-place`` (an existing
    cgroup frozen where it is) or ``none``."""
    pre_frozen: bool = False
    """The cgroup was frozen before asyckpt came, and was left frozen."""
    endpoint_search: Literal["tree", "system"] = "tree"
    """``system`` when who outside the tree holds its pipes' and connections' other ends
    was searched for after the thaw (``holders`` records); ``tree``: not searched."""
    hostname_bytes: bytes | None = None
    freezer_cgroup_bytes: bytes | None = None
    """The exact bytes of ``hostname`` and ``freezer_cgroup`` when not UTF-8."""


class MountEntry(msgspec.Struct, kw_only=True, array_like=True):
    mnt_id: U64
    parent_id: U64
    dev: str
    root: str
    mount_point: str
    options: str
    fstype: str
    source: str
    root_bytes: bytes | None = None
    mount_point_bytes: bytes | None = None
    fstype_bytes: bytes | None = None
    source_bytes: bytes | None = None
    """The exact bytes of each name when not UTF-8 (version 3)."""


class MountTable(_Record, tag="mounts", kw_only=True):
    """The mount table of one mount namespace, so ``File.mnt_id`` can be interpreted."""

    id: U64
    """The namespace's inode number (``stat /proc/PID/ns/mnt``)."""
    mounts: list[MountEntry]


class FdTable(_Record, tag="fdtable", kw_only=True):
    """Starts an fd table; its ``count`` Fd records follow, in ascending fd order."""

    id: Id
    owner: Pid
    """The pid or tid whose table was read."""
    count: U32


class Lock(msgspec.Struct, kw_only=True):
    """A lock or lease held through an open file description: one fdinfo ``lock:``
    line (fs/locks.c ``lock_get_status``), parsed.

    The words are the kernel's own, as it prints them, so a kind of lock that a later
    kernel adds is recorded as it is named, never mapped to a known one.  A line that
    does not have the known layout keeps only ``text`` (every other field None).
    """

    type: str | None
    """``POSIX``, ``FLOCK``, ``OFDLCK``, ``LEASE``, ``DELEG``, ``ACCESS``, ``UNKNOWN``."""
    mode: str | None
    """``ADVISORY`` or ``MANDATORY`` for locks (``*NOINODE*`` without an inode);
    ``ACTIVE``, ``BREAKING`` or ``BREAKER`` for leases."""
    access: str | None
    """``READ``, ``WRITE`` or ``UNLCK``."""
    pid: int | None
    """The owner as the kernel shows it to asyckpt: -1 for OFD locks (and leases
    without a process), 0 when the owner is not visible from asyckpt's pid namespace."""
    dev: int | None
    """The locked inode's device (userspace ``st_dev`` layout) and inode number; None
    when the kernel prints ``<none>``."""
    ino: int | None
    start: int | None
    """The first byte locked."""
    end: int | None
    """The last byte locked, inclusive; None for "to the end of the file" (``EOF``), as
    flock locks and leases always are."""
    text: str
    """The line as the kernel wrote it, after ``lock:``."""


class Owner(msgspec.Struct, kw_only=True):
    """Who the I/O signals of an open file description go to (``F_GETOWN_EX``), with
    which signal (``F_GETSIG``), and whether ``O_ASYNC`` is set."""

    pid: Pid
    """The owner, in asyckpt's pid namespace (as the image's pids are); 0 for none, or
    one not visible from there."""
    type: str
    """``tid``, ``pid`` or ``pgrp`` (F_OWNER_TID, F_OWNER_PID, F_OWNER_PGRP)."""
    signal: U32
    """The signal sent (``F_SETSIG``); 0 means SIGIO, the default."""
    async_io: bool
    """``O_ASYNC``: readiness sends the signal (only for files that support it)."""
    uid: U32 | None = None
    """The uid and euid of whoever set the owner (``F_GETOWNER_UIDS``, which needs a
    kernel with CONFIG_CHECKPOINT_RESTORE); None without, or with no owner set."""
    euid: U32 | None = None


class File(_Record, tag="file", kw_only=True, gc=False):
    """One open file description, written once, before the first Fd that refers to it."""

    id: Id
    type: FileType
    """Kernel-level kind: reg, dir, link, pipe, fifo, socket, chr, blk, anon."""
    handler: str | None
    """The handler that captured ``data``; None for a generic record."""
    flags: U32
    """Open flags as fdinfo reports them, with O_CLOEXEC removed."""
    access: Access
    """``r``, ``w``, ``rw`` or ``path`` (O_PATH)."""
    pos: int
    mnt_id: U64
    dev: U64
    ino: U64
    rdev: U64 = 0
    path: str
    """The fd's target as the owning task sees it, relative to the task's root."""
    deleted: bool = False
    uid: U32 = 0
    gid: U32 = 0
    st_mode: U32 = 0
    nlink: U64 = 0
    size: Offset = 0
    mtime_ns: int = 0
    fdinfo: list[tuple[str, str]] = []
    """fdinfo lines past pos/flags/mnt_id/ino, in kernel order."""
    data: msgspec.Raw = NO_DATA
    """The handler's own record (a tagged msgpack map), readable without the handler;
    msgpack nil when there is none."""
    error: str | None = None
    """Why the handler failed, when it did; the record is then generic."""
    path_state: PathState = "unchecked"
    """Whether ``path`` still names this file: ``ok``, ``deleted`` (unlinked, nlink 0),
    ``deleted-linked`` (its name unlinked, another hard link keeps it), ``replaced`` (the
    path names another inode now), ``missing`` (nothing there now), ``proc-exited`` (a
    /proc/PID/... file whose process has exited), ``none`` (no path: pipes, sockets,
    anon inodes, namespace files), ``too-long`` (``path`` empty: longer than PATH_MAX,
    the kernel does not give it), ``unchecked`` (could not be checked; version 1)."""
    ghost: GhostState = "unchecked"
    """An unlinked regular file's content: ``none`` (not an unlinked regular file),
    ``saved`` (in the ``content`` records after the file ``ghost_file``), ``too-big``
    (``allocated`` exceeds the ghost limit), ``off`` (ghost limit 0), ``failed``
    (``ghost_error`` says why); ``unchecked`` in version 1 images."""
    ghost_file: Id | None = None
    """The file whose ``content`` records hold this inode's data (this file, or an earlier
    description of the same inode); None unless ``ghost`` is ``saved``."""
    allocated: Offset = 0
    """Bytes allocated on disk (st_blocks * 512): what the ghost limit is compared to."""
    ghost_error: str | None = None
    """Why an unlinked file's content could not be copied (``ghost`` ``failed``), or, for
    ``too-big``, when its data outgrew the limit although its ``allocated`` did not (a
    compressing filesystem, or one that reports no blocks)."""

    locks: list[Lock] = []
    """The locks and leases held through this description, by any task of the tree
    (the ``lock:`` lines of its fds' fdinfo), in kernel order."""
    owner: Owner | None = None
    """Its I/O owner, when one is set (docs/image-format.md says for which kinds it is
    read)."""
    owner_error: str | None = None
    """Why the I/O owner could not be read (``owner`` is then None)."""
    path_bytes: bytes | None = None
    """``path``'s exact bytes when they are not UTF-8 (``path`` is then escaped)."""
    fdinfo_bytes: list[bytes] | None = None
    """When an fdinfo value is not UTF-8: every value's exact bytes, in ``fdinfo``'s
    order (its values are then all escaped)."""
    description: bool = True
    """False for a file a task holds by reference, not through an open file description
    of an fd: a working or root directory, an executable, a mapped file (format 4).
    Such a record has ``flags`` 0, ``access`` ``path``, ``pos`` 0, no ``fdinfo``; one is
    written per inode (dev, ino) for the whole tree, whoever references it."""


class Content(_Record, tag="content", kw_only=True, gc=False):
    """A run of an unlinked file's data (a data extent, or a piece of one), right after
    its ``file`` record; holes between runs are not stored (format version 2)."""

    file: Id
    offset: Offset
    data: bytes


class Fd(_Record, tag="fd", kw_only=True, gc=False):
    fd: FdNumber
    file: Id
    cloexec: bool


class Thread(msgspec.Struct, kw_only=True, array_like=True):
    tid: Pid
    fd_table: Id | None
    cwd: Id | None = None
    root_file: Id | None = None
    """The thread's own working and root directories (files of the image) when they
    differ from its task's (``unshare(CLONE_FS)``); None: the task's (format 4)."""
    namespaces: dict[str, U64] | None = None
    """The thread's own namespaces when any differs from its task's (``setns`` in one
    thread); None: the task's (format 4)."""


class Mapping(msgspec.Struct, kw_only=True, array_like=True):
    """One file-backed memory mapping of a task: a ``/proc/PID/maps`` line that names a
    file (format 4).  Anonymous mappings (heap, stack, ``[vdso]``...) are not listed."""

    start: U64
    end: U64
    """The mapped range, ``start`` inclusive, ``end`` exclusive."""
    perms: Annotated[str, msgspec.Meta(pattern="^[r-][w-][x-][ps]$")]
    """As maps prints them: ``r``/``-``, ``w``/``-``, ``x``/``-``, then ``p`` (private)
    or ``s`` (shared)."""
    offset: Offset
    """The offset in the file of ``start``."""
    file: Id
    """The file it maps (a ``file`` record with ``description`` false)."""


class Task(_Record, tag="task", kw_only=True):
    pid: Pid
    ppid: Pid
    comm: str
    starttime: U64
    """Clock ticks after boot (stat field 22): with pid, the task's identity."""
    state: str
    uid: U32
    gid: U32
    fd_table: Id | None
    """None for a zombie, which holds no files."""
    threads: list[Thread] = []
    mnt_ns: U64 = 0
    root: str = "/"
    session: Pid = 0
    """The session and process group ids (stat fields 6 and 5), as the frozen tree had
    them; 0 in images that predate these fields."""
    pgrp: Pid = 0
    tty_nr: TtyNr = 0
    """The controlling terminal's device number (userspace dev_t, stat field 7); 0 for
    none."""
    comm_bytes: bytes | None = None
    root_bytes: bytes | None = None
    """The exact bytes of ``comm`` and ``root`` when not UTF-8.  (``root`` is empty when
    longer than PATH_MAX: the kernel does not give it.)"""
    cwd: Id | None = None
    """The working directory, a file of the image (format 4); None for a zombie, when it
    could not be read (``task_files_error``), or in older images."""
    root_file: Id | None = None
    """The root directory as a file of the image (``root`` is its path); as ``cwd``."""
    exe: Id | None = None
    """The executable (``/proc/PID/exe``) as a file of the image; None as ``cwd``, and
    for kernel threads."""
    mappings: list[Mapping] = []
    """File-backed memory mappings, in address order (format 4)."""
    namespaces: dict[str, U64] = {}
    """Namespace type (``mnt``, ``net``, ``pid``, ``pid_for_children``, ``user``,
    ``uts``, ``ipc``, ``cgroup``, ``time``, ``time_for_children``) to its inode
    (``/proc/PID/ns/TYPE``); a type the kernel lacks is absent (format 4)."""
    cmdline: list[str] | None = None
    """The command line, captured only with ``--cmdline`` (format 4); each argument
    escaped when not UTF-8, with ``cmdline_bytes`` holding every argument's bytes."""
    cmdline_bytes: list[bytes] | None = None
    task_files_error: str | None = None
    """Why some of the task's files (cwd, root, exe, mappings, namespaces) could not be
    read; what was read is kept."""


class OutsideFd(msgspec.Struct, kw_only=True, array_like=True):
    """An fd of a process outside the tree on one of the tree's pipes, FIFOs or peers."""

    pid: Pid
    comm: str
    fd: FdNumber
    access: Access
    """``r``, ``w``, ``rw`` or ``path``, from its fdinfo flags (which end of a pipe)."""
    comm_bytes: bytes | None = None
    """``comm``'s exact bytes when not UTF-8."""


class Holders(_Record, tag="holders", kw_only=True):
    """Who outside the tree held one of its objects, searched for after the thaw
    (``tree --endpoints=system``; format version 3): after every task of the body."""

    type: Literal["pipe", "fifo", "socket"]
    dev: U64
    ino: U64
    """The object: a pipe or FIFO of the tree, or the socket at the other end of one of
    the tree's (``peer_ino``, ``pending``)."""
    fds: list[OutsideFd]
    """In ascending (pid, fd) order."""


class Trailer(_Record, tag="trailer", kw_only=True):
    tasks: U64
    fd_tables: U64
    fds: U64
    files: U64
    records: U64
    """Body records between header and trailer."""
    generic: dict[str, U64] = {}
    """Files no handler claimed, by kind."""
    handler_errors: U64 = 0
    freezing_ms: Millis = 0.0
    frozen_ms: Millis = 0.0
    capture_ms: Millis = 0.0
    contents: U64 = 0
    """``content`` records in the body."""
    content_bytes: U64 = 0
    """Data bytes those records hold."""


Record = Header | MountTable | FdTable | File | Content | Fd | Task | Holders | Trailer
