"""DDIM and PLMS samplers of the original code, and DPM++ 2M / Euler / Euler a, with the whole loop in C.

:class:`Sampler` reproduces ``ldm.models.diffusion.ddim.DDIMSampler`` (any ``eta``) and
``ldm.models.diffusion.plms.PLMSSampler`` (SPEC §6) with classifier-free guidance (one model call on
the batch ``[uncond, cond]``, ``eps = eps_u + scale * (eps_c - eps_u)``) and the hybrid inpainting
input (``x_t``, then ``c_concat`` = mask and masked-image latent, along channels).  The loop runs in C
with the GIL released; Python is entered only once per step, for Ctrl-C and the optional callback.

Schedule (SPEC §5.1): ``beta`` linear in ``sqrt`` between the config's ``linear_start`` and
``linear_end`` over ``timesteps`` steps, ``alphas_cumprod`` computed in float64 and stored as float32.
DDIM timesteps: ``range(0, T, T // steps) + 1`` (the original's "uniform" discretisation with its +1
offset; for steps not dividing T this list is longer than ``steps``, as in the original).

Noise (DDIM with ``eta > 0``): ``noise[i]`` is added at the ``i``-th step of the loop (the loop visits
``timesteps[::-1]``), or the sampler draws it itself in C, one ``[B, C, h, w]`` draw per step as the
original's ``p_sample_ddim`` does, from ``rng`` (:mod:`asymvq.rng`): a kind seeded with ``seed``
(default ``"numpy"``: the noise of a seeded run equals ``noise=randn(seed, (len(timesteps), B, C, h, w))``;
``"torch-cpu"``: successive ``torch.randn([B, C, h, w], generator=torch.Generator().manual_seed(seed))``),
or a :class:`asymvq.rng.Generator` whose stream continues from wherever it is.

Beyond the original (``kind="dpmpp_2m"``, ``"euler"``, ``"euler_a"``): diffusers'
``DPMSolverMultistepScheduler`` (``algorithm_type="dpmsolver++"``, ``solver_order=2``, first order on
the first and the last step; ``karras=True`` for Karras sigmas), ``EulerDiscreteScheduler`` and
``EulerAncestralDiscreteScheduler``, configured as SD 1.x's ``scheduler_config.json`` (scaled-linear
betas 0.00085..0.012, ``steps_offset=1``, epsilon prediction) and on diffusers' own float32
``alphas_cumprod``.  ``spacing`` is diffusers' ``timestep_spacing``: ``"linspace"`` by default, which is
what ``X.from_config(pipe.scheduler.config)`` gives for SD 1.5's ``scheduler_config.json`` in current
diffusers (the JSON does not set it, and diffusers >= 0.19 no longer carries PNDM's defaulted
``"leading"`` over); ``"leading"`` is what older diffusers gave; ``"trailing"`` also exists.  ``x_T`` stays standard normal noise for every kind: the
sampler multiplies it by :attr:`Sampler.init_noise_sigma` first, as the diffusers pipelines scale
their initial latents, so callers pass the same start code whatever the kind.  Euler models see
``x / sqrt(sigma**2 + 1)`` (``c_concat`` unscaled, as in diffusers' inpainting pipeline).  Euler with
``"linspace"`` has fractional timesteps (:attr:`Sampler.model_timesteps`): the C UNet takes them as they
are and a Python model receives them as float32 (int64 whenever they are all integers).  Euler a adds
one fresh ``[B, C, h, w]`` draw per step, from ``noise``/``seed``/``rng`` exactly as DDIM with ``eta > 0``.

:func:`randn` is that generator: ``numpy.random.RandomState(seed).randn(*shape).astype(numpy.float32)``
bit for bit (MT19937, polar Gaussians with the cached second value; SPEC §8.5), e.g. the inpainting
start code ``randn(0, (1, 4, h, w))``.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np

from . import _core
from . import config as config_mod
from .rng import Generator, RngLike, as_generator

__all__ = ["Sampler", "randn", "StepCallback", "KINDS", "SPACINGS", "SAMPLER_NAMES", "sampler_from_name"]

#: ``callback(step, timestep, x)`` after every step; ``x`` is a float32 copy of the latent
#: ``[B, C, h, w]``.  Return ``None``, or an array of that shape to replace the latent.
StepCallback = Callable[[int, int, np.ndarray], Optional[np.ndarray]]

#: SD v1's schedule (both shipped configs).
SD1_SCHEDULE = (0.00085, 0.012, 1000)

#: Every ``kind`` a :class:`Sampler` takes; the first two are the original's.
KINDS = ("ddim", "plms", "dpmpp_2m", "euler", "euler_a")

#: The names the pipelines (``sampler=``) and the command lines (``--sampler``) take: the kinds, plus
#: ``"dpmpp_2m_karras"`` for ``Sampler("dpmpp_2m", karras=True)``.
SAMPLER_NAMES = ("ddim", "plms", "dpmpp_2m", "dpmpp_2m_karras", "euler", "euler_a")

#: diffusers' ``timestep_spacing`` values the diffusers-style kinds take; the first is the default.
SPACINGS = ("linspace", "leading", "trailing")

ConfigLike = Union[None, str, "os.PathLike[str]", config_mod.DiffusionSpec]


def randn(seed: int, shape: Union[int, Sequence[int]]) -> np.ndarray:
    """``numpy.random.RandomState(seed).randn(*shape).astype(numpy.float32)``, computed in C.

    ``seed`` must be in ``[0, 2**32 - 1]``; ``shape`` an int or a sequence of ints.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    return _core.randn(int(seed), shape)


def _schedule(config: ConfigLike) -> tuple[float, float, int]:
    if config is None:
        return SD1_SCHEDULE
    if isinstance(config, (str, os.PathLike)):
        config = config_mod.load(config)
    if not isinstance(config, config_mod.DiffusionSpec):
        raise TypeError(
            "config must be None (SD v1's schedule), a diffusion config path or an asymvq.config.DiffusionSpec, "
            f"got {type(config).__name__}"
        )
    return config.linear_start, config.linear_end, config.timesteps


def _float_array(name: str, value: Any, optional: bool = False) -> Optional[np.ndarray]:
    if value is None:
        if optional:
            return None
        raise TypeError(f"{name} is required (a float32 array)")
    a = np.asarray(value)
    if a.dtype.kind != "f":
        raise TypeError(f"{name} must be a floating-point array, got dtype {a.dtype}")
    return np.ascontiguousarray(a, dtype=np.float32)


class Sampler:
    """``Sampler(kind="ddim" | "plms" | "dpmpp_2m" | "euler" | "euler_a", steps=50, eta=0.0, config=None,
    karras=False)``.

    ``config``: ``None`` (SD v1: ``linear_start=0.00085``, ``linear_end=0.012``, 1000 timesteps), a
    diffusion YAML path, or an :class:`asymvq.config.DiffusionSpec`.  ``karras``: Karras et al.'s
    sigmas for ``"dpmpp_2m"`` (diffusers' ``use_karras_sigmas=True``).  Raises ``ValueError`` for an
    unknown kind, ``steps`` outside ``1..timesteps`` (or a step count the discretisation cannot run:
    its last timestep would be ``T``), ``eta < 0``, ``eta != 0`` with any kind but ``"ddim"``, or
    ``karras`` with any kind but ``"dpmpp_2m"``.

    A sampler holds only its tables: one instance can serve any number of calls, models and
    threads.
    """

    def __init__(self, kind: str = "ddim", steps: int = 50, eta: float = 0.0, config: ConfigLike = None,
                 karras: bool = False, spacing: Optional[str] = None) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
        if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)):
            raise TypeError(f"steps must be an int, got {type(steps).__name__}")
        if kind not in ("ddim", "plms") and float(eta) != 0.0:
            raise ValueError(f"eta applies to the ddim sampler only; {kind} needs eta=0, got {eta}")
        if karras and kind != "dpmpp_2m":
            raise ValueError(f"karras sigmas are offered with the dpmpp_2m sampler only, not {kind}")
        if spacing is not None and kind in ("ddim", "plms"):
            raise ValueError(f"spacing applies to dpmpp_2m, euler and euler_a; {kind} uses the original's "
                             "uniform discretisation")
        if spacing is not None and spacing not in SPACINGS:
            raise ValueError(f"spacing must be one of {', '.join(SPACINGS)}, got {spacing!r}")
        linear_start, linear_end, timesteps = _schedule(config)
        if not 1 <= int(steps) <= timesteps:
            raise ValueError(f"steps must be between 1 and {timesteps} (the schedule's timesteps), got {steps}")
        self._c = _core.Sampler(kind, int(steps), float(eta), linear_start, linear_end, timesteps, bool(karras),
                               spacing or SPACINGS[0])

    @property
    def kind(self) -> str:
        """One of :data:`KINDS`."""
        return self._c.kind

    @property
    def karras(self) -> bool:
        """True when ``"dpmpp_2m"`` runs on Karras sigmas."""
        return self._c.karras

    @property
    def spacing(self) -> Optional[str]:
        """diffusers' ``timestep_spacing`` of dpmpp_2m/euler/euler_a (unused with ``karras``); ``None`` for
        ddim and plms."""
        return None if self.kind in ("ddim", "plms") else self._c.spacing

    @property
    def model_timesteps(self) -> Optional[np.ndarray]:
        """float32 timestep the model sees at every loop step, in loop order (diffusers'
        ``scheduler.timesteps``) for dpmpp_2m/euler/euler_a; ``None`` for ddim and plms."""
        return self._c.model_timesteps

    @property
    def init_noise_sigma(self) -> float:
        """The factor ``x_T`` is multiplied by before the first step (1 for ddim, plms, dpmpp_2m; for the
        Euler kinds ``noise_levels[0]``, or ``sqrt(noise_levels[0]**2 + 1)`` with ``"leading"``)."""
        return self._c.init_noise_sigma

    @property
    def noise_levels(self) -> Optional[np.ndarray]:
        """float32 sigma of every loop step plus the final 0 (``len(timesteps) + 1``) for dpmpp_2m,
        euler and euler_a (diffusers' ``scheduler.sigmas``); ``None`` for ddim and plms."""
        return self._c.noise_levels

    @property
    def needs_noise(self) -> bool:
        """True when :meth:`sample` adds fresh noise every step (ddim with ``eta > 0``, euler_a)."""
        return self._c.needs_noise

    @property
    def steps(self) -> int:
        """The number of steps asked for (``len(timesteps)`` may be larger)."""
        return self._c.steps

    @property
    def eta(self) -> float:
        """DDIM's eta (0 for PLMS)."""
        return self._c.eta

    @property
    def timesteps(self) -> np.ndarray:
        """int64 timesteps, ascending (DDIM: ``[1, 21, ..., 981]`` for 50 steps); the loop runs them backwards
        (fractional Euler timesteps truncated here; see :attr:`model_timesteps`)."""
        return self._c.timesteps

    @property
    def alphas_cumprod(self) -> np.ndarray:
        """The float32 DDPM schedule ``alphas_cumprod[0..T)`` (dpmpp_2m/euler/euler_a: diffusers' float32 one)."""
        return self._c.alphas_cumprod

    @property
    def alphas(self) -> np.ndarray:
        """float32 ``a_k = alphas_cumprod[timesteps[k]]``."""
        return self._c.alphas

    @property
    def alphas_prev(self) -> np.ndarray:
        """float32 ``aprev_k = alphas_cumprod[timesteps[k - 1]]``, ``aprev_0 = alphas_cumprod[0]``."""
        return self._c.alphas_prev

    @property
    def sigmas(self) -> np.ndarray:
        """float32 ``sigma_k = eta * sqrt((1 - aprev_k) / (1 - a_k) * (1 - a_k / aprev_k))``."""
        return self._c.sigmas

    @property
    def num_model_calls(self) -> int:
        """Model evaluations per :meth:`sample` (``len(timesteps)``, plus one for PLMS)."""
        return self._c.num_model_calls

    def sample(
        self,
        unet: Any,
        x_T: np.ndarray,
        cond: np.ndarray,
        uncond: Optional[np.ndarray],
        scale: float,
        c_concat: Optional[np.ndarray] = None,
        noise: Optional[np.ndarray] = None,
        seed: Optional[int] = None,
        callback: Optional[StepCallback] = None,
        rng: Optional[RngLike] = None,
    ) -> np.ndarray:
        """Denoise ``x_T`` and return ``x_0`` (float32 ``[B, C, h, w]``).

        * ``unet``: an :class:`asymvq.UNet` (the loop then calls the C UNet without the GIL), or any
          callable ``unet(x, t, context) -> eps`` (x float32 ``[N, Cin, h, w]``, t int64 ``[N]`` —
          float32 when fractional, as euler/euler_a's ``"linspace"`` timesteps —, context float32
          ``[N, L, D]``), called with the GIL for each model evaluation.
        * ``x_T``: ``[B, C, h, w]``, ``h`` and ``w`` multiples of 8.
        * ``cond`` / ``uncond``: ``[B or 1, L, D]`` (batch 1 is repeated).  With ``uncond=None`` or
          ``scale == 1`` the model is called once per step on ``B`` without guidance; otherwise once
          on ``[uncond, cond]`` (``2B``).
        * ``c_concat``: ``[B or 1, Cin - C, h, w]`` for an inpainting UNet (mask, masked-image latent),
          appended after ``x_t`` along channels; ``None`` for a txt2img UNet.
        * ``noise``: ``[len(timesteps), B, C, h, w]``, the per-step noise of DDIM with ``eta > 0`` and of
          euler_a (``noise[i]`` at the ``i``-th step); or ``seed`` (``0..2**32-1``) to draw it as
          ``randn(seed, noise_shape)``.  One of them (or a Generator) is required when
          :attr:`needs_noise`; ignored otherwise.
        * ``rng``: where seeded noise comes from (:attr:`needs_noise`): ``"numpy"`` (the default), ``"torch-cpu"``
          (with ``seed``), or an :class:`asymvq.rng.Generator` (without ``seed``), which then advances by
          one ``[B, C, h, w]`` draw per step, so a start code drawn from it before and a next sample
          after continue the same stream, as in the original.
        * ``callback``: see :data:`StepCallback`; exceptions it raises stop the loop and propagate.

        Ctrl-C stops the loop within one step (``KeyboardInterrupt``); the sampler and the UNet stay
        usable.  ``ValueError`` names any inconsistent input; ``FloatingPointError`` if the latent
        becomes NaN/Inf (after a step or the callback's replacement).
        """
        x = _float_array("x_T", x_T)
        c = _float_array("cond", cond)
        u = _float_array("uncond", uncond, optional=True)
        cc = _float_array("c_concat", c_concat, optional=True)
        z = _float_array("noise", noise, optional=True)
        if seed is not None:
            if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
                raise TypeError(f"seed must be an int or None, got {type(seed).__name__}")
            if noise is not None:
                raise ValueError("pass either noise or seed, not both")
            seed = int(seed)
        gen = None
        if rng is not None and (isinstance(rng, Generator) or seed is not None):
            if noise is not None:
                raise ValueError("pass either noise or a Generator as rng, not both")
            gen = as_generator(rng, seed)
            seed = None
        elif rng is not None:
            as_generator(rng, 0)  # checks the kind name; without a seed there is nothing to draw
        return self._c.sample(unet, x, c, u, float(scale), cc, z, seed, callback, gen._c if gen else None)

    def __repr__(self) -> str:
        karras = ", karras=True" if self.karras else (f", spacing={self.spacing!r}" if self.spacing else "")
        return (f"Sampler(kind={self.kind!r}, steps={self.steps}, eta={self.eta}{karras}, "
                f"timesteps={len(self.timesteps)} of {len(self.alphas_cumprod)})")


def sampler_from_name(name: str, steps: int, eta: float = 0.0, config: ConfigLike = None) -> Sampler:
    """The :class:`Sampler` a pipeline or command line means by ``name`` (one of :data:`SAMPLER_NAMES`).

    ``ValueError`` for an unknown name (listing the choices) and for whatever :class:`Sampler` rejects
    (``eta != 0`` with any sampler but ddim, step counts).
    """
    if name not in SAMPLER_NAMES:
        raise ValueError(f"unknown sampler {name!r}: choose one of {', '.join(SAMPLER_NAMES)}")
    kind, karras = ("dpmpp_2m", True) if name == "dpmpp_2m_karras" else (name, False)
    return Sampler(kind, steps, eta, config=config, karras=karras)
