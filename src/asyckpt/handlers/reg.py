"""asyckpt's handler for regular files (entry point ``reg``)."""

from __future__ import annotations

from typing import ClassVar

import msgspec

from asyckpt import FdFacts, HandlerContext

__all__ = ["RegHandler", "RegRecord"]


class RegRecord(msgspec.Struct, tag="asyckpt.reg", tag_field="kind", kw_only=True):
    nlink: int
    blocks: int
    """Allocated 512-byte blocks: what copying an unlinked file's content would cost."""


class RegHandler:
    name: ClassVar[str] = "reg"
    kinds: ClassVar[frozenset[str]] = frozenset({"reg"})
    record_type: ClassVar[type[msgspec.Struct]] = RegRecord

    def capture(self, facts: FdFacts, ctx: HandlerContext) -> RegRecord:
        return RegRecord(nlink=facts.st.st_nlink, blocks=facts.st.st_blocks)
