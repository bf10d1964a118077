"""Moved to :mod:`asymvq.io.convert`; this name stays for every import that used it (the same module object)
and for ``python -m asymvq.convert``."""

import sys
from typing import TYPE_CHECKING, Any

from .io import convert as _moved

if TYPE_CHECKING:  # what type checkers see; at run time this module is asymvq.io.convert itself
    from .io.convert import *  # noqa: F403

    def __getattr__(name: str) -> Any:  # the private names
        ...


if __name__ == "__main__":
    sys.exit(_moved.main())
sys.modules[__name__] = _moved
