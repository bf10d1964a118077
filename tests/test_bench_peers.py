"""``python -m asymvq.bench peers``: the UNet and the decoders in ONNX Runtime and OpenVINO beside asymvq.

At tiny size, every model in one run (one export child, one torch import): the peers run exports of
diffusers' modules holding asymvq's random weights, so their outputs must be asymvq fp32's; each engine
reports how many threads it really used; asymvq's time is given as a ratio to OpenVINO's; a model a
peer cannot convert is reported in one line and the run goes on; a peer that is not installed is one
clear error naming the extra to install.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import types
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import pytest

from asymvq import config
from asymvq.bench import peers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: the 9-channel inpainting UNet (and its first stage, SD's KL decoder)
TINY = str(config.packaged_tiny_config("v1-inpainting-inference"))
PEER_ROWS = ["onnxruntime fp32", "openvino fp32"]


@pytest.fixture(scope="module")
def run(tmp_path_factory: Any) -> Dict[str, Any]:
    """Every model, tiny, fp32, both peers: the JSON report and what was printed."""
    out = tmp_path_factory.mktemp("peers") / "report.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "asymvq.bench",
            "peers",
            "--tiny",
            "--config",
            TINY,
            "--model",
            ",".join(peers.MODELS),
            "--size",
            "8",
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
    return {"report": data, "stdout": proc.stdout}


def test_both_peers_are_installed_for_the_tests() -> None:
    assert peers.installed_peers() == ["onnxruntime", "openvino"]


def test_every_model_has_a_row_per_installed_engine(run: Dict[str, Any]) -> None:
    models = run["report"]["models"]
    assert list(models) == list(peers.MODELS)
    for model, r in models.items():
        assert r["unconverted"] == {}, model
        assert set(r["engines"]) == {"asymvq fp32", *PEER_ROWS}, model


@pytest.mark.parametrize("engine", PEER_ROWS)
@pytest.mark.parametrize("model", list(peers.MODELS))
def test_a_peer_computes_asymvqs_output_on_the_same_weights(run: Dict[str, Any], model: str, engine: str) -> None:
    r = run["report"]["models"][model]["engines"][engine]
    assert r["relative_diff"] <= 1e-4, r  # max |diff| / max |asymvq fp32|


def test_the_unet_is_the_inpainting_one_of_config_and_the_decoders_see_the_image(run: Dict[str, Any]) -> None:
    assert "== UNet forward: in_channels 9, latent 8x8, batch 2 ==" in run["stdout"]
    assert "== SD's KL decoder: latent 8x8 -> 64x64, batch 1 ==" in run["stdout"]
    assert "== asymmetric decoder 2x: latent 8x8 -> 64x64, batch 1, with image + mask ==" in run["stdout"]


def test_every_engine_reports_its_time_and_the_threads_it_used(run: Dict[str, Any]) -> None:
    threads = run["report"]["threads"]
    for model, m in run["report"]["models"].items():
        for name, r in m["engines"].items():
            assert r["seconds"] > 0 and r["cpu"] > 0 and r["peak_rss"] > 0 and r["load"] >= 0, (model, name)
            assert r["threads_used"] == pytest.approx(r["cpu"] / r["seconds"])
            assert r["fair"] == (r["threads_used"] >= peers.FAIR_SHARE * threads)


def test_asymvq_is_given_as_a_ratio_to_openvino_at_the_same_precision(run: Dict[str, Any]) -> None:
    for model, m in run["report"]["models"].items():
        e = m["engines"]
        assert m["vs_openvino"]["fp32"] == pytest.approx(e["asymvq fp32"]["seconds"] / e["openvino fp32"]["seconds"])
        assert e["onnxruntime fp32"]["vs_openvino"] == pytest.approx(
            e["onnxruntime fp32"]["seconds"] / e["openvino fp32"]["seconds"]
        )
        label = peers.MODELS[model][1]
        assert f"  {label} fp32: " in run["stdout"] and f"(target <= {peers.TARGET})" in run["stdout"]


# ---- a peer that cannot convert a model ---------------------------------------------------------


def _fake_export(monkeypatch: Any, export: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Makes the export child return ``export``; the other children run. Returns every job started."""
    jobs: List[Dict[str, Any]] = []
    real = peers._run_child

    def fake(job: Dict[str, Any]) -> Dict[str, Any]:
        jobs.append(job)
        return export if job["engine"] == "export" else real(job)

    monkeypatch.setattr(peers, "_run_child", fake)
    return jobs


def test_a_model_a_peer_cannot_convert_is_one_line_and_the_run_goes_on(
    monkeypatch: Any, capsys: Any, tmp_path: Path
) -> None:
    why = "torch.onnx.export failed: RuntimeError: simulated"
    jobs = _fake_export(monkeypatch, {"models": {"kl-decoder": {"onnxruntime": {"error": why}}}, "version": "torch"})
    argv = ["--tiny", "--model", "kl-decoder", "--size", "8", "--precision", "fp32", "--engines", "onnxruntime"]
    assert peers.run(argv + ["--json", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    assert f"\nonnxruntime: cannot convert the SD's KL decoder: {why}\n" in out
    r = json.loads((tmp_path / "r.json").read_text())["models"]["kl-decoder"]
    assert r["unconverted"] == {"onnxruntime": why}
    assert set(r["engines"]) == {"asymvq fp32"}  # asymvq is still timed
    assert [j["engine"] for j in jobs] == ["export", "fp32"]  # no onnxruntime child


def test_a_dead_export_child_leaves_every_peer_reported_and_asymvq_timed(
    monkeypatch: Any, capsys: Any, tmp_path: Path
) -> None:
    _fake_export(monkeypatch, {"error": "exit status -9: Killed"})
    argv = [
        "--tiny",
        "--model",
        "decoder-base",
        "--size",
        "8",
        "--precision",
        "fp32",
        "--json",
        str(tmp_path / "r.json"),
    ]
    assert peers.run(argv) == 0
    out = capsys.readouterr().out
    for peer in ("onnxruntime", "openvino"):
        assert f"{peer}: cannot convert the asymmetric decoder base: the export child failed: exit status -9" in out
    r = json.loads((tmp_path / "r.json").read_text())["models"]["decoder-base"]
    assert set(r["unconverted"]) == {"onnxruntime", "openvino"} and set(r["engines"]) == {"asymvq fp32"}


def _raise(*args: Any, **kwargs: Any) -> None:
    raise RuntimeError("Exporting the operator 'aten::simulated' is not supported\nsecond line of the message")


def test_a_failing_exporter_becomes_that_peers_one_line_reason_in_the_export_child(
    monkeypatch: Any, tmp_path: Path
) -> None:
    # torch and openvino stand-ins whose converters raise: the child catches each and names it
    fake_torch = types.SimpleNamespace(
        no_grad=contextlib.nullcontext, from_numpy=np.asarray, onnx=types.SimpleNamespace(export=_raise)
    )
    monkeypatch.setattr(peers, "_torch_module", lambda *a: object())
    monkeypatch.setitem(sys.modules, "openvino", types.SimpleNamespace(convert_model=_raise))
    job = {
        "engines": ["onnxruntime", "openvino"],
        "configs": {"decoder-large": peers._config_path("decoder-large", None, tiny=True)},
        "dirs": {"decoder-large": str(tmp_path)},
        "batch": 0,
        "size": 8,
        "seed": 0,
    }
    out = peers._export_model(fake_torch, job, "decoder-large")
    reason = "RuntimeError: Exporting the operator 'aten::simulated' is not supported"
    assert out == {
        "onnxruntime": {"error": f"torch.onnx.export failed: {reason}"},
        "openvino": {"error": f"ov.convert_model failed: {reason}"},
    }


def test_a_model_that_cannot_be_built_is_every_peers_reason(tmp_path: Path) -> None:
    # the KL decoder from a config that is no diffusion config
    bad = str(config.packaged_tiny_config("autoencoder_kl_32x32x4"))
    job = {
        "engines": ["onnxruntime", "openvino"],
        "configs": {"kl-decoder": bad},
        "dirs": {"kl-decoder": str(tmp_path)},
    }
    out = peers._export_model(None, {**job, "batch": 0, "size": 8, "seed": 0}, "kl-decoder")
    assert set(out) == {"onnxruntime", "openvino"}
    for r in out.values():
        assert (
            r["error"].startswith("building diffusers' model failed: ConfigError: ") and "not a diffusion" in r["error"]
        )


# ---- command-line errors ------------------------------------------------------------------------


def test_a_missing_peer_is_one_clear_error_naming_the_extra(monkeypatch: Any, capsys: Any) -> None:
    monkeypatch.setattr(peers, "installed_peers", lambda: ["openvino"])
    assert peers.run(["--engines", "onnxruntime", "--tiny"]) == 2
    err = capsys.readouterr().err
    assert "onnxruntime not installed" in err and "asymvq[peers]" in err


def test_no_peer_at_all_is_one_clear_error(monkeypatch: Any, capsys: Any) -> None:
    monkeypatch.setattr(peers, "installed_peers", lambda: [])
    assert peers.run(["--tiny"]) == 2
    assert "onnxruntime and openvino not installed" in capsys.readouterr().err


def test_an_unknown_model_is_a_usage_error_naming_the_models(capsys: Any) -> None:
    with pytest.raises(SystemExit) as e:
        peers.run(["--model", "unet,vq-decoder"])
    assert e.value.code == 2
    assert "unknown model 'vq-decoder' (use unet, kl-decoder, decoder-base" in capsys.readouterr().err


def test_a_config_that_is_not_a_diffusion_config_is_one_error_line(capsys: Any) -> None:
    bad = str(config.packaged_tiny_config("autoencoder_kl_32x32x4"))
    assert peers.run(["--model", "kl-decoder", "--config", bad]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "not a diffusion config" in err


def test_a_missing_config_file_is_one_error_line(capsys: Any, tmp_path: Path) -> None:
    assert peers.run(["--config", str(tmp_path / "nowhere.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "nowhere.yaml" in err and "Traceback" not in err


@pytest.mark.parametrize("bad", [["--size", "12"], ["--batch", "0"], ["--rounds", "0"], ["--precision", "fp16"]])
def test_a_bad_number_or_precision_is_a_usage_error(capsys: Any, bad: List[str]) -> None:
    with pytest.raises(SystemExit) as e:
        peers.run(["--tiny", *bad])
    assert e.value.code == 2 and "error: " in capsys.readouterr().err


def test_asymvq_bf16_is_compared_with_openvino_bf16_not_fp32(monkeypatch: Any, tmp_path: Path) -> None:
    seconds = {("fp32", "fp32"): 4.0, ("bf16", "bf16"): 2.0, ("openvino", "fp32"): 8.0, ("openvino", "bf16"): 5.0}

    def fake(job: Dict[str, Any]) -> Dict[str, Any]:  # every child, without running one
        if job["engine"] == "export":
            return {"models": {"kl-decoder": {"openvino": {"path": "unused"}}}, "version": "t"}
        np.save(job["out"], np.ones((1, 3, 8, 8), np.float32))
        s = seconds[job["engine"], job["precision"]]
        return {"times": [s], "cpu": [2 * s], "peak_rss": 1, "version": "v"}

    monkeypatch.setattr(peers, "_run_child", fake)
    argv = ["--tiny", "--model", "kl-decoder", "--size", "8", "--engines", "openvino", "--threads", "2"]
    assert peers.run(argv + ["--json", str(tmp_path / "r.json")]) == 0
    r = json.loads((tmp_path / "r.json").read_text())["models"]["kl-decoder"]
    assert r["vs_openvino"] == {"fp32": pytest.approx(0.5), "bf16": pytest.approx(0.4)}


# ---- --keep: exports kept between runs ----------------------------------------------------------


def _fake_children(calls: List[Dict[str, Any]], export_ok: bool = True) -> Any:
    """A _run_child stand-in: the export writes an OpenVINO file into its folder; timings are fixed."""

    def fake(job: Dict[str, Any]) -> Dict[str, Any]:
        calls.append(job)
        if job["engine"] == "export":
            if not export_ok:
                return {"error": "killed"}
            path = os.path.join(job["dirs"]["kl-decoder"], "kl-decoder.xml")
            Path(path).write_text("model")
            return {"models": {"kl-decoder": {"openvino": {"path": path}}}, "version": "t"}
        np.save(job["out"], np.ones((1, 3, 8, 8), np.float32))
        return {"times": [1.0], "cpu": [2.0], "peak_rss": 1, "version": "v"}

    return fake


KEEP_ARGV = ["--tiny", "--model", "kl-decoder", "--size", "8", "--engines", "openvino", "--threads", "2"]


def test_keep_exports_a_model_once_and_later_runs_reuse_it(monkeypatch: Any, tmp_path: Path, capsys: Any) -> None:
    calls: List[Dict[str, Any]] = []
    monkeypatch.setattr(peers, "_run_child", _fake_children(calls))
    keep = tmp_path / "exports"
    assert peers.run(KEEP_ARGV + ["--keep", str(keep)]) == 0
    assert peers.run(KEEP_ARGV + ["--keep", str(keep)]) == 0
    exports = [c for c in calls if c["engine"] == "export"]
    assert len(exports) == 1
    kept = [p for p in keep.iterdir()]
    assert len(kept) == 1 and not kept[0].name.count(".partial")
    openvino_paths = {c["path"] for c in calls if c["engine"] == "openvino"}
    assert openvino_paths == {str(kept[0] / "kl-decoder.xml")}
    assert f"reusing the exports of kl-decoder in {kept[0]}" in capsys.readouterr().out


def test_keep_does_not_reuse_an_export_of_another_size(monkeypatch: Any, tmp_path: Path) -> None:
    calls: List[Dict[str, Any]] = []
    monkeypatch.setattr(peers, "_run_child", _fake_children(calls))
    keep = tmp_path / "exports"
    assert peers.run(KEEP_ARGV + ["--keep", str(keep)]) == 0
    assert peers.run([*KEEP_ARGV[:4], "16", *KEEP_ARGV[5:], "--keep", str(keep)]) == 0
    assert len([c for c in calls if c["engine"] == "export"]) == 2
    assert len(list(keep.iterdir())) == 2


def test_keep_never_reuses_an_export_that_did_not_finish(monkeypatch: Any, tmp_path: Path) -> None:
    calls: List[Dict[str, Any]] = []
    keep = tmp_path / "exports"
    monkeypatch.setattr(peers, "_run_child", _fake_children(calls, export_ok=False))
    assert peers.run(KEEP_ARGV + ["--keep", str(keep)]) == 0  # the peer is reported as not converted
    monkeypatch.setattr(peers, "_run_child", _fake_children(calls))
    assert peers.run(KEEP_ARGV + ["--keep", str(keep)]) == 0
    assert len([c for c in calls if c["engine"] == "export"]) == 2
    assert [c["path"] for c in calls if c["engine"] == "openvino"] != []


def test_keep_that_is_a_file_is_one_error_line(tmp_path: Path, capsys: Any) -> None:
    afile = tmp_path / "f"
    afile.write_text("")
    assert peers.run(KEEP_ARGV + ["--keep", str(afile)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --keep: cannot use") and str(afile) in err and err.count("\n") == 1
