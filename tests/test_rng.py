"""asymvq.sampler.randn: NumPy's legacy RandomState(seed).randn(...).astype(float32), bit for bit (SPEC §8.5)."""

from __future__ import annotations

import numpy as np
import pytest

from asymvq.sampler import randn


def numpy_randn(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    return np.random.RandomState(seed).randn(*shape).astype(np.float32)


SEEDS = [0, 1, 42, 12345, 2**31 - 1, 2**31, 2**32 - 1]
SHAPES = [(1, 4, 64, 64), (1,), (15,), (3, 5), (2, 3, 5, 7), (1, 4, 40, 56)]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_randn_equals_numpy_bit_for_bit(seed: int, shape: tuple[int, ...]) -> None:
    ours = randn(seed, shape)
    assert ours.dtype == np.float32 and ours.shape == shape
    np.testing.assert_array_equal(ours.view(np.uint32), numpy_randn(seed, shape).view(np.uint32))


def test_spec_test_vectors_seed_0_and_42() -> None:
    # SPEC §8.5 (float64 values; randn rounds them to float32)
    seed0 = [
        1.764052345967664,
        0.4001572083672233,
        0.9787379841057392,
        2.240893199201458,
        1.8675579901499675,
        -0.977277879876411,
    ]
    seed42 = [0.4967141530112327, -0.13826430117118466, 0.6476885381006925]
    np.testing.assert_array_equal(randn(0, (6,)), np.array(seed0, dtype=np.float64).astype(np.float32))
    np.testing.assert_array_equal(randn(42, (3,)), np.array(seed42, dtype=np.float64).astype(np.float32))


def test_inpainting_start_code_begins_as_in_spec() -> None:
    # SPEC §10.3: the start code of a 512x512 image is [1, 4, 64, 64] and begins 1.7640524, 0.4001572, 0.9787380
    code = randn(0, (1, 4, 64, 64))
    np.testing.assert_allclose(code.ravel()[:3], [1.7640524, 0.4001572, 0.9787380], rtol=0, atol=5e-8)


def test_odd_counts_use_the_cached_second_gaussian() -> None:
    # An odd count leaves the polar pair's second value cached; numpy continues from it, and so does
    # the C stream: the first 5 of a draw of 6 equal a draw of 5.
    np.testing.assert_array_equal(randn(7, (6,))[:5], randn(7, (5,)))
    np.testing.assert_array_equal(randn(7, (5,)), numpy_randn(7, (5,)))


def test_shape_may_be_an_int() -> None:
    np.testing.assert_array_equal(randn(3, 9), numpy_randn(3, (9,)))


def test_empty_shape_gives_an_empty_array() -> None:
    assert randn(0, (0, 4)).shape == (0, 4)


@pytest.mark.parametrize("seed", [-1, 2**32])
def test_seed_outside_32_bits_is_a_value_error(seed: int) -> None:
    with pytest.raises(ValueError, match="seed"):
        randn(seed, (2,))


def test_non_integer_seed_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="seed"):
        randn(1.5, (2,))  # type: ignore[arg-type]


def test_negative_size_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="negative"):
        randn(0, (2, -1))
