"""Noise generators that reproduce NumPy's and torch's Gaussian streams, computed in C.

``Generator(kind, seed)`` keeps its state across draws, like a ``torch.Generator``
or a ``numpy.random.RandomState``, so the order of draws is explicit::

    g = Generator("torch-cpu", 42)
    x_T = g.randn((1, 4, 64, 64))   # == torch.randn(..., generator=torch.Generator().manual_seed(42))
    xi = g.randn((1, 4, 64, 64))    # the next draw of the same torch generator

Kinds:

* ``"numpy"``: ``numpy.random.RandomState(seed).randn(*shape).astype(float32)``;
  successive draws continue one stream (concatenating them equals one larger draw).
  Seeds ``0 .. 2**32 - 1``.
* ``"torch-cpu"``: ``g = torch.Generator().manual_seed(seed)`` then successive
  ``torch.randn(shape, generator=g)`` in float32, bit for bit, for any shape: torch
  draws tensors of fewer than 16 elements one double Box-Muller value at a time
  (keeping the second value of each pair for the next such draw) and larger ones 16
  at a time from 24-bit uniforms (a size that is not a multiple of 16 redraws its last
  16). The block transform is that of torch's x86 builds (CPU capability AVX2 or
  AVX512, the default on any x86 CPU with AVX2); a torch forced to
  ``ATEN_CPU_CAPABILITY=default`` computes it with libm and differs by a few ulp.
  Seeds ``0 .. 2**64 - 1`` (torch's mt19937 uses the low 32 bits).
* ``"torch-cuda"``: ``torch.manual_seed(seed)`` (or a CUDA ``torch.Generator`` seeded so) then
  successive ``torch.randn(shape, device="cuda")`` in float32: Philox4x32-10 keyed by the seed,
  with the thread layout and offsets of torch's CUDA normal kernel (each of ``256 * blocks``
  threads draws four normals from its own Philox subsequence; the offset grows by 4 per launch
  round). A GPU caps ``blocks`` at ``SMs * (max threads per SM / 256)``; below that cap every GPU
  gives the same values, above it the stream depends on the GPU. ``cuda_max_blocks=None`` assumes
  no cap, which matches any GPU for SD's latents up to one wave (e.g. ``[1, 4, 64, 64]`` = 16384
  elements; an A100's wave is 221184, an RTX 3060's 43008); pass the original GPU's cap for larger
  draws. Not bit-exact: the GPU computes sin/cos with the ``__sincosf`` intrinsic, so values differ
  from the GPU's by a few 1e-6 (checked against values torch printed on GPUs, published in
  PyTorch's issue tracker; see tests/test_rng_torch.py). No GPU was available to check more.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np

from . import _core

__all__ = ["Generator", "KINDS", "TORCH_DEFAULT_SEED", "RngLike", "as_generator"]

#: The kinds accepted by :class:`Generator` and every ``rng=`` argument.
KINDS = ("numpy", "torch-cpu", "torch-cuda")
_CODES = {"numpy": 0, "torch-cpu": 1, "torch-cuda": 2}

#: torch's default seed (``torch.initial_seed()`` of a generator never seeded): the
#: original ``inpaint_st.py`` never seeds torch, so its DDIM noise starts from it.
TORCH_DEFAULT_SEED = 67280421310721


class Generator:
    """``Generator(kind="numpy", seed=0, *, cuda_max_blocks=None)``: a Gaussian stream of the given
    kind (see the module doc); ``cuda_max_blocks`` only for ``"torch-cuda"``.

    Raises ``ValueError`` for an unknown kind or a seed out of range; ``TypeError`` for a non-integer
    seed.  A generator must not be used by two threads at once (that raises ``RuntimeError``).
    """

    def __init__(self, kind: str = "numpy", seed: int = 0, *, cuda_max_blocks: Optional[int] = None) -> None:
        check_kind(kind)
        if cuda_max_blocks is not None:
            if kind != "torch-cuda":
                raise ValueError('cuda_max_blocks applies only to the "torch-cuda" kind')
            if (
                isinstance(cuda_max_blocks, bool)
                or not isinstance(cuda_max_blocks, (int, np.integer))
                or not 1 <= cuda_max_blocks < 2**31
            ):
                raise ValueError(
                    f"cuda_max_blocks must be a positive int (SMs * threads per SM / 256), got {cuda_max_blocks!r}"
                )
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}")
        seed = int(seed)
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self._kind = kind
        self._c = _core.Generator(_CODES[kind], seed, int(cuda_max_blocks or 0))

    @property
    def kind(self) -> str:
        """``"numpy"``, ``"torch-cpu"`` or ``"torch-cuda"``."""
        return self._kind

    @property
    def seed(self) -> int:
        """The seed the generator was created with."""
        return int(self._c.seed)

    def randn(self, shape: Union[int, Sequence[int]]) -> np.ndarray:
        """The next draw: a float32 array of ``shape`` filled with standard normals (the state advances)."""
        return self._c.randn(shape)

    def __repr__(self) -> str:
        return f"Generator({self._kind!r}, seed={self.seed})"


#: What an ``rng=`` argument accepts: a kind name, or a :class:`Generator` whose stream continues.
RngLike = Union[str, Generator]


def check_kind(kind: object) -> str:
    """``kind`` if it is a usable kind name; ``ValueError`` (``TypeError``) naming the problem otherwise."""
    if not isinstance(kind, str):
        raise TypeError(
            f"rng must be one of {', '.join(map(repr, KINDS))} or an asymvq.rng.Generator, got {type(kind).__name__}"
        )
    if kind not in _CODES:
        raise ValueError(f"rng must be one of {', '.join(map(repr, KINDS))}, got {kind!r}")
    return kind


def as_generator(rng: RngLike, seed: Optional[int]) -> Generator:
    """A generator for ``rng``: the given :class:`Generator` itself (``seed`` must then be ``None``),
    or a new one of the kind named by ``rng``, seeded with ``seed``."""
    if isinstance(rng, Generator):
        if seed is not None:
            raise ValueError("pass either seed or a Generator as rng, not both (the generator is already seeded)")
        return rng
    check_kind(rng)
    if seed is None:
        raise ValueError(f'rng="{rng}" needs a seed')
    return Generator(rng, seed)
