"""The UNet forward in other CPU engines: ``python -m asymvq.bench peers [options]``.

The forward of ``asymvq.bench unet`` (full-size SD v1 UNet, random weights, 64x64 latent, batch 2) in
asymvq and in the peers that are installed: ONNX Runtime and OpenVINO (``pip install 'asymvq[peers]'``;
never dependencies of asymvq). The peers run an ONNX export of diffusers' ``UNet2DConditionModel``
holding the same weights (exported here with torch + diffusers and the test suite's key conversion,
``tests/reference/unet_reference.py``, so run it from the repository root; or ``--onnx FILE``).

Every engine runs in a child process of its own with the same thread count and is timed after a
warm-up call. Its process CPU time is checked against threads x wall time: an engine that used fewer
threads than asked is flagged ("unfair"), not reported as a fair figure. ONNX Runtime is given
``intra_op_num_threads`` = threads with one inter-op thread, OpenVINO ``INFERENCE_NUM_THREADS`` =
threads, one stream, the latency hint and pinning off. (CPU time counts threads that spin waiting
for work too, so the check catches too few threads, not idle ones.) Each output is compared with
asymvq fp32's (``max |diff|``), so an engine that computed something else shows it.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import sys
import tempfile
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from .. import config as _config
from .. import get_num_threads, set_num_threads, tables
from ..config import DiffusionSpec, UNetSpec
from . import harness
from .unet import forward_job
from .weights import random_weights

__all__ = ["run", "PEERS", "installed_peers"]

#: engine -> the Python module it needs
PEERS = {"onnxruntime": "onnxruntime", "openvino": "openvino"}
#: an engine whose CPU time is below this share of threads x wall time did not use the threads it was given
FAIR_SHARE = 0.75
_INSTALL = "pip install 'asymvq[peers]' (or onnxruntime / openvino alone)"


def installed_peers() -> List[str]:
    """The peers whose module can be imported here."""
    return [name for name, module in PEERS.items() if importlib.util.find_spec(module) is not None]


def _spec(path: Optional[str]) -> UNetSpec:
    spec = _config.load(path or _config.packaged_config("v1-t2i-inference.yaml"))
    if not isinstance(spec, DiffusionSpec):
        raise SystemExit(f"{path}: not a diffusion config")
    return spec.unet


def _inputs(spec: UNetSpec, batch: int, size: int, seed: int) -> Dict[str, np.ndarray]:
    rng = np.random.default_rng(seed + 1)
    return {
        "x": rng.standard_normal((batch, spec.in_channels, size, size), dtype=np.float32),
        "t": np.full(batch, 981, dtype=np.int64),
        "context": rng.standard_normal((batch, 77, spec.context_dim), dtype=np.float32),
    }


def _export(job: Dict[str, Any]) -> Dict[str, Any]:
    """Exports diffusers' UNet with the benchmark's weights to ``job["onnx"]`` (torch's TorchScript
    exporter; weights past 2 GB go to external data files beside it)."""
    torch = __import__("torch")
    sys.path.insert(0, os.getcwd())
    reference = importlib.import_module("tests.reference.unet_reference")  # from the repository root

    spec = _spec(job["config"])
    model = reference.build_reference(spec, random_weights(tables.unet_tensors(spec), job["seed"])).eval()

    class _Eps(torch.nn.Module):  # type: ignore[name-defined]
        def __init__(self, unet: Any) -> None:
            super().__init__()
            self.unet = unet

        def forward(self, x: Any, t: Any, context: Any) -> Any:
            return self.unet(x, t, encoder_hidden_states=context, return_dict=False)[0]

    x = {k: torch.from_numpy(v) for k, v in _inputs(spec, job["batch"], job["size"], job["seed"]).items()}
    import warnings

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on diffusers' shape checks
        torch.onnx.export(
            _Eps(model),
            (x["x"], x["t"], x["context"]),
            job["onnx"],
            input_names=["x", "t", "context"],
            output_names=["eps"],
            opset_version=17,
            dynamo=False,
        )
    return {"onnx": job["onnx"], "version": f"torch {torch.__version__}"}


def _session(engine: str, path: str, threads: int, precision: str) -> tuple:
    """(zero-argument call on the inputs given later, version) of a peer engine."""
    if engine == "onnxruntime":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        return (lambda feed: sess.run(None, feed)[0]), f"onnxruntime {ort.__version__}"
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(
        path,
        "CPU",
        {
            "INFERENCE_NUM_THREADS": threads,
            "NUM_STREAMS": 1,
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
            "ENABLE_CPU_PINNING": False,
        },
    )
    request = compiled.create_infer_request()

    def call(feed: Dict[str, np.ndarray]) -> np.ndarray:
        request.infer(feed)
        return np.array(request.get_output_tensor(0).data)

    return call, f"openvino {ov.__version__}"


def _child(job: Dict[str, Any]) -> Dict[str, Any]:
    if job["engine"] == "export":
        return _export(job)
    set_num_threads(job["threads"])
    spec = _spec(job["config"])
    feed = _inputs(spec, job["batch"], job["size"], job["seed"])
    result: Dict[str, Any] = {}
    if job["engine"] in ("fp32", "bf16"):
        from ..unet import UNet

        unet = UNet.from_config(spec, random_weights(tables.unet_tensors(spec), job["seed"]), precision=job["engine"])

        def call(f: Dict[str, np.ndarray]) -> np.ndarray:
            return np.asarray(unet(f["x"], f["t"], f["context"]))

        result["version"] = "asymvq"
    else:
        call, result["version"] = _session(job["engine"], job["onnx"], job["threads"], job["precision"])
    out: List[np.ndarray] = []
    harness.timed(lambda: out.append(call(feed)))  # warm-up: plans, primitives, weight packing
    result["times"], result["cpu"] = harness.timed(lambda: call(feed), job["repeat"])
    np.save(job["out"], np.asarray(out[0], dtype=np.float32))
    result["peak_rss"] = harness.peak_rss()
    return result


#: OpenVINO's CPU plugin (its own oneDNN fork) fails to compile any model, or crashes, when oneDNN's ISA
#: cap is in the environment; its child runs without it
ISA_CAP_VARS = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")


def _run_child(job: Dict[str, Any]) -> Dict[str, Any]:
    env = harness.child_env(job.get("isa"))
    if job.get("engine") == "openvino":
        for var in ISA_CAP_VARS:
            env.pop(var, None)
    return harness.run_child("asymvq.bench.peers", job, env)


def run(argv: Optional[Sequence[str]] = None) -> int:
    """Run the peers benchmark with command-line arguments ``argv``; prints a report; returns 0, or 2 when no
    peer is installed or the export failed."""
    p = argparse.ArgumentParser(prog="python -m asymvq.bench peers", description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=64, help="latent height and width (default 64: 512x512 images)")
    p.add_argument("--batch", type=int, default=2, help="batch (default 2: the guidance pair)")
    p.add_argument("--threads", type=int, default=0, help="threads for every engine (default: asymvq's)")
    p.add_argument("--repeat", type=int, default=1, help="timed forwards per engine after a warm-up (default 1)")
    p.add_argument(
        "--precision",
        default="fp32,bf16",
        help="asymvq precisions, and OpenVINO's inference precision (default fp32,bf16)",
    )
    p.add_argument(
        "--engines", default="", help="comma-separated subset of onnxruntime, openvino (default: those installed)"
    )
    p.add_argument("--config", help="diffusion YAML (default: the packaged v1-t2i-inference.yaml)")
    p.add_argument("--onnx", help="an ONNX export of the UNet to reuse (default: export one into a temporary folder)")
    p.add_argument("--json", help="also write every figure to this JSON file")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(list(argv) if argv is not None else None)
    precisions = harness.parse_precisions(p, args.precision)
    if args.size < 8 or args.size % 8 or args.batch < 1 or args.repeat < 1 or args.threads < 0:
        p.error("--size must be a positive multiple of 8; --batch and --repeat must be >= 1; --threads >= 0")
    have = installed_peers()
    wanted = [e.strip() for e in args.engines.split(",") if e.strip()] or have
    for e in wanted:
        if e not in PEERS:
            p.error(f"--engines: unknown engine {e!r} (use {', '.join(PEERS)})")
    missing = [e for e in wanted if e not in have]
    if missing or not wanted:
        print(f"error: {' and '.join(missing or list(PEERS))} not installed: {_INSTALL}", file=sys.stderr)
        return 2
    if args.threads:
        set_num_threads(args.threads)
    threads = get_num_threads()
    spec = _spec(args.config)
    print(
        f"UNet forward in asymvq and its peers: in_channels {spec.in_channels}, latent {args.size}x{args.size}, "
        f"batch {args.batch}, {threads} thread(s), random weights; load average {harness.load_average()}",
        flush=True,
    )
    job = forward_job(args, threads)
    with tempfile.TemporaryDirectory(prefix="asymvq-peers-") as tmp:
        onnx = args.onnx
        if onnx is None:
            onnx = os.path.join(tmp, "unet.onnx")
            r = _run_child({**job, "engine": "export", "onnx": onnx})
            if "error" in r:
                print(
                    "error: exporting the UNet to ONNX failed (it needs torch and diffusers: pip install "
                    f"'asymvq[test]', and the repository root as the working directory; or pass --onnx FILE):\n"
                    f"{r['error']}",
                    file=sys.stderr,
                )
                return 2
            print(f"exported diffusers' UNet to ONNX with {r['version']}", flush=True)
        engines = [(e, e, "fp32") for e in precisions]
        for e in wanted:
            for prec in precisions if e == "openvino" else ["fp32"]:
                engines.append((f"{e} {prec}", e, prec))
        results: Dict[str, Dict[str, Any]] = {}
        for label, engine, prec in engines:
            out = os.path.join(tmp, f"{label.replace(' ', '-')}.npy")
            results[label] = _run_child({**job, "engine": engine, "precision": prec, "onnx": onnx, "out": out})
            results[label]["out"] = out
        ref = np.load(results["fp32"]["out"]) if "times" in results.get("fp32", {}) else None
        head = (
            f"{'engine':<18}{'forward s':>10}{'CPU s':>8}{'threads used':>14}{'/ asymvq fp32':>15}"
            f"{'peak RSS GB':>13}{'max |diff|':>12}  version"
        )
        print("\n" + head + "\n" + "-" * len(head))
        base = min(results["fp32"]["times"]) if ref is not None else None
        unfair = []
        report: Dict[str, Any] = {"threads": threads, "engines": {}}
        for label, _, _ in engines:
            r = results[label]
            name = f"asymvq {label}" if label in ("fp32", "bf16") else label
            if "error" in r:
                print(f"{name:<18} failed: {r['error']}")
                continue
            best = min(r["times"])
            cpu = r["cpu"][r["times"].index(best)]
            used = cpu / best
            fair = used >= FAIR_SHARE * threads
            if not fair:
                unfair.append(name)
            ratio = f"{best / base:15.2f}" if base else f"{'-':>15}"
            max_diff = float(np.abs(np.load(r["out"]) - ref).max()) if ref is not None else None
            diff = f"{max_diff:12.2e}" if max_diff is not None else f"{'-':>12}"
            print(
                f"{name:<18}{best:10.3f}{cpu:8.2f}{used:11.2f}{'' if fair else ' !':<3}{ratio}"
                f"{r['peak_rss'] / 1e9:13.2f}{diff}  {r['version']}"
            )
            report["engines"][name] = {
                "seconds": best,
                "cpu": cpu,
                "threads_used": used,
                "fair": fair,
                "peak_rss": r["peak_rss"],
                "max_diff": max_diff,
                "version": r["version"],
            }
    capped = [v for v in ISA_CAP_VARS if v in harness.child_env(job.get("isa"))]
    if capped and any(e == "openvino" for _, e, _ in engines):
        print(
            f"(OpenVINO ran without {', '.join(capped)}: it cannot run with oneDNN's ISA cap set, "
            "so its ISA is not capped)"
        )
    print(
        f"(threads used: process CPU time / wall time of the forward; asked {threads}. load average after: "
        f"{harness.load_average()})"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    if unfair:
        print(
            f"unfair: {', '.join(unfair)} used fewer than {FAIR_SHARE:.0%} of the {threads} threads asked "
            "(a busy machine does this too: compare CPU s, or rerun when it is idle)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(harness.module_main(_child, run))
