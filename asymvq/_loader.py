"""Finds oneDNN's shared library from the ``onednn-cpu-gomp`` wheel.

The extension's rpath ($ORIGIN/../../..) finds ``libdnnl.so.3`` for a normal
install (site-packages/asymvq -> <prefix>/lib). For layouts where that does not
hold (editable installs, a source checkout, unusual schemes) the library is
located through the wheel's file list and loaded with RTLD_GLOBAL before the
extension, so the dynamic loader resolves it by soname.
"""
from __future__ import annotations

import ctypes
import os
from importlib import metadata

_LOADED = False


def _candidates() -> list[str]:
    found = []
    try:
        dist = metadata.distribution("onednn-cpu-gomp")
        for f in dist.files or []:
            if str(f).endswith("libdnnl.so.3"):
                found.append(os.path.realpath(str(dist.locate_file(f))))
    except metadata.PackageNotFoundError:
        pass
    return found


def preload_onednn() -> None:
    """Load libdnnl.so.3 globally if the rpath would not find it (idempotent)."""
    global _LOADED
    if _LOADED:
        return
    for path in _candidates():
        if os.path.exists(path):
            ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
            _LOADED = True
            return
    # Nothing found: rely on the rpath; importing _core says what is missing.
