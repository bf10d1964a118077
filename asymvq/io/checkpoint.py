"""Read PyTorch ``.ckpt`` and ``.safetensors`` files safely; write ``.safetensors``.

Nothing here imports PyTorch, and nothing in a checkpoint is ever run:

* ``.ckpt`` (the zip format that ``torch.save`` writes since PyTorch 1.6) is
  read with a restricted unpickler. Only the tensor and parameter rebuild
  functions, the storage types, ``collections.OrderedDict`` and plain
  containers are understood. Every other class or function the pickle names
  (optimizer states, callbacks, OmegaConf, ``pathlib``, ``argparse``...)
  becomes an inert placeholder, and no module is ever imported. Globals that
  only an attack needs (``builtins.eval``, ``os.system``, ``subprocess``,
  ``pickle.loads``...) are refused with :class:`CheckpointError`.
* ``.safetensors`` headers are validated completely (size, JSON, dtypes,
  shapes, offsets that tile the data exactly) before any tensor is returned.

The format is recognised from the content, never from one byte or the suffix (see
:func:`open_checkpoint`). A hostile file costs bounded work: every length a file declares
(zip member sizes, storage sizes, tensor geometry, safetensors header and offsets, the length
field of every length-prefixed pickle opcode) is checked against the bytes present before
anything is allocated; the unpickler refuses containers nested deeper than 256 levels as it
builds them, before anything is hashed or compared (C recursion has no depth check there);
BUILD cannot set attributes on the dicts it builds; what the allowed functions copy is bounded
by the pickle's size; and any failure while reading is a :class:`CheckpointError` naming the
file. Peak memory stays proportional to the size of ``data.pkl``: Python objects cost up to
~250 bytes per pickle byte for a pickle of nothing but empty sets (a real state dict's pickle
is ~100 KB).

Tensors come back as read-only NumPy arrays that are views into one
``numpy.memmap`` of the whole file: opening a checkpoint reads only its index,
never its weights.

dtypes are named by their safetensors tags (:data:`DTYPES`). NumPy has no
bfloat16, so **bf16 tensors come back as ``uint16`` arrays holding the raw
bits**, with the dtype :data:`BF16`: ``numpy.uint16`` carrying the metadata
tag ``{"asymvq.dtype": "BF16"}``. The tag survives views, slices, transposes
and copies, so :func:`dtype_of` can tell bf16 from plain integers, and
:func:`save_safetensors` writes such arrays back as ``BF16``.
:func:`bf16_to_float32` and :func:`float32_to_bf16` convert. float16 comes
back as ``numpy.float16``.

Not checked, to keep opening free of reads proportional to the weights: the CRCs of
storage members (that of ``data.pkl`` is checked), and that ``BOOL`` bytes are 0 or 1.

This module is the facade; the work is in its parts: :mod:`asymvq.io.dtypes` (tags, bf16 bits),
:mod:`asymvq.io.unpickler` (``.ckpt``) and :mod:`asymvq.io.safetensors` (read and write).

Public API: :func:`open_checkpoint` (both formats; listing, info, lazy views),
:func:`load` (the state dict as a dict of arrays), :func:`load_safetensors`,
:func:`safetensors_metadata`, :func:`save_safetensors`.
"""

from __future__ import annotations

import os
import struct
import warnings
from typing import IO, Dict, Iterator, List, Optional, Tuple, Union

import numpy as np

from ..errors import Error

__all__ = [
    "BF16",
    "DTYPES",
    "Checkpoint",
    "CheckpointError",
    "TensorInfo",
    "bf16_to_float32",
    "dtype_of",
    "float32_to_bf16",
    "load",
    "load_safetensors",
    "open_checkpoint",
    "safetensors_metadata",
    "save_safetensors",
]

PathLike = Union[str, "os.PathLike[str]"]


class CheckpointError(Error, ValueError):
    """A checkpoint file is unreadable, corrupt, unsupported or refused as unsafe."""


# Values in messages, shared by the parts: counts, and bounded excerpts of what a hostile file holds.


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _excerpt(text: str, limit: int = 200) -> str:
    """``text`` cut to about ``limit`` characters, for messages."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _short(obj: object) -> str:
    """A bounded repr for messages; never fails, whatever a hostile pickle built."""
    try:
        text = repr(obj) if not isinstance(obj, int) or obj.bit_length() < 128 else "<huge int>"
    except Exception:  # e.g. RecursionError on deeply nested containers
        text = f"<{type(obj).__name__}>"
    return text if len(text) <= 80 else text[:77] + "..."


# The parts import CheckpointError (above) and the Checkpoint class (below) from here: this module
# is always imported first (asymvq.io's __init__), so both exist when a part asks for them.
from .dtypes import (  # noqa: E402
    _NP_DTYPES,
    BF16,
    DTYPES,
    TensorInfo,
    _numel_within,
    _TensorRef,
    bf16_to_float32,
    dtype_of,
    float32_to_bf16,
)

# --------------------------------------------------------------------------------------------
# The opened checkpoint (both formats)


class Checkpoint:
    """An opened checkpoint: tensor names, their dtype/shape, and zero-copy views.

    Obtain one with :func:`open_checkpoint`. All arrays it returns are read-only
    views into one memory map of the file, which stays mapped as long as any of
    them is alive.

    Attributes:
        path: the file.
        format: ``"ckpt"`` or ``"safetensors"``.
        metadata: the safetensors ``__metadata__`` strings (empty for ``.ckpt``).
        skipped: entries of the state dict that are not readable tensors, name ->
            reason (e.g. a quantized tensor, an int, an object of an unknown class).
        other_entries: top-level keys next to an unwrapped ``state_dict``
            (``global_step``, ``optimizer_states``...); empty otherwise.
    """

    def __init__(
        self,
        path: str,
        fmt: str,
        mm: np.memmap,
        refs: Dict[str, _TensorRef],
        metadata: Dict[str, str],
        skipped: Dict[str, str],
        other_entries: Tuple[str, ...],
    ) -> None:
        self.path = path
        self.format = fmt
        self.metadata = metadata
        self.skipped = skipped
        self.other_entries = other_entries
        self._mm = mm
        self._refs = refs

    def keys(self) -> List[str]:
        """Tensor names, in file order."""
        return list(self._refs)

    def __iter__(self) -> Iterator[str]:
        return iter(self._refs)

    def __len__(self) -> int:
        return len(self._refs)

    def __contains__(self, name: object) -> bool:
        return name in self._refs

    def _ref(self, name: str) -> _TensorRef:
        try:
            return self._refs[name]
        except KeyError:
            raise KeyError(f"{self.path} has no tensor named {name!r}") from None

    def info(self, name: str) -> TensorInfo:
        """dtype tag, shape and byte size of tensor ``name`` (reads no tensor data)."""
        ref = self._ref(name)
        numel = _numel_within(ref.shape, 1 << 62) or 0
        return TensorInfo(ref.dtype, ref.shape, numel * _NP_DTYPES[ref.dtype].itemsize)

    def get(self, name: str) -> np.ndarray:
        """Tensor ``name`` as a read-only view into the mapped file (no copy)."""
        ref = self._ref(name)
        try:
            return np.ndarray(ref.shape, _NP_DTYPES[ref.dtype], buffer=self._mm, offset=ref.offset, strides=ref.strides)
        except (ValueError, TypeError, OverflowError) as e:  # the readers validate; defensive
            raise CheckpointError(f"{self.path}: tensor {name!r} does not fit the file: {e}") from e

    __getitem__ = get

    def tensors(self) -> Dict[str, np.ndarray]:
        """All tensors, name -> read-only view."""
        return {name: self.get(name) for name in self._refs}

    def __enter__(self) -> "Checkpoint":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Drop this object's reference to the mapping (views already handed out stay valid)."""
        self._refs = {}

    def __repr__(self) -> str:
        return f"<Checkpoint {self.path!r} ({self.format}, {len(self._refs)} tensors)>"


def open_checkpoint(path: PathLike) -> Checkpoint:
    """Open a ``.ckpt`` (torch.save zip) or ``.safetensors`` file, recognised by its bytes.

    The content decides the format, not the file name: a torch.save zip starts with a zip
    local-file signature, a ``.safetensors`` file with a plausible header length followed by
    ``{``, and PyTorch's legacy format (refused) with torch's magic number pickled. When the
    suffix says otherwise a :class:`UserWarning` says which format was read.

    For ``.ckpt`` files the state dict is the top-level dict, or its ``state_dict`` entry
    when it has one (Lightning checkpoints); nested dicts and lists inside it are flattened
    with dotted names (``{"a": [t]}`` -> ``"a.0"``).

    Raises :class:`CheckpointError` naming the file for anything unreadable, corrupt or unsafe.
    """
    path = os.fspath(path)
    try:
        f = open(path, "rb")
    except OSError as e:
        raise CheckpointError(f"cannot open checkpoint {path}: {e.strerror or e}") from e
    with f:
        try:
            return _open(path, f)
        except CheckpointError:
            raise
        except Exception as e:  # a reader bug or an exhausted resource: still the file's fault
            raise CheckpointError(f"{path}: cannot read the checkpoint: {type(e).__name__}: {_excerpt(str(e))}") from e


def _open(path: str, f: IO[bytes]) -> Checkpoint:
    size = os.fstat(f.fileno()).st_size
    head = f.read(32)
    found = _detect(head, size)
    suffix = os.path.splitext(path)[1].lower()
    expected = _SUFFIX_FORMATS.get(suffix)
    if found is not None and expected is not None and _FAMILY[found] != expected:
        warnings.warn(
            f"{path}: the suffix {suffix} says {_FORMAT_NAMES[expected]} but the "
            f"content is {_FORMAT_NAMES[found]}; reading it as such",
            UserWarning,
            stacklevel=3,
        )
    if found == "ckpt":
        return _open_ckpt(path, f, size)
    if found == "legacy":
        raise CheckpointError(_legacy_message(path))
    if found == "safetensors" or expected == "safetensors":
        # A file named .safetensors that does not look like one gets the reader's precise diagnosis.
        return _open_safetensors(path, f, size)
    if size == 0:
        what = "empty"
    elif head[:1] == b"\x80":
        what = "a bare pickle (not written by torch.save, or not a checkpoint); nothing in it was run"
    else:
        what = "neither a torch.save zip (.ckpt) nor a .safetensors file"
    raise CheckpointError(f"{path}: not a checkpoint: the file is {what}")


# What the content of a file says it is; None: nothing this module knows.
_FORMAT_NAMES = {
    "ckpt": "a torch.save zip (.ckpt)",
    "safetensors": ".safetensors",
    "legacy": "PyTorch's legacy (pre-1.6) format",
}
# Suffixes that promise a format; "ckpt" covers both torch.save formats (zip and legacy).
_SUFFIX_FORMATS = {".safetensors": "safetensors", ".ckpt": "ckpt", ".pt": "ckpt", ".pth": "ckpt"}
_FAMILY = {"ckpt": "ckpt", "legacy": "ckpt", "safetensors": "safetensors"}
# torch.save's legacy format begins with this number pickled (LONG1 of 10 bytes).
_LEGACY_MAGIC = b"\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")


def _detect(head: bytes, size: int) -> Optional[str]:
    """ "ckpt", "safetensors", "legacy" or None, from the first 32 bytes of a ``size``-byte file.

    Each test is one that no file of the other formats can pass: a zip's local-file signature;
    a safetensors header length between 8 and the bytes present (and the header cap) followed by
    ``{``; the pickled magic number (after PROTO and an optional FRAME) of torch's legacy format.
    A single leading byte would not do: 0x80 is the PROTO opcode of a legacy file but also the
    low byte of one safetensors header length in 256.
    """
    if head[:4] == b"PK\x03\x04":
        return "ckpt"
    if len(head) >= 9:
        (header_size,) = struct.unpack("<Q", head[:8])
        if 8 <= header_size <= min(size - 8, _MAX_HEADER) and head[8:9] == b"{":
            return "safetensors"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        body = head[2:]
        if body[:1] == b"\x95":  # protocol 4+: FRAME and its 8-byte length come first
            body = body[9:]
        if body.startswith(_LEGACY_MAGIC):
            return "legacy"
    return None


def load(path: PathLike) -> Dict[str, np.ndarray]:
    """The state dict of a ``.ckpt`` or ``.safetensors`` file: name -> read-only array view.

    A top-level ``state_dict`` entry is unwrapped. bf16 tensors have dtype :data:`BF16`.
    Raises :class:`CheckpointError` when the file holds no dict of tensors.
    """
    return open_checkpoint(path).tensors()


def _memmap(path: str, f: IO[bytes], size: int) -> np.memmap:
    if size == 0:
        raise CheckpointError(f"{path}: the file is empty")
    try:
        return np.memmap(f, dtype=np.uint8, mode="r", shape=(size,))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot memory-map the file: {e}") from e


from .safetensors import (  # noqa: E402
    _MAX_HEADER,
    _open_safetensors,
    load_safetensors,
    safetensors_metadata,
    save_safetensors,
)
from .unpickler import _legacy_message, _open_ckpt  # noqa: E402
