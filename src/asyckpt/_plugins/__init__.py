"""fd-type handlers (entry-point group ``asyckpt.fd_types``), in rooms:

* :mod:`.contract`: what a handler declares and is told (``FdFacts``, ``StatInfo``,
  ``Device``, ``LinkRef``, the ``FdHandler`` protocol); no kernel access.
* :mod:`.session`: the live objects of one capture (``CaptureSession``,
  ``HandlerContext``, ``CaptureTree``).
* :mod:`.links`: ``CaptureLinks``, the kcmp search behind the ``link`` hook.
* :mod:`.loaded`: validation, a handler object made a ``LoadedHandler``.
* :mod:`.dispatch`: which handler captures an fd (claims, priority, conflicts).
* :mod:`.loading`: the installed handlers (entry points), the autoload policy, and the
  set loaded for a capture or an image.

The public names are re-exported by the ``asyckpt`` package; docs/plugins.md has the
contract.  Nothing is re-exported here: import from the room.
"""
