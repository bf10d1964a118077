"""The ``precision`` argument of the models and pipelines: ``"fp32"``, ``"bf16"`` or ``"auto"``.

``"auto"`` takes bf16 where the CPU computes it natively (AVX512-BF16 or AMX, and oneDNN's
``ONEDNN_MAX_CPU_ISA`` cap, if any, allows it) and fp32 everywhere else, and says which in one
line on stderr. An explicit ``"bf16"`` runs on any AVX-512 CPU (oneDNN emulates bf16 without
AVX512-BF16, more slowly than fp32); below AVX-512 the C core refuses it with a RuntimeError
that says why and suggests fp32.
"""
from __future__ import annotations

import sys

from . import _core

__all__ = ["PRECISIONS", "resolve_precision"]

#: What ``precision=`` accepts.
PRECISIONS = ("auto", "fp32", "bf16")


def resolve_precision(precision: str, *, announce: bool = True) -> str:
    """``"fp32"`` or ``"bf16"`` for ``precision``; ``"auto"`` is decided here (see the module docs).

    ``announce``: print the one line that says what ``"auto"`` chose (on stderr).

    Raises:
        ValueError: ``precision`` is not one of :data:`PRECISIONS`.
        RuntimeError: ``"bf16"`` where it cannot run (below AVX-512, by the CPU or the ISA cap); raised
            before any weight is read.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(map(repr, PRECISIONS))}, got {precision!r}")
    if precision != "auto":
        _core.check_precision(precision)
        return precision
    info = _core.info()
    chosen = "bf16" if info["bf16_native"] else "fp32"
    if announce:
        why = "native bf16" if info["bf16_native"] else "no native bf16"
        print(f"asymvq: precision auto -> {chosen} ({why} at ISA {info['isa']}; the CPU has {info['cpu_isa']})",
              file=sys.stderr)
    return chosen
