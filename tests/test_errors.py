"""Tests of the error tree, translate_oserror and collapse_errors."""

from __future__ import annotations

import errno
import os
import pickle
from collections.abc import Awaitable, Callable

import pytest
import trio

import asyckpt
from asyckpt._errors import (
    AccessDenied,
    AmbiguousTarget,
    AsyckptError,
    FreezerError,
    HandlerFailed,
    ImageCorrupt,
    ImageError,
    ImageVersionError,
    InvalidTarget,
    KernelUnsupported,
    NoSuchProcess,
    NotAnImage,
    OutputError,
    PluginError,
    RendererError,
    RestoreError,
    StrictViolation,
    TargetError,
    UsageError,
    collapse_errors,
    oserror_context,
    translate_oserror,
)

# A pid above PID_MAX_LIMIT (2**22 on 64-bit): no process can ever have it.
DEAD_PID = 2**22 + 12345


def test_dead_pid_cannot_exist() -> None:
    with open("/proc/sys/kernel/pid_max") as f:
        assert int(f.read()) < DEAD_PID
    assert not os.path.exists(f"/proc/{DEAD_PID}")


EXIT_CODES = [
    # (class, exit code, direct parent)
    (AsyckptError, 1, Exception),
    (TargetError, 3, AsyckptError),
    (NoSuchProcess, 3, TargetError),
    (InvalidTarget, 3, TargetError),
    (AmbiguousTarget, 3, TargetError),
    (AccessDenied, 4, AsyckptError),
    (OutputError, 5, AsyckptError),
    (ImageError, 6, AsyckptError),
    (NotAnImage, 6, ImageError),
    (ImageCorrupt, 6, ImageError),
    (ImageVersionError, 6, ImageError),
    (FreezerError, 7, AsyckptError),
    (StrictViolation, 8, AsyckptError),
    (PluginError, 9, AsyckptError),
    (HandlerFailed, 8, AsyckptError),
    (KernelUnsupported, 10, AsyckptError),
    (UsageError, 2, AsyckptError),
    (RendererError, 11, AsyckptError),
    (RestoreError, 13, AsyckptError),
]


@pytest.mark.parametrize(("cls", "code", "parent"), EXIT_CODES)
def test_exit_codes_and_tree(cls: type[AsyckptError], code: int, parent: type) -> None:
    assert cls.exit_code == code
    assert cls.__bases__ == (parent,)
    # Every class is public under the package's name.
    assert getattr(asyckpt, cls.__name__) is cls


def test_every_error_class_is_in_the_table() -> None:
    def walk(cls: type) -> set[type]:
        return {cls}.union(*(walk(sub) for sub in cls.__subclasses__()))

    assert walk(AsyckptError) >= {cls for cls, _, _ in EXIT_CODES}
    assert {c for c in walk(AsyckptError) if c.__module__ in ("asyckpt", "asyckpt._errors")} == {
        cls for cls, _, _ in EXIT_CODES
    }


STR_CASES = [
    # (constructor kwargs, str())
    ({}, "boom"),
    ({"pid": 1234}, "boom (pid=1234)"),
    ({"fd": 7}, "boom (fd=7)"),
    ({"pid": 1234, "fd": 7}, "boom (pid=1234, fd=7)"),
    ({"pid": 0, "fd": 0}, "boom (pid=0, fd=0)"),
    ({"pid": None, "fd": None}, "boom"),
]


@pytest.mark.parametrize(("kwargs", "text"), STR_CASES)
@pytest.mark.parametrize("cls", [cls for cls, _, _ in EXIT_CODES if cls is not HandlerFailed])
def test_str_includes_context(
    cls: type[AsyckptError], kwargs: dict[str, int | None], text: str
) -> None:
    err = cls("boom", **kwargs)
    assert str(err) == text
    assert err.msg == "boom"
    assert err.args == ("boom",)
    assert (err.pid, err.fd) == (kwargs.get("pid"), kwargs.get("fd"))


def test_handler_failed() -> None:
    err = HandlerFailed("reg", ValueError("bad magic"), pid=5, fd=7)
    assert str(err) == "handler 'reg' failed: ValueError: bad magic (pid=5, fd=7)"
    assert err.handler == "reg"
    assert (err.pid, err.fd, err.exit_code) == (5, 7, 8)


PICKLE_CASES = [
    pytest.param(AsyckptError("boom"), id="no-context"),
    pytest.param(NoSuchProcess("process exited", pid=4321), id="pid-only"),
    pytest.param(AccessDenied("permission denied", pid=1, fd=3), id="pid-and-fd"),
    pytest.param(OutputError("/x exists", fd=9), id="fd-only"),
    pytest.param(ImageVersionError("version 2", pid=None, fd=None), id="image"),
    pytest.param(HandlerFailed("reg", OSError(5, "EIO"), pid=10, fd=11), id="handler-failed"),
    pytest.param(KernelUnsupported("kcmp: not supported", pid=2, fd=0), id="fd-zero"),
]


@pytest.mark.parametrize("err", PICKLE_CASES)
@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_pickle_round_trip(err: AsyckptError, protocol: int) -> None:
    copy = pickle.loads(pickle.dumps(err, protocol=protocol))
    assert type(copy) is type(err)
    assert (copy.msg, copy.pid, copy.fd) == (err.msg, err.pid, err.fd)
    assert str(copy) == str(err)
    assert copy.args == err.args
    assert copy.__dict__ == err.__dict__


def test_pickle_keeps_extra_attributes() -> None:
    err = StrictViolation("unclaimed fd", pid=3, fd=4)
    err.kind = "socket"  # type: ignore[attr-defined]
    copy = pickle.loads(pickle.dumps(err))
    assert copy.kind == "socket"
    assert str(copy) == "unclaimed fd (pid=3, fd=4)"


MY_PID = os.getpid()

TRANSLATE_CASES = [
    # (errno, pid, fd, what, expected class, expected str)
    (errno.EACCES, 1, 3, "fdinfo", AccessDenied, "fdinfo: permission denied (pid=1, fd=3)"),
    (errno.EPERM, 1, None, "kcmp", AccessDenied, "kcmp: permission denied (pid=1)"),
    (errno.EPERM, None, None, "", AccessDenied, "permission denied"),
    # Permission wins even when the process is gone.
    (errno.EACCES, DEAD_PID, None, "", AccessDenied, f"permission denied (pid={DEAD_PID})"),
    (
        errno.ENOSYS,
        1,
        None,
        "kcmp",
        KernelUnsupported,
        "kcmp: not supported by this kernel (pid=1)",
    ),
    (errno.ENOSYS, None, None, "", KernelUnsupported, "not supported by this kernel"),
    (errno.ENOENT, DEAD_PID, 5, "fd", NoSuchProcess, f"process exited (pid={DEAD_PID}, fd=5)"),
    (errno.ESRCH, DEAD_PID, None, "kill", NoSuchProcess, f"process exited (pid={DEAD_PID})"),
    # ENOENT while the process lives is a vanished fd, not a vanished process.
    (
        errno.ENOENT,
        MY_PID,
        99,
        "fdinfo",
        AsyckptError,
        f"fdinfo: No such file or directory (pid={MY_PID}, fd=99)",
    ),
    (errno.ENOENT, None, None, "open", AsyckptError, "open: No such file or directory"),
    (errno.EIO, 1, 3, "read", AsyckptError, "read: Input/output error (pid=1, fd=3)"),
    (errno.EIO, DEAD_PID, None, "", AsyckptError, f"Input/output error (pid={DEAD_PID})"),
]


@pytest.mark.parametrize(("code", "pid", "fd", "what", "cls", "text"), TRANSLATE_CASES)
def test_translate_oserror(
    code: int, pid: int | None, fd: int | None, what: str, cls: type[AsyckptError], text: str
) -> None:
    exc = OSError(code, os.strerror(code), f"/proc/{pid}/fdinfo/{fd}")
    err = translate_oserror(exc, pid=pid, fd=fd, what=what)
    assert type(err) is cls
    assert str(err) == text
    assert (err.pid, err.fd) == (pid, fd)


def test_translate_oserror_subclasses_and_no_errno() -> None:
    assert type(translate_oserror(PermissionError(errno.EACCES, "x"))) is AccessDenied
    err = translate_oserror(ProcessLookupError(errno.ESRCH, "x"), pid=DEAD_PID)
    assert type(err) is NoSuchProcess
    bare = translate_oserror(OSError("something odd"), pid=1)
    assert type(bare) is AsyckptError
    assert str(bare) == "something odd (pid=1)"


def test_translate_a_real_oserror_for_a_dead_pid() -> None:
    with pytest.raises(FileNotFoundError) as info:
        open(f"/proc/{DEAD_PID}/stat", "rb")  # noqa: SIM115
    err = translate_oserror(info.value, pid=DEAD_PID, what="stat")
    assert type(err) is NoSuchProcess


def test_oserror_context() -> None:
    with pytest.raises(AccessDenied) as info, oserror_context(pid=1, fd=2, what="readlink"):
        raise PermissionError(errno.EPERM, "Operation not permitted")
    assert str(info.value) == "readlink: permission denied (pid=1, fd=2)"
    assert isinstance(info.value.__cause__, PermissionError)
    # Anything but OSError passes through untouched.
    original = KeyError("x")
    with pytest.raises(KeyError) as kinfo, oserror_context(pid=1):
        raise original
    assert kinfo.value is original


# --- collapse_errors around a trio nursery ---------------------------------------------------


def raiser(exc: BaseException, *, checkpoint: bool = False) -> Callable[[], Awaitable[None]]:
    async def task() -> None:
        if checkpoint:
            await trio.lowlevel.checkpoint()
        raise exc

    return task


def run_collapsed(*tasks: Callable[[], Awaitable[None]]) -> None:
    async def main() -> None:
        async with collapse_errors(), trio.open_nursery() as nursery:
            for t in tasks:
                nursery.start_soon(t)

    trio.run(main)


def leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out


def test_two_asyckpt_errors_collapse_to_the_first() -> None:
    a = NoSuchProcess("process exited", pid=10)
    b = NoSuchProcess("process exited", pid=11)
    with pytest.raises(NoSuchProcess) as info:
        run_collapsed(raiser(a), raiser(b))
    group = info.value.__cause__
    assert isinstance(group, BaseExceptionGroup)
    assert {id(e) for e in leaves(group)} == {id(a), id(b)}
    assert info.value is leaves(group)[0]


def test_mixed_asyckpt_errors_collapse_to_the_first() -> None:
    a = AccessDenied("permission denied", pid=1)
    b = FreezerError("cannot freeze", pid=2)
    with pytest.raises(AsyckptError) as info:
        run_collapsed(raiser(a), raiser(b))
    assert info.value in (a, b)
    assert isinstance(info.value.__cause__, BaseExceptionGroup)
    assert info.value is leaves(info.value.__cause__)[0]


def test_single_error_is_unwrapped() -> None:
    a = AccessDenied("permission denied", pid=1, fd=3)
    with pytest.raises(AccessDenied) as info:
        run_collapsed(raiser(a), trio.sleep_forever)
    assert info.value is a


def test_nested_groups_are_flattened() -> None:
    a = NoSuchProcess("process exited", pid=20)
    b = NoSuchProcess("process exited", pid=21)

    async def inner() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(raiser(a))
            nursery.start_soon(raiser(b))

    with pytest.raises(NoSuchProcess) as info:
        run_collapsed(inner, raiser(NoSuchProcess("x", pid=22)))
    assert info.value in leaves(info.value.__cause__)  # type: ignore[arg-type]


def test_group_with_a_foreign_exception_stays_a_group() -> None:
    a = NoSuchProcess("process exited", pid=10)
    bug = ValueError("a bug")
    with pytest.raises(ExceptionGroup) as info:
        run_collapsed(raiser(a), raiser(bug))
    assert {id(e) for e in leaves(info.value)} == {id(a), id(bug)}


def test_group_of_only_foreign_exceptions_stays_a_group() -> None:
    with pytest.raises(ExceptionGroup) as info:
        run_collapsed(raiser(KeyError("k")))
    assert [type(e) for e in info.value.exceptions] == [KeyError]


def test_keyboard_interrupt_wins() -> None:
    with pytest.raises(KeyboardInterrupt):
        run_collapsed(raiser(NoSuchProcess("x", pid=1)), raiser(KeyboardInterrupt()))


def test_no_error_passes_through() -> None:
    done: list[int] = []

    async def ok() -> None:
        await trio.lowlevel.checkpoint()
        done.append(1)

    run_collapsed(ok, ok)
    assert done == [1, 1]


def test_bare_error_outside_a_group_passes_through() -> None:
    a = OutputError("/x exists")

    async def main() -> None:
        async with collapse_errors():
            raise a

    with pytest.raises(OutputError) as info:
        trio.run(main)
    assert info.value is a
