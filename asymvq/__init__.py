"""asymvq: Stable Diffusion 1.x inpainting and text-to-image with the Asymmetric
VQGAN decoder, on a C core built on oneDNN.

Thread control: :func:`set_num_threads` / :func:`get_num_threads` set the
threads used by oneDNN and asymvq's own OpenMP kernels together. With torch imported
first, asymvq throttles the spinning of the OpenMP runtime torch loaded, or warns
(:class:`OpenMPWarning`); see ``asymvq._loader`` and the README's "Threads" section.
"""

from __future__ import annotations

import os as _os

# OpenMP threads that spin while waiting for work stall badly when the machine is
# busier than its cores (a notebook next to other jobs, tests beside a browser): a
# small forward then takes seconds instead of milliseconds. Sleeping waiters cost
# microseconds per parallel region. Must be set before libgomp loads (with oneDNN,
# just below); an explicit OMP_WAIT_POLICY from the user wins.
# An OpenMP runtime already loaded (torch imported first) has read its policy already:
# asymvq throttles its spinning, or warns (OpenMPWarning), below; see _loader.
from . import _loader  # noqa: E402

_openmp_before = _loader.openmp_runtimes()
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
_loader.preload_onednn()

from . import _core  # noqa: E402
from ._loader import OpenMPWarning  # noqa: E402

_loader.settle_openmp(_openmp_before)

__version__: str = _core.__version__


def info() -> dict:
    """What runs here, with oneDNN's ``ONEDNN_MAX_CPU_ISA`` cap applied (asymvq's own kernels honour it too).

    Keys: ``version``, ``onednn_version``, ``onednn_hash``; ``isa``: the ISA oneDNN dispatches to;
    ``cpu_isa``: the CPU's own best ISA (no cap); ``kernel_isa``: asymvq's own kernels (``"avx512"``,
    ``"avx2"`` or ``"baseline"``); ``bf16_native``: AVX512-BF16 or AMX in use (``precision="auto"`` then
    means bf16; bf16 runs, emulated, wherever ``kernel_isa`` is ``"avx512"``); ``amx_attention``: bf16
    attention on AMX tiles (else on AVX512-BF16 register tiles where the CPU has them, and on f32
    operands elsewhere); ``num_threads``.
    """
    return dict(_core.info())


def set_num_threads(n: int) -> None:
    """Use ``n`` threads for every later compute call (oneDNN and OpenMP kernels).

    The count is the calling thread's OpenMP setting, which a torch in the same process shares
    (one OpenMP runtime serves both): this call and every asymvq call set it to ``n``, so
    ``torch.get_num_threads()`` reads ``n`` afterwards; asymvq calls use ``n`` whatever
    ``torch.set_num_threads`` set."""
    _core.set_num_threads(int(n))


def get_num_threads() -> int:
    """Threads used by compute calls."""
    return int(_core.get_num_threads())


from .autoencoder import Autoencoder  # noqa: E402
from .diffusers_io import load_diffusers  # noqa: E402
from .errors import Error  # noqa: E402
from .pipelines import InpaintPipeline, Txt2ImgPipeline  # noqa: E402
from .sampler import Sampler  # noqa: E402
from .text_encoder import TextEncoder  # noqa: E402
from .unet import UNet  # noqa: E402

__all__ = [
    "__version__",
    "info",
    "Error",
    "OpenMPWarning",
    "set_num_threads",
    "get_num_threads",
    "UNet",
    "Sampler",
    "TextEncoder",
    "Autoencoder",
    "InpaintPipeline",
    "Txt2ImgPipeline",
    "load_diffusers",
]
