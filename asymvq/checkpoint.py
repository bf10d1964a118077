"""Moved to :mod:`asymvq.io.checkpoint`; this name stays for every import that used it (the same module object)."""

import sys
from typing import TYPE_CHECKING, Any

from .io import checkpoint as _moved

if TYPE_CHECKING:  # what type checkers see; at run time this module is asymvq.io.checkpoint itself
    from .io.checkpoint import *  # noqa: F403

    def __getattr__(name: str) -> Any:  # the private names
        ...


sys.modules[__name__] = _moved
