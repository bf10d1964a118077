"""asymvq's exceptions: every exception asymvq raises on purpose derives from :class:`Error`.

Each one also derives from the builtin exception it raised before this hierarchy existed, so code
that catches ``ValueError``, ``TypeError``, ``RuntimeError``, ... keeps working::

    try:
        pipe = asymvq.InpaintPipeline.from_config(...)
    except asymvq.Error as e:          # anything asymvq refused
        ...

The C core raises :class:`InvalidInputError` (a ``ValueError``: bad arguments, shapes, configs,
weights), :class:`DTypeError` (``TypeError``), :class:`OutOfMemoryError` (``MemoryError``),
:class:`NumericError` (``FloatingPointError``) and :class:`EngineError` (``RuntimeError``: oneDNN
failed, or a plan is in use). Ctrl-C during a call stays ``KeyboardInterrupt``. The Python modules
define their own subclasses (``ConfigError``, ``CheckpointError``, ``WeightsError``, ...).
"""

from __future__ import annotations

from ._core import DTypeError, EngineError, Error, InvalidInputError, NumericError, OutOfMemoryError

__all__ = ["Error", "InvalidInputError", "DTypeError", "OutOfMemoryError", "NumericError", "EngineError"]
