"""Hostile and corrupt checkpoints raise CheckpointError: nothing runs, nothing is imported, nothing crashes.

Hostile payloads are built the way an attacker would: a pickle (protocol 2, as torch.save
writes) inside a zip laid out like torch.save's, or an object whose __reduce__ runs a
command, saved with torch.save. Each payload would create a sentinel file if it ran.

Files that attack the reader itself (nesting that overflows the C stack, lengths that claim
gigabytes) are read in a memory-limited child process (tests/hostile.py), so that a regression
fails its test instead of killing pytest.
"""

from __future__ import annotations

import collections
import json
import os
import pathlib
import pickle
import re
import struct
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

import hostile
from asymvq import checkpoint, config
from asymvq.io import unpickler
from asymvq.checkpoint import CheckpointError
from hostile import call_global, float_bytes, in_state_dict, ops, tensor_ops, text, torch_zip

# ---------------------------------------------------------------------------------------------
# Building torch.save-like archives by hand: the helpers live in tests/hostile.py

def valid_archive(path, **tensor) -> None:
    torch_zip(path, in_state_dict(ops(1), tensor_ops(**tensor)), {"0": float_bytes(4)})


def test_the_hand_built_archive_is_a_valid_torch_checkpoint(tmp_path):
    valid_archive(tmp_path / "a.ckpt")
    expected = torch.load(tmp_path / "a.ckpt", weights_only=True)["state_dict"]
    loaded = checkpoint.load(tmp_path / "a.ckpt")
    np.testing.assert_array_equal(loaded["t"], expected["t"].numpy())
    assert expected["w"] == 1


# ---------------------------------------------------------------------------------------------
# Code execution attempts


@pytest.fixture
def sentinel(tmp_path):
    path = tmp_path / "pwned"
    yield path
    assert not path.exists(), "a hostile payload ran"


def hostile_pickles(sentinel) -> dict[str, bytes]:
    touch = f"touch {sentinel}"
    py = f"open({str(sentinel)!r}, 'w').close()"
    inner = call_global("os", "system", (touch,))
    return {
        "GLOBAL os.system": call_global("os", "system", (touch,)),
        "GLOBAL posix.system": call_global("posix", "system", (touch,)),
        "GLOBAL nt.system": call_global("nt", "system", (touch,)),
        "GLOBAL builtins.eval": call_global("builtins", "eval", (py,)),
        "GLOBAL __builtin__.eval": call_global("__builtin__", "eval", (py,)),
        "GLOBAL builtins.exec": call_global("builtins", "exec", (py,)),
        "GLOBAL builtins.__import__": call_global("builtins", "__import__", ("os",)),
        "GLOBAL builtins.getattr": call_global("builtins", "getattr", ((), "__class__")),
        "GLOBAL builtins.open": call_global("builtins", "open", (str(sentinel), "w")),
        "GLOBAL subprocess.Popen": call_global("subprocess", "Popen", (["touch", str(sentinel)],)),
        "GLOBAL subprocess.run": call_global("subprocess", "run", (["touch", str(sentinel)],)),
        "nested pickle.loads": call_global("pickle", "loads", (b"\x80\x02" + inner + b".",)),
        "nested _pickle.loads": call_global("_pickle", "loads", (b"\x80\x02" + inner + b".",)),
        "GLOBAL torch.load": call_global("torch", "load", (str(sentinel),)),
        "GLOBAL runpy.run_path": call_global("runpy", "run_path", (str(sentinel),)),
        "GLOBAL operator.attrgetter": call_global("operator", "attrgetter", ("system",)),
        "STACK_GLOBAL os.system": text("os") + text("system") + b"\x93" + ops((touch,)) + b"R",
        "INST os.system": b"(" + ops(touch) + b"ios\nsystem\n",
        "OBJ subprocess.Popen": b"(csubprocess\nPopen\n" + ops(["touch", str(sentinel)]) + b"o",
    }


HOSTILE = list(hostile_pickles("SENTINEL"))
# The payloads that create the sentinel when an ordinary unpickler (torch.load's) runs them.
LIVE = [name for name in HOSTILE if not name.endswith((
    "nt.system", "__import__", "getattr", "torch.load", "runpy.run_path", "attrgetter"))]


@pytest.mark.parametrize("payload", LIVE)
def test_the_payloads_are_live_under_the_standard_unpickler(tmp_path, payload):
    target = tmp_path / "ran"
    result = pickle.loads(in_state_dict(hostile_pickles(target)[payload]))["state_dict"]["w"]
    if isinstance(result, subprocess.Popen):
        result.wait()
    assert target.exists()


@pytest.mark.parametrize("payload", HOSTILE)
def test_hostile_pickle_is_refused_and_never_runs(tmp_path, sentinel, payload):
    path = tmp_path / "evil.ckpt"
    torch_zip(path, in_state_dict(hostile_pickles(sentinel)[payload]))
    with pytest.raises(CheckpointError, match="refusing .* references") as err:
        checkpoint.load(path)
    module_and_name = payload.split()[-1]
    assert module_and_name.replace("__builtin__", "builtins") in str(err.value)


class RunsCommand:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


class RunsNestedPickle:
    def __init__(self, inner: bytes) -> None:
        self.inner = inner

    def __reduce__(self):
        return (pickle.loads, (self.inner,))


class RunsPopen:
    def __init__(self, args: list[str]) -> None:
        self.args = args

    def __reduce__(self):
        return (subprocess.Popen, (self.args,))


@pytest.mark.parametrize("make", [
    lambda s: RunsCommand(f"touch {s}"),
    lambda s: RunsNestedPickle(pickle.dumps(RunsCommand(f"touch {s}"), protocol=2)),
    lambda s: RunsPopen(["touch", str(s)]),
], ids=["os.system", "nested pickle", "subprocess.Popen"])
def test_torch_saved_object_whose_reduce_runs_code_is_refused(tmp_path, sentinel, make):
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}, "hyper_parameters": make(sentinel)}, path)
    with pytest.raises(CheckpointError, match="refusing"):
        checkpoint.load(path)


def test_unknown_classes_become_placeholders_and_their_modules_are_never_imported(
        tmp_path, sentinel, monkeypatch):
    (tmp_path / "evil_module_xyz.py").write_text(
        f"open({str(sentinel)!r}, 'w').close()\nclass Thing:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    constructed = (call_global("evil_module_xyz", "Thing", (1, 2))  # REDUCE
                   + b"}" + text("k") + ops(3) + b"sb")            # BUILD with a state dict
    new_object = b"cevil_module_xyz\nThing\n" + ops(()) + b"\x81" + ops(({"a": 1}, {"b": 2})) + b"b"
    path = tmp_path / "a.ckpt"
    pkl = (b"\x80\x02}" + text("state_dict") + b"}" + text("t") + tensor_ops() + b"s"
           + text("thing") + constructed + b"s" + text("new") + new_object + b"s" + b"s.")
    torch_zip(path, pkl, {"0": float_bytes(4)})
    opened = checkpoint.open_checkpoint(path)
    assert opened.keys() == ["t"]
    assert "evil_module_xyz.Thing" in opened.skipped["thing"]
    assert "evil_module_xyz" not in sys.modules


def test_a_pickle_cannot_modify_the_allowed_rebuild_functions(tmp_path):
    tamper = (b"ctorch._utils\n_rebuild_tensor_v2\n"
              + ops((None, {"_fn": None, "__defaults__": (1,)})) + b"b")
    path = tmp_path / "a.ckpt"
    torch_zip(path, in_state_dict(tamper))
    with pytest.raises(CheckpointError):
        checkpoint.load(path)
    valid_archive(tmp_path / "b.ckpt")
    np.testing.assert_array_equal(checkpoint.load(tmp_path / "b.ckpt")["t"], [0, 1, 2, 3])


def test_a_pickle_cannot_modify_placeholder_classes(tmp_path):
    tamper = b"csome.module\nThing\n" + ops((None, {"__setstate__": 1})) + b"b"
    path = tmp_path / "a.ckpt"
    torch_zip(path, in_state_dict(tamper))
    with pytest.raises(CheckpointError):
        checkpoint.load(path)


def test_pickle_extension_codes_are_refused(tmp_path):
    path = tmp_path / "a.ckpt"
    torch_zip(path, in_state_dict(b"\x82\x01"))
    with pytest.raises(CheckpointError, match="extension codes"):
        checkpoint.load(path)


# ---------------------------------------------------------------------------------------------
# Corrupt .ckpt files


def good_checkpoint(tmp_path) -> bytes:
    path = tmp_path / "good.ckpt"
    torch.save({"state_dict": {"a": torch.arange(6.0), "b": torch.ones(3, dtype=torch.int64)}}, path)
    return path.read_bytes()


def write(tmp_path, data: bytes, name: str = "bad.ckpt"):
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("keep", [0.0, 0.1, 0.5, 0.9, 0.99, -1])
def test_truncated_checkpoint_is_a_checkpoint_error(tmp_path, keep):
    data = good_checkpoint(tmp_path)
    cut = len(data) - 1 if keep == -1 else int(len(data) * keep)
    with pytest.raises(CheckpointError):
        checkpoint.load(write(tmp_path, data[:cut]))


@pytest.mark.parametrize("magic", [b"PK\x05\x06", b"\x00\x00\x00\x00", b"GIF8"])
def test_wrong_magic_is_a_checkpoint_error(tmp_path, magic):
    data = good_checkpoint(tmp_path)
    with pytest.raises(CheckpointError):
        checkpoint.load(write(tmp_path, magic + data[4:]))


def test_empty_file_is_a_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="empty"):
        checkpoint.load(write(tmp_path, b""))


def test_storage_declaring_10_gb_in_a_1_kb_file_is_a_checkpoint_error(tmp_path):
    path = tmp_path / "a.ckpt"
    torch_zip(path, in_state_dict(ops(1), tensor_ops(numel=(10 << 30) // 4, size=((10 << 30) // 4,))),
              {"0": float_bytes(4)})
    assert path.stat().st_size < 1024
    with pytest.raises(CheckpointError, match="declares"):
        checkpoint.load(path)


@pytest.mark.parametrize("tensor, error", [
    (dict(size=(5,)), "past the storage"),
    (dict(offset=3, size=(2,)), "past the storage"),
    (dict(offset=5, size=(0,)), "past the storage"),
    (dict(size=(2, 2), stride=(3, 1)), "past the storage"),
    (dict(size=(-1,)), "non-negative"),
    (dict(size=(2,), stride=(-1,)), "non-negative"),
    (dict(offset=-1, size=(1,)), "non-negative"),
    (dict(size=(1 << 61,), stride=(0,)), "impossibly large"),
    (dict(size=(1, 1), stride=(1 << 70, 1)), "impossibly large"),
    (dict(size=(2,), stride=(1, 1)), "malformed"),
    (dict(size=(1,) * 40, stride=(0,) * 40), "malformed"),
    (dict(size=(2.0,)), "non-negative integers"),
])
def test_tensor_outside_its_storage_or_with_a_bad_shape_is_a_checkpoint_error(tmp_path, tensor, error):
    path = tmp_path / "a.ckpt"
    torch_zip(path, in_state_dict(ops(1), tensor_ops(**tensor)), {"0": float_bytes(4)})
    with pytest.raises(CheckpointError, match=error):
        checkpoint.load(path)


def test_storage_member_running_past_the_end_of_the_file_is_a_checkpoint_error(tmp_path):
    valid_archive(tmp_path / "a.ckpt")
    data = bytearray((tmp_path / "a.ckpt").read_bytes())
    header = data.rindex(b"PK\x03\x04", 0, data.index(b"archive/data/0") + 1)
    data[header + 28:header + 30] = struct.pack("<H", 0xFFFF)  # local extra field length
    with pytest.raises(CheckpointError, match="past the end"):
        checkpoint.load(write(tmp_path, bytes(data)))


def test_local_header_that_disagrees_with_the_central_directory_is_a_checkpoint_error(tmp_path):
    valid_archive(tmp_path / "a.ckpt")
    data = bytearray((tmp_path / "a.ckpt").read_bytes())
    at = data.index(b"archive/data/0")  # first occurrence: the local header's copy
    data[at:at + 14] = b"archive/data/9"
    with pytest.raises(CheckpointError, match="does not match the central directory"):
        checkpoint.load(write(tmp_path, bytes(data)))


def test_corrupted_pickle_fails_its_crc(tmp_path):
    data = bytearray(good_checkpoint(tmp_path))
    at = data.index(b"state_dict")
    data[at] ^= 0x20
    with pytest.raises(CheckpointError, match="CRC"):
        checkpoint.load(write(tmp_path, bytes(data)))


def test_missing_pickle_is_a_checkpoint_error(tmp_path):
    path = tmp_path / "a.ckpt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/version", "3")
    with pytest.raises(CheckpointError, match="data.pkl"):
        checkpoint.load(path)


def test_missing_storage_is_a_checkpoint_error(tmp_path):
    path = tmp_path / "a.ckpt"
    torch_zip(path, in_state_dict(ops(1), tensor_ops(key="7")), {"0": float_bytes(4)})
    with pytest.raises(CheckpointError, match="storage '7' is missing"):
        checkpoint.load(path)


def test_duplicate_members_are_a_checkpoint_error(tmp_path):
    path = tmp_path / "a.ckpt"
    valid_archive(path)
    with pytest.warns(UserWarning, match="Duplicate name"):
        with zipfile.ZipFile(path, "a") as z:
            z.writestr("archive/data/0", float_bytes(4))
    with pytest.raises(CheckpointError, match="appears twice"):
        checkpoint.load(path)


def test_persistent_id_that_is_not_a_storage_is_a_checkpoint_error(tmp_path):
    path = tmp_path / "a.ckpt"
    torch_zip(path, in_state_dict(ops(("module", "x")) + b"Q"))
    with pytest.raises(CheckpointError, match="persistent id"):
        checkpoint.load(path)


def test_garbage_pickle_is_a_checkpoint_error(tmp_path):
    path = tmp_path / "a.ckpt"
    torch_zip(path, b"\x80\x02\xff\xfe garbage")
    with pytest.raises(CheckpointError, match="data.pkl is corrupt"):
        checkpoint.load(path)


def test_huge_memo_index_does_not_exhaust_memory(tmp_path):
    # The C unpickler would size its memo array by this index (16 GB of pointers).
    path = tmp_path / "a.ckpt"
    torch_zip(path, in_state_dict(ops(1) + b"r\xff\xff\xff\x7f", tensor_ops()), {"0": float_bytes(4)})
    assert list(checkpoint.load(path)) == ["t"]


def test_nested_and_self_referencing_containers_load_with_deep_names_cut_at_64_levels(tmp_path):
    depth = 200  # deeper than the 64 levels that names may have, within the unpickler's limit
    nested = b"]" * depth + b"a" * (depth - 1)  # each list appended into the one below
    cyclic = b"]q\x01h\x01a"                    # a list that contains itself
    path = tmp_path / "a.ckpt"
    torch_zip(path, b"\x80\x02}" + text("deep") + nested + b"s" + text("loop") + cyclic + b"s"
              + text("t") + tensor_ops() + b"s.", {"0": float_bytes(4)})
    opened = checkpoint.open_checkpoint(path)
    assert opened.keys() == ["t"]
    assert opened.skipped == {
        "deep" + ".0" * 63: "a container nested deeper than 64 levels",
        "loop.0": "the same container as 'loop'",
    }


def test_containers_nested_200000_deep_are_refused_in_linear_time(tmp_path):
    depth = 200_000
    path = tmp_path / "a.ckpt"
    torch_zip(path, b"\x80\x02}" + text("deep") + b"]" * depth + b"a" * (depth - 1) + b"s"
              + text("t") + tensor_ops() + b"s.", {"0": float_bytes(4)})
    with pytest.raises(CheckpointError, match=r"a\.ckpt: data.pkl holds containers nested deeper "
                                              r"than 256 levels"):
        checkpoint.open_checkpoint(path)


def test_storage_type_this_reader_does_not_support_is_skipped(tmp_path):
    path = tmp_path / "a.ckpt"
    torch_zip(path, in_state_dict(ops(1), tensor_ops(storage="ComplexFloatStorage", numel=2)),
              {"0": float_bytes(4)})
    opened = checkpoint.open_checkpoint(path)
    assert opened.keys() == [] and "ComplexFloatStorage" in opened.skipped["t"]


# ---------------------------------------------------------------------------------------------
# Corrupt .safetensors files


def safetensors_file(header, data: bytes = b"", size: int | None = None, raw: bytes | None = None) -> bytes:
    blob = raw if raw is not None else json.dumps(header).encode()
    return struct.pack("<Q", len(blob) if size is None else size) + blob + data


GOOD_HEADER = {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
               "b": {"dtype": "I8", "shape": [2, 2], "data_offsets": [8, 12]}}


def with_entry(name: str, **fields) -> dict:
    header = json.loads(json.dumps(GOOD_HEADER))
    header[name].update(fields)
    return header


def test_the_hand_built_safetensors_file_is_valid(tmp_path):
    loaded, _ = checkpoint.load_safetensors(write(tmp_path, safetensors_file(GOOD_HEADER, bytes(12)),
                                                  "a.safetensors"))
    assert loaded["b"].shape == (2, 2)


@pytest.mark.parametrize("data, error", [
    (safetensors_file(GOOD_HEADER, bytes(12), size=10 << 30), "claims"),
    (safetensors_file(GOOD_HEADER, bytes(12), size=2**64 - 1), "claims"),
    (safetensors_file(GOOD_HEADER, bytes(12))[:60], "claims"),
    (b"\x05\x00\x00\x00", "too short"),
    (safetensors_file(None, bytes(12), raw=b"{not json}"), "not valid JSON"),
    (safetensors_file(None, raw=b"\xff\xfe{}"), "not valid JSON"),
    (safetensors_file(None, raw=b"[" * 100_000 + b"]" * 100_000), "not valid JSON"),
    (safetensors_file(None, raw=b'{"a": 1, "a": 2}'), "duplicate key"),
    (safetensors_file([1, 2]), "not an object"),
    (safetensors_file(with_entry("a", dtype="U16"), bytes(12)), "unsupported dtype 'U16'"),
    (safetensors_file(with_entry("a", dtype="F8_E4M3"), bytes(12)), "unsupported dtype"),
    (safetensors_file(with_entry("a", shape=[3]), bytes(12)), "does not match"),
    (safetensors_file(with_entry("a", shape=[-2]), bytes(12)), "non-negative"),
    (safetensors_file(with_entry("a", shape=[2.0]), bytes(12)), "non-negative"),
    (safetensors_file(with_entry("a", shape=[True, 2]), bytes(12)), "non-negative"),
    (safetensors_file(with_entry("a", shape=[1 << 40, 1 << 40]), bytes(12)), "does not match"),
    (safetensors_file(with_entry("a", shape=[2684354560]), bytes(12)), "does not match"),  # 10 GB
    (safetensors_file(with_entry("b", data_offsets=[4, 8], shape=[4]), bytes(12)), "overlaps"),
    (safetensors_file(with_entry("b", data_offsets=[9, 13]), bytes(13)), "belong to no tensor"),
    (safetensors_file(GOOD_HEADER, bytes(16)), "file holds 16"),
    (safetensors_file(with_entry("b", data_offsets=[8, 1 << 40]), bytes(12)), "run past"),
    (safetensors_file(with_entry("b", data_offsets=[12, 8]), bytes(12)), "begin <= end"),
    (safetensors_file(with_entry("b", data_offsets=[8]), bytes(12)), "begin <= end"),
    (safetensors_file({**GOOD_HEADER, "c": {"dtype": "F32", "shape": [0]}}, bytes(12)), "exactly"),
    (safetensors_file({**GOOD_HEADER, "__metadata__": {"step": 5}}, bytes(12)), "strings"),
    (safetensors_file({**GOOD_HEADER, "__metadata__": "text"}, bytes(12)), "strings"),
])
def test_corrupt_safetensors_is_a_checkpoint_error(tmp_path, data, error):
    with pytest.raises(CheckpointError, match=error):
        checkpoint.load(write(tmp_path, data, "bad.safetensors"))


def test_safetensors_metadata_validates_the_header_too(tmp_path):
    path = write(tmp_path, safetensors_file(with_entry("a", dtype="X"), bytes(12)), "bad.safetensors")
    with pytest.raises(CheckpointError, match="unsupported dtype"):
        checkpoint.safetensors_metadata(path)


def test_unrecognised_bytes_are_a_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        checkpoint.load(write(tmp_path, b"hello world, not a model", "a.bin"))


# ---------------------------------------------------------------------------------------------
# The hostile corpus, each file read in a child limited to 1 GiB of address space

CHECKPOINT_CASES = [name for name, case in hostile.CASES.items() if case.reader == "checkpoint"]
MEMORY_MIB = 1024     # address space of the child: Python and NumPy take about 200 MiB of it
PEAK_RSS_MIB = 256    # reading any of these files needs about 70 MiB
TIMEOUT = 120         # seconds; each takes 1-6 s on a loaded 2-core machine


def probe_result(result: hostile.ChildResult) -> dict:
    assert result.returncode == 0, f"the reader {result.describe()}:\n{result.stderr[-3000:]}"
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", CHECKPOINT_CASES)
def test_hostile_checkpoint_is_refused_cleanly_in_bounded_memory_and_time(tmp_path, name):
    case = hostile.CASES[name]
    path = case.write(tmp_path / name)
    result = hostile.probe(case, path, memory_mib=MEMORY_MIB, timeout=TIMEOUT)
    outcome = probe_result(result)
    assert outcome["max_rss_mib"] < PEAK_RSS_MIB, result.describe()
    if not case.error:  # the file is harmless once read correctly
        return
    assert outcome["error"] == case.error, outcome
    message = outcome["message"]
    assert str(path) in message and len(message) < 600, message
    assert re.search(case.problem, message), message


def test_shadowed_ordered_dict_items_change_nothing(tmp_path):
    path = hostile.CASES["ordered_dict_items_shadowed.ckpt"].write(tmp_path / "a.ckpt")
    np.testing.assert_array_equal(checkpoint.load(path)["t"], [0, 1, 2, 3])


def test_build_on_anything_but_a_dict_or_placeholder_is_refused(tmp_path):
    path = tmp_path / "a.ckpt"
    torch_zip(path, in_state_dict(ops([1, 2]) + ops({"append": 0}) + b"b"))
    with pytest.raises(CheckpointError, match=r"a\.ckpt: data.pkl sets the state of a value of type list"):
        checkpoint.load(path)


def test_an_unexpected_failure_while_reading_is_a_checkpoint_error_naming_the_file(tmp_path, monkeypatch):
    valid_archive(tmp_path / "a.ckpt")

    def broken(*args):
        raise TypeError("'int' object is not callable")

    monkeypatch.setattr(unpickler, "_flatten", broken)
    with pytest.raises(CheckpointError, match=r"a\.ckpt: cannot read the checkpoint: TypeError: 'int' object"):
        checkpoint.load(tmp_path / "a.ckpt")


def top_level(value_ops: bytes) -> bytes:
    """A pickle of {"w": <value>, "t": <tensor>}: the value sits one level below the top."""
    return b"\x80\x02}" + text("w") + value_ops + b"s" + text("t") + tensor_ops() + b"s."


@pytest.mark.parametrize("depth, loads", [(256, True), (257, False)])
def test_nesting_is_limited_to_256_levels_for_tuples_lists_dicts_and_frozensets(tmp_path, depth, loads):
    inner = depth - 1  # below the top-level dict
    kinds = {
        "tuple": hostile.deep_tuple(inner),
        "list": hostile.deep_list(inner),
        "dict": b"".join([b"}" + text("k")] * (inner - 1)) + b"}" + b"s" * (inner - 1),  # {"k": {"k": ...}}
        "frozenset": b"(" + hostile.deep_tuple(inner - 1) + b"\x91",
    }
    for kind, payload in kinds.items():
        path = tmp_path / f"{kind}.ckpt"
        torch_zip(path, top_level(payload), {"0": float_bytes(4)})
        if loads:
            assert checkpoint.open_checkpoint(path).keys() == ["t"], kind
        else:
            with pytest.raises(CheckpointError, match="nested deeper than 256 levels"):
                checkpoint.open_checkpoint(path)


def test_a_list_deepened_inside_a_tuple_cannot_yield_a_deep_tuple(tmp_path):
    # l = []; t = (l,); l.append(<list 250 deep>). t's recorded depth (2) is stale, which is harmless:
    # hashing t stops at the list. A tuple built from l's items is measured from them, exactly.
    grown = (b"]q\x010" + b"h\x01\x85q\x020"          # l (memo 1), t = (l,) (memo 2)
             + b"h\x01" + hostile.deep_list(250) + b"a0")  # l.append(250-deep list)
    wrapped_t = grown + b"h\x02" + b"\x85" * 6
    wrapped_items_of_l = grown + b"cbuiltins\ntuple\nh\x01\x85R" + b"\x85" * 6
    path = tmp_path / "a.ckpt"
    torch_zip(path, top_level(wrapped_t), {"0": float_bytes(4)})
    assert checkpoint.open_checkpoint(path).keys() == ["t"]
    torch_zip(path, top_level(wrapped_items_of_l), {"0": float_bytes(4)})
    with pytest.raises(CheckpointError, match="nested deeper than 256 levels"):
        checkpoint.open_checkpoint(path)


def test_length_fields_are_checked_inside_frames_too(tmp_path):
    inner = b"\x96" + struct.pack("<Q", 1 << 30) + bytes(8)   # BYTEARRAY8 claiming 1 GiB
    pkl = b"\x80\x04\x95" + struct.pack("<Q", len(inner)) + inner + b"."
    path = tmp_path / "a.ckpt"
    torch_zip(path, pkl)
    with pytest.raises(CheckpointError, match=r"BYTEARRAY8 at byte 11 declares 1073741824 bytes but only 9 follow"):
        checkpoint.load(path)


def test_a_protocol_4_pickle_with_frames_reads_as_usual(tmp_path):
    path = tmp_path / "a.ckpt"
    torch.save({"state_dict": {"t": torch.arange(4.0)}, "meta": {"names": ["x" * 100] * 1000}}, path,
               pickle_protocol=4)
    assert b"\x95" in zipfile.ZipFile(path).read("a/data.pkl")[:3]
    np.testing.assert_array_equal(checkpoint.load(path)["t"], [0, 1, 2, 3])


def test_allowed_functions_cannot_copy_more_than_the_pickle_holds(tmp_path):
    # one 100 kB list, then 1000 calls of list(l), 6 bytes each: 100 MB of copies from 106 kB
    payload = (ops(list(range(25_000))) + b"q\x01" + b"0" + b"(cbuiltins\nlist\nq\x02"
               + b"h\x02h\x01\x85R0" * 1000 + b"l")
    path = tmp_path / "a.ckpt"
    torch_zip(path, in_state_dict(payload))
    with pytest.raises(CheckpointError, match="copy more than .* elements, more than the .*-byte pickle holds"):
        checkpoint.load(path)


# ---------------------------------------------------------------------------------------------
# The command lines, given the deep-nesting file: one error line, exit code 2

VOCAB = hostile.REPO.parent / "shared" / "data" / "clip" / "bpe_simple_vocab_16e6.txt.gz"  # as test_cli.py


def command_lines(tmp_path, hostile_ckpt):
    tiny = pathlib.Path(config.packaged_tiny_config("v1-inpainting-inference"))
    decoder = pathlib.Path(config.packaged_tiny_config("autoencoder_kl_32x32x4"))
    (tmp_path / "in").mkdir()
    Image.new("RGB", (64, 64)).save(tmp_path / "in" / "a.png")
    Image.new("L", (64, 64)).save(tmp_path / "in" / "a_mask.png")
    return {
        "convert": ["-m", "asymvq", "convert", "--config", str(tiny), "--ckpt", str(hostile_ckpt),
                    "-o", str(tmp_path / "out.safetensors")],
        "inpaint_st": ["-m", "asymvq.inpaint_st", "--config_d", str(tiny), "--ckpt_d", str(hostile_ckpt),
                       "--config", str(decoder), "--ckpt", str(hostile_ckpt), "--indir", str(tmp_path / "in"),
                       "--outdir", str(tmp_path / "out"), "--vocab", str(VOCAB)],
    }


@pytest.mark.parametrize("command", ["convert", "inpaint_st"])
def test_command_line_given_a_deeply_nested_ckpt_prints_one_error_line_and_exits_2(tmp_path, command):
    path = hostile.CASES["deep_tuple_dict_key.ckpt"].write(tmp_path / "deep.ckpt")
    argv = [sys.executable] + command_lines(tmp_path, path)[command]
    result = hostile.run_limited(argv, memory_mib=2048, timeout=TIMEOUT)
    assert result.returncode == 2, f"{result.describe()}\n{result.stderr[-3000:]}"
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert str(path) in lines[0] and "nested deeper than 256 levels" in lines[0]
    assert result.max_rss_mib < 512


# ---------------------------------------------------------------------------------------------
# A stride-0 view stays a view: an unused "broadcast" tensor of 4 bytes standing for 1 GiB

def test_an_unused_broadcast_tensor_stays_a_view_and_the_unet_never_copies_it(tmp_path):
    from fixtures import fixture_config, state_dict_items

    items = collections.OrderedDict(state_dict_items("sd15-inpaint", tiny=True))
    items["model.diffusion_model.extra"] = torch.zeros(4)[:1].expand(1 << 28)  # 1 GiB of float32
    path = tmp_path / "broadcast.ckpt"
    torch.save({"state_dict": items}, path)
    assert path.stat().st_size < 64 << 20
    extra = checkpoint.load(path)["model.diffusion_model.extra"]
    assert extra.strides == (0,) and extra.nbytes == 1 << 30 and not extra.flags.owndata
    build = "import sys; from asymvq.unet import UNet; UNet.from_config(sys.argv[1], sys.argv[2]); print('built')"
    result = hostile.run_limited([sys.executable, "-c", build, str(fixture_config("sd15-inpaint")), str(path)],
                                 memory_mib=MEMORY_MIB, timeout=TIMEOUT)
    assert result.returncode == 0 and result.stdout.strip() == "built", f"{result.describe()}\n{result.stderr[-3000:]}"
    assert result.max_rss_mib < PEAK_RSS_MIB, result.describe()
