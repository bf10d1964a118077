"""Moved to :mod:`asymvq.io.infer`; this name stays for every import that used it (the same module object)."""

import sys

from .io import infer as _moved

sys.modules[__name__] = _moved
