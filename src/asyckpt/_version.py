"""asyckpt's version, in a module of its own at the bottom of the layers: the package
re-exports it, and the modules that record or print it (the image header, ``--version``)
import it from here rather than reaching up to the package."""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
