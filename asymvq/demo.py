"""Moved to :mod:`asymvq.cli.demo`; this name stays for every import that used it (the same module object)."""

import sys
from typing import TYPE_CHECKING, Any

from .cli import demo as _moved

if TYPE_CHECKING:  # what type checkers see; at run time this module is asymvq.cli.demo itself
    from .cli.demo import *  # noqa: F403

    def __getattr__(name: str) -> Any:  # the private names
        ...


if __name__ == "__main__":  # python -m asymvq.demo
    sys.exit(_moved.main())
sys.modules[__name__] = _moved
