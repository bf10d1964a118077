"""asymvq.checkpoint reads what torch.save and safetensors write, without PyTorch and without copies.

PyTorch and the safetensors package are the references here; the reader never imports them.
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import os
import pathlib
import pickle
import struct
import types
import zipfile

import numpy as np
import pytest
import safetensors.numpy
import safetensors.torch
import torch

from asymvq import checkpoint
from asymvq.io import safetensors as st_mod
from asymvq.checkpoint import CheckpointError

# torch dtype -> (tag, numpy dtype the reader returns)
DTYPES = {
    torch.float32: ("F32", np.float32),
    torch.float16: ("F16", np.float16),
    torch.bfloat16: ("BF16", np.uint16),
    torch.float64: ("F64", np.float64),
    torch.int64: ("I64", np.int64),
    torch.int32: ("I32", np.int32),
    torch.int16: ("I16", np.int16),
    torch.int8: ("I8", np.int8),
    torch.uint8: ("U8", np.uint8),
    torch.bool: ("BOOL", np.bool_),
}


def sample(dtype: torch.dtype, shape=(3, 5), seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.bool:
        return torch.rand(shape, generator=g) > 0.5
    if dtype.is_floating_point:
        return (torch.randn(shape, generator=g) * 100).to(dtype)
    info = torch.iinfo(dtype)
    return torch.randint(info.min, info.max, shape, generator=g, dtype=torch.int64).to(dtype)


def as_numpy(t: torch.Tensor) -> np.ndarray:
    """The reference value, in the form the reader returns (bf16 as uint16 bits)."""
    if t.dtype == torch.bfloat16:
        return t.contiguous().view(torch.int16).numpy().view(np.uint16)
    return t.numpy()


def save(tmp_path: pathlib.Path, obj, name: str = "model.ckpt") -> pathlib.Path:
    path = tmp_path / name
    torch.save(obj, path)
    return path


def assert_same(array: np.ndarray, reference: torch.Tensor) -> None:
    expected = as_numpy(reference)
    assert array.dtype == expected.dtype
    assert array.shape == expected.shape
    np.testing.assert_array_equal(array, expected)


# ---------------------------------------------------------------------------------------------
# .ckpt written by torch.save

@pytest.mark.parametrize("dtype", list(DTYPES), ids=[str(d) for d in DTYPES])
def test_every_supported_dtype_reads_back_as_torch_load_sees_it(tmp_path, dtype):
    path = save(tmp_path, {"t": sample(dtype)})
    reference = torch.load(path, weights_only=True)["t"]
    loaded = checkpoint.load(path)
    assert_same(loaded["t"], reference)
    assert checkpoint.dtype_of(loaded["t"]) == DTYPES[dtype][0]
    assert checkpoint.open_checkpoint(path).info("t") == checkpoint.TensorInfo(
        DTYPES[dtype][0], (3, 5), 15 * reference.element_size())


def test_bf16_comes_back_as_tagged_uint16_bits(tmp_path):
    t = torch.tensor([1.0, -2.5, 3.140625], dtype=torch.bfloat16)
    array = checkpoint.load(save(tmp_path, {"t": t}))["t"]
    assert array.dtype == np.uint16 and array.dtype == checkpoint.BF16
    assert array.dtype.metadata == {"asymvq.dtype": "BF16"}
    np.testing.assert_array_equal(checkpoint.bf16_to_float32(array), [1.0, -2.5, 3.140625])


def test_transposed_and_sliced_tensors_keep_their_strides(tmp_path):
    base = sample(torch.float32, (6, 8))
    tensors = {"t": base.t(), "rows": base[2:5], "cols": base[:, 3:7], "step": base[::2, 1::3]}
    loaded = checkpoint.load(save(tmp_path, tensors))
    for name, t in tensors.items():
        assert_same(loaded[name], t)
        assert loaded[name].strides == tuple(s * 4 for s in t.stride())


def test_storage_offsets_are_honoured(tmp_path):
    flat = torch.arange(100, dtype=torch.int64)
    loaded = checkpoint.load(save(tmp_path, {"tail": flat[37:], "middle": flat[10:20].view(2, 5)}))
    assert_same(loaded["tail"], flat[37:])
    assert_same(loaded["middle"], flat[10:20].view(2, 5))


def test_tensors_sharing_a_storage_are_views_of_the_same_bytes(tmp_path):
    base = sample(torch.float16, (4, 4))
    loaded = checkpoint.load(save(tmp_path, {"a": base, "b": base[1:].t(), "c": base.view(16)}))
    assert np.shares_memory(loaded["a"], loaded["b"])
    assert np.shares_memory(loaded["a"], loaded["c"])
    assert_same(loaded["b"], base[1:].t())


def test_expanded_scalar_and_empty_tensors_read_back(tmp_path):
    tensors = {
        "expanded": torch.tensor([1.5, 2.5]).view(2, 1).expand(2, 3),
        "scalar": torch.tensor(7, dtype=torch.int32),
        "empty": torch.empty(0, 5),
    }
    loaded = checkpoint.load(save(tmp_path, tensors))
    for name, t in tensors.items():
        assert_same(loaded[name], t)
    assert loaded["expanded"].strides == (4, 0)


def test_nested_containers_are_flattened_with_dotted_names(tmp_path):
    a, b, c = (sample(torch.float32, (2,), seed) for seed in range(3))
    state = {"enc": {"conv": {"weight": a}}, "blocks": [b, {"bias": c}], "pair": (a, b)}
    loaded = checkpoint.load(save(tmp_path, state))
    assert list(loaded) == ["enc.conv.weight", "blocks.0", "blocks.1.bias", "pair.0", "pair.1"]
    assert_same(loaded["blocks.1.bias"], c)
    assert_same(loaded["pair.0"], a)


def test_parameters_read_back_as_their_data(tmp_path):
    plain = torch.nn.Parameter(sample(torch.float32, (3,)))
    with_state = torch.nn.Parameter(sample(torch.float32, (2,), seed=1))
    with_state.note = "python attribute"  # torch.save then uses _rebuild_parameter_with_state
    loaded = checkpoint.load(save(tmp_path, {"plain": plain, "with_state": with_state}))
    assert_same(loaded["plain"], plain.detach())
    assert_same(loaded["with_state"], with_state.detach())


def test_module_state_dict_with_its_metadata_attribute_reads_back(tmp_path):
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.GroupNorm(2, 4))
    state = model.state_dict()
    loaded = checkpoint.load(save(tmp_path, state))
    assert list(loaded) == list(state)
    for name, t in state.items():
        assert_same(loaded[name], t)


class TrainingCallback:
    """Stands for the classes a Lightning checkpoint pickles (callbacks, loops, configs)."""

    def __init__(self) -> None:
        self.best = torch.tensor(0.25)
        self.history = collections.OrderedDict(a=1)


def lightning_checkpoint() -> tuple[dict, dict]:
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    state = {"weight": model.weight.detach().clone(), "bias": model.bias.detach().clone()}
    ckpt = {
        "epoch": 3,
        "global_step": 1234,
        "pytorch-lightning_version": "1.4.2",
        "state_dict": collections.OrderedDict(state),
        "optimizer_states": [optimizer.state_dict()],
        "lr_schedulers": [],
        "callbacks": {TrainingCallback: TrainingCallback()},
        "hyper_parameters": {
            "args": argparse.Namespace(lr=1e-4, out=pathlib.Path("/data/run")),
            "log_dir": pathlib.PurePosixPath("/logs"),
            "dtype": torch.float16,
            "device": torch.device("cpu"),
            "tags": {"vq", "asym"},
            "blob": b"\x00\xffbytes",
            "optimizer": functools.partial(torch.optim.Adam, lr=1e-4),
            "extra": types.SimpleNamespace(beta=0.5),
        },
        "numpy_state": {"rng": np.random.RandomState(0).get_state(), "score": np.float64(0.5)},
    }
    return ckpt, state


def test_lightning_checkpoint_yields_its_state_dict_and_lists_the_rest(tmp_path):
    ckpt, state = lightning_checkpoint()
    opened = checkpoint.open_checkpoint(save(tmp_path, ckpt))
    assert opened.keys() == ["weight", "bias"]
    for name, t in state.items():
        assert_same(opened.get(name), t)
    assert opened.other_entries == ("epoch", "global_step", "pytorch-lightning_version",
                                    "optimizer_states", "lr_schedulers", "callbacks",
                                    "hyper_parameters", "numpy_state")
    assert opened.skipped == {}


def test_non_tensor_entries_of_a_state_dict_are_skipped_with_a_reason(tmp_path):
    state = {"w": torch.ones(2), "step": 5, "args": argparse.Namespace(a=1),
             "complex": torch.ones(2, dtype=torch.complex64), "u16": torch.ones(2, dtype=torch.uint16)}
    opened = checkpoint.open_checkpoint(save(tmp_path, state))
    assert opened.keys() == ["w"]
    assert opened.skipped["step"] == "a value of type int"
    assert "argparse.Namespace" in opened.skipped["args"]
    assert "ComplexFloatStorage" in opened.skipped["complex"]
    assert "torch.uint16" in opened.skipped["u16"]


def test_load_refuses_a_checkpoint_that_is_not_a_dict(tmp_path):
    with pytest.raises(CheckpointError, match="holds a tensor, not a dict of tensors"):
        checkpoint.load(save(tmp_path, torch.ones(3)))


def test_arrays_are_read_only_views_of_the_memory_mapped_file(tmp_path):
    path = save(tmp_path, {"t": torch.zeros(1000)})
    array = checkpoint.load(path)["t"]
    assert not array.flags.writeable and not array.flags.owndata
    base = array
    while not isinstance(base, np.memmap):
        base = base.base
    assert base.filename == str(path.resolve())
    with pytest.raises(ValueError):
        array[0] = 1.0


def test_arrays_see_later_writes_to_the_file_because_nothing_was_copied(tmp_path):
    path = save(tmp_path, {"t": torch.zeros(1000)})
    array = checkpoint.load(path)["t"]
    offset = array.__array_interface__["data"][0] - np.asarray(array.base).__array_interface__["data"][0]
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(struct.pack("<f", 42.0))
    assert array[0] == 42.0


def test_legacy_format_error_says_how_to_resave(tmp_path):
    path = tmp_path / "old.ckpt"
    torch.save({"t": torch.ones(2)}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError, match="legacy") as err:
        checkpoint.load(path)
    assert "torch.save(torch.load(" in str(err.value) and "python -m asymvq convert" in str(err.value)


def test_compressed_storages_are_refused_with_advice(tmp_path):
    path = save(tmp_path, {"t": torch.ones(64)})
    rezipped = tmp_path / "rezipped.ckpt"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(rezipped, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info.filename))
    with pytest.raises(CheckpointError, match="compressed") as err:
        checkpoint.load(rezipped)
    assert "torch.save" in str(err.value)


def test_big_endian_checkpoints_are_refused(tmp_path):
    path = save(tmp_path, {"t": torch.ones(2)})
    data = path.read_bytes()
    at = data.index(b"little", data.index(b"model/byteorder"))  # the member's bytes
    path.write_bytes(data[:at] + b"big\x00\x00\x00" + data[at + 6:])
    with pytest.raises(CheckpointError, match="little-endian"):
        checkpoint.load(path)


def test_missing_file_is_a_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="cannot open"):
        checkpoint.load(tmp_path / "absent.ckpt")


def test_format_is_recognised_from_the_bytes_not_the_extension(tmp_path):
    ckpt = save(tmp_path, {"t": torch.ones(2)}, name="weights.safetensors")
    safe = tmp_path / "weights.ckpt"
    checkpoint.save_safetensors(safe, {"t": np.ones(2, np.float32)})
    with pytest.warns(UserWarning, match="suffix .safetensors says .safetensors but the content is a "
                                         r"torch.save zip \(.ckpt\); reading it as such"):
        assert checkpoint.open_checkpoint(ckpt).format == "ckpt"
    with pytest.warns(UserWarning, match=r"suffix .ckpt says a torch.save zip \(.ckpt\) but the content "
                                         "is .safetensors"):
        assert checkpoint.open_checkpoint(safe).format == "safetensors"


# ---------------------------------------------------------------------------------------------
# Recognising the format from the bytes (issue 18: the first byte alone is ambiguous)

FORMAT_TENSORS = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.arange(3, dtype=np.int64)}


def header_length(path: pathlib.Path) -> int:
    return struct.unpack("<Q", path.read_bytes()[:8])[0]


def written_with_header_length_low_byte(path: pathlib.Path, low: int, write) -> pathlib.Path:
    """A file written by ``write(path, metadata)`` whose header length ends in the byte ``low``."""
    for pad in range(512):
        write(path, {"pad": "x" * pad})
        if header_length(path) % 256 == low:
            return path
    raise AssertionError(f"no metadata length gives a header length ending in {low:#04x}")


def hand_built_safetensors(low: int) -> bytes:
    """An unpadded (valid) .safetensors file whose header length ends in the byte ``low``."""
    data = b"".join(a.tobytes() for a in FORMAT_TENSORS.values())
    entries = {"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
               "b": {"dtype": "I64", "shape": [3], "data_offsets": [24, 48]}}
    for pad in range(1024):
        blob = json.dumps({"__metadata__": {"pad": "x" * pad}, **entries}).encode()
        if len(blob) % 256 == low:
            return struct.pack("<Q", len(blob)) + blob + data
    raise AssertionError(low)


def assert_format_tensors(loaded) -> None:
    assert sorted(loaded) == sorted(FORMAT_TENSORS)
    for name, expected in FORMAT_TENSORS.items():
        np.testing.assert_array_equal(loaded[name], expected)


@pytest.mark.parametrize("low", range(0, 256, 8), ids=lambda b: f"{b:#04x}")
def test_safetensors_written_by_asymvq_is_read_whatever_the_low_byte_of_its_header_length(tmp_path, low):
    # asymvq pads headers to 8 bytes, so only multiples of 8 occur; 0x80 is the one in 32 that failed
    path = written_with_header_length_low_byte(
        tmp_path / "a.safetensors", low, lambda p, m: checkpoint.save_safetensors(p, FORMAT_TENSORS, m))
    assert header_length(path) % 256 == low
    assert checkpoint.open_checkpoint(path).format == "safetensors"
    assert_format_tensors(checkpoint.load(path))
    assert_format_tensors(safetensors.numpy.load_file(path))


@pytest.mark.parametrize("low", range(0, 256, 8), ids=lambda b: f"{b:#04x}")
def test_safetensors_written_by_the_reference_package_is_read_whatever_the_low_byte(tmp_path, low):
    path = written_with_header_length_low_byte(
        tmp_path / "a.safetensors", low, lambda p, m: safetensors.numpy.save_file(FORMAT_TENSORS, p, m))
    assert header_length(path) % 256 == low
    assert_format_tensors(checkpoint.load(path))


@pytest.mark.parametrize("suffix", [".safetensors", ".bin"])
@pytest.mark.parametrize("low", range(256), ids=lambda b: f"{b:#04x}")
def test_unpadded_safetensors_is_read_for_every_low_byte_of_its_header_length(tmp_path, low, suffix):
    path = tmp_path / f"a{suffix}"
    path.write_bytes(hand_built_safetensors(low))
    assert header_length(path) % 256 == low
    assert_format_tensors(safetensors.numpy.load_file(path))  # the reference reads it too
    assert_format_tensors(checkpoint.load(path))


def test_the_reported_header_length_124800_is_read(tmp_path):
    path = tmp_path / "issue18.safetensors"
    for pad in range(124800):
        checkpoint.save_safetensors(path, FORMAT_TENSORS, {"pad": "x" * (124800 - 160 + pad)})
        if header_length(path) >= 124800:
            break
    assert header_length(path) == 124800 == 0x1E780
    assert_format_tensors(checkpoint.load(path))
    assert_format_tensors(safetensors.numpy.load_file(path))


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
@pytest.mark.parametrize("suffix", [".ckpt", ".pt", ".bin"])
def test_legacy_torch_files_are_recognised_by_their_magic_number(tmp_path, protocol, suffix):
    path = tmp_path / f"old{suffix}"
    torch.save({"t": torch.ones(2)}, path, _use_new_zipfile_serialization=False, pickle_protocol=protocol)
    with pytest.raises(CheckpointError, match=r"old\.\w+ uses PyTorch's legacy \(pre-1.6, non-zip\) format"):
        checkpoint.load(path)


def test_legacy_file_named_safetensors_gets_the_legacy_message_and_a_warning(tmp_path):
    path = tmp_path / "old.safetensors"
    torch.save({"t": torch.ones(2)}, path, _use_new_zipfile_serialization=False)
    with pytest.warns(UserWarning, match="suffix .safetensors says .safetensors but the content is PyTorch's "
                                         "legacy"):
        with pytest.raises(CheckpointError, match="legacy"):
            checkpoint.load(path)


@pytest.mark.parametrize("suffix", [".ckpt", ".pt", ".pth", ".bin", ""])
def test_torch_save_zips_are_read_under_any_torch_suffix_without_warning(tmp_path, suffix, recwarn):
    path = tmp_path / f"model{suffix}"
    torch.save({"t": torch.arange(3.0)}, path)
    np.testing.assert_array_equal(checkpoint.load(path)["t"], [0, 1, 2])
    assert not [w for w in recwarn if "suffix" in str(w.message)]


def test_safetensors_content_named_ckpt_is_read_as_safetensors_with_a_warning(tmp_path):
    path = tmp_path / "weights.ckpt"
    checkpoint.save_safetensors(path, FORMAT_TENSORS)
    with pytest.warns(UserWarning, match=r"weights.ckpt: the suffix .ckpt says a torch.save zip \(.ckpt\) but "
                                         "the content is .safetensors; reading it as such"):
        assert_format_tensors(checkpoint.load(path))


NOT_CHECKPOINTS = {
    "text": b"hello world, not a model at all",
    "one byte 0x80": b"\x80",
    "PROTO then garbage": b"\x80\x02" + bytes(40),
    "bare pickle": pickle.dumps({"t": [1.0, 2.0]}, protocol=2),
    "bare pickle protocol 4": pickle.dumps({"t": [1.0, 2.0]}, protocol=4),
    "plausible length, no brace": struct.pack("<Q", 16) + b"[" + bytes(23),
    "length 0": struct.pack("<Q", 0) + b"{}" + bytes(16),
    "length 7": struct.pack("<Q", 7) + b"{\"a\":1}" + bytes(16),
    "length past the end": struct.pack("<Q", 1000) + b"{" + bytes(50),
    "empty zip": b"PK\x05\x06" + bytes(18),
    "gzip": b"\x1f\x8b\x08\x00" + bytes(40),
    "legacy magic with another number": b"\x80\x02\x8a\x0a" + bytes(10) + b"." + bytes(20),
}


@pytest.mark.parametrize("data", NOT_CHECKPOINTS.values(), ids=NOT_CHECKPOINTS.keys())
def test_files_of_no_known_format_are_a_clear_checkpoint_error(tmp_path, data):
    path = tmp_path / "thing.bin"
    path.write_bytes(data)
    with pytest.raises(CheckpointError, match=r"thing\.bin: not a checkpoint: the file is "):
        checkpoint.load(path)


def test_a_bare_pickle_is_named_as_such(tmp_path):
    path = tmp_path / "state.pkl"
    path.write_bytes(pickle.dumps({"t": [1.0]}, protocol=2))
    with pytest.raises(CheckpointError, match="a bare pickle .*nothing in it was run"):
        checkpoint.load(path)


@pytest.mark.parametrize("data, error", [
    (b"\x80", "too short"),
    (struct.pack("<Q", 16) + b"[" + bytes(23), "not valid JSON"),
    (struct.pack("<Q", 1000) + b"{" + bytes(50), "header claims 1000 bytes"),
    (struct.pack("<Q", 8) + b"  {}    ", "must begin with '{'"),
])
def test_a_file_named_safetensors_of_no_known_format_gets_the_safetensors_diagnosis(tmp_path, data, error):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(data)
    with pytest.raises(CheckpointError, match=error):
        checkpoint.load(path)


# ---------------------------------------------------------------------------------------------
# .safetensors

NUMPY_DTYPES = [np.float32, np.float16, np.float64, np.int64, np.int32, np.int16, np.int8,
                np.uint8, np.bool_]


def numpy_sample(dtype, shape=(4, 3), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if dtype is np.bool_:
        return rng.random(shape) > 0.5
    if np.issubdtype(dtype, np.floating):
        return (rng.standard_normal(shape) * 100).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)


def numpy_tensors() -> dict[str, np.ndarray]:
    tensors = {np.dtype(d).name: numpy_sample(d, seed=i) for i, d in enumerate(NUMPY_DTYPES)}
    tensors["scalar"] = np.array(3.5, np.float32)
    tensors["empty"] = np.zeros((0, 7), np.float16)
    return tensors


def test_safetensors_written_by_the_reference_package_read_back_identically(tmp_path):
    tensors = numpy_tensors()
    safetensors.numpy.save_file(tensors, tmp_path / "ref.safetensors", metadata={"k": "v"})
    loaded, metadata = checkpoint.load_safetensors(tmp_path / "ref.safetensors")
    assert metadata == {"k": "v"}
    assert set(loaded) == set(tensors)
    for name, array in tensors.items():
        assert loaded[name].dtype == array.dtype and loaded[name].shape == array.shape
        np.testing.assert_array_equal(loaded[name], array)


def test_safetensors_we_write_are_read_back_identically_by_the_reference_package(tmp_path):
    tensors = numpy_tensors()
    checkpoint.save_safetensors(tmp_path / "ours.safetensors", tensors, {"format": "asymvq"})
    loaded = safetensors.numpy.load_file(tmp_path / "ours.safetensors")
    assert set(loaded) == set(tensors)
    for name, array in tensors.items():
        assert loaded[name].dtype == array.dtype and loaded[name].shape == array.shape
        np.testing.assert_array_equal(loaded[name], array)
    with safetensors.safe_open(tmp_path / "ours.safetensors", "np") as f:
        assert f.metadata() == {"format": "asymvq"}


def test_bf16_safetensors_round_trip_with_the_reference_package_both_ways(tmp_path):
    t = sample(torch.bfloat16, (5, 2))
    safetensors.torch.save_file({"t": t}, tmp_path / "ref.safetensors")
    loaded, _ = checkpoint.load_safetensors(tmp_path / "ref.safetensors")
    assert_same(loaded["t"], t)
    assert checkpoint.dtype_of(loaded["t"]) == "BF16"
    checkpoint.save_safetensors(tmp_path / "ours.safetensors", loaded)
    back = safetensors.torch.load_file(tmp_path / "ours.safetensors")["t"]
    assert back.dtype == torch.bfloat16 and torch.equal(back, t)


def test_bf16_bits_can_be_saved_as_a_pair_with_their_tag(tmp_path):
    bits = as_numpy(sample(torch.bfloat16, (3,)))
    assert bits.dtype.metadata is None
    checkpoint.save_safetensors(tmp_path / "a.safetensors", {"t": (bits, "BF16")})
    opened = checkpoint.open_checkpoint(tmp_path / "a.safetensors")
    assert opened.info("t").dtype == "BF16"
    np.testing.assert_array_equal(opened.get("t"), bits)


def test_ckpt_to_safetensors_round_trip_preserves_every_dtype(tmp_path):
    tensors = {str(d): sample(d, (2, 3)) for d in DTYPES}
    loaded = checkpoint.load(save(tmp_path, tensors))
    checkpoint.save_safetensors(tmp_path / "out.safetensors", loaded)
    again, _ = checkpoint.load_safetensors(tmp_path / "out.safetensors")
    for name, t in tensors.items():
        assert_same(again[name], t)
        assert checkpoint.dtype_of(again[name]) == checkpoint.dtype_of(loaded[name])


def test_non_contiguous_arrays_are_written_in_c_order(tmp_path):
    base = np.arange(60, dtype=np.int32).reshape(6, 10)
    tensors = {"t": base.T, "s": base[::2, 3:8], "f": np.asfortranarray(base)}
    checkpoint.save_safetensors(tmp_path / "a.safetensors", tensors)
    loaded = safetensors.numpy.load_file(tmp_path / "a.safetensors")
    for name, array in tensors.items():
        np.testing.assert_array_equal(loaded[name], array)


def test_big_endian_arrays_are_written_little_endian(tmp_path):
    checkpoint.save_safetensors(tmp_path / "a.safetensors", {"t": np.arange(4, dtype=">f4")})
    loaded = safetensors.numpy.load_file(tmp_path / "a.safetensors")
    np.testing.assert_array_equal(loaded["t"], [0, 1, 2, 3])


def test_header_is_space_padded_to_8_bytes_and_tensors_are_aligned(tmp_path):
    tensors = {"a_byte": np.ones(3, np.uint8), "b_double": np.ones(3, np.float64),
               "c_half": np.ones(1, np.float16), "d_float": np.ones(5, np.float32)}
    path = tmp_path / "a.safetensors"
    checkpoint.save_safetensors(path, tensors, {"note": "é"})
    data = path.read_bytes()
    (size,) = struct.unpack("<Q", data[:8])
    assert size % 8 == 0
    header = data[8:8 + size]
    assert header.rstrip(b" ") == header.rstrip() and header.rstrip(b" ").endswith(b"}")
    parsed = json.loads(header)
    assert parsed["__metadata__"] == {"note": "é"}
    for name, array in tensors.items():
        begin, end = parsed[name]["data_offsets"]
        assert (8 + size + begin) % array.itemsize == 0 and end - begin == array.nbytes


def test_safetensors_metadata_reads_only_the_header(tmp_path):
    path = tmp_path / "a.safetensors"
    checkpoint.save_safetensors(path, {"t": np.ones(2, np.float32)}, {"config": "yaml text"})
    assert checkpoint.safetensors_metadata(path) == {"config": "yaml text"}
    assert checkpoint.open_checkpoint(path).metadata == {"config": "yaml text"}


def test_safetensors_arrays_are_read_only_views_of_the_file(tmp_path):
    path = tmp_path / "a.safetensors"
    checkpoint.save_safetensors(path, {"t": np.zeros(8, np.float32), "u": np.zeros(8, np.float32)})
    opened = checkpoint.open_checkpoint(path)
    t, u = opened.get("t"), opened.get("u")
    assert not t.flags.writeable and not t.flags.owndata
    assert isinstance(t.base, np.memmap) and t.base is u.base


def test_saving_over_an_existing_file_replaces_it_whole(tmp_path):
    path = tmp_path / "a.safetensors"
    checkpoint.save_safetensors(path, {"old": np.ones(100, np.float64)})
    checkpoint.save_safetensors(path, {"new": np.ones(2, np.int8)})
    assert checkpoint.load(path).keys() == {"new"}


def test_an_interrupted_write_leaves_the_old_file_and_no_partial_file(tmp_path, monkeypatch):
    path = tmp_path / "a.safetensors"
    checkpoint.save_safetensors(path, {"old": np.ones(4, np.float32)})
    before = path.read_bytes()
    calls = []

    def interrupted(out, array):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        out.write(array.tobytes())

    monkeypatch.setattr(st_mod, "_write_array", interrupted)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save_safetensors(path, {"a": np.ones(4, np.float32), "b": np.ones(4, np.float32)})
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["a.safetensors"]


def test_an_interrupted_first_write_leaves_no_file_at_all(tmp_path, monkeypatch):
    def interrupted(out, array):
        raise KeyboardInterrupt

    monkeypatch.setattr(st_mod, "_write_array", interrupted)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save_safetensors(tmp_path / "a.safetensors", {"a": np.ones(4, np.float32)})
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("value, error", [
    (np.ones(2, np.uint16), "BF16"),
    (np.ones(2, np.complex64), "unsupported dtype"),
    (np.ones(2, np.uint32), "unsupported dtype"),
    ((np.ones(2, np.float32), "BF16"), "cannot be written as BF16"),
    ((np.ones(2, np.float32), "F99"), "unknown dtype tag"),
])
def test_save_refuses_arrays_it_cannot_write_faithfully(tmp_path, value, error):
    with pytest.raises(ValueError, match=error):
        checkpoint.save_safetensors(tmp_path / "a.safetensors", {"t": value})
    assert os.listdir(tmp_path) == []


def test_save_refuses_non_string_metadata_and_reserved_names(tmp_path):
    with pytest.raises(TypeError, match="metadata"):
        checkpoint.save_safetensors(tmp_path / "a.safetensors", {}, {"step": 5})
    with pytest.raises(ValueError, match="__metadata__"):
        checkpoint.save_safetensors(tmp_path / "a.safetensors", {"__metadata__": np.ones(1)})
    with pytest.raises(TypeError, match="numpy array"):
        checkpoint.save_safetensors(tmp_path / "a.safetensors", {"t": [1.0, 2.0]})


def test_load_safetensors_refuses_a_ckpt(tmp_path):
    with pytest.raises(CheckpointError, match="not .safetensors"):
        checkpoint.load_safetensors(save(tmp_path, {"t": torch.ones(1)}))


# ---------------------------------------------------------------------------------------------
# bf16 helpers and open_checkpoint

def test_bf16_to_float32_is_exact():
    values = torch.tensor([0.0, -0.0, 1.0, -3.5, 1e-40, 3.0e38, float("inf"), float("nan")])
    bits = as_numpy(values.to(torch.bfloat16))
    widened = checkpoint.bf16_to_float32(bits)
    np.testing.assert_array_equal(widened, values.to(torch.bfloat16).float().numpy())


def test_float32_to_bf16_rounds_like_torch():
    rng = np.random.default_rng(0)
    values = np.concatenate([
        rng.standard_normal(10000).astype(np.float32) * 1000,
        np.array([1.00390625, 1.01171875, -1.00390625, 3.4e38, -3.4e38, np.inf, -np.inf, 0.0,
                  -0.0, 1e-42], np.float32),  # ties to even both ways, overflow to inf, denormals
    ])
    ours = checkpoint.float32_to_bf16(values)
    assert ours.dtype == checkpoint.BF16
    np.testing.assert_array_equal(ours, as_numpy(torch.from_numpy(values).to(torch.bfloat16)))
    assert np.isnan(checkpoint.bf16_to_float32(checkpoint.float32_to_bf16(np.float32([np.nan])))).all()


def test_open_checkpoint_lists_info_and_views_for_both_formats(tmp_path):
    state = {"w": sample(torch.float32, (2, 3)), "b": sample(torch.bfloat16, (3,))}
    ckpt = save(tmp_path, state)
    safe = tmp_path / "m.safetensors"
    checkpoint.save_safetensors(safe, checkpoint.load(ckpt), {"k": "v"})
    for path in (ckpt, safe):
        with checkpoint.open_checkpoint(path) as opened:
            assert sorted(opened.keys()) == ["b", "w"] and len(opened) == 2 and "w" in opened
            assert opened.info("w") == checkpoint.TensorInfo("F32", (2, 3), 24)
            assert opened.info("b") == checkpoint.TensorInfo("BF16", (3,), 6)
            assert_same(opened["w"], state["w"])
            with pytest.raises(KeyError, match="no tensor named 'x'"):
                opened.get("x")
    assert checkpoint.open_checkpoint(safe).metadata == {"k": "v"}
    assert checkpoint.open_checkpoint(ckpt).metadata == {}


def test_dtype_of_refuses_ambiguous_uint16():
    with pytest.raises(CheckpointError, match="checkpoint.BF16"):
        checkpoint.dtype_of(np.zeros(1, np.uint16))
    assert checkpoint.dtype_of(np.zeros(1, np.uint16).astype(checkpoint.BF16)) == "BF16"
    assert checkpoint.dtype_of(np.zeros(1, ">i4")) == "I32"


@pytest.mark.slow
def test_opening_a_4gb_checkpoint_lists_its_tensors_in_under_a_second_without_copying(tmp_path):
    import time

    def anonymous_rss() -> int:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("RssAnon"))

    shapes = [(1280, 1280, 3, 3), (5120, 1280), (640, 640, 3, 3), (1280, 768)] + [(320,)] * 30
    state, total = {}, 0
    while total < 4 << 30:
        shape = shapes[len(state) % len(shapes)]
        state[f"model.diffusion_model.t{len(state)}.weight"] = torch.empty(shape)  # untouched pages
        total += int(np.prod(shape)) * 4
    path = save(tmp_path, {"state_dict": state, "global_step": 1})
    del state
    try:
        before = anonymous_rss()
        start = time.perf_counter()
        opened = checkpoint.open_checkpoint(path)
        infos = [opened.info(name) for name in opened.keys()]
        elapsed = time.perf_counter() - start
    finally:
        path.unlink()  # pytest keeps tmp_path around; 4 GB should not linger
    assert sum(i.nbytes for i in infos) == total
    assert elapsed < 1.0
    assert anonymous_rss() - before < 64 << 20
