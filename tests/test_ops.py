"""The contract of asymvq._core.ops (the private NumPy surface of the C ops) beyond arithmetic.

* Bad arguments -- wrong rank or dtype, mismatched channels or features, zero-size arrays, wrong
  weight shapes, bad padding / stride, groups not dividing channels, heads not dividing features,
  unknown activations or precisions -- raise ValueError or TypeError whose message names the
  parameter and what was expected; nothing crashes.
* Non-contiguous, Fortran-ordered, negatively strided, byte-swapped and misaligned arrays are
  accepted by copying them: the result equals the one for a contiguous copy.
* Read-only arrays are accepted as inputs, and no op ever writes into its inputs.
* Calls from several Python threads at once (the GIL is released around compute) give the same
  results as sequential calls.
* ops.timeit replays one plan and returns the op's best time.

The per-op numerics live in test_ops_conv.py, test_ops_matmul.py, test_ops_norm.py and
test_ops_elementwise.py.
"""

from __future__ import annotations

import re
import threading
from typing import Any, Callable, Dict, List

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from isa import bf16

from asymvq._core import ops


def r(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed + sum(shape)).standard_normal(shape).astype(np.float32)


def ones(*shape: int) -> np.ndarray:
    return np.ones(shape, np.float32)


# ---- bad arguments ---------------------------------------------------------------------------

# id: (call, exception type, pattern the message must match)
BAD_CALLS: Dict[str, tuple] = {
    # conv2d
    "conv_x_rank_3": (lambda: ops.conv2d(r(3, 8, 8), r(4, 3, 3, 3)), ValueError, r"x must be 4-D, got 3-D"),
    "conv_x_float64": (
        lambda: ops.conv2d(r(1, 3, 8, 8).astype(np.float64), r(4, 3, 3, 3)),
        TypeError,
        r"x must have dtype float32, got .*float64",
    ),
    "conv_x_int32": (
        lambda: ops.conv2d(np.ones((1, 3, 8, 8), np.int32), r(4, 3, 3, 3)),
        TypeError,
        r"x must have dtype float32",
    ),
    "conv_x_list": (lambda: ops.conv2d([[1.0]], r(4, 3, 3, 3)), TypeError, r"x must be a numpy.ndarray"),
    "conv_weight_rank_2": (lambda: ops.conv2d(r(1, 3, 8, 8), r(4, 3)), ValueError, r"weight must be 4-D"),
    "conv_channels_mismatch": (
        lambda: ops.conv2d(r(1, 3, 8, 8), r(4, 5, 3, 3)),
        ValueError,
        r"x has 3 channels but weight expects 5 .*\[O, I, kh, kw\]",
    ),
    "conv_bias_shape": (
        lambda: ops.conv2d(r(1, 3, 8, 8), r(4, 3, 3, 3), r(5)),
        ValueError,
        r"bias must have shape \[4\]",
    ),
    "conv_bias_rank": (lambda: ops.conv2d(r(1, 3, 8, 8), r(4, 3, 3, 3), r(4, 1)), ValueError, r"bias must be 1-D"),
    "conv_kernel_larger_than_input": (
        lambda: ops.conv2d(r(1, 3, 2, 2), r(4, 3, 3, 3)),
        ValueError,
        r"kernel 3x3 is larger than the padded input 2x2",
    ),
    "conv_zero_stride": (
        lambda: ops.conv2d(r(1, 3, 8, 8), r(4, 3, 3, 3), stride=0),
        ValueError,
        r"stride must be >= 1",
    ),
    "conv_negative_padding": (
        lambda: ops.conv2d(r(1, 3, 8, 8), r(4, 3, 3, 3), padding=-1),
        ValueError,
        r"padding must be >= 0",
    ),
    "conv_padding_of_three": (
        lambda: ops.conv2d(r(1, 3, 8, 8), r(4, 3, 3, 3), padding=(1, 1, 1)),
        ValueError,
        r"padding must be an int, a pair or \(top, left, bottom, right\)",
    ),
    "conv_stride_of_four": (
        lambda: ops.conv2d(r(1, 3, 8, 8), r(4, 3, 3, 3), stride=(1, 1, 1, 1)),
        ValueError,
        r"stride must be an int, a pair",
    ),
    "conv_stride_overflowing_int": (
        lambda: ops.conv2d(r(1, 3, 8, 8), r(4, 3, 3, 3), stride=2**32 + 1),
        ValueError,
        r"stride value 4294967297 is out of range",
    ),
    "conv_padding_overflowing_int": (
        lambda: ops.conv2d(r(1, 3, 8, 8), r(4, 3, 3, 3), padding=2**33),
        ValueError,
        r"padding value 8589934592 is out of range",
    ),
    "conv_padding_float": (
        lambda: ops.conv2d(r(1, 3, 8, 8), r(4, 3, 3, 3), padding=(1.0, 1)),
        TypeError,
        r"padding values must be ints",
    ),
    "conv_residual_shape": (
        lambda: ops.conv2d(r(1, 3, 8, 8), r(4, 3, 3, 3), residual=r(1, 4, 7, 7)),
        ValueError,
        r"residual must have the output shape \[1, 4, 6, 6\] or \[N, C, 1, 1\]",
    ),
    "conv_unknown_activation": (
        lambda: ops.conv2d(r(1, 3, 8, 8), r(4, 3, 3, 3), activation="tanh"),
        ValueError,
        r"activation must be one of .*'tanh'",
    ),
    "conv_zero_batch": (
        lambda: ops.conv2d(np.zeros((0, 3, 8, 8), np.float32), r(4, 3, 3, 3)),
        ValueError,
        r"x is empty",
    ),
    "conv_zero_out_channels": (
        lambda: ops.conv2d(r(1, 3, 8, 8), np.zeros((0, 3, 3, 3), np.float32)),
        ValueError,
        r"weight is empty",
    ),
    "unknown_precision": (
        lambda: ops.conv2d(r(1, 3, 8, 8), r(4, 3, 3, 3), precision="fp16"),
        ValueError,
        r"precision must be \"fp32\" or \"bf16\", got 'fp16'",
    ),
    # linear
    "linear_features_mismatch": (
        lambda: ops.linear(r(4, 8), r(3, 7)),
        ValueError,
        r"x has 8 features but weight \[out, in\] expects 7",
    ),
    "linear_bias_shape": (lambda: ops.linear(r(4, 8), r(3, 8), r(4)), ValueError, r"bias must have shape \[3\]"),
    "linear_mul_shape": (
        lambda: ops.linear(r(4, 8), r(3, 8), mul=r(4, 4)),
        ValueError,
        r"mul must have the output's shape",
    ),
    "linear_add_shape": (
        lambda: ops.linear(r(2, 4, 8), r(3, 8), add=r(2, 4, 4)),
        ValueError,
        r"add must have the output's shape",
    ),
    "linear_x_rank_4": (lambda: ops.linear(r(1, 4, 4, 8), r(3, 8)), ValueError, r"x must be 2-D to 3-D, got 4-D"),
    "linear_weight_rank_3": (lambda: ops.linear(r(4, 8), r(1, 3, 8)), ValueError, r"weight must be 2-D"),
    "linear_zero_rows": (lambda: ops.linear(np.zeros((0, 8), np.float32), r(3, 8)), ValueError, r"x is empty"),
    # matmul, softmax
    "matmul_inner_mismatch": (
        lambda: ops.matmul(r(2, 3, 4), r(2, 5, 6)),
        ValueError,
        r"a \[B, M, K\] and b \[B, K, N\] do not fit",
    ),
    "matmul_transposed_mismatch": (
        lambda: ops.matmul(r(2, 3, 4), r(2, 4, 6), trans_b=True),
        ValueError,
        r"a \[B, M, K\] and b \[B, N, K\] do not fit",
    ),
    "matmul_batch_mismatch": (lambda: ops.matmul(r(2, 3, 4), r(3, 4, 6)), ValueError, r"do not fit"),
    "matmul_rank_2": (lambda: ops.matmul(r(3, 4), r(4, 6)), ValueError, r"a must be 3-D, got 2-D"),
    "softmax_rank_4": (lambda: ops.softmax(r(1, 2, 3, 4)), ValueError, r"x must be 1-D to 3-D, got 4-D"),
    # attention
    "attention_heads_not_dividing": (
        lambda: ops.attention(r(1, 4, 10), r(1, 5, 10), r(1, 5, 10), 3),
        ValueError,
        r"heads must divide the 10 features of q, got 3",
    ),
    "attention_zero_heads": (
        lambda: ops.attention(r(1, 4, 10), r(1, 5, 10), r(1, 5, 10), 0),
        ValueError,
        r"heads must divide",
    ),
    "attention_k_v_token_mismatch": (
        lambda: ops.attention(r(1, 4, 10), r(1, 5, 10), r(1, 6, 10), 2),
        ValueError,
        r"attention shapes do not fit: q \[1, 4, 10\].*want \[B, N, C\], \[B, M, C\]",
    ),
    "attention_feature_mismatch": (
        lambda: ops.attention(r(1, 4, 10), r(1, 5, 12), r(1, 5, 12), 2),
        ValueError,
        r"attention shapes do not fit",
    ),
    "attention_batch_mismatch": (
        lambda: ops.attention(r(1, 4, 10), r(2, 5, 10), r(2, 5, 10), 2),
        ValueError,
        r"attention shapes do not fit",
    ),
    "attention_causal_cross": (
        lambda: ops.attention(r(1, 4, 10), r(1, 5, 10), r(1, 5, 10), 2, causal=True),
        ValueError,
        r"causal attention needs as many keys as queries",
    ),
    "attention_q_rank_4": (
        lambda: ops.attention(r(1, 1, 4, 10), r(1, 5, 10), r(1, 5, 10), 2),
        ValueError,
        r"q must be 3-D",
    ),
    # norms
    "group_norm_groups_not_dividing": (
        lambda: ops.group_norm(r(1, 30, 4, 4), r(30), r(30), 32),
        ValueError,
        r"groups must divide the 30 channels, got 32",
    ),
    "group_norm_zero_groups": (
        lambda: ops.group_norm(r(1, 32, 4, 4), r(32), r(32), 0),
        ValueError,
        r"groups must divide",
    ),
    "group_norm_weight_shape": (
        lambda: ops.group_norm(r(1, 32, 4, 4), r(31), r(32), 32),
        ValueError,
        r"weight and bias must have shape \[32\]",
    ),
    "group_norm_zero_eps": (
        lambda: ops.group_norm(r(1, 32, 4, 4), r(32), r(32), 32, 0.0),
        ValueError,
        r"eps must be > 0",
    ),
    "group_norm_rank_3": (
        lambda: ops.group_norm(r(1, 32, 4), r(32), r(32), 32),
        ValueError,
        r"x must be \[N, C\] or \[N, C, H, W\]",
    ),
    "layer_norm_weight_shape": (
        lambda: ops.layer_norm(r(2, 4, 8), r(7), r(8)),
        ValueError,
        r"weight and bias must have shape \[8\]",
    ),
    "layer_norm_rank_1": (lambda: ops.layer_norm(r(8), r(8), r(8)), ValueError, r"x must be 2-D to 3-D, got 1-D"),
    "layer_norm_negative_eps": (lambda: ops.layer_norm(r(2, 8), r(8), r(8), eps=-1.0), ValueError, r"eps must be > 0"),
    # elementwise
    "activation_unknown_kind": (
        lambda: ops.activation(r(4), "swish"),
        ValueError,
        r"activation must be one of None, 'relu', 'silu', 'gelu', 'quick_gelu'; got 'swish'",
    ),
    "activation_rank_5": (lambda: ops.activation(r(1, 1, 1, 1, 4), "relu"), ValueError, r"x must be 1-D to 4-D"),
    "geglu_odd_features": (lambda: ops.geglu(r(2, 7)), ValueError, r"the last dim of x must be even"),
    "add_unbroadcastable": (
        lambda: ops.add(r(1, 4, 3, 3), r(1, 4, 3, 2)),
        ValueError,
        r"add: cannot broadcast \[1, 4, 3, 2\].*\(same shape, \[N, C, 1, 1\] or \[N, 1, H, W\]\)",
    ),
    "add_rank_mismatch": (lambda: ops.add(r(4, 3), r(1, 4, 3, 3)), ValueError, r"add: cannot broadcast"),
    "add_vector_to_rows": (lambda: ops.add(r(4, 3), r(3)), ValueError, r"add: cannot broadcast \[3\]"),
    "mul_broadcast_over_batch": (
        lambda: ops.mul(r(2, 4, 3, 3), r(1, 4, 1, 1)),
        ValueError,
        r"mul: cannot broadcast \[1, 4, 1, 1\]",
    ),
    "blend_mask_with_channels": (
        lambda: ops.blend(r(1, 4, 3, 3), r(1, 4, 3, 3), r(1, 4, 3, 3)),
        ValueError,
        r"the mask must be \[N, 1, H, W\]",
    ),
    "blend_features_mismatch": (
        lambda: ops.blend(r(1, 4, 3, 3), r(1, 4, 3, 2), r(1, 1, 3, 3)),
        ValueError,
        r"blend: features \[1, 4, 3, 2\].*must match \[1, 4, 3, 3\]",
    ),
    "concat_spatial_mismatch": (
        lambda: ops.concat(r(1, 4, 3, 3), r(1, 4, 3, 2)),
        ValueError,
        r"concat: \[1, 4, 3, 3\].*and \[1, 4, 3, 2\].*do not concatenate",
    ),
    "concat_batch_mismatch": (lambda: ops.concat(r(1, 4, 3, 3), r(2, 4, 3, 3)), ValueError, r"do not concatenate"),
    "upsample_rank_3": (lambda: ops.upsample2x(r(4, 3, 3)), ValueError, r"x must be 4-D, got 3-D"),
    "resize_zero_size": (
        lambda: ops.resize_nearest(r(1, 4, 3, 3), (0, 3)),
        ValueError,
        r"size must be positive \(height, width\), got \(0, 3\)",
    ),
    "resize_negative_size": (lambda: ops.resize_nearest(r(1, 4, 3, 3), (-1, 3)), ValueError, r"size must be positive"),
    "timestep_odd_dim": (
        lambda: ops.timestep_embedding(np.zeros(2, np.float32), 7),
        ValueError,
        r"dim must be even and >= 2, got 7",
    ),
    "timestep_t_rank_2": (
        lambda: ops.timestep_embedding(np.zeros((2, 1), np.float32), 8),
        ValueError,
        r"t must be 1-D, got 2-D",
    ),
    "timestep_negative_period": (
        lambda: ops.timestep_embedding(np.zeros(2, np.float32), 8, max_period=-1.0),
        ValueError,
        r"max_period must be a positive finite number",
    ),
    "timestep_empty": (lambda: ops.timestep_embedding(np.zeros(0, np.float32), 8), ValueError, r"t is empty"),
}


@pytest.mark.parametrize("call, exc, pattern", [pytest.param(*v, id=k) for k, v in BAD_CALLS.items()])
def test_bad_arguments_raise_a_named_error(call: Callable[[], Any], exc: type, pattern: str) -> None:
    with pytest.raises(exc, match=pattern):
        call()


# hypothesis: random (often invalid) convolution arguments either match torch or raise a
# ValueError naming the problem -- never a crash or a wrong-shaped result.
@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 2),
    ci=st.integers(1, 5),
    co=st.integers(1, 5),
    wci=st.integers(1, 5),
    h=st.integers(1, 9),
    w=st.integers(1, 9),
    kh=st.integers(1, 5),
    kw=st.integers(1, 5),
    sh=st.integers(-1, 3),
    sw=st.integers(1, 3),
    pad=st.tuples(*[st.integers(-1, 3)] * 4),
)
def test_any_conv_arguments_match_torch_or_raise_value_error(n, ci, co, wci, h, w, kh, kw, sh, sw, pad) -> None:
    x, wt = r(n, ci, h, w), r(co, wci, kh, kw)
    try:
        got = ops.conv2d(x, wt, stride=(sh, sw), padding=pad)
    except ValueError as e:
        assert str(e)
        valid = ci == wci and sh >= 1 and min(pad) >= 0 and h + pad[0] + pad[2] >= kh and w + pad[1] + pad[3] >= kw
        assert not valid, f"valid arguments rejected: {e}"
        return
    xp = F.pad(torch.from_numpy(x).double(), (pad[1], pad[3], pad[0], pad[2]))
    ref = F.conv2d(xp, torch.from_numpy(wt).double(), stride=(sh, sw)).numpy()
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


# ---- memory layouts of the inputs ---------------------------------------------------------------


def non_contiguous(a: np.ndarray) -> np.ndarray:
    """The same values through a strided view (every other element of a larger buffer)."""
    big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), np.float32)
    big[..., ::2] = a
    v = big[..., ::2]
    assert not v.flags.c_contiguous
    return v


def fortran(a: np.ndarray) -> np.ndarray:
    f = np.asfortranarray(a)
    assert a.ndim < 2 or not f.flags.c_contiguous
    return f


def reversed_view(a: np.ndarray) -> np.ndarray:
    v = a[..., ::-1].copy()[..., ::-1]
    assert v.strides[-1] < 0
    return v


def byte_swapped(a: np.ndarray) -> np.ndarray:
    s = a.astype(a.dtype.newbyteorder())
    assert s.dtype.byteorder != "=" and s.dtype != np.dtype(np.float32).newbyteorder("=")
    return s


def misaligned(a: np.ndarray) -> np.ndarray:
    buf = np.zeros(a.nbytes + 1, np.uint8)
    m = np.frombuffer(buf.data, dtype=np.float32, count=a.size, offset=1).reshape(a.shape)
    m[...] = a
    assert not m.flags.aligned
    return m


LAYOUTS = {
    "strided": non_contiguous,
    "fortran": fortran,
    "negative_strides": reversed_view,
    "byte_swapped": byte_swapped,
    "misaligned": misaligned,
}

# id: (op name, positional arrays, keyword arguments)
CALLS: Dict[str, tuple] = {
    "conv2d": (
        "conv2d",
        lambda: [r(2, 5, 7, 6), r(4, 5, 3, 3), r(4)],
        dict(padding=(0, 0, 1, 1), stride=2, activation="silu"),
    ),
    "conv2d_residual": ("conv2d", lambda: [r(2, 5, 7, 6), r(4, 5, 3, 3)], dict(padding=1, residual=r(2, 4, 7, 6))),
    "linear": ("linear", lambda: [r(3, 6, 10), r(7, 10), r(7)], dict(activation="gelu", mul=r(3, 6, 7))),
    "matmul": ("matmul", lambda: [r(2, 5, 6), r(2, 7, 6)], dict(trans_b=True)),
    "softmax": ("softmax", lambda: [r(3, 4, 9)], {}),
    "attention": ("attention", lambda: [r(2, 9, 12), r(2, 5, 12), r(2, 5, 12)], dict(heads=3)),
    "group_norm": ("group_norm", lambda: [r(2, 8, 5, 3), r(8), r(8)], dict(groups=4, eps=1e-6, silu=True)),
    "layer_norm": ("layer_norm", lambda: [r(2, 5, 16), r(16), r(16)], {}),
    "activation": ("activation", lambda: [r(2, 3, 4, 5)], dict(kind="quick_gelu")),
    "geglu": ("geglu", lambda: [r(3, 12)], {}),
    "add": ("add", lambda: [r(2, 3, 4, 5), r(2, 3, 1, 1)], {}),
    "mul": ("mul", lambda: [r(2, 3, 4, 5), r(2, 1, 4, 5)], {}),
    "blend": ("blend", lambda: [r(2, 3, 4, 5), r(2, 3, 4, 5), r(2, 1, 4, 5)], {}),
    "concat": ("concat", lambda: [r(2, 3, 4, 5), r(2, 2, 4, 5)], {}),
    "upsample2x": ("upsample2x", lambda: [r(2, 3, 4, 5)], {}),
    "resize_nearest": ("resize_nearest", lambda: [r(2, 3, 4, 5)], dict(size=(7, 3))),
    "timestep_embedding": ("timestep_embedding", lambda: [np.array([0, 10, 999], np.float32)], dict(dim=16)),
}
CALL_PARAMS = [pytest.param(*v, id=k) for k, v in CALLS.items()]


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("name, make, kw", CALL_PARAMS)
def test_arrays_in_any_memory_layout_are_copied_and_give_the_same_result(name, make, kw, layout) -> None:
    arrays: List[np.ndarray] = make()
    want = getattr(ops, name)(*arrays, **kw)
    got = getattr(ops, name)(*[LAYOUTS[layout](a) for a in arrays], **kw)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("name, make, kw", CALL_PARAMS)
def test_read_only_inputs_are_accepted_and_give_the_same_result(name, make, kw) -> None:
    arrays: List[np.ndarray] = make()
    want = getattr(ops, name)(*arrays, **kw)
    for a in arrays:
        a.flags.writeable = False
    kw_ro = {k: v for k, v in kw.items()}
    for v in kw_ro.values():
        if isinstance(v, np.ndarray):
            v.flags.writeable = False
    np.testing.assert_array_equal(getattr(ops, name)(*arrays, **kw_ro), want)


@pytest.mark.parametrize("precision", ["fp32", bf16("bf16")])
@pytest.mark.parametrize("name, make, kw", CALL_PARAMS)
def test_ops_never_write_into_their_inputs(name, make, kw, precision) -> None:
    arrays: List[np.ndarray] = make()
    before = [a.copy() for a in arrays] + [v.copy() for v in kw.values() if isinstance(v, np.ndarray)]
    out = getattr(ops, name)(*arrays, precision=precision, **kw)
    after = arrays + [v for v in kw.values() if isinstance(v, np.ndarray)]
    for b, a in zip(before, after):
        np.testing.assert_array_equal(a, b)
    assert out.dtype == np.float32 and out.flags.c_contiguous and out.flags.writeable


def test_results_are_new_arrays_not_views_of_inputs() -> None:
    x = r(2, 3, 4, 5)
    y = ops.activation(x, "relu")
    assert not np.shares_memory(x, y)


@pytest.mark.parametrize("spelling, same_as", [("float32", "fp32"), bf16("bfloat16", "bf16"), (None, "fp32")])
def test_precision_spellings(spelling: Any, same_as: str) -> None:
    x, w = r(1, 4, 5, 5), r(3, 4, 3, 3)
    np.testing.assert_array_equal(ops.conv2d(x, w, precision=spelling), ops.conv2d(x, w, precision=same_as))


# ---- threads -----------------------------------------------------------------------------------


def test_concurrent_calls_from_python_threads_match_sequential_ones() -> None:
    cases = [(r(1, 16, 12, 12, seed=i), r(8, 16, 3, 3, seed=i)) for i in range(4)]
    want = [ops.conv2d(x, w, padding=1) for x, w in cases]
    got: List[Any] = [None] * len(cases)
    errors: List[BaseException] = []

    def work(i: int) -> None:
        try:
            for _ in range(5):
                got[i] = ops.conv2d(*cases[i], padding=1)
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(cases))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


# ---- timeit --------------------------------------------------------------------------------------


def test_timeit_returns_the_best_seconds_of_the_op() -> None:
    x, w = r(1, 16, 32, 32), r(16, 16, 3, 3)
    t = ops.timeit("conv2d", x, w, padding=1, repeat=3)
    assert isinstance(t, float) and 0.0 < t < 10.0


def test_timeit_passes_arguments_through_and_reports_their_errors() -> None:
    with pytest.raises(ValueError, match=re.escape("x has 3 channels but weight expects 5")):
        ops.timeit("conv2d", r(1, 3, 8, 8), r(4, 5, 3, 3), repeat=2)


@pytest.mark.parametrize(
    "args, kw, pattern",
    [
        (("nope",), {}, r"'nope' is not an op of asymvq._core.ops"),
        (("timeit",), {}, r"'timeit' is not an op"),
        (("activation", r(3), "relu"), {"repeat": 0}, r"repeat must be an int between 1 and 1000000, got 0"),
        (("activation", r(3), "relu"), {"repeat": "5"}, r"repeat must be an int"),
    ],
)
def test_timeit_rejects_unknown_ops_and_bad_repeat(args: tuple, kw: dict, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        ops.timeit(*args, **kw)
