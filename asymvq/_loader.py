"""Finds oneDNN's shared library from the ``onednn-cpu-gomp`` wheel.

The extension's rpath ($ORIGIN/../../..) finds ``libdnnl.so.3`` for a normal
install (site-packages/asymvq -> <prefix>/lib). For layouts where that does not
hold (editable installs, a source checkout, unusual schemes) the library is
located through the wheel's file list and loaded with RTLD_GLOBAL before the
extension, so the dynamic loader resolves it by soname.

It also settles the OpenMP runtime asymvq shares or competes with. asymvq sets
``OMP_WAIT_POLICY=PASSIVE`` before oneDNN loads libgomp, which only works if no OpenMP
runtime is in the process yet: libgomp reads the variable once, when it loads. A torch
imported first has loaded one (its wheel's libgomp, which then serves asymvq too: same
soname) with the default policy, whose idle threads spin up to 300,000 times; on a machine
with more work than cores that made asymvq 2.5x slower and burn 2.6x the CPU time
(``python -m asymvq.bench inprocess``). The policy cannot be changed afterwards, so asymvq
parks a small team of sleeping threads (``_core.throttle_openmp_spinning``): while libgomp
manages more threads than CPUs it spins only 1,000 times (its documented GOMP_SPINCOUNT
rule). ``ASYMVQ_OPENMP_THROTTLE=0`` turns that off (asymvq then warns instead). A second
runtime, with threads of its own, cannot be fixed from inside the process: asymvq warns
(:class:`OpenMPWarning`).
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


#: Size of the parked OpenMP team (0: none was needed or it is turned off); see the module docstring.
PARKED_TEAM = 0


def shares_early_runtime(before: List[str], after: List[str]) -> bool:
    """Whether asymvq runs on a runtime that was loaded before it (``before``: runtimes mapped
    before asymvq loaded oneDNN; ``after``: after): true when it brought none of its own."""
    return bool(before) and all(r in before for r in after)


def openmp_problems(before: List[str], after: List[str], user_policy: Optional[str], throttled: bool) -> List[str]:
    """What is wrong with the OpenMP runtimes, given those mapped ``before`` asymvq loaded oneDNN,
    those mapped ``after``, the user's ``OMP_WAIT_POLICY`` and whether asymvq ``throttled`` the
    spinning of a shared runtime; one sentence per problem."""
    problems = []
    if shares_early_runtime(before, after) and user_policy is None and not throttled:
        problems.append(
            f"an OpenMP runtime ({before[0]}) was loaded before asymvq, most likely by torch, with the "
            "default OMP_WAIT_POLICY: its idle threads spin, which makes asymvq (and torch) several times "
            "slower when the machine has other work. Set OMP_WAIT_POLICY=PASSIVE in the environment before "
            "Python starts, import asymvq before torch, or leave ASYMVQ_OPENMP_THROTTLE unset; "
            "OMP_WAIT_POLICY=ACTIVE keeps the spinning and silences this warning"
        )
    if len(after) > 1:
        problems.append(
            f"{len(after)} OpenMP runtimes are loaded ({', '.join(after)}): each keeps its own threads, so "
            "asymvq's and the other library's threads compete for the cores. Use torch and asymvq with a "
            "thread count that sums to the cores (asymvq.set_num_threads, torch.set_num_threads), or run "
            "them in separate processes"
        )
    return problems


def settle_openmp(before: List[str]) -> None:
    """After ``_core`` loaded: throttles the spinning of a runtime asymvq shares with whoever loaded it
    first (unless the user chose a policy or ``ASYMVQ_OPENMP_THROTTLE=0``), then warns
    (:class:`OpenMPWarning`) about each problem :func:`openmp_problems` still finds."""
    global PARKED_TEAM
    after = openmp_runtimes()
    wanted = os.environ.get("ASYMVQ_OPENMP_THROTTLE", "1").strip() not in ("0", "")
    if shares_early_runtime(before, after) and USER_WAIT_POLICY is None and wanted and not PARKED_TEAM:
        from . import _core

        PARKED_TEAM = _core.throttle_openmp_spinning()
    for problem in openmp_problems(before, after, USER_WAIT_POLICY, PARKED_TEAM > 0):
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
