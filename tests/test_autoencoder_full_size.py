"""asymvq.autoencoder at the real widths (SPEC §3.1, §4.2) against PyTorch, with random fixture weights.

The encoder, SD's decoder and the base decoder run on 256 x 256 images; the 1.5x and 2x decoders
(2.6 and 6 TFLOP per 512 x 512 image in the reference) on 128 x 128 to keep this file near two minutes
of CPU time on two cores; their widths, depths and weights are the real ones.  Tolerances are those of
test_autoencoder.py (fp32: 1e-4 x std; bf16: the stated bound).
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from asymvq import config, tables
from asymvq.autoencoder import Autoencoder
from asymvq.config import AutoencoderSpec, DiffusionSpec
from fixtures import fixture_spec, random_tensor, state_dict_items
from reference import vae_reference as ref
from test_autoencoder import assert_bf16_close, assert_fp32_close, inputs, numpy_weights

pytestmark = pytest.mark.slow

SIZES = {"base": "", "large": "_large", "large2": "_large2"}
IMAGE = {"base": 256, "large": 128, "large2": 128}


@functools.lru_cache(maxsize=1)
def sd_first_stage() -> tuple[AutoencoderSpec, dict[str, torch.Tensor]]:
    """SD's first stage at full size (the tensors of the sd15-inpaint fixture, without the UNet)."""
    spec = fixture_spec("sd15-inpaint", tiny=False)
    assert isinstance(spec, DiffusionSpec)
    table = tables.vae_encoder_tensors(spec.first_stage)
    table.update(tables.decoder_tensors(spec.first_stage, prefix="first_stage_model."))
    return spec.first_stage, {name: random_tensor(name, shape) for name, shape in table.items()}


@functools.lru_cache(maxsize=1)
def decoder_state(size: str) -> dict[str, torch.Tensor]:
    """The full-size asymmetric checkpoint's decoder tensors (what the decoder reads)."""
    return {
        name: t
        for name, t in state_dict_items(f"decoder-{size}", tiny=False)
        if name.startswith(("decoder.", "post_quant_conv."))
    }


def decoder_spec(size: str, condition: bool = True) -> AutoencoderSpec:
    spec = config.load(config.packaged_config(f"autoencoder_kl_{'' if condition else 'woc_'}32x32x4{SIZES[size]}"))
    assert isinstance(spec, AutoencoderSpec)
    return spec


@functools.lru_cache(maxsize=1)
def sd_reference_outputs() -> dict[str, np.ndarray]:
    spec, state = sd_first_stage()
    model = ref.diffusers_autoencoder(spec, state, prefix="first_stage_model.")
    x = inputs(1, 256, 256)
    mean, logvar = ref.diffusers_posterior(model, torch.from_numpy(x["image"]))
    decoded = ref.diffusers_decode(model, torch.from_numpy(x["latent"]))
    return {"mean": mean.numpy(), "logvar": logvar.numpy(), "decoded": decoded.numpy()}


def sd_autoencoder(precision: str) -> Autoencoder:
    _, state = sd_first_stage()
    return Autoencoder.from_config(config.packaged_config("v1-inpainting-inference"), numpy_weights(state), precision)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_sd_encoder_at_real_width_matches_diffusers(precision: str) -> None:
    want = sd_reference_outputs()
    mean, logvar = sd_autoencoder(precision).posterior(inputs(1, 256, 256)["image"])
    check = assert_fp32_close if precision == "fp32" else assert_bf16_close
    check(mean, want["mean"])
    check(logvar, want["logvar"])


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_sd_decoder_at_real_width_matches_diffusers(precision: str) -> None:
    want = sd_reference_outputs()["decoded"]
    got = sd_autoencoder(precision).decode(inputs(1, 256, 256)["latent"])
    (assert_fp32_close if precision == "fp32" else assert_bf16_close)(got, want)


@functools.lru_cache(maxsize=None)
def conditional_reference(size: str) -> np.ndarray:
    """diffusers for 1.5x and 2x, the SPEC reference for base."""
    x = {k: torch.from_numpy(v) for k, v in inputs(1, IMAGE[size], IMAGE[size]).items()}
    spec, state = decoder_spec(size), decoder_state(size)
    if size == "base":
        model = ref.reference_autoencoder(spec, state, encoder=False)
        return model.decode(x["latent"], x["image"], x["mask"]).numpy()
    model = ref.diffusers_autoencoder(spec, state, parts="decoder")
    return ref.diffusers_decode(model, x["latent"], x["image"], x["mask"]).numpy()


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("size", ["base", "large", "large2"])
def test_conditional_decoder_at_real_width_matches_its_reference(size: str, precision: str) -> None:
    want = conditional_reference(size)
    ae = Autoencoder.from_config(decoder_spec(size), numpy_weights(decoder_state(size)), precision, parts="decoder")
    x = inputs(1, IMAGE[size], IMAGE[size])
    got = ae.decode(x["latent"], x["image"], x["mask"])
    (assert_fp32_close if precision == "fp32" else assert_bf16_close)(got, want)


def test_decoder_without_condition_at_real_width_matches_the_spec_reference() -> None:
    x = inputs(1, 64, 64)
    state = decoder_state("large2")
    want = ref.reference_autoencoder(decoder_spec("large2", False), state, encoder=False).decode(
        torch.from_numpy(x["latent"])
    )
    ae = Autoencoder.from_config(decoder_spec("large2", False), numpy_weights(state), parts="decoder")
    assert_fp32_close(ae.decode(x["latent"]), want)
