"""``python -m asymvq.bench pipeline``: a whole inpainting and txt2img run, stage by stage.

Run at tiny size (``--tiny``): what is specified is the report, not the speed: every stage of each task
in each precision with its wall time, CPU time and peak RSS, and totals per decoder that are the sums
of their stages; bad arguments end in one clear error before any child runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

import pytest
from isa import BF16_RUNS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "asymvq.bench", "pipeline", *args], cwd=ROOT, capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def report(tmp_path_factory: Any) -> Dict[str, Any]:
    out = tmp_path_factory.mktemp("pipeline") / "report.json"
    proc = _bench("--tiny", "--size", "64", "--steps", "2", "--threads", "1", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    data: Dict[str, Any] = json.loads(Path(out).read_text())
    data["stdout"] = proc.stdout
    return data


def _stages(run: Dict[str, Any]) -> List[str]:
    return [row["stage"] for row in run["stages"]]


def test_every_task_runs_in_every_precision(report: Dict[str, Any]) -> None:
    runs = [(r["task"], r["precision"]) for r in report["runs"]]
    precisions = ["fp32", "bf16"] if BF16_RUNS else ["fp32"]
    assert runs == [(t, p) for t in ("inpaint", "txt2img") for p in precisions]


def test_inpainting_times_text_encode_sampling_and_each_decoder(report: Dict[str, Any]) -> None:
    run = report["runs"][0]
    assert _stages(run) == [
        "models (random weights)",
        "text",
        "encode",
        "sample",
        "decode base",
        "decode large",
        "decode large2",
    ]


def test_txt2img_has_no_encode_stage(report: Dict[str, Any]) -> None:
    run = next(r for r in report["runs"] if r["task"] == "txt2img")
    assert _stages(run) == ["models (random weights)", "text", "sample", "decode base", "decode large", "decode large2"]


def test_every_stage_has_a_time_a_cpu_time_and_a_peak_rss(report: Dict[str, Any]) -> None:
    for run in report["runs"]:
        for row in run["stages"]:
            assert row["wall"] > 0 and row["cpu"] > 0, row
            assert 10 * 2**20 < row["peak_rss"] < 8 * 2**30, row


def test_a_total_is_text_encode_sampling_and_that_decoder_without_the_model_build(report: Dict[str, Any]) -> None:
    for run in report["runs"]:
        by = {row["stage"]: row for row in run["stages"]}
        for name, total in run["totals"].items():
            parts = [by[s] for s in ("text", "encode", "sample", f"decode {name}") if s in by]
            assert total["wall"] == pytest.approx(sum(p["wall"] for p in parts))
            assert total["cpu"] == pytest.approx(sum(p["cpu"] for p in parts))
            assert total["peak_rss"] == max(p["peak_rss"] for p in parts)


def test_the_table_names_the_per_step_time_and_the_totals(report: Dict[str, Any]) -> None:
    out = report["stdout"]
    assert "sample (2 steps)" in out
    assert "TOTAL with 1.5x" in out and "TOTAL with 2x" in out
    assert "s per guided step" in out


def test_the_decoder_list_and_the_precision_choose_the_children() -> None:
    proc = _bench(
        "--tiny",
        "--size",
        "64",
        "--steps",
        "2",
        "--threads",
        "1",
        "--tasks",
        "txt2img",
        "--precision",
        "fp32",
        "--decoders",
        "large2",
    )
    assert proc.returncode == 0, proc.stderr
    rows = [line.split() for line in proc.stdout.splitlines() if line.startswith("txt2img")]
    assert {r[1] for r in rows} == {"fp32"}
    assert [" ".join(r[2:4]) for r in rows if r[2] in ("decode", "TOTAL")] == ["decode 2x", "TOTAL with"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--steps", "3"], "--steps: steps=3"),
        (["--decoders", "base,huge"], "unknown decoder 'huge'"),
        (["--tasks", "img2img"], "unknown task 'img2img'"),
        (["--size", "100"], "--size must be a positive multiple of 64"),
        (["--precision", "fp16"], "unknown precision 'fp16'"),
    ],
)
def test_bad_arguments_are_one_clear_error(args: List[str], message: str) -> None:
    proc = _bench("--tiny", *args)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("tiny", [False, True], ids=["full-size", "tiny"])
def test_every_task_names_shipped_configs_and_the_decoders_its_script_uses(tiny: bool) -> None:
    from asymvq import config
    from asymvq.bench import pipeline

    for task, spec in pipeline.TASKS.items():
        diffusion = config.load(pipeline._config_path(spec["config"], tiny))
        assert isinstance(diffusion, config.DiffusionSpec)
        assert diffusion.kind == ("inpaint" if task == "inpaint" else "txt2img")
        assert set(spec["decoders"]) == set(pipeline.DECODERS)
        for name in spec["decoders"].values():
            decoder = config.load(pipeline._config_path(name, tiny))
            assert isinstance(decoder, config.AutoencoderSpec)
            assert decoder.decoder.conditional == (task == "inpaint")  # txt2img decodes without the mask condition
