"""Moved to :mod:`asymvq.io.diffusers_io`; this name stays for every import that used it (the same module object)."""

import sys

from .io import diffusers_io as _moved

sys.modules[__name__] = _moved
