"""The exact banded decode (``Autoencoder.decode(banded=True)``) against the whole decode.

The banded decode runs the decoder layer by layer over bands of rows with whole-image GroupNorm
statistics, so it must give the whole decode's result up to float rounding: fp32 within
``EXACT = 1e-5`` relative (max |banded - whole| / max |whole|; measured 0.7e-6 to 3.5e-6 on these
tiny decoders, 3e-6 with the real base decoder), bf16 within the bf16 bounds of test_autoencoder.py
against the bf16 whole decode.  Checked that the bound catches a real defect: with bands reading
their first GroupNorm input one row too low (no halo row above), 12 of the 16 base-decoder cases
fail (the 4 that pass decode in one band).

Images are 72 x 56 (latent 9 x 7), so the rows per level are 9, 18, 36, 72 (the 1.5x and 2x
decoders have the same 4 levels): band_rows 1 is the smallest band, 3 divides every level's height,
4 divides 36 and 72 but not 9 or 18 (a short last band), None is the memory budget's choice (one
band here).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from isa import needs_bf16
from test_autoencoder import BF16_MAX, BF16_MEAN, decoder, decoder_config, decoder_state, inputs, numpy_weights

import asymvq.autoencoder as autoencoder_module
from asymvq.autoencoder import Autoencoder

EXACT = 1e-5
HEIGHT, WIDTH = 72, 56


def decode_args(ae: Autoencoder, condition: bool, batch: int) -> tuple[np.ndarray, ...]:
    x = inputs(batch, HEIGHT, WIDTH, seed=batch)
    return (x["latent"], x["image"], x["mask"]) if condition else (x["latent"],)


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    assert got.shape == want.shape and got.dtype == np.float32
    return float(np.abs(got - want).max() / np.abs(want).max())


def banded_plans(ae: Autoencoder) -> list[str]:
    return [p["task"] for p in ae.plans if "banded" in p["task"]]


@pytest.mark.parametrize("size", ["base", "large", "large2"])
@pytest.mark.parametrize("condition", [False, True], ids=["uncond", "cond"])
@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("band_rows", [1, 3, 4, None], ids=["rows1", "rows3", "rows4", "budget"])
def test_banded_decode_equals_the_whole_decode_in_fp32(
    size: str, condition: bool, batch: int, band_rows: int | None
) -> None:
    ae = decoder(size, condition)
    args = decode_args(ae, condition, batch)
    whole = ae.decode(*args, banded=False)
    banded = ae.decode(*args, banded=True, band_rows=band_rows)
    err = relative_error(banded, whole)
    assert err <= EXACT, f"banded vs whole: {err:.3g} relative (bound {EXACT})"


@needs_bf16
@pytest.mark.parametrize("size", ["base", "large2"])
@pytest.mark.parametrize("condition", [False, True], ids=["uncond", "cond"])
def test_banded_decode_in_bf16_stays_within_the_bf16_bound_of_the_whole_decode(size: str, condition: bool) -> None:
    ae = decoder(size, condition, "bf16")
    args = decode_args(ae, condition, 2)
    whole = ae.decode(*args, banded=False)
    banded = ae.decode(*args, banded=True, band_rows=4)
    err, scale = np.abs(banded - whole), float(whole.std())
    assert err.max() <= BF16_MAX * scale, f"bf16 max error {err.max() / scale:.3g} x std (bound {BF16_MAX})"
    assert err.mean() <= BF16_MEAN * scale, f"bf16 mean error {err.mean() / scale:.3g} x std (bound {BF16_MEAN})"


def test_a_different_band_height_changes_only_rounding() -> None:
    """Two band heights agree with each other as closely as with the whole decode."""
    ae = decoder("base", True)
    args = decode_args(ae, True, 1)
    assert relative_error(ae.decode(*args, band_rows=1), ae.decode(*args, band_rows=5)) <= EXACT


def test_the_automatic_choice_decodes_in_bands_above_the_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    ae = Autoencoder.from_config(decoder_config("base", False), numpy_weights(decoder_state("base")), parts="decoder")
    monkeypatch.setattr(autoencoder_module, "BANDED_MIN_PIXELS", HEIGHT * WIDTH)
    at = inputs(1, HEIGHT, WIDTH)["latent"]
    ae.decode(at)
    assert banded_plans(ae) == [], "an image of exactly BANDED_MIN_PIXELS pixels decodes whole"
    above = inputs(1, HEIGHT + 8, WIDTH)["latent"]
    ae.decode(above)
    assert banded_plans(ae) == ["decode_banded"], "one more row of latent decodes in bands"
    ae.decode(above, banded=False)
    ae.decode(above, tile=64)
    assert banded_plans(ae) == ["decode_banded"], "banded=False and tile= decode without bands"


def test_the_default_threshold_is_the_documented_one() -> None:
    assert autoencoder_module.BANDED_MIN_PIXELS == 256 * 256
    assert "BANDED_MIN_PIXELS" in (Autoencoder.decode.__doc__ or "")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"banded": True, "tile": 64}, "cannot be combined"),
        ({"band_rows": 0}, "band_rows must be an integer >= 1"),
        ({"band_rows": -2}, "band_rows must be an integer >= 1"),
        ({"band_rows": 2.5}, "band_rows must be an integer >= 1"),
        ({"band_rows": True}, "band_rows must be an integer >= 1"),
        ({"banded": False, "band_rows": 4}, "banded decode only"),
        ({"tile": 64, "band_rows": 4}, "banded decode only"),
        ({"banded": "yes"}, "banded must be True, False or None"),
    ],
)
def test_bad_banded_settings_are_rejected(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        decoder("base", False).decode(inputs(1, HEIGHT, WIDTH)["latent"], **kwargs)


def test_the_core_rejects_a_negative_band_height_and_band_rows_without_bands() -> None:
    core = decoder("base", False)._core
    z = inputs(1, HEIGHT, WIDTH)["latent"]
    with pytest.raises(ValueError, match="band_rows must be >= 1"):
        core.decode(z, banded=True, band_rows=-1)
    with pytest.raises(ValueError, match="pass banded=True"):
        core.decode(z, band_rows=3)


@pytest.mark.slow
def test_banded_decode_of_the_real_base_decoder_equals_the_whole_decode() -> None:
    """Real widths (128-512, fp32 Winograd convs in the bands) at 256 x 256, with the condition."""
    from test_autoencoder_full_size import decoder_spec as full_spec
    from test_autoencoder_full_size import decoder_state as full_state

    weights = {k: v.numpy() for k, v in full_state("base").items()}
    ae = Autoencoder.from_config(full_spec("base"), weights, parts="decoder")
    x = inputs(1, 256, 256)
    args = (x["latent"], x["image"], x["mask"])
    whole = ae.decode(*args, banded=False)
    for band_rows in (16, None):
        err = relative_error(ae.decode(*args, banded=True, band_rows=band_rows), whole)
        assert err <= EXACT, f"band_rows {band_rows}: {err:.3g} relative (bound {EXACT})"
