"""Moved to :mod:`asymvq.cli.txt2img`; this name stays for every import that used it (the same module object)."""

import sys
from typing import TYPE_CHECKING, Any

from .cli import txt2img as _moved

if TYPE_CHECKING:  # what type checkers see; at run time this module is asymvq.cli.txt2img itself
    from .cli.txt2img import *  # noqa: F403

    def __getattr__(name: str) -> Any:  # the private names
        ...


if __name__ == "__main__":  # python -m asymvq.txt2img
    sys.exit(_moved.main())
sys.modules[__name__] = _moved
