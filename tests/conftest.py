"""What every test shares: one import path for the fixtures module, its session fixture, and the slow rule.

Tests import the random-weight fixtures as ``fixtures`` (this folder is on ``sys.path``). The spelling
``tests.fixtures`` (``python -m tests.fixtures``, the package path from the repository root) names the
same module object, so there is one session cache of generated checkpoints, never two.

Slow tests (full-size models, minutes) carry the ``slow`` marker; CI runs ``pytest -m "not slow"``
first. A file named ``test_*_full_size.py`` holds only such tests: one left unmarked is a usage error.
"""

from __future__ import annotations

import os
import sys
from typing import List

import pytest

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

import fixtures  # noqa: E402

sys.modules.setdefault("tests.fixtures", fixtures)

from fixtures import checkpoints  # noqa: E402, F401  (the session fixture, for every test)


def pytest_collection_modifyitems(config: pytest.Config, items: List[pytest.Item]) -> None:
    unmarked = [
        item.nodeid
        for item in items
        if os.path.basename(str(item.path)).endswith("_full_size.py") and item.get_closest_marker("slow") is None
    ]
    if unmarked:
        raise pytest.UsageError("tests in *_full_size.py files must carry the slow marker: " + ", ".join(unmarked))
