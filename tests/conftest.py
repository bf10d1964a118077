"""What every test shares: one import path for the fixtures module, its session fixture, and the slow rule.

Tests import the random-weight fixtures as ``fixtures`` (this folder is on ``sys.path``). The spelling
``tests.fixtures`` (``python -m tests.fixtures``, the package path from the repository root) names the
same module object, so there is one session cache of generated checkpoints, never two.

The command-line tests build their argument lists with :class:`CommandLines` (fixtures ``tiny_cli``:
tiny random-weight checkpoints, ``empty_cli``: empty checkpoint files), so the flags that name the
tiny configs, the checkpoints and the vocabulary are written once.

Slow tests (full-size models, minutes) carry the ``slow`` marker; CI runs ``pytest -m "not slow"``
first. A file named ``test_*_full_size.py`` holds only such tests: one left unmarked is a usage error.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import Dict, List, Mapping, Sequence, Tuple, Union

import pytest

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

import fixtures  # noqa: E402

sys.modules.setdefault("tests.fixtures", fixtures)

from fixtures import CheckpointCache, checkpoints  # noqa: E402, F401  (the session fixture, for every test)

ROOT = Path(_HERE).parent
TINY = ROOT / "configs" / "tiny"
VOCAB = ROOT.parent / "shared" / "data" / "clip" / "bpe_simple_vocab_16e6.txt.gz"

PathLike = Union[str, Path]


@dataclasses.dataclass(frozen=True)
class CommandLines:
    """Argument lists of the drop-in command lines (inpaint_st, txt2img) on the tiny configs.

    ``ckpts`` maps ``"inpaint"``, ``"t2i"`` and ``"decoder"`` to checkpoint files. Each list is the
    flags naming configs, checkpoints and vocabulary, then this object's ``inpaint_flags`` or
    ``txt2img_flags`` (a test file's run size), then the call's own ``extra`` flags.
    """

    ckpts: Mapping[str, Path]
    inpaint_flags: Tuple[str, ...] = ()
    txt2img_flags: Tuple[str, ...] = ()

    def with_flags(self, inpaint: Sequence[str] = (), txt2img: Sequence[str] = ()) -> "CommandLines":
        """A copy that puts ``inpaint`` / ``txt2img`` after the model flags of every list it builds."""
        return dataclasses.replace(
            self, inpaint_flags=self.inpaint_flags + tuple(inpaint), txt2img_flags=self.txt2img_flags + tuple(txt2img)
        )

    def with_ckpts(self, **paths: Path) -> "CommandLines":
        """A copy with some checkpoints replaced (keys as in ``ckpts``)."""
        return dataclasses.replace(self, ckpts={**self.ckpts, **paths})

    def inpaint(self, indir: PathLike, outdir: PathLike, *extra: str) -> List[str]:
        """``inpaint_st``'s arguments: the 9-channel SD model and the conditional base decoder."""
        return [
            "--indir",
            str(indir),
            "--outdir",
            str(outdir),
            "--config_d",
            str(TINY / "v1-inpainting-inference.yaml"),
            "--ckpt_d",
            str(self.ckpts["inpaint"]),
            "--config",
            str(TINY / "autoencoder_kl_32x32x4.yaml"),
            "--ckpt",
            str(self.ckpts["decoder"]),
            "--vocab",
            str(VOCAB),
            *self.inpaint_flags,
            *extra,
        ]

    def txt2img(self, outdir: PathLike, *extra: str) -> List[str]:
        """``txt2img``'s arguments: the 4-channel SD model and the base decoder without condition."""
        return [
            "--outdir",
            str(outdir),
            "--config",
            str(TINY / "v1-t2i-inference.yaml"),
            "--ckpt",
            str(self.ckpts["t2i"]),
            "--config_c",
            str(TINY / "autoencoder_kl_woc_32x32x4.yaml"),
            "--ckpt_c",
            str(self.ckpts["decoder"]),
            "--vocab",
            str(VOCAB),
            *self.txt2img_flags,
            *extra,
        ]


@pytest.fixture(scope="session")
def tiny_cli(checkpoints: CheckpointCache) -> CommandLines:  # noqa: F811
    """Command lines on tiny random-weight checkpoints (generated once per session, never written to)."""
    return CommandLines(
        {
            "inpaint": checkpoints.get("sd15-inpaint"),
            "t2i": checkpoints.get("sd15-txt2img"),
            "decoder": checkpoints.get("decoder-base"),
        }
    )


@pytest.fixture
def empty_ckpts(tmp_path: Path) -> Dict[str, Path]:
    """Empty files named as the command lines' checkpoints (inpaint, t2i, decoder): loading one fails,
    so a test that gets past argument checking notices (tests/test_cli_errors.py, test_cli_safety.py)."""
    d = tmp_path / "ckpts"
    d.mkdir()
    for name in ("inpaint", "t2i", "decoder"):
        (d / f"{name}.ckpt").write_bytes(b"")
    return {name: d / f"{name}.ckpt" for name in ("inpaint", "t2i", "decoder")}


@pytest.fixture
def empty_cli(empty_ckpts: Dict[str, Path]) -> CommandLines:
    """Command lines on :func:`empty_ckpts`: for the checks that must end before any weight is read."""
    return CommandLines(empty_ckpts)


def pytest_collection_modifyitems(config: pytest.Config, items: List[pytest.Item]) -> None:
    unmarked = [
        item.nodeid
        for item in items
        if os.path.basename(str(item.path)).endswith("_full_size.py") and item.get_closest_marker("slow") is None
    ]
    if unmarked:
        raise pytest.UsageError("tests in *_full_size.py files must carry the slow marker: " + ", ".join(unmarked))
