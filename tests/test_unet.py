"""asymvq.UNet on the tiny configs: parity with diffusers' UNet2DConditionModel (same random weights,
converted from the ldm layout), plans, weight formats, and errors for bad input.

Metric: fp32 max abs error <= 1e-4 * std(reference). bf16 (activations and weights in bf16, f32
accumulation): relative RMS error <= 3 % and max abs error <= 0.15 * std(reference); measured on these
configs: ~1.6 % and <= 0.10, while diffusers itself cast to bf16 gives ~1.8 % and <= 0.09.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator

import numpy as np
import pytest
import torch
from isa import needs_bf16
from reference.unet_reference import build_reference, random_unet_weights, reference_eps

from asymvq import checkpoint, config
from asymvq.unet import UNet

FP32_TOL = 1e-4
BF16_REL_RMS = 0.03
BF16_MAX = 0.15

T2I = "v1-t2i-inference.yaml"
INPAINT = "v1-inpainting-inference.yaml"


def tiny_spec(name: str) -> config.UNetSpec:
    spec = config.load(config.packaged_tiny_config(name))
    assert isinstance(spec, config.DiffusionSpec)
    return spec.unet


@pytest.fixture(scope="module", autouse=True)
def torch_single_thread() -> Iterator[None]:
    """The tiny reference runs hundreds of small ops: one thread avoids thread wake-up costs that
    dominate them on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def t2i() -> tuple[config.UNetSpec, dict[str, np.ndarray]]:
    spec = tiny_spec(T2I)
    return spec, random_unet_weights(spec, seed=1)


@pytest.fixture(scope="module")
def inpaint() -> tuple[config.UNetSpec, dict[str, np.ndarray]]:
    spec = tiny_spec(INPAINT)
    return spec, random_unet_weights(spec, seed=2)


def inputs(spec: config.UNetSpec, batch: int, h: int, w: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, spec.in_channels, h, w), dtype=np.float32)
    t = rng.integers(0, 1000, batch)
    context = rng.standard_normal((batch, 77, spec.context_dim), dtype=np.float32)
    return x, t, context


def max_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / want.std())


# ---- parity ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["t2i", "inpaint"])
def test_fp32_matches_diffusers_on_a_non_square_latent_with_distinct_timesteps(which, request):
    spec, weights = request.getfixturevalue(which)
    x, _, context = inputs(spec, 2, 16, 24)
    t = np.array([981, 1])
    want = reference_eps(build_reference(spec, weights), x, t, context)
    got = UNet.from_config(spec, weights)(x, t, context)
    assert got.shape == want.shape == (2, 4, 16, 24) and got.dtype == np.float32
    assert max_error(got, want) <= FP32_TOL


@needs_bf16
@pytest.mark.parametrize("which", ["t2i", "inpaint"])
def test_bf16_stays_within_the_stated_bound_of_fp32_diffusers(which, request):
    spec, weights = request.getfixturevalue(which)
    x, t, context = inputs(spec, 2, 16, 16, seed=3)
    want = reference_eps(build_reference(spec, weights), x, t, context)
    got = UNet.from_config(spec, weights, precision="bf16")(x, t, context)
    assert got.dtype == np.float32
    assert np.linalg.norm(got - want) / np.linalg.norm(want) <= BF16_REL_RMS
    assert max_error(got, want) <= BF16_MAX


def test_batch_of_one_matches_diffusers(t2i):
    spec, weights = t2i
    x, t, context = inputs(spec, 1, 8, 8, seed=4)
    want = reference_eps(build_reference(spec, weights), x, t, context)
    assert max_error(UNet.from_config(spec, weights)(x, t, context), want) <= FP32_TOL


def test_each_batch_element_is_computed_independently(t2i):
    spec, weights = t2i
    unet = UNet.from_config(spec, weights)
    x, t, context = inputs(spec, 2, 16, 8, seed=5)
    pair = unet(x, t, context)
    for b in range(2):
        alone = unet(x[b : b + 1], t[b : b + 1], context[b : b + 1])
        assert max_error(alone[0], pair[b]) <= FP32_TOL


def test_one_timestep_applies_to_the_whole_batch(t2i):
    spec, weights = t2i
    unet = UNet.from_config(spec, weights)
    x, _, context = inputs(spec, 2, 8, 8, seed=6)
    np.testing.assert_array_equal(unet(x, 500, context), unet(x, np.array([500, 500]), context))


# ---- plans ----------------------------------------------------------------------------------------


def test_repeated_calls_reuse_one_plan_and_give_identical_results(t2i):
    spec, weights = t2i
    unet = UNet.from_config(spec, weights)
    x, t, context = inputs(spec, 2, 16, 16, seed=7)
    first = unet(x, t, context)
    plans = unet.plans
    x2, t2, context2 = inputs(spec, 2, 16, 16, seed=8)
    unet(x2, t2, context2)
    again = unet(x, t, context)
    np.testing.assert_array_equal(first, again)
    assert unet.plans == plans and len(plans) == 1
    assert plans[0]["batch"] == 2 and plans[0]["height"] == 16 and plans[0]["arena_bytes"] > 0


def test_each_input_shape_gets_its_own_plan(t2i):
    spec, weights = t2i
    unet = UNet.from_config(spec, weights)
    for batch, h, w in [(1, 8, 8), (2, 8, 8), (1, 16, 8)]:
        x, t, context = inputs(spec, batch, h, w)
        assert unet(x, t, context).shape == (batch, 4, h, w)
    shapes = sorted((p["batch"], p["height"], p["width"]) for p in unet.plans)
    assert shapes == [(1, 8, 8), (1, 16, 8), (2, 8, 8)]
    unet.clear_plans()
    assert unet.plans == []


# ---- configs and weights --------------------------------------------------------------------------


def test_from_config_reads_a_yaml_path_and_a_checkpoint_file(tmp_path, t2i):
    spec, weights = t2i
    path = tmp_path / "unet.safetensors"
    checkpoint.save_safetensors(path, {**weights, "cond_stage_model.unrelated": np.zeros(3, np.float32)})
    from_files = UNet.from_config(config.packaged_tiny_config(T2I), path)
    x, t, context = inputs(spec, 1, 8, 16)
    np.testing.assert_array_equal(from_files(x, t, context), UNet.from_config(spec, weights)(x, t, context))
    assert from_files.in_channels == 4 and from_files.num_params == sum(a.size for a in weights.values())


def test_bf16_weights_compute_like_their_float32_widening(t2i):
    spec, weights = t2i
    bits = {k: checkpoint.float32_to_bf16(a) for k, a in weights.items()}
    widened = {k: checkpoint.bf16_to_float32(b) for k, b in bits.items()}
    x, t, context = inputs(spec, 1, 8, 8)
    got = UNet.from_config(spec, bits)(x, t, context)
    want = UNet.from_config(spec, widened)(x, t, context)
    assert max_error(got, want) <= FP32_TOL


def test_float16_weights_are_accepted(t2i):
    spec, weights = t2i
    half = {k: a.astype(np.float16) for k, a in weights.items()}
    x, t, context = inputs(spec, 1, 8, 8)
    got = UNet.from_config(spec, half)(x, t, context)
    want = UNet.from_config(spec, {k: a.astype(np.float32) for k, a in half.items()})(x, t, context)
    np.testing.assert_array_equal(got, want)


def test_missing_and_misshaped_weights_are_all_reported_at_once(t2i):
    spec, weights = t2i
    broken = dict(weights)
    del broken["model.diffusion_model.middle_block.1.proj_in.weight"]
    broken["model.diffusion_model.out.2.weight"] = np.zeros((4, 32, 1, 1), np.float32)
    with pytest.raises(ValueError) as err:
        UNet.from_config(spec, broken)
    message = str(err.value)
    assert "2 weight problems" in message
    assert "middle_block.1.proj_in.weight: missing" in message
    assert "out.2.weight: shape [4, 32, 1, 1], expected [4, 32, 3, 3]" in message


def test_weights_without_unet_tensors_are_refused(t2i):
    spec, _ = t2i
    with pytest.raises(ValueError, match="no UNet tensors"):
        UNet.from_config(spec, {"first_stage_model.encoder.conv_in.weight": np.zeros((1,), np.float32)})


def test_an_autoencoder_config_is_refused(t2i):
    _, weights = t2i
    with pytest.raises(ValueError, match="autoencoder"):
        UNet.from_config(config.packaged_tiny_config("autoencoder_kl_32x32x4.yaml"), weights)


def test_an_unknown_precision_is_refused(t2i):
    spec, weights = t2i
    with pytest.raises(ValueError, match="precision"):
        UNet.from_config(spec, weights, precision="fp16")


# ---- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize("h, w", [(12, 16), (16, 20), (4, 8)])
def test_a_latent_size_that_is_not_a_multiple_of_8_is_refused(t2i, h, w):
    spec, weights = t2i
    x, t, context = inputs(spec, 1, h, w)
    with pytest.raises(ValueError, match="multiples of 8"):
        UNet.from_config(spec, weights)(x, t, context)


@pytest.mark.parametrize("shape", [(1, 76, 64), (1, 77, 768), (2, 77, 64), (77, 64)])
def test_a_context_of_the_wrong_shape_is_refused(t2i, shape):
    spec, weights = t2i
    x, t, _ = inputs(spec, 1, 8, 8)
    with pytest.raises(ValueError, match=r"context must have shape \[1, 77, 64\]"):
        UNet.from_config(spec, weights)(x, t, np.zeros(shape, np.float32))


def test_a_four_channel_latent_given_to_the_inpainting_unet_is_refused(inpaint):
    spec, weights = inpaint
    x, t, context = inputs(spec, 1, 8, 8)
    with pytest.raises(ValueError, match=r"4 channels, expected 9: .*mask"):
        UNet.from_config(spec, weights)(x[:, :4], t, context)


def test_inpainting_inputs_given_to_the_txt2img_unet_are_refused(t2i):
    spec, weights = t2i
    x, t, context = inputs(spec, 1, 8, 8)
    with pytest.raises(ValueError, match="9 channels, expected 4"):
        UNet.from_config(spec, weights)(np.concatenate([x, x, x[:, :1]], axis=1), t, context)


@pytest.mark.parametrize("timesteps", [np.array([1, 2, 3]), np.array([0.5]), np.array([-1])])
def test_bad_timesteps_are_refused(t2i, timesteps):
    spec, weights = t2i
    x, _, context = inputs(spec, 1, 8, 8)
    with pytest.raises(ValueError, match="timesteps"):
        UNet.from_config(spec, weights)(x, timesteps, context)


@pytest.mark.parametrize("t", [1000, 1e30, np.inf, np.nan])
def test_timesteps_outside_the_schedule_are_refused(t2i, t):
    spec, weights = t2i
    x, _, context = inputs(spec, 1, 8, 8)
    unet = UNet.from_config(spec, weights)
    with pytest.raises(ValueError, match="timesteps"):
        unet(x, np.array([t]), context)


def test_the_last_timestep_of_the_schedule_is_accepted(t2i):
    spec, weights = t2i
    x, _, context = inputs(spec, 1, 8, 8)
    unet = UNet.from_config(spec, weights)
    assert unet.num_timesteps == 1000
    assert np.isfinite(unet(x, 999, context)).all()


def test_the_schedule_length_comes_from_a_diffusion_config(t2i):
    short = dataclasses.replace(config.load(config.packaged_tiny_config(T2I)), timesteps=500)
    spec, weights = t2i
    x, _, context = inputs(spec, 1, 8, 8)
    unet = UNet.from_config(short, weights)
    assert unet.num_timesteps == 500
    with pytest.raises(ValueError, match=r"\[0, 500\)"):
        unet(x, 500, context)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", ["x", "context"])
def test_nan_or_inf_inputs_are_refused_naming_the_input(t2i, bad, where):
    spec, weights = t2i
    x, t, context = inputs(spec, 1, 8, 8)
    (x if where == "x" else context).flat[5] = bad
    with pytest.raises(ValueError, match=rf"{where} holds 1 NaN or Inf"):
        UNet.from_config(spec, weights)(x, t, context)


def test_a_latent_that_is_not_4d_is_refused(t2i):
    spec, weights = t2i
    x, t, context = inputs(spec, 1, 8, 8)
    with pytest.raises(ValueError, match="4-D"):
        UNet.from_config(spec, weights)(x[0], t, context)


# ---- the sampler's C path -------------------------------------------------------------------------


def test_a_plan_handed_to_the_sampler_is_pinned_until_released(t2i):
    spec, weights = t2i
    unet = UNet.from_config(spec, weights)
    x, t, context = inputs(spec, 2, 8, 8)
    pinned = unet._c_plan_for(2, 8, 8)
    with pytest.raises(RuntimeError, match="in use by a running sampler"):
        unet(x, t, context)
    unet.clear_plans()
    with pytest.raises(RuntimeError, match="in use"):
        unet._c_plan_for(2, 8, 8)
    del pinned
    assert unet(x, t, context).shape == (2, 4, 8, 8)
