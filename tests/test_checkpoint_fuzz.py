"""Fuzzing both readers: mutated valid files either load or raise CheckpointError, nothing else.

Bounded and derandomized so CI runs the same cases every time. Five targets, each 300 cases:
raw bytes of a .ckpt, its data.pkl re-zipped with a valid CRC (so the unpickler is reached),
raw bytes of a .safetensors, its JSON header with the size field kept consistent, and random
tensor geometry (offset, shape, strides, storage size), which must load exactly when it lies
inside its storage.
"""

from __future__ import annotations

import argparse
import io
import pathlib
import pickle
import struct
import zipfile

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asymvq import checkpoint
from asymvq.checkpoint import CheckpointError

CASES = 300
FUZZ = settings(max_examples=CASES, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def small_ckpt() -> bytes:
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    state = {
        "state_dict": {
            "w": base, "wt": base.t(), "tail": base.view(12)[5:],
            "h": torch.ones(3, dtype=torch.bfloat16), "b": torch.tensor([True, False]),
            "i": torch.arange(3, dtype=torch.int64), "nested": [torch.zeros(2, dtype=torch.int8)],
        },
        "global_step": 7,
        "hyper_parameters": argparse.Namespace(lr=0.1),
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def small_safetensors(tmp_dir: pathlib.Path) -> bytes:
    path = tmp_dir / "base.safetensors"
    checkpoint.save_safetensors(path, {
        "w": np.arange(12, dtype=np.float32).reshape(3, 4), "h": np.ones(3, np.float16),
        "bf": np.ones(2, checkpoint.BF16), "b": np.array([True, False]), "i": np.arange(3),
    }, {"k": "v"})
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
            out[at:at + len(arg)] = arg
        elif kind == "delete":
            del out[at:at + arg]
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
def test_mutated_safetensors_header_loads_or_raises_checkpoint_error(workdir, safetensors_bytes,
                                                                     mutations):
    (size,) = struct.unpack("<Q", safetensors_bytes[:8])
    header = mutate(safetensors_bytes[8:8 + size], mutations)
    path = workdir / "fuzz_header.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + safetensors_bytes[8 + size:])
    read_everything(path)


# ---------------------------------------------------------------------------------------------
# Tensor geometry: loads exactly when inside the storage, and then equals NumPy's strided view

STORAGES = {"F32": "FloatStorage", "F16": "HalfStorage", "BF16": "BFloat16Storage",
            "F64": "DoubleStorage", "I64": "LongStorage", "I32": "IntStorage",
            "I16": "ShortStorage", "I8": "CharStorage", "U8": "ByteStorage", "BOOL": "BoolStorage"}
NUMPY = {"F32": "<f4", "F16": "<f2", "BF16": "<u2", "F64": "<f8", "I64": "<i8", "I32": "<i4",
         "I16": "<i2", "I8": "i1", "U8": "u1", "BOOL": "?"}


def push(value) -> bytes:
    return pickle.dumps(value, protocol=2)[2:-1]


def one_tensor_checkpoint(tag: str, numel: int, offset: int, size, stride) -> tuple[bytes, np.ndarray]:
    """A torch.save-like zip holding {"t": tensor}, and its storage as a NumPy array."""
    storage = (np.arange(numel) % 2).astype(bool) if tag == "BOOL" else np.arange(numel).astype(NUMPY[tag])
    pid = (b"(" + push("storage") + f"ctorch\n{STORAGES[tag]}\n".encode() + push("0") + push("cpu")
           + push(numel) + b"tQ")
    tensor = (b"ctorch._utils\n_rebuild_tensor_v2\n(" + pid + push(offset) + push(tuple(size))
              + push(tuple(stride)) + b"\x89ccollections\nOrderedDict\n)RtR")
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        z.writestr("archive/data.pkl", b"\x80\x02}" + push("t") + tensor + b"s.")
        z.writestr("archive/data/0", storage.tobytes())
    return out.getvalue(), storage


GEOMETRY = st.integers(0, 4).flatmap(lambda ndim: st.tuples(
    st.sampled_from(sorted(STORAGES)),
    st.integers(0, 64),                                    # storage elements
    st.integers(-2, 80),                                   # storage offset
    st.lists(st.integers(-1, 8), min_size=ndim, max_size=ndim),
    st.lists(st.integers(-1, 20), min_size=ndim, max_size=ndim),
))


@FUZZ
@given(geometry=GEOMETRY)
def test_tensor_geometry_loads_exactly_when_inside_its_storage(workdir, geometry):
    tag, numel, offset, size, stride = geometry
    data, storage = one_tensor_checkpoint(tag, numel, offset, size, stride)
    path = workdir / "geometry.ckpt"
    path.write_bytes(data)
    valid = min([offset, *size, *stride]) >= 0 and (
        offset <= numel if 0 in size else offset + sum((d - 1) * s for d, s in zip(size, stride)) < numel)
    if not valid:
        with pytest.raises(CheckpointError):
            checkpoint.load(path)
        return
    loaded = checkpoint.load(path)["t"]
    itemsize = storage.itemsize
    expected = np.lib.stride_tricks.as_strided(
        storage[offset:] if offset < numel else storage[:0], shape=size,
        strides=[s * itemsize for s in stride]) if 0 not in size else np.empty(size, storage.dtype)
    assert loaded.shape == tuple(size) and loaded.dtype == storage.dtype
    np.testing.assert_array_equal(loaded, expected)
