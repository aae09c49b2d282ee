"""Where an image goes, and how it becomes visible there.

A path (``-o IMAGE``).  The image is written into an unnamed file (``O_TMPFILE``) in
IMAGE's directory and ``linkat``-ed to IMAGE only once complete: it is never visible
under any name before, and a SIGKILL at any moment leaves nothing behind.  What is at
IMAGE is judged by ``lstat`` (never followed): nothing, or with ``force`` a regular file
or a symlink, which is replaced; anything else (a device node, a FIFO, a socket, a
directory) is refused and left untouched, ``force`` or not.  A replacement takes the old
name in one step, ``renameat2(RENAME_EXCHANGE)``, and judges what it took out before
removing it: whatever is swapped in between the check and the exchange, a device node
is put back, never destroyed.

Names exist only where they must, and a guardian process (see ``_guardian``) is told to
remove each before it is made, so that they do not outlive asyckpt either:

- where the filesystem has no ``O_TMPFILE`` (EOPNOTSUPP, EISDIR, EINVAL), the image is
  written under a hidden temporary name next to IMAGE;
- a ``force`` replacement needs the new image under a name of its own for the few
  microseconds of the exchange.

A stream (``-o -``: a file descriptor).  A pipe, a socket or a regular file; a terminal,
or any other device, is refused.

The judgement is pure (:func:`path_refusal`, :func:`stream_refusal`); the classes are
the I/O around it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import select
import stat
from collections.abc import Callable

from ._errors import OutputError
from ._escape import escape

__all__ = ["PathTarget", "StreamTarget", "is_temp_name", "path_refusal", "stream_refusal"]

# What open(O_TMPFILE) says where the filesystem cannot make unnamed files.
_NO_TMPFILE = (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL)
# What renameat2 says where the filesystem lacks the flag asked for.
_NO_RENAME2 = (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP)

_KINDS = {
    stat.S_IFCHR: "character device",
    stat.S_IFBLK: "block device",
    stat.S_IFIFO: "FIFO",
    stat.S_IFSOCK: "socket",
    stat.S_IFDIR: "directory",
    stat.S_IFREG: "regular file",
    stat.S_IFLNK: "symlink",
}


def _kind(mode: int) -> str:
    return _KINDS.get(stat.S_IFMT(mode), f"file of type {stat.S_IFMT(mode):o}")


def path_refusal(mode: int | None, *, force: bool) -> str | None:
    """Why an image may not take a name where ``lstat`` found ``mode`` (None: nothing
    there), completing ``"{path} ..."``; None when it may."""
    if mode is None:
        return None
    if stat.S_ISDIR(mode):
        return "is a directory"
    if not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
        return f"is a {_kind(mode)}; only a regular file or a symlink is ever replaced"
    if not force:
        return "exists; use --force to replace it"
    return None


def stream_refusal(mode: int, *, terminal: bool) -> str | None:
    """Why an image may not be streamed into an open file of ``mode``; None when it may."""
    if terminal:
        return "is a terminal; redirect it to a file or a pipe"
    if stat.S_ISREG(mode) or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
        return None
    return f"is a {_kind(mode)}; only a pipe, a socket or a regular file"


def write_all(
    fd: int,
    data: bytes | bytearray | memoryview,
    stop: Callable[[], object] | None = None,
    piece: int = 1 << 20,
) -> None:
    """Write every byte of ``data`` to ``fd``, ``piece`` bytes at a time.  For a stream,
    ``stop`` (which raises to stop) is asked before each piece and every 100 ms while
    waiting for room, so that a reader that stops reading cannot hold an interruption
    up: with pieces of PIPE_BUF, a write after POLLOUT never blocks."""
    view = memoryview(data)
    poller = None
    if stop is not None:
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
    while view:
        if poller is not None and stop is not None:
            while not poller.poll(100):
                stop()
            stop()
        n = os.write(fd, view[:piece])
        view = view[n:]


class _Sweeper:
    """The guardian that removes the names this capture made in one directory if asyckpt
    dies: started only when a name is needed, told about each before it is made."""

    def __init__(self, directory: str, ident: tuple[int, int]) -> None:
        from ._guardian import Guardian

        self._directory = directory
        self._ident = ident
        self._guardian: Guardian | None = None
        self._ready = False

    def start(self) -> None:
        """Start it now (not waited for): the interpreter starts while the capture runs."""
        if self._guardian is None:
            from ._errors import FreezerError
            from ._guardian import Guardian

            try:
                self._guardian = Guardian()
            except FreezerError as exc:
                raise OutputError(f"{exc.msg}; nothing was written") from exc

    def note(self, name: str, ident: tuple[int, int] | None) -> None:
        """Remove ``name`` of the directory if asyckpt dies (``ident``: only while it is
        that inode; None: only while it is a regular file)."""
        from ._errors import FreezerError

        self.start()
        assert self._guardian is not None
        try:
            if not self._ready:
                self._guardian.wait_ready()
                self._ready = True
            if ident is None:
                self._guardian.note("unlink_new", self._directory, *self._ident, name)
            else:
                self._guardian.note("unlink", self._directory, *self._ident, name, *ident)
        except FreezerError as exc:
            raise OutputError(f"{exc.msg}; nothing was written") from exc

    def close(self) -> None:
        """Everything is in place or removed: the guardian exits without doing anything."""
        guardian, self._guardian = self._guardian, None
        if guardian is not None:
            guardian.dismiss(clean=True)


def _temp_name(name: str) -> str:
    return f".{name}.asyckpt-{os.urandom(6).hex()}.tmp"


_TEMP_NAME = re.compile(r"\.[^/]+\.asyckpt-[0-9a-f]{12}\.tmp")


def is_temp_name(name: str) -> bool:
    """Whether ``name`` is one :func:`_temp_name` makes (what an undo plan may remove)."""
    return _TEMP_NAME.fullmatch(name) is not None


def _ident(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


class PathTarget:
    """IMAGE's directory, its checked name, and the unnamed file (``mode``, 0600 unless
    told) the image is written into.  Sync, for worker threads.  Creating it checks the
    name and creates the file, so a refused or unwritable destination fails before
    anything is frozen.  (``graph -o`` writes its pictures through it too.)"""

    def __init__(self, dest: str | os.PathLike[str], *, force: bool, mode: int = 0o600) -> None:
        self.path = os.path.abspath(dest)
        self.directory, self.name = os.path.split(self.path)
        self.force = force
        self.dirfd = -1
        self.fd = -1
        self._temp: str | None = None
        """The image's own temporary name, where the filesystem has no O_TMPFILE."""
        self._sweeper: _Sweeper | None = None
        self._replacing = False
        self._unnamed = True
        self.committed = False
        if not self.name:  # "/"
            raise OutputError(f"{escape(self.path)} is a directory")
        try:
            self.dirfd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise OutputError(f"directory {escape(self.directory)} does not exist") from None
        except OSError as exc:
            raise OutputError(f"cannot write in {escape(self.directory)}: {exc.strerror}") from exc
        try:
            self._sweeper = _Sweeper(self.directory, _ident(os.fstat(self.dirfd)))
            found = self._lstat()
            self._judge(found)
            self.fd = self._tmpfile()
            self._unnamed = self.fd >= 0
            if not self._unnamed:
                self.fd, self._temp = self._named()
            if mode != 0o600:
                os.fchmod(self.fd, mode)  # exactly, whatever the umask
            # The replacement will need a name for a moment (see _replace).
            self._replacing = found is not None
        except OSError as exc:
            self.abort()
            raise OutputError(f"cannot write in {escape(self.directory)}: {exc.strerror}") from exc
        except BaseException:
            self.abort()
            raise

    @property
    def spool_dir(self) -> str | None:
        """Where the capture's other spools go (unlinked files' content): next to the
        image, unless only a named file could be made there (then the temporary
        directory: only the image's own names are the guardian's to remove)."""
        return self.directory if self._unnamed else None

    def warm(self) -> None:
        """Once the tree is thawed: start the guardian a replacement will need, so that
        its interpreter starts while the records are made, not while the tree is frozen
        (nor at the link)."""
        if self._replacing:
            self._replacing = False
            self._guard.start()

    @property
    def _guard(self) -> _Sweeper:
        assert self._sweeper is not None  # made right after the directory was opened
        return self._sweeper

    def _lstat(self) -> os.stat_result | None:
        try:
            return os.stat(self.name, dir_fd=self.dirfd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def _judge(self, found: os.stat_result | None) -> None:
        reason = path_refusal(None if found is None else found.st_mode, force=self.force)
        if reason is not None:
            raise OutputError(f"{escape(self.path)} {reason}")

    def _tmpfile(self) -> int:
        """An O_TMPFILE in the directory, or -1 where the filesystem has none."""
        try:
            return os.open(".", os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600, dir_fd=self.dirfd)
        except OSError as exc:
            if exc.errno in _NO_TMPFILE:
                return -1
            raise

    def _named(self) -> tuple[int, str]:
        name = _temp_name(self.name)
        # Told before it exists: a death just after the open is covered too.
        self._guard.note(name, None)
        fd = os.open(
            name,
            os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o600,
            dir_fd=self.dirfd,
        )
        self._guard.note(name, _ident(os.fstat(fd)))
        return fd, name

    def unnamed(self) -> int:
        """Another unnamed file in the directory (the body's spool): O_TMPFILE, or a
        named one removed at once."""
        try:
            fd = self._tmpfile()
            if fd < 0:
                fd, name = self._named()
                os.unlink(name, dir_fd=self.dirfd)
        except OSError as exc:
            raise OutputError(f"cannot write in {escape(self.directory)}: {exc.strerror}") from exc
        return fd

    def commit(self) -> None:
        """Give the complete image (``fd``, fsynced) its name, then fsync the directory.
        Raises OutputError, with nothing at the name, when it may not be put there.
        :meth:`abort` follows either way: it removes what is left and dismisses the
        guardian, in that order."""
        try:
            for _ in range(3):
                try:
                    self._place()
                except FileExistsError:
                    if self._replace():
                        break
                    continue  # it vanished meanwhile: again
                break
            else:
                raise OutputError(f"{escape(self.path)} keeps changing; nothing was written")
            self.committed = True
            os.fsync(self.dirfd)
        except OSError as exc:
            if self.committed:
                raise OutputError(
                    f"{escape(self.path)} is in place but its directory could not be synced: "
                    f"{exc.strerror}"
                ) from exc
            raise OutputError(f"writing {escape(self.path)}: {exc.strerror}") from exc

    def _link(self, name: str) -> None:
        """Name the unnamed image ``name``; EEXIST rather than replace anything."""
        # linkat(AT_SYMLINK_FOLLOW) of the magic link: the way to name an O_TMPFILE that
        # needs no CAP_DAC_READ_SEARCH (AT_EMPTY_PATH does).
        os.link(f"/proc/self/fd/{self.fd}", name, dst_dir_fd=self.dirfd)

    def _place(self) -> None:
        """Give the image its name, never replacing anything (EEXIST instead)."""
        from ._kernel import RENAME_NOREPLACE, renameat2

        if self._temp is None:
            self._link(self.name)
            return
        try:
            renameat2(self.dirfd, self._temp, self.name, RENAME_NOREPLACE)
        except OSError as exc:
            if exc.errno not in _NO_RENAME2:
                raise
            # Without renameat2 flags: link, then drop the temporary name.  (vfat has the
            # flags but no hard links, so the rename comes first.)
            fd = self.dirfd
            os.link(self._temp, self.name, src_dir_fd=fd, dst_dir_fd=fd, follow_symlinks=False)
            os.unlink(self._temp, dir_fd=fd)
        self._temp = None

    def _replace(self) -> bool:
        """Swap the image in for what is at the name, if that may be replaced; False if
        the name vanished meanwhile."""
        from ._kernel import RENAME_EXCHANGE, renameat2

        found = self._lstat()
        self._judge(found)
        if found is None:
            return False
        temp = self._temp
        if temp is None:
            temp = _temp_name(self.name)
            self._guard.note(temp, _ident(os.fstat(self.fd)))
            self._link(temp)
            self._temp = temp
        # Once exchanged, the old file is at the temporary name until removed.
        self._guard.note(temp, _ident(found))
        try:
            renameat2(self.dirfd, temp, self.name, RENAME_EXCHANGE)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return False
            if exc.errno not in _NO_RENAME2:
                raise
            # No exchange on this filesystem: check once more, right before the rename.
            again = self._lstat()
            if again is None or _ident(again) != _ident(found):
                return False
            os.rename(temp, self.name, src_dir_fd=self.dirfd, dst_dir_fd=self.dirfd)
            self._temp = None
            return True
        taken = os.stat(temp, dir_fd=self.dirfd, follow_symlinks=False)
        reason = path_refusal(taken.st_mode, force=True)
        if reason is not None:
            # Swapped in since the check: put it back, untouched.
            renameat2(self.dirfd, temp, self.name, RENAME_EXCHANGE)
            raise OutputError(f"{escape(self.path)} {reason}")
        os.unlink(temp, dir_fd=self.dirfd)
        self._temp = None
        return True

    def abort(self) -> None:
        """Remove every trace of an image that was not committed.  Idempotent."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self._temp is not None and self.dirfd >= 0:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._temp, dir_fd=self.dirfd)
            self._temp = None
        if self._sweeper is not None:
            self._sweeper.close()
        if self.dirfd >= 0:
            os.close(self.dirfd)
            self.dirfd = -1


class StreamTarget:
    """An open file the image is streamed into once complete (``-o -``: standard output)."""

    def __init__(self, fd: int, *, display: str) -> None:
        self.fd = fd
        self.path = display
        self.committed = False
        try:
            st = os.fstat(fd)
        except OSError as exc:
            raise OutputError(f"{display} is not open: {exc.strerror}") from exc
        reason = stream_refusal(st.st_mode, terminal=os.isatty(fd))
        if reason is not None:
            raise OutputError(f"{display} {reason}")
        self.regular = stat.S_ISREG(st.st_mode)
        # A pipe or socket with room (POLLOUT) takes PIPE_BUF bytes without blocking, not
        # necessarily more; a regular file never blocks.
        self.piece = 1 << 20 if self.regular else select.PIPE_BUF

    @property
    def spool_dir(self) -> str | None:
        return None  # the temporary directory

    def warm(self) -> None:
        pass

    def unnamed(self) -> int:
        import tempfile

        # Kept open by the caller; O_TMPFILE where the temporary directory has it.
        f = tempfile.TemporaryFile()  # noqa: SIM115
        fd = os.dup(f.fileno())
        f.close()
        return fd
