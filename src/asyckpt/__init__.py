"""asyckpt: consistent, concurrent capture of the open-file state of Linux process trees.

The public API is re-exported here; everything in ``asyckpt._*`` is private.  Names are
imported on first use (PEP 562), so ``asyckpt show`` and ``--version`` do not pay for
importing trio.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__ as __version__

if TYPE_CHECKING:
    from ._api import CaptureStream as CaptureStream
    from ._api import checkpoint_tree as checkpoint_tree
    from ._api import open_capture as open_capture
    from ._capture import CaptureOptions as CaptureOptions
    from ._capture import CaptureSummary as CaptureSummary
    from ._diff import DiffSummary as DiffSummary
    from ._diff import FdRef as FdRef
    from ._diff import FieldChange as FieldChange
    from ._diff import ImageDiff as ImageDiff
    from ._diff import ImageRef as ImageRef
    from ._diff import TaskRef as TaskRef
    from ._diff import diff as diff
    from ._errors import AccessDenied as AccessDenied
    from ._errors import AmbiguousTarget as AmbiguousTarget
    from ._errors import AsyckptError as AsyckptError
    from ._errors import FreezerError as FreezerError
    from ._errors import HandlerFailed as HandlerFailed
    from ._errors import ImageCorrupt as ImageCorrupt
    from ._errors import ImageError as ImageError
    from ._errors import ImageVersionError as ImageVersionError
    from ._errors import InvalidTarget as InvalidTarget
    from ._errors import KernelUnsupported as KernelUnsupported
    from ._errors import NoSuchProcess as NoSuchProcess
    from ._errors import NotAnImage as NotAnImage
    from ._errors import OutputError as OutputError
    from ._errors import PluginError as PluginError
    from ._errors import RendererError as RendererError
    from ._errors import RestoreError as RestoreError
    from ._errors import StrictViolation as StrictViolation
    from ._errors import TargetError as TargetError
    from ._errors import UsageError as UsageError
    from ._image import Image as Image
    from ._image import read_image as read_image
    from ._names import escape_name as escape_name
    from ._names import name_bytes as name_bytes
    from ._names import os_name as os_name
    from ._names import split_name as split_name
    from ._plugins.contract import Device as Device
    from ._plugins.contract import FdFacts as FdFacts
    from ._plugins.contract import FdHandler as FdHandler
    from ._plugins.contract import RestoreContext as RestoreContext
    from ._plugins.contract import RestoreRefused as RestoreRefused
    from ._plugins.contract import StatInfo as StatInfo
    from ._plugins.dispatch import Dispatch as Dispatch
    from ._plugins.dispatch import PluginConflictWarning as PluginConflictWarning
    from ._plugins.links import CaptureLinks as CaptureLinks
    from ._plugins.loading import AUTOLOAD_ENV as AUTOLOAD_ENV
    from ._plugins.loading import ENTRY_POINT_GROUP as ENTRY_POINT_GROUP
    from ._plugins.loading import load_handlers as load_handlers
    from ._plugins.session import CaptureSession as CaptureSession
    from ._plugins.session import CaptureTree as CaptureTree
    from ._plugins.session import HandlerContext as HandlerContext
    from ._records import FORMAT_VERSION as FORMAT_VERSION
    from ._records import Content as Content
    from ._records import Fd as Fd
    from ._records import FdTable as FdTable
    from ._records import File as File
    from ._records import Header as Header
    from ._records import Holders as Holders
    from ._records import Lock as Lock
    from ._records import MountTable as MountTable
    from ._records import OutsideFd as OutsideFd
    from ._records import Owner as Owner
    from ._records import Task as Task
    from ._records import Trailer as Trailer
    from ._restore import restore_table as restore_table
    from ._restore_hold import restore_tree as restore_tree
    from ._restore_model import RestorePlan as RestorePlan
    from ._watch import Look as Look
    from ._watch import WatchEvent as WatchEvent
    from ._watch import watch as watch

_LAZY = {
    "CaptureStream": "._api",
    "checkpoint_tree": "._api",
    "open_capture": "._api",
    "CaptureOptions": "._capture",
    "CaptureSummary": "._capture",
    "DiffSummary": "._diff",
    "FdRef": "._diff",
    "FieldChange": "._diff",
    "ImageDiff": "._diff",
    "ImageRef": "._diff",
    "TaskRef": "._diff",
    "diff": "._diff",
    "AccessDenied": "._errors",
    "AmbiguousTarget": "._errors",
    "AsyckptError": "._errors",
    "FreezerError": "._errors",
    "HandlerFailed": "._errors",
    "ImageCorrupt": "._errors",
    "ImageError": "._errors",
    "ImageVersionError": "._errors",
    "InvalidTarget": "._errors",
    "KernelUnsupported": "._errors",
    "NoSuchProcess": "._errors",
    "NotAnImage": "._errors",
    "OutputError": "._errors",
    "PluginError": "._errors",
    "RendererError": "._errors",
    "StrictViolation": "._errors",
    "TargetError": "._errors",
    "UsageError": "._errors",
    "Image": "._image",
    "escape_name": "._names",
    "name_bytes": "._names",
    "os_name": "._names",
    "split_name": "._names",
    "read_image": "._image",
    "AUTOLOAD_ENV": "._plugins.loading",
    "ENTRY_POINT_GROUP": "._plugins.loading",
    "CaptureLinks": "._plugins.links",
    "CaptureSession": "._plugins.session",
    "CaptureTree": "._plugins.session",
    "Device": "._plugins.contract",
    "Dispatch": "._plugins.dispatch",
    "FdFacts": "._plugins.contract",
    "FdHandler": "._plugins.contract",
    "RestoreContext": "._plugins.contract",
    "RestoreRefused": "._plugins.contract",
    "HandlerContext": "._plugins.session",
    "PluginConflictWarning": "._plugins.dispatch",
    "StatInfo": "._plugins.contract",
    "load_handlers": "._plugins.loading",
    "FORMAT_VERSION": "._records",
    "Content": "._records",
    "Fd": "._records",
    "FdTable": "._records",
    "File": "._records",
    "Header": "._records",
    "Holders": "._records",
    "Lock": "._records",
    "MountTable": "._records",
    "OutsideFd": "._records",
    "Owner": "._records",
    "Task": "._records",
    "Trailer": "._records",
    "restore_table": "._restore",
    "restore_tree": "._restore_hold",
    "RestoreError": "._errors",
    "RestorePlan": "._restore_model",
    "Look": "._watch",
    "WatchEvent": "._watch",
    "watch": "._watch",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    try:
        module = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'asyckpt' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module, __name__), name)
    # Errors show as asyckpt.NoSuchProcess in tracebacks.  (Not msgspec Structs: msgspec
    # resolves their annotations in the module __module__ names.)
    if isinstance(value, type) and issubclass(value, BaseException):
        value.__module__ = "asyckpt"
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
