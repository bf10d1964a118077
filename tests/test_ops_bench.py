"""asymvq.bench: the ``python -m asymvq.bench`` entry (ops vs torch, roof, model dispatch).

Timings are not asserted (the machine may be busy); what is specified is that every benchmark
case is a valid op call, that the table has one row per op and precision with both times and
their ratio, that ``roof()`` returns positive GFLOP/s for both precisions, and that the model
subcommands dispatch to their modules or say clearly that one is missing.
"""

from __future__ import annotations

import re
import sys
import types
from typing import Any, List

import numpy as np
import pytest
from isa import BF16_RUNS

from asymvq import bench
from asymvq._core import ops


def test_ops_table_has_both_times_and_their_ratio_per_op_and_precision(capsys: Any) -> None:
    rc = bench.main(["ops", "--filter", "timestep_embedding", "--repeat", "1", "--no-roof"])
    out = capsys.readouterr().out
    assert rc == 0
    rows = [line for line in out.splitlines() if line.startswith("unet timestep_embedding")]
    assert [line.split()[3] for line in rows] == (["fp32", "bf16"] if BF16_RUNS else ["fp32"])
    for line in rows:
        assert re.search(r"(fp32|bf16)\s+\d+\.\d+\s+\d+\.\d+\s+\d+\.\d+\s+\d+\.\d+ GB/s", line), line


def test_ops_without_torch_prints_asymvq_times_only(capsys: Any) -> None:
    rc = bench.main(
        ["ops", "--filter", "mask resize", "--precision", "fp32", "--repeat", "1", "--no-torch", "--no-roof"]
    )
    out = capsys.readouterr().out
    assert rc == 0
    (row,) = [line for line in out.splitlines() if line.startswith("mask resize")]
    assert re.search(r"fp32\s+\d+\.\d+\s+-\s+-", row), row


def test_ops_reports_the_issue_targets_when_their_rows_ran(capsys: Any) -> None:
    rc = bench.main(["ops", "--filter", "unet conv 3x3 320->320 @64 b2", "--repeat", "1", "--no-roof"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "3x3 conv 320->320 @64x64 fp32:" in out and "x torch's time (target <= 1.0)" in out
    if BF16_RUNS:
        assert "bf16 conv 320->320 @64x64:" in out and "faster than fp32 (target >= 1.6)" in out
    else:  # below AVX-512 (the CPU or ONEDNN_MAX_CPU_ISA): said, not a crash
        assert "bf16 needs AVX-512" in out and "timing fp32 only" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["ops", "--filter", "no such op"], "no op matches --filter"),
        (["ops", "--precision", "fp16"], "unknown precision 'fp16'"),
        (["nope"], "unknown benchmark 'nope'"),
    ],
)
def test_bad_command_lines_fail_with_a_message(argv: List[str], message: str, capsys: Any) -> None:
    try:
        rc = bench.main(argv)
    except SystemExit as e:  # argparse errors
        rc = int(e.code)
    captured = capsys.readouterr()
    assert rc == 2
    assert message in captured.err


def test_model_benchmarks_dispatch_to_their_module(monkeypatch: Any) -> None:
    seen: List[Any] = []
    fake = types.ModuleType("asymvq_fake_bench")
    fake.run = lambda argv: seen.append(argv) or 0  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "asymvq_fake_bench", fake)
    monkeypatch.setitem(bench.MODEL_BENCHES, "vae", "asymvq_fake_bench")
    assert bench.main(["vae", "--size", "256"]) == 0
    assert seen == [["--size", "256"]]


def test_a_missing_model_benchmark_is_named(monkeypatch: Any, capsys: Any) -> None:
    monkeypatch.setitem(bench.MODEL_BENCHES, "unet", "asymvq.bench_does_not_exist")
    assert bench.main(["unet"]) == 2
    assert "module asymvq.bench_does_not_exist is missing" in capsys.readouterr().err


def test_roof_returns_positive_gflops_for_both_precisions() -> None:
    rf = bench.roof(shape=(256, 256, 256), repeat=1)
    assert set(rf) == {"fp32", "bf16"}
    assert rf["fp32"] > 0 and np.isfinite(rf["fp32"])
    if BF16_RUNS:
        assert rf["bf16"] > 0 and np.isfinite(rf["bf16"])
    else:  # no bf16 below AVX-512: not a number rather than a crash
        assert np.isnan(rf["bf16"])


@pytest.mark.slow
@pytest.mark.parametrize("case", bench._cases(), ids=lambda c: c.label)
def test_every_benchmark_case_is_a_valid_op_call_with_torchs_output_shape(case: bench.OpCase) -> None:
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(0)
    arrays, kw = case.make(rng)
    npos = len(arrays) - len(case.kw_arrays)
    kw = dict(kw, **dict(zip(case.kw_arrays, arrays[npos:])))
    got = getattr(ops, case.op)(*arrays[:npos], **kw)
    with torch.inference_mode():
        want = case.torch(torch, F, [torch.from_numpy(a) for a in arrays])()
    assert got.shape == tuple(want.shape)
