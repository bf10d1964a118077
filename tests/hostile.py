"""Hostile input files, generated on demand, and a runner that reads them in a memory-limited child.

Nothing here is committed as a binary: every file is built from a few lines of Python below, the way
an attacker would write it (hand-assembled pickle opcodes inside a zip laid out like torch.save's, a
``.safetensors`` header that lies, a YAML file full of aliases).

:func:`run_limited` runs a snippet of Python in a child process under ``RLIMIT_AS`` and a wall-clock
timeout, and reports how it ended (exit status or signal), its output, its peak RSS and its run time,
so that a regression (a segfault, a gigabyte allocation, a hang) fails one test instead of killing
pytest.  ``python -m tests.hostile OUT_DIR`` writes the whole corpus, for looking at it by hand.
"""

from __future__ import annotations

import json
import os
import pickle
import resource
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence

REPO = Path(__file__).resolve().parent.parent

# ---------------------------------------------------------------------------------------------------
# Pickle opcodes by hand


def text(s: str) -> bytes:
    """BINUNICODE: push a str."""
    raw = s.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def ops(value: object) -> bytes:
    """The opcodes that push ``value`` (pickle protocol 2, without PROTO and STOP)."""
    return pickle.dumps(value, protocol=2)[2:-1]


def in_state_dict(payload_ops: bytes, tensor_ops: bytes = b"") -> bytes:
    """A protocol-2 pickle of {"state_dict": {"w": <payload>}} (plus an optional tensor "t")."""
    body = text("w") + payload_ops + b"s"
    if tensor_ops:
        body += text("t") + tensor_ops + b"s"
    return b"\x80\x02}" + text("state_dict") + b"}" + body + b"s."


def call_global(module: str, name: str, args: tuple) -> bytes:
    """GLOBAL module.name, called with args (REDUCE)."""
    return b"c" + f"{module}\n{name}\n".encode() + ops(args) + b"R"


def tensor_ops(
    key: str = "0",
    numel: int = 4,
    offset: int = 0,
    size: Sequence[int] = (4,),
    stride: Sequence[int] = (1,),
    storage: str = "FloatStorage",
) -> bytes:
    """The opcodes torch.save writes for one tensor on storage data/<key>."""
    pid = b"(" + text("storage") + b"ctorch\n" + storage.encode() + b"\n" + text(key) + text("cpu") + ops(numel) + b"tQ"
    return (
        b"ctorch._utils\n_rebuild_tensor_v2\n("
        + pid
        + ops(offset)
        + ops(tuple(size))
        + ops(tuple(stride))
        + b"\x89"
        + b"ccollections\nOrderedDict\n)R"
        + b"tR"
    )


def float_bytes(n: int) -> bytes:
    return struct.pack(f"<{n}f", *range(n))


def torch_zip(
    path: Path,
    pickle_bytes: bytes,
    storages: Optional[Dict[str, bytes]] = None,
    prefix: str = "archive",
    compression: int = zipfile.ZIP_STORED,
) -> Path:
    """Write a zip with the members torch.save writes, around arbitrary data.pkl bytes."""
    with zipfile.ZipFile(path, "w", compression) as z:
        z.writestr(f"{prefix}/data.pkl", pickle_bytes)
        z.writestr(f"{prefix}/byteorder", "little")
        for key, data in (storages or {}).items():
            z.writestr(f"{prefix}/data/{key}", data)
        z.writestr(f"{prefix}/version", "3\n")
    return path


def deep_tuple(depth: int) -> bytes:
    """Opcodes of a tuple nested ``depth`` levels deep: ((((),),),) -- one byte per level."""
    return b")" + b"\x85" * (depth - 1)


def deep_list(depth: int) -> bytes:
    """Opcodes of a list nested ``depth`` levels deep, each list appended into the one below."""
    return b"]" * depth + b"a" * (depth - 1)


def declared_length(opcode: bytes, field: str, length: int, pad: int = 256) -> bytes:
    """A length-prefixed opcode whose length field says ``length`` while only ``pad`` bytes follow."""
    return opcode + struct.pack(field, length) + b"\x00" * pad


# ---------------------------------------------------------------------------------------------------
# The corpus


@dataclass(frozen=True)
class Case:
    """One hostile file: how to write it, how a program reads it, what the reader must say."""

    name: str  # file name, also the test id
    write: Callable[[Path], Path]
    reader: str  # "checkpoint" (asymvq.checkpoint.load) or "config" (asymvq.config.load)
    error: str  # CheckpointError or ConfigError
    problem: str  # a regular expression the error message must match
    issue: str  # which issue item it reproduces


GiB = 1 << 30


def _ckpt(pickle_bytes: bytes, storages: Optional[Dict[str, bytes]] = None) -> Callable[[Path], Path]:
    return lambda path: torch_zip(path, pickle_bytes, storages)


def _raw(data: bytes) -> Callable[[Path], Path]:
    def write(path: Path) -> Path:
        path.write_bytes(data)
        return path

    return write


def _zip_member_size_lie(member: str, size: int) -> Callable[[Path], Path]:
    """A valid one-tensor archive whose central directory and local header give ``member`` ``size`` bytes."""

    def write(path: Path) -> Path:
        torch_zip(path, in_state_dict(ops(1), tensor_ops()), {"0": float_bytes(4)})
        data = bytearray(path.read_bytes())
        name = member.encode()
        for at in _all(data, name):
            header = at - 30 if data[at - 30 : at - 26] == b"PK\x03\x04" else at - 46
            if data[header : header + 4] == b"PK\x03\x04":
                data[header + 18 : header + 26] = struct.pack("<II", size, size)
            elif data[header : header + 4] == b"PK\x01\x02":
                data[header + 20 : header + 28] = struct.pack("<II", size, size)
        path.write_bytes(bytes(data))
        return path

    return write


def _all(data: bytes, needle: bytes) -> list:
    found, at = [], data.find(needle)
    while at >= 0:
        found.append(at)
        at = data.find(needle, at + 1)
    return found


def _safetensors(header: object, data: bytes = b"", size: Optional[int] = None) -> bytes:
    blob = json.dumps(header).encode()
    return struct.pack("<Q", len(blob) if size is None else size) + blob + data


def alias_bomb(levels: int = 9, width: int = 9) -> str:
    """A YAML 'billion laughs': ``width ** levels`` strings from ~700 bytes, echoed by an error."""
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for level in range(1, levels):
        refs = ", ".join([f"*a{level - 1}"] * width)
        lines.append(f"a{level}: &a{level} [{refs}]")
    lines.append(f"model: *a{levels - 1}")  # "model: expected a mapping, got list [...]"
    return "\n".join(lines) + "\n"


def _yaml(text_: str) -> Callable[[Path], Path]:
    def write(path: Path) -> Path:
        path.write_text(text_)
        return path

    return write


ORDERED_DICT_ITEMS_SHADOWED = (
    # {"state_dict": OrderedDict(t=<tensor>)} whose OrderedDict gets the instance attribute items=0
    b"\x80\x02}"
    + text("state_dict")
    + b"ccollections\nOrderedDict\n)R"
    + text("t")
    + tensor_ops()
    + b"s"
    + b"}"
    + text("items")
    + ops(0)
    + b"s"
    + b"b"
    + b"s."
)

CASES: Dict[str, Case] = {
    case.name: case
    for case in [
        # Issue 11.1: nesting deeper than C recursion survives
        Case(
            "deep_tuple_dict_key.ckpt",
            _ckpt(b"\x80\x02}" + deep_tuple(1_000_000) + ops(1) + b"s."),
            "checkpoint",
            "CheckpointError",
            r"nested deeper than \d+ levels",
            "11.1",
        ),
        Case(
            "deep_tuple_in_frozenset.ckpt",
            _ckpt(in_state_dict(b"(" + deep_tuple(1_000_000) + b"\x91")),
            "checkpoint",
            "CheckpointError",
            r"nested deeper than \d+ levels",
            "11.1",
        ),
        Case(
            "deep_tuple_as_codecs_encode_argument.ckpt",
            _ckpt(in_state_dict(b"c_codecs\nencode\n" + text("x") + deep_tuple(1_000_000) + b"\x86R")),
            "checkpoint",
            "CheckpointError",
            r"nested deeper than \d+ levels",
            "11.1",
        ),
        Case(
            "deep_list_value.ckpt",
            _ckpt(in_state_dict(deep_list(300_000))),
            "checkpoint",
            "CheckpointError",
            r"nested deeper than \d+ levels",
            "11.1",
        ),
        # Issue 11.2: declared sizes that the bytes present cannot back
        Case(
            "bytearray8_declares_1_gib.ckpt",
            _ckpt(in_state_dict(declared_length(b"\x96", "<Q", GiB))),
            "checkpoint",
            "CheckpointError",
            r"BYTEARRAY8 .*declares 1073741824 bytes",
            "11.2",
        ),
        Case(
            "binbytes8_declares_1_gib.ckpt",
            _ckpt(in_state_dict(declared_length(b"\x8e", "<Q", GiB))),
            "checkpoint",
            "CheckpointError",
            r"BINBYTES8 .*declares 1073741824 bytes",
            "11.2",
        ),
        Case(
            "binunicode8_declares_1_gib.ckpt",
            _ckpt(in_state_dict(declared_length(b"\x8d", "<Q", GiB))),
            "checkpoint",
            "CheckpointError",
            r"BINUNICODE8 .*declares 1073741824 bytes",
            "11.2",
        ),
        Case(
            "binunicode_declares_4_gib.ckpt",
            _ckpt(in_state_dict(declared_length(b"X", "<I", 0xFFFFFFFF))),
            "checkpoint",
            "CheckpointError",
            r"BINUNICODE .*declares 4294967295 bytes",
            "11.2",
        ),
        Case(
            "binbytes_declares_4_gib.ckpt",
            _ckpt(in_state_dict(declared_length(b"B", "<I", 0xFFFFFFFF))),
            "checkpoint",
            "CheckpointError",
            r"BINBYTES .*declares 4294967295 bytes",
            "11.2",
        ),
        Case(
            "binstring_declares_2_gib.ckpt",
            _ckpt(in_state_dict(declared_length(b"T", "<i", 0x7FFFFFFF))),
            "checkpoint",
            "CheckpointError",
            r"BINSTRING .*declares 2147483647 bytes",
            "11.2",
        ),
        Case(
            "long4_declares_2_gib.ckpt",
            _ckpt(in_state_dict(declared_length(b"\x8b", "<i", 0x7FFFFFFF))),
            "checkpoint",
            "CheckpointError",
            r"LONG4 .*declares 2147483647 bytes",
            "11.2",
        ),
        Case(
            "frame_declares_1_tib.ckpt",
            _ckpt(b"\x80\x04" + declared_length(b"\x95", "<Q", 1 << 40)),
            "checkpoint",
            "CheckpointError",
            r"FRAME .*declares 1099511627776 bytes",
            "11.2",
        ),
        Case(
            "storage_declares_10_gib.ckpt",
            _ckpt(in_state_dict(ops(1), tensor_ops(numel=10 * GiB // 4, size=(10 * GiB // 4,))), {"0": float_bytes(4)}),
            "checkpoint",
            "CheckpointError",
            r"declares 2684354560 F32 elements",
            "11.2",
        ),
        Case(
            "zip_storage_member_declares_4_gib.ckpt",
            _zip_member_size_lie("archive/data/0", 0xFFFFFFFE),
            "checkpoint",
            "CheckpointError",
            r"claims 4294967294 bytes .* past the end",
            "11.2",
        ),
        Case(
            "zip_pickle_member_declares_4_gib.ckpt",
            _zip_member_size_lie("archive/data.pkl", 0xFFFFFFFE),
            "checkpoint",
            "CheckpointError",
            r"claims 4294967294 bytes .* past the end",
            "11.2",
        ),
        Case(
            "safetensors_header_declares_16_eib.safetensors",
            _raw(
                _safetensors(
                    {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, bytes(8), size=(1 << 64) - 1
                )
            ),
            "checkpoint",
            "CheckpointError",
            r"header claims 18446744073709551615 bytes",
            "11.2",
        ),
        Case(
            "safetensors_offsets_past_the_end.safetensors",
            _raw(_safetensors({"a": {"dtype": "F32", "shape": [1 << 28], "data_offsets": [0, GiB]}}, bytes(8))),
            "checkpoint",
            "CheckpointError",
            r"data_offsets \[0, 1073741824\] run past",
            "11.2",
        ),
        # Issue 11.4: a pickle that shadows a method of the objects it builds
        Case(
            "ordered_dict_items_shadowed.ckpt",
            _ckpt(ORDERED_DICT_ITEMS_SHADOWED, {"0": float_bytes(4)}),
            "checkpoint",
            "",
            "",
            "11.4",
        ),
        # Issue 11.3: YAML aliases
        Case(
            "alias_bomb.yaml",
            _yaml(alias_bomb()),
            "config",
            "ConfigError",
            r"expands to more than 100000 nodes once its aliases are resolved",
            "11.3",
        ),
    ]
}


def write_corpus(directory: Path) -> Dict[str, Path]:
    """Write every case into ``directory``; name -> path."""
    directory.mkdir(parents=True, exist_ok=True)
    return {name: case.write(directory / name) for name, case in CASES.items()}


# ---------------------------------------------------------------------------------------------------
# Running a reader in a memory-limited child


@dataclass(frozen=True)
class ChildResult:
    """How a child process ended."""

    returncode: Optional[int]  # None: killed by a signal or the timeout
    signal: Optional[int]
    timed_out: bool
    stdout: str
    stderr: str
    max_rss_mib: float
    seconds: float

    def describe(self) -> str:
        if self.timed_out:
            how = "timed out"
        elif self.signal is not None:
            how = f"killed by {signal.Signals(self.signal).name}"
        else:
            how = f"exit {self.returncode}"
        return f"{how}, peak RSS {self.max_rss_mib:.0f} MiB, {self.seconds:.1f} s"


# Runs argv in a grandchild and reports the grandchild's peak RSS: a child forked from pytest
# inherits pytest's RSS as the start of its ru_maxrss (Linux keeps the pre-exec high-water mark),
# while this small launcher's is only ~10 MiB.
LAUNCHER = r"""
import os, signal, sys
report, argv = sys.argv[1], sys.argv[2:]
pid = os.fork()
if pid == 0:
    try:
        os.execv(argv[0], argv)
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
with open(report, "w") as f:
    f.write(str(usage.ru_maxrss))
code = os.waitstatus_to_exitcode(status)
if code < 0:
    signal.signal(-code, signal.SIG_DFL)
    os.kill(os.getpid(), -code)
sys.exit(code)
"""


def run_limited(
    argv: Sequence[str],
    *,
    memory_mib: int,
    timeout: float,
    cwd: Optional[Path] = None,
    env: Optional[Dict[str, str]] = None,
) -> ChildResult:
    """Run ``argv`` with its address space limited to ``memory_mib`` MiB; never raises for the child's sake.

    Its peak RSS comes from ``wait4`` in a small launcher, so it is known even when it dies of a signal.
    """
    limit = memory_mib << 20

    def limit_memory() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a regression's segfault leaves no core file

    child_env = dict(os.environ if env is None else env)
    child_env.setdefault("OMP_NUM_THREADS", "1")
    child_env.setdefault("OPENBLAS_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "maxrss"
        start = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-c", LAUNCHER, str(report), *argv],
            cwd=cwd or REPO,
            env=child_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            preexec_fn=limit_memory,
            start_new_session=True,
        )
        timed_out = False
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(proc.pid, signal.SIGKILL)  # the launcher and the command
            stdout, stderr = proc.communicate()
        seconds = time.perf_counter() - start
        rss = int(report.read_text()) / 1024 if report.exists() else float("nan")
    code = proc.returncode
    sig = -code if code < 0 else None
    return ChildResult(
        None if (sig is not None or timed_out) else code,
        sig,
        timed_out,
        stdout.decode(errors="replace"),
        stderr.decode(errors="replace"),
        rss,
        seconds,
    )


PROBE = r"""
import json, resource, sys, time
kind, path = sys.argv[1], sys.argv[2]
start = time.perf_counter()
result = {"error": None, "message": None, "loaded": None}
try:
    if kind == "checkpoint":
        from asymvq import checkpoint
        result["loaded"] = sorted(checkpoint.load(path))
    else:
        from asymvq import config
        config.load(path)
        result["loaded"] = []
except Exception as e:
    result["error"] = type(e).__name__
    result["message"] = str(e)
result["seconds"] = time.perf_counter() - start
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")]
result["max_rss_mib"] = (
    int(hwm[0].split()[1]) / 1024 if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
)
print(json.dumps(result))
"""


def probe(
    case: Case, path: Path, *, memory_mib: int = 1024, timeout: float = 60, cwd: Optional[Path] = None
) -> ChildResult:
    """Read ``path`` with the reader of ``case`` in a limited child; its stdout is one JSON line."""
    return run_limited(
        [sys.executable, "-c", PROBE, case.reader, str(path)], memory_mib=memory_mib, timeout=timeout, cwd=cwd
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m tests.hostile OUT_DIR", file=sys.stderr)
        return 2
    for name, path in write_corpus(Path(args[0])).items():
        print(f"{path}  ({path.stat().st_size} bytes, issue {CASES[name].issue})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
