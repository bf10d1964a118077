"""asymvq.autoencoder: SD's KL encoder, SD's decoder and the asymmetric decoders against PyTorch.

References (random fixture weights with the real key names, tiny widths here; the real widths are in
test_autoencoder_slow.py):

* diffusers ``AutoencoderKL``: the encoder and SD's vanilla decoder;
* diffusers ``AsymmetricAutoencoderKL``: the 1.5x and 2x decoders with condition;
* ``reference/vae_reference.py`` (written from SPEC §3-§4): the base decoder with condition and the
  decoders without condition.

fp32: max |asymvq - reference| <= 1e-4 x std(reference).
bf16 (weights and activations in bf16, f32 accumulation): max error <= BF16_MAX x std and mean error
<= BF16_MEAN x std, where std is the fp32 reference's.  Measured (tiny and real widths): max 0.05-0.23,
mean 0.005-0.012; PyTorch's own bf16 (whole model in bf16, or autocast) shows the same magnitude
(max 0.17-0.19, mean 0.008 on the tiny base decoder), because every one of the ~30 layers rounds its
activations to 8 significant bits.  The bounds leave ~2x margin.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from asymvq import checkpoint, config, convert, tables
from asymvq.autoencoder import Autoencoder
from asymvq.config import AutoencoderSpec, DiffusionSpec
from fixtures import fixture_config, fixture_spec, random_tensor, state_dict_items
from isa import needs_bf16
from reference import vae_reference as ref

FP32_TOL = 1e-4
BF16_MAX = 0.5
BF16_MEAN = 0.025

SIZES = {"base": "", "large": "_large", "large2": "_large2"}


# --------------------------------------------------------------------------------------------------
# Weights, configs and inputs


def decoder_config(size: str, condition: bool = True) -> Path:
    return config.packaged_tiny_config(f"autoencoder_kl_{'' if condition else 'woc_'}32x32x4{SIZES[size]}.yaml")


@functools.lru_cache(maxsize=None)
def decoder_state(size: str) -> dict[str, torch.Tensor]:
    """The tiny asymmetric checkpoint of ``size`` (encoder, decoder, up_layers, loss junk)."""
    return dict(state_dict_items(f"decoder-{size}", tiny=True))


@functools.lru_cache(maxsize=None)
def sd_first_stage() -> tuple[DiffusionSpec, dict[str, torch.Tensor]]:
    """The tiny SD checkpoint's first stage (the same tensors as the sd15-inpaint fixture holds)."""
    spec = fixture_spec("sd15-inpaint", tiny=True)
    assert isinstance(spec, DiffusionSpec)
    table = tables.vae_encoder_tensors(spec.first_stage)
    table.update(tables.decoder_tensors(spec.first_stage, prefix="first_stage_model."))
    return spec, {name: random_tensor(name, shape) for name, shape in table.items()}


def numpy_weights(state: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {name: t.numpy() for name, t in state.items()}


def decoder_spec(size: str, condition: bool = True) -> AutoencoderSpec:
    spec = config.load(decoder_config(size, condition))
    assert isinstance(spec, AutoencoderSpec)
    return spec


@functools.lru_cache(maxsize=None)
def decoder(size: str, condition: bool = True, precision: str = "fp32") -> Autoencoder:
    return Autoencoder.from_config(
        decoder_config(size, condition), numpy_weights(decoder_state(size)), precision, parts="decoder"
    )


def inputs(batch: int = 1, height: int = 48, width: int = 64, seed: int = 0) -> dict[str, np.ndarray]:
    """latent [B, 4, H/8, W/8], image in [-1, 1], and a mask with a rectangular hole plus scattered pixels."""
    rng = np.random.RandomState(seed)
    mask = np.zeros((batch, 1, height, width), np.float32)
    mask[:, :, height // 4 : 3 * height // 4, width // 8 : width // 2] = 1
    mask[rng.rand(*mask.shape) < 0.1] = 1
    return {
        "latent": rng.randn(batch, 4, height // 8, width // 8).astype(np.float32),
        "image": (rng.rand(batch, 3, height, width) * 2 - 1).astype(np.float32),
        "mask": mask,
    }


def t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a)


def assert_fp32_close(got: np.ndarray, want: torch.Tensor | np.ndarray) -> None:
    want = want.numpy() if isinstance(want, torch.Tensor) else want
    assert got.shape == want.shape and got.dtype == np.float32
    err, scale = float(np.abs(got - want).max()), float(want.std())
    assert err <= FP32_TOL * scale, f"max error {err:.3g} = {err / scale:.3g} x std (bound {FP32_TOL})"


def assert_bf16_close(got: np.ndarray, want: torch.Tensor | np.ndarray) -> None:
    want = want.numpy() if isinstance(want, torch.Tensor) else want
    err, scale = np.abs(got - want), float(want.std())
    assert err.max() <= BF16_MAX * scale, f"bf16 max error {err.max() / scale:.3g} x std (bound {BF16_MAX})"
    assert err.mean() <= BF16_MEAN * scale, f"bf16 mean error {err.mean() / scale:.3g} x std (bound {BF16_MEAN})"


# --------------------------------------------------------------------------------------------------
# Encoder (diffusers AutoencoderKL)


@functools.lru_cache(maxsize=None)
def sd_autoencoder(precision: str = "fp32") -> Autoencoder:
    spec, state = sd_first_stage()
    return Autoencoder.from_config(fixture_config("sd15-inpaint"), numpy_weights(state), precision)


@functools.lru_cache(maxsize=None)
def diffusers_sd() -> torch.nn.Module:
    spec, state = sd_first_stage()
    return ref.diffusers_autoencoder(spec.first_stage, state, prefix="first_stage_model.")


@pytest.mark.parametrize("shape", [(2, 48, 64), (1, 40, 56)])
def test_encoder_posterior_matches_diffusers_autoencoderkl(shape: tuple[int, int, int]) -> None:
    image = inputs(*shape)["image"]
    mean, logvar = sd_autoencoder().posterior(image)
    want_mean, want_logvar = ref.diffusers_posterior(diffusers_sd(), t(image))
    assert_fp32_close(mean, want_mean)
    assert_fp32_close(logvar, want_logvar)


@needs_bf16
def test_encoder_in_bf16_stays_within_the_bf16_bound() -> None:
    image = inputs()["image"]
    mean, logvar = sd_autoencoder("bf16").posterior(image)
    want_mean, want_logvar = ref.diffusers_posterior(diffusers_sd(), t(image))
    assert_bf16_close(mean, want_mean)
    assert_bf16_close(logvar, want_logvar)


def test_encode_returns_the_posterior_mean_by_default() -> None:
    image = inputs()["image"]
    ae = sd_autoencoder()
    np.testing.assert_array_equal(ae.encode(image), ae.posterior(image)[0])


def test_sampled_latent_is_mean_plus_std_times_the_given_noise() -> None:
    image = inputs()["image"]
    noise = np.random.RandomState(5).randn(1, 4, 6, 8).astype(np.float32)
    got = sd_autoencoder().encode(image, sample=True, noise=noise)
    mean, logvar = ref.diffusers_posterior(diffusers_sd(), t(image))
    assert_fp32_close(got, mean + torch.exp(0.5 * logvar) * t(noise))


def test_seeded_sample_draws_its_noise_from_numpy_randomstate() -> None:
    image, ae = inputs()["image"], sd_autoencoder()
    noise = np.random.RandomState(11).standard_normal((1, 4, 6, 8)).astype(np.float32)
    np.testing.assert_array_equal(ae.encode(image, sample=True, seed=11), ae.encode(image, sample=True, noise=noise))


def test_logvar_is_clamped_to_minus_30_and_20() -> None:
    _, state = sd_first_stage()
    weights = numpy_weights(state)
    bias = weights["first_stage_model.quant_conv.bias"].copy()
    bias[4:6], bias[6:8] = 1e4, -1e4  # log-variance channels pushed far out of range
    weights["first_stage_model.quant_conv.bias"] = bias
    ae = Autoencoder.from_config(fixture_config("sd15-inpaint"), weights, parts="encoder")
    _, logvar = ae.posterior(inputs()["image"])
    assert (logvar[:, :2] == 20).all() and (logvar[:, 2:] == -30).all()


# --------------------------------------------------------------------------------------------------
# Decoders


def test_sd_vanilla_decoder_matches_diffusers_autoencoderkl() -> None:
    x = inputs(1, 40, 56)
    got = sd_autoencoder().decode(x["latent"])
    assert_fp32_close(got, ref.diffusers_decode(diffusers_sd(), t(x["latent"])))


@functools.lru_cache(maxsize=None)
def spec_reference(size: str, condition: bool) -> ref.KLAutoencoder:
    return ref.reference_autoencoder(decoder_spec(size, condition), decoder_state(size), encoder=False)


@functools.lru_cache(maxsize=None)
def diffusers_asymmetric(size: str) -> torch.nn.Module:
    return ref.diffusers_autoencoder(decoder_spec(size), decoder_state(size))


def reference_decode(size: str, condition: bool, x: dict[str, np.ndarray]) -> torch.Tensor:
    """diffusers for the 1.5x / 2x decoders with condition, the SPEC reference otherwise."""
    if condition and size != "base":
        return ref.diffusers_decode(diffusers_asymmetric(size), t(x["latent"]), t(x["image"]), t(x["mask"]))
    if condition:
        return spec_reference(size, True).decode(t(x["latent"]), t(x["image"]), t(x["mask"]))
    return spec_reference(size, False).decode(t(x["latent"]))


def run_decoder(size: str, condition: bool, x: dict[str, np.ndarray], precision: str = "fp32") -> np.ndarray:
    if condition:
        return decoder(size, True, precision).decode(x["latent"], x["image"], x["mask"])
    return decoder(size, False, precision).decode(x["latent"])


@pytest.mark.parametrize("size", ["base", "large", "large2"])
def test_conditional_decoder_matches_its_reference(size: str) -> None:
    x = inputs()
    assert_fp32_close(run_decoder(size, True, x), reference_decode(size, True, x))


@pytest.mark.parametrize("size", ["base", "large", "large2"])
def test_decoder_without_condition_matches_the_spec_reference(size: str) -> None:
    x = inputs(1, 40, 56)
    assert_fp32_close(run_decoder(size, False, x), reference_decode(size, False, x))


@needs_bf16
@pytest.mark.parametrize("size", ["base", "large2"])
@pytest.mark.parametrize("condition", [True, False])
def test_decoder_in_bf16_stays_within_the_bf16_bound(size: str, condition: bool) -> None:
    x = inputs()
    assert_bf16_close(run_decoder(size, condition, x, "bf16"), reference_decode(size, condition, x))


def test_odd_latent_sizes_and_batches_decode_like_the_reference() -> None:
    x = inputs(3, 24, 40)  # latent 3 x 5
    assert_fp32_close(run_decoder("base", True, x), reference_decode("base", True, x))


# --------------------------------------------------------------------------------------------------
# The condition is wired


def outside(mask: np.ndarray, a: np.ndarray) -> np.ndarray:
    return a[np.broadcast_to(mask, a.shape) == 0]


def test_output_outside_the_hole_depends_on_the_image() -> None:
    x = inputs()
    other = dict(x, image=np.where(x["mask"] == 0, -x["image"], x["image"]))  # known pixels changed
    a, b = run_decoder("base", True, x), run_decoder("base", True, other)
    change = np.abs(outside(x["mask"], a) - outside(x["mask"], b)).mean()
    assert change > 0.1 * a.std()


def test_pixels_inside_the_hole_do_not_change_the_output() -> None:
    x = inputs()
    other = dict(x, image=np.where(x["mask"] == 1, np.float32(0.123), x["image"]))  # hole pixels changed
    got = run_decoder("base", True, other)
    np.testing.assert_array_equal(got, run_decoder("base", True, x))
    assert_fp32_close(got, reference_decode("base", True, other))


def test_all_ones_mask_equals_the_decoder_without_condition_exactly() -> None:
    x = inputs()
    ones = dict(x, mask=np.ones_like(x["mask"]))
    np.testing.assert_array_equal(run_decoder("large", True, ones), run_decoder("large", False, x))


def test_conditional_decoder_without_image_and_mask_equals_the_decoder_without_condition() -> None:
    x = inputs()
    np.testing.assert_array_equal(decoder("base", True).decode(x["latent"]), run_decoder("base", False, x))


# --------------------------------------------------------------------------------------------------
# Loading


def test_ckpt_and_safetensors_files_load_like_the_state_dict(checkpoints: Any) -> None:
    x = inputs(1)
    want = run_decoder("base", True, x)
    for fmt in ("ckpt", "safetensors"):
        path = checkpoints.get("decoder-base", tiny=True, fmt=fmt)
        ae = Autoencoder.from_config(decoder_config("base"), path)
        assert ae.has_encoder and ae.has_decoder
        np.testing.assert_array_equal(ae.decode(x["latent"], x["image"], x["mask"]), want)


def test_a_converted_decoder_file_needs_no_config(checkpoints: Any, tmp_path: Path) -> None:
    out = tmp_path / "decoder.safetensors"
    convert.convert(decoder_config("large2"), checkpoints.get("decoder-large2", tiny=True), out)
    ae = Autoencoder.from_config(None, out)
    assert ae.conditional and not ae.has_encoder
    x = inputs(1)
    np.testing.assert_array_equal(ae.decode(x["latent"], x["image"], x["mask"]), run_decoder("large2", True, x))


def test_a_converted_inpainting_file_gives_sd_encoder_and_asymmetric_decoder(checkpoints: Any, tmp_path: Path) -> None:
    out = tmp_path / "inpaint.safetensors"
    convert.convert(
        fixture_config("sd15-inpaint"), checkpoints.get("sd15-inpaint"), out,
        decoder_config=decoder_config("base"), decoder_ckpt=checkpoints.get("decoder-base"),
    )
    ae = Autoencoder.from_config(None, out)
    assert ae.has_encoder and ae.conditional
    x = inputs()
    np.testing.assert_array_equal(ae.posterior(x["image"])[0], sd_autoencoder().posterior(x["image"])[0])
    np.testing.assert_array_equal(ae.decode(x["latent"], x["image"], x["mask"]), run_decoder("base", True, x))


def test_float16_weights_are_widened_to_float32() -> None:
    half = {k: v.numpy().astype(np.float16) for k, v in decoder_state("base").items()}
    ae = Autoencoder.from_config(decoder_config("base", False), half, parts="decoder")
    rounded = {k: v.astype(np.float32) for k, v in half.items()}
    want = Autoencoder.from_config(decoder_config("base", False), rounded, parts="decoder")
    z = inputs()["latent"]
    np.testing.assert_array_equal(ae.decode(z), want.decode(z))


@needs_bf16
def test_bf16_weights_are_accepted() -> None:
    bits = {k: checkpoint.float32_to_bf16(v.numpy()) for k, v in decoder_state("base").items()}
    ae = Autoencoder.from_config(decoder_config("base", False), bits, precision="bf16", parts="decoder")
    x = inputs()
    assert_bf16_close(ae.decode(x["latent"]), reference_decode("base", False, x))


def test_auto_parts_loads_the_parts_the_weights_hold() -> None:
    state = {k: v for k, v in decoder_state("base").items() if not k.startswith(("encoder.", "quant_conv."))}
    ae = Autoencoder.from_config(decoder_config("base"), numpy_weights(state))
    assert ae.has_decoder and not ae.has_encoder
    with pytest.raises(ValueError, match="no encoder"):
        ae.encode(inputs()["image"])


def test_parameters_are_those_of_the_required_tensor_tables() -> None:
    spec = decoder_spec("large")
    assert decoder("large").num_parameters == tables.count_parameters(tables.decoder_tensors(spec))
    assert decoder("large", False).num_parameters == tables.count_parameters(
        tables.decoder_tensors(decoder_spec("large", False))
    )


def test_plans_are_cached_per_shape_and_freed_by_clear_plans() -> None:
    ae = Autoencoder.from_config(decoder_config("base", False), numpy_weights(decoder_state("base")), parts="decoder")
    z = inputs()["latent"]
    first = ae.decode(z)
    held = ae.memory_bytes
    assert held > 0
    np.testing.assert_array_equal(ae.decode(z), first)
    assert ae.memory_bytes == held
    ae.clear_plans()
    assert ae.memory_bytes == 0


# --------------------------------------------------------------------------------------------------
# Bad input


def test_image_with_the_wrong_channel_count_is_rejected() -> None:
    with pytest.raises(ValueError, match="image must have 3 channel"):
        sd_autoencoder().encode(np.zeros((1, 4, 16, 16), np.float32))


def test_image_sizes_must_be_multiples_of_8() -> None:
    with pytest.raises(ValueError, match="multiples of 8, got 20 x 16"):
        sd_autoencoder().encode(np.zeros((1, 3, 20, 16), np.float32))


def test_latent_must_have_4_channels() -> None:
    with pytest.raises(ValueError, match="latent must have 4 channel"):
        decoder("base", False).decode(np.zeros((1, 3, 4, 4), np.float32))


def test_latent_must_be_nchw() -> None:
    with pytest.raises(ValueError, match=r"latent must be 4-D"):
        decoder("base", False).decode(np.zeros((4, 4, 4), np.float32))


def test_mask_must_have_the_image_shape() -> None:
    x = inputs()
    with pytest.raises(ValueError, match="mask must have the image's shape"):
        decoder("base").decode(x["latent"], x["image"], x["mask"][:, :, :40])


def test_image_must_be_8_times_the_latent() -> None:
    x = inputs()
    with pytest.raises(ValueError, match=r"image must have shape \[1, 3, 48, 64\]"):
        decoder("base").decode(x["latent"], x["image"][:, :, :40, :56], x["mask"][:, :, :40, :56])


@pytest.mark.parametrize("missing", ["image", "mask"])
def test_image_and_mask_go_together(missing: str) -> None:
    x = inputs()
    args = {k: v for k, v in x.items() if k != missing}
    with pytest.raises(ValueError, match=f"{'mask' if missing == 'image' else 'image'} was given without"):
        decoder("base").decode(**args)


def test_a_decoder_without_condition_refuses_image_and_mask() -> None:
    x = inputs()
    with pytest.raises(ValueError, match="has no condition"):
        decoder("base", False).decode(x["latent"], x["image"], x["mask"])


def test_mask_values_must_be_0_or_1() -> None:
    x = inputs()
    with pytest.raises(ValueError, match="exactly 0 or 1"):
        decoder("base").decode(x["latent"], x["image"], x["mask"] * 0.5)


@pytest.mark.parametrize("name", ["latent", "image", "mask"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_inputs_are_rejected(name: str, bad: float) -> None:
    x = inputs()
    x[name] = x[name].copy()
    x[name][0, 0, 1, 1] = bad
    with pytest.raises(ValueError, match=f"{name} contains 1 NaN or Inf"):
        decoder("base").decode(x["latent"], x["image"], x["mask"])


def test_non_finite_noise_is_rejected() -> None:
    noise = np.full((1, 4, 6, 8), np.nan, np.float32)
    with pytest.raises(ValueError, match="noise contains 192 NaN or Inf"):
        sd_autoencoder().encode(inputs()["image"], sample=True, noise=noise)


def test_noise_must_have_the_latent_shape() -> None:
    with pytest.raises(ValueError, match=r"noise must have the latent's shape \[1, 4, 6, 8\]"):
        sd_autoencoder().encode(inputs()["image"], sample=True, noise=np.zeros((1, 4, 6, 6), np.float32))


def test_noise_without_sample_is_rejected() -> None:
    with pytest.raises(ValueError, match="only with sample=True"):
        sd_autoencoder().encode(inputs()["image"], seed=1)


def test_missing_and_misshaped_weights_are_all_listed_at_once() -> None:
    weights = numpy_weights(decoder_state("base"))
    del weights["decoder.conv_in.weight"]
    del weights["decoder.encoder.layers.3.bias"]
    weights["decoder.up.0.block.0.nin_shortcut.weight"] = np.zeros((64, 64, 1, 1), np.float32)
    with pytest.raises(ValueError) as info:
        Autoencoder.from_config(decoder_config("base"), weights, parts="decoder")
    message = str(info.value)
    assert "3 weight problems" in message
    assert "decoder.conv_in.weight: missing" in message
    assert "decoder.encoder.layers.3.bias: missing" in message
    assert "decoder.up.0.block.0.nin_shortcut.weight: shape [64, 64, 1, 1], expected [32, 64, 1, 1]" in message


def test_weights_of_an_unsupported_dtype_are_named() -> None:
    weights = numpy_weights(decoder_state("base"))
    weights["decoder.conv_out.bias"] = np.zeros(3, np.int32)
    with pytest.raises(ValueError, match="decoder.conv_out.bias: dtype must be float32 or bfloat16"):
        Autoencoder.from_config(decoder_config("base"), weights, parts="decoder")


def test_decoder_weights_for_the_wrong_size_are_rejected() -> None:
    with pytest.raises(ValueError, match="weight problems"):
        Autoencoder.from_config(decoder_config("large"), numpy_weights(decoder_state("base")), parts="decoder")


def test_encode_needs_an_encoder_and_decode_a_decoder() -> None:
    _, state = sd_first_stage()
    enc = Autoencoder.from_config(fixture_config("sd15-inpaint"), numpy_weights(state), parts="encoder")
    with pytest.raises(ValueError, match="no decoder"):
        enc.decode(inputs()["latent"])
    with pytest.raises(ValueError, match="no encoder"):
        decoder("base").encode(inputs()["image"])


def test_unknown_precision_and_parts_are_rejected() -> None:
    weights = numpy_weights(decoder_state("base"))
    with pytest.raises(ValueError, match="precision"):
        Autoencoder.from_config(decoder_config("base"), weights, precision="fp16")
    with pytest.raises(ValueError, match="parts must be"):
        Autoencoder.from_config(decoder_config("base"), weights, parts="mid")  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------
# Tiled decoding


def test_a_tile_covering_the_image_decodes_exactly() -> None:
    x = inputs()
    ae = decoder("base")
    np.testing.assert_array_equal(
        ae.decode(x["latent"], x["image"], x["mask"], tile=64), ae.decode(x["latent"], x["image"], x["mask"])
    )


@pytest.mark.parametrize("condition, mean_bound, max_bound", [(False, 0.12, 1.2), (True, 0.25, 8.0)])
def test_tiled_decode_stays_close_to_the_whole_decode(condition: bool, mean_bound: float, max_bound: float) -> None:
    """192 px tiles overlapping by 64 px on a 256 x 256 image.  Measured with these random weights
    (mean | max error / std): 0.06 | 0.62 without condition, 0.11 | 3.6 with it; 128 px tiles give
    0.13 | 1.4 and 0.37 | 15.  The errors come from GroupNorm statistics and attention restricted to
    one tile; with the condition they are larger because each GroupNorm then normalises a mix of
    decoder and condition features whose proportions (the hole's share of the tile) vary per tile."""
    x = inputs(1, 256, 256, seed=3)
    ae = Autoencoder.from_config(
        decoder_config("base", condition), numpy_weights(decoder_state("base")), parts="decoder"
    )
    args = (x["latent"], x["image"], x["mask"]) if condition else (x["latent"],)
    whole = ae.decode(*args)
    whole_bytes = ae.memory_bytes
    ae.clear_plans()
    tiled = ae.decode(*args, tile=192, overlap=64)
    err = np.abs(tiled - whole) / whole.std()
    assert err.mean() <= mean_bound and err.max() <= max_bound, (err.mean(), err.max())
    assert ae.memory_bytes < 0.6 * whole_bytes


def test_tiled_conditional_decode_crops_image_and_mask_with_the_same_window() -> None:
    x = inputs(1, 192, 256, seed=3)
    other = dict(x, image=np.where(x["mask"] == 1, np.float32(-0.7), x["image"]))  # hole pixels changed
    ae = decoder("base")
    np.testing.assert_array_equal(
        ae.decode(**x, tile=128, overlap=32), ae.decode(**other, tile=128, overlap=32)
    )


@pytest.mark.parametrize("tile, overlap", [(100, None), (8, None), (64, 64), (64, 12), (True, None)])
def test_bad_tile_settings_are_rejected(tile: Any, overlap: Any) -> None:
    with pytest.raises(ValueError, match="tile|overlap"):
        decoder("base", False).decode(inputs()["latent"], tile=tile, overlap=overlap)
