"""Moved to :mod:`asymvq.cli.inpaint_st`; this name stays for every import that used it (the same module object)."""

import sys
from typing import TYPE_CHECKING, Any

from .cli import inpaint_st as _moved

if TYPE_CHECKING:  # what type checkers see; at run time this module is asymvq.cli.inpaint_st itself
    from .cli.inpaint_st import *  # noqa: F403

    def __getattr__(name: str) -> Any:  # the private names
        ...


if __name__ == "__main__":  # python -m asymvq.inpaint_st
    sys.exit(_moved.main())
sys.modules[__name__] = _moved
