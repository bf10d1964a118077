"""ops.attention on the AVX-512 tile path against torch's scaled_dot_product_attention, fp32 and bf16.

On a CPU with AVX-512 (and AVX512-BF16 for bf16) but no AMX, ops.attention runs register-blocked
tiles (csrc/ops/attention_avx512.c): tasks of 96 query rows taken 6 at a time, keys in blocks of
64 to 512 (by head dim and dtype) with an online softmax, K and V packed per head. Elsewhere the
same calls take the AMX or the sgemm path, and these tests hold them to the same bounds.

The shapes are Stable Diffusion 1.x's (UNet self-attention at 64x64, 32x32 and 16x16 latents with
heads of 40, 80 and 160, cross-attention to the 77-token context, the VAE's single 512-wide head,
the text encoder's causal attention) and the edges of the tiling: query counts that are not a
multiple of the 6-row group or the 96-row task, key counts that are not a multiple of 16 or of
the key block, odd head dims (the bf16 kernel multiplies head-dim pairs), the causal mask across
tasks and key blocks, and scores whose maximum moves from block to block.

Reference: torch.nn.functional.scaled_dot_product_attention in float64 on the same float32
inputs, a few heads at a time. Metric and bounds as tests/test_ops_matmul.py: max|ours - ref| /
max|ref| <= 1e-5 (fp32) and 2e-2 (bf16: q, k, v, the probabilities and the output are rounded).
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from isa import bf16

from asymvq._core import ops

FP32_BOUND = 1e-5
BF16_ATTENTION_BOUND = 2e-2
PRECISIONS = [pytest.param("fp32", FP32_BOUND, id="fp32"), bf16("bf16", BF16_ATTENTION_BOUND, id="bf16")]


def sdpa_reference(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, heads: int, scale: Optional[float] = None, causal: bool = False
) -> np.ndarray:
    """torch's scaled_dot_product_attention in float64 over [B, N, C] tokens split into heads."""
    b, n, c = q.shape
    m = k.shape[1]
    d = c // heads
    qh, kh, vh = (torch.from_numpy(a).double().view(b, -1, heads, d).transpose(1, 2) for a in (q, k, v))
    out = torch.empty(b, heads, n, d, dtype=torch.float64)
    step = max(1, (1 << 24) // (n * m))  # heads per call: score matrices of at most 128 MiB
    for i in range(0, heads, step):
        out[:, i : i + step] = F.scaled_dot_product_attention(
            qh[:, i : i + step], kh[:, i : i + step], vh[:, i : i + step], is_causal=causal, scale=scale
        )
    return out.transpose(1, 2).reshape(b, n, c).numpy()


def rel_err(got: np.ndarray, ref: np.ndarray) -> float:
    assert got.shape == ref.shape, f"shape {got.shape} != reference {ref.shape}"
    assert np.isfinite(got).all()
    return float(np.abs(got.astype(np.float64) - ref).max() / np.abs(ref).max())


def tokens(rng: np.random.Generator, b: int, n: int, c: int, scale: float = 1.0) -> np.ndarray:
    return (rng.standard_normal((b, n, c)) * scale).astype(np.float32)


SHAPES = {
    # id: (B, queries, keys, features, heads, causal)
    "sd_self_4096_tokens_8_heads_of_40": (1, 4096, 4096, 320, 8, False),
    "sd_cross_4096_queries_to_77_keys_8_heads_of_40": (2, 4096, 77, 320, 8, False),
    "sd_self_1024_tokens_8_heads_of_80": (2, 1024, 1024, 640, 8, False),
    "sd_cross_1024_queries_to_77_keys_8_heads_of_80": (2, 1024, 77, 640, 8, False),
    "sd_self_256_tokens_8_heads_of_160": (2, 256, 256, 1280, 8, False),
    "sd_cross_256_queries_to_77_keys_8_heads_of_160": (2, 256, 77, 1280, 8, False),
    "sd_mid_64_tokens_8_heads_of_160": (2, 64, 64, 1280, 8, False),
    "vae_mid_1_head_of_512_on_1024_tokens": (1, 1024, 1024, 512, 1, False),
    "vae_mid_1_head_of_512_on_4096_tokens": (1, 4096, 4096, 512, 1, False),
    "text_causal_77_tokens_12_heads_of_64": (2, 77, 77, 768, 12, True),
    # the edges of the tiling
    "queries_not_a_multiple_of_6_or_96_keys_over_two_blocks": (2, 97, 1000, 320, 8, False),
    "one_query_group_short_of_a_task": (1, 95, 529, 80, 2, False),
    "keys_not_a_multiple_of_16": (3, 13, 7, 64, 2, False),
    "odd_head_dim_13": (3, 11, 7, 39, 3, False),
    "head_dim_8": (2, 50, 33, 16, 2, False),
    "head_dim_24_past_one_vector": (1, 101, 129, 48, 2, False),
    "causal_across_tasks_and_key_blocks": (1, 1000, 1000, 64, 4, True),
    "causal_odd_head_dim": (2, 41, 41, 30, 2, True),
    "one_query_one_key": (3, 1, 1, 16, 2, False),
}
SLOW = {"vae_mid_1_head_of_512_on_4096_tokens"}


@pytest.mark.parametrize("precision, bound", PRECISIONS)
@pytest.mark.parametrize(
    "bsz, n, m, c, heads, causal",
    [pytest.param(*v, id=key, marks=[pytest.mark.slow] if key in SLOW else []) for key, v in SHAPES.items()],
)
def test_attention_matches_torch_sdpa(bsz, n, m, c, heads, causal, precision, bound) -> None:
    rng = np.random.default_rng(21)
    q, k, v = tokens(rng, bsz, n, c), tokens(rng, bsz, m, c), tokens(rng, bsz, m, c)
    got = ops.attention(q, k, v, heads, causal=causal, precision=precision)
    assert rel_err(got, sdpa_reference(q, k, v, heads, causal=causal)) <= bound


@pytest.mark.parametrize("precision, bound", PRECISIONS)
@pytest.mark.parametrize("rising", [True, False], ids=["max_rises_block_by_block", "max_in_the_first_block"])
def test_online_softmax_follows_a_maximum_that_moves_between_key_blocks(precision, bound, rising) -> None:
    """Scores grow (or shrink) steadily along 1500 keys, about 15 apart: every key block either
    raises the running maximum (the output so far is rescaled) or sees only exponents that
    vanish next to the first block's."""
    rng = np.random.default_rng(22)
    c, m = 64, 1500
    q = np.abs(tokens(rng, 1, 50, c)) + 0.5
    ramp = np.linspace(0.0, 1.0, m, dtype=np.float32)[:, None]
    k = ((ramp if rising else 1.0 - ramp) * 2.0 + 0.1 * tokens(rng, 1, m, c)[0])[None].astype(np.float32)
    v = tokens(rng, 1, m, c)
    got = ops.attention(q, k, v, 2, precision=precision)
    assert rel_err(got, sdpa_reference(q, k, v, 2)) <= bound


def test_large_logits_stay_finite_and_exact_in_fp32() -> None:
    """Logits up to about 170 (exp of a raw score overflows float32 past 88): exp(score - max)
    never overflows and the row's sum never vanishes. (Larger logits lose digits to the float32
    rounding of the scores themselves, |logit| 2^-24 relative, in any float32 attention.)"""
    rng = np.random.default_rng(23)
    q, k, v = tokens(rng, 1, 130, 40, scale=6.0), tokens(rng, 1, 700, 40, scale=6.0), tokens(rng, 1, 700, 40)
    got = ops.attention(q, k, v, 1)
    assert rel_err(got, sdpa_reference(q, k, v, 1)) <= FP32_BOUND


@pytest.mark.parametrize("precision, bound", PRECISIONS)
@pytest.mark.parametrize("scale", [-0.7, 0.0], ids=["negative_scale", "zero_scale"])
def test_any_scale_matches_torch(precision, bound, scale) -> None:
    """A negative scale turns the maximum of the scores into their minimum; zero makes the
    softmax uniform."""
    rng = np.random.default_rng(24)
    q, k, v = tokens(rng, 2, 30, 32), tokens(rng, 2, 600, 32), tokens(rng, 2, 600, 32)
    got = ops.attention(q, k, v, 2, scale=scale, precision=precision)
    assert rel_err(got, sdpa_reference(q, k, v, 2, scale=scale)) <= bound


@pytest.mark.parametrize("precision, bound", PRECISIONS)
def test_heads_read_from_a_wider_token_matrix_do_not_leak_into_each_other(precision, bound) -> None:
    """Each head's keys and values are packed from its own columns: zeroing every other head's
    q, k and v leaves the kept heads' output unchanged."""
    rng = np.random.default_rng(25)
    q, k, v = tokens(rng, 1, 40, 80), tokens(rng, 1, 90, 80), tokens(rng, 1, 90, 80)
    full = ops.attention(q, k, v, 4, precision=precision)
    mask = np.zeros(80, np.float32)
    mask[20:40] = mask[60:80] = 1.0
    part = ops.attention(q * mask, k * mask, v * mask, 4, precision=precision)
    np.testing.assert_array_equal(part[..., 20:40], full[..., 20:40])
    np.testing.assert_array_equal(part[..., 60:80], full[..., 60:80])
    assert rel_err(full, sdpa_reference(q, k, v, 4)) <= bound
