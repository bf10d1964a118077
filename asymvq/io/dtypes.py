"""dtype tags of checkpoint tensors (safetensors spelling), bf16 as tagged uint16 bits, tensor geometry.

NumPy has no bfloat16: bf16 tensors are ``uint16`` arrays of the raw bits with the dtype :data:`BF16`,
whose metadata tag survives views and copies, so :func:`dtype_of` tells bf16 from plain integers.
"""

from __future__ import annotations

from typing import Dict, NamedTuple, Optional, Tuple

import numpy as np

from .checkpoint import CheckpointError

__all__ = ["BF16", "DTYPES", "TensorInfo", "bf16_to_float32", "dtype_of", "float32_to_bf16"]


# --------------------------------------------------------------------------------------------
# dtypes

#: The dtype of bf16 tensors: uint16 raw bits, tagged so that :func:`dtype_of` returns "BF16".
BF16 = np.dtype("<u2", metadata={"asymvq.dtype": "BF16"})

_NP_DTYPES: Dict[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": BF16,
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
#: The dtype tags both readers and the writer support (safetensors spelling).
DTYPES: Tuple[str, ...] = tuple(_NP_DTYPES)

# numpy dtype (little-endian, untagged) -> tag; uint16 is deliberately absent.
_TAG_OF_NP = {dt: tag for tag, dt in _NP_DTYPES.items() if tag != "BF16"}

# Arrays never get more dimensions than this (NumPy 1.x's limit).
_MAX_NDIM = 32


def dtype_of(array: np.ndarray) -> str:
    """Return the dtype tag ("F32", "BF16", ...) of ``array``.

    Raises :class:`CheckpointError` for dtypes outside :data:`DTYPES`; an untagged
    ``uint16`` array is refused because it is ambiguous (use :data:`BF16` or the
    ``(array, "BF16")`` form of :func:`save_safetensors`).
    """
    dt = array.dtype
    if dt.metadata and dt.metadata.get("asymvq.dtype") == "BF16" and dt.itemsize == 2:
        return "BF16"
    tag = _TAG_OF_NP.get(dt.newbyteorder("<") if dt.byteorder in "<>=" else dt)
    if tag is None:
        hint = ""
        if dt.kind == "u" and dt.itemsize == 2:
            hint = " (for bfloat16 bits use the dtype checkpoint.BF16)"
        raise CheckpointError(f"unsupported dtype {dt}{hint}; supported: {', '.join(DTYPES)}")
    return tag


def bf16_to_float32(array: np.ndarray) -> np.ndarray:
    """Widen bf16 bits (any uint16 array, e.g. dtype :data:`BF16`) to float32, exactly."""
    bits = np.asarray(array)
    if bits.dtype.itemsize != 2 or bits.dtype.kind != "u":
        raise TypeError(f"bf16_to_float32 expects uint16 bf16 bits, got dtype {bits.dtype}")
    return (bits.astype("<u4") << 16).view("<f4")


def float32_to_bf16(array: np.ndarray) -> np.ndarray:
    """Round float32 values to bf16 (nearest, ties to even; NaN stays NaN) as :data:`BF16` bits."""
    values = np.ascontiguousarray(array, dtype="<f4")
    bits = values.view("<u4")
    rounded = (bits + (np.uint32(0x7FFF) + ((bits >> 16) & 1))) >> 16
    quiet_nan = (bits >> 16) | np.uint32(0x0040)
    out = np.where(np.isnan(values), quiet_nan, rounded)
    return out.astype("<u2").astype(BF16)


class TensorInfo(NamedTuple):
    """What a checkpoint says about one tensor, known without touching its data."""

    dtype: str  #: a tag from :data:`DTYPES`
    shape: Tuple[int, ...]
    nbytes: int  #: product(shape) * itemsize


class _TensorRef(NamedTuple):
    """Where a tensor lives in the file: absolute byte offset and byte strides."""

    dtype: str
    shape: Tuple[int, ...]
    offset: int
    strides: Tuple[int, ...]


def _numel_within(shape: Tuple[int, ...], limit: int) -> Optional[int]:
    """product(shape), or None once it exceeds ``limit`` (never builds huge integers)."""
    if 0 in shape:
        return 0
    numel = 1
    for dim in shape:
        numel *= dim
        if numel > limit:
            return None
    return numel
