"""Loading: the handlers installed (entry points), the autoload policy, and the set
loaded for a capture or for showing an image.

Discovery follows flake8's finder: list the entry points of group ``asyckpt.fd_types``
(without importing them), load the ones selected, then validate the set as a whole,
sorted for determinism.  asyckpt's own reg, dir and link handlers come in through the
same group; the only thing that sets them apart is their distribution's name, which
``ASYCKPT_DISABLE_PLUGIN_AUTOLOAD`` keeps loading.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple, final

from .._errors import PluginError
from .dispatch import Dispatch, PluginConflictWarning
from .entrypoints import EntryPoint, entry_points
from .loaded import LoadedHandler

__all__ = [
    "AUTOLOAD_ENV",
    "BUILTIN_DISTRIBUTION",
    "ENTRY_POINT_GROUP",
    "ImagePlugin",
    "Installed",
    "Survey",
    "autoload_disabled",
    "image_plugins",
    "installed_handlers",
    "load_handlers",
    "survey",
]

ENTRY_POINT_GROUP = "asyckpt.fd_types"
AUTOLOAD_ENV = "ASYCKPT_DISABLE_PLUGIN_AUTOLOAD"
BUILTIN_DISTRIBUTION = "asyckpt"


def _normalize(dist: str) -> str:
    return re.sub(r"[-_.]+", "-", dist).lower()


@final
class Installed(NamedTuple):
    """One registered handler, known from its distribution's metadata, not yet imported."""

    name: str
    distribution: str
    version: str
    value: str
    """``module:attr`` of the handler."""
    entry_point: EntryPoint

    @property
    def builtin(self) -> bool:
        return _normalize(self.distribution) == BUILTIN_DISTRIBUTION


def installed_handlers() -> list[Installed]:
    """Every entry point of ``asyckpt.fd_types``, sorted by name, then distribution."""
    out = [
        Installed(ep.name, dist or "?", version or "?", ep.value, ep)
        for ep, dist, version in entry_points(ENTRY_POINT_GROUP)
    ]
    return sorted(out, key=lambda i: (i.name, _normalize(i.distribution), i.value))


def autoload_disabled(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether ``ASYCKPT_DISABLE_PLUGIN_AUTOLOAD`` is set (to anything but "" or "0")."""
    return environ.get(AUTOLOAD_ENV, "") not in ("", "0")


def _load(found: Installed, *, hint: bool = True) -> LoadedHandler:
    who = f"fd-type handler {found.distribution}[{found.name}]"
    try:
        obj: Any = found.entry_point.load()
        handler = obj() if isinstance(obj, type) else obj
    except Exception as exc:
        msg = f"failed to load {who} ({found.value}): {type(exc).__name__}: {exc}"
        if hint:
            msg += f" (--disable-plugin {found.name} runs without it)"
        raise PluginError(msg) from exc
    loaded = LoadedHandler(handler, found.distribution, found.version)
    if loaded.name != found.name:
        raise PluginError(
            f"{who}: its entry point is named {found.name!r} but the handler {loaded.name!r}; "
            "they must be equal"
        )
    return loaded


@final
class Survey(NamedTuple):
    """Every registered handler, what became of it, and the dispatch of those loaded."""

    rows: list[tuple[Installed, str, LoadedHandler | None]]
    """(handler, state, loaded): state is ``on``, ``disabled`` or ``not autoloaded``."""
    dispatch: Dispatch


def _check_names(
    known: set[str], disabled: Iterable[str], enabled: Iterable[str]
) -> tuple[set[str], set[str]]:
    skip, want = set(disabled), set(enabled)
    for name in sorted(skip | want):
        if name not in known:
            raise PluginError(
                f"no fd-type handler named {name!r} is installed (asyckpt plugins lists them)"
            )
    both = skip & want
    if both:
        raise PluginError(f"handler {sorted(both)[0]!r} is both enabled (-p) and disabled")
    return skip, want


def survey(
    *,
    disabled: Iterable[str] = (),
    enabled: Iterable[str] = (),
    autoload: bool | None = None,
    extra: Iterable[LoadedHandler] = (),
) -> Survey:
    """Load the handlers selected (see :func:`load_handlers`) and say what became of all."""
    found = installed_handlers()
    extra = list(extra)
    skip, want = _check_names({i.name for i in found} | {h.name for h in extra}, disabled, enabled)
    if autoload is None:
        autoload = not autoload_disabled()
    rows: list[tuple[Installed, str, LoadedHandler | None]] = []
    for i in found:
        if i.name in skip:
            rows.append((i, "disabled", None))
        elif not (autoload or i.builtin or i.name in want):
            rows.append((i, "not autoloaded", None))
        else:
            rows.append((i, "on", _load(i)))
    loaded = [h for _, _, h in rows if h is not None]
    loaded += [h for h in extra if h.name not in skip]
    return Survey(rows, Dispatch(loaded))


def load_handlers(
    *,
    disabled: Iterable[str] = (),
    enabled: Iterable[str] = (),
    autoload: bool | None = None,
    extra: Iterable[LoadedHandler] = (),
    warn: bool = True,
) -> Dispatch:
    """Load the handlers registered in ``asyckpt.fd_types`` and return their dispatch.

    ``disabled`` names are skipped.  With ``autoload`` false (default: false when
    ``ASYCKPT_DISABLE_PLUGIN_AUTOLOAD`` is set) only asyckpt's own handlers and those
    named in ``enabled`` are loaded.  ``extra`` handlers join as if installed.  A name
    that is not installed, a handler that fails to load or breaks the contract, and two
    handlers sharing a name or record tag raise PluginError; handlers claiming the same
    thing at one priority are reported with a :class:`PluginConflictWarning` when ``warn``.
    """
    dispatch = survey(disabled=disabled, enabled=enabled, autoload=autoload, extra=extra).dispatch
    if warn:
        for conflict in dispatch.conflicts:
            warnings.warn(conflict.message(), PluginConflictWarning, stacklevel=2)
    return dispatch


@final
class ImagePlugin(NamedTuple):
    """What ``show`` can do with the records of one handler an image names."""

    loaded: LoadedHandler | None
    """The installed handler that wrote them, or None: its records are shown raw."""
    installed: str | None
    """The installed version of its distribution, or None."""
    note: str | None
    """Why its records are shown raw (``loaded`` None), or that another version of the
    handler renders them."""


def image_plugins(
    infos: Iterable[Any],
    *,
    disabled: Iterable[str] = (),
    enabled: Iterable[str] = (),
    autoload: bool | None = None,
) -> dict[str, ImagePlugin]:
    """Load, of the handlers an image header lists (``PluginInfo``), those installed here.

    Nothing that goes wrong with one is an error: the image stays readable, that
    handler's records are shown raw, and the note says why.
    """
    found = installed_handlers()
    skip, want = _check_names({i.name for i in found}, disabled, enabled)
    if autoload is None:
        autoload = not autoload_disabled()
    out: dict[str, ImagePlugin] = {}
    for info in infos:
        same = [
            i
            for i in found
            if i.name == info.name and _normalize(i.distribution) == _normalize(info.distribution)
        ]
        if not same:
            out[info.name] = ImagePlugin(None, None, "not installed")
            continue
        i = same[0]
        if i.name in skip:
            out[info.name] = ImagePlugin(None, i.version, "disabled (--disable-plugin)")
            continue
        if not (autoload or i.builtin or i.name in want):
            reason = f"not loaded: {AUTOLOAD_ENV} is set (-p {i.name} loads it)"
            out[info.name] = ImagePlugin(None, i.version, reason)
            continue
        try:
            loaded = _load(i, hint=False)
        except PluginError as exc:
            out[info.name] = ImagePlugin(None, i.version, str(exc))
            continue
        if loaded.record_tag != info.record_tag:
            reason = (
                f"version {i.version} is installed, whose records are {loaded.record_tag!r}, "
                f"not {info.record_tag!r}"
            )
            out[info.name] = ImagePlugin(None, i.version, reason)
            continue
        note = None
        if i.version != info.version:
            note = f"written by version {info.version}, rendered with {i.version}"
        out[info.name] = ImagePlugin(loaded, i.version, note)
    return out
