"""Validation: a handler object becomes a :class:`LoadedHandler`, or a PluginError.

Everything a handler declares is checked against the contract (.contract) and
normalized here, once per load, so that dispatch can turn it into lookup tables.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, final

import msgspec

from .._errors import PluginError
from .._records import PluginInfo
from .contract import KINDS, Device, FdFacts, FdHandler

if TYPE_CHECKING:
    from .links import CaptureLinks
    from .session import CaptureSession, CaptureTree, HandlerContext

__all__ = ["LoadedHandler", "longest_first"]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\Z")
_TAG = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)+\Z")


def _declared(
    who: str, handler: object, attr: str, item: Callable[[Any], Any], default: Any
) -> Any:
    value = getattr(handler, attr, default)
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise PluginError(f"{who}: {attr} must be a collection, not {type(value).__name__}")
    try:
        return [item(v) for v in value]
    except (TypeError, ValueError) as exc:
        raise PluginError(f"{who}: bad {attr} entry: {exc}") from None


def _kind(v: object) -> str:
    if v not in KINDS:
        raise ValueError(f"{v!r} is not a kind ({', '.join(sorted(KINDS))})")
    return str(v)


def _prefix(v: object) -> str:
    if not isinstance(v, str) or not v:
        raise ValueError(f"{v!r} is not a non-empty str")
    return v


def _device(v: object) -> Device:
    if not isinstance(v, tuple) or len(v) not in (2, 3):
        raise ValueError(f"{v!r} is not a Device(kind, major, minor)")
    dev = Device(*v)
    if dev.kind not in ("chr", "blk"):
        raise ValueError(f"{v!r}: a device's kind is chr or blk")
    if not isinstance(dev.major, int) or not (dev.minor is None or isinstance(dev.minor, int)):
        raise ValueError(f"{v!r}: major and minor are ints (minor None for any)")
    return dev


def _magic(v: object) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise ValueError(f"{v!r} is not a filesystem magic number")
    return v


def _hook(who: str, handler: object, attr: str) -> Callable[..., Any] | None:
    fn = getattr(handler, attr, None)
    if fn is not None and not callable(fn):
        raise PluginError(f"{who}: {attr} must be a method")
    return fn


@final
class LoadedHandler:
    """A handler checked against the contract, with what it declares normalized."""

    __slots__ = (
        "_decoder",
        "begin",
        "capture",
        "devices",
        "distribution",
        "finish",
        "fs_magic",
        "handler",
        "is_async",
        "kinds",
        "link",
        "link_prefixes",
        "name",
        "predicate",
        "priority",
        "record_tag",
        "record_type",
        "render_json",
        "render_text",
        "restore",
        "version",
    )

    def __init__(self, handler: object, distribution: str, version: str) -> None:
        name = getattr(handler, "name", None)
        who = f"fd-type handler {distribution}[{name}]"
        if not isinstance(name, str) or not _NAME.match(name):
            raise PluginError(f"{who}: name must be a word such as 'mydev', not {name!r}")
        if not isinstance(handler, FdHandler):
            raise PluginError(f"{who} does not implement the FdHandler contract")
        rtype = getattr(handler, "record_type", None)
        config = getattr(rtype, "__struct_config__", None)
        tag = getattr(config, "tag", None)
        if not (
            isinstance(rtype, type)
            and issubclass(rtype, msgspec.Struct)
            and isinstance(tag, str)
            and _TAG.match(tag)
            and getattr(config, "tag_field", None) == "kind"
        ):
            raise PluginError(
                f"{who}: record_type must be a msgspec.Struct declared with a namespaced "
                f'tag and tag_field="kind" (tag="mydist.thing"), not {rtype!r}'
            )
        priority = getattr(handler, "priority", 0)
        if not isinstance(priority, int) or isinstance(priority, bool):
            raise PluginError(f"{who}: priority must be an int, not {priority!r}")
        self.handler: FdHandler = handler
        self.distribution = distribution
        self.version = version
        self.name: str = name
        self.record_type: type[msgspec.Struct] = rtype
        self.record_tag: str = tag
        self.priority: int = priority
        self.kinds = frozenset(_declared(who, handler, "kinds", _kind, ()))
        # Longest first: among one handler's prefixes the most specific is the one that
        # counts, and _plan looks them up in this order.
        self.link_prefixes = tuple(
            sorted(set(_declared(who, handler, "link_prefixes", _prefix, ())), key=longest_first)
        )
        self.devices = frozenset(_declared(who, handler, "devices", _device, ()))
        self.fs_magic = frozenset(_declared(who, handler, "fs_magic", _magic, ()))
        self.predicate: Callable[[FdFacts], bool] | None = _hook(who, handler, "claims")
        if not self.selective and self.predicate is None:
            raise PluginError(
                f"{who} claims nothing: declare kinds, link_prefixes, devices or fs_magic, "
                "or a claims(facts) predicate"
            )
        capture = _hook(who, handler, "capture")
        assert capture is not None  # the Protocol check above
        self.capture: Callable[[FdFacts, HandlerContext], Any] = capture
        self.is_async = inspect.iscoroutinefunction(capture)
        self.render_json = _hook(who, handler, "render_json")
        self.render_text = _hook(who, handler, "render_text")
        self.restore = _hook(who, handler, "restore")
        # The session hooks run in worker threads, outside any event loop.
        self.begin: Callable[[CaptureSession], Any] | None = _hook(who, handler, "begin")
        self.finish: Callable[[Any, CaptureTree], Any] | None = _hook(who, handler, "finish")
        self.link: Callable[[Any, CaptureLinks], Any] | None = _hook(who, handler, "link")
        for attr in ("begin", "link", "finish"):
            if inspect.iscoroutinefunction(getattr(self, attr)):
                raise PluginError(f"{who}: {attr} must be a plain function, not async")
        self._decoder: msgspec.msgpack.Decoder[Any] = msgspec.msgpack.Decoder(rtype)

    @property
    def selective(self) -> bool:
        """Whether it declares anything but a predicate (else every fd is offered to it)."""
        return bool(self.kinds or self.link_prefixes or self.devices or self.fs_magic)

    def selectors(self) -> list[str]:
        """What it claims, one phrase per declaration (``asyckpt plugins``, conflicts)."""
        out = [f"kind {k}" for k in sorted(self.kinds)]
        out += [f"link {p}*" for p in sorted(self.link_prefixes)]
        out += [str(d) for d in sorted(self.devices, key=_device_order)]
        out += [f"fs 0x{m:x}" for m in sorted(self.fs_magic)]
        if not self.selective:
            out.append("any fd")
        return out

    def describe_claims(self) -> str:
        text = ", ".join(self.selectors())
        return text + (" if claims()" if self.predicate is not None and self.selective else "")

    def hooks(self) -> list[str]:
        out = ["async"] if self.is_async else []
        for hook in ("begin", "link", "finish", "render_json", "render_text", "restore"):
            if getattr(self, hook) is not None:
                out.append(hook)
        return out

    def info(self) -> PluginInfo:
        """How an image header names this handler."""
        return PluginInfo(
            name=self.name,
            distribution=self.distribution,
            version=self.version,
            record_tag=self.record_tag,
        )

    def checked(self, record: object, hook: str) -> msgspec.Struct:
        """``record``, if it is of this handler's ``record_type``; what ``hook``
        (capture, link, finish) returned otherwise raises TypeError."""
        if type(record) is not self.record_type:
            raise TypeError(
                f"{hook} returned {type(record).__name__}, not its record_type "
                f"{self.record_type.__name__}"
            )
        assert isinstance(record, msgspec.Struct)
        return record

    def decode(self, data: bytes) -> msgspec.Struct:
        """The handler's record from its msgpack encoding (``File.data``)."""
        record: msgspec.Struct = self._decoder.decode(data)
        return record

    def __repr__(self) -> str:
        return f"<LoadedHandler {self.distribution}[{self.name}] {self.version}>"


def longest_first(prefix: str) -> tuple[int, str]:
    """Sort key of link prefixes, longest first (the most specific is tried first)."""
    return (-len(prefix), prefix)


def _device_order(d: Device) -> tuple[str, int, int]:
    return (d.kind, d.major, -1 if d.minor is None else d.minor)
