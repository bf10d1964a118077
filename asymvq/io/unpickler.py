"""``.ckpt`` files (torch.save zips) read by a restricted unpickler: no module is imported, no code runs.

The zip container is checked member by member against the file; the pickle is read by
:class:`_RestrictedUnpickler`, which understands the tensor and parameter rebuild functions, the
storage types, ``OrderedDict`` and plain containers, turns every other class into an inert
placeholder and refuses the globals only an attack needs. See :mod:`asymvq.io.checkpoint` for the
bounds every length a file declares is held to.
"""

from __future__ import annotations

import _compat_pickle
import io
import itertools
import pickle
import struct
import zipfile
import zlib
from collections import OrderedDict
from typing import IO, Any, Callable, Dict, List, NamedTuple, Optional, Tuple

from .checkpoint import Checkpoint, CheckpointError, _is_count, _memmap, _short
from .dtypes import _MAX_NDIM, _NP_DTYPES, DTYPES, _numel_within, _TensorRef

__all__: List[str] = []


# --------------------------------------------------------------------------------------------
# .ckpt: the zip container


def _legacy_message(path: str) -> str:
    return (
        f"{path} uses PyTorch's legacy (pre-1.6, non-zip) format, which cannot be read "
        "without running its pickle. Re-save it once with a recent PyTorch, e.g. "
        "torch.save(torch.load(p, weights_only=True), p2) (only for a file you trust if "
        "weights_only must be False), or convert it with `python -m asymvq convert`, then "
        "load the new file"
    )


class _Member(NamedTuple):
    offset: int  # absolute offset of the member's bytes
    size: int
    crc: int


def _read_at(f: IO[bytes], offset: int, count: int) -> bytes:
    f.seek(offset)
    return f.read(count)


def _zip_members(path: str, f: IO[bytes], size: int) -> Dict[str, _Member]:
    """Stored zip members name -> (data offset, size), every header checked against the file.

    Local headers are read with plain reads, not through the memory map: a page fault
    would read ahead ~128 KiB per tensor, which on a cold cache costs ~1 s per 4 GB.
    """
    try:
        infos = zipfile.ZipFile(f).infolist()
    except Exception as e:  # zipfile raises many types on hostile input
        raise CheckpointError(
            f"{path}: not a readable zip archive (truncated or corrupt?): {type(e).__name__}: {e}"
        ) from e
    members: Dict[str, _Member] = {}
    for info in infos:
        name = info.filename
        if name in members:
            raise CheckpointError(f"{path}: zip member {name!r} appears twice")
        if info.flag_bits & 0x1:
            raise CheckpointError(f"{path}: zip member {name!r} is encrypted")
        if info.compress_type != zipfile.ZIP_STORED or info.compress_size != info.file_size:
            raise CheckpointError(
                f"{path}: zip member {name!r} is compressed (method {info.compress_type}); "
                "tensors can only be memory-mapped from uncompressed members, as torch.save "
                "writes them. The file was probably re-zipped by another tool: re-save it with "
                "torch.save(torch.load(p, weights_only=True), p2) or convert it with "
                "`python -m asymvq convert`"
            )
        header = info.header_offset
        if header < 0 or header + 30 > size:
            raise CheckpointError(
                f"{path}: zip member {name!r}: local header at {header} lies outside the {size}-byte file"
            )
        local = _read_at(f, header, 30)
        sig, _, _, method, _, _, _, _, _, name_len, extra_len = struct.unpack("<4s5HIIIHH", local)
        encoding = "utf-8" if info.flag_bits & 0x800 else "cp437"
        try:
            central_name = info.orig_filename.encode(encoding)
        except UnicodeEncodeError:
            central_name = b""
        local_name = f.read(name_len)
        if sig != b"PK\x03\x04" or method != zipfile.ZIP_STORED or local_name != central_name:
            raise CheckpointError(
                f"{path}: zip member {name!r}: local header at {header} does "
                "not match the central directory (corrupt file)"
            )
        offset = header + 30 + name_len + extra_len
        if offset + info.file_size > size:
            raise CheckpointError(
                f"{path}: zip member {name!r} claims {info.file_size} bytes at "
                f"offset {offset}, past the end of the {size}-byte file "
                "(truncated?)"
            )
        members[name] = _Member(offset, info.file_size, info.CRC)
    return members


def _open_ckpt(path: str, f: IO[bytes], size: int) -> Checkpoint:
    members = _zip_members(path, f, size)
    pickles = [n for n in members if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pickles) != 1:
        found = "no" if not pickles else "several"
        raise CheckpointError(f"{path}: {found} '<archive>/data.pkl' member; this zip was not written by torch.save")
    prefix = pickles[0][: -len("data.pkl")]
    byteorder = members.get(prefix + "byteorder")
    if byteorder is not None:
        order = _read_at(f, byteorder.offset, min(byteorder.size, 16))
        if order != b"little":
            raise CheckpointError(
                f"{path}: storages are stored with byte order {order[:16]!r}; "
                "only little-endian checkpoints are supported"
            )
    pkl = members[pickles[0]]
    data = _read_at(f, pkl.offset, pkl.size)
    if zlib.crc32(data) != pkl.crc:
        raise CheckpointError(f"{path}: {pickles[0]} fails its CRC check (corrupt file)")
    root = _RestrictedUnpickler(path, data, members, prefix).load_checked()
    state, other = root, ()
    if isinstance(root, dict) and isinstance(dict.get(root, "state_dict"), dict):
        state = dict.__getitem__(root, "state_dict")
        other = tuple(k if isinstance(k, str) else _short(k) for k in root if k != "state_dict")
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds {_describe(state)}, not a dict of tensors (a state dict)")
    refs, skipped = _flatten(path, state)
    return Checkpoint(path, "ckpt", _memmap(path, f, size), refs, {}, skipped, other)


_CONTAINERS = (dict, OrderedDict, list, tuple)
_MAX_DEPTH = 64  # real state dicts nest a few levels; this bounds names in hostile files


def _flatten(path: str, state: dict) -> Tuple[Dict[str, _TensorRef], Dict[str, str]]:
    """Dotted names for the tensors of a (possibly nested) state dict; the rest goes to skipped.

    Iterative, and each container is visited once, so deep or cyclic structures in a
    hostile pickle cost linear time.
    """
    refs: Dict[str, _TensorRef] = {}
    skipped: Dict[str, str] = {}
    seen: Dict[int, str] = {}
    stack: List[Tuple[str, Any, int]] = [("", state, 0)]
    while stack:
        name, obj, depth = stack.pop()
        if type(obj) is _TensorRef:
            if name in refs:
                raise CheckpointError(f"{path}: two tensors are both named {name!r}")
            refs[name] = obj
            continue
        if type(obj) not in _CONTAINERS:
            skipped[name] = _describe(obj)
            continue
        if id(obj) in seen:
            skipped[name] = f"the same container as {seen[id(obj)]!r}"
            continue
        if depth == _MAX_DEPTH:
            skipped[name] = f"a container nested deeper than {_MAX_DEPTH} levels"
            continue
        seen[id(obj)] = name
        items = dict.items(obj) if isinstance(obj, dict) else enumerate(obj)
        children = []
        for key, value in items:
            if (
                isinstance(key, bool)
                or not isinstance(key, (str, int))
                or (isinstance(key, int) and key.bit_length() > 64)
            ):
                skipped[f"{name}[{_short(key)}]"] = "an entry whose key is not a string"
                continue
            children.append((f"{name}.{key}" if name else str(key), value, depth + 1))
        stack.extend(reversed(children))
    return refs, skipped


def _describe(obj: object) -> str:
    if isinstance(obj, _Placeholder):
        return f"an object of {type(obj)._global}, which is not read"
    if isinstance(obj, type) and issubclass(obj, _Placeholder):
        return f"{obj._global}, which is not read"
    kind = type(obj)
    if kind is _Unsupported:
        return obj.reason  # type: ignore[union-attr]
    if kind is _TorchDType:
        return f"the dtype torch.{obj.name}"  # type: ignore[union-attr]
    if kind is _StorageType:
        return f"the type torch.{obj.name}"  # type: ignore[union-attr]
    if kind is _Storage:
        return "a bare storage"
    if kind is _TensorRef:
        return "a tensor"
    if kind is _Callable:
        return repr(obj)
    return f"a value of type {kind.__name__}"


# --------------------------------------------------------------------------------------------
# .ckpt: the restricted unpickler


class _Unsupported(NamedTuple):
    """Stands for a tensor this reader cannot return (dtype, layout); keeps the reason."""

    reason: str


class _StorageType(NamedTuple):
    name: str
    dtype: Optional[str]  # None: a dtype this reader does not support
    untyped: bool = False


class _TorchDType(NamedTuple):
    name: str
    dtype: Optional[str]


class _Storage(NamedTuple):
    key: str
    dtype: Optional[str]  # None: unsupported; "U8" for untyped byte storages
    offset: int
    nbytes: int
    untyped: bool
    type_name: str


_STORAGE_TAGS = {
    "FloatStorage": "F32",
    "HalfStorage": "F16",
    "BFloat16Storage": "BF16",
    "DoubleStorage": "F64",
    "LongStorage": "I64",
    "IntStorage": "I32",
    "ShortStorage": "I16",
    "CharStorage": "I8",
    "ByteStorage": "U8",
    "BoolStorage": "BOOL",
}
_TORCH_DTYPE_TAGS = {
    "float32": "F32",
    "float": "F32",
    "float16": "F16",
    "half": "F16",
    "bfloat16": "BF16",
    "float64": "F64",
    "double": "F64",
    "int64": "I64",
    "long": "I64",
    "int32": "I32",
    "int": "I32",
    "int16": "I16",
    "short": "I16",
    "int8": "I8",
    "uint8": "U8",
    "bool": "BOOL",
}

# Modules that a checkpoint only names to run code, touch files or processes, or unpickle more
# data: refused outright. (Nothing is imported or called either way; unknown globals elsewhere
# just become placeholders, so this list only needs to catch the obvious attacks loudly.)
_REFUSED_MODULES = frozenset(
    {
        "builtins",
        "os",
        "posix",
        "nt",
        "subprocess",
        "_posixsubprocess",
        "sys",
        "pickle",
        "_pickle",
        "pickletools",
        "marshal",
        "shelve",
        "dill",
        "cloudpickle",
        "joblib",
        "importlib",
        "imp",
        "zipimport",
        "pkgutil",
        "runpy",
        "shutil",
        "tempfile",
        "glob",
        "socket",
        "_socket",
        "ssl",
        "http",
        "urllib",
        "ftplib",
        "smtplib",
        "ctypes",
        "_ctypes",
        "cffi",
        "code",
        "codeop",
        "pty",
        "pdb",
        "bdb",
        "trace",
        "timeit",
        "profile",
        "cProfile",
        "doctest",
        "pydoc",
        "webbrowser",
        "multiprocessing",
        "threading",
        "_thread",
        "signal",
        "asyncio",
        "io",
        "_io",
        "codecs",
        "_codecs",
        "operator",
        "_operator",
        "inspect",
        "gc",
    }
)
# Specific globals refused although their module also holds harmless, picklable classes.
_REFUSED_GLOBALS = frozenset(
    {
        ("types", "FunctionType"),
        ("types", "LambdaType"),
        ("types", "CodeType"),
        ("types", "MethodType"),
        ("types", "ModuleType"),
        ("types", "BuiltinFunctionType"),
        ("functools", "reduce"),
        ("torch", "load"),
        ("torch.serialization", "load"),
        ("torch.hub", "load"),
        ("torch.jit", "load"),
        ("numpy", "load"),
        ("numpy.lib.npyio", "load"),
        ("numpy.lib._npyio_impl", "load"),
    }
)
# builtins that may appear in ordinary pickles but are not needed: inert placeholders.
_INERT_BUILTINS = frozenset({"object", "type", "NoneType"})


class _Callable:
    """A function the pickle may call; immutable so a pickle cannot tamper with it."""

    __slots__ = ("_name", "_fn")

    def __init__(self, name: str, fn: Callable[..., Any]) -> None:
        object.__setattr__(self, "_name", name)
        object.__setattr__(self, "_fn", fn)

    def __call__(self, *args: Any) -> Any:
        return self._fn(*args)

    def __setattr__(self, key: str, value: object) -> None:
        raise AttributeError(f"{self._name} cannot be modified")

    def __repr__(self) -> str:
        return f"<allowed {self._name}>"


class _PlaceholderMeta(type):
    """Metaclass of placeholder classes: their attributes cannot be set by a pickle."""

    def __setattr__(cls, key: str, value: object) -> None:
        raise AttributeError(f"placeholder {cls.__name__} cannot be modified")

    def __delattr__(cls, key: str) -> None:
        raise AttributeError(f"placeholder {cls.__name__} cannot be modified")


class _Placeholder(metaclass=_PlaceholderMeta):
    """Inert stand-in for any object of a class this reader does not know.

    It accepts whatever the pickle does to it (construction, state, items) and
    keeps nothing: no method of the real class is ever looked up or run.
    """

    __slots__ = ()
    _global = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> "_Placeholder":
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __call__(self, *args: Any, **kwargs: Any) -> "_Placeholder":
        return type(self)()

    def __setstate__(self, state: object) -> None:
        pass

    def __setitem__(self, key: object, value: object) -> None:
        pass

    def append(self, item: object) -> None:
        pass

    def extend(self, items: object) -> None:
        pass

    def add(self, item: object) -> None:
        pass

    def __setattr__(self, key: str, value: object) -> None:
        raise AttributeError(f"placeholder for {type(self)._global} cannot be modified")

    def __repr__(self) -> str:
        return f"<placeholder for {type(self)._global}>"


_ITERABLES = (str, bytes, bytearray, list, tuple, dict, set, frozenset, OrderedDict)
_TEXT_ENCODINGS = {
    "latin1": "latin-1",
    "latin-1": "latin-1",
    "iso-8859-1": "latin-1",
    "utf8": "utf-8",
    "utf-8": "utf-8",
    "ascii": "ascii",
}


class _RestrictedUnpickler(pickle._Unpickler):  # type: ignore[name-defined]
    """Unpickles ``data.pkl`` calling nothing but this module's own allow-listed functions.

    The pure-Python unpickler is used on purpose: its memo is a dict, so a corrupt
    memo index cannot make it allocate gigabytes as the C unpickler does.
    """

    def __init__(self, path: str, data: bytes, members: Dict[str, _Member], prefix: str) -> None:
        self._data = data
        self._file = io.BytesIO(data)
        super().__init__(self._file, encoding="utf-8")
        self._path = path
        # id -> (container, nesting depth) of every container built so far; holding the
        # container keeps its id from being reused.
        self._depths: Dict[int, Tuple[Any, int]] = {}
        # Elements and bytes that the allowed callables have copied: bounded by the pickle's size.
        self._copied = 0
        self._copy_limit = 2 * len(data) + (1 << 16)
        self._members = members
        self._prefix = prefix
        self._placeholders: Dict[str, type] = {}
        rebuild_v2 = _Callable("torch._utils._rebuild_tensor_v2", self._rebuild_tensor_v2)
        self._allowed: Dict[Tuple[str, str], object] = {
            ("torch._utils", "_rebuild_tensor_v2"): rebuild_v2,
            ("torch._utils", "_rebuild_tensor"): _Callable("torch._utils._rebuild_tensor", self._rebuild_tensor),
            ("torch._utils", "_rebuild_tensor_v3"): _Callable(
                "torch._utils._rebuild_tensor_v3", self._rebuild_tensor_v3
            ),
            ("torch._utils", "_rebuild_parameter"): _Callable("torch._utils._rebuild_parameter", _rebuild_parameter),
            ("torch._utils", "_rebuild_parameter_with_state"): _Callable(
                "torch._utils._rebuild_parameter_with_state", _rebuild_parameter
            ),
            ("torch._tensor", "_rebuild_from_type_v2"): _Callable(
                "torch._tensor._rebuild_from_type_v2", self._rebuild_from_type_v2
            ),
            ("collections", "OrderedDict"): _Callable("collections.OrderedDict", self._ordered_dict),
            ("collections", "defaultdict"): _Callable("collections.defaultdict", lambda *args: {}),
            ("_codecs", "encode"): _Callable("_codecs.encode", self._codecs_encode),
            ("codecs", "encode"): _Callable("codecs.encode", self._codecs_encode),
        }
        for name in ("set", "frozenset", "list", "tuple", "dict"):
            self._allowed[("builtins", name)] = _Callable(f"builtins.{name}", self._container(name))
        for name in ("bytes", "bytearray", "str"):
            self._allowed[("builtins", name)] = _Callable(f"builtins.{name}", self._text(name))
        for name in ("int", "float", "complex", "bool", "slice", "range"):
            self._allowed[("builtins", name)] = _Callable(f"builtins.{name}", self._scalar(name))
        self._allowed[("builtins", "Ellipsis")] = Ellipsis
        self._allowed[("builtins", "NotImplemented")] = NotImplemented

    # Extension codes resolve through copyreg's process-wide cache, around find_class: refused.
    dispatch = dict(pickle._Unpickler.dispatch)  # type: ignore[attr-defined]

    def _refuse_extension(self) -> None:
        raise CheckpointError(f"{self._path}: data.pkl uses pickle extension codes, which torch.save never writes")

    for _opcode in (pickle.EXT1, pickle.EXT2, pickle.EXT4):
        dispatch[_opcode[0]] = _refuse_extension
    del _opcode

    def load_build(self) -> None:
        """BUILD keeps nothing: no attribute of a dict (torch's ``_metadata``) is needed, and an
        attribute set on one could shadow its methods (``items``); placeholders ignore their state."""
        stack = self.stack
        stack.pop()
        inst = stack[-1]
        if isinstance(inst, _Placeholder) or type(inst) in (dict, OrderedDict):
            return
        raise CheckpointError(
            f"{self._path}: data.pkl sets the state of {_describe(inst)}, which torch.save never does"
        )

    dispatch[pickle.BUILD[0]] = load_build

    # -- declared lengths ----------------------------------------------------------------------
    def _check_declared_length(self, name: str, field: str) -> None:
        """Refuse a length field that claims more bytes than data.pkl still holds, before the
        standard opcode reads it (BYTEARRAY8 would allocate the claimed size first)."""
        width = struct.calcsize(field)
        at_file = self._file.tell()
        left_in_file = len(self._data) - at_file
        frame = getattr(getattr(self, "_unframer", None), "current_frame", None)
        left_in_frame, raw, opcode_at = 0, b"", at_file - 1
        if frame is not None:
            with frame.getbuffer() as view:
                at = frame.tell()
                left_in_frame = len(view) - at
                raw = bytes(view[at : at + width])
                opcode_at = at_file - len(view) + at - 1
        if left_in_frame == 0:
            raw = self._data[at_file : at_file + width]
            follow = left_in_file - width
        elif left_in_frame >= width:
            follow = left_in_frame - width + left_in_file
        else:
            return  # the field straddles the end of a frame: the standard reader reports that
        if len(raw) < width:
            return  # truncated: the standard reader reports that
        (declared,) = struct.unpack(field, raw)
        if declared < 0:
            raise CheckpointError(
                f"{self._path}: data.pkl is corrupt: {name} at byte {opcode_at} declares a negative length ({declared})"
            )
        if declared > follow:
            raise CheckpointError(
                f"{self._path}: data.pkl is corrupt: {name} at byte {opcode_at} "
                f"declares {declared} bytes but only {max(follow, 0)} follow"
            )

    # -- nesting depth -------------------------------------------------------------------------
    def _nesting(self, obj: Any) -> int:
        if type(obj) not in _NESTING_TYPES:
            return 0
        entry = self._depths.get(id(obj))
        return entry[1] if entry is not None and entry[0] is obj else 1

    def _limit_depth(self, depth: int) -> None:
        if depth > _MAX_PICKLE_DEPTH:
            raise CheckpointError(
                f"{self._path}: data.pkl holds containers nested deeper than {_MAX_PICKLE_DEPTH} "
                "levels, which no checkpoint needs (refused while unpickling, before anything "
                "was hashed or compared)"
            )

    def _register(self, obj: Any) -> None:
        """Record the depth of a container an opcode just pushed; refuse it if too deep."""
        if type(obj) not in _NESTING_TYPES:
            return
        entry = self._depths.get(id(obj))
        if entry is not None and entry[0] is obj:
            return  # an existing container handed back (e.g. by _rebuild_parameter)
        children: Any = obj
        if type(obj) in (dict, OrderedDict):
            children = itertools.chain(dict.keys(obj), dict.values(obj))
        depth = 1 + max(map(self._nesting, children), default=0)
        self._limit_depth(depth)
        if depth > 1:  # 1 is what _nesting assumes: empty containers cost no bookkeeping
            self._depths[id(obj)] = (obj, depth)

    def _grow(self, container: Any, items: Any) -> Callable[[], None]:
        """Before items go into a container: check the depth it would reach; returns the update."""
        if type(container) not in _NESTING_TYPES:
            return lambda: None
        depth = 1 + max(map(self._nesting, items), default=0)
        self._limit_depth(depth)

        def update() -> None:
            if depth > self._nesting(container):
                self._depths[id(container)] = (container, depth)

        return update

    def _charge(self, count: int) -> None:
        """Account for ``count`` elements or bytes an allowed callable is about to copy."""
        self._copied += count
        if self._copied > self._copy_limit:
            raise CheckpointError(
                f"{self._path}: data.pkl makes its allowed functions copy more "
                f"than {self._copy_limit} elements, more than the "
                f"{len(self._data)}-byte pickle holds"
            )

    # -- entry point ---------------------------------------------------------------------------
    def load_checked(self) -> Any:
        try:
            return self.load()
        except CheckpointError:
            raise
        except Exception as e:  # any failure of the pickle machine on a corrupt file
            raise CheckpointError(
                f"{self._path}: data.pkl is corrupt or not a torch.save pickle: {type(e).__name__}: {e}"
            ) from e

    # -- the two hooks -------------------------------------------------------------------------
    def find_class(self, module: str, name: str) -> Any:
        if not isinstance(module, str) or not isinstance(name, str):
            raise CheckpointError(f"{self._path}: data.pkl names a global that is not a string")
        # Python 2 spellings, which protocol-2 pickles use ("__builtin__.eval",
        # "commands.Popen" for subprocess.Popen), mapped as the standard unpickler does.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        allowed = self._allowed.get((module, name))
        if allowed is not None:
            return allowed
        if module == "torch" and name.endswith("Storage"):
            tag = _STORAGE_TAGS.get(name)
            if name == "UntypedStorage":
                return _StorageType(name, "U8", untyped=True)
            return _StorageType(name, tag)
        if module == "torch.storage" and name == "UntypedStorage":
            return _StorageType(name, "U8", untyped=True)
        if module == "torch" and name in _TORCH_DTYPE_TAGS:
            return _TorchDType(name, _TORCH_DTYPE_TAGS[name])
        root = module.split(".", 1)[0]
        if module == "builtins" and (name in _INERT_BUILTINS or name.endswith(("Error", "Exception", "Warning"))):
            return self._placeholder(module, name)
        if root in _REFUSED_MODULES or (module, name) in _REFUSED_GLOBALS:
            raise CheckpointError(
                f"refusing {self._path}: its pickle references {module}.{name}, which a "
                "checkpoint only needs to run code. Nothing was executed. If you trust this "
                "file, re-save its weights with torch.save(model.state_dict(), p2) or as "
                ".safetensors"
            )
        return self._placeholder(module, name)

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise CheckpointError(f"{self._path}: data.pkl holds a persistent id that is not a torch storage reference")
        _, storage_type, key, _location, numel = pid
        if not isinstance(key, str) or not _is_count(numel):
            raise CheckpointError(f"{self._path}: malformed storage reference {key!r}")
        member = self._members.get(f"{self._prefix}data/{key}")
        if member is None:
            raise CheckpointError(
                f"{self._path}: storage {key!r} is missing from the archive (no member {self._prefix}data/{key})"
            )
        if not isinstance(storage_type, _StorageType):
            return _Storage(key, None, member.offset, member.size, False, _global_name(storage_type))
        if storage_type.dtype is not None:
            itemsize = _NP_DTYPES[storage_type.dtype].itemsize
            if numel * itemsize != member.size:
                raise CheckpointError(
                    f"{self._path}: storage {key!r} declares {numel} {storage_type.dtype} "
                    f"elements ({numel * itemsize} bytes) but its member holds {member.size} bytes"
                )
        return _Storage(key, storage_type.dtype, member.offset, member.size, storage_type.untyped, storage_type.name)

    # -- allowed callables ---------------------------------------------------------------------
    def _placeholder(self, module: str, name: str) -> type:
        qualified = f"{module}.{name}"
        cls = self._placeholders.get(qualified)
        if cls is None:
            cls = _PlaceholderMeta(name[:100], (_Placeholder,), {"__slots__": (), "_global": qualified[:200]})
            self._placeholders[qualified] = cls
        return cls

    def _rebuild_tensor_v2(self, storage: Any, storage_offset: Any, size: Any, stride: Any, *_ignored: Any) -> Any:
        return self._tensor(storage, storage_offset, size, stride, None)

    def _rebuild_tensor(self, storage: Any, storage_offset: Any, size: Any, stride: Any) -> Any:
        return self._tensor(storage, storage_offset, size, stride, None)

    def _rebuild_tensor_v3(
        self,
        storage: Any,
        storage_offset: Any,
        size: Any,
        stride: Any,
        requires_grad: Any = None,
        hooks: Any = None,
        dtype: Any = None,
        *_ignored: Any,
    ) -> Any:
        if not isinstance(dtype, _TorchDType):
            return _Unsupported(f"a tensor of dtype {_global_name(dtype)}, which is not read")
        if dtype.dtype is None:
            return _Unsupported(f"a tensor of dtype torch.{dtype.name}, which is not read")
        return self._tensor(storage, storage_offset, size, stride, dtype.dtype)

    def _rebuild_from_type_v2(self, func: Any, new_type: Any, args: Any, *_ignored: Any) -> Any:
        if isinstance(func, _Callable) and isinstance(args, tuple):
            return func(*args)
        return _Unsupported(f"a tensor subclass rebuilt by {_global_name(func)}, which is not read")

    def _tensor(self, storage: Any, offset: Any, size: Any, stride: Any, view_dtype: Optional[str]) -> Any:
        path = self._path
        if not isinstance(storage, _Storage):
            raise CheckpointError(
                f"{path}: a tensor in data.pkl is rebuilt from {_describe(storage)} instead of a storage"
            )
        if storage.dtype is None:
            return _Unsupported(
                f"a tensor stored as {storage.type_name}, which is not read (supported dtypes: {', '.join(DTYPES)})"
            )
        dtype = view_dtype or storage.dtype
        if storage.untyped and view_dtype is None:
            dtype = "U8"
        where = f"{path}: tensor on storage {storage.key!r}"
        if not (
            isinstance(size, (tuple, list))
            and isinstance(stride, (tuple, list))
            and len(size) == len(stride) <= _MAX_NDIM
        ):
            raise CheckpointError(f"{where}: malformed shape {_short(size)} / strides {_short(stride)}")
        if not (all(_is_count(d) for d in size) and all(_is_count(s) for s in stride) and _is_count(offset)):
            raise CheckpointError(
                f"{where}: shape {_short(size)}, strides {_short(stride)} and "
                f"offset {_short(offset)} must be non-negative integers"
            )
        itemsize = _NP_DTYPES[dtype].itemsize
        capacity = storage.nbytes // itemsize
        shape = tuple(int(d) for d in size)
        strides = tuple(int(s) for s in stride)
        limit = (1 << 62) // itemsize
        if _numel_within(shape, limit) is None or max(strides, default=0) > limit:
            raise CheckpointError(
                f"{where}: shape {_short(list(shape))} or strides {_short(list(strides))} are impossibly large"
            )
        if 0 not in shape:
            last = offset + sum((d - 1) * s for d, s in zip(shape, strides))
            if last >= capacity:
                raise CheckpointError(
                    f"{where}: shape {list(shape)}, strides {list(strides)} and offset {offset} "
                    f"reach element {last}, past the storage's {capacity} elements"
                )
        elif offset > capacity:
            raise CheckpointError(f"{where}: offset {offset} is past the storage's {capacity} elements")
        return _TensorRef(dtype, shape, storage.offset + offset * itemsize, tuple(s * itemsize for s in strides))

    def _ordered_dict(self, *args: Any) -> Any:
        if not args:
            return OrderedDict()
        if len(args) == 1 and isinstance(args[0], (list, tuple, dict)):
            self._charge(len(args[0]))
            try:
                return OrderedDict(args[0])
            except (TypeError, ValueError):
                pass
        return self._placeholder("collections", "OrderedDict")()

    def _container(self, name: str) -> Callable[..., Any]:
        kind = {"set": set, "frozenset": frozenset, "list": list, "tuple": tuple, "dict": dict}[name]

        def make(*args: Any) -> Any:
            if not args:
                return kind()
            if len(args) == 1 and type(args[0]) in _ITERABLES:
                self._charge(len(args[0]))
                try:
                    return kind(args[0])
                except (TypeError, ValueError):
                    pass
            return self._placeholder("builtins", name)()

        return make

    def _text(self, name: str) -> Callable[..., Any]:
        def make(*args: Any) -> Any:
            if not args:
                return {"bytes": b"", "bytearray": bytearray(), "str": ""}[name]
            value = args[0]
            if isinstance(value, (str, bytes, bytearray, list, tuple)):
                self._charge(len(value))
            encoding = None
            if len(args) == 2 and isinstance(args[1], str):
                encoding = _TEXT_ENCODINGS.get(args[1])
            if name == "str" and len(args) == 1 and isinstance(value, str):
                return value
            if name == "str" and encoding and isinstance(value, (bytes, bytearray)):
                try:
                    return bytes(value).decode(encoding)
                except UnicodeDecodeError:
                    pass
            if name != "str":
                data: Optional[bytes] = None
                if len(args) == 1 and isinstance(value, (bytes, bytearray, list, tuple)):
                    try:
                        data = bytes(value)
                    except (TypeError, ValueError):
                        data = None
                elif encoding and isinstance(value, str):
                    try:
                        data = value.encode(encoding)
                    except UnicodeEncodeError:
                        data = None
                if data is not None:
                    return data if name == "bytes" else bytearray(data)
            return self._placeholder("builtins", name)()

        return make

    def _scalar(self, name: str) -> Callable[..., Any]:
        kind = {"int": int, "float": float, "complex": complex, "bool": bool, "slice": slice, "range": range}[name]

        def make(*args: Any) -> Any:
            if len(args) <= 3 and all(type(a) in (type(None), bool, int, float, str) for a in args):
                self._charge(sum(len(a) for a in args if type(a) is str))
                try:
                    return kind(*args)
                except (TypeError, ValueError, OverflowError):
                    pass
            return self._placeholder("builtins", name)()

        return make

    def _codecs_encode(self, *args: Any) -> Any:
        if len(args) == 2 and isinstance(args[0], str) and isinstance(args[1], str) and args[1] in _TEXT_ENCODINGS:
            self._charge(len(args[0]))
            try:
                return args[0].encode(_TEXT_ENCODINGS[args[1]])
            except UnicodeEncodeError:
                pass
        return self._placeholder("_codecs", "encode")()


# Containers whose nesting the unpickler tracks (exact types: it builds no subclasses).
_NESTING_TYPES = frozenset({tuple, list, dict, set, frozenset, OrderedDict})
# Hashing or comparing nested tuples recurses in C without a depth check, so a ~1 MB pickle of a
# million-deep tuple used as a dict key would overflow the C stack. Every container is checked as
# it is built, so no deeper one ever exists; real checkpoints nest a few levels.
_MAX_PICKLE_DEPTH = 256

# Opcodes with a length prefix -> (name, struct format of the length).
_LENGTH_PREFIXED = {
    pickle.BINSTRING: ("BINSTRING", "<i"),
    pickle.SHORT_BINSTRING: ("SHORT_BINSTRING", "<B"),
    pickle.BINBYTES: ("BINBYTES", "<I"),
    pickle.SHORT_BINBYTES: ("SHORT_BINBYTES", "<B"),
    pickle.BINBYTES8: ("BINBYTES8", "<Q"),
    pickle.BINUNICODE: ("BINUNICODE", "<I"),
    pickle.SHORT_BINUNICODE: ("SHORT_BINUNICODE", "<B"),
    pickle.BINUNICODE8: ("BINUNICODE8", "<Q"),
    pickle.BYTEARRAY8: ("BYTEARRAY8", "<Q"),
    pickle.LONG1: ("LONG1", "<B"),
    pickle.LONG4: ("LONG4", "<i"),
    pickle.FRAME: ("FRAME", "<Q"),
}
# Opcodes that push a new object (or replace the top of the stack with one).
_BUILDERS = (
    pickle.EMPTY_TUPLE,
    pickle.EMPTY_LIST,
    pickle.EMPTY_DICT,
    pickle.EMPTY_SET,
    pickle.TUPLE,
    pickle.TUPLE1,
    pickle.TUPLE2,
    pickle.TUPLE3,
    pickle.LIST,
    pickle.DICT,
    pickle.FROZENSET,
    pickle.REDUCE,
    pickle.NEWOBJ,
    pickle.NEWOBJ_EX,
    pickle.OBJ,
    pickle.INST,
)


def _marked(u: "_RestrictedUnpickler") -> Tuple[Any, Any]:
    return u.metastack[-1][-1], u.stack


# Opcodes that put items into a container already built -> (container, new items).
_FILLERS: Dict[bytes, Callable[["_RestrictedUnpickler"], Tuple[Any, Any]]] = {
    pickle.APPEND: lambda u: (u.stack[-2], u.stack[-1:]),
    pickle.SETITEM: lambda u: (u.stack[-3], u.stack[-2:]),
    pickle.APPENDS: _marked,
    pickle.SETITEMS: _marked,
    pickle.ADDITEMS: _marked,
}


def _length_checked(handler: Callable[[Any], None], name: str, field: str) -> Callable[[Any], None]:
    def load(self: "_RestrictedUnpickler") -> None:
        self._check_declared_length(name, field)
        handler(self)

    return load


def _registered(handler: Callable[[Any], None]) -> Callable[[Any], None]:
    def load(self: "_RestrictedUnpickler") -> None:
        handler(self)
        if self.stack:
            self._register(self.stack[-1])

    return load


def _filling(
    handler: Callable[[Any], None], operands: Callable[["_RestrictedUnpickler"], Tuple[Any, Any]]
) -> Callable[[Any], None]:
    def load(self: "_RestrictedUnpickler") -> None:
        try:
            container, items = operands(self)
        except IndexError:  # a malformed stack: the standard opcode reports it
            handler(self)
            return
        update = self._grow(container, items)
        handler(self)
        update()

    return load


for _op, (_name, _field) in _LENGTH_PREFIXED.items():
    _RestrictedUnpickler.dispatch[_op[0]] = _length_checked(_RestrictedUnpickler.dispatch[_op[0]], _name, _field)
for _op in _BUILDERS:
    _RestrictedUnpickler.dispatch[_op[0]] = _registered(_RestrictedUnpickler.dispatch[_op[0]])
for _op, _operands in _FILLERS.items():
    _RestrictedUnpickler.dispatch[_op[0]] = _filling(_RestrictedUnpickler.dispatch[_op[0]], _operands)
del _op, _name, _field, _operands


def _rebuild_parameter(data: Any, *_ignored: Any) -> Any:
    return data


def _global_name(obj: object) -> str:
    if isinstance(obj, type) and issubclass(obj, _Placeholder):
        return obj._global
    if isinstance(obj, _Placeholder):
        return type(obj)._global
    return _short(obj)
