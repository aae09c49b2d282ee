"""asyckpt's handler for symlinks opened with O_PATH | O_NOFOLLOW (entry point ``link``)."""

from __future__ import annotations

import os
from typing import ClassVar

import msgspec

from asyckpt import FdFacts, HandlerContext

__all__ = ["LinkHandler", "LinkRecord"]


class LinkRecord(msgspec.Struct, tag="asyckpt.link", tag_field="kind", kw_only=True):
    target: str
    """What the symlink points to (readlinkat on the O_PATH descriptor itself)."""


class LinkHandler:
    name: ClassVar[str] = "link"
    kinds: ClassVar[frozenset[str]] = frozenset({"link"})
    record_type: ClassVar[type[msgspec.Struct]] = LinkRecord

    def capture(self, facts: FdFacts, ctx: HandlerContext) -> LinkRecord:
        # The path the fd was opened by may since name something else; the descriptor
        # itself still pins the symlink inode, so read the target through it.
        fd = ctx.take_fd(facts.fd)
        return LinkRecord(target=os.readlink("", dir_fd=fd))

    def render_text(self, record: LinkRecord) -> str:
        return f"-> {record.target}"
