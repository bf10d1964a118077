"""Build of the asymvq C extension against oneDNN from PyPI.

The headers come from ``onednn-devel-cpu-gomp`` and the shared library from
``onednn-cpu-gomp``; both wheels install into ``<prefix>/include`` and
``<prefix>/lib`` of whatever environment pip builds in (including its isolated
build environment), so they are located through their installed file lists,
never through system paths. At run time the extension finds ``libdnnl.so.3``
through an rpath relative to itself (site-packages/asymvq -> <prefix>/lib);
``asymvq/__init__.py`` preloads it as a fallback for other layouts.
"""
from __future__ import annotations

import glob
import os
from importlib import metadata

import numpy as np
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


def _dist_dir(dist_name: str, marker: str) -> str:
    """Directory of the installed file of ``dist_name`` whose path ends with ``marker``."""
    try:
        dist = metadata.distribution(dist_name)
    except metadata.PackageNotFoundError as e:
        raise RuntimeError(f"{dist_name} is required to build asymvq (pip install {dist_name}==2023.2.0)") from e
    for f in dist.files or []:
        p = str(f).replace("\\", "/")
        if p.endswith(marker):
            full = os.path.realpath(str(dist.locate_file(f)))
            return full[: -len(marker)].rstrip("/")
    raise RuntimeError(f"{dist_name} is installed but has no {marker}")


DNNL_INC = _dist_dir("onednn-devel-cpu-gomp", "/oneapi/dnnl/dnnl.h")
DNNL_LIB = _dist_dir("onednn-cpu-gomp", "/libdnnl.so.3")

SOURCES = sorted(
    glob.glob("csrc/core/*.c")
    + glob.glob("csrc/ops/*.c")
    + glob.glob("csrc/models/*.c")
    + glob.glob("csrc/sampling/*.c")
    + glob.glob("csrc/python/*.c")
)

CFLAGS = [
    "-std=c11",
    "-O3",
    "-fopenmp",
    "-fvisibility=hidden",
    "-Wall",
    "-Wextra",
    "-Werror",
    "-Wno-unknown-pragmas",
    "-D_GNU_SOURCE",
]

ext = Extension(
    "asymvq._core",
    sources=SOURCES,
    include_dirs=[DNNL_INC, np.get_include(), "csrc"],
    library_dirs=[DNNL_LIB],
    libraries=["dnnl"],
    define_macros=[
        ("NPY_NO_DEPRECATED_API", "NPY_1_25_API_VERSION"),
        ("NPY_TARGET_VERSION", "NPY_1_25_API_VERSION"),
    ],
    extra_compile_args=CFLAGS,
    # site-packages/asymvq/_core.so -> <prefix>/lib holds libdnnl.so.3
    extra_link_args=["-fopenmp", "-Wl,-rpath,$ORIGIN/../../..", "-Wl,--enable-new-dtags"],
)



class BuildExt(build_ext):
    """Compiles in the package version and links with only asymvq's own rpath.

    Some Pythons (pyenv, conda) put ``-Wl,-rpath,<their prefix>/lib`` into
    LDSHARED; in a binary wheel that would be a build-machine path searched
    first on every user's machine.
    """

    def build_extensions(self) -> None:
        # The one version string is pyproject.toml's, which setuptools has read into the metadata.
        version = self.distribution.metadata.get_version()
        for e in self.extensions:
            e.define_macros.append(("AVQ_VERSION", f'"{version}"'))
        linker = getattr(self.compiler, "linker_so", None)
        if linker:
            self.compiler.linker_so = [a for a in linker if not a.startswith("-Wl,-rpath,")]
        super().build_extensions()


setup(ext_modules=[ext], cmdclass={"build_ext": BuildExt})
