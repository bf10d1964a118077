"""ops.attention on the AVX-512 tile path against torch's scaled_dot_product_attention, fp32 and bf16.

On a CPU with AVX-512 (and AVX512-BF16 for bf16) but no AMX, ops.attention runs register-blocked
tiles (csrc/ops/attention_avx512.c) in the transposed form: tasks of up to 96 queries laid across
the 16 vector lanes, taken in chunks of up to 3 vectors (48 queries); keys in register blocks of
8, in softmax sub-blocks of 64 and in L2 blocks of 64 to 1024 (by head dim and dtype) with an
online softmax per query column; the head dim in blocks of 8 output rows; K and V packed per
head, Q per task. Elsewhere the same calls take the AMX or the sgemm path (fp32 heads wider than
96 take sgemm on AVX-512 as well), and these tests hold them to the same bounds.

The shapes are Stable Diffusion 1.x's (UNet self-attention at 64x64, 32x32 and 16x16 latents with
heads of 40, 80 and 160, cross-attention to the 77-token context, the VAE's single 512-wide head,
the text encoder's causal attention) and the edges of the tiling: query counts that are not a
multiple of a vector, a chunk or a task, key counts that are not a multiple of 8, 64 or the key
block, head dims that are not a multiple of 8 (and odd ones: the bf16 kernel multiplies head-dim
pairs), the causal mask across tasks, chunks and key blocks, scores whose maximum moves from
block to block, and scores so low that their exponentials underflow.

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


# The transposed AVX-512 kernel (queries across the 16 lanes, chunks of up to 3 vectors = 48
# queries, keys in register blocks of 8 and softmax sub-blocks of 64, head-dim rows in blocks of
# 8): the shapes that fall between its blocks.


@pytest.mark.parametrize("precision, bound", PRECISIONS)
@pytest.mark.parametrize("d", [1, 3, 33, 40, 64, 80, 160, 512])
def test_head_dims_below_between_and_past_the_8_row_blocks_match_torch(d, precision, bound) -> None:
    rng = np.random.default_rng(30 + d)
    q, k, v = tokens(rng, 3, 50, 2 * d), tokens(rng, 3, 77, 2 * d), tokens(rng, 3, 77, 2 * d)
    got = ops.attention(q, k, v, 2, precision=precision)
    assert rel_err(got, sdpa_reference(q, k, v, 2)) <= bound


@pytest.mark.parametrize("precision, bound", PRECISIONS)
@pytest.mark.parametrize("m", [1, 15, 16, 17, 63, 65, 77, 4099])
def test_key_counts_off_the_8_key_blocks_and_64_key_sub_blocks_match_torch(m, precision, bound) -> None:
    rng = np.random.default_rng(40 + m)
    q, k, v = tokens(rng, 1, 53, 80), tokens(rng, 1, m, 80), tokens(rng, 1, m, 80)
    got = ops.attention(q, k, v, 2, precision=precision)
    assert rel_err(got, sdpa_reference(q, k, v, 2)) <= bound


@pytest.mark.parametrize("precision, bound", PRECISIONS)
@pytest.mark.parametrize("n", [1, 15, 17, 47, 49, 95, 97, 143, 145])
def test_query_counts_off_the_16_lane_vectors_and_48_query_chunks_match_torch(n, precision, bound) -> None:
    rng = np.random.default_rng(50 + n)
    q, k, v = tokens(rng, 2, n, 80), tokens(rng, 2, 130, 80), tokens(rng, 2, 130, 80)
    got = ops.attention(q, k, v, 2, precision=precision)
    assert rel_err(got, sdpa_reference(q, k, v, 2)) <= bound


@pytest.mark.parametrize("precision, bound", PRECISIONS)
@pytest.mark.parametrize(
    "n, d", [(333, 40), (200, 512), (150, 3)], ids=["333_tokens_heads_of_40", "200_tokens_head_of_512", "head_dim_3"]
)
def test_causal_mask_where_query_chunks_and_key_sub_blocks_do_not_line_up(n, d, precision, bound) -> None:
    """Chunks of 48 queries start inside 64-key sub-blocks, and (head of 512) inside key blocks
    of 64: the mask cuts through a sub-block at a different key in every lane."""
    rng = np.random.default_rng(60 + d)
    q, k, v = tokens(rng, 3, n, 2 * d), tokens(rng, 3, n, 2 * d), tokens(rng, 3, n, 2 * d)
    got = ops.attention(q, k, v, 2, causal=True, precision=precision)
    assert rel_err(got, sdpa_reference(q, k, v, 2, causal=True)) <= bound


def softmax_reference(logits: np.ndarray, v: np.ndarray) -> np.ndarray:
    """softmax(logits) @ v in float64 for one head: logits [N, M], v [M, d]."""
    x = logits.astype(np.float64)
    w = np.exp(x - x.max(axis=1, keepdims=True))
    return (w / w.sum(axis=1, keepdims=True)) @ v.astype(np.float64)


def logit_operands(logits: np.ndarray, d: int) -> tuple[np.ndarray, np.ndarray]:
    """q [1, N, d] and k [1, M, d] with q k^T = logits at scale 1: q's first element 1, k's first
    element the logit (choose bf16-exact logits and both precisions see the same scores)."""
    n, m = logits.shape
    q = np.zeros((1, n, d), np.float32)
    q[0, :, 0] = 1.0
    k = np.zeros((1, m, d), np.float32)
    k[0, :, 0] = logits[0]
    return q, k


@pytest.mark.parametrize("precision, bound", PRECISIONS)
def test_a_later_key_block_with_a_much_larger_maximum_rescales_the_earlier_output(precision, bound) -> None:
    """Logits about 0 for 3000 keys, then 300 keys 12 higher: the running maximum jumps by 12 after
    47 sub-blocks; the earlier blocks' output and sum are scaled by exp(-12), not dropped or kept."""
    rng = np.random.default_rng(70)
    m = 3300
    logits = (np.round(rng.standard_normal((1, m)) * 8) / 8).astype(np.float32)
    logits[0, 3000:] += 12.0
    q, k = logit_operands(np.repeat(logits, 20, axis=0), 40)
    v = tokens(rng, 1, m, 40)
    v[0, :3000] += 3.0  # the early keys' values differ: their weight shows in the output
    got = ops.attention(q, k, v, 1, scale=1.0, precision=precision)
    ref = softmax_reference(np.repeat(logits, 20, axis=0), v[0])[None]
    assert rel_err(got, ref) <= bound


@pytest.mark.parametrize("precision, bound", PRECISIONS)
def test_keys_with_logits_of_minus_ten_thousand_get_no_weight(precision, bound) -> None:
    """The first 2000 keys (31 sub-blocks) score -10240 against every query, the rest about 0:
    their exponentials, and the rescale factor when the maximum leaves -10240, underflow to 0
    instead of turning into inf or NaN."""
    rng = np.random.default_rng(71)
    m = 2100
    logits = (np.round(rng.standard_normal((1, m)) * 8) / 8).astype(np.float32)
    logits[0, :2000] = -10240.0
    q, k = logit_operands(np.repeat(logits, 33, axis=0), 64)
    v = tokens(rng, 1, m, 64)
    got = ops.attention(q, k, v, 1, scale=1.0, precision=precision)
    ref = softmax_reference(np.repeat(logits, 33, axis=0), v[0])[None]
    assert rel_err(got, ref) <= bound


@pytest.mark.parametrize("precision, bound", PRECISIONS)
def test_causal_rows_whose_first_keys_score_minus_ten_thousand(precision, bound) -> None:
    """Causal: query i sees keys 0..i, and keys below 100 score -10240. Queries below 100 see only
    such keys (their softmax is over -10240s: uniform); the others must ignore them."""
    rng = np.random.default_rng(72)
    n = 230
    logits = (np.round(rng.standard_normal((1, n)) * 8) / 8).astype(np.float32)
    logits[0, :100] = -10240.0
    q, k = logit_operands(np.repeat(logits, n, axis=0), 40)
    v = tokens(rng, 1, n, 40)
    got = ops.attention(q, k, v, 1, scale=1.0, causal=True, precision=precision)
    full = np.repeat(logits, n, axis=0).astype(np.float64)
    full[np.triu_indices(n, 1)] = -np.inf
    ref = softmax_reference(full, v[0])[None]
    assert rel_err(got, ref) <= bound
