"""``python -m asymvq.bench peers``: the UNet forward in ONNX Runtime and OpenVINO beside asymvq.

At tiny size: the peers run an ONNX export of diffusers' UNet with asymvq's random weights, so their
output must be asymvq fp32's; each engine reports how many threads it really used; a peer that is not
installed is one clear error naming the extra to install.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict

import pytest

from asymvq import config
from asymvq.bench import peers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = str(config.packaged_tiny_config("v1-inpainting-inference"))


@pytest.fixture(scope="module")
def report(tmp_path_factory: Any) -> Dict[str, Any]:
    out = tmp_path_factory.mktemp("peers") / "report.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "asymvq.bench",
            "peers",
            "--config",
            TINY,
            "--size",
            "16",
            "--threads",
            "2",
            "--precision",
            "fp32",
            "--json",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    data: Dict[str, Any] = json.loads(Path(out).read_text())
    return data


def test_both_peers_are_installed_for_the_tests() -> None:
    assert peers.installed_peers() == ["onnxruntime", "openvino"]


@pytest.mark.parametrize("engine", ["onnxruntime fp32", "openvino fp32"])
def test_a_peer_computes_asymvqs_forward_on_the_same_weights(report: Dict[str, Any], engine: str) -> None:
    r = report["engines"][engine]
    assert r["max_diff"] < 1e-4, r  # the eps of a tiny UNet is O(1)


def test_every_engine_reports_its_time_and_the_threads_it_used(report: Dict[str, Any]) -> None:
    assert set(report["engines"]) == {"asymvq fp32", "onnxruntime fp32", "openvino fp32"}
    for name, r in report["engines"].items():
        assert r["seconds"] > 0 and r["cpu"] > 0, name
        assert r["threads_used"] == pytest.approx(r["cpu"] / r["seconds"])
        assert r["fair"] == (r["threads_used"] >= peers.FAIR_SHARE * report["threads"])


def test_a_missing_peer_is_one_clear_error_naming_the_extra(monkeypatch: Any, capsys: Any) -> None:
    monkeypatch.setattr(peers, "installed_peers", lambda: ["openvino"])
    assert peers.run(["--engines", "onnxruntime", "--config", TINY]) == 2
    err = capsys.readouterr().err
    assert "onnxruntime not installed" in err and "asymvq[peers]" in err


def test_no_peer_at_all_is_one_clear_error(monkeypatch: Any, capsys: Any) -> None:
    monkeypatch.setattr(peers, "installed_peers", lambda: [])
    assert peers.run(["--config", TINY]) == 2
    assert "onnxruntime and openvino not installed" in capsys.readouterr().err
