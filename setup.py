"""Only the optional C accelerator lives here; everything else is in pyproject.toml.

``optional=True``: without a compiler the build still succeeds and asyckpt falls back to
its pure-Python fd reader (slower, same results).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "asyckpt._fdscan",
            sources=["src/asyckpt/_fdscan.c", "src/asyckpt/_fdscan_taskfiles.c"],
            depends=["src/asyckpt/_fdscan.h"],
            optional=True,
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-missing-field-initializers"],
        )
    ]
)
