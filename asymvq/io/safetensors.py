"""``.safetensors`` files: headers validated completely before any tensor is returned; the writer."""

from __future__ import annotations

import json
import os
import struct
from typing import IO, Any, Dict, List, Mapping, Optional, Tuple, Union

import numpy as np

from .checkpoint import Checkpoint, CheckpointError, PathLike, _is_count, _memmap, _short
from .dtypes import _MAX_NDIM, _NP_DTYPES, DTYPES, _numel_within, _TensorRef, dtype_of

__all__ = ["load_safetensors", "safetensors_metadata", "save_safetensors"]


# --------------------------------------------------------------------------------------------
# .safetensors

#: Header size limit (the reference implementation's, 100 MB).
_MAX_HEADER = 100 * 1000 * 1000


def _open_safetensors(path: str, f: IO[bytes], size: int) -> Checkpoint:
    mm = _memmap(path, f, size)
    refs, metadata = _safetensors_header(path, f, size)
    return Checkpoint(path, "safetensors", mm, refs, metadata, {}, ())


def _safetensors_header(path: str, f: IO[bytes], size: int) -> Tuple[Dict[str, _TensorRef], Dict[str, str]]:
    f.seek(0)
    head = f.read(8)
    if len(head) < 8:
        raise CheckpointError(f"{path}: {size} bytes is too short for a .safetensors file")
    (header_size,) = struct.unpack("<Q", head)
    if header_size > size - 8:
        raise CheckpointError(
            f"{path}: the header claims {header_size} bytes but the file has "
            f"only {size - 8} after the size field (truncated or not "
            ".safetensors)"
        )
    if header_size > _MAX_HEADER:
        raise CheckpointError(f"{path}: header of {header_size} bytes exceeds the {_MAX_HEADER}-byte limit")
    raw = f.read(header_size)
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (ValueError, RecursionError) as e:
        raise CheckpointError(f"{path}: the header is not valid JSON: {e}") from e
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: the header is a JSON {type(header).__name__}, not an object")
    if raw[:1] != b"{":
        raise CheckpointError(f"{path}: the header must begin with '{{' (it begins with {raw[:8]!r})")
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CheckpointError(f"{path}: __metadata__ must map strings to strings")
    data_start = 8 + header_size
    data_size = size - data_start
    spans = []
    refs: Dict[str, _TensorRef] = {}
    for name, entry in header.items():
        dtype, shape, begin, end = _header_entry(path, name, entry, data_size)
        spans.append((begin, end, name))
        itemsize = _NP_DTYPES[dtype].itemsize
        strides = [itemsize] * len(shape)
        for i in range(len(shape) - 2, -1, -1):
            strides[i] = strides[i + 1] * shape[i + 1]
        refs[name] = _TensorRef(dtype, shape, data_start + begin, tuple(strides))
    position = 0
    previous = None
    for begin, end, name in sorted(spans):
        if begin < position:
            raise CheckpointError(f"{path}: tensor {name!r} (bytes {begin}..{end}) overlaps tensor {previous!r}")
        if begin > position:
            raise CheckpointError(
                f"{path}: data bytes {position}..{begin} belong to no tensor (offsets must tile the data)"
            )
        position, previous = end, name
    if position != data_size:
        raise CheckpointError(f"{path}: the tensors cover {position} data bytes but the file holds {data_size}")
    return refs, dict(metadata)


def _no_duplicates(pairs: List[Tuple[str, Any]]) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _header_entry(path: str, name: str, entry: Any, data_size: int) -> Tuple[str, Tuple[int, ...], int, int]:
    where = f"{path}: tensor {name!r}"
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise CheckpointError(f"{where}: header entry must have exactly dtype, shape and data_offsets")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype not in _NP_DTYPES:
        raise CheckpointError(f"{where}: unsupported dtype {_short(dtype)}; supported: {', '.join(DTYPES)}")
    if not (isinstance(shape, list) and len(shape) <= _MAX_NDIM and all(_is_count(d) for d in shape)):
        raise CheckpointError(
            f"{where}: shape {_short(shape)} must be a list of at most {_MAX_NDIM} non-negative integers"
        )
    if not (
        isinstance(offsets, list)
        and len(offsets) == 2
        and all(_is_count(o) for o in offsets)
        and offsets[0] <= offsets[1]
    ):
        raise CheckpointError(f"{where}: data_offsets {_short(offsets)} must be [begin, end] with 0 <= begin <= end")
    begin, end = offsets
    if end > data_size:
        raise CheckpointError(f"{where}: data_offsets [{begin}, {end}] run past the {data_size} data bytes of the file")
    itemsize = _NP_DTYPES[dtype].itemsize
    numel = _numel_within(tuple(shape), data_size)
    if numel is None or numel * itemsize != end - begin:
        raise CheckpointError(f"{where}: shape {_short(shape)} of {dtype} does not match its {end - begin} bytes")
    return dtype, tuple(shape), begin, end


def load_safetensors(path: PathLike) -> Tuple[Dict[str, np.ndarray], Dict[str, str]]:
    """Read a ``.safetensors`` file: (name -> read-only array view, ``__metadata__`` strings)."""
    from .checkpoint import open_checkpoint

    ckpt = open_checkpoint(path)
    if ckpt.format != "safetensors":
        raise CheckpointError(f"{ckpt.path} is a {ckpt.format} file, not .safetensors")
    return ckpt.tensors(), dict(ckpt.metadata)


def safetensors_metadata(path: PathLike) -> Dict[str, str]:
    """The ``__metadata__`` strings of a ``.safetensors`` file (reads only its header)."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            return _safetensors_header(path, f, os.fstat(f.fileno()).st_size)[1]
    except OSError as e:
        raise CheckpointError(f"cannot open {path}: {e.strerror or e}") from e


TensorLike = Union[np.ndarray, Tuple[np.ndarray, str]]


def save_safetensors(
    path: PathLike, tensors: Mapping[str, TensorLike], metadata: Optional[Mapping[str, str]] = None
) -> None:
    """Write ``tensors`` (and string ``metadata``) to ``path`` as ``.safetensors``.

    A value is a NumPy array of a dtype in :data:`DTYPES` (bf16 as an array of dtype
    :data:`BF16`, as :func:`load` returns it), or a pair ``(array, tag)`` such as
    ``(uint16_bits, "BF16")``. The file is written under a temporary name in the same
    directory and renamed over ``path`` only when complete, so an interrupted write
    never leaves a partial file. Tensors are laid out largest item size first so that
    each is aligned to its item size; the header is padded with spaces to 8 bytes.
    """
    path = os.fspath(path)
    entries = []
    for name, value in tensors.items():
        if not isinstance(name, str) or name == "__metadata__":
            raise ValueError(f"tensor name {name!r} is not allowed")
        array, tag = _tensor_and_tag(name, value)
        entries.append((name, array, tag))
    header: Dict[str, Any] = {}
    if metadata is not None:
        for key, text in metadata.items():
            if not isinstance(key, str) or not isinstance(text, str):
                raise TypeError(f"metadata must map str to str; got {key!r}: {type(text).__name__}")
        header["__metadata__"] = dict(metadata)
    entries.sort(key=lambda e: (-e[1].dtype.itemsize, e[0]))
    position = 0
    for name, array, tag in entries:
        header[name] = {"dtype": tag, "shape": list(array.shape), "data_offsets": [position, position + array.nbytes]}
        position += array.nbytes
    blob = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-len(blob) % 8)
    directory = os.path.dirname(os.path.abspath(path))
    unique = f"{os.getpid()}.{os.urandom(4).hex()}"
    temp = os.path.join(directory, f".{os.path.basename(path)}.{unique}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(struct.pack("<Q", len(blob)))
            out.write(blob)
            for _, array, _ in entries:
                _write_array(out, array)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)
    except BaseException:
        try:
            os.unlink(temp)
        except OSError:
            pass
        raise


def _tensor_and_tag(name: str, value: Any) -> Tuple[np.ndarray, str]:
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], str):
        array, tag = value
        if not isinstance(array, np.ndarray):
            raise TypeError(f"tensor {name!r}: expected a numpy array, got {type(array).__name__}")
        if tag not in _NP_DTYPES:
            raise ValueError(f"tensor {name!r}: unknown dtype tag {tag!r}; supported: {', '.join(DTYPES)}")
        expected = _NP_DTYPES[tag]
        if tag == "BF16":
            ok = array.dtype.kind == "u" and array.dtype.itemsize == 2
        else:
            ok = array.dtype.newbyteorder("<") == expected or array.dtype == expected
        if not ok:
            raise ValueError(f"tensor {name!r}: array of dtype {array.dtype} cannot be written as {tag}")
    elif isinstance(value, np.ndarray):
        array = value
        try:
            tag = dtype_of(array)
        except CheckpointError as e:
            raise ValueError(f"tensor {name!r}: {e}") from None
    else:
        raise TypeError(f"tensor {name!r}: expected a numpy array or (array, dtype tag), got {type(value).__name__}")
    little = _NP_DTYPES[tag].newbyteorder("<") if tag != "BF16" else np.dtype("<u2")
    if array.dtype.byteorder == ">" or (array.dtype.byteorder == "=" and not np.little_endian):
        array = array.astype(little)
    return array, tag


def _write_array(out: IO[bytes], array: np.ndarray) -> None:
    """Write the bytes of ``array`` in C order, copying at most ~16 MiB at a time."""
    if array.size == 0:
        return
    if array.flags.c_contiguous:
        out.write(array.reshape(-1).view(np.uint8).data)
        return
    row_bytes = array[0].nbytes if array.ndim > 0 else array.nbytes
    step = max(1, (16 << 20) // max(1, row_bytes))
    for start in range(0, array.shape[0], step):
        chunk = np.ascontiguousarray(array[start : start + step])
        out.write(chunk.reshape(-1).view(np.uint8).data)
