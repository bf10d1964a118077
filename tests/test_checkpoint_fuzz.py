"""Fuzzing both readers: mutated valid files either load or raise CheckpointError, nothing else.

Bounded and derandomized so CI runs the same cases every time. Five targets, each 300 cases:
raw bytes of a .ckpt, its data.pkl re-zipped with a valid CRC (so the unpickler is reached),
raw bytes of a .safetensors, its JSON header with the size field kept consistent, and random
tensor geometry (offset, shape, strides, storage size), which must load exactly when it lies
inside its storage. Then two hostile strategies: nesting of every kind of container around the
256-level limit, and sizes that lie (pickle length fields, zip member sizes and offsets,
safetensors shapes, offsets and header sizes, storage sizes, shapes and zero strides), where the
reader must refuse before allocating (Python's allocations stay under 4 MiB).
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import pathlib
import pickle
import struct
import tracemalloc
import zipfile

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asymvq import checkpoint
from asymvq.checkpoint import CheckpointError

CASES = 300
FUZZ = settings(
    max_examples=CASES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def small_ckpt() -> bytes:
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    state = {
        "state_dict": {
            "w": base,
            "wt": base.t(),
            "tail": base.view(12)[5:],
            "h": torch.ones(3, dtype=torch.bfloat16),
            "b": torch.tensor([True, False]),
            "i": torch.arange(3, dtype=torch.int64),
            "nested": [torch.zeros(2, dtype=torch.int8)],
        },
        "global_step": 7,
        "hyper_parameters": argparse.Namespace(lr=0.1),
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def small_safetensors(tmp_dir: pathlib.Path) -> bytes:
    path = tmp_dir / "base.safetensors"
    checkpoint.save_safetensors(
        path,
        {
            "w": np.arange(12, dtype=np.float32).reshape(3, 4),
            "h": np.ones(3, np.float16),
            "bf": np.ones(2, checkpoint.BF16),
            "b": np.array([True, False]),
            "i": np.arange(3),
        },
        {"k": "v"},
    )
    return path.read_bytes()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> pathlib.Path:
    return tmp_path_factory.mktemp("fuzz")


@pytest.fixture(scope="module")
def ckpt_bytes() -> bytes:
    return small_ckpt()


@pytest.fixture(scope="module")
def safetensors_bytes(workdir) -> bytes:
    return small_safetensors(workdir)


# One mutation: (kind, position seed, payload). Positions are taken modulo the current length.
MUTATION = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 1 << 20), st.integers(0, 7)),
    st.tuples(st.just("truncate"), st.integers(0, 1 << 20), st.none()),
    st.tuples(st.just("insert"), st.integers(0, 1 << 20), st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("overwrite"), st.integers(0, 1 << 20), st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("delete"), st.integers(0, 1 << 20), st.integers(1, 16)),
)
MUTATIONS = st.lists(MUTATION, min_size=1, max_size=4)


def mutate(data: bytes, mutations) -> bytes:
    out = bytearray(data)
    for kind, seed, arg in mutations:
        at = seed % (len(out) + 1)
        if kind == "flip" and at < len(out):
            out[at] ^= 1 << arg
        elif kind == "truncate":
            del out[at:]
        elif kind == "insert":
            out[at:at] = arg
        elif kind == "overwrite":
            out[at : at + len(arg)] = arg
        elif kind == "delete":
            del out[at : at + arg]
    return bytes(out)


def read_everything(path: pathlib.Path) -> None:
    """Open the file and touch every byte of every tensor; only CheckpointError may escape."""
    try:
        opened = checkpoint.open_checkpoint(path)
        for name in opened.keys():
            info = opened.info(name)
            array = opened.get(name)
            assert array.shape == info.shape and not array.flags.writeable
            if info.nbytes <= 1 << 20:  # zero strides can make huge views of tiny storages
                array.tobytes()
    except CheckpointError:
        pass


def rezip_with_pickle(original: bytes, pickle_bytes: bytes) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(original)) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            data = pickle_bytes if info.filename.endswith("/data.pkl") else src.read(info)
            dst.writestr(info.filename, data)
    return out.getvalue()


def pickle_of(ckpt: bytes) -> bytes:
    with zipfile.ZipFile(io.BytesIO(ckpt)) as z:
        return z.read(next(n for n in z.namelist() if n.endswith("/data.pkl")))


def test_the_fuzz_inputs_are_valid_before_mutation(workdir, ckpt_bytes, safetensors_bytes):
    (workdir / "a.ckpt").write_bytes(ckpt_bytes)
    (workdir / "a.safetensors").write_bytes(safetensors_bytes)
    assert len(checkpoint.load(workdir / "a.ckpt")) == 7
    assert len(checkpoint.load(workdir / "a.safetensors")) == 5
    (workdir / "b.ckpt").write_bytes(rezip_with_pickle(ckpt_bytes, pickle_of(ckpt_bytes)))
    assert len(checkpoint.load(workdir / "b.ckpt")) == 7


@FUZZ
@given(mutations=MUTATIONS)
def test_mutated_ckpt_bytes_load_or_raise_checkpoint_error(workdir, ckpt_bytes, mutations):
    path = workdir / "fuzz.ckpt"
    path.write_bytes(mutate(ckpt_bytes, mutations))
    read_everything(path)


@FUZZ
@given(mutations=MUTATIONS)
def test_mutated_ckpt_pickle_loads_or_raises_checkpoint_error(workdir, ckpt_bytes, mutations):
    path = workdir / "fuzz_pickle.ckpt"
    path.write_bytes(rezip_with_pickle(ckpt_bytes, mutate(pickle_of(ckpt_bytes), mutations)))
    read_everything(path)


@FUZZ
@given(mutations=MUTATIONS)
def test_mutated_safetensors_bytes_load_or_raise_checkpoint_error(workdir, safetensors_bytes, mutations):
    path = workdir / "fuzz.safetensors"
    path.write_bytes(mutate(safetensors_bytes, mutations))
    read_everything(path)


@FUZZ
@given(mutations=MUTATIONS)
def test_mutated_safetensors_header_loads_or_raises_checkpoint_error(workdir, safetensors_bytes, mutations):
    (size,) = struct.unpack("<Q", safetensors_bytes[:8])
    header = mutate(safetensors_bytes[8 : 8 + size], mutations)
    path = workdir / "fuzz_header.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + safetensors_bytes[8 + size :])
    read_everything(path)


# ---------------------------------------------------------------------------------------------
# Tensor geometry: loads exactly when inside the storage, and then equals NumPy's strided view

STORAGES = {
    "F32": "FloatStorage",
    "F16": "HalfStorage",
    "BF16": "BFloat16Storage",
    "F64": "DoubleStorage",
    "I64": "LongStorage",
    "I32": "IntStorage",
    "I16": "ShortStorage",
    "I8": "CharStorage",
    "U8": "ByteStorage",
    "BOOL": "BoolStorage",
}
NUMPY = {
    "F32": "<f4",
    "F16": "<f2",
    "BF16": "<u2",
    "F64": "<f8",
    "I64": "<i8",
    "I32": "<i4",
    "I16": "<i2",
    "I8": "i1",
    "U8": "u1",
    "BOOL": "?",
}


def push(value) -> bytes:
    return pickle.dumps(value, protocol=2)[2:-1]


def one_tensor_checkpoint(tag: str, numel: int, offset: int, size, stride) -> tuple[bytes, np.ndarray]:
    """A torch.save-like zip holding {"t": tensor}, and its storage as a NumPy array."""
    storage = (np.arange(numel) % 2).astype(bool) if tag == "BOOL" else np.arange(numel).astype(NUMPY[tag])
    pid = b"(" + push("storage") + f"ctorch\n{STORAGES[tag]}\n".encode() + push("0") + push("cpu") + push(numel) + b"tQ"
    tensor = (
        b"ctorch._utils\n_rebuild_tensor_v2\n("
        + pid
        + push(offset)
        + push(tuple(size))
        + push(tuple(stride))
        + b"\x89ccollections\nOrderedDict\n)RtR"
    )
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        z.writestr("archive/data.pkl", b"\x80\x02}" + push("t") + tensor + b"s.")
        z.writestr("archive/data/0", storage.tobytes())
    return out.getvalue(), storage


GEOMETRY = st.integers(0, 4).flatmap(
    lambda ndim: st.tuples(
        st.sampled_from(sorted(STORAGES)),
        st.integers(0, 64),  # storage elements
        st.integers(-2, 80),  # storage offset
        st.lists(st.integers(-1, 8), min_size=ndim, max_size=ndim),
        st.lists(st.integers(-1, 20), min_size=ndim, max_size=ndim),
    )
)


@FUZZ
@given(geometry=GEOMETRY)
def test_tensor_geometry_loads_exactly_when_inside_its_storage(workdir, geometry):
    tag, numel, offset, size, stride = geometry
    data, storage = one_tensor_checkpoint(tag, numel, offset, size, stride)
    path = workdir / "geometry.ckpt"
    path.write_bytes(data)
    valid = min([offset, *size, *stride]) >= 0 and (
        offset <= numel if 0 in size else offset + sum((d - 1) * s for d, s in zip(size, stride)) < numel
    )
    if not valid:
        with pytest.raises(CheckpointError):
            checkpoint.load(path)
        return
    loaded = checkpoint.load(path)["t"]
    itemsize = storage.itemsize
    expected = (
        np.lib.stride_tricks.as_strided(
            storage[offset:] if offset < numel else storage[:0], shape=size, strides=[s * itemsize for s in stride]
        )
        if 0 not in size
        else np.empty(size, storage.dtype)
    )
    assert loaded.shape == tuple(size) and loaded.dtype == storage.dtype
    np.testing.assert_array_equal(loaded, expected)


# ---------------------------------------------------------------------------------------------
# Deep nesting: refused exactly when deeper than the unpickler's 256 levels, whatever the mix of
# containers (depths up to ~600 are harmless even if the limit regressed, so this runs in-process;
# the million-level files are in test_checkpoint_hostile.py, read in a memory-limited child)

MAX_DEPTH = 256
WRAPS = ["tuple", "list", "dict value", "dict key", "frozenset", "builtins.tuple"]


def text_op(s: str) -> bytes:
    return b"X" + struct.pack("<I", len(s)) + s.encode()


def wrap(inner: bytes, kind: str) -> bytes:
    """Opcodes that put the object ``inner`` pushes one container deeper."""
    if kind == "tuple":
        return inner + b"\x85"
    if kind == "list":
        return b"]" + inner + b"a"
    if kind == "dict value":
        return b"}" + text_op("k") + inner + b"s"
    if kind == "dict key":
        return b"}" + inner + push(1) + b"s"
    if kind == "frozenset":
        return b"(" + inner + b"\x91"
    return b"cbuiltins\ntuple\n]" + inner + b"a\x85R"  # tuple([inner])


def expected_failure(kinds) -> str | None:
    """What must go wrong building ``kinds`` around () inside {"w": ..., "t": tensor}, if anything."""
    hashable = True
    for level, kind in enumerate(kinds, start=2):  # () is level 1
        if kind in ("dict key", "frozenset") and not hashable:
            return "unhashable"
        if level > MAX_DEPTH:
            return "nested deeper than 256 levels"
        hashable = kind in ("tuple", "frozenset", "builtins.tuple") and hashable
    return "nested deeper than 256 levels" if len(kinds) + 2 > MAX_DEPTH else None


@FUZZ
@given(
    kinds=st.lists(st.sampled_from(WRAPS), max_size=600)
    | st.integers(240, 270).flatmap(lambda n: st.lists(st.sampled_from(WRAPS), min_size=n, max_size=n))
)
def test_nesting_loads_exactly_when_within_256_levels(workdir, kinds):
    value = b")"
    for kind in kinds:
        value = wrap(value, kind)
    tensor, _ = one_tensor_checkpoint("F32", 4, 0, (4,), (1,))
    tensor_ops = pickle_of(tensor)[3 + len(push("t")) : -2]
    pkl = b"\x80\x02}" + text_op("w") + value + b"s" + text_op("t") + tensor_ops + b"s."
    path = workdir / "nested.ckpt"
    path.write_bytes(rezip_with_pickle(tensor, pkl))
    failure = expected_failure(kinds)
    if failure is None:
        assert checkpoint.open_checkpoint(path).keys() == ["t"]
    else:
        with pytest.raises(CheckpointError, match=failure):
            checkpoint.open_checkpoint(path)


# ---------------------------------------------------------------------------------------------
# Lying sizes: a declared length, size or offset is checked against the bytes present before
# anything is allocated, so reading never allocates more than a few times the file's size

LENGTH_OPCODES = {  # opcode -> (name, length field)
    b"T": ("BINSTRING", "<i"),
    b"U": ("SHORT_BINSTRING", "<B"),
    b"B": ("BINBYTES", "<I"),
    b"C": ("SHORT_BINBYTES", "<B"),
    b"\x8e": ("BINBYTES8", "<Q"),
    b"X": ("BINUNICODE", "<I"),
    b"\x8c": ("SHORT_BINUNICODE", "<B"),
    b"\x8d": ("BINUNICODE8", "<Q"),
    b"\x96": ("BYTEARRAY8", "<Q"),
    b"\x8a": ("LONG1", "<B"),
    b"\x8b": ("LONG4", "<i"),
    b"\x95": ("FRAME", "<Q"),
}
FIELD_RANGE = {"<B": (0, 255), "<i": (0, 2**31 - 1), "<I": (0, 2**32 - 1), "<Q": (0, 2**64 - 1)}
LIE = st.sampled_from(sorted(LENGTH_OPCODES)).flatmap(
    lambda op: st.tuples(
        st.just(op),
        st.one_of(st.integers(0, 64), st.integers(*FIELD_RANGE[LENGTH_OPCODES[op][1]])),  # declared
        st.binary(max_size=64),  # bytes after
    )
)


def peak_allocation(read) -> int:
    """Peak bytes Python allocated while ``read()`` ran (bytearray, bytes, str and ints included)."""
    tracemalloc.start()
    try:
        read()
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return peak


def load_or_checkpoint_error(path: pathlib.Path):
    try:
        return checkpoint.load(path)
    except CheckpointError as e:
        return e


@FUZZ
@given(lie=LIE)
def test_a_length_field_claiming_more_than_the_pickle_holds_is_refused_before_allocating(workdir, lie):
    opcode, declared, after = lie
    name, field = LENGTH_OPCODES[opcode]
    value = opcode + struct.pack(field, declared) + after
    pkl = b"\x80\x04}" + text_op("w") + value + b"s."
    path = workdir / "lie.ckpt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pkl)
    outcomes = []
    peak = peak_allocation(lambda: outcomes.append(load_or_checkpoint_error(path)))
    assert peak < 4 << 20, f"{name} declaring {declared} made the reader allocate {peak} bytes"
    follow = len(after) + 2  # "s." close the pickle
    if declared > follow:
        assert isinstance(outcomes[0], CheckpointError)
        assert f"{name} at byte 9 declares {declared} bytes but only {follow} follow" in str(outcomes[0])


SIZE_LIE = st.one_of(st.integers(0, 64), st.integers(0, 2**64 - 1), st.sampled_from([2**32 - 1, 2**63, 2**64 - 1]))


@FUZZ
@given(
    member=st.sampled_from(["archive/data.pkl", "archive/data/0"]),
    field=st.sampled_from(["size", "offset"]),
    value=SIZE_LIE.filter(lambda v: v < 2**32),
)
def test_zip_members_whose_size_or_offset_lies_are_refused_before_reading(workdir, member, field, value):
    data, _ = one_tensor_checkpoint("F32", 4, 0, (4,), (1,))
    out = bytearray(data)
    name = member.encode()
    central = out.rindex(b"PK\x01\x02", 0, out.rindex(name))
    if field == "size":
        out[central + 20 : central + 28] = struct.pack("<II", value, value)
    else:
        out[central + 42 : central + 46] = struct.pack("<I", value)
    path = workdir / "ziplie.ckpt"
    path.write_bytes(bytes(out))
    assert peak_allocation(lambda: read_everything(path)) < 4 << 20


@FUZZ
@given(shape=st.lists(SIZE_LIE, min_size=0, max_size=4), begin=SIZE_LIE, end=SIZE_LIE, header_size=SIZE_LIE)
def test_safetensors_whose_shape_offsets_or_header_size_lie_are_refused_before_allocating(
    workdir, shape, begin, end, header_size
):
    blob = json.dumps({"a": {"dtype": "F32", "shape": shape, "data_offsets": [begin, end]}}).encode()
    for size in (len(blob), header_size):
        path = workdir / "lie.safetensors"
        path.write_bytes(struct.pack("<Q", size) + blob + bytes(16))
        assert peak_allocation(functools.partial(read_everything, path)) < 4 << 20


@FUZZ
@given(numel=SIZE_LIE, offset=SIZE_LIE, size=st.lists(SIZE_LIE, min_size=1, max_size=3), stride_zero=st.booleans())
def test_tensor_geometry_that_lies_is_refused_or_stays_a_view(workdir, numel, offset, size, stride_zero):
    stride = [0] * len(size) if stride_zero else [1] * len(size)
    data, _ = one_tensor_checkpoint("F32", 4, 0, (4,), (1,))
    pid = b"(" + push("storage") + b"ctorch\nFloatStorage\n" + push("0") + push("cpu") + push(numel) + b"tQ"
    tensor = (
        b"ctorch._utils\n_rebuild_tensor_v2\n("
        + pid
        + push(offset)
        + push(tuple(size))
        + push(tuple(stride))
        + b"\x89ccollections\nOrderedDict\n)RtR"
    )
    path = workdir / "geometry_lie.ckpt"
    path.write_bytes(rezip_with_pickle(data, b"\x80\x02}" + push("t") + tensor + b"s."))
    outcomes = []
    assert peak_allocation(lambda: outcomes.append(load_or_checkpoint_error(path))) < 4 << 20
    if not isinstance(outcomes[0], CheckpointError):
        array = outcomes[0]["t"]
        assert array.base is not None and not array.flags.owndata  # a view of the file, never a copy
