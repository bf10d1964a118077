"""Benchmark of the autoencoders: ``python -m asymvq.bench vae [options]``.

SD's KL encoder and the asymmetric decoders base / 1.5x / 2x (with the mask condition, as inpainting
runs them), full size with random weights, on ``--size`` x ``--size`` images (default 512), in fp32 and
bf16, against PyTorch + diffusers (``AutoencoderKL.encode``, ``AsymmetricAutoencoderKL.decode``) holding
the same weights with the same thread count.  Reported per model and engine: the time of one call, the
ratio to torch fp32 (targets: fp32 <= 0.7, bf16 <= 0.4), GFLOP/s and its fraction of the machine's roof,
the peak RSS and asymvq's activation arena.  asymvq is timed after the call that builds its plan
(weights packed, primitives created; reported as "build"); torch runs once, eagerly.

Each (model, engine) runs in a child process of its own, so each peak RSS is that engine's alone; it
includes the float32 source weights every engine holds (reported as "weights").  On a busy machine,
``--interleave --rounds N`` times all engines in one process, called in turn N times, best kept.

Work per call is counted from the config (2 FLOP per multiply-add: convolutions, the 1x1 q/k/v/proj
convs and the mid-block attention's two matmuls; norms and elementwise work not counted): at 512 x 512,
1,117 GFLOP for the encoder and 3,118 / 8,117 / 18,424 for the base / 1.5x / 2x decoders with their
condition encoder, i.e. DESIGN.md's convolution counts (1,082 / 3,083 / 8,065 / 18,356) plus 35-69 GFLOP
of attention matmuls.
The roof is ``--roof FP32[,BF16]`` in GFLOP/s, or measured with ``asymvq.bench.roof()``.

PyTorch and diffusers are development tools: only the torch child imports them, together with the test
suite's original -> diffusers key mapping (``tests/reference/vae_reference.py``), so run the comparison
from the repository root; ``--no-torch`` times asymvq alone.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .. import config as _config
from .. import get_num_threads, set_num_threads, tables
from ..config import AutoencoderSpec, DiffusionSpec
from . import harness
from .harness import merge_round, peak_rss
from .weights import random_weights

__all__ = ["run", "model_weights", "encoder_flop", "decoder_flop", "MODELS"]

_TARGETS = {"fp32": 0.7, "bf16": 0.4}
#: fp32 / torch fp32 with every library capped by --isa (issue 12: where most users are).
_ISA_TARGET = 0.8

#: model name -> packaged config (the encoder is SD's first stage; decoders are the inpainting configs).
MODELS = {
    "encoder": "v1-inpainting-inference.yaml",
    "base": "autoencoder_kl_32x32x4.yaml",
    "large": "autoencoder_kl_32x32x4_large.yaml",
    "large2": "autoencoder_kl_32x32x4_large2.yaml",
}
_LABELS = {"encoder": "encoder", "base": "decoder base", "large": "decoder 1.5x", "large2": "decoder 2x"}


def _spec(model: str) -> Tuple[AutoencoderSpec, str]:
    """(autoencoder spec, key prefix) of a benchmark model."""
    spec = _config.load(_config.packaged_config(MODELS[model]))
    if isinstance(spec, DiffusionSpec):
        return spec.first_stage, "first_stage_model."
    return spec, ""


def _table(model: str) -> Dict[str, Tuple[int, ...]]:
    spec, prefix = _spec(model)
    if model == "encoder":
        return tables.vae_encoder_tensors(spec, prefix=prefix)
    return tables.decoder_tensors(spec, prefix=prefix)


def model_weights(model: str, seed: int = 0) -> Dict[str, np.ndarray]:
    """Random full-size weights of a benchmark model (see :func:`asymvq.bench.weights.random_weights`)."""
    return random_weights(_table(model), seed)


class _Flop:
    def __init__(self) -> None:
        self.total = 0.0
        self.attention = 0.0

    def conv(self, co: int, ci: int, k: int, hw: int) -> None:
        self.total += 2.0 * co * ci * k * k * hw

    def resnet(self, ci: int, co: int, hw: int) -> None:
        self.conv(co, ci, 3, hw)
        self.conv(co, co, 3, hw)
        if ci != co:
            self.conv(co, ci, 1, hw)

    def mid(self, c: int, hw: int) -> None:
        self.resnet(c, c, hw)
        for _ in range(4):  # q, k, v, proj_out
            self.conv(c, c, 1, hw)
        self.attention += 4.0 * hw * hw * c  # q k^T and P v
        self.total += 4.0 * hw * hw * c
        self.resnet(c, c, hw)


def encoder_flop(spec: AutoencoderSpec, height: int, width: int) -> Dict[str, float]:
    """FLOP of the KL encoder + quant_conv on one image (2 per multiply-add): ``total`` and the
    mid-block ``attention`` matmuls' share."""
    e, f = spec.encoder, _Flop()
    hw = height * width
    f.conv(e.ch, e.in_channels, 3, hw)
    ci = e.ch
    for level, w in enumerate(e.widths):
        for _ in range(e.num_res_blocks):
            f.resnet(ci, w, hw)
            ci = w
        if level != len(e.widths) - 1:
            hw //= 4
            f.conv(ci, ci, 3, hw)
    f.mid(ci, hw)
    f.conv(2 * e.z_channels, ci, 3, hw)
    f.conv(2 * spec.embed_dim, 2 * e.z_channels, 1, hw)
    return {"total": f.total, "attention": f.attention}


def decoder_flop(spec: AutoencoderSpec, height: int, width: int, condition: bool = True) -> Dict[str, float]:
    """FLOP of post_quant_conv + the decoder on one image (with the condition encoder if ``condition``):
    ``total`` and the mid-block ``attention`` matmuls' share."""
    d, f = spec.decoder, _Flop()
    n = len(d.widths)
    hw = height * width // 4 ** (n - 1)
    top = d.widths[-1]
    f.conv(d.z_channels, spec.embed_dim, 1, hw)
    f.conv(top, d.z_channels, 3, hw)
    f.mid(top, hw)
    ci = top
    for level in reversed(range(n)):
        for _ in range(d.blocks_per_level):
            f.resnet(ci, d.widths[level], hw)
            ci = d.widths[level]
        if level:
            hw *= 4
            f.conv(ci, ci, 3, hw)
    f.conv(d.out_channels, ci, 3, hw)
    if condition and d.conditional:
        c0, c1, c2 = d.cond_channels
        full = height * width
        f.conv(c0, d.out_channels, 3, full)
        f.conv(c1, c0, 3, full)
        f.conv(c2, c1, 4, full // 4)
        f.conv(c2, c2, 4, full // 16)
        f.conv(c2, c2, 4, full // 64)
    return {"total": f.total, "attention": f.attention}


# ---- child processes ---------------------------------------------------------------------------


def _inputs(size: int, seed: int) -> Dict[str, np.ndarray]:
    rng = np.random.default_rng(seed + 1)
    mask = np.zeros((1, 1, size, size), np.float32)
    mask[:, :, size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 1  # a centred hole
    return {
        "image": rng.uniform(-1, 1, (1, 3, size, size)).astype(np.float32),
        "latent": rng.standard_normal((1, 4, size // 8, size // 8), dtype=np.float32),
        "mask": mask,
    }


def _torch_call(
    model: str,
    spec: AutoencoderSpec,
    prefix: str,
    weights: Dict[str, np.ndarray],
    x: Dict[str, np.ndarray],
    threads: int,
) -> Tuple[Callable[[], Any], str]:
    """One eager diffusers call holding ``weights`` (imports torch, diffusers and the test reference)."""
    torch = __import__("torch")
    torch.set_num_threads(threads)
    sys.path.insert(0, os.path.join(os.getcwd(), "tests"))
    ref = importlib.import_module("reference.vae_reference")  # the test suite's, from the repository root

    tensors = {k: torch.from_numpy(v) for k, v in weights.items()}
    part = "encoder" if model == "encoder" else "decoder"
    net = ref.diffusers_autoencoder(spec, tensors, prefix, asymmetric=model != "encoder", parts=part)
    t = {k: torch.from_numpy(v) for k, v in x.items()}

    def call() -> None:
        with torch.no_grad():
            if model == "encoder":
                net.encode(t["image"])
            else:
                net.decode(t["latent"], image=t["image"], mask=t["mask"])

    diffusers = __import__("diffusers")
    return call, f"torch {torch.__version__}, diffusers {diffusers.__version__}"


def _asymvq_call(
    model: str, precision: str, weights: Dict[str, np.ndarray], x: Dict[str, np.ndarray]
) -> Tuple[Callable[[], Any], Any]:
    from ..autoencoder import Autoencoder

    ae = Autoencoder.from_config(
        _config.packaged_config(MODELS[model]), weights, precision, parts="encoder" if model == "encoder" else "decoder"
    )

    def call() -> None:
        if model == "encoder":
            ae.posterior(x["image"])
        else:
            ae.decode(x["latent"], x["image"], x["mask"])

    return call, ae


def _child(job: Dict[str, Any]) -> Dict[str, Any]:
    set_num_threads(job["threads"])
    model = job["model"]
    spec, prefix = _spec(model)
    weights = model_weights(model, job["seed"])
    x = _inputs(job["size"], job["seed"])
    result: Dict[str, Any] = {"rss_weights": peak_rss()}
    if job["engine"] == "interleave":
        # Every engine in this process, called in turn: noise from other processes hits all alike.
        calls: Dict[str, Callable[[], Any]] = {}
        result["engines"] = {}
        for engine in job["engines"]:
            if engine == "torch":
                calls[engine], result["version"] = _torch_call(model, spec, prefix, weights, x, job["threads"])
                result["engines"][engine] = {"times": []}
            else:
                calls[engine], ae = _asymvq_call(model, engine, weights, x)
                result["engines"][engine] = {
                    "build": _timed(calls[engine]),
                    "times": [],
                    "arena_bytes": ae.memory_bytes,
                }
        for _ in range(job["rounds"]):
            for engine, call in calls.items():
                result["engines"][engine]["times"].append(_timed(call))
    elif job["engine"] == "torch":
        call, result["version"] = _torch_call(model, spec, prefix, weights, x, job["threads"])
        result["times"] = [_timed(call) for _ in range(job["repeat"])]
    else:
        call, ae = _asymvq_call(model, job["engine"], weights, x)
        result["build"] = _timed(call)
        result["times"] = [_timed(call) for _ in range(job["repeat"])]
        result["arena_bytes"] = ae.memory_bytes
        if job["breakdown"]:
            start = time.perf_counter()
            result["breakdown"] = harness.onednn_breakdown(call)
            result["breakdown_total"] = time.perf_counter() - start
    result["peak_rss"] = peak_rss()
    return result


# ---- report ------------------------------------------------------------------------------------


def _print_breakdown(label: str, engine: str, r: Dict[str, Any], flop: Dict[str, float], roof: float) -> None:
    bd = r.get("breakdown")
    if not bd:
        return
    print(
        f"  breakdown, {label} asymvq {engine} (oneDNN per-primitive times of one more call, "
        f"{r['breakdown_total']:.2f} s in all):"
    )
    conv_flop = flop["total"] - flop["attention"]
    accounted = 0.0
    for kind, work in (("conv", conv_flop), ("attention", flop["attention"]), ("other primitives", 0.0)):
        if kind not in bd:
            continue
        n, ms = bd[kind]
        accounted += ms / 1e3
        rate = ""
        if work and ms > 0:
            g = work / (ms / 1e3) / 1e9
            rate = f"{g:7.0f} GFLOP/s = {100 * g / roof:3.0f} % of the roof"
        print(f"    {kind:<17}{ms / 1e3:7.2f} s  {int(n):5d} calls  {rate}")
    rest = r["breakdown_total"] - accounted
    print(f"    {'OpenMP kernels':<17}{rest:7.2f} s  (group norm, upsample, blend, relu, posterior)")


def run(argv: Optional[Sequence[str]] = None) -> int:
    """Run the autoencoder benchmark with command-line arguments ``argv``; prints a report, returns 0."""
    p = argparse.ArgumentParser(prog="python -m asymvq.bench vae", description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=512, help="image height and width (default 512)")
    p.add_argument(
        "--models",
        default="encoder,base,large,large2",
        help=f"comma-separated subset of {','.join(MODELS)} (default all)",
    )
    p.add_argument("--precision", default="fp32,bf16", help="asymvq precisions (default fp32,bf16)")
    p.add_argument("--threads", type=int, default=0, help="threads for asymvq and torch (default: asymvq's)")
    p.add_argument("--repeat", type=int, default=1, help="timed calls per engine and round (default 1)")
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="rounds of (torch, asymvq fp32, asymvq bf16) children, best kept: alternating rounds "
        "spread noise from other processes over every engine (default 1)",
    )
    p.add_argument(
        "--interleave",
        action="store_true",
        help="time every engine in one process, called in turn --rounds times (best kept): fairer on a "
        "busy machine; peak RSS is then the engines' together",
    )
    p.add_argument("--roof", help="fp32[,bf16] GFLOP/s of this machine (default: measure a large matmul)")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch + diffusers comparison")
    p.add_argument("--no-breakdown", action="store_true", help="skip the per-primitive breakdown")
    args = harness.parse_model_args(p, argv)
    models = [s.strip() for s in args.models.split(",") if s.strip()]
    precisions = harness.parse_precisions(p, args.precision)
    for m in models:
        if m not in MODELS:
            p.error(f"--models: unknown model {m!r} (use {', '.join(MODELS)})")
    if args.isa:
        if "bf16" in precisions:
            print(f"--isa {args.isa}: bf16 needs AVX-512, timing fp32 only")
        precisions = ["fp32"]
    targets = {**_TARGETS, "fp32": _ISA_TARGET} if args.isa else _TARGETS
    if args.size < 8 or args.size % 8 or args.repeat < 1 or args.rounds < 1:
        p.error("--size must be a positive multiple of 8; --repeat and --rounds must be >= 1")
    if args.threads:
        set_num_threads(args.threads)
    threads = get_num_threads()
    if args.isa:
        print(f"--isa {args.isa}: {harness.child_isa_line(args.isa)}")
    rf = harness.roof_in_child(args.isa, threads) if args.isa and not args.roof else harness.parse_roof(args.roof)
    print(
        f"asymvq autoencoder benchmark: {args.size}x{args.size} image, batch 1, random full-size weights, "
        f"{threads} thread(s), best of {args.rounds} round(s) x {args.repeat} call(s)"
    )
    print(
        f"roof: fp32 {rf['fp32']:.0f} GFLOP/s, bf16 {rf['bf16']:.0f} GFLOP/s"
        + ("" if args.roof else " (asymvq.bench.roof: large oneDNN matmul)"),
        flush=True,
    )
    head = (
        f"{'model':<14}{'engine':<13}{'GFLOP':>7}{'build s':>9}{'run s':>8}{'/ torch':>9}{'GFLOP/s':>9}"
        f"{'% roof':>8}{'peak RSS GB':>13}{'weights GB':>12}{'arena MB':>10}"
    )
    print("\n" + head + "\n" + "-" * len(head), flush=True)
    summary: List[str] = []
    version = ""
    engines = (["torch"] if not args.no_torch else []) + precisions
    for model in models:
        spec, _ = _spec(model)
        flop = (
            encoder_flop(spec, args.size, args.size) if model == "encoder" else decoder_flop(spec, args.size, args.size)
        )
        total = flop["total"]
        job = {
            "model": model,
            "size": args.size,
            "threads": threads,
            "seed": args.seed,
            "repeat": args.repeat,
            "breakdown": False,
            "isa": args.isa,
        }
        results: Dict[str, Dict[str, Any]] = {}
        if args.interleave:
            r = _run_child({**job, "engine": "interleave", "engines": engines, "rounds": args.rounds})
            for engine in engines:
                results[engine] = (
                    dict(
                        r["engines"][engine],
                        peak_rss=r["peak_rss"],
                        rss_weights=r["rss_weights"],
                        version=r.get("version", ""),
                    )
                    if "error" not in r
                    else r
                )
        for rnd in range(0 if args.interleave else args.rounds):
            for engine in engines:
                last = rnd == args.rounds - 1
                merge_round(
                    results, engine, _run_child({**job, "engine": engine, "breakdown": last and not args.no_breakdown})
                )
        torch_s = min(results["torch"]["times"]) if "times" in results.get("torch", {}) else None
        for engine in engines:
            r = results[engine]
            name = "torch fp32" if engine == "torch" else f"asymvq {engine}"
            if "error" in r:
                print(f"{_LABELS[model]:<14}{name:<13} failed: {r['error']}", flush=True)
                continue
            version = r.get("version", version)
            best = min(r["times"])
            roof = rf["fp32" if engine == "torch" else engine]
            ratio = f"{best / torch_s:9.2f}" if torch_s and engine != "torch" else f"{'-':>9}"
            build = f"{r['build']:9.1f}" if "build" in r else f"{'-':>9}"
            arena = f"{r['arena_bytes'] / 2**20:10.0f}" if "arena_bytes" in r else f"{'-':>10}"
            print(
                f"{_LABELS[model]:<14}{name:<13}{total / 1e9:7.0f}{build}{best:8.2f}{ratio}{total / best / 1e9:9.0f}"
                f"{100 * total / best / 1e9 / roof:8.0f}{r['peak_rss'] / 1e9:13.2f}{r['rss_weights'] / 1e9:12.2f}"
                f"{arena}",
                flush=True,
            )
            if torch_s and engine != "torch":
                summary.append(
                    f"  {_LABELS[model]} {engine}: {best / torch_s:.2f}x torch fp32 (target <= {targets[engine]})"
                )
        for engine in precisions:
            if "breakdown" in results.get(engine, {}):
                _print_breakdown(_LABELS[model], engine, results[engine], flop, rf[engine])
    if version:
        print(f"(torch: {version})")
    if summary:
        print("\ntargets:\n" + "\n".join(summary))
    return 0


def _timed(call: Callable[[], Any]) -> float:
    return harness.timed(call)[0][0]


def _run_child(job: Dict[str, Any]) -> Dict[str, Any]:
    return harness.run_child("asymvq.bench.vae", job)


if __name__ == "__main__":
    sys.exit(harness.module_main(_child, run))
