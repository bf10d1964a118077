"""asymvq.UNet at the real SD v1 widths (860 M parameters, random weights) against diffusers'
UNet2DConditionModel holding the same weights: 32x32 latent, batch 2 with distinct timesteps,
the 4-channel txt2img UNet and the 9-channel inpainting UNet.

Metric as in test_unet.py: fp32 max abs error <= 1e-4 * std(reference); bf16 relative RMS error
<= 3 % and max abs error <= 0.15 * std(reference).
"""

from __future__ import annotations

import gc

import numpy as np
import pytest

from asymvq import config
from asymvq.unet import UNet
from reference.unet_reference import build_reference, random_unet_weights, reference_eps

pytestmark = pytest.mark.slow

FP32_TOL = 1e-4
BF16_REL_RMS = 0.03
BF16_MAX = 0.15
SIZE = 32


def full_spec(name: str) -> config.UNetSpec:
    spec = config.load(config.packaged_config(name))
    assert isinstance(spec, config.DiffusionSpec)
    return spec.unet


@pytest.fixture(scope="module")
def t2i_weights() -> dict[str, np.ndarray]:
    return random_unet_weights(full_spec("v1-t2i-inference.yaml"), seed=3)


@pytest.fixture(scope="module")
def cases(t2i_weights):
    """name -> (spec, weights, inputs, diffusers' eps); the inpainting UNet shares every tensor but
    input_blocks.0.0.weight with the txt2img one."""
    out = {}
    for name, yaml in [("t2i", "v1-t2i-inference.yaml"), ("inpaint", "v1-inpainting-inference.yaml")]:
        spec = full_spec(yaml)
        weights = dict(t2i_weights)
        if spec.in_channels != 4:
            conv_in = "model.diffusion_model.input_blocks.0.0.weight"
            weights.update(random_unet_weights(spec, seed=4, only=[conv_in]))
        rng = np.random.default_rng(spec.in_channels)
        x = rng.standard_normal((2, spec.in_channels, SIZE, SIZE), dtype=np.float32)
        t = np.array([981, 21])
        context = rng.standard_normal((2, 77, spec.context_dim), dtype=np.float32)
        want = reference_eps(build_reference(spec, weights), x, t, context)
        gc.collect()
        out[name] = (spec, weights, (x, t, context), want)
    return out


@pytest.mark.parametrize("name", ["t2i", "inpaint"])
def test_full_size_fp32_matches_diffusers(cases, name):
    spec, weights, (x, t, context), want = cases[name]
    got = UNet.from_config(spec, weights)(x, t, context)
    assert spec.model_channels == 320 and spec.in_channels == (4 if name == "t2i" else 9)
    assert np.abs(got - want).max() <= FP32_TOL * want.std()


@pytest.mark.parametrize("name", ["t2i", "inpaint"])
def test_full_size_bf16_stays_within_the_stated_bound(cases, name):
    spec, weights, (x, t, context), want = cases[name]
    got = UNet.from_config(spec, weights, precision="bf16")(x, t, context)
    assert np.linalg.norm(got - want) / np.linalg.norm(want) <= BF16_REL_RMS
    assert np.abs(got - want).max() <= BF16_MAX * want.std()
