"""Build the optional C accelerator; fall back to pure Python when it cannot be compiled."""

from __future__ import annotations

import os

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    """Build extensions, but never fail the install: tidewire has a pure-Python twin."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - any compiler failure means "use the fallback"
            if os.environ.get("TIDEWIRE_REQUIRE_SPEEDUPS"):
                raise
            print(f"tidewire: C accelerator not built ({exc}); using the pure-Python path")

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001
            if os.environ.get("TIDEWIRE_REQUIRE_SPEEDUPS"):
                raise
            print(f"tidewire: {ext.name} not built ({exc}); using the pure-Python path")


setup(
    ext_modules=[
        Extension(
            "tidewire.protocol._speedups",
            sources=["src/tidewire/protocol/_speedups.c"],
            extra_compile_args=["-O3"],
            optional=True,
        )
    ],
    cmdclass={"build_ext": OptionalBuildExt},
)
