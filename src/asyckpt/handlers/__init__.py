"""asyckpt's own handlers for regular files, directories and symlinks (O_PATH).

They are registered in asyckpt's pyproject under ``asyckpt.fd_types`` exactly as a third
party's would be, and get nothing the plugin contract does not give everyone.
"""

from __future__ import annotations

import os
from typing import ClassVar

import msgspec

from .._plugins.contract import FdFacts
from .._plugins.session import HandlerContext

__all__ = ["DirHandler", "DirRecord", "LinkHandler", "LinkRecord", "RegHandler", "RegRecord"]


class RegRecord(msgspec.Struct, tag="asyckpt.reg", tag_field="kind", kw_only=True):
    nlink: int
    blocks: int
    """Allocated 512-byte blocks: what copying an unlinked file's content would cost."""


class DirRecord(msgspec.Struct, tag="asyckpt.dir", tag_field="kind", kw_only=True):
    nlink: int


class LinkRecord(msgspec.Struct, tag="asyckpt.link", tag_field="kind", kw_only=True):
    target: str
    """What the symlink points to (readlinkat on the O_PATH descriptor itself)."""


class RegHandler:
    name: ClassVar[str] = "reg"
    kinds: ClassVar[frozenset[str]] = frozenset({"reg"})
    record_type: ClassVar[type[msgspec.Struct]] = RegRecord

    def capture(self, facts: FdFacts, ctx: HandlerContext) -> RegRecord:
        return RegRecord(nlink=facts.st.st_nlink, blocks=facts.st.st_blocks)


class DirHandler:
    name: ClassVar[str] = "dir"
    kinds: ClassVar[frozenset[str]] = frozenset({"dir"})
    record_type: ClassVar[type[msgspec.Struct]] = DirRecord

    def capture(self, facts: FdFacts, ctx: HandlerContext) -> DirRecord:
        return DirRecord(nlink=facts.st.st_nlink)


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
