"""A whole run, stage by stage: ``python -m asymvq.bench pipeline [options]``.

One 512 x 512 inpainting as ``inpaint_st`` runs it (text encoder on the prompt and the empty prompt,
KL encoder on the masked image, 50 guided DDIM steps with eta 1 on the 9-channel UNet, then the
asymmetric decoder base / 1.5x / 2x with the mask condition) and one txt2img as ``txt2img`` runs it
(text, 50 guided DDIM steps with eta 0 on the 4-channel UNet, the decoders without condition), in
fp32 and bf16. Full-size models with random weights (:func:`asymvq.bench.weights.random_weights`):
the time of a step does not depend on the weights' values.

Each (task, precision) runs in a child process of its own, holding every model at once as a
pipeline does (the decoders one at a time). Reported per stage: the wall time, the process CPU time
(on a busy machine the steadier figure; above threads x wall, waiting threads spin), the peak RSS
during that stage (the kernel's high-water mark, reset before each stage), the packed weights of
every model held after it (owned copies, Winograd's included), the arena and oneDNN scratchpad of
that stage's model, and the headroom: peak RSS minus the weights, against issue 17's targets
(1 GB in bf16, 1.5 GB in fp32). As the pipelines do, each stage frees its model's arena when it is
over (``--keep-arenas``: they stay, as before). Then the totals per decoder: text + encode +
sampling + that decoder's decode, the figure of one image as a user sees it. Every stage is a first
call, its plan build included, as in a one-image run; building the models from the weights is
reported apart and is not in the totals (a real run reads a checkpoint instead). ``--steps`` shortens
the loop; ``--tiny`` runs the tiny test configs.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from .. import _core, get_num_threads, info, set_num_threads, tables
from .. import config as _config
from . import harness
from .weights import random_weights

__all__ = ["run", "TASKS", "DECODERS"]

#: task -> (diffusion config, decoder config per decoder name, DDIM eta as the original script runs it)
TASKS: Dict[str, Dict[str, Any]] = {
    "inpaint": {
        "config": "v1-inpainting-inference",
        "eta": 1.0,
        "decoders": {
            "base": "autoencoder_kl_32x32x4",
            "large": "autoencoder_kl_32x32x4_large",
            "large2": "autoencoder_kl_32x32x4_large2",
        },
    },
    "txt2img": {
        "config": "v1-t2i-inference",
        "eta": 0.0,
        "decoders": {
            "base": "autoencoder_kl_woc_32x32x4",
            "large": "autoencoder_kl_woc_32x32x4_large",
            "large2": "autoencoder_kl_woc_32x32x4_large2",
        },
    },
}
#: decoder name -> its label in the report
DECODERS = {"base": "base", "large": "1.5x", "large2": "2x"}
#: issue 17's memory targets: peak RSS minus the packed weights, per precision
HEADROOM_TARGET = {"bf16": 1.0e9, "fp32": 1.5e9}
_PROMPT = "a photograph of an astronaut riding a horse on the moon"
_SCALE = 7.5


def _config_path(name: str, tiny: bool) -> str:
    return str(_config.packaged_tiny_config(name) if tiny else _config.packaged_config(name + ".yaml"))


class _Stages:
    """Times stages in this process: wall, CPU, the peak RSS and the memory of each."""

    def __init__(self, release: bool) -> None:
        self.rows: List[Dict[str, Any]] = []
        self.rss_resets = True
        self.release = release

    def run(self, name: str, call: Callable[[], Any], models: Sequence[Any] = ()) -> Any:
        """Runs ``call`` as stage ``name`` of ``models`` (whose plans it reports, then frees unless kept)."""
        from ..pipelines import _release

        gc.collect()
        _core.Model.trim()
        self.rss_resets = harness.reset_peak_rss() and self.rss_resets
        out: List[Any] = []
        times, cpu = harness.timed(lambda: out.append(call()))
        peak = harness.peak_rss()
        held = _core.Model.process_memory()
        plans = [p for m in models for p in m.plans]
        self.rows.append(
            {
                "stage": name,
                "wall": times[0],
                "cpu": cpu[0],
                "peak_rss": peak,
                "weight_bytes": held["weight_bytes"],
                "arena_bytes": sum(p["arena_bytes"] for p in plans),
                "scratch_bytes": sum(p["scratch_bytes"] for p in plans),
                "plan_bytes": held["plan_bytes"],  # every model's, held at the stage's end
                "headroom": peak - held["weight_bytes"],
            }
        )
        if self.release:
            for m in models:
                _release(m)
        return out[0]


def _inputs(size: int, seed: int) -> Dict[str, np.ndarray]:
    rng = np.random.default_rng(seed + 1)
    mask = np.zeros((1, 1, size, size), np.float32)
    mask[:, :, size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 1  # a centred hole
    return {"image": rng.uniform(-1, 1, (1, 3, size, size)).astype(np.float32), "mask": mask}


def _decode_call(dec: Any, z: np.ndarray, x: Dict[str, np.ndarray]) -> Callable[[], np.ndarray]:
    """The decode of ``z`` as the task runs it: with the mask condition where the decoder has one."""
    if dec.conditional:
        return lambda: dec.decode(z, image=x["image"], mask=x["mask"])
    return lambda: dec.decode(z)


def _child(job: Dict[str, Any]) -> Dict[str, Any]:
    """One task in one precision: every stage, as the original script runs them."""
    from ..autoencoder import Autoencoder
    from ..demo import demo_tokenizer
    from ..pipelines import SCALE_FACTOR
    from ..sampler import Sampler
    from ..text_encoder import TextEncoder
    from ..unet import UNet

    set_num_threads(job["threads"])
    task, precision, size, seed, tiny = TASKS[job["task"]], job["precision"], job["size"], job["seed"], job["tiny"]
    st = _Stages(release=not job.get("keep_arenas", False))
    cfg_d = _config_path(task["config"], tiny)
    spec_d = _config.load(cfg_d)
    assert isinstance(spec_d, _config.DiffusionSpec)
    inpaint = spec_d.kind == "inpaint"
    h = size // 8

    def build() -> Dict[str, Any]:
        weights = random_weights(tables.requirements(spec_d).table, seed)
        tok, _ = demo_tokenizer()
        models = {
            "text": TextEncoder.from_config(spec_d, weights, vocab=tok, precision=precision),
            "unet": UNet.from_config(spec_d, weights, precision=precision),
        }
        if inpaint:
            models["encoder"] = Autoencoder.from_config(cfg_d, weights, precision=precision, parts="encoder")
        return models

    models = st.run("models (random weights)", build)
    x = _inputs(size, seed)
    cond = st.run("text", lambda: (models["text"].encode([_PROMPT]), models["text"].encode([""])), [models["text"]])
    c_concat = None
    if inpaint:

        def encode() -> np.ndarray:
            masked = x["image"] * (x["mask"] < 0.5).astype(np.float32)
            noise = np.random.default_rng(seed + 1).standard_normal((1, 4, h, h), dtype=np.float32)
            z = SCALE_FACTOR * models["encoder"].encode(masked, sample=True, noise=noise)
            small = x["mask"][:, :, ::8, ::8]  # nearest resize to the latent grid
            return np.concatenate([small, z], axis=1).astype(np.float32)

        c_concat = st.run("encode", encode, [models["encoder"]])
    sampler = Sampler(kind="ddim", steps=job["steps"], eta=task["eta"], config=spec_d)
    x_T = np.random.default_rng(seed).standard_normal((1, 4, h, h), dtype=np.float32)
    x0 = st.run(
        "sample",
        lambda: sampler.sample(models["unet"], x_T, cond[0], cond[1], _SCALE, c_concat=c_concat, seed=seed + 2),
        [models["unet"]],
    )
    for name in job["decoders"]:  # the other models stay, as a pipeline holds them
        cfg_c = _config_path(task["decoders"][name], tiny)
        spec_c = _config.load(cfg_c)
        weights = random_weights(tables.requirements(spec_c).table, seed + 3)
        dec = Autoencoder.from_config(cfg_c, weights, precision=precision, parts="decoder")
        del weights  # the decoder holds its own copy
        st.run(f"decode {name}", _decode_call(dec, x0 / SCALE_FACTOR, x), [dec])
        del dec  # one decoder at a time, as a run holds one
    models.clear()
    return {"stages": st.rows, "rss_resets": st.rss_resets}


def _run_child(job: Dict[str, Any]) -> Dict[str, Any]:
    return harness.run_child("asymvq.bench.pipeline", job)


def _totals(rows: List[Dict[str, Any]], decoders: Sequence[str]) -> Dict[str, Dict[str, float]]:
    """decoder -> {wall, cpu, peak_rss, headroom} of text + encode + sample + that decoder's decode
    (headroom: the largest of the stages')."""
    common = [r for r in rows if r["stage"] in ("text", "encode", "sample")]
    out: Dict[str, Dict[str, float]] = {}
    for name in decoders:
        part = common + [r for r in rows if r["stage"] == f"decode {name}"]
        out[name] = {
            "wall": sum(r["wall"] for r in part),
            "cpu": sum(r["cpu"] for r in part),
            "peak_rss": max(r["peak_rss"] for r in part),
            "headroom": max(r["headroom"] for r in part),
        }
    return out


def run(argv: Optional[Sequence[str]] = None) -> int:
    """Run the pipeline benchmark with command-line arguments ``argv``; prints a report, returns 0 (2 when a
    child failed)."""
    p = argparse.ArgumentParser(prog="python -m asymvq.bench pipeline", description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=512, help="image height and width (default 512; multiple of 64)")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps (default 50, as the original scripts)")
    p.add_argument("--precision", default="fp32,bf16", help="comma-separated: fp32, bf16 (default both)")
    p.add_argument(
        "--decoders",
        default="base,large,large2",
        help="comma-separated subset of base, large (1.5x), large2 (2x) (default all)",
    )
    p.add_argument("--tasks", default="inpaint,txt2img", help="comma-separated: inpaint, txt2img (default both)")
    p.add_argument("--threads", type=int, default=0, help="threads (default: asymvq's)")
    p.add_argument("--tiny", action="store_true", help="the tiny test configs instead of the full-size models")
    p.add_argument(
        "--keep-arenas", action="store_true", help="keep each model's arena after its stage (default: freed)"
    )
    p.add_argument("--json", help="also write every figure to this JSON file")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(list(argv) if argv is not None else None)
    precisions = harness.parse_precisions(p, args.precision)
    decoders = [d.strip() for d in args.decoders.split(",") if d.strip()]
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    for d in decoders:
        if d not in DECODERS:
            p.error(f"--decoders: unknown decoder {d!r} (use {', '.join(DECODERS)})")
    for t in tasks:
        if t not in TASKS:
            p.error(f"--tasks: unknown task {t!r} (use {', '.join(TASKS)})")
    if not decoders or not tasks:
        p.error("--decoders and --tasks need at least one entry each")
    if args.size < 64 or args.size % 64:
        p.error(f"--size must be a positive multiple of 64, got {args.size}")
    from ..sampler import Sampler

    try:  # the original's DDIM discretisation rejects some step counts: say so before any child runs
        for t in tasks:
            Sampler(kind="ddim", steps=args.steps, eta=TASKS[t]["eta"])
    except (ValueError, TypeError) as e:
        p.error(f"--steps: {e}")
    if args.threads < 0:
        p.error("--threads must be >= 0")
    if "bf16" in precisions and info()["kernel_isa"] != "avx512":
        print(f"bf16 needs AVX-512 (oneDNN runs at {info()['isa']} here): timing fp32 only")
        precisions = [s for s in precisions if s != "bf16"]
    if args.threads:
        set_num_threads(args.threads)
    threads = get_num_threads()
    print(
        f"asymvq pipeline benchmark: {'TINY' if args.tiny else 'full-size'} models with random weights, "
        f"{args.size}x{args.size}, {args.steps} guided DDIM steps, {threads} thread(s), "
        f"load average {harness.load_average()}",
        flush=True,
    )

    report: Dict[str, Any] = {"size": args.size, "steps": args.steps, "threads": threads, "tiny": args.tiny, "runs": []}
    failed = False
    head = (
        f"{'task':<9}{'prec':<6}{'stage':<26}{'wall s':>9}{'CPU s':>9}{'peak RSS GB':>13}"
        f"{'weights GB':>12}{'arena GB':>10}{'scratch GB':>12}{'headroom GB':>13}"
    )
    print("\n" + head + "\n" + "-" * len(head), flush=True)
    for task in tasks:
        for prec in precisions:
            job = {
                "task": task,
                "precision": prec,
                "size": args.size,
                "steps": args.steps,
                "threads": threads,
                "seed": args.seed,
                "tiny": args.tiny,
                "decoders": decoders,
                "keep_arenas": args.keep_arenas,
            }
            r = _run_child(job)
            if "error" in r:
                failed = True
                print(f"{task:<9}{prec:<6}failed: {r['error']}", flush=True)
                continue
            for row in r["stages"]:
                label = row["stage"]
                if label == "sample":
                    label = f"sample ({args.steps} steps)"
                elif label.startswith("decode "):
                    label = f"decode {DECODERS[label.split()[1]]}"
                print(
                    f"{task:<9}{prec:<6}{label:<26}{row['wall']:9.2f}{row['cpu']:9.2f}{row['peak_rss'] / 1e9:13.2f}"
                    f"{row['weight_bytes'] / 1e9:12.2f}{row['arena_bytes'] / 1e9:10.3f}"
                    f"{row['scratch_bytes'] / 1e9:12.3f}{row['headroom'] / 1e9:13.2f}"
                )
            sample = next(row for row in r["stages"] if row["stage"] == "sample")
            totals = _totals(r["stages"], decoders)
            for name, tot in totals.items():
                target = HEADROOM_TARGET[prec]
                verdict = "within" if tot["headroom"] <= target else "OVER"
                print(
                    f"{task:<9}{prec:<6}{'TOTAL with ' + DECODERS[name]:<26}{tot['wall']:9.2f}{tot['cpu']:9.2f}"
                    f"{tot['peak_rss'] / 1e9:13.2f}{'':34}{tot['headroom'] / 1e9:13.2f}"
                    f"  ({verdict} the {target / 1e9:.1f} GB target)"
                )
            print(
                f"{'':<15}({sample['wall'] / args.steps:.3f} s per guided step)"
                + ("" if r["rss_resets"] else "  (peak RSS not resettable here: since the child started)"),
                flush=True,
            )
            report["runs"].append({"task": task, "precision": prec, "stages": r["stages"], "totals": totals})
    print(f"(load average after: {harness.load_average()})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return 2 if failed else 0


if __name__ == "__main__":
    sys.exit(harness.module_main(_child, run))
