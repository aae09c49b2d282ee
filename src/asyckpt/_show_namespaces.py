"""The tree's namespaces, as ``show`` names them: once for the tree, not once per task.

What an operator asks of them is "does anything of this tree live elsewhere?", so the
root task's namespaces are the reference (the first task that has any, when the root
has none: a zombie root):

- every task and thread in the reference's namespaces: one header line that names them;
- otherwise the header line names the tasks (and threads that ``setns``-ed on their
  own) outside them, with the types that differ; each such task's ``# pid`` line says
  so too; and a section after the tasks lists each type's inodes with who is in each,
  the ones that are not the reference's starred.

Pure: lines from records, escaped by ``_show`` with the rest of the table.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

from ._records import Task

__all__ = ["NamespaceView", "namespace_view"]

_LISTED = 12
"""Members named on one line; past that, counted."""


class NamespaceView(NamedTuple):
    summary: str | None
    """The header line; None when no task has namespaces (images before format 4)."""
    task_notes: dict[int, str]
    """Pid -> what its ``# pid`` line adds when the task is not in the reference's
    namespaces: ``namespaces not pid 100's: mnt, net``."""
    section: list[str]
    """The lines after the tasks; empty when every task is in the reference's."""


class _Member(NamedTuple):
    label: str
    pid: int
    namespaces: Mapping[str, int]


def _members(tasks: Sequence[Task]) -> list[_Member]:
    out = []
    for t in tasks:
        if not t.namespaces:
            continue
        out.append(_Member(str(t.pid), t.pid, t.namespaces))
        for th in t.threads:
            if th.tid != t.pid and th.namespaces is not None and th.namespaces != t.namespaces:
                out.append(_Member(f"tid {th.tid}", t.pid, th.namespaces))
    return out


def _names(labels: list[str]) -> str:
    if len(labels) <= _LISTED:
        return ", ".join(labels)
    return ", ".join(labels[:_LISTED]) + f" (+{len(labels) - _LISTED} more)"


def _differs(ns: Mapping[str, int], ref: Mapping[str, int]) -> list[str]:
    # A type one side lacks (not read) is no evidence of another namespace.
    return sorted(k for k, ino in ns.items() if k in ref and ref[k] != ino)


def namespace_view(tasks: Sequence[Task], root_pid: int) -> NamespaceView:
    members = _members(tasks)
    if not members:
        return NamespaceView(None, {}, [])
    ref = next((m for m in members if m.label == str(root_pid)), members[0])
    outside = [(m, d) for m in members if (d := _differs(m.namespaces, ref.namespaces))]
    whose = f"pid {ref.label}'s"
    if not outside:
        listed = ", ".join(f"{k} {ref.namespaces[k]}" for k in sorted(ref.namespaces))
        who = f"pid {ref.label}" if len(members) == 1 else f"every task shares {whose}"
        return NamespaceView(f"namespaces: {who}: {listed}", {}, [])
    notes = {
        m.pid: f"namespaces not {whose}: {', '.join(types)}"
        for m, types in outside
        if m.label == str(m.pid)
    }
    summary = (
        f"namespaces: {len(outside)} of {len(members)} tasks and threads not in {whose}: "
        + _names([f"{m.label} ({', '.join(types)})" for m, types in outside])
        + "; see NAMESPACES"
    )
    section = [f"NAMESPACES (the tree's; * = not {whose})", f"{'TYPE':<18} {'INODE':>12} TASKS"]
    for kind in sorted({k for m in members for k in m.namespaces}):
        by_inode: dict[int, list[str]] = {}
        for m in members:
            if kind in m.namespaces:
                by_inode.setdefault(m.namespaces[kind], []).append(m.label)
        for ino, labels in sorted(
            by_inode.items(), key=lambda kv: kv[0] != ref.namespaces.get(kind)
        ):
            star = "" if ino == ref.namespaces.get(kind) else "*"
            section.append(f"{kind + star:<18} {ino:>12} {_names(labels)}")
    return NamespaceView(summary, notes, section)
