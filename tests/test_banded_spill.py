"""The spilled banded decode (``Autoencoder.decode(memory_budget=..., spill_dir=...)``).

Spilling changes where the banded decode's arena lives (an unlinked file mapped into the process,
its pages dropped once the bands are done with them), never what is computed: the result must be
bitwise the unspilled banded one, in fp32 and bf16.  The arena must really be a file (its mapping is
in ``/proc/self/maps`` while the plan holds it, and gone after ``release_memory``), no file may be
left in ``spill_dir``, the peak resident memory of a spilled decode must stay well below the arena,
and bad settings must be refused with a message that names the problem.

A drop never changes content (a dropped page of the shared file mapping is faulted back in), so a
drop in the wrong place costs time, not values; what the bitwise tests catch is a mapping that loses
dropped writes.  Checked that the tests catch real defects: with the spill file mapped MAP_PRIVATE
(a drop then discards what was written), the bitwise tests fail; with ``avq_plan_drop`` made a
no-op, the resident-memory test fails (growth = the whole arena).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
from isa import needs_bf16
from test_autoencoder import decoder, inputs

import asymvq.autoencoder as autoencoder_module
from asymvq.autoencoder import Autoencoder

HEIGHT, WIDTH = 72, 56  # levels 9, 18, 36, 72 rows: band_rows 3 divides them all, 5 none
ROOT = Path(__file__).resolve().parents[1]


def spill_mapped() -> bool:
    """True while a spill file (an ``asymvq-arena-*`` mapping) is mapped into this process."""
    return "asymvq-arena-" in Path("/proc/self/maps").read_text()


@pytest.fixture
def disk_dir(tmp_path: Path) -> Iterator[Path]:
    """An empty directory on a disk: pytest's own, or one in /var/tmp where that is in memory."""
    if not autoencoder_module._in_memory_fs(str(tmp_path)):
        yield tmp_path
        return
    with tempfile.TemporaryDirectory(dir="/var/tmp") as d:
        yield Path(d)


def decode_args(condition: bool, batch: int, height: int = HEIGHT, width: int = WIDTH) -> tuple[np.ndarray, ...]:
    x = inputs(batch, height, width, seed=batch)
    return (x["latent"], x["image"], x["mask"]) if condition else (x["latent"],)


def spilled_and_banded(
    ae: Autoencoder, args: tuple[np.ndarray, ...], spill_dir: Path, band_rows: int | None
) -> tuple[np.ndarray, np.ndarray]:
    banded = ae.decode(*args, banded=True, band_rows=band_rows)
    assert not spill_mapped(), "the unspilled banded decode left a spill mapping"
    spilled = ae.decode(*args, band_rows=band_rows, memory_budget=1, spill_dir=spill_dir)
    assert spill_mapped(), "memory_budget=1 did not put the arena in a spill file"
    ae._core.release_memory()
    return spilled, banded


def assert_bitwise(spilled: np.ndarray, banded: np.ndarray) -> None:
    assert spilled.shape == banded.shape and spilled.dtype == banded.dtype == np.float32
    differ = int(np.count_nonzero(spilled.view(np.uint32) != banded.view(np.uint32)))
    assert differ == 0, f"{differ} of {spilled.size} values differ from the unspilled banded decode"


@pytest.mark.parametrize("size", ["base", "large", "large2"])
@pytest.mark.parametrize("condition", [False, True], ids=["uncond", "cond"])
@pytest.mark.parametrize("band_rows", [3, 5], ids=["rows3", "rows5"])
def test_spilled_decode_is_bitwise_the_banded_decode_in_fp32(
    size: str, condition: bool, band_rows: int, disk_dir: Path
) -> None:
    ae = decoder(size, condition)
    assert_bitwise(*spilled_and_banded(ae, decode_args(condition, 1), disk_dir, band_rows))


def test_spilled_decode_of_a_batch_of_two_is_bitwise_the_banded_decode(disk_dir: Path) -> None:
    ae = decoder("base", True)
    assert_bitwise(*spilled_and_banded(ae, decode_args(True, 2), disk_dir, 5))


def test_spilled_decode_with_many_bands_of_many_pages_is_bitwise_the_banded_decode(disk_dir: Path) -> None:
    """256 x 192 in bands of 7 rows: each band of a level-0 tensor spans several whole pages, so the
    drops really unmap rows that later bands (halo rows) and later layers read again."""
    ae = decoder("base", True)
    assert_bitwise(*spilled_and_banded(ae, decode_args(True, 1, 256, 192), disk_dir, 7))


@needs_bf16
@pytest.mark.parametrize("size", ["base", "large2"])
def test_spilled_decode_is_bitwise_the_banded_decode_in_bf16(size: str, disk_dir: Path) -> None:
    ae = decoder(size, True, "bf16")
    assert_bitwise(*spilled_and_banded(ae, decode_args(True, 2), disk_dir, 5))


def test_no_spill_file_is_left_and_the_mapping_goes_with_release_memory(disk_dir: Path) -> None:
    ae = decoder("base", True)
    ae.decode(*decode_args(True, 1), memory_budget=1, spill_dir=disk_dir)
    maps = Path("/proc/self/maps").read_text()
    assert any("asymvq-arena-" in line and "(deleted)" in line for line in maps.splitlines()), (
        "the spill file is not an unlinked mapping while the plan holds it"
    )
    assert os.listdir(disk_dir) == [], f"files left in spill_dir: {os.listdir(disk_dir)}"
    ae._core.release_memory()
    assert not spill_mapped(), "the spill file is still mapped after release_memory"


def test_an_unspilled_call_on_the_same_plan_brings_the_arena_back_to_memory(disk_dir: Path) -> None:
    ae = decoder("base", True)
    args = decode_args(True, 1)
    spilled = ae.decode(*args, band_rows=3, memory_budget=1, spill_dir=disk_dir)
    assert spill_mapped()
    plans = len(ae.plans)
    banded = ae.decode(*args, band_rows=3)
    assert not spill_mapped(), "the plan kept its spill file for a call that did not ask to spill"
    assert len(ae.plans) == plans, "the unspilled call made a plan of its own instead of reusing the spilled one"
    assert_bitwise(spilled, banded)


def test_the_automatic_budget_spills_above_spill_min_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    ae = decoder("base", True)
    args = decode_args(True, 1)
    ae.decode(*args, banded=True)
    assert not spill_mapped(), "a tiny arena spilled under the default budget"
    monkeypatch.setattr(autoencoder_module, "SPILL_MIN_BYTES", 1)
    if autoencoder_module._in_memory_fs(tempfile.gettempdir()):
        monkeypatch.setattr(tempfile, "tempdir", "/var/tmp")
    ae.decode(*args, banded=True)
    assert spill_mapped(), "memory_budget=None did not spill an arena above SPILL_MIN_BYTES"
    ae._core.release_memory()


def test_the_automatic_spilling_keeps_the_arena_in_memory_where_no_spill_file_can_be_made(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # a temporary directory the process cannot write in: the default decode still runs, unspilled
    ae = decoder("base", True)
    args = decode_args(True, 1)
    expected = ae.decode(*args, banded=True)
    monkeypatch.setattr(autoencoder_module, "SPILL_MIN_BYTES", 1)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "vanished"))
    got = ae.decode(*args, banded=True)
    assert not spill_mapped(), "a spill file was mapped although the temporary directory does not exist"
    assert_bitwise(got, expected)


def test_an_explicit_budget_that_cannot_be_spilled_is_an_error_naming_the_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    ae = decoder("base", True)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "vanished"))
    with pytest.raises(ValueError, match="vanished"):
        ae.decode(*decode_args(True, 1), memory_budget=1)


def test_spill_min_bytes_is_the_documented_4_gib() -> None:
    assert autoencoder_module.SPILL_MIN_BYTES == 4 << 30


# ---- resident memory -----------------------------------------------------------------------------

PEAK_CHILD = """
import json, sys
sys.path[:0] = [{root!r}, {tests!r}]
from test_autoencoder import decoder, inputs

def kb(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])

ae = decoder("base", True)
x = inputs(1, 768, 768)  # band_rows 16: bands of < 4 MiB, so what stays is what the drops leave
kw = {kw}
ae.decode(x["latent"], x["image"], x["mask"], **kw)  # builds the plan
ae._core.release_memory()  # the arena goes; the next call maps (or allocates) it again
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # resets VmHWM to the current resident set
base = kb("VmRSS")
ae.decode(x["latent"], x["image"], x["mask"], **kw)
print(json.dumps({{"growth": (kb("VmHWM") - base) * 1024, "arena": ae.plans[0]["arena_bytes"]}}))
"""


def peak_growth(kw: str) -> tuple[int, int]:
    """(peak resident growth during one decode, arena bytes) of the tiny base decoder at 768 x 768 in
    fp32, measured in a fresh process (VmHWM after resetting it through /proc/self/clear_refs)."""
    code = PEAK_CHILD.format(root=str(ROOT), tests=str(ROOT / "tests"), kw=kw)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    return int(got["growth"]), int(got["arena"])


def test_a_spilled_decode_keeps_its_resident_memory_well_below_the_arena(disk_dir: Path) -> None:
    """Tiny base decoder, 768 x 768, fp32, bands of 16 rows: a 234 MiB arena.  Unspilled, the
    decode's peak grows by the whole arena (240 MiB; also with every drop disabled).  Spilled, the
    resident spill pages sampled every 3 ms stay under 20 MiB, with spikes when a GroupNorm
    statistics pass outruns its drop-behind thread: the peak grew by 97 MiB at load 6 on 2 cores
    and up to 132 MiB at load 8 (the thread is scheduled late).  The bound, 0.65 x the arena,
    holds even when that thread never runs (148 MiB: the 144 MiB level-0 input a statistics pass
    maps, plus a few bands), so it does not depend on the machine's load."""
    whole, arena = peak_growth("dict(banded=True, band_rows=16)")
    assert arena >= 200 << 20, f"the test needs an arena of >= 200 MiB, got {arena >> 20} MiB"
    assert whole >= 0.9 * arena, f"control: the unspilled decode grew by {whole >> 20} of {arena >> 20} MiB"
    spilled, arena2 = peak_growth(f"dict(banded=True, band_rows=16, memory_budget=1, spill_dir={str(disk_dir)!r})")
    assert arena2 == arena
    assert spilled <= 0.65 * arena, (
        f"spilled decode grew by {spilled >> 20} MiB, arena {arena >> 20} MiB (unspilled {whole >> 20} MiB)"
    )


# ---- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize("budget", [0, -1, 1.5, True, "1"])
def test_a_budget_that_is_not_a_positive_number_of_bytes_is_refused(budget: Any) -> None:
    ae = decoder("base", False)
    with pytest.raises(ValueError, match="memory_budget must be a number of bytes >= 1"):
        ae.decode(*decode_args(False, 1), memory_budget=budget)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"banded": False, "memory_budget": 1 << 20},
        {"tile": 32, "memory_budget": 1 << 20},
        {"banded": False, "spill_dir": "."},
        {"tile": 32, "spill_dir": "."},
    ],
    ids=["budget-whole", "budget-tile", "dir-whole", "dir-tile"],
)
def test_spilling_without_the_banded_decode_is_refused(kwargs: dict[str, Any]) -> None:
    ae = decoder("base", False)
    with pytest.raises(ValueError, match="applies to the banded decode only"):
        ae.decode(*decode_args(False, 1), **kwargs)


def test_a_missing_spill_dir_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="spill_dir does not exist") as e:
        decoder("base", False).decode(*decode_args(False, 1), memory_budget=1, spill_dir=missing)
    assert e.value.filename == str(missing)


def test_a_file_as_spill_dir_is_named(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("")
    with pytest.raises(NotADirectoryError, match="spill_dir is not a directory"):
        decoder("base", False).decode(*decode_args(False, 1), memory_budget=1, spill_dir=f)


def test_a_spill_dir_in_memory_is_refused_with_its_name() -> None:
    assert autoencoder_module._in_memory_fs("/dev/shm"), "this test needs /dev/shm on tmpfs (Linux)"
    with pytest.raises(ValueError, match=r"spill directory /dev/shm is in memory \(tmpfs/ramfs\)"):
        decoder("base", False).decode(*decode_args(False, 1), memory_budget=1, spill_dir="/dev/shm")
    assert not spill_mapped()


def test_the_core_refuses_spilling_without_bands_or_a_budget_without_a_directory() -> None:
    core = decoder("base", False)._core
    z = decode_args(False, 1)[0]
    with pytest.raises(ValueError, match="spill_dir applies to the banded decode only"):
        core.decode(z, spill_dir=".", memory_budget=1)
    with pytest.raises(ValueError, match="memory_budget must be >= 1 byte with spill_dir"):
        core.decode(z, banded=True, spill_dir=".", memory_budget=0)
    with pytest.raises(ValueError, match="memory_budget needs spill_dir"):
        core.decode(z, banded=True, memory_budget=5)
