"""asyckpt's handler for directories (entry point ``dir``)."""

from __future__ import annotations

from typing import ClassVar

import msgspec

from asyckpt import FdFacts, HandlerContext

__all__ = ["DirHandler", "DirRecord"]


class DirRecord(msgspec.Struct, tag="asyckpt.dir", tag_field="kind", kw_only=True):
    nlink: int


class DirHandler:
    name: ClassVar[str] = "dir"
    kinds: ClassVar[frozenset[str]] = frozenset({"dir"})
    record_type: ClassVar[type[msgspec.Struct]] = DirRecord

    def capture(self, facts: FdFacts, ctx: HandlerContext) -> DirRecord:
        return DirRecord(nlink=facts.st.st_nlink)
