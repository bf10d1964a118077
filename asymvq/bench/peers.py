"""asymvq's models in other CPU engines: ``python -m asymvq.bench peers [options]``.

Models (``--model``, a comma-separated list; default ``unet``), full size with random weights
(:func:`asymvq.bench.weights.random_weights`), on the same inputs in every engine:

* ``unet``: the forward of ``asymvq.bench unet`` (SD v1 UNet, 64x64 latent, batch 2); diffusers'
  ``UNet2DConditionModel``;
* ``kl-decoder``: SD's KL decoder (``post_quant_conv`` + decoder, 64x64 latent -> 512x512 image,
  batch 1); diffusers' ``AutoencoderKL.decode``;
* ``decoder-base``, ``decoder-large``, ``decoder-large2``: the asymmetric decoders base / 1.5x / 2x with
  the inpainting condition (the image and a mask with a centred hole); diffusers'
  ``AsymmetricAutoencoderKL.decode(latent, image=, mask=)``.

The peers are ONNX Runtime and OpenVINO, when installed (``pip install 'asymvq[peers]'``; never
dependencies of asymvq). One child process builds each model in diffusers with the same weights (the
test suite's key conversions, ``tests/reference/``, so run it from the repository root) and exports it:
for ONNX Runtime with ``torch.onnx.export`` (the TorchScript exporter), for OpenVINO with
``ov.convert_model`` from the torch module and its example inputs, saved with float32 weights. The
UNet's OpenVINO reads the ONNX export instead (``--onnx FILE`` reuses one): its 3.4 GB of weights
are exported once. A model that a peer cannot convert is reported in one line and that peer skips it.

Every engine runs in a child process of its own with the same thread count and is timed after a
warm-up call; ``--rounds`` repeats every engine's child, the engines alternating, and keeps the best.
Its process CPU time is checked against threads x wall time: an engine that used fewer threads than
asked is flagged ("unfair"), not reported as a fair figure. ONNX Runtime is given
``intra_op_num_threads`` = threads with one inter-op thread, OpenVINO ``INFERENCE_NUM_THREADS`` =
threads, one stream, the latency hint and pinning off, and ``INFERENCE_PRECISION_HINT`` f32 or bf16.
(CPU time counts threads that spin waiting for work too, so the check catches too few threads, not
idle ones.) Each output is compared with asymvq fp32's (``max |diff|``, and relative to asymvq fp32's
largest magnitude), so an engine that computed something else shows it. asymvq's time is given as a
ratio to OpenVINO's at the same precision (issue 17's target: <= 0.8).
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import importlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import warnings
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .. import config as _config
from .. import get_num_threads, set_num_threads, tables
from ..config import AutoencoderSpec, DiffusionSpec, UNetSpec
from . import harness
from .weights import random_weights

__all__ = ["run", "PEERS", "MODELS", "TARGET", "installed_peers"]

#: engine -> the Python module it needs
PEERS = {"onnxruntime": "onnxruntime", "openvino": "openvino"}
#: ``--model`` name -> (packaged config, what it is)
MODELS: Dict[str, Tuple[str, str]] = {
    "unet": ("v1-t2i-inference.yaml", "UNet forward"),
    "kl-decoder": ("v1-t2i-inference.yaml", "SD's KL decoder"),
    "decoder-base": ("autoencoder_kl_32x32x4.yaml", "asymmetric decoder base"),
    "decoder-large": ("autoencoder_kl_32x32x4_large.yaml", "asymmetric decoder 1.5x"),
    "decoder-large2": ("autoencoder_kl_32x32x4_large2.yaml", "asymmetric decoder 2x"),
}
#: the models that a diffusion YAML (``--config``) describes
_DIFFUSION_MODELS = ("unet", "kl-decoder")
#: issue 17: asymvq's time / OpenVINO's at the same precision
TARGET = 0.8
#: an engine whose CPU time is below this share of threads x wall time did not use the threads it was given
FAIR_SHARE = 0.75
_INSTALL = "pip install 'asymvq[peers]' (or onnxruntime / openvino alone)"


def installed_peers() -> List[str]:
    """The peers whose module can be imported here."""
    return [name for name, module in PEERS.items() if importlib.util.find_spec(module) is not None]


# ---- models and their inputs (parent and children) ---------------------------------------------


def _config_path(model: str, config: Optional[str], tiny: bool) -> str:
    if config and model in _DIFFUSION_MODELS:
        return config
    name = MODELS[model][0]
    return str(_config.packaged_tiny_config(name) if tiny else _config.packaged_config(name))


def _load(model: str, path: str) -> Tuple[Any, str, Dict[str, Tuple[int, ...]]]:
    """(spec, key prefix, weight table) of ``model`` from its config; ConfigError when the config
    does not describe that model."""
    spec = _config.load(path)
    if model in _DIFFUSION_MODELS:
        if not isinstance(spec, DiffusionSpec):
            raise _config.ConfigError(f"{path}: not a diffusion config (--model {model} needs one)")
        if model == "unet":
            return spec.unet, "", tables.unet_tensors(spec.unet)
        prefix = "first_stage_model."
        return spec.first_stage, prefix, tables.decoder_tensors(spec.first_stage, prefix=prefix)
    if not isinstance(spec, AutoencoderSpec) or not spec.decoder.conditional:
        raise _config.ConfigError(f"{path}: not an asymmetric autoencoder config with condition")
    return spec, "", tables.decoder_tensors(spec)


def _batch(model: str, batch: Optional[int]) -> int:
    return batch or (2 if model == "unet" else 1)


def _inputs(model: str, spec: Any, batch: int, size: int, seed: int) -> Dict[str, np.ndarray]:
    """The named inputs, in the exported models' order; the same in every child."""
    rng = np.random.default_rng(seed + 1)
    if model == "unet":
        assert isinstance(spec, UNetSpec)
        return {
            "x": rng.standard_normal((batch, spec.in_channels, size, size), dtype=np.float32),
            "t": np.full(batch, 981, dtype=np.int64),
            "context": rng.standard_normal((batch, 77, spec.context_dim), dtype=np.float32),
        }
    assert isinstance(spec, AutoencoderSpec)
    side = size * 2 ** (len(spec.decoder.widths) - 1)
    feed = {"latent": rng.standard_normal((batch, spec.embed_dim, size, size), dtype=np.float32)}
    if spec.decoder.conditional:
        mask = np.zeros((batch, 1, side, side), np.float32)
        mask[:, :, side // 4 : 3 * side // 4, side // 4 : 3 * side // 4] = 1  # a centred hole
        feed["image"] = rng.uniform(-1, 1, (batch, spec.decoder.out_channels, side, side)).astype(np.float32)
        feed["mask"] = mask
    return feed


def _describe(model: str, spec: Any, batch: int, size: int) -> str:
    if model == "unet":
        return f"in_channels {spec.in_channels}, latent {size}x{size}, batch {batch}"
    side = size * 2 ** (len(spec.decoder.widths) - 1)
    cond = ", with image + mask" if spec.decoder.conditional else ""
    return f"latent {size}x{size} -> {side}x{side}, batch {batch}{cond}"


# ---- the export child --------------------------------------------------------------------------


def _one_line(e: BaseException) -> str:
    """An exception as one short line: its type and the first line of its message."""
    lines = [s.strip() for s in str(e).splitlines() if s.strip()]
    text = f"{type(e).__name__}: {lines[0] if lines else ''}"
    return text if len(text) <= 300 else text[:297] + "..."


def _torch_module(torch: Any, model: str, spec: Any, prefix: str, weights: Dict[str, np.ndarray]) -> Any:
    """diffusers' module for ``model`` holding ``weights``, as a module whose positional arguments are
    :func:`_inputs`'s (the test suite's key conversions, from the repository root)."""
    if model == "unet":
        reference = importlib.import_module("tests.reference.unet_reference")
        unet = reference.build_reference(spec, weights).eval()

        class _Eps(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.unet = unet

            def forward(self, x: Any, t: Any, context: Any) -> Any:
                return self.unet(x, t, encoder_hidden_states=context, return_dict=False)[0]

        return _Eps()
    reference = importlib.import_module("tests.reference.vae_reference")
    tensors = {k: torch.from_numpy(v) for k, v in weights.items()}
    vae = reference.diffusers_autoencoder(spec, tensors, prefix, asymmetric=spec.decoder.conditional, parts="decoder")

    class _Decode(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.vae = vae

        def forward(self, latent: Any) -> Any:
            return self.vae.decode(latent).sample

    class _DecodeMasked(_Decode):
        def forward(self, latent: Any, image: Any, mask: Any) -> Any:  # type: ignore[override]
            return self.vae.decode(latent, image=image, mask=mask).sample

    return _DecodeMasked() if spec.decoder.conditional else _Decode()


def _export_model(torch: Any, job: Dict[str, Any], model: str) -> Dict[str, Dict[str, str]]:
    """peer -> {"path": its file} or {"error": why it could not be converted}."""
    engines = job["engines"]
    try:
        spec, prefix, table = _load(model, job["configs"][model])
        feed = _inputs(model, spec, _batch(model, job["batch"]), job["size"], job["seed"])
        module = _torch_module(torch, model, spec, prefix, random_weights(table, job["seed"]))
    except Exception as e:  # every peer is told why, the other models still run
        return {peer: {"error": f"building diffusers' model failed: {_one_line(e)}"} for peer in engines}
    args = tuple(torch.from_numpy(v) for v in feed.values())
    base = os.path.join(job["dirs"][model], model)
    out: Dict[str, Dict[str, str]] = {}
    onnx: Dict[str, str] = {}
    if "onnxruntime" in engines or (model == "unet" and "openvino" in engines):
        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the tracer's notes on diffusers' shape checks
                torch.onnx.export(
                    module,
                    args,
                    base + ".onnx",
                    input_names=list(feed),
                    output_names=["out"],
                    opset_version=17,
                    dynamo=False,
                )
            onnx = {"path": base + ".onnx"}
        except Exception as e:
            onnx = {"error": f"torch.onnx.export failed: {_one_line(e)}"}
    if "onnxruntime" in engines:
        out["onnxruntime"] = onnx
    if "openvino" in engines:
        if model == "unet":
            out["openvino"] = onnx
        else:
            try:
                ov = importlib.import_module("openvino")
                with torch.no_grad(), warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    converted = ov.convert_model(module, example_input=args)
                # save_model halves the weights to float16 unless told not to
                ov.save_model(converted, base + ".xml", compress_to_fp16=False)
                out["openvino"] = {"path": base + ".xml"}
            except Exception as e:
                out["openvino"] = {"error": f"ov.convert_model failed: {_one_line(e)}"}
    return out


def _export_name(model: str, config: str, size: int, batch: int, seed: int) -> str:
    """The folder name of a kept export: what the exported model depends on, the config by content."""
    with open(config, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:12]
    return f"{model}-latent{size}-batch{batch}-seed{seed}-{digest}"


def _kept_files(folder: str, model: str, engines: Sequence[str]) -> Dict[str, Dict[str, str]]:
    """peer -> {"path": ...} from a kept export folder, or {} unless it holds every engine's file."""
    out = {}
    for peer in engines:
        name = model + (".onnx" if peer == "onnxruntime" or model == "unet" else ".xml")
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            return {}
        out[peer] = {"path": path}
    return out


def _keep_export(partial: str, folder: str, files: Dict[str, Dict[str, str]]) -> Dict[str, Dict[str, str]]:
    """Rename a finished export folder into place (replacing an older one); the paths now inside it."""
    shutil.rmtree(folder, ignore_errors=True)
    os.rename(partial, folder)
    return {
        peer: {"path": os.path.join(folder, os.path.basename(f["path"]))} if "path" in f else f
        for peer, f in files.items()
    }


def _export(job: Dict[str, Any]) -> Dict[str, Any]:
    """Every model of ``job["models"]`` exported for ``job["engines"]`` into its folder
    ``job["dirs"][model]``: one torch import for all of them."""
    torch = __import__("torch")
    torch.set_num_threads(job["threads"])
    sys.path.insert(0, os.getcwd())
    models: Dict[str, Any] = {}
    for model in job["models"]:
        models[model] = _export_model(torch, job, model)
        gc.collect()  # the last model's weights go before the next is built
    return {"models": models, "version": f"torch {torch.__version__}"}


# ---- the timing children -----------------------------------------------------------------------


def _session(engine: str, path: str, threads: int, precision: str) -> Tuple[Callable[[Dict[str, Any]], Any], str]:
    """(call on the inputs, version) of a peer engine reading ``path``."""
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
        request.infer(list(feed.values()))  # by position: the IR's input names are the tracer's
        return np.array(request.get_output_tensor(0).data)

    return call, f"openvino {ov.__version__}"


def _asymvq_call(
    model: str, spec: Any, path: str, weights: Dict[str, np.ndarray], precision: str
) -> Callable[[Dict[str, np.ndarray]], np.ndarray]:
    if model == "unet":
        from ..unet import UNet

        unet = UNet.from_config(spec, weights, precision=precision)
        return lambda f: np.asarray(unet(f["x"], f["t"], f["context"]))
    from ..autoencoder import Autoencoder

    ae = Autoencoder.from_config(path, weights, precision, parts="decoder")
    return lambda f: ae.decode(f["latent"], f.get("image"), f.get("mask"))


def _child(job: Dict[str, Any]) -> Dict[str, Any]:
    if job["engine"] == "export":
        return _export(job)
    set_num_threads(job["threads"])
    model = job["model"]
    spec, _, table = _load(model, job["config"])
    feed = _inputs(model, spec, job["batch"], job["size"], job["seed"])
    result: Dict[str, Any] = {}
    if job["engine"] in ("fp32", "bf16"):
        call = _asymvq_call(model, spec, job["config"], random_weights(table, job["seed"]), job["engine"])
        result["version"] = "asymvq"
    else:
        call, result["version"] = _session(job["engine"], job["path"], job["threads"], job["precision"])
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
    if job.get("engine") in ("openvino", "export"):
        for var in ISA_CAP_VARS:
            env.pop(var, None)
    return harness.run_child("asymvq.bench.peers", job, env)


def _keep_best(results: Dict[str, Dict[str, Any]], label: str, r: Dict[str, Any]) -> None:
    """Folds one round into ``results[label]``: the round with the best time (its CPU time with it),
    the highest peak RSS; an error stays only while no round succeeded."""
    old = results.get(label)
    if old is None or "error" in old:
        results[label] = r
        return
    if "error" in r:
        return
    if min(r["times"]) < min(old["times"]):
        r["peak_rss"] = max(r["peak_rss"], old["peak_rss"])
        results[label] = r
    else:
        old["peak_rss"] = max(r["peak_rss"], old["peak_rss"])


# ---- report ------------------------------------------------------------------------------------


def _name(label: str) -> str:
    return f"asymvq {label}" if label in ("fp32", "bf16") else label


def _report_model(
    model: str,
    engines: List[Tuple[str, str, str]],
    results: Dict[str, Dict[str, Any]],
    unconverted: Dict[str, str],
    threads: int,
) -> Dict[str, Any]:
    """Prints one model's table; returns its part of the JSON report."""
    ref = np.load(results["fp32"]["out"]) if "times" in results.get("fp32", {}) else None
    scale = float(np.abs(ref).max()) if ref is not None else 0.0
    best = {label: min(r["times"]) for label, r in results.items() if "times" in r}
    head = (
        f"{'engine':<18}{'run s':>9}{'CPU s':>8}{'threads used':>14}{'/ asymvq fp32':>15}{'/ OpenVINO':>12}"
        f"{'peak RSS GB':>13}{'max |diff|':>12}{'relative':>10}{'load':>6}  version"
    )
    print("\n" + head + "\n" + "-" * len(head))
    report: Dict[str, Any] = {"engines": {}, "unconverted": dict(unconverted), "vs_openvino": {}}
    for label, _, prec in engines:
        if label not in results:
            continue
        r, name = results[label], _name(label)
        if "error" in r:
            print(f"{name:<18} failed: {r['error']}")
            continue
        seconds = best[label]
        cpu = r["cpu"][r["times"].index(seconds)]
        used = cpu / seconds
        fair = used >= FAIR_SHARE * threads
        ov = best.get(f"openvino {prec}")
        vs_fp32 = seconds / best["fp32"] if "fp32" in best else None
        vs_ov = seconds / ov if ov else None
        max_diff = float(np.abs(np.load(r["out"]) - ref).max()) if ref is not None else None
        rel = max_diff / scale if max_diff is not None and scale > 0 else None
        print(
            f"{name:<18}{seconds:9.3f}{cpu:8.2f}{used:11.2f}{'' if fair else ' !':<3}"
            + "".join(f"{v:{w}.2f}" if v is not None else f"{'-':>{w}}" for v, w in ((vs_fp32, 15), (vs_ov, 12)))
            + f"{r['peak_rss'] / 1e9:13.2f}"
            + "".join(f"{v:{w}.2e}" if v is not None else f"{'-':>{w}}" for v, w in ((max_diff, 12), (rel, 10)))
            + f"{r['load']:6.1f}  {r['version']}"
        )
        report["engines"][name] = {
            "seconds": seconds,
            "cpu": cpu,
            "threads_used": used,
            "fair": fair,
            "peak_rss": r["peak_rss"],
            "max_diff": max_diff,
            "relative_diff": rel,
            "vs_asymvq_fp32": vs_fp32,
            "vs_openvino": vs_ov,
            "version": r["version"],
            "load": r["load"],
        }
        if label in ("fp32", "bf16") and vs_ov is not None:
            report["vs_openvino"][label] = vs_ov
    for peer, why in unconverted.items():
        print(f"{peer}: cannot convert the {MODELS[model][1]}: {why}")
    return report


def run(argv: Optional[Sequence[str]] = None) -> int:
    """Run the peers benchmark with command-line arguments ``argv``; prints a report; returns 0, or 2 when
    no peer is installed or a config is unusable. A model that a peer cannot convert is reported, not an
    error."""
    p = argparse.ArgumentParser(prog="python -m asymvq.bench peers", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="unet", help=f"comma-separated subset of {', '.join(MODELS)} (default unet)")
    p.add_argument("--size", type=int, default=64, help="latent height and width (default 64: 512x512 images)")
    p.add_argument("--batch", type=int, default=None, help="batch (default 2 for the UNet, the guidance pair; 1 else)")
    p.add_argument("--threads", type=int, default=0, help="threads for every engine (default: asymvq's)")
    p.add_argument("--repeat", type=int, default=1, help="timed calls per child after a warm-up (default 1)")
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="rounds of every engine's child, engines alternating, best kept (default 1)",
    )
    p.add_argument(
        "--precision",
        default="fp32,bf16",
        help="asymvq precisions, and OpenVINO's inference precision (default fp32,bf16)",
    )
    p.add_argument(
        "--engines", default="", help="comma-separated subset of onnxruntime, openvino (default: those installed)"
    )
    p.add_argument("--config", help="diffusion YAML of the UNet and the KL decoder (default: v1-t2i-inference.yaml)")
    p.add_argument("--tiny", action="store_true", help="the packaged tiny configs instead (tests, smoke runs)")
    p.add_argument("--onnx", help="an ONNX export of the UNet to reuse (default: export one into a temporary folder)")
    p.add_argument(
        "--keep",
        metavar="DIR",
        help="keep the peers' exported models in DIR and reuse those already there (same model, size, batch, "
        "seed and config): converting a full-size decoder for OpenVINO takes tens of minutes",
    )
    p.add_argument("--json", help="also write every figure to this JSON file")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(list(argv) if argv is not None else None)
    precisions = harness.parse_precisions(p, args.precision)
    models = [m.strip() for m in args.model.split(",") if m.strip()]
    for m in models:
        if m not in MODELS:
            p.error(f"--model: unknown model {m!r} (use {', '.join(MODELS)})")
    if not models:
        p.error(f"--model: give one or more of {', '.join(MODELS)}")
    batch_ok = args.batch is None or args.batch >= 1
    if args.size < 8 or args.size % 8 or not batch_ok or args.repeat < 1 or args.rounds < 1 or args.threads < 0:
        p.error("--size must be a positive multiple of 8; --batch, --repeat and --rounds must be >= 1; --threads >= 0")
    have = installed_peers()
    wanted = [e.strip() for e in args.engines.split(",") if e.strip()] or have
    for e in wanted:
        if e not in PEERS:
            p.error(f"--engines: unknown engine {e!r} (use {', '.join(PEERS)})")
    missing = [e for e in wanted if e not in have]
    if missing or not wanted:
        print(f"error: {' and '.join(missing or list(PEERS))} not installed: {_INSTALL}", file=sys.stderr)
        return 2
    configs = {m: _config_path(m, args.config, args.tiny) for m in models}
    try:
        specs = {m: _load(m, configs[m])[0] for m in models}
    except _config.ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.threads:
        set_num_threads(args.threads)
    threads = get_num_threads()
    print(
        f"asymvq and its peers ({', '.join(wanted)}): {', '.join(models)}; {threads} thread(s), random weights, "
        f"best of {args.rounds} round(s); load average {harness.load_average()}",
        flush=True,
    )
    common = {"size": args.size, "seed": args.seed, "threads": threads, "repeat": args.repeat}
    report: Dict[str, Any] = {"threads": threads, "rounds": args.rounds, "load_before": harness.load_average()}
    report["models"] = {}
    if args.keep:
        try:
            os.makedirs(args.keep, exist_ok=True)
        except OSError as err:
            print(f"error: --keep: cannot use {args.keep!r} as a folder: {err.strerror}", file=sys.stderr)
            return 2
    with tempfile.TemporaryDirectory(prefix="asymvq-peers-") as tmp:
        files: Dict[str, Dict[str, Dict[str, str]]] = {m: {} for m in models}
        if args.onnx and "unet" in files:
            files["unet"] = {peer: {"path": args.onnx} for peer in wanted}
        kept = (
            {
                m: os.path.join(args.keep, _export_name(m, configs[m], args.size, _batch(m, args.batch), args.seed))
                for m in models
            }
            if args.keep
            else {}
        )
        for m in kept:
            if not files[m] and _kept_files(kept[m], m, wanted):
                files[m] = _kept_files(kept[m], m, wanted)
                print(f"reusing the exports of {m} in {kept[m]}", flush=True)
        to_export = [m for m in models if not files[m]]
        if to_export:
            # with --keep, each model is exported into a partial folder renamed into place once complete, so
            # an interrupted export is never reused
            dirs = {m: kept[m] + f".partial-{os.getpid()}" if kept else os.path.join(tmp, m) for m in to_export}
            for d in dirs.values():
                shutil.rmtree(d, ignore_errors=True)
                os.makedirs(d)
            job = {**common, "engine": "export", "models": to_export, "configs": configs, "batch": args.batch}
            r = _run_child({**job, "engines": wanted, "dirs": dirs})
            for m in to_export:
                if "error" in r:  # the export child died: no peer has this model
                    files[m] = {peer: {"error": f"the export child failed: {r['error']}"} for peer in wanted}
                else:
                    files[m] = r["models"][m]
                if kept:
                    files[m] = _keep_export(dirs[m], kept[m], files[m])
            if "version" in r:
                print(f"exported diffusers' models with {r['version']}", flush=True)
        for m in models:
            batch = _batch(m, args.batch)
            print(f"\n== {MODELS[m][1]}: {_describe(m, specs[m], batch, args.size)} ==", flush=True)
            unconverted = {peer: f["error"] for peer, f in files[m].items() if "error" in f}
            engines = [(prec, prec, prec) for prec in precisions]  # (label, engine, precision)
            for peer in wanted:
                if peer not in unconverted:
                    for prec in precisions if peer == "openvino" else ["fp32"]:
                        engines.append((f"{peer} {prec}", peer, prec))
            results: Dict[str, Dict[str, Any]] = {}
            job = {**common, "model": m, "config": configs[m], "batch": batch}
            for rnd in range(args.rounds):
                for label, engine, prec in engines:
                    out = os.path.join(tmp, f"{m}-{label.replace(' ', '-')}-{rnd}.npy")
                    path = files[m].get(engine, {}).get("path")
                    r = _run_child({**job, "engine": engine, "precision": prec, "path": path, "out": out})
                    r["out"], r["load"] = out, os.getloadavg()[0]  # the 1-minute load as it ended
                    _keep_best(results, label, r)
            report["models"][m] = _report_model(m, engines, results, unconverted, threads)
    capped = [v for v in ISA_CAP_VARS if v in harness.child_env(None)]
    if capped and "openvino" in wanted:
        print(
            f"(OpenVINO ran without {', '.join(capped)}: it cannot run with oneDNN's ISA cap set, "
            "so its ISA is not capped)"
        )
    report["load_after"] = harness.load_average()
    print(
        f"(threads used: process CPU time / wall time of the call; asked {threads}. relative: max |diff| / "
        f"max |asymvq fp32|; load: the 1-minute load average as the engine's child ended. load average after: "
        f"{report['load_after']})"
    )
    targets = []
    for m, r in report["models"].items():
        for prec, ratio in r["vs_openvino"].items():
            ours, theirs = r["engines"][_name(prec)], r["engines"][f"openvino {prec}"]
            flag = "" if ours["fair"] and theirs["fair"] else " (unfair: see threads used)"
            targets.append(
                f"  {MODELS[m][1]} {prec}: {ours['seconds']:.3g} s / OpenVINO {theirs['seconds']:.3g} s = "
                f"{ratio:.2f}x (target <= {TARGET}){flag}"
            )
    if targets:
        print("\nasymvq vs OpenVINO:\n" + "\n".join(targets))
    unfair = [f"{n} ({m})" for m, r in report["models"].items() for n, e in r["engines"].items() if not e["fair"]]
    if unfair:
        print(
            f"unfair: {', '.join(unfair)} used fewer than {FAIR_SHARE:.0%} of the {threads} threads asked "
            "(a busy machine does this too: compare CPU s, or rerun when it is idle)"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(harness.module_main(_child, run))
