"""Models own their weights once built: the checkpoint file may be truncated, rewritten in place or
deleted, and every later call still works and gives the result of the untouched file.

Each scenario runs in a child process, so that a regression (a SIGBUS from a truncated mapping)
fails the test instead of killing pytest. The file is changed *before* the first call, when no
weight has been packed yet, which is the hardest case: nothing may still be read from the file.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from asymvq import Autoencoder, UNet, checkpoint
from fixtures import fixture_config
from isa import needs_bf16

ROOT = Path(__file__).resolve().parent.parent

# name -> (fixture, config fixture, code building `model` from `cfg`, `path`, `prec`, and code computing
# `out` from `model` with inputs drawn from `rng`)
KINDS = {
    "unet": (
        "sd15-inpaint", "sd15-inpaint",
        "UNet.from_config(cfg, path, prec)",
        "model(rng.standard_normal((1, 9, 16, 16)).astype(np.float32), 500, "
        "rng.standard_normal((1, 77, 64)).astype(np.float32))",
    ),
    "vae": (
        "sd15-inpaint", "sd15-inpaint",
        "Autoencoder.from_config(cfg, path, prec)",
        "model.decode(model.encode(rng.uniform(-1, 1, (1, 3, 64, 64)).astype(np.float32)))",
    ),
    "conditional-decoder": (
        "decoder-large", "decoder-large",
        "Autoencoder.from_config(cfg, path, prec, parts='decoder')",
        "model.decode(rng.standard_normal((1, 4, 8, 8)).astype(np.float32), "
        "rng.uniform(-1, 1, (1, 3, 64, 64)).astype(np.float32), "
        "(rng.uniform(0, 1, (1, 1, 64, 64)) > 0.5).astype(np.float32))",
    ),
    "text-encoder": (
        "sd15-inpaint", "sd15-inpaint",
        "TextEncoder.from_config(cfg, path, precision=prec)",
        "model.encode_ids(rng.integers(0, 1000, (2, 77)))",
    ),
}

CHILD = textwrap.dedent(
    """
    import gc, os, shutil, sys
    import numpy as np
    from asymvq import Autoencoder, TextEncoder, UNet

    cfg, path, pristine, donor, action, prec = sys.argv[1:7]

    def build(path):
        return {build}

    def run(model):
        rng = np.random.default_rng(0)
        return {run}

    want = run(build(pristine))
    model = build(path)
    gc.collect()
    with open("/proc/self/maps") as f:
        mapped = os.path.realpath(path) in f.read()
    print("mapped after build:", mapped)
    if action == "truncate":
        os.truncate(path, 0)
    elif action == "overwrite":
        with open(donor, "rb") as src, open(path, "r+b") as dst:
            shutil.copyfileobj(src, dst)
            dst.truncate()
    elif action == "delete":
        os.remove(path)
    for _ in range(2):
        got = run(model)
        assert np.array_equal(got, want), float(np.abs(got - want).max())
    print("same")
    """
)


def run_child(tmp_path: Path, checkpoints, kind: str, action: str, prec: str = "fp32") -> subprocess.CompletedProcess:  # noqa: F811
    which, cfg_which, build, run = KINDS[kind]
    source = checkpoints.get(which)
    path = tmp_path / f"model{source.suffix}"
    pristine = tmp_path / f"pristine{source.suffix}"
    shutil.copyfile(source, path)
    shutil.copyfile(source, pristine)
    donor = checkpoints.get(which, seed=1)  # same names and shapes, other values
    code = CHILD.format(build=build, run=run)
    return subprocess.run(
        [sys.executable, "-c", code, str(fixture_config(cfg_which)), str(path), str(pristine), str(donor), action,
         prec],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )


def check(proc: subprocess.CompletedProcess) -> None:
    if proc.returncode < 0:
        pytest.fail(f"the child died of {signal.Signals(-proc.returncode).name}:\n{proc.stderr}")
    assert proc.returncode == 0, proc.stderr
    assert "same" in proc.stdout


@pytest.mark.parametrize("action", ["truncate", "overwrite", "delete"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_a_model_keeps_working_identically_after_its_checkpoint_changes(tmp_path, checkpoints, kind, action):  # noqa: F811
    check(run_child(tmp_path, checkpoints, kind, action))


@needs_bf16
@pytest.mark.parametrize("kind", ["unet", "vae"])
def test_a_bf16_model_keeps_working_identically_after_its_checkpoint_is_truncated(tmp_path, checkpoints, kind):  # noqa: F811
    check(run_child(tmp_path, checkpoints, kind, "truncate", "bf16"))


@pytest.mark.parametrize("kind", list(KINDS))
def test_a_built_model_no_longer_maps_its_checkpoint(tmp_path, checkpoints, kind):  # noqa: F811
    proc = run_child(tmp_path, checkpoints, kind, "none")
    check(proc)
    assert "mapped after build: False" in proc.stdout


# ---- NaN / Inf weights -----------------------------------------------------------------------------


def poisoned(tmp_path: Path, checkpoints, names: list[str], value: float) -> Path:  # noqa: F811
    """The tiny inpainting checkpoint as .safetensors, with `value` written into each of `names`."""
    tensors = {k: np.array(v) for k, v in checkpoint.load(checkpoints.get("sd15-inpaint")).items()}
    for name in names:
        tensors[name].flat[3] = value
    path = tmp_path / "poisoned.safetensors"
    checkpoint.save_safetensors(path, tensors)
    return path


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_a_weight_holding_nan_or_inf_is_named_with_its_file_at_build(tmp_path, checkpoints, value):  # noqa: F811
    name = "model.diffusion_model.input_blocks.1.0.in_layers.2.weight"
    path = poisoned(tmp_path, checkpoints, [name], value)
    with pytest.raises(ValueError) as info:
        UNet.from_config(fixture_config("sd15-inpaint"), path)
    msg = str(info.value)
    assert msg.startswith(str(path))
    assert f"{name}: holds 1 NaN/Inf value of " in msg


def test_nan_weights_found_through_a_loaded_dict_still_name_the_file(tmp_path, checkpoints):  # noqa: F811
    name = "first_stage_model.decoder.conv_in.weight"
    path = poisoned(tmp_path, checkpoints, [name], np.nan)
    with pytest.raises(ValueError, match=rf"(?s)^{path}: .*{name}: holds 1 NaN/Inf"):
        Autoencoder.from_config(fixture_config("sd15-inpaint"), checkpoint.load(path))


def test_many_nan_weights_are_summarised_after_the_first_ten(tmp_path, checkpoints):  # noqa: F811
    names = [k for k in checkpoint.load(checkpoints.get("sd15-inpaint"))
             if k.startswith("model.diffusion_model.") and k.endswith(".weight")][:13]
    path = poisoned(tmp_path, checkpoints, names, np.nan)
    with pytest.raises(ValueError) as info:
        UNet.from_config(fixture_config("sd15-inpaint"), path)
    msg = str(info.value)
    assert "13 weight problems" in msg
    assert sum(n in msg for n in names) == 10
    assert "and 3 more weights holding NaN/Inf" in msg
