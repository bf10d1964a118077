"""Moved to :mod:`asymvq.io.convert`; this name stays for every import that used it (the same module object)
and for ``python -m asymvq.convert``."""

import sys

from .io import convert as _moved

if __name__ == "__main__":
    sys.exit(_moved.main())
sys.modules[__name__] = _moved
