"""Random weights for the benchmarks: every tensor of a model's table, full size, no checkpoint needed."""

from __future__ import annotations

import math
import zlib
from typing import Dict, Mapping, Sequence

import numpy as np

__all__ = ["random_weights"]


def random_weights(table: Mapping[str, Sequence[int]], seed: int = 0) -> Dict[str, np.ndarray]:
    """Numerically sane random float32 weights for every ``name -> shape`` of ``table``.

    Deterministic per (seed, name), so any subset of a table gets the same tensors as the whole (a
    child that builds only the decoder holds the decoder weights of a child that builds everything).
    Uniform with std 1/sqrt(fan_in) for weights, in [0.9, 1.1] for norm scales (1-D, not a bias),
    std 0.01 for biases: activations stay O(1) through the deep stacks.
    """
    out: Dict[str, np.ndarray] = {}
    for name, shape in table.items():
        dims = tuple(int(s) for s in shape)
        a = np.random.default_rng([seed, zlib.crc32(name.encode())]).random(dims, dtype=np.float32)
        if name.endswith(".bias"):
            lo, hi = -0.01 * math.sqrt(3.0), 0.01 * math.sqrt(3.0)
        elif len(dims) == 1:
            lo, hi = 0.9, 1.1
        else:
            bound = math.sqrt(3.0 / math.prod(dims[1:]))
            lo, hi = -bound, bound
        a *= np.float32(hi - lo)
        a += np.float32(lo)
        out[name] = a
    return out
