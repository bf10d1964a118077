"""Benchmark of one UNet forward: ``python -m asymvq.bench unet [options]``.

One forward of the full-size SD v1 UNet (860 M parameters, random weights) at a 64x64 latent with
batch 2 (the classifier-free-guidance batch), in fp32 and bf16, against PyTorch + diffusers'
``UNet2DConditionModel`` holding the same weights with the same thread count. Reported per engine:
the time of one forward, the ratio to torch fp32 (targets: fp32 <= 0.67, bf16 <= 0.35), GFLOP/s and
its fraction of the machine's roof, and the peak RSS. asymvq's forward is timed after the call that
builds its plan (weights packed, primitives created), as every sampling step after the first runs;
the build is reported separately. torch runs once, eagerly, as the reference implementation does.

Each engine runs in a child process of its own, so each peak RSS is that engine's alone (it includes
the 3.4 GB of float32 source weights every engine holds). The breakdown (``--breakdown``, on by
default) sums oneDNN's own per-primitive times over one more asymvq forward: convolutions (the
Winograd convolutions' batched GEMMs included, their GFLOP/s counted as direct convolution), linear
layers and the fp32 attention's sgemm calls with their GFLOP/s, and the rest (norms, softmax,
elementwise kernels, the Winograd transforms, and bf16 attention where it runs on AMX tiles).

Work per forward is counted from the config (2 FLOP per multiply-add): 803 GFLOP for batch 1 at
64x64, as in DESIGN.md. The roof is ``--roof FP32[,BF16]`` in GFLOP/s, or measured here with
``asymvq.bench.roof()`` (a large oneDNN matmul).

PyTorch and diffusers are development tools: only the torch child imports them, together with the
test suite's ldm -> diffusers key conversion (``tests/reference/unet_reference.py``), so run the
comparison from the repository root; ``--no-torch`` times asymvq alone.
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import sys
import time
from typing import Any, Dict, Optional, Sequence

import numpy as np

from .. import config as _config
from .. import get_num_threads, set_num_threads, tables
from .. import info as _asymvq_info
from ..config import DiffusionSpec, UNetSpec
from . import harness
from .harness import merge_round, peak_rss, timed
from .weights import random_weights

__all__ = ["run", "forward_flop", "forward_job"]

_TARGETS = {"fp32": 0.67, "bf16": 0.35}
#: fp32 / torch fp32 with every library capped by --isa (issue 12: where most users are).
_ISA_TARGET = 0.8


def forward_flop(spec: UNetSpec, height: int, width: int, batch: int = 1, context_length: int = 77) -> Dict[str, float]:
    """FLOP of one forward by kind: ``conv`` (including the 1x1 proj_in/out), ``linear``, ``attention``
    (the two matmuls per attention). 2 FLOP per multiply-add; norms and elementwise work not counted."""
    mc, emb = spec.model_channels, 4 * spec.model_channels
    f = {"conv": 0.0, "linear": 0.0, "attention": 0.0}

    def conv(co: int, ci: int, k: int, hw: int) -> None:
        f["conv"] += 2.0 * co * ci * k * k * hw

    def linear(rows: int, i: int, o: int) -> None:
        f["linear"] += 2.0 * rows * i * o

    def resblock(ci: int, co: int, hw: int) -> None:
        conv(co, ci, 3, hw)
        conv(co, co, 3, hw)
        linear(1, emb, co)
        if ci != co:
            conv(co, ci, 1, hw)

    def transformer(c: int, hw: int) -> None:
        conv(c, c, 1, hw)
        conv(c, c, 1, hw)
        for _ in range(spec.transformer_depth):
            for _ in range(4):  # attn1 q, k, v, out
                linear(hw, c, c)
            f["attention"] += 4.0 * hw * hw * c
            linear(hw, c, c)  # attn2 q, k, v, out
            linear(context_length, spec.context_dim, c)
            linear(context_length, spec.context_dim, c)
            linear(hw, c, c)
            f["attention"] += 4.0 * hw * context_length * c
            linear(hw, c, 8 * c)  # GEGLU
            linear(hw, 4 * c, c)

    linear(1, mc, emb)
    linear(1, emb, emb)
    hw, ch, ds = height * width, mc, 1
    conv(mc, spec.in_channels, 3, hw)
    skips = [mc]
    attn = set(spec.attention_resolutions)
    levels = len(spec.channel_mult)
    for level, mult in enumerate(spec.channel_mult):
        for _ in range(spec.num_res_blocks):
            resblock(ch, mult * mc, hw)
            ch = mult * mc
            if ds in attn:
                transformer(ch, hw)
            skips.append(ch)
        if level != levels - 1:
            hw //= 4
            conv(ch, ch, 3, hw)
            skips.append(ch)
            ds *= 2
    resblock(ch, ch, hw)
    transformer(ch, hw)
    resblock(ch, ch, hw)
    for level in reversed(range(levels)):
        for r in range(spec.num_res_blocks + 1):
            resblock(ch + skips.pop(), spec.channel_mult[level] * mc, hw)
            ch = spec.channel_mult[level] * mc
            if ds in attn:
                transformer(ch, hw)
            if level and r == spec.num_res_blocks:
                hw *= 4
                conv(ch, ch, 3, hw)
                ds //= 2
    conv(spec.out_channels, ch, 3, hw)
    return {k: v * batch for k, v in f.items()}


def forward_job(args: argparse.Namespace, threads: int) -> Dict[str, Any]:
    """What every child timing this forward gets: config, latent size, batch, threads, seed, repeats."""
    keys = ("config", "size", "batch", "seed", "repeat")
    return {"threads": threads, **{k: getattr(args, k) for k in keys}}


# ---- child processes ---------------------------------------------------------------------------


def _inputs(spec: UNetSpec, batch: int, size: int, seed: int) -> tuple:
    rng = np.random.default_rng(seed + 1)
    x = rng.standard_normal((batch, spec.in_channels, size, size), dtype=np.float32)
    t = np.full(batch, 981, dtype=np.int64)
    context = rng.standard_normal((batch, 77, spec.context_dim), dtype=np.float32)
    return x, t, context


def _child(job: Dict[str, Any]) -> Dict[str, Any]:
    set_num_threads(job["threads"])
    spec = _spec(job["config"])
    weights = random_weights(tables.unet_tensors(spec), job["seed"])
    x, t, context = _inputs(spec, job["batch"], job["size"], job["seed"])
    result: Dict[str, Any] = {"rss_weights": peak_rss()}
    if job["engine"] == "torch":
        torch = __import__("torch")
        torch.set_num_threads(job["threads"])
        sys.path.insert(0, os.getcwd())
        # the test suite's ldm -> diffusers conversion, from the repository root
        model = importlib.import_module("tests.reference.unet_reference").build_reference(spec, weights)
        diffusers = __import__("diffusers")
        result["version"] = f"torch {torch.__version__}, diffusers {diffusers.__version__}"
        tx, tt, tc = torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(context)
        with torch.no_grad():
            result["times"], result["cpu"] = timed(lambda: model(tx, tt, encoder_hidden_states=tc), job["repeat"])
    else:
        from ..unet import UNet

        unet = UNet.from_config(spec, weights, precision=job["engine"])
        start = time.perf_counter()
        unet(x, t, context)
        result["build"] = time.perf_counter() - start
        result["times"], result["cpu"] = timed(lambda: unet(x, t, context), job["repeat"])
        result["arena_bytes"] = unet.plans[0]["arena_bytes"]
        if job["breakdown"]:
            start = time.perf_counter()
            result["breakdown"] = harness.onednn_breakdown(lambda: unet(x, t, context))
            result["breakdown_total"] = time.perf_counter() - start
        if job.get("loop_steps"):
            # a whole guided DDIM loop in C (batch 1 -> the UNet runs at batch 2), plan already built
            from ..sampler import Sampler

            smp = Sampler(kind="ddim", steps=job["loop_steps"], eta=0.0)
            rng = np.random.default_rng(job["seed"] + 1)
            h = job["size"]
            cin = spec.in_channels
            x_T = rng.standard_normal((1, 4, h, h), dtype=np.float32)
            c_concat = rng.standard_normal((1, cin - 4, h, h), dtype=np.float32) if cin > 4 else None
            ctx1 = context[:1]
            start = time.perf_counter()
            smp.sample(unet, x_T, ctx1, ctx1 * 0.5, 7.5, c_concat=c_concat)
            result["loop"] = time.perf_counter() - start
    result["peak_rss"] = peak_rss()
    return result


# ---- report ------------------------------------------------------------------------------------


def _spec(path: Optional[str]) -> UNetSpec:
    spec = _config.load(path or _config.packaged_config("v1-t2i-inference.yaml"))
    if not isinstance(spec, DiffusionSpec):
        raise SystemExit(f"{path}: not a diffusion config")
    return spec.unet


def _attention_tiles(engine: str) -> bool:
    """Whether asymvq's attention runs (partly) in its own tiles, outside oneDNN's timed primitives."""
    info = _asymvq_info()
    if engine == "bf16":
        return bool(info["amx_attention"] or info["bf16_native"])
    return info["kernel_isa"] == "avx512"  # fp32 heads up to 96 wide


def run(argv: Optional[Sequence[str]] = None) -> int:
    """Run the UNet benchmark with command-line arguments ``argv``; prints a report, returns 0."""
    p = argparse.ArgumentParser(prog="python -m asymvq.bench unet", description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=64, help="latent height and width (default 64: 512x512 images)")
    p.add_argument("--batch", type=int, default=2, help="batch (default 2: the guidance pair)")
    p.add_argument("--precision", default="fp32,bf16", help="asymvq precisions (default fp32,bf16)")
    p.add_argument("--threads", type=int, default=0, help="threads for asymvq and torch (default: asymvq's)")
    p.add_argument("--repeat", type=int, default=1, help="timed forwards per engine (default 1; best kept)")
    p.add_argument("--roof", help="fp32[,bf16] GFLOP/s of this machine (default: measure a large matmul)")
    p.add_argument("--config", help="diffusion YAML (default: the packaged v1-t2i-inference.yaml)")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch + diffusers comparison")
    p.add_argument("--no-breakdown", action="store_true", help="skip the per-primitive breakdown")
    p.add_argument(
        "--loop-steps",
        type=int,
        default=0,
        help="also time a whole guided DDIM loop of this many steps in C (the issue's figure: 50)",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="rounds of (asymvq fp32, asymvq bf16, torch) children, best kept: on a machine whose speed "
        "drifts, alternating rounds give every engine the same chances (default 1)",
    )
    args = harness.parse_model_args(p, argv)
    precisions = harness.parse_precisions(p, args.precision)
    if args.isa:
        if "bf16" in precisions:
            print(f"--isa {args.isa}: bf16 needs AVX-512, timing fp32 only")
        precisions = ["fp32"]
    targets = {**_TARGETS, "fp32": _ISA_TARGET} if args.isa else _TARGETS
    if args.size < 8 or args.size % 8 or args.batch < 1 or args.repeat < 1 or args.rounds < 1:
        p.error("--size must be a positive multiple of 8; --batch, --repeat and --rounds must be >= 1")
    if args.threads:
        set_num_threads(args.threads)
    threads = get_num_threads()
    spec = _spec(args.config)
    flop = forward_flop(spec, args.size, args.size, args.batch)
    total = sum(flop.values())
    params = sum(math.prod(s) for s in tables.unet_tensors(spec).values())
    print(
        f"asymvq UNet benchmark: in_channels {spec.in_channels}, {params / 1e6:.0f} M parameters (random), "
        f"latent {args.size}x{args.size}, batch {args.batch}, {threads} thread(s)"
    )
    print(
        f"work per forward: {total / 1e9:.0f} GFLOP (conv {flop['conv'] / 1e9:.0f}, linear "
        f"{flop['linear'] / 1e9:.0f}, attention {flop['attention'] / 1e9:.0f})"
    )
    if args.isa:
        print(f"--isa {args.isa}: {harness.child_isa_line(args.isa)}")
    rf = harness.roof_in_child(args.isa, threads) if args.isa and not args.roof else harness.parse_roof(args.roof)
    print(
        f"roof: fp32 {rf['fp32']:.0f} GFLOP/s, bf16 {rf['bf16']:.0f} GFLOP/s"
        + ("" if args.roof else " (asymvq.bench.roof: large oneDNN matmul)"),
        flush=True,
    )

    job = {
        **forward_job(args, threads),
        "breakdown": not args.no_breakdown,
        "loop_steps": args.loop_steps,
        "isa": args.isa,
    }
    results: Dict[str, Dict[str, Any]] = {}
    for rnd in range(args.rounds):
        last = rnd == args.rounds - 1
        for engine in precisions + ([] if args.no_torch else ["torch"]):
            extra = {} if last else {"breakdown": False, "loop_steps": 0}
            merge_round(results, engine, _run_child({**job, "engine": engine, **extra}))
    torch_s = min(results["torch"]["times"]) if "times" in results.get("torch", {}) else None

    print(
        f"\n{'engine':<12}{'build s':>9}{'forward s':>11}{'/ torch':>9}{'GFLOP/s':>9}{'% roof':>8}"
        f"{'peak RSS GB':>13}{'arena MB':>10}{'CPU s':>8}"
    )
    for engine, r in results.items():
        name = "torch fp32" if engine == "torch" else f"asymvq {engine}"
        if "error" in r:
            print(f"{name:<12} failed: {r['error']}")
            continue
        best = min(r["times"])
        roof = rf["fp32" if engine == "torch" else engine]
        ratio = f"{best / torch_s:9.2f}" if torch_s else f"{'-':>9}"
        build = f"{r['build']:9.1f}" if "build" in r else f"{'-':>9}"
        arena = f"{r['arena_bytes'] / 2**20:10.0f}" if "arena_bytes" in r else f"{'-':>10}"
        cpu = min(r["cpu"])
        print(
            f"{name:<12}{build}{best:11.2f}{ratio}{total / best / 1e9:9.0f}{100 * total / best / 1e9 / roof:8.0f}"
            f"{r['peak_rss'] / 1e9:13.1f}{arena}{cpu:8.2f}"
        )
    if "torch" in results and "version" in results["torch"]:
        print(
            f"(torch: {results['torch']['version']}; every peak RSS includes "
            f"{results['torch']['rss_weights'] / 1e9:.1f} GB of process + source weights before the model)"
        )
    print(
        "(CPU s: process CPU time of the forward; with one thread it is the forward's time on an unloaded "
        "core, a fair comparison on a busy machine)"
    )

    for engine in precisions:
        bd = results.get(engine, {}).get("breakdown")
        if not bd:
            continue
        print(
            f"\nbreakdown, asymvq {engine} (oneDNN per-primitive times of one forward, "
            f"{results[engine]['breakdown_total']:.2f} s in all):"
        )
        accounted = 0.0
        for kind in ("conv", "linear", "attention", "other primitives"):
            if kind not in bd:
                continue
            n, ms = bd[kind]
            accounted += ms / 1e3
            rate = ""
            if kind == "attention" and _attention_tiles(engine):
                kind = "attention sgemm"  # only the wide heads: the rest runs in asymvq's tiles
            elif kind in flop and ms > 0:
                g = flop[kind] / (ms / 1e3) / 1e9
                rate = f"{g:7.0f} GFLOP/s = {100 * g / rf[engine]:3.0f} % of the {engine} roof"
            print(f"  {kind:<17}{ms / 1e3:7.2f} s  {int(n):6d} calls  {rate}")
        rest = results[engine]["breakdown_total"] - accounted
        also = "Winograd transforms, attention tiles" if engine == "fp32" else "attention on AMX/AVX-512 tiles"
        print(f"  {'OpenMP kernels':<17}{rest:7.2f} s  (group/layer norm, softmax, adds, concat, upsample, {also})")

    for engine in precisions:
        if "loop" in results.get(engine, {}):
            r = results[engine]
            print(
                f"\nasymvq {engine}: {args.loop_steps}-step guided DDIM loop in C: {r['loop']:.1f} s "
                f"({r['loop'] / args.loop_steps:.2f} s/step)"
            )
    if torch_s:
        print("\ntargets:")
        for engine in precisions:
            if "times" in results.get(engine, {}):
                ratio = min(results[engine]["times"]) / torch_s
                print(f"  {engine}: {ratio:.2f}x torch fp32 (target <= {targets[engine]})")
    bd = results.get("fp32", {}).get("breakdown", {})
    if "conv" in bd and bd["conv"][1] > 0:
        share = flop["conv"] / (bd["conv"][1] / 1e3) / 1e9 / rf["fp32"]
        print(f"  fp32 convolutions: {100 * share:.0f} % of the fp32 roof (target >= 60 %)")
    return 0


def _run_child(job: Dict[str, Any]) -> Dict[str, Any]:
    return harness.run_child("asymvq.bench.unet", job)


if __name__ == "__main__":
    sys.exit(harness.module_main(_child, run))
