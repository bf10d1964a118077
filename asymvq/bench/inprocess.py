"""asymvq with PyTorch in the same process: ``python -m asymvq.bench inprocess [options]``.

Times one mid-size asymvq call (by default SD's KL encoder on a 256 x 256 image, fp32: about 1 s on
2 cores) in child processes that differ only in what else the process did before:

``alone``
    asymvq only.
``torch-first-unthrottled``
    ``import torch``, a few torch ops (conv2d, matmul: torch's OpenMP team is started), then
    ``import asymvq``, the order of a notebook that pre-processes with torch, with
    ``ASYMVQ_OPENMP_THROTTLE=0``: asymvq only warns, as before it throttled (the "before" figure).
``torch-first``
    the same with asymvq's default: it parks a sleeping OpenMP team so that the spinning runtime
    torch loaded spins briefly (``asymvq._loader``).
``asymvq-first``
    ``import asymvq``, then ``import torch`` and the same torch ops.
``torch-first-passive``
    as ``torch-first`` with ``OMP_WAIT_POLICY=PASSIVE`` in the environment the child starts with:
    the setting asymvq's import warning asks for.

Each variant is one fresh child per round; rounds alternate the variants so that load from other
processes hits all alike, and each keeps its best time. Reported per variant: the best wall time,
the ratio to ``alone``, the process CPU time of that call and its ratio to ``alone`` (on a busy machine
the steadier figure: spinning shows as CPU time that does no work), the OpenMP runtime the child
mapped, the parked team's size and whether asymvq's import warned.

Children start from the environment ``python`` was started with: asymvq's own default
``OMP_WAIT_POLICY=PASSIVE`` of this (parent) process is not passed on, unless the user had set it.

PyTorch is a development tool: only the children of the torch variants import it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Dict, Optional, Sequence

from .. import _loader
from . import harness

__all__ = ["run", "VARIANTS"]

#: variant -> (what the child does before importing asymvq, after it, extra environment)
VARIANTS: Dict[str, Dict[str, Any]] = {
    "alone": {"before": False, "after": False, "env": {}},
    "torch-first-unthrottled": {"before": True, "after": False, "env": {"ASYMVQ_OPENMP_THROTTLE": "0"}},
    "torch-first": {"before": True, "after": False, "env": {}},
    "asymvq-first": {"before": False, "after": True, "env": {}},
    "torch-first-passive": {"before": True, "after": False, "env": {"OMP_WAIT_POLICY": "PASSIVE"}},
}

# The child runs as ``python -c`` so that nothing imports asymvq before the variant says so
# (``python -m asymvq.x`` would import the package first). The torch ops mimic pre-processing:
# they run torch's OpenMP parallel regions with the same thread count as asymvq.
_CHILD = (
    r"""
import json, os, sys, time, warnings
job = json.loads(sys.argv[1])
def torch_ops():
    import torch
    torch.set_num_threads(job["threads"])
    img = torch.randn(1, 3, 512, 512)
    w = torch.randn(16, 3, 3, 3)
    a = torch.randn(512, 512)
    for _ in range(5):
        torch.nn.functional.conv2d(img, w, padding=1)
        a @ a
if job["before"]:
    torch_ops()
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import asymvq
if job["after"]:
    torch_ops()
from asymvq.bench.inprocess import _child
result = _child(job)
result["warned"] = [str(w.message) for w in caught if issubclass(w.category, asymvq.OpenMPWarning)]
print(%r + json.dumps(result), flush=True)
"""
    % harness.RESULT_MARK
)


def _child(job: Dict[str, Any]) -> Dict[str, Any]:
    """Builds the benchmark model, runs it once (plan build) and times ``job["repeat"]`` calls."""
    from .. import set_num_threads
    from .vae import _asymvq_call, _inputs, model_weights

    set_num_threads(job["threads"])
    weights = model_weights(job["model"], job["seed"])
    call, _ = _asymvq_call(job["model"], job["precision"], weights, _inputs(job["size"], job["seed"]))
    call()
    times, cpu = harness.timed(call, job["repeat"])
    return {
        "times": times,
        "cpu": cpu,
        "runtimes": _loader.openmp_runtimes(),
        "parked": _loader.PARKED_TEAM,
        "wait_policy": os.environ.get("OMP_WAIT_POLICY"),
    }


def _child_env(extra: Dict[str, str]) -> Dict[str, str]:
    env = dict(os.environ)
    if _loader.USER_WAIT_POLICY is None:
        env.pop("OMP_WAIT_POLICY", None)  # asymvq's default here, not the user's: children choose their own
    env.pop("ASYMVQ_OPENMP_THROTTLE", None)
    env.update(extra)
    return env


def _run_child(job: Dict[str, Any], env: Dict[str, str]) -> Dict[str, Any]:
    return harness.run_command([sys.executable, "-c", _CHILD, json.dumps(job)], env)


def run(argv: Optional[Sequence[str]] = None) -> int:
    """Run the in-process benchmark with command-line arguments ``argv``; prints a report, returns 0."""
    from .. import get_num_threads
    from .vae import MODELS

    p = argparse.ArgumentParser(prog="python -m asymvq.bench inprocess", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--model",
        default="encoder",
        choices=sorted(MODELS),
        help="autoencoder part to time (default encoder: SD's KL encoder, 34 M parameters)",
    )
    p.add_argument("--size", type=int, default=256, help="image height and width (default 256)")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"), help="asymvq precision (default fp32)")
    p.add_argument("--threads", type=int, default=0, help="threads for asymvq and torch (default: asymvq's)")
    p.add_argument("--repeat", type=int, default=2, help="timed calls per child (default 2; best kept)")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds of all variants (default 3)")
    p.add_argument(
        "--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {', '.join(VARIANTS)} (default: all)"
    )
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(list(argv) if argv is not None else None)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    for v in variants:
        if v not in VARIANTS:
            p.error(f"--variants: unknown variant {v!r} (use {', '.join(VARIANTS)})")
    if args.size < 8 or args.size % 8 or args.repeat < 1 or args.rounds < 1 or args.threads < 0:
        p.error("--size must be a positive multiple of 8; --repeat and --rounds must be >= 1; --threads >= 0")
    threads = args.threads or get_num_threads()
    policy = _loader.USER_WAIT_POLICY
    print(
        f"asymvq with torch in the same process: {args.model} {args.size}x{args.size} {args.precision}, "
        f"{threads} thread(s), {args.rounds} round(s) x {args.repeat} call(s); OMP_WAIT_POLICY of the "
        f"children: {policy if policy is not None else 'unset'} unless the variant sets it; "
        f"load average {harness.load_average()}",
        flush=True,
    )

    job = {
        "model": args.model,
        "size": args.size,
        "precision": args.precision,
        "threads": threads,
        "repeat": args.repeat,
        "seed": args.seed,
    }
    results: Dict[str, Dict[str, Any]] = {}
    for _ in range(args.rounds):
        for v in variants:
            spec = VARIANTS[v]
            r = _run_child({**job, "before": spec["before"], "after": spec["after"]}, _child_env(spec["env"]))
            old = results.get(v)
            if "error" in r or old is None or "error" in old:
                if old is None or "error" in old:
                    results[v] = r
                continue
            old["times"] += r["times"]
            old["cpu"] += r["cpu"]

    def best(v: str) -> Optional[float]:
        r = results.get(v, {})
        return min(r["times"]) if "times" in r else None

    base = best("alone")
    base_cpu = None
    if base:
        base_cpu = results["alone"]["cpu"][results["alone"]["times"].index(base)]
    print(
        f"\n{'variant':<25}{'best s':>8}{'/ alone':>9}{'CPU s':>8}{'/ alone':>9}  OpenMP runtime; parked team; warning"
    )
    for v in variants:
        r = results[v]
        if "error" in r:
            print(f"{v:<25} failed: {r['error']}")
            continue
        b = min(r["times"])
        cpu = r["cpu"][r["times"].index(b)]
        ratio = f"{b / base:9.2f}" if base else f"{'-':>9}"
        cpu_ratio = f"{cpu / base_cpu:9.2f}" if base_cpu else f"{'-':>9}"
        libs = ", ".join(r["runtimes"]) or "none"
        warned = "warned" if r["warned"] else "no warning"
        print(f"{v:<25}{b:8.2f}{ratio}{cpu:8.2f}{cpu_ratio}  {libs}; {r['parked']}; {warned}")
    print(
        f"(load average after: {harness.load_average()}; CPU s above "
        f"{threads} x the wall time means waiting threads spin)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
