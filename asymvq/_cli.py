"""What the drop-in command lines share: config resolution, output checks, summaries."""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Optional

from PIL import Image

from . import config as config_mod


class CLIError(Exception):
    """A problem the user can fix; printed as one line, exit code 2."""


def resolve_config(path: str) -> str:
    """The config at ``path``; if it does not exist but names one of the original configs
    (e.g. the scripts' default ``configs/autoencoder/v1-inpainting-inference.yaml``), the copy
    shipped with asymvq."""
    if os.path.isfile(path):
        return path
    name = os.path.basename(path)
    try:
        return str(config_mod.packaged_config(name))
    except Exception:
        raise CLIError(f"config file not found: {path}") from None


def require_file(path: str, what: str) -> str:
    if not os.path.isfile(path):
        raise CLIError(f"{what} not found: {path}")
    return path


def prepare_outdir(outdir: str) -> Path:
    """Creates ``outdir`` and proves it is writable before any work starts."""
    p = Path(outdir)
    try:
        p.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=p, prefix=".asymvq-write-test-"):
            pass
    except OSError as e:
        raise CLIError(f"output directory {outdir} is not writable: {e.strerror or e}") from None
    return p


def save_png(img: Image.Image, path: Path) -> None:
    """Writes to a temporary name and renames, so an interrupted run leaves no half file."""
    tmp = path.with_name(f".{path.name}.part")
    try:
        img.save(tmp, format="PNG")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def summary(name: str, width: int, height: int, seconds: float, steps: int, extra: str = "") -> str:
    per = seconds / steps if steps else 0.0
    return f"{name}: {width}x{height}, {seconds:.1f} s, {per:.2f} s/step{extra}"


def fail(msg: str) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return 2


def precision_arg(value: Optional[str]) -> str:
    """The scripts' --precision as the precision to build with: 'autocast' (the original's default) and
    'auto' -> bf16 where the CPU has native bf16, else fp32 (one line on stderr says which); 'full' ->
    fp32; fp32/bf16 as given. bf16 where it cannot run is a CLIError saying why."""
    from .precision import resolve_precision

    m = {"autocast": "auto", "auto": "auto", "full": "fp32", "fp32": "fp32", "bf16": "bf16"}
    if value not in m:
        raise CLIError(f"--precision must be one of autocast, auto, full, fp32, bf16; got {value!r}")
    try:
        return resolve_precision(m[value])
    except RuntimeError as e:
        raise CLIError(f"--precision {value}: {e}") from None


def precision_type(value: str) -> str:
    """:func:`precision_arg` as an argparse ``type=`` (its errors become argparse's one-line usage error)."""
    import argparse

    try:
        return precision_arg(value)
    except CLIError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
