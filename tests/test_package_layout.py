"""The package shows its parts: asymvq.io, asymvq.cli and asymvq.bench, with every old import path still working.

The modules moved into ``asymvq.io`` and ``asymvq.cli`` stay importable under their old names as the very same module
objects (so monkeypatching either name patches both); ``python -m`` still runs the old entry points;
the public modules declare ``__all__`` with names that exist; the package ships ``py.typed``.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys

import pytest

import asymvq

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MOVED = {
    "config": "io.config",
    "checkpoint": "io.checkpoint",
    "convert": "io.convert",
    "diffusers_io": "io.diffusers_io",
    "infer": "io.infer",
    "tables": "io.tables",
    "inpaint_st": "cli.inpaint_st",
    "txt2img": "cli.txt2img",
    "demo": "cli.demo",
    "_cli": "cli.common",
}


@pytest.mark.parametrize("name", MOVED)
def test_an_old_module_path_is_the_moved_module_itself(name: str) -> None:
    old = importlib.import_module(f"asymvq.{name}")
    assert old is importlib.import_module(f"asymvq.{MOVED[name]}")
    assert getattr(asymvq, name) is old


def test_the_checkpoint_facade_offers_what_its_parts_define() -> None:
    from asymvq import checkpoint
    from asymvq.io import dtypes, safetensors, unpickler

    assert checkpoint.save_safetensors is safetensors.save_safetensors
    assert checkpoint.bf16_to_float32 is dtypes.bf16_to_float32
    assert unpickler.CheckpointError is checkpoint.CheckpointError is safetensors.CheckpointError


@pytest.mark.parametrize(
    "module",
    [
        "asymvq",
        "asymvq.bench",
        "asymvq.bench.harness",
        "asymvq.bench.weights",
        "asymvq.bench.pipeline",
        "asymvq.bench.peers",
        "asymvq.io.checkpoint",
        "asymvq.io.config",
        "asymvq.io.dtypes",
        "asymvq.io.safetensors",
        "asymvq.tokenizer",
        "asymvq.image",
        "asymvq.rng",
        "asymvq.precision",
        "asymvq.pipelines",
        "asymvq.unet",
        "asymvq.autoencoder",
        "asymvq.text_encoder",
        "asymvq.sampler",
        "asymvq.metrics",
        "asymvq.quality",
        "asymvq.errors",
        "asymvq.batch",
        "asymvq.compare",
    ],
)
def test_a_public_module_declares_all_and_every_name_in_it_exists(module: str) -> None:
    mod = importlib.import_module(module)
    assert mod.__all__, module
    assert [n for n in mod.__all__ if not hasattr(mod, n)] == []


def test_the_package_ships_its_type_hints() -> None:
    assert os.path.isfile(os.path.join(os.path.dirname(asymvq.__file__), "py.typed"))


@pytest.mark.parametrize(
    "argv, text",
    [
        (["asymvq.convert", "--help"], "usage: python -m asymvq convert"),
        (["asymvq.bench", "--help"], "pipeline   one whole 512x512 inpainting"),
        (["asymvq.inpaint_st", "--help"], "usage: python -m asymvq.inpaint_st"),
        (["asymvq.txt2img", "--help"], "usage: python -m asymvq.txt2img"),
        (["asymvq.demo", "--help"], "usage: "),
        (["asymvq", "--help"], "usage: python -m asymvq {"),
    ],
)
def test_the_old_entry_points_still_run(argv: list, text: str) -> None:
    proc = subprocess.run([sys.executable, "-m", *argv], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert text in proc.stdout


def test_the_extension_needs_no_glibc_symbol_newer_than_manylinux2014s() -> None:
    # the manylinux2014 wheel promises glibc >= 2.17: a newer symbol version (glibc 2.34's pthread_create,
    # say) makes auditwheel refuse it
    import shutil

    import asymvq._core as core

    if shutil.which("objdump") is None:
        pytest.skip("objdump (binutils) is not installed")  # CI installs it: the wheel build needs it too
    out = subprocess.run(["objdump", "-T", core.__file__], capture_output=True, text=True, check=True).stdout
    newer = sorted(
        {line.split()[-1] for line in out.splitlines() if any(f"(GLIBC_2.{v})" in line for v in range(18, 60))}
    )
    assert newer == [], f"symbols bound to glibc > 2.17: {newer}"
