"""The C core's version string is pyproject.toml's (setup.py compiles it in)."""

from __future__ import annotations

import re
from pathlib import Path

import asymvq
from asymvq import _core


def _pyproject_version() -> str:
    text = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    project = text.split("\n[project]\n", 1)[1].split("\n[", 1)[0]
    match = re.search(r'^version\s*=\s*"([^"]+)"', project, re.M)
    assert match, "pyproject.toml's [project] has no version"
    return match.group(1)


def test_core_version_is_the_pyproject_version() -> None:
    assert _core.__version__ == asymvq.__version__ == _pyproject_version()
