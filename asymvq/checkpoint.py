"""Moved to :mod:`asymvq.io.checkpoint`; this name stays for every import that used it (the same module object)."""

import sys

from .io import checkpoint as _moved

sys.modules[__name__] = _moved
