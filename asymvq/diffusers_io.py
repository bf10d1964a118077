"""Moved to :mod:`asymvq.io.diffusers_io`; this name stays for every import that used it (the same module object)."""

import sys
from typing import TYPE_CHECKING, Any

from .io import diffusers_io as _moved

if TYPE_CHECKING:  # what type checkers see; at run time this module is asymvq.io.diffusers_io itself
    from .io.diffusers_io import *  # noqa: F403

    def __getattr__(name: str) -> Any:  # the private names
        ...


sys.modules[__name__] = _moved
