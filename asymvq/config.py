"""Moved to :mod:`asymvq.io.config`; this name stays for every import that used it (the same module object)."""

import sys

from .io import config as _moved

sys.modules[__name__] = _moved
