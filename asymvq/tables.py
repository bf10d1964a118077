"""Moved to :mod:`asymvq.io.tables`; this name stays for every import that used it (the same module object)."""

import sys
from typing import TYPE_CHECKING, Any

from .io import tables as _moved

if TYPE_CHECKING:  # what type checkers see; at run time this module is asymvq.io.tables itself
    from .io.tables import *  # noqa: F403

    def __getattr__(name: str) -> Any:  # the private names
        ...
sys.modules[__name__] = _moved
