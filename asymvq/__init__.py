"""asymvq: Stable Diffusion 1.x inpainting and text-to-image with the Asymmetric
VQGAN decoder, on a C core built on oneDNN.

Thread control: :func:`set_num_threads` / :func:`get_num_threads` set the
threads used by oneDNN and asymvq's own OpenMP kernels together.
"""
from __future__ import annotations

import os as _os

# OpenMP threads that spin while waiting for work stall badly when the machine is
# busier than its cores (a notebook next to other jobs, tests beside a browser): a
# small forward then takes seconds instead of milliseconds. Sleeping waiters cost
# microseconds per parallel region. Must be set before libgomp loads (with oneDNN,
# just below); an explicit OMP_WAIT_POLICY from the user wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from ._loader import preload_onednn as _preload_onednn  # noqa: E402

_preload_onednn()

from . import _core  # noqa: E402

__version__: str = _core.__version__


def info() -> dict:
    """asymvq version, oneDNN version, the CPU ISA oneDNN dispatches to, threads, and whether bf16
    attention runs on AMX tiles (``amx_attention``; else its operands are widened to f32)."""
    return dict(_core.info())


def set_num_threads(n: int) -> None:
    """Use ``n`` threads for every later compute call (oneDNN and OpenMP kernels)."""
    _core.set_num_threads(int(n))


def get_num_threads() -> int:
    """Threads used by compute calls."""
    return int(_core.get_num_threads())


from .unet import UNet  # noqa: E402
from .sampler import Sampler  # noqa: E402
from .text_encoder import TextEncoder  # noqa: E402
from .autoencoder import Autoencoder  # noqa: E402
from .pipelines import InpaintPipeline, Txt2ImgPipeline  # noqa: E402
from .diffusers_io import load_diffusers  # noqa: E402

__all__ = ["__version__", "info", "set_num_threads", "get_num_threads", "UNet", "Sampler", "TextEncoder", "Autoencoder",
           "InpaintPipeline", "Txt2ImgPipeline", "load_diffusers"]
