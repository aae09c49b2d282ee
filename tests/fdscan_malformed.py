"""Calls every function of asyckpt._fdscan with malformed arguments, printing each case's
name before the call (so that, if this process dies, the last line names the culprit).
Run by test_fdscan_args.py in a child interpreter; exits 1 listing the calls that did not
raise a Python exception (or raised SystemError, a misuse of the C API)."""

import os
import sys

from asyckpt import _fdscan as f

me = os.getpid()
r, w = os.pipe()
st = os.fstat(r)
# A well-formed 16-field row for fd r (as read_table makes them), then variants.
row = (
    r,
    "pipe:[1]",
    st.st_mode,
    st.st_dev,
    st.st_ino,
    0,
    1,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    9,
    b"lock:\t1: POSIX ADVISORY WRITE 1 00:01:2 0 EOF\n",
)
key = (st.st_dev, st.st_ino, 0, 0)


def with_field(k, v):
    return (*row[:k], v, *row[k + 1 :])


class Evil:
    """A dict key whose __eq__ (run by a lookup of a colliding key) empties
    everything it can reach."""

    def __init__(self, victims):
        self.victims = victims

    def __hash__(self):
        return hash(r)

    def __eq__(self, other):
        for v in self.victims:
            v.clear()
        return False


rows = [row, row]
buckets = {key: [((me, r), 7)]}
evil_hints = {}
evil_hints[Evil([rows, buckets, evil_hints])] = 1
evil_bucket = [((me, w), 3)] * 50
evil_buckets = {Evil([evil_bucket]): 1, key: evil_bucket}


class ShrinkingPath:
    def __init__(self, victim):
        self.victim = victim

    def __fspath__(self):
        self.victim.clear()
        return "/proc/self/fd"


tables = [("/proc/self/fd", "/proc/self/fdinfo")] * 10
tables[0] = (ShrinkingPath(tables), "/proc/self/fdinfo")

cases = {
    "dedup: the issue's call": lambda: f.dedup_rows([(0, 0)], 1, {0: 5}, {}, {}, 0),
    "dedup: hint too short": lambda: f.dedup_rows([(0, 0)], 1, {0: (1,)}, {}, {}, 0),
    "dedup: hint ref not a tuple": lambda: f.dedup_rows([(0, 0)], 1, {0: (1, 2, 3)}, {}, {}, 0),
    "dedup: hint ref too short": lambda: f.dedup_rows([(0, 0)], 1, {0: (1, (1,), 3)}, {}, {}, 0),
    "dedup: hint ref of str": lambda: f.dedup_rows([(0, 0)], 1, {0: (1, ("a", 0), 3)}, {}, {}, 0),
    "dedup: hint ref huge": lambda: f.dedup_rows([(0, 0)], 1, {0: (1, (2**70, 0), 3)}, {}, {}, 0),
    "dedup: hint ref negative": lambda: f.dedup_rows([(0, 0)], 1, {0: (1, (-1, 0), 3)}, {}, {}, 0),
    "dedup: hint ref pid beyond int": lambda: f.dedup_rows(
        [(0, 0)], 1, {0: (1, (2**40, 0), 3)}, {}, {}, 0
    ),
    "dedup: full row, bad hint": lambda: f.dedup_rows([row], me, {r: (key, 5, 1)}, {}, {}, 0),
    "dedup: row not a tuple": lambda: f.dedup_rows([1], 1, {}, {}, {}, 0),
    "dedup: empty row": lambda: f.dedup_rows([()], 1, {}, {}, {}, 0),
    "dedup: 1-tuple row": lambda: f.dedup_rows([(0,)], 1, {}, {}, {}, 0),
    "dedup: 15-tuple row": lambda: f.dedup_rows([row[:15]], 1, {}, {}, {}, 0),
    "dedup: short row of str": lambda: f.dedup_rows([("x", 0)], 1, {}, {}, {}, 0),
    "dedup: short row flags str": lambda: f.dedup_rows([(0, "x")], 1, {}, {}, {}, 0),
    "dedup: fd huge": lambda: f.dedup_rows([(2**70, 0)], 1, {}, {}, {}, 0),
    "dedup: fd negative": lambda: f.dedup_rows([(-1, 0)], 1, {}, {}, {}, 0),
    "dedup: short row, no hint": lambda: f.dedup_rows([(0, 0)], 1, {}, {}, {}, 0),
    "dedup: dev str": lambda: f.dedup_rows([with_field(3, "x")], me, {}, {}, {}, 0),
    "dedup: pos float": lambda: f.dedup_rows([with_field(12, 1.5)], me, {}, {}, {}, 0),
    "dedup: flags negative": lambda: f.dedup_rows([with_field(13, -1)], me, {}, {}, {}, 0),
    "dedup: rest str": lambda: f.dedup_rows([with_field(15, "lock:")], me, {}, {}, {}, 0),
    "dedup: fd None": lambda: f.dedup_rows([with_field(0, None)], me, {}, {}, {}, 0),
    "dedup: bucket not a list": lambda: f.dedup_rows([row], me, {}, {}, {key: 5}, 0),
    "dedup: bucket entry int": lambda: f.dedup_rows([row], me, {}, {}, {key: [5]}, 0),
    "dedup: bucket entry short": lambda: f.dedup_rows([row], me, {}, {}, {key: [(1,)]}, 0),
    "dedup: bucket ref long": lambda: f.dedup_rows([row], me, {}, {}, {key: [((1, 2, 3), 1)]}, 0),
    "dedup: bucket ref str": lambda: f.dedup_rows([row], me, {}, {}, {key: [(("a", 1), 1)]}, 0),
    "dedup: more_locks not a list": lambda: f.dedup_rows(
        [row], me, {}, {}, {key: [((me, r), 7)]}, 0, {7: 5}
    ),
    "dedup: tid zero": lambda: f.dedup_rows([], 0, {}, {}, {}, 0),
    "dedup: tid negative": lambda: f.dedup_rows([], -1, {}, {}, {}, 0),
    "dedup: tid beyond int": lambda: f.dedup_rows([], 2**40, {}, {}, {}, 0),
    "dedup: count negative": lambda: f.dedup_rows([], 1, {}, {}, {}, -1),
    "dedup: count overflows": lambda: f.dedup_rows([row], me, {}, {}, {}, 2**63 - 1),
    "dedup: rows a tuple": lambda: f.dedup_rows((), 1, {}, {}, {}, 0),
    "dedup: hints a list": lambda: f.dedup_rows([], 1, [], {}, {}, 0),
    "dedup: no arguments": lambda: f.dedup_rows(),
    "dedup: too many": lambda: f.dedup_rows([], 1, {}, {}, {}, 0, {}, 1),
    "read_tables: not a sequence": lambda: f.read_tables(1),
    "read_tables: table an int": lambda: f.read_tables([1]),
    "read_tables: table short": lambda: f.read_tables([("/proc",)]),
    "read_tables: table long": lambda: f.read_tables([("a", "b", "c")]),
    "read_tables: table a list": lambda: f.read_tables([["/proc/self/fd", "/proc/self/fdinfo"]]),
    "read_tables: NUL in path": lambda: f.read_tables([("/proc\0", "x")]),
    "read_tables: parents too few": lambda: f.read_tables([("a", "b")], []),
    "read_tables: parent an int": lambda: f.read_tables([("a", "b")], [5]),
    "read_tables: parent short": lambda: f.read_tables([("a", "b")], [(1,)]),
    "read_tables: parent str": lambda: f.read_tables([("a", "b")], [("a", 1)]),
    "read_tables: parent huge": lambda: f.read_tables([("a", "b")], [(2**40, 1)]),
    "read_tables: parent negative": lambda: f.read_tables([("a", "b")], [(-1, 1)]),
    "read_tables: parents not a sequence": lambda: f.read_tables([("a", "b")], 3),
    "read_table: ints": lambda: f.read_table(1, 2),
    "read_table: NUL": lambda: f.read_table("\0", "x"),
    "read_table: one argument": lambda: f.read_table("/proc/self/fd"),
    "kcmp: one argument": lambda: f.kcmp_files((1, 1)),
    "kcmp: short tuple": lambda: f.kcmp_files((1,), (1, 1)),
    "kcmp: lists": lambda: f.kcmp_files([1, 1], [1, 1]),
    "kcmp: str fd": lambda: f.kcmp_files((1, "a"), (1, 1)),
    "kcmp: pid beyond int": lambda: f.kcmp_files((2**40 + me, r), (me, r)),
    "kcmp: fd beyond int": lambda: f.kcmp_files((me, 2**32 + r), (me, r)),
    "kcmp: negative": lambda: f.kcmp_files((-1, 0), (1, 0)),
    "fd_owner: str": lambda: f.fd_owner("a"),
    "fd_owner: None": lambda: f.fd_owner(None),
    "fd_owner: float": lambda: f.fd_owner(1.5),
    "fd_owner: negative": lambda: f.fd_owner(-1),
    "fd_owner: beyond int": lambda: f.fd_owner(2**32 + r),
    "fd_owner_at: one argument": lambda: f.fd_owner_at(1),
    "fd_owner_at: str": lambda: f.fd_owner_at("a", 1),
    "fd_owner_at: negative": lambda: f.fd_owner_at(-1, 0),
    "fd_owner_at: beyond int": lambda: f.fd_owner_at(0, 2**40),
    "pidfd_getfd: one argument": lambda: f.pidfd_getfd(1),
    "pidfd_getfd: str": lambda: f.pidfd_getfd("a", 1),
    "pidfd_getfd: negative": lambda: f.pidfd_getfd(0, -1),
    "pidfd_getfd: beyond int": lambda: f.pidfd_getfd(2**32, 0),
}
# Containers changed under the call: any outcome but a crash (or a SystemError).
survive = {
    "dedup: __eq__ empties rows, buckets and hints": lambda: f.dedup_rows(
        rows, me, evil_hints, {}, buckets, 0
    ),
    "dedup: __eq__ empties the bucket": lambda: f.dedup_rows([row], me, {}, {}, evil_buckets, 0),
    "read_tables: __fspath__ empties the list": lambda: f.read_tables(tables),
}
failures = []
for name, call in [*cases.items(), *survive.items()]:
    print(name, flush=True)  # the last line names the culprit if this process dies
    try:
        result = call()
    except SystemError as exc:
        failures.append(f"{name}: SystemError {exc}")
    except Exception:
        pass
    else:
        if name in cases:
            failures.append(f"{name}: returned {result!r}")
print("FAILURES", failures, flush=True)
sys.exit(1 if failures else 0)
