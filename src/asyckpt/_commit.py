"""The moment an image becomes visible, decided once against an interruption.

An image becomes visible at one step: its link into place (a path), or the write of its
last bytes (a stream).  An interruption (a signal to the command) may come at any time.
Whichever of the two takes this object's lock first wins, so that the outcome is one of
exactly two: interrupted, and nothing visible (exit 130); or visible, and the
interruption came late (exit 0, with a note).  Never an image at ``-o`` with exit 130.
"""

from __future__ import annotations

import threading
from typing import Literal

from ._errors import AsyckptError

__all__ = ["Commit", "Interrupted"]


class Interrupted(AsyckptError):
    """A signal ended the capture before the image was visible (exit 130)."""

    exit_code = 130


class Commit:
    """The race between the image becoming visible and an interruption.  Thread-safe:
    the writer commits from a worker thread, signals arrive on the event loop."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.state: Literal["open", "interrupted", "committed"] = "open"

    def interrupt(self) -> bool:
        """An interruption: True when it came in time to stop the image."""
        with self._lock:
            if self.state == "open":
                self.state = "interrupted"
            return self.state == "interrupted"

    def check(self) -> None:
        """Raise Interrupted if the image may no longer be made visible."""
        if self.state == "interrupted":
            raise Interrupted("interrupted; nothing was written")

    def commit(self) -> None:
        """Called right before the step that makes the image visible: from here on an
        interruption is late.  Raises Interrupted if one came first."""
        with self._lock:
            self.check()
            self.state = "committed"
