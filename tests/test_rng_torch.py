"""asymvq.rng.Generator: the "torch-cpu" kind equals torch's CPU generator bit for bit, the "numpy"
kind equals RandomState, and "torch-cuda" equals values that torch printed on CUDA GPUs, published
in PyTorch's issue tracker (no GPU was available to produce more).

torch (a test-only reference) must run with its x86 vectorised CPU kernels (capability AVX2 or
AVX512, torch's default on any AVX2 machine): that is the arithmetic "torch-cpu" reproduces.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from asymvq.rng import TORCH_DEFAULT_SEED, Generator, as_generator

SEEDS = [0, 42, 2**32 - 1, 2**63 - 1]

# Below 16 elements (the scalar path), exactly 16, multiples of 16, and sizes that are not
# (the tail of 16 is redrawn), up to SD's latents.
SHAPES = [
    (1,),
    (2,),
    (3,),
    (5,),
    (7,),
    (8,),
    (15,),
    (2, 3),
    (3, 5),
    (16,),
    (17,),
    (18,),
    (31,),
    (32,),
    (33,),
    (47,),
    (48,),
    (63,),
    (100,),
    (255,),
    (257,),
    (1000,),
    (4, 4),
    (3, 7, 5),
    (2, 3, 5, 7),
    (1, 4, 8, 8),
    (1, 4, 7, 9),
    (1, 4, 64, 64),
    (2, 4, 40, 56),
    (1, 4, 80, 48),
    (3, 4, 8, 8),
    (1, 4, 128, 96),
]

# Sequences where one draw changes the next: odd scalar draws leave a cached value that survives a
# block draw, block draws whose tails redraw 16 uniforms, and SD's start code + per-step noises.
SEQUENCES = [
    [(3,), (16,), (1,), (1,)],
    [(5,), (40,), (2,), (17,), (3,)],
    [(1,), (1,), (1,)],
    [(20,), (20,), (20,)],
    [(15,), (15,), (16,)],
    [(1, 4, 8, 8)] * 4,
    [(2, 4, 8, 16), (1,), (2, 4, 8, 16), (7,)],
    [(33,), (1,), (33,), (1,), (1,)],
]


def torch_draws(seed: int, shapes) -> list[np.ndarray]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g, dtype=torch.float32).numpy() for s in shapes]


def ours(seed: int, shapes) -> list[np.ndarray]:
    g = Generator("torch-cpu", seed)
    return [g.randn(s) for s in shapes]


def assert_bits_equal(a: np.ndarray, b: np.ndarray) -> None:
    assert a.dtype == np.float32 and a.shape == b.shape
    np.testing.assert_array_equal(a.view(np.uint32), b.view(np.uint32))


def test_torch_runs_its_vectorised_cpu_kernels() -> None:
    # what the reference values below come from; the DEFAULT capability would use libm
    assert torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"), torch.backends.cpu.get_cpu_capability()


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_torch_cpu_single_draw_is_bit_exact(seed: int, shape: tuple[int, ...]) -> None:
    assert_bits_equal(ours(seed, [shape])[0], torch_draws(seed, [shape])[0])


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("seq", SEQUENCES, ids=lambda q: "-".join("x".join(map(str, s)) for s in q))
def test_torch_cpu_sequence_of_draws_is_bit_exact(seed: int, seq) -> None:
    for a, b in zip(ours(seed, seq), torch_draws(seed, seq)):
        assert_bits_equal(a, b)


def test_torch_cpu_one_hundred_thousand_values_with_tails() -> None:
    shapes = [(8, 4, 64, 64), (3,), (1, 4, 63, 65)]
    for a, b in zip(ours(1234567, shapes), torch_draws(1234567, shapes)):
        assert_bits_equal(a, b)


def test_torch_cpu_default_seed_is_torchs_unseeded_stream() -> None:
    assert torch.Generator().initial_seed() == TORCH_DEFAULT_SEED
    assert_bits_equal(
        ours(TORCH_DEFAULT_SEED, [(1, 4, 8, 8)])[0], torch.randn((1, 4, 8, 8), generator=torch.Generator()).numpy()
    )


def test_torch_cpu_reproduces_diffusers_cpu_latents() -> None:
    # diffusers' randn_tensor with a CPU generator is torch.randn(shape, generator=g) (float32)
    from diffusers.utils.torch_utils import randn_tensor

    g = torch.Generator().manual_seed(7)
    ref = randn_tensor((1, 4, 64, 64), generator=g, dtype=torch.float32).numpy()
    assert_bits_equal(Generator("torch-cpu", 7).randn((1, 4, 64, 64)), ref)


def test_seeds_equal_modulo_two_to_the_32_as_in_torch() -> None:
    # torch's mt19937 keeps the low 32 bits of the seed
    assert_bits_equal(ours(2**32 + 5, [(20,)])[0], ours(5, [(20,)])[0])
    assert_bits_equal(ours(2**32 + 5, [(20,)])[0], torch_draws(2**32 + 5, [(20,)])[0])


@pytest.mark.parametrize("seed", [0, 42, 2**32 - 1])
def test_numpy_kind_continues_one_randomstate_stream(seed: int) -> None:
    g = Generator("numpy", seed)
    a, b = g.randn((3,)), g.randn((2, 4))
    ref = np.random.RandomState(seed).randn(11).astype(np.float32)
    assert_bits_equal(np.concatenate([a, b.ravel()]), ref)


def test_empty_and_zero_dimensional_draws_follow_torch() -> None:
    shapes = [(0, 4), (), (3,)]
    for a, b in zip(ours(0, shapes), torch_draws(0, shapes)):
        assert_bits_equal(a, b)


# ---- torch-cuda against published GPU output (4 printed decimals: |diff| <= 5e-5 + our 1e-5) ----------

CUDA_TOL = 6e-5


def test_torch_cuda_seed_10_three_values_published_in_pytorch_issue_79496() -> None:
    # https://github.com/pytorch/pytorch/issues/79496 (torch 1.11, cu113):
    #   torch.manual_seed(10); torch.randn(3, device=cuda) -> tensor([-0.1029,  1.6810, -0.2708])
    np.testing.assert_allclose(Generator("torch-cuda", 10).randn(3), [-0.1029, 1.6810, -0.2708], rtol=0, atol=CUDA_TOL)


def test_torch_cuda_seed_42_1x64x2048_published_in_pytorch_issue_158398() -> None:
    # https://github.com/pytorch/pytorch/issues/158398 (cuda 12.6): torch.randn([1, 64, 2048],
    # generator=torch.Generator(device).manual_seed(42), device=cuda), first three rows as printed on
    # both machines (the first 40960+ elements lie in every GPU's first wave of threads).
    x = Generator("torch-cuda", 42).randn((1, 64, 2048))[0]
    rows = {
        0: ([0.1940, 2.1614, -0.1721], [1.4540, -2.7733, -0.8932]),
        1: ([-0.4574, 0.8063, 0.1580], [0.1124, 0.2769, -1.2535]),
        2: ([1.1346, -0.6329, -0.9147], [-1.0001, -1.1552, -0.6955]),
    }
    for r, (head, tail) in rows.items():
        np.testing.assert_allclose(x[r, :3], head, rtol=0, atol=CUDA_TOL)
        np.testing.assert_allclose(x[r, -3:], tail, rtol=0, atol=CUDA_TOL)


def test_torch_cuda_capped_grid_reproduces_the_other_machine_of_issue_158398() -> None:
    # The same issue's first machine printed different last rows: 131072 elements exceed its GPU's
    # wave. A grid capped at 168 blocks (28 SMs x 6 blocks, an RTX 3060-class GPU) reproduces them,
    # which checks the thread -> element mapping beyond one wave; the first rows stay the same.
    x = Generator("torch-cuda", 42, cuda_max_blocks=168).randn((1, 64, 2048))[0]
    np.testing.assert_allclose(x[61, :3], [-0.4861, 0.3358, 1.0578], rtol=0, atol=CUDA_TOL)
    np.testing.assert_allclose(x[63, :3], [-1.2356, -0.4083, -0.4695], rtol=0, atol=CUDA_TOL)
    np.testing.assert_allclose(x[63, -3:], [-0.4841, 1.2850, -0.0282], rtol=0, atol=CUDA_TOL)
    np.testing.assert_allclose(x[0, :3], [0.1940, 2.1614, -0.1721], rtol=0, atol=CUDA_TOL)


def test_torch_cuda_seed_43_1x3x128x128_published_in_pytorch_issue_62467() -> None:
    # https://github.com/pytorch/pytorch/issues/62467: torch.Generator(device='cuda:0').manual_seed(43),
    # torch.empty(1, 3, 128, 128).normal_(generator=...) on an RTX A6000 printed noise0[..., 0, 0] =
    # [[1.9983, 0.8704, 2.1127]] (49152 elements: within the A6000's first wave, 84 SMs x 6 blocks).
    x = Generator("torch-cuda", 43).randn((1, 3, 128, 128))
    np.testing.assert_allclose(x[0, :, 0, 0], [1.9983, 0.8704, 2.1127], rtol=0, atol=CUDA_TOL)


def test_torch_cuda_successive_draws_advance_the_offset_by_one_philox_block_per_wave() -> None:
    # torch adds 4 * ceil(n / (4 * threads)) to the Philox offset after each launch: a second draw of
    # a small tensor starts one counter later, so it is not the first one repeated. (Offsets beyond the
    # first draw follow torch's source; no published GPU output covers them.)
    g = Generator("torch-cuda", 10)
    a, b = g.randn(3), g.randn(3)
    assert not np.array_equal(a, b)
    np.testing.assert_array_equal(Generator("torch-cuda", 10).randn(3), a)


def test_cuda_max_blocks_is_only_for_torch_cuda() -> None:
    with pytest.raises(ValueError, match="cuda_max_blocks"):
        Generator("torch-cpu", 0, cuda_max_blocks=4)
    with pytest.raises(ValueError, match="cuda_max_blocks"):
        Generator("torch-cuda", 0, cuda_max_blocks=0)


def test_unknown_kind_is_a_value_error_listing_the_kinds() -> None:
    with pytest.raises(ValueError, match="'numpy', 'torch-cpu', 'torch-cuda'"):
        Generator("mt", 0)


@pytest.mark.parametrize("kind,seed", [("numpy", 2**32), ("numpy", -1), ("torch-cpu", 2**64), ("torch-cpu", -3)])
def test_seed_out_of_range_is_a_value_error(kind: str, seed: int) -> None:
    with pytest.raises(ValueError, match="seed"):
        Generator(kind, seed)


def test_non_integer_seed_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="seed"):
        Generator("torch-cpu", 1.5)  # type: ignore[arg-type]


def test_negative_size_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="negative"):
        Generator("torch-cpu", 0).randn((2, -1))


def test_as_generator_refuses_a_seed_with_a_generator() -> None:
    with pytest.raises(ValueError, match="either seed or a Generator"):
        as_generator(Generator("numpy", 1), 3)


def test_as_generator_needs_a_seed_with_a_kind() -> None:
    with pytest.raises(ValueError, match="needs a seed"):
        as_generator("torch-cpu", None)


# ---- Autoencoder.encode(sample=True, rng=...) --------------------------------------------------------


def test_encode_sample_draws_its_noise_from_the_torch_cpu_generator() -> None:
    # the original's DiagonalGaussianDistribution.sample: mean + std * torch.randn(mean.shape)
    from test_autoencoder import inputs, sd_autoencoder

    image, ae = inputs()["image"], sd_autoencoder()
    noise = torch.randn((1, 4, 6, 8), generator=torch.Generator().manual_seed(3)).numpy()
    want = ae.encode(image, sample=True, noise=noise)
    np.testing.assert_array_equal(ae.encode(image, sample=True, seed=3, rng="torch-cpu"), want)
    np.testing.assert_array_equal(ae.encode(image, sample=True, rng=Generator("torch-cpu", 3)), want)


def test_encode_refuses_noise_together_with_a_torch_rng() -> None:
    from test_autoencoder import inputs, sd_autoencoder

    with pytest.raises(ValueError, match="not both"):
        sd_autoencoder().encode(
            inputs()["image"], sample=True, noise=np.zeros((1, 4, 6, 8), np.float32), rng="torch-cpu"
        )
