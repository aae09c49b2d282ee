"""Interpreter tuning for a capture (``CaptureOptions.tune_interpreter``): the cyclic
garbage collector paused and the switch interval shortened while it runs, both
process-wide, so reference-counted across nested and concurrent captures.
"""

from __future__ import annotations

import contextlib
import gc
import sys
import threading
from collections.abc import Iterator

__all__ = ["SWITCH_INTERVAL", "tuned"]

SWITCH_INTERVAL = 0.0005
"""The interpreter's switch interval (seconds) during a tuned capture, instead of the
default 5 ms.  A fd reader that ends a table in C needs the GIL to hand its rows over,
and the resolver, pure Python, holds it until the interval forces a switch: with one
reader on two cores, it is the reader that is on the critical path while frozen."""

_tunings = 0
_gc_was_enabled = False
_switch_was = 0.0
_tuning_lock = threading.Lock()


@contextlib.contextmanager
def tuned() -> Iterator[None]:
    """For the block: the cyclic garbage collector disabled and the switch interval
    shortened (``SWITCH_INTERVAL``), both restored after (nested and concurrent captures
    included: the last to leave restores them as the first found them).

    The collector's passes each walk every object the capture holds (rows, records:
    several hundred thousand), again and again as they pile up, taking the resolver's
    time while the tree is frozen; reference counting frees nearly all of them anyway."""
    global _tunings, _gc_was_enabled, _switch_was
    with _tuning_lock:
        if _tunings == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
            _switch_was = sys.getswitchinterval()
            sys.setswitchinterval(min(_switch_was, SWITCH_INTERVAL))
        _tunings += 1
    try:
        yield
    finally:
        with _tuning_lock:
            _tunings -= 1
            if _tunings == 0:
                sys.setswitchinterval(_switch_was)
                if _gc_was_enabled:
                    gc.enable()
