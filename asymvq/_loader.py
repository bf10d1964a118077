"""Finds oneDNN's shared library from the ``onednn-cpu-gomp`` wheel.

The extension's rpath ($ORIGIN/../../..) finds ``libdnnl.so.3`` for a normal
install (site-packages/asymvq -> <prefix>/lib). For layouts where that does not
hold (editable installs, a source checkout, unusual schemes) the library is
located through the wheel's file list and loaded with RTLD_GLOBAL before the
extension, so the dynamic loader resolves it by soname.

It also checks the OpenMP runtime asymvq will share or compete with: asymvq sets
``OMP_WAIT_POLICY=PASSIVE`` before oneDNN loads libgomp, which only works if no OpenMP
runtime is in the process yet (libgomp reads the variable once, when it loads). A torch
imported first has loaded one (its wheel's libgomp, which then also serves asymvq: same
soname) with the default policy, whose idle threads spin; on a machine with more work than
cores that made asymvq 3-6x slower (``python -m asymvq.bench inprocess``). That, and a
second runtime with its own thread pool, cannot be undone from inside the process, so
asymvq warns (:class:`OpenMPWarning`) with the setting that avoids it.
"""
from __future__ import annotations

import ctypes
import os
import warnings
from importlib import metadata
from typing import Iterable, List, Optional

_LOADED = False

#: ``OMP_WAIT_POLICY`` as the user set it before asymvq was imported (None: unset).
USER_WAIT_POLICY: Optional[str] = os.environ.get("OMP_WAIT_POLICY")

# Shared-object names of OpenMP runtimes: GNU (libgomp.so.1, wheels' libgomp-<hash>.so.1),
# Intel (libiomp5.so), LLVM (libomp.so, libomp-<hash>.so).
_RUNTIME_PREFIXES = ("libgomp.so", "libgomp-", "libiomp5", "libomp.so", "libomp-")


class OpenMPWarning(RuntimeWarning):
    """An OpenMP runtime in this process is set up in a way that slows asymvq down."""


def openmp_runtimes(maps: Optional[Iterable[str]] = None) -> List[str]:
    """Real paths of the OpenMP runtime libraries mapped into this process, in load order.

    ``maps``: lines of ``/proc/self/maps`` (read when None; empty where there is none)."""
    if maps is None:
        try:
            with open("/proc/self/maps") as f:
                maps = f.read().splitlines()
        except OSError:
            return []
    found: List[str] = []
    for line in maps:
        fields = line.split(None, 5)
        if len(fields) < 6 or not fields[5].startswith("/"):
            continue
        path = fields[5].strip()
        if os.path.basename(path).startswith(_RUNTIME_PREFIXES):
            real = os.path.realpath(path)
            if real not in found:
                found.append(real)
    return found


def openmp_problems(before: List[str], after: List[str], user_policy: Optional[str]) -> List[str]:
    """What is wrong with the OpenMP runtimes, given those mapped ``before`` asymvq loaded oneDNN,
    those mapped ``after`` and the user's ``OMP_WAIT_POLICY``; one sentence per problem."""
    problems = []
    if before and user_policy is None:
        problems.append(
            f"an OpenMP runtime ({before[0]}) was loaded before asymvq, most likely by torch, with the "
            "default OMP_WAIT_POLICY: its idle threads spin, which makes asymvq (and torch) several times "
            "slower when the machine has other work. Set OMP_WAIT_POLICY=PASSIVE in the environment before "
            "Python starts (or import asymvq before torch); set OMP_WAIT_POLICY=ACTIVE to keep spinning "
            "and silence this warning")
    if len(after) > 1:
        problems.append(
            f"{len(after)} OpenMP runtimes are loaded ({', '.join(after)}): each keeps its own threads, so "
            "asymvq's and the other library's threads compete for the cores. Use torch and asymvq with a "
            "thread count that sums to the cores (asymvq.set_num_threads, torch.set_num_threads), or run "
            "them in separate processes")
    return problems


def warn_openmp_problems(before: List[str]) -> None:
    """Warns (:class:`OpenMPWarning`) about each problem :func:`openmp_problems` finds now."""
    for problem in openmp_problems(before, openmp_runtimes(), USER_WAIT_POLICY):
        warnings.warn(problem, OpenMPWarning, stacklevel=2)


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
