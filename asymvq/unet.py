"""The Stable Diffusion v1 UNet (SPEC §2) on the C core: ``eps = unet(x_t, t, context)``.

Example::

    unet = asymvq.UNet.from_config("configs/v1-inpainting-inference.yaml", "sd-v1-5-inpainting.ckpt")
    eps = unet(x, timesteps, context)   # x [B, 9, h, w] float32, timesteps [B] ints, context [B, 77, 768]

The model is built once (weights checked and copied out of the checkpoint, packed into oneDNN's layouts
on first use);
each input shape (batch, h, w) gets a plan, built on its first call and reused afterwards, so a
sampling loop at one shape never allocates. Computation runs with the GIL released.

Every model class (:class:`UNet`, :class:`asymvq.Autoencoder`, :class:`asymvq.TextEncoder`) follows one
protocol: ``precision``, ``num_parameters``, ``memory_bytes``, ``plans`` and ``clear_plans()``; at most
four plans are cached per model (the least recently used is freed first); calls on one model from
several threads are serialised (each waits, with the GIL released, for the one before).
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Mapping, Union

import numpy as np

from . import _core
from . import checkpoint as _checkpoint
from . import config as _config
from . import tables as _tables
from .config import DiffusionSpec, UNetSpec
from .precision import resolve_precision

__all__ = ["UNet", "CONTEXT_LENGTH", "UNET_PREFIX", "DEFAULT_NUM_TIMESTEPS"]

#: Tokens per prompt in the cross-attention context (CLIP's 77 positions).
CONTEXT_LENGTH = 77
#: Where the UNet's tensors live in an SD checkpoint.
UNET_PREFIX = "model.diffusion_model."

ConfigLike = Union[str, "os.PathLike[str]", DiffusionSpec, UNetSpec]
WeightsLike = Union[str, "os.PathLike[str]", Mapping[str, Any]]


#: Timesteps of SD v1's DDPM schedule: a UNet built from a bare UNetSpec takes t in [0, 1000).
DEFAULT_NUM_TIMESTEPS = 1000


def _unet_spec(config: ConfigLike) -> tuple[UNetSpec, int]:
    """The UNet's spec and the number of diffusion timesteps it is trained for."""
    spec = _config.load(config) if isinstance(config, (str, os.PathLike)) else config
    if isinstance(spec, DiffusionSpec):
        return spec.unet, int(spec.timesteps)
    if isinstance(spec, UNetSpec):
        return spec, DEFAULT_NUM_TIMESTEPS
    if isinstance(spec, _config.AutoencoderSpec):
        raise ValueError(f"config {spec.source} describes an autoencoder, not a diffusion model with a UNet")
    raise TypeError(f"config must be a YAML path, a DiffusionSpec or a UNetSpec, got {type(spec).__name__}")


def _as_c_array(array: Any) -> Any:
    """float32 (little-endian, contiguous) or bf16 bits as the C loader takes them; other dtypes pass
    through unchanged so that the loader names them in its report."""
    if not isinstance(array, np.ndarray):
        return array
    try:
        tag = _checkpoint.dtype_of(array)
    except _checkpoint.CheckpointError:
        return array
    if tag == "BF16":
        return np.ascontiguousarray(array)
    if tag in ("F32", "F16", "F64"):
        return np.ascontiguousarray(array, dtype="<f4")
    return array


def _unet_weights(weights: WeightsLike, spec: UNetSpec) -> dict[str, Any]:
    if isinstance(weights, (str, os.PathLike)):
        weights = _checkpoint.load(weights)
    if not isinstance(weights, Mapping):
        raise TypeError(f"weights must be a checkpoint path or a mapping name -> array, got {type(weights).__name__}")
    # Only tensors the UNet reads are converted: an unused one stays the file's view, never copied
    # (a stride-0 view of 16 bytes can stand for gigabytes).
    used = _tables.unet_tensors(spec)
    picked = {
        name: _as_c_array(a) if name in used else a for name, a in weights.items() if name.startswith(UNET_PREFIX)
    }
    if not picked:
        raise ValueError(f"the weights hold no UNet tensors (no key starts with {UNET_PREFIX!r})")
    return picked


def _c_config(spec: UNetSpec) -> dict[str, Any]:
    return {
        "in_channels": spec.in_channels,
        "out_channels": spec.out_channels,
        "model_channels": spec.model_channels,
        "channel_mult": list(spec.channel_mult),
        "num_res_blocks": spec.num_res_blocks,
        "attention_resolutions": list(spec.attention_resolutions),
        "num_heads": spec.num_heads,
        "num_head_channels": spec.num_head_channels,
        "transformer_depth": spec.transformer_depth,
        "context_dim": spec.context_dim,
    }


class UNet:
    """The SD v1 UNet (4-channel txt2img or 9-channel inpainting) running in C.

    Build it with :meth:`from_config`; call it as ``unet(x, timesteps, context) -> eps``.

    Plans: one per input shape, at most four cached (the least recently used is freed first; see
    :attr:`plans`, :meth:`clear_plans`). Threads: calls from several threads are serialised, each
    waiting with the GIL released. A sampler's C loop pins the plan of its shape while it runs; a
    direct call at that shape meanwhile raises RuntimeError instead of sharing it.
    """

    def __init__(self, spec: UNetSpec, core: Any, num_timesteps: int = DEFAULT_NUM_TIMESTEPS) -> None:
        """Use :meth:`from_config`."""
        self._spec = spec
        self._core = core
        self._num_timesteps = int(num_timesteps)

    @classmethod
    def from_config(cls, config: ConfigLike, weights: WeightsLike, precision: str = "fp32") -> "UNet":
        """Build the UNet of ``config`` with ``weights``.

        ``config``: a diffusion YAML path (``v1-inpainting-inference.yaml``, ``v1-t2i-inference.yaml`` or a
        tiny variant), a :class:`~asymvq.config.DiffusionSpec` or a :class:`~asymvq.config.UNetSpec`.
        ``weights``: a ``.ckpt``/``.safetensors`` path or a mapping name -> array (float32, float16 or
        bf16 bits), with the UNet's tensors under ``model.diffusion_model.``; arrays are borrowed, not
        copied, when they are float32 or bf16 and contiguous.
        ``precision``: ``"fp32"``, ``"bf16"`` (bf16 activations and weights, float32 output) or ``"auto"``
        (bf16 where the CPU has it natively, see :mod:`asymvq.precision`).

        The model copies its weights while it is built (bf16 ones for bf16) and keeps no reference to
        ``weights``: afterwards the checkpoint file may be deleted, truncated or rewritten.

        Raises ValueError naming every missing or mis-shaped tensor, and every tensor holding NaN or Inf
        (the first ten; with the file they come from), at once, and for a bad precision; RuntimeError for
        bf16 on a CPU (or under an ISA cap) without AVX-512.
        """
        spec, num_timesteps = _unet_spec(config)
        precision = resolve_precision(precision)
        arrays = _unet_weights(weights, spec)
        core = _tables.build_model(lambda: _core.UNet(_c_config(spec), arrays, precision), arrays, weights)
        return cls(spec, core, num_timesteps)

    @property
    def spec(self) -> UNetSpec:
        """The UNet's configuration."""
        return self._spec

    @property
    def precision(self) -> str:
        """``"fp32"`` or ``"bf16"``."""
        return str(self._core.precision)

    @property
    def num_timesteps(self) -> int:
        """Timesteps of the diffusion schedule (1000 for SD v1): valid ``timesteps`` lie in [0, this)."""
        return self._num_timesteps

    @property
    def in_channels(self) -> int:
        """4 (txt2img) or 9 (inpainting: ``[x_t, mask, masked-image latent]``)."""
        return int(self._spec.in_channels)

    @property
    def out_channels(self) -> int:
        """Channels of the predicted noise (4)."""
        return int(self._spec.out_channels)

    @property
    def context_dim(self) -> int:
        """Feature width of the cross-attention context (768 for SD v1)."""
        return int(self._spec.context_dim)

    @property
    def num_parameters(self) -> int:
        """Number of parameters."""
        return int(self._core.num_parameters)

    @property
    def num_params(self) -> int:
        """Deprecated alias of :attr:`num_parameters`."""
        warnings.warn("UNet.num_params is deprecated: use num_parameters", DeprecationWarning, stacklevel=2)
        return self.num_parameters

    @property
    def memory_bytes(self) -> int:
        """Activation memory (arena + scratchpad) of the cached plans."""
        return int(self._core.memory_bytes)

    @property
    def size_multiple(self) -> int:
        """Latent height and width must be multiples of this (8 for SD v1)."""
        return 2 ** (len(self._spec.channel_mult) - 1)

    @property
    def plans(self) -> list[dict[str, int]]:
        """The cached plans, least recently used first: ``batch``, ``height``, ``width``, ``context_length``,
        ``bytes`` (= ``arena_bytes`` + ``scratch_bytes``), ``steps``."""
        return list(self._core.plans())

    def _c_plan_for(self, batch: int, height: int, width: int) -> Any:
        """PyCapsule "asymvq.plan" with the cached plan for (batch, height, width), pinned while it lives."""
        return self._core.plan_capsule(batch, height, width, CONTEXT_LENGTH)

    def clear_plans(self) -> None:
        """Free the cached plans (their activation memory); the next call builds again."""
        self._core.clear_plans()

    def __call__(self, x: Any, timesteps: Any, context: Any) -> np.ndarray:
        """Predict the noise ``eps`` [B, 4, h, w] (float32).

        ``x``: [B, in_channels, h, w] float32 (h, w multiples of :attr:`size_multiple`);
        ``timesteps``: B integers (the DDPM step index, e.g. 981) in [0, :attr:`num_timesteps`), or one
        integer for the whole batch;
        ``context``: [B, 77, context_dim] float32 (the CLIP text embedding).

        Raises ValueError for a wrong shape, NaN or Inf in ``x`` or ``context``, and timesteps that are not
        integers in range; KeyboardInterrupt when Ctrl-C arrives during the call (it stops within one layer,
        and the UNet stays usable).
        """
        x = np.asarray(x, dtype=np.float32)
        context = np.asarray(context, dtype=np.float32)
        self._core.check_latent(x)  # the binding owns the latent's shape contract
        batch = x.shape[0]
        want = (batch, CONTEXT_LENGTH, self.context_dim)
        if context.shape != want:
            raise ValueError(f"context must have shape {list(want)}, got {list(context.shape)}")
        t = np.asarray(timesteps)
        if t.ndim == 0:
            t = np.full(batch, t)
        if t.shape != (batch,):
            raise ValueError(f"timesteps must be one integer or {batch} of them, got shape {list(t.shape)}")
        if not np.issubdtype(t.dtype, np.integer):
            if not np.issubdtype(t.dtype, np.floating) or not np.all(np.isfinite(t)) or np.any(t != np.round(t)):
                raise ValueError(f"timesteps must be integers, got {t!r}")
        if np.any(t < 0) or np.any(t >= self._num_timesteps):
            raise ValueError(f"timesteps must lie in [0, {self._num_timesteps}), got {t.tolist()}")
        for name, a in (("x", x), ("context", context)):
            if not np.isfinite(a).all():
                bad = int(a.size - np.count_nonzero(np.isfinite(a)))
                raise ValueError(f"{name} holds {bad} NaN or Inf value(s); the UNet's inputs must be finite")
        return self._core(x, t.astype(np.float32), context)

    def __repr__(self) -> str:
        s = self._spec
        return (
            f"UNet(in_channels={s.in_channels}, model_channels={s.model_channels}, "
            f"channel_mult={list(s.channel_mult)}, context_dim={s.context_dim}, precision={self.precision!r}, "
            f"params={self.num_parameters:,})"
        )
