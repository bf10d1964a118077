"""ops.conv2d against PyTorch at the convolution shapes SD v1 uses, in fp32 and bf16.

The reference is ``torch.nn.functional.conv2d`` evaluated in float64 on the same float32 inputs
(float64 convolutions run through torch's own im2col/GEMM path, not oneDNN, so the reference
is independent of the library under test). The error metric is
max|ours - ref| / max|ref| over the whole output.

Bounds:
* fp32: 1e-5 (issue 2). Measured worst on avx512_core_amx, 2 threads: 4.2e-6 (3x3 512->512,
  K = 4608), 3.9e-6 for 3x3 1280->1280 (K = 11520); float32 accumulation over long dot products
  (torch's own float32 conv is as far from float64).
* bf16 (bf16 inputs, weights and output, fp32 accumulation): 1e-2. Inputs and weights are
  rounded to 8 significant bits (a relative error of at most 2^-8 = 3.9e-3 each, about half that
  on average) and so is the output; over a long random dot product the input errors average out
  to about 2e-3 of max|ref|, and the output rounding adds up to 3.9e-3 of the largest outputs.
  Measured worst: 4.6e-3 (the 1x1 4->4 post_quant_conv, where the output rounding dominates),
  typically 3e-3 to 4.4e-3; 1e-2 leaves over 2x margin.
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from isa import bf16, needs_bf16

from asymvq._core import ops

FP32_BOUND = 1e-5
BF16_BOUND = 1e-2

Pad = Tuple[int, int, int, int]  # (top, left, bottom, right)


def rel_err(got: np.ndarray, ref: np.ndarray) -> float:
    assert got.shape == ref.shape, f"shape {got.shape} != reference {ref.shape}"
    assert np.isfinite(got).all()
    return float(np.abs(got.astype(np.float64) - ref).max() / np.abs(ref).max())


def torch_act(y: torch.Tensor, act: Optional[str]) -> torch.Tensor:
    if act is None:
        return y
    return {
        "relu": F.relu,
        "silu": F.silu,
        "gelu": F.gelu,
        "quick_gelu": lambda t: t * torch.sigmoid(1.702 * t),
    }[act](y)


def reference(
    x: np.ndarray,
    w: np.ndarray,
    b: Optional[np.ndarray],
    stride: int,
    pad: Pad,
    act: Optional[str] = None,
    residual: Optional[np.ndarray] = None,
) -> np.ndarray:
    """act(conv(x, w) + b) + residual in float64, padding (top, left, bottom, right)."""
    xt = F.pad(torch.from_numpy(x).double(), (pad[1], pad[3], pad[0], pad[2]))
    bt = None if b is None else torch.from_numpy(b).double()
    y = torch_act(F.conv2d(xt, torch.from_numpy(w).double(), bt, stride=stride), act)
    if residual is not None:
        y = y + torch.from_numpy(residual).double()
    return y.numpy()


def operands(
    rng: np.random.Generator, n: int, ci: int, co: int, h: int, w: int, k: int, kw: Optional[int] = None
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    kw = k if kw is None else kw
    x = rng.standard_normal((n, ci, h, w), dtype=np.float32)
    wt = (rng.standard_normal((co, ci, k, kw)) / np.sqrt(ci * k * kw)).astype(np.float32)
    b = (0.1 * rng.standard_normal(co)).astype(np.float32)
    return x, wt, b


# id: (N, Cin, Cout, H, W, k, stride, (top, left, bottom, right))
SD_CONVS = {
    # UNet on a 64x64 latent, batch 2 (one guided step)
    "unet_resblock_3x3_320_at_64x64": (2, 320, 320, 64, 64, 3, 1, (1, 1, 1, 1)),
    "unet_inpaint_conv_in_9_to_320": (2, 9, 320, 64, 64, 3, 1, (1, 1, 1, 1)),
    "unet_txt2img_conv_in_4_to_320": (2, 4, 320, 64, 64, 3, 1, (1, 1, 1, 1)),
    "unet_conv_out_320_to_4": (2, 320, 4, 64, 64, 3, 1, (1, 1, 1, 1)),
    "unet_downsample_stride2_symmetric_pad": (2, 320, 320, 64, 64, 3, 2, (1, 1, 1, 1)),
    "unet_resblock_3x3_640_at_32x32": (2, 640, 640, 32, 32, 3, 1, (1, 1, 1, 1)),
    "unet_resblock_3x3_1280_at_8x8": (2, 1280, 1280, 8, 8, 3, 1, (1, 1, 1, 1)),
    "unet_skip_1x1_960_to_640": (2, 960, 640, 32, 32, 1, 1, (0, 0, 0, 0)),
    "unet_proj_in_1x1_320": (2, 320, 320, 64, 64, 1, 1, (0, 0, 0, 0)),
    # VAE encoder / decoder (512x512 image -> 64x64 latent; smaller spatial sizes where the
    # channel counts alone define the kernel oneDNN picks)
    "vae_encoder_downsample_stride2_pad_0011": (1, 128, 128, 128, 128, 3, 2, (0, 0, 1, 1)),
    "vae_encoder_downsample_stride2_pad_0011_512": (1, 512, 512, 16, 16, 3, 2, (0, 0, 1, 1)),
    "vae_decoder_3x3_512_at_64x64": (1, 512, 512, 64, 64, 3, 1, (1, 1, 1, 1)),
    "vae_decoder_conv_out_128_to_3": (1, 128, 3, 128, 128, 3, 1, (1, 1, 1, 1)),
    "vae_post_quant_conv_1x1_4": (1, 4, 4, 64, 64, 1, 1, (0, 0, 0, 0)),
    "vae_attention_qkv_1x1_512": (1, 512, 512, 64, 64, 1, 1, (0, 0, 0, 0)),
    # asymmetric decoder's condition encoder: 4x4, stride 2, padding 1
    "cond_encoder_4x4_stride2_256_to_512": (1, 256, 512, 64, 64, 4, 2, (1, 1, 1, 1)),
    "cond_encoder_4x4_stride2_512_to_512": (1, 512, 512, 32, 32, 4, 2, (1, 1, 1, 1)),
    "cond_encoder_3x3_3_to_128": (1, 3, 128, 128, 128, 3, 1, (1, 1, 1, 1)),
}

ODD_CONVS = {
    "one_by_one_spatial_input": (3, 20, 24, 1, 1, 3, 1, (1, 1, 1, 1)),
    "channels_not_multiple_of_16_batch_3": (3, 13, 21, 9, 7, 3, 1, (1, 1, 1, 1)),
    "odd_size_stride2_asymmetric_pad": (3, 5, 7, 11, 13, 3, 2, (0, 0, 1, 1)),
    "odd_size_stride2_symmetric_pad": (3, 17, 9, 15, 9, 3, 2, (1, 1, 1, 1)),
    "kernel_4x4_stride2_odd_size": (3, 6, 10, 9, 11, 4, 2, (1, 1, 1, 1)),
    "kernel_equals_input_no_pad": (2, 8, 16, 3, 3, 3, 1, (0, 0, 0, 0)),
    "only_left_top_pad": (1, 16, 16, 10, 10, 3, 1, (2, 1, 0, 0)),
    "single_channel_in_and_out": (2, 1, 1, 17, 5, 3, 1, (1, 1, 1, 1)),
}


def conv_params(table: dict) -> list:
    return [pytest.param(*v, id=k) for k, v in table.items()]


def check_conv(
    n: int, ci: int, co: int, h: int, w: int, k: int, stride: int, pad: Pad, precision: str, seed: int = 0
) -> float:
    rng = np.random.default_rng(seed)
    x, wt, b = operands(rng, n, ci, co, h, w, k)
    got = ops.conv2d(x, wt, b, stride=stride, padding=pad, precision=precision)
    return rel_err(got, reference(x, wt, b, stride, pad))


@pytest.mark.parametrize("n, ci, co, h, w, k, stride, pad", conv_params(SD_CONVS))
def test_conv_matches_torch_in_fp32_at_sd_shapes(n, ci, co, h, w, k, stride, pad) -> None:
    assert check_conv(n, ci, co, h, w, k, stride, pad, "fp32") <= FP32_BOUND


@needs_bf16
@pytest.mark.parametrize("n, ci, co, h, w, k, stride, pad", conv_params(SD_CONVS))
def test_conv_matches_torch_in_bf16_at_sd_shapes(n, ci, co, h, w, k, stride, pad) -> None:
    assert check_conv(n, ci, co, h, w, k, stride, pad, "bf16") <= BF16_BOUND


@pytest.mark.parametrize("precision, bound", [("fp32", FP32_BOUND), bf16("bf16", BF16_BOUND)])
@pytest.mark.parametrize("n, ci, co, h, w, k, stride, pad", conv_params(ODD_CONVS))
def test_conv_matches_torch_at_odd_shapes(n, ci, co, h, w, k, stride, pad, precision, bound) -> None:
    assert check_conv(n, ci, co, h, w, k, stride, pad, precision) <= bound


def test_conv_output_size_follows_torch_for_asymmetric_padding() -> None:
    x = np.ones((1, 2, 64, 64), np.float32)
    w = np.ones((3, 2, 3, 3), np.float32)
    assert ops.conv2d(x, w, stride=2, padding=(0, 0, 1, 1)).shape == (1, 3, 32, 32)
    assert ops.conv2d(x, w, stride=2, padding=1).shape == (1, 3, 32, 32)
    assert ops.conv2d(x[:, :, :63, :63], w, stride=2, padding=(0, 0, 1, 1)).shape == (1, 3, 31, 31)


def test_conv_padding_pair_means_height_then_width() -> None:
    rng = np.random.default_rng(1)
    x, w, b = operands(rng, 1, 4, 5, 8, 9, 3)
    got = ops.conv2d(x, w, b, padding=(2, 0))
    assert got.shape == (1, 5, 10, 7)
    assert rel_err(got, reference(x, w, b, 1, (2, 0, 2, 0))) <= FP32_BOUND


def test_conv_rectangular_kernel_and_stride_pair() -> None:
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 6, 12, 10), dtype=np.float32)
    w = rng.standard_normal((8, 6, 3, 1), dtype=np.float32)
    got = ops.conv2d(x, w, None, stride=(2, 1), padding=(1, 0))
    ref = F.conv2d(torch.from_numpy(x).double(), torch.from_numpy(w).double(), stride=(2, 1), padding=(1, 0))
    assert rel_err(got, ref.numpy()) <= FP32_BOUND


def test_conv_without_bias() -> None:
    rng = np.random.default_rng(3)
    x, w, _ = operands(rng, 2, 16, 8, 6, 6, 3)
    assert rel_err(ops.conv2d(x, w, padding=1), reference(x, w, None, 1, (1, 1, 1, 1))) <= FP32_BOUND


# ---- fused post-ops: activation, then residual add ([N, C, H, W] or [N, C, 1, 1]) ----------

FUSED = [
    # id, shape (N, Cin, Cout, H, W, k, stride, pad), activation, residual kind
    ("unet_resblock_conv2_plus_skip", (2, 320, 320, 32, 32, 3, 1, (1, 1, 1, 1)), None, "full"),
    ("unet_time_embedding_injection", (2, 320, 320, 32, 32, 3, 1, (1, 1, 1, 1)), None, "channel"),
    ("silu_then_full_residual", (3, 13, 21, 9, 7, 3, 1, (1, 1, 1, 1)), "silu", "full"),
    ("silu_then_channel_residual", (3, 13, 21, 9, 7, 3, 1, (1, 1, 1, 1)), "silu", "channel"),
    ("cond_encoder_relu", (1, 64, 128, 32, 32, 4, 2, (1, 1, 1, 1)), "relu", None),
    ("gelu", (2, 16, 24, 8, 8, 3, 1, (1, 1, 1, 1)), "gelu", None),
    ("quick_gelu", (2, 16, 24, 8, 8, 3, 1, (1, 1, 1, 1)), "quick_gelu", None),
    ("relu_stride2_asymmetric_with_residual", (2, 16, 24, 9, 9, 3, 2, (0, 0, 1, 1)), "relu", "full"),
]


@pytest.mark.parametrize("precision, bound", [("fp32", FP32_BOUND), bf16("bf16", BF16_BOUND)])
@pytest.mark.parametrize("shape, act, residual", [pytest.param(*f[1:], id=f[0]) for f in FUSED])
def test_conv_fuses_activation_and_residual_like_torch(shape, act, residual, precision, bound) -> None:
    n, ci, co, h, w, k, stride, pad = shape
    rng = np.random.default_rng(4)
    x, wt, b = operands(rng, n, ci, co, h, w, k)
    oh = (h + pad[0] + pad[2] - k) // stride + 1
    ow = (w + pad[1] + pad[3] - k) // stride + 1
    res = None
    if residual == "full":
        res = rng.standard_normal((n, co, oh, ow), dtype=np.float32)
    elif residual == "channel":
        res = rng.standard_normal((n, co, 1, 1), dtype=np.float32)
    got = ops.conv2d(x, wt, b, stride=stride, padding=pad, activation=act, residual=res, precision=precision)
    assert rel_err(got, reference(x, wt, b, stride, pad, act, res)) <= bound


def test_channel_residual_is_added_per_sample_and_channel() -> None:
    x = np.zeros((2, 1, 3, 3), np.float32)
    w = np.zeros((2, 1, 1, 1), np.float32)
    res = np.array([1, 2, 3, 4], np.float32).reshape(2, 2, 1, 1)
    got = ops.conv2d(x, w, residual=res)
    np.testing.assert_array_equal(got, np.broadcast_to(res, (2, 2, 3, 3)))


def test_conv_is_deterministic_across_calls() -> None:
    rng = np.random.default_rng(5)
    x, w, b = operands(rng, 2, 32, 32, 16, 16, 3)
    np.testing.assert_array_equal(ops.conv2d(x, w, b, padding=1), ops.conv2d(x, w, b, padding=1))


# ---- Winograd F(2x2, 3x3): the algorithm "auto" picks for large 3x3 stride-1 f32 convs ------
#
# Same float64 reference and the same fp32 bound as the direct path: the transforms only add,
# subtract and halve, so the rounding is that of a float32 GEMM over 16 * Cin products
# (measured worst 7e-7 of max|ref| at 320 -> 320, 64x64).

WINOGRAD_CONVS = {
    "unet_resblock_320_at_64x64": (2, 320, 320, 64, 64),
    "unet_up_resblock_640_to_320_at_64x64": (2, 640, 320, 64, 64),
    "unet_resblock_1280_at_16x16": (2, 1280, 1280, 16, 16),
    "vae_decoder_512_at_64x64": (1, 512, 512, 64, 64),
    "many_chunks_last_one_padded": (1, 64, 64, 250, 246),
    "odd_height_and_width_batch_3": (3, 65, 70, 5, 7),
    "one_pixel": (1, 64, 72, 1, 1),
    "channels_not_multiple_of_16": (2, 13, 21, 9, 8),
}


@pytest.mark.parametrize("n, ci, co, h, w", conv_params(WINOGRAD_CONVS))
def test_winograd_conv_matches_torch_in_fp32(n, ci, co, h, w) -> None:
    rng = np.random.default_rng(6)
    x, wt, b = operands(rng, n, ci, co, h, w, 3)
    got = ops.conv2d(x, wt, b, padding=1, algorithm="winograd")
    assert rel_err(got, reference(x, wt, b, 1, (1, 1, 1, 1))) <= FP32_BOUND


@pytest.mark.parametrize("act", [None, "silu", "gelu"])
@pytest.mark.parametrize("residual", [None, "full", "channel"])
def test_winograd_conv_fuses_activation_then_residual(act, residual) -> None:
    n, ci, co, h, w = 2, 64, 80, 9, 11
    rng = np.random.default_rng(7)
    x, wt, b = operands(rng, n, ci, co, h, w, 3)
    res = {
        None: None,
        "full": rng.standard_normal((n, co, h, w), dtype=np.float32),
        "channel": rng.standard_normal((n, co, 1, 1), dtype=np.float32),
    }[residual]
    got = ops.conv2d(x, wt, b, padding=1, activation=act, residual=res, algorithm="winograd")
    assert rel_err(got, reference(x, wt, b, 1, (1, 1, 1, 1), act, res)) <= FP32_BOUND


def test_winograd_and_direct_agree_to_float32_rounding() -> None:
    rng = np.random.default_rng(8)
    x, wt, b = operands(rng, 2, 320, 320, 32, 32, 3)
    direct = ops.conv2d(x, wt, b, padding=1, algorithm="direct")
    wino = ops.conv2d(x, wt, b, padding=1, algorithm="winograd")
    assert float(np.abs(direct - wino).max() / np.abs(direct).max()) <= 2 * FP32_BOUND


def test_auto_algorithm_matches_torch_where_it_picks_winograd() -> None:
    rng = np.random.default_rng(9)
    x, wt, b = operands(rng, 2, 256, 256, 16, 16, 3)  # 128 tiles, 256 channels: Winograd
    got = ops.conv2d(x, wt, b, padding=1, precision="fp32")
    assert rel_err(got, reference(x, wt, b, 1, (1, 1, 1, 1))) <= FP32_BOUND


# (N, Cin, Cout, H): AUTO's threshold in 2x2 tiles falls with the channel count (winograd.c, min_tiles,
# measured: the transforms pay from 8 tiles at 1280 channels, never below 128 channels). Each width at
# its threshold and just below it.
AUTO_FP32_CHOICES = {
    "unet_1280_at_4x4_batch_2_is_8_tiles": (2, 1280, 1280, 4, "winograd"),
    "unet_2560_to_1280_at_4x4_batch_2": (2, 2560, 1280, 4, "winograd"),
    "unet_1280_at_4x4_batch_1_is_4_tiles": (1, 1280, 1280, 4, "direct"),
    "unet_320_at_8x8_batch_2_is_32_tiles": (2, 320, 320, 8, "winograd"),
    "unet_320_at_8x8_batch_1_is_16_tiles": (1, 320, 320, 8, "direct"),
    "decoder_256_at_16x16_is_64_tiles": (1, 256, 256, 16, "winograd"),
    "decoder_256_at_8x8_batch_2_is_32_tiles": (2, 256, 256, 8, "direct"),
    "decoder_128_at_64x64_batch_2_is_2048_tiles": (2, 128, 128, 64, "winograd"),
    "decoder_128_at_64x64_is_1024_tiles": (1, 128, 128, 64, "direct"),
    "64_channels_at_128x128_never": (1, 64, 64, 128, "direct"),
}


@pytest.mark.parametrize("n, ci, co, h, expect", conv_params(AUTO_FP32_CHOICES))
def test_auto_takes_winograd_from_the_measured_tile_count_for_the_channel_width(n, ci, co, h, expect) -> None:
    rng = np.random.default_rng(12)
    x, wt, b = operands(rng, n, ci, co, h, h, 3)
    auto = ops.conv2d(x, wt, b, padding=1, precision="fp32")
    np.testing.assert_array_equal(auto, ops.conv2d(x, wt, b, padding=1, precision="fp32", algorithm=expect))


@pytest.mark.parametrize(
    "kw",
    [
        pytest.param(dict(stride=2, padding=1), id="stride_2"),
        pytest.param(dict(padding=0), id="no_padding"),
        pytest.param(dict(padding=(0, 0, 1, 1)), id="asymmetric_padding"),
    ],  # bf16 Winograd runs: test_winograd_bf16.py
)
def test_forcing_winograd_where_it_does_not_apply_raises_value_error(kw) -> None:
    rng = np.random.default_rng(10)
    x, wt, b = operands(rng, 1, 8, 8, 8, 8, 3)
    with pytest.raises(ValueError, match="Winograd"):
        ops.conv2d(x, wt, b, algorithm="winograd", **kw)


def test_forcing_winograd_on_a_1x1_kernel_raises_value_error() -> None:
    rng = np.random.default_rng(11)
    x, wt, b = operands(rng, 1, 8, 8, 8, 8, 1)
    with pytest.raises(ValueError, match="3x3"):
        ops.conv2d(x, wt, b, padding=1, algorithm="winograd")


def test_unknown_conv_algorithm_raises_value_error() -> None:
    x = np.zeros((1, 4, 8, 8), np.float32)
    w = np.zeros((4, 4, 3, 3), np.float32)
    with pytest.raises(ValueError, match="algorithm"):
        ops.conv2d(x, w, padding=1, algorithm="fft")
