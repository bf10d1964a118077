"""``python -m asymvq.bench``: benchmarks at the shapes Stable Diffusion v1 really uses.

Subcommands (``python -m asymvq.bench --help``), one module each:

* ``ops``, ``roof`` (:mod:`asymvq.bench.ops`): every op against PyTorch; the machine's GFLOP/s roof;
* ``unet``, ``vae``, ``text`` (:mod:`asymvq.bench.unet`, ``.vae``, ``.text``): one model against
  PyTorch + diffusers / transformers with the same random weights and threads;
* ``inprocess`` (:mod:`asymvq.bench.inprocess`): asymvq with torch in the same process;
* ``isa``: the UNet and the base decoder with every library capped to AVX2;
* ``pipeline`` (:mod:`asymvq.bench.pipeline`): a whole inpainting and txt2img run, stage by stage;
* ``peers`` (:mod:`asymvq.bench.peers`): the UNet and the decoders in OpenVINO and ONNX Runtime.

Shared by all: :mod:`asymvq.bench.harness` (child processes, timing, peak RSS, the roof in a child)
and :func:`asymvq.bench.weights.random_weights`. PyTorch and the peers are never dependencies: only
the children that time them import them.
"""

from __future__ import annotations

from .cli import MODEL_BENCHES, USAGE, main
from .harness import ISA_ENV, child_env, child_isa_line, roof_in_child
from .ops import (
    ROOF_SHAPE,
    OpCase,
    OpTiming,
    _cases,  # noqa: F401  (the case list the tests walk)
    roof,
    time_case,
)
from .weights import random_weights

__all__ = [
    "main",
    "MODEL_BENCHES",
    "USAGE",
    "ISA_ENV",
    "child_env",
    "child_isa_line",
    "roof_in_child",
    "ROOF_SHAPE",
    "OpCase",
    "OpTiming",
    "roof",
    "time_case",
    "random_weights",
]
