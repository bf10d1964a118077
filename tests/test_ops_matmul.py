"""ops.linear, ops.matmul, ops.softmax and ops.attention against PyTorch, fp32 and bf16.

References are torch evaluated in float64 on the same float32 inputs (attention: softmax(q k^T
scale) v per head, written out, never torch's fused kernel). Metric: max|ours - ref| / max|ref|.

About a linear error of exactly 0.0 against torch *float32*: for [4096, 320] x [320, 2560]
(and other K = 320 shapes) torch's float32 GEMM and oneDNN's matmul return bit-identical
results -- both accumulate each output over K in the same order -- while at K = 768 they
differ by ~3e-6. Both sit the same 4.3e-6 from the float64 result, so the 0.0 was legitimate,
not a test comparing torch with itself; it is also why these tests compare against float64,
where a float32 kernel shared by both sides could not hide an error.

Bounds:
* fp32: 1e-5 (issue 2). Measured worst on avx512_core_amx, 2 threads: linear 1.5e-6
  (1280 -> 320), matmul 8.1e-7, softmax 1.1e-7, attention 1.4e-6 (4096 tokens, 8 heads).
* bf16: linear / matmul 1e-2: inputs, weights and output are each rounded to 8 significant bits
  (at most 2^-8 = 3.9e-3 relative, half that on average); measured worst 5.5e-3 (batch-3 odd
  sizes, K = 7, where little averages out). softmax 2e-2: rounding a logit x to bf16 moves it by
  up to |x| 2^-8, which becomes a *relative* error of its probability (1.6e-2 for |x| = 4, rarely
  reached), plus the output rounding; measured worst 8.2e-3 on unit-scale logits. attention 2e-2:
  q, k, v are rounded, the probabilities are rounded to bf16 before P V, and the output again;
  measured worst 6.8e-3 (cross-attention to the projected 77-token context).
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
BF16_LINEAR_BOUND = 1e-2
BF16_SOFTMAX_BOUND = 2e-2
BF16_ATTENTION_BOUND = 2e-2


def rel_err(got: np.ndarray, ref: np.ndarray) -> float:
    assert got.shape == ref.shape, f"shape {got.shape} != reference {ref.shape}"
    assert np.isfinite(got).all()
    return float(np.abs(got.astype(np.float64) - ref).max() / np.abs(ref).max())


def randn(rng: np.random.Generator, *shape: int, scale: float = 1.0) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def t64(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a).double()


def precisions(bf16_bound: float) -> list:
    return [pytest.param("fp32", FP32_BOUND, id="fp32"), bf16("bf16", bf16_bound, id="bf16")]


# ---- linear ----------------------------------------------------------------------------------

LINEARS = {
    # id: (input shape, in features, out features, activation)
    "unet_ff_proj_320_to_2560_on_4096_tokens": ((4096,), 320, 2560, None),
    "unet_qkv_320_on_2x4096_tokens": ((2, 4096), 320, 320, None),
    "unet_ff_out_1280_to_320": ((2, 1024), 1280, 320, None),
    "unet_context_kv_768_to_320_on_77_tokens": ((2, 77), 768, 320, None),
    "unet_time_mlp_320_to_1280_silu": ((2,), 320, 1280, "silu"),
    "text_mlp_fc1_768_to_3072_quick_gelu": ((2, 77), 768, 3072, "quick_gelu"),
    "text_mlp_fc2_3072_to_768": ((2, 77), 3072, 768, None),
    "gelu_activation": ((3, 50), 64, 96, "gelu"),
    "relu_activation": ((3, 50), 64, 96, "relu"),
    "single_row": ((1,), 13, 21, None),
    "features_not_multiple_of_16_batch_3": ((3, 7), 13, 21, None),
}


def torch_act(y: torch.Tensor, act: Optional[str]) -> torch.Tensor:
    if act is None:
        return y
    return {"relu": F.relu, "silu": F.silu, "gelu": F.gelu, "quick_gelu": lambda t: t * torch.sigmoid(1.702 * t)}[act](
        y
    )


@pytest.mark.parametrize("precision, bound", precisions(BF16_LINEAR_BOUND))
@pytest.mark.parametrize("lead, k, n, act", [pytest.param(*v, id=key) for key, v in LINEARS.items()])
def test_linear_matches_torch(lead, k, n, act, precision, bound) -> None:
    rng = np.random.default_rng(0)
    x, w, b = randn(rng, *lead, k), randn(rng, n, k, scale=k**-0.5), randn(rng, n, scale=0.1)
    got = ops.linear(x, w, b, activation=act, precision=precision)
    ref = torch_act(F.linear(t64(x), t64(w), t64(b)), act).numpy()
    assert rel_err(got, ref) <= bound


def test_linear_without_bias() -> None:
    rng = np.random.default_rng(1)
    x, w = randn(rng, 2, 77, 768), randn(rng, 320, 768, scale=768**-0.5)
    assert rel_err(ops.linear(x, w), F.linear(t64(x), t64(w)).numpy()) <= FP32_BOUND


def test_linear_2d_and_3d_inputs_give_the_same_rows() -> None:
    rng = np.random.default_rng(2)
    x, w, b = randn(rng, 2, 30, 40), randn(rng, 24, 40), randn(rng, 24)
    np.testing.assert_array_equal(ops.linear(x, w, b).reshape(60, 24), ops.linear(x.reshape(60, 40), w, b))


@pytest.mark.parametrize("precision, bound", precisions(BF16_LINEAR_BOUND))
def test_geglu_as_two_fused_linears_matches_torch_geglu(precision: str, bound: float) -> None:
    """SD's ff.net.0.proj (320 -> 2560 on 4096 tokens): value = first half, gate = second half;
    out = gelu(x W_g^T + b_g) * (x W_v^T + b_v) with GELU and the multiply fused as post-ops."""
    rng = np.random.default_rng(3)
    x, w, b = randn(rng, 4096, 320), randn(rng, 2560, 320, scale=320**-0.5), randn(rng, 2560, scale=0.1)
    value = ops.linear(x, w[:1280], b[:1280], precision=precision)
    got = ops.linear(x, w[1280:], b[1280:], activation="gelu", mul=value, precision=precision)
    a, g = F.linear(t64(x), t64(w), t64(b)).chunk(2, dim=-1)
    assert rel_err(got, (a * F.gelu(g)).numpy()) <= bound


GEGLU_LINEARS = {
    # id: (input shape, in features C, F = 4C): the UNet's three widths; row counts that are a
    # multiple of the chunk, one that leaves a tail, fewer rows than one chunk, and a 3-D batch.
    "level0_320_on_8192_tokens": ((8192,), 320, 1280),
    "level1_640_on_2048_tokens": ((2048,), 640, 2560),
    "level2_1280_on_512_tokens": ((512,), 1280, 5120),
    "odd_1000_rows_leave_a_tail_chunk": ((1000,), 320, 1280),
    "fewer_rows_than_one_chunk_77": ((77,), 64, 40),
    "batch_3_odd_widths": ((3, 301), 40, 24),
}


@pytest.mark.parametrize("precision, bound", precisions(BF16_LINEAR_BOUND))
@pytest.mark.parametrize("lead, c, f", list(GEGLU_LINEARS.values()), ids=list(GEGLU_LINEARS))
def test_linear_geglu_matches_torch_geglu(lead, c, f, precision: str, bound: float) -> None:
    """ops.linear_geglu: one [2F, C] matmul (value rows, then gate rows, as ff.net.0.proj is
    stored) per chunk of rows, then value * gelu(gate) (erf form) against float64 torch."""
    rng = np.random.default_rng(31)
    x, w, b = randn(rng, *lead, c), randn(rng, 2 * f, c, scale=c**-0.5), randn(rng, 2 * f, scale=0.1)
    got = ops.linear_geglu(x, w, b, precision=precision)
    a, g = F.linear(t64(x), t64(w), t64(b)).chunk(2, dim=-1)
    assert rel_err(got, (a * F.gelu(g)).numpy()) <= bound


def test_linear_geglu_without_bias() -> None:
    rng = np.random.default_rng(32)
    x, w = randn(rng, 300, 32), randn(rng, 48, 32, scale=32**-0.5)
    a, g = F.linear(t64(x), t64(w)).chunk(2, dim=-1)
    assert rel_err(ops.linear_geglu(x, w), (a * F.gelu(g)).numpy()) <= FP32_BOUND


def test_linear_geglu_rejects_an_odd_number_of_weight_rows() -> None:
    rng = np.random.default_rng(33)
    with pytest.raises(ValueError, match="not an even"):
        ops.linear_geglu(randn(rng, 4, 8), randn(rng, 7, 8))


@pytest.mark.parametrize("precision, bound", precisions(BF16_LINEAR_BOUND))
def test_linear_fuses_activation_mul_and_add_in_that_order(precision: str, bound: float) -> None:
    rng = np.random.default_rng(4)
    x, w, b = randn(rng, 3, 17, 40), randn(rng, 24, 40, scale=40**-0.5), randn(rng, 24)
    mul, add = randn(rng, 3, 17, 24), randn(rng, 3, 17, 24)
    got = ops.linear(x, w, b, activation="silu", mul=mul, add=add, precision=precision)
    ref = F.silu(F.linear(t64(x), t64(w), t64(b))) * t64(mul) + t64(add)
    assert rel_err(got, ref.numpy()) <= bound


def test_linear_residual_add_of_the_transformer_ff_output() -> None:
    rng = np.random.default_rng(5)
    x, w, b, res = (
        randn(rng, 2, 1024, 1280),
        randn(rng, 320, 1280, scale=1280**-0.5),
        randn(rng, 320),
        randn(rng, 2, 1024, 320),
    )
    got = ops.linear(x, w, b, add=res)
    assert rel_err(got, (F.linear(t64(x), t64(w), t64(b)) + t64(res)).numpy()) <= FP32_BOUND


# ---- batched matmul --------------------------------------------------------------------------

MATMULS = {
    # id: (B, M, K, N)
    "cross_attention_scores_16x4096x40_by_77": (16, 4096, 40, 77),
    "attention_values_16x1024x1024_by_80": (16, 1024, 1024, 80),
    "text_scores_24x77x64_by_77": (24, 77, 64, 77),
    "batch_3_odd_sizes": (3, 5, 7, 1),
    "single_element": (1, 1, 1, 1),
}


@pytest.mark.parametrize("trans_b", [False, True], ids=["b_KN", "b_NK_transposed"])
@pytest.mark.parametrize("precision, bound", precisions(BF16_LINEAR_BOUND))
@pytest.mark.parametrize("bsz, m, k, n", [pytest.param(*v, id=key) for key, v in MATMULS.items()])
def test_batched_matmul_matches_torch(bsz, m, k, n, precision, bound, trans_b) -> None:
    rng = np.random.default_rng(6)
    a = randn(rng, bsz, m, k)
    b = randn(rng, bsz, n, k) if trans_b else randn(rng, bsz, k, n)
    got = ops.matmul(a, b, trans_b=trans_b, precision=precision)
    ref = torch.bmm(t64(a), t64(b).transpose(1, 2) if trans_b else t64(b))
    assert rel_err(got, ref.numpy()) <= bound


def test_matmul_alpha_scales_the_product() -> None:
    rng = np.random.default_rng(7)
    a, b = randn(rng, 2, 9, 40), randn(rng, 2, 11, 40)
    got = ops.matmul(a, b, trans_b=True, alpha=40**-0.5)
    assert rel_err(got, (torch.bmm(t64(a), t64(b).transpose(1, 2)) * 40**-0.5).numpy()) <= FP32_BOUND


# ---- softmax ---------------------------------------------------------------------------------


@pytest.mark.parametrize("precision, bound", precisions(BF16_SOFTMAX_BOUND))
@pytest.mark.parametrize(
    "shape",
    [(16, 4096, 77), (24, 77, 77), (5, 13), (7,), (3, 1)],
    ids=["cross_attention_probs", "text_probs", "2d_odd", "1d", "single_column"],
)
def test_softmax_over_last_dim_matches_torch(shape, precision: str, bound: float) -> None:
    rng = np.random.default_rng(8)
    x = randn(rng, *shape)
    assert rel_err(ops.softmax(x, precision=precision), torch.softmax(t64(x), dim=-1).numpy()) <= bound


def test_softmax_is_stable_for_large_logits() -> None:
    x = np.array([[1000.0, 999.0, -1000.0], [-1e4, -1e4 + 1, -1e4 + 2]], np.float32)
    assert rel_err(ops.softmax(x), torch.softmax(t64(x), dim=-1).numpy()) <= FP32_BOUND


# ---- attention -------------------------------------------------------------------------------


def attention_reference(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, heads: int, scale: Optional[float] = None, causal: bool = False
) -> np.ndarray:
    """softmax(q k^T * scale [+ causal mask]) v per head, in float64, a few heads at a time."""
    b, n, c = q.shape
    m = k.shape[1]
    d = c // heads
    scale = d**-0.5 if scale is None else scale
    qh, kh, vh = (t64(a).view(b, -1, heads, d).transpose(1, 2).reshape(b * heads, -1, d) for a in (q, k, v))
    out = torch.empty(b * heads, n, d, dtype=torch.float64)
    step = max(1, (1 << 25) // (n * m))
    for i in range(0, b * heads, step):
        s = torch.bmm(qh[i : i + step], kh[i : i + step].transpose(1, 2)) * scale
        if causal:
            s = s.masked_fill(torch.ones(n, m, dtype=torch.bool).triu(1), float("-inf"))
        out[i : i + step] = torch.bmm(torch.softmax(s, dim=-1), vh[i : i + step])
    return out.view(b, heads, n, d).transpose(1, 2).reshape(b, n, c).numpy()


ATTENTIONS = {
    # id: (B, query tokens, key tokens, features, heads, causal)
    "unet_self_attention_4096_tokens_8_heads_of_40": (2, 4096, 4096, 320, 8, False),
    "unet_self_attention_1024_tokens_8_heads_of_80": (2, 1024, 1024, 640, 8, False),
    "unet_self_attention_64_tokens_8_heads_of_160": (2, 64, 64, 1280, 8, False),
    "text_causal_77_tokens_12_heads_of_64": (2, 77, 77, 768, 12, True),
    "vae_mid_block_single_head_512_on_1024_tokens": (1, 1024, 1024, 512, 1, False),
    # query tiles: a remainder tile after full ones, and causal masking across tile edges
    "query_tiles_with_remainder": (2, 300, 4096, 64, 8, False),
    "causal_across_query_tiles": (1, 2000, 2000, 64, 8, True),
    "head_dim_13_batch_3": (3, 11, 7, 39, 3, False),
    "one_query_one_key": (3, 1, 1, 16, 2, False),
    "one_query_many_keys": (1, 1, 333, 24, 4, False),
}
SLOW_ATTENTION = {"unet_self_attention_4096_tokens_8_heads_of_40"}


@pytest.mark.parametrize("precision, bound", precisions(BF16_ATTENTION_BOUND))
@pytest.mark.parametrize(
    "bsz, n, m, c, heads, causal",
    [
        pytest.param(*v, id=key, marks=[pytest.mark.slow] if key in SLOW_ATTENTION else [])
        for key, v in ATTENTIONS.items()
    ],
)
def test_attention_matches_torch(bsz, n, m, c, heads, causal, precision, bound) -> None:
    rng = np.random.default_rng(9)
    q, k, v = randn(rng, bsz, n, c), randn(rng, bsz, m, c), randn(rng, bsz, m, c)
    got = ops.attention(q, k, v, heads, causal=causal, precision=precision)
    assert rel_err(got, attention_reference(q, k, v, heads, causal=causal)) <= bound


@pytest.mark.parametrize("precision, bound", precisions(BF16_ATTENTION_BOUND))
def test_cross_attention_to_projected_77_token_context(precision: str, bound: float) -> None:
    """UNet cross-attention at 64x64: 4096 queries of 320 features, keys and values projected
    from the [2, 77, 768] text context by the to_k / to_v linears (no bias), 8 heads of 40."""
    rng = np.random.default_rng(10)
    x, ctx = randn(rng, 2, 4096, 320), randn(rng, 2, 77, 768)
    wq, wk, wv = (
        randn(rng, 320, 320, scale=320**-0.5),
        randn(rng, 320, 768, scale=768**-0.5),
        randn(rng, 320, 768, scale=768**-0.5),
    )
    q, k, v = (ops.linear(a, w, precision=precision) for a, w in ((x, wq), (ctx, wk), (ctx, wv)))
    got = ops.attention(q, k, v, 8, precision=precision)
    qr, kr, vr = (F.linear(t64(a), t64(w)).float().numpy() for a, w in ((x, wq), (ctx, wk), (ctx, wv)))
    assert rel_err(got, attention_reference(qr, kr, vr, 8)) <= bound


def test_attention_scale_argument_replaces_one_over_sqrt_head_dim() -> None:
    rng = np.random.default_rng(11)
    q, k, v = randn(rng, 1, 20, 32), randn(rng, 1, 30, 32), randn(rng, 1, 30, 32)
    got = ops.attention(q, k, v, 2, scale=0.5)
    assert rel_err(got, attention_reference(q, k, v, 2, scale=0.5)) <= FP32_BOUND


def test_causal_attention_first_query_sees_only_the_first_key() -> None:
    rng = np.random.default_rng(12)
    q, k, v = randn(rng, 2, 77, 64), randn(rng, 2, 77, 64), randn(rng, 2, 77, 64)
    got = ops.attention(q, k, v, 4, causal=True)
    np.testing.assert_allclose(got[:, 0], v[:, 0], rtol=1e-6, atol=1e-6)


def _cpu_flags() -> set:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def test_bf16_attention_runs_on_amx_exactly_where_the_cpu_has_it() -> None:
    """Every bf16 attention test above runs on the AMX tile path on a machine with AMX-BF16
    (this one) and on the widening sgemm path elsewhere; info() says which."""
    import asymvq

    flags = _cpu_flags()
    if not flags:
        # Only non-Linux hosts lack /proc/cpuinfo; CI and the machines we support are Linux, where
        # this test always runs. Without the flags there is no independent truth to compare with.
        pytest.skip("no /proc/cpuinfo to read the CPU flags from")
    # ... and oneDNN's ISA cap, if set, allows AMX (asymvq's kernels honour the same cap)
    has_amx = {"amx_bf16", "amx_tile"} <= flags and asymvq.info()["isa"].startswith("avx512_core_amx")
    assert asymvq.info()["amx_attention"] is has_amx
