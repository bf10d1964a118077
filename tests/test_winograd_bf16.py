"""bf16 Winograd F(2x2, 3x3) convolution against PyTorch in float64 and against asymvq's direct bf16 conv.

The inputs, weights and residuals are rounded to bf16 first (torch's ``bfloat16``, round to nearest
even, as asymvq's own conversion), so the float64 reference sees exactly the operands the library
sees and the error measured is the library's alone: V = B^T d B and U = G g G^T rounded to bf16, the
f32 GEMM accumulation and the one rounding of the output. The metric and the bound are those of
the direct bf16 conv (``test_ops_conv.py``: max|ours - ref| / max|ref| <= 1e-2, not loosened).
Measured on avx512_core_bf16, 2 threads: 3.3e-3 to 6.5e-3 for Winograd (the worst: 13 -> 21 channels,
few products to average the roundings out) where the direct conv gives 2.1e-3 to 3.5e-3: the two
extra roundings, of V and U.
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import pytest
import torch
from isa import INFO, needs_bf16
from test_ops_conv import BF16_BOUND, reference, rel_err

from asymvq._core import ops

pytestmark = needs_bf16

PAD1 = (1, 1, 1, 1)


def bf16_round(a: np.ndarray) -> np.ndarray:
    """``a`` rounded to bf16 (nearest even), back in float32."""
    return torch.from_numpy(np.ascontiguousarray(a)).bfloat16().float().numpy()


def bf16_operands(seed: int, n: int, ci: int, co: int, h: int, w: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x [n, ci, h, w] and a 3x3 weight [co, ci, 3, 3], both bf16-exact; bias float32 (asymvq keeps biases f32)."""
    rng = np.random.default_rng(seed)
    x = bf16_round(rng.standard_normal((n, ci, h, w), dtype=np.float32))
    wt = bf16_round((rng.standard_normal((co, ci, 3, 3)) / np.sqrt(ci * 9)).astype(np.float32))
    b = (0.1 * rng.standard_normal(co)).astype(np.float32)
    return x, wt, b


# (N, Cin, Cout, H, W). Chunk sizes follow winograd.c's shape_of (V bf16, M f32 per tile; a quarter
# of the activations' bytes, at least 64 tiles): "many_chunks..." has 2 * 31 * 30 = 1860 tiles in
# 24 chunks of 78, the last padded with 12 zero rows, and chunks that straddle the two samples.
WINOGRAD_BF16_CONVS = {
    "unet_resblock_320_at_32x32_batch_2": (2, 320, 320, 32, 32),
    "unet_up_resblock_640_to_320_batch_2": (2, 640, 320, 16, 16),
    "unet_resblock_1280_at_8x8_batch_2": (2, 1280, 1280, 8, 8),
    "vae_decoder_512_at_32x32": (1, 512, 512, 32, 32),
    "many_chunks_last_one_padded_batch_2_odd_size": (2, 128, 96, 61, 59),
    "odd_height_and_width_batch_3": (3, 65, 70, 5, 7),
    "one_pixel": (1, 64, 72, 1, 1),
    "channels_not_multiple_of_16": (2, 13, 21, 9, 8),
}


@pytest.mark.parametrize("n, ci, co, h, w", [pytest.param(*v, id=k) for k, v in WINOGRAD_BF16_CONVS.items()])
def test_bf16_winograd_matches_torch_float64(n, ci, co, h, w) -> None:
    x, wt, b = bf16_operands(1, n, ci, co, h, w)
    got = ops.conv2d(x, wt, b, padding=1, precision="bf16", algorithm="winograd")
    assert rel_err(got, reference(x, wt, b, 1, PAD1)) <= BF16_BOUND


def test_bf16_winograd_without_bias_matches_torch_float64() -> None:
    x, wt, _ = bf16_operands(2, 2, 96, 128, 13, 11)
    got = ops.conv2d(x, wt, None, padding=1, precision="bf16", algorithm="winograd")
    assert rel_err(got, reference(x, wt, None, 1, PAD1)) <= BF16_BOUND


@pytest.mark.parametrize("act", [None, "silu", "relu"])
@pytest.mark.parametrize("residual", [None, "full", "per_sample_channel"])
def test_bf16_winograd_applies_activation_then_residual_like_torch(act: Optional[str], residual) -> None:
    n, ci, co, h, w = 2, 128, 144, 9, 11
    x, wt, b = bf16_operands(3, n, ci, co, h, w)
    rng = np.random.default_rng(4)
    res = {
        None: None,
        "full": bf16_round(rng.standard_normal((n, co, h, w), dtype=np.float32)),
        "per_sample_channel": bf16_round(rng.standard_normal((n, co, 1, 1), dtype=np.float32)),
    }[residual]
    got = ops.conv2d(x, wt, b, padding=1, activation=act, residual=res, precision="bf16", algorithm="winograd")
    assert rel_err(got, reference(x, wt, b, 1, PAD1, act, res)) <= BF16_BOUND


def test_bf16_winograd_adds_each_samples_own_channel_vector() -> None:
    """A per-sample [N, C, 1, 1] add goes to its own sample: swapping the samples' vectors must matter."""
    n, ci, co, h, w = 2, 128, 128, 6, 6
    x, wt, b = bf16_operands(5, n, ci, co, h, w)
    res = np.zeros((n, co, 1, 1), np.float32)
    res[1] = 100.0
    got = ops.conv2d(x, wt, b, padding=1, residual=res, precision="bf16", algorithm="winograd")
    ref = reference(x, wt, b, 1, PAD1, None, res)
    assert rel_err(got, ref) <= BF16_BOUND
    assert np.abs(got[0]).max() < 50.0 < np.abs(got[1]).min()


def test_bf16_winograd_and_direct_agree_within_both_bounds() -> None:
    """Each is within BF16_BOUND of the float64 reference, so they are within twice it of each other."""
    x, wt, b = bf16_operands(6, 2, 320, 320, 16, 16)
    kw = dict(padding=1, precision="bf16", activation="silu")
    direct = ops.conv2d(x, wt, b, algorithm="direct", **kw)
    wino = ops.conv2d(x, wt, b, algorithm="winograd", **kw)
    assert float(np.abs(direct - wino).max() / np.abs(direct).max()) <= 2 * BF16_BOUND
    assert not np.array_equal(direct, wino)  # two algorithms really ran


def test_bf16_winograd_output_is_bf16_exact() -> None:
    x, wt, b = bf16_operands(7, 1, 128, 128, 8, 8)
    got = ops.conv2d(x, wt, b, padding=1, precision="bf16", algorithm="winograd")
    np.testing.assert_array_equal(got, bf16_round(got))


def test_bf16_winograd_propagates_nan_from_its_tile_only() -> None:
    """A NaN input reaches the outputs whose 3x3 window holds it (NaN kept through the bf16 rounding)."""
    x, wt, b = bf16_operands(8, 1, 128, 128, 8, 8)
    x[0, 5, 0, 0] = np.nan
    got = ops.conv2d(x, wt, b, padding=1, precision="bf16", algorithm="winograd")
    assert np.isnan(got[0, :, 0, 0]).all()
    assert np.isfinite(got[0, :, 4:, 4:]).all()


def test_bf16_auto_takes_winograd_on_avx512_bf16_without_amx_only() -> None:
    """AUTO is bit-identical to forced Winograd on avx512_core_bf16 (measured faster there for the
    UNet and decoder convs), and to forced direct on every other bf16 ISA (AMX, emulated bf16)."""
    x, wt, b = bf16_operands(9, 2, 320, 320, 16, 16)
    kw = dict(padding=1, precision="bf16")
    auto = ops.conv2d(x, wt, b, **kw)
    expect = "winograd" if INFO["isa"] == "avx512_core_bf16" else "direct"
    np.testing.assert_array_equal(auto, ops.conv2d(x, wt, b, algorithm=expect, **kw))


# (N, Cin, Cout, H): as in fp32 (test_ops_conv.py), but 128 channels need 4096 tiles in bf16 (winograd.c, min_tiles:
# at 2048 direct was 5.2 ms, Winograd 6.1). The UNet's 8x8 level (32 tiles) now takes Winograd: its weights keep U
# alone, not U beside their own copy, so it costs no memory.
AUTO_BF16_CHOICES = {
    "unet_1280_at_8x8_batch_2_is_32_tiles": (2, 1280, 1280, 8, "winograd"),
    "unet_1280_at_4x4_batch_2_is_8_tiles": (2, 1280, 1280, 4, "winograd"),
    "unet_1280_at_4x4_batch_1_is_4_tiles": (1, 1280, 1280, 4, "direct"),
    "unet_640_at_8x8_batch_2_is_32_tiles": (2, 640, 640, 8, "winograd"),
    "unet_640_at_8x8_batch_1_is_16_tiles": (1, 640, 640, 8, "direct"),
    "decoder_256_at_16x16_is_64_tiles": (1, 256, 256, 16, "winograd"),
    "decoder_256_at_8x8_batch_2_is_32_tiles": (2, 256, 256, 8, "direct"),
    "decoder_128_at_128x128_is_4096_tiles": (1, 128, 128, 128, "winograd"),
    "decoder_128_at_64x64_batch_2_is_2048_tiles": (2, 128, 128, 64, "direct"),
}


@pytest.mark.parametrize("n, ci, co, h, expect", [pytest.param(*v, id=k) for k, v in AUTO_BF16_CHOICES.items()])
def test_bf16_auto_takes_winograd_from_the_measured_tile_count_for_the_channel_width(n, ci, co, h, expect) -> None:
    x, wt, b = bf16_operands(12, n, ci, co, h, h)
    kw = dict(padding=1, precision="bf16")
    if INFO["isa"] != "avx512_core_bf16":
        expect = "direct"  # AMX or emulated bf16: always direct (test above)
    np.testing.assert_array_equal(ops.conv2d(x, wt, b, **kw), ops.conv2d(x, wt, b, algorithm=expect, **kw))


def test_bf16_auto_keeps_direct_below_128_channels() -> None:
    x, wt, b = bf16_operands(10, 1, 64, 64, 32, 32)
    kw = dict(padding=1, precision="bf16")
    np.testing.assert_array_equal(ops.conv2d(x, wt, b, **kw), ops.conv2d(x, wt, b, algorithm="direct", **kw))


@pytest.mark.parametrize(
    "kw",
    [
        pytest.param(dict(stride=2, padding=1), id="stride_2"),
        pytest.param(dict(padding=0), id="no_padding"),
        pytest.param(dict(padding=(0, 0, 1, 1)), id="asymmetric_padding"),
    ],
)
def test_forcing_bf16_winograd_where_it_does_not_apply_raises_value_error(kw) -> None:
    x, wt, b = bf16_operands(11, 1, 8, 8, 8, 8)
    with pytest.raises(ValueError, match="Winograd"):
        ops.conv2d(x, wt, b, algorithm="winograd", precision="bf16", **kw)
