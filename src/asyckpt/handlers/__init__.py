"""asyckpt's own handlers, one module each: ``reg`` (regular files), ``dir``
(directories) and ``link`` (symlinks opened with O_PATH).

They are registered in asyckpt's pyproject under ``asyckpt.fd_types`` exactly as a third
party's would be, import only the public ``asyckpt`` namespace, and get nothing the
plugin contract does not give everyone: an example of the plugin model.
"""
