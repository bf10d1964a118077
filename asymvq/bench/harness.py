"""What every benchmark shares: child processes, timing, memory and the roof.

A model benchmark runs each engine in a child process of its own (``python -m asymvq.bench.<name>
--child JSON``) so that each peak RSS is that engine's alone and one engine's allocator or OpenMP
state cannot slow the next. The child prints one line ``RESULT_MARK + json``; :func:`run_child`
returns that dict, or ``{"error": ...}`` with the tail of the child's output when it failed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

__all__ = [
    "RESULT_MARK",
    "ISA_ENV",
    "child_env",
    "run_child",
    "run_command",
    "module_main",
    "peak_rss",
    "reset_peak_rss",
    "timed",
    "merge_round",
    "parse_model_args",
    "parse_precisions",
    "parse_roof",
    "roof_in_child",
    "child_isa_line",
    "onednn_breakdown",
    "load_average",
]

#: The prefix of a child's one result line on stdout.
RESULT_MARK = "ASYMVQ_BENCH_RESULT "

#: ``--isa`` of the model benchmarks -> what each child process gets in its environment, so that every
#: library in it is capped alike, as on a CPU that has no more: oneDNN (asymvq's, and PyTorch's
#: mkldnn convolutions), PyTorch's own ATen kernels, and MKL (PyTorch's sgemm).
ISA_ENV: Dict[str, Dict[str, str]] = {
    "avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
}

Job = Dict[str, Any]
Result = Dict[str, Any]


def child_env(isa: Optional[str] = None, extra: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """The environment of a benchmark child under ``--isa isa`` (None: this process's own) plus ``extra``."""
    env = dict(os.environ)
    env.update(ISA_ENV.get(isa or "", {}))
    env.update(extra or {})
    return env


def run_command(cmd: Sequence[str], env: Optional[Mapping[str, str]] = None) -> Result:
    """Runs a child command and returns the dict of its result line, or ``{"error": ...}``."""
    proc = subprocess.run(
        list(cmd), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(env) if env is not None else None
    )
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_MARK):
            return dict(json.loads(line[len(RESULT_MARK) :]))
    tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-8:])
    return {"error": f"exit status {proc.returncode}: {tail}"}


def run_child(module: str, job: Job, env: Optional[Mapping[str, str]] = None) -> Result:
    """Runs ``python -m module --child JSON(job)`` (environment: ``child_env(job["isa"])`` unless given)."""
    cmd = [sys.executable, "-m", module, "--child", json.dumps(job)]
    return run_command(cmd, env if env is not None else child_env(job.get("isa")))


def module_main(
    child: Callable[[Job], Result], run: Callable[[Sequence[str]], int], argv: Optional[Sequence[str]] = None
) -> int:
    """``python -m asymvq.bench.<name>``: ``--child JSON`` runs ``child`` and prints its result line,
    anything else is the benchmark's own command line."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) == 2 and args[0] == "--child":
        print(RESULT_MARK + json.dumps(child(json.loads(args[1]))), flush=True)
        return 0
    return int(run(args) or 0)


def peak_rss() -> int:
    """This process's peak resident set in bytes: since the last :func:`reset_peak_rss`, where the
    kernel allows the reset, else since the process started."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux: KiB


def reset_peak_rss() -> bool:
    """Sets the peak resident set back to the current one (Linux ``clear_refs``); False where it cannot,
    and :func:`peak_rss` then keeps counting from the process's start."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def timed(call: Callable[[], Any], repeat: int = 1) -> Tuple[List[float], List[float]]:
    """(wall times, process CPU times) of ``repeat`` calls of ``call``, in seconds."""
    times: List[float] = []
    cpu: List[float] = []
    for _ in range(repeat):
        start, cpu0 = time.perf_counter(), time.process_time()
        call()
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - cpu0)
    return times, cpu


def merge_round(results: Dict[str, Result], engine: str, r: Result) -> None:
    """Folds one round's child result into ``results[engine]``: best times and CPU times, highest peak
    RSS, and the last round's breakdown and loop figures."""
    old = results.get(engine)
    if old is None or "error" in old or "times" not in r:
        if old is None or "error" in old:
            results[engine] = r
        return
    old["times"] = [min(old["times"] + r["times"])]
    if "cpu" in old and "cpu" in r:
        old["cpu"] = [min(old["cpu"] + r["cpu"])]
    old["peak_rss"] = max(old["peak_rss"], r["peak_rss"])
    for key in ("breakdown", "breakdown_total", "loop"):
        if key in r:
            old[key] = r[key]


def parse_model_args(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]]) -> argparse.Namespace:
    """Adds the model benchmarks' common ``--isa`` and ``--seed`` to ``parser`` and parses ``argv``."""
    parser.add_argument(
        "--isa",
        choices=sorted(ISA_ENV),
        help="cap every child, asymvq's and torch's, to this ISA as on a CPU without more "
        "(ONEDNN_MAX_CPU_ISA, ATEN_CPU_CAPABILITY, MKL_ENABLE_INSTRUCTIONS); fp32 only, target 0.8",
    )
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(list(argv) if argv is not None else None)


def parse_precisions(parser: argparse.ArgumentParser, text: str) -> List[str]:
    """The comma-separated ``--precision`` list; a parser error names an unknown one."""
    precisions = [s.strip() for s in text.split(",") if s.strip()]
    for s in precisions:
        if s not in ("fp32", "bf16"):
            parser.error(f"--precision: unknown precision {s!r} (use fp32, bf16)")
    if not precisions:
        parser.error("--precision: give fp32, bf16 or both")
    return precisions


def parse_roof(text: Optional[str]) -> Dict[str, float]:
    """``--roof FP32[,BF16]`` in GFLOP/s, or (None) the roof measured here."""
    if text:
        parts = [float(p) for p in text.split(",")]
        return {"fp32": parts[0], "bf16": parts[1] if len(parts) > 1 else float("nan")}
    from .ops import roof

    return roof()


def roof_in_child(isa: Optional[str], threads: int) -> Dict[str, float]:
    """:func:`asymvq.bench.roof` measured in a child process under ``--isa isa`` (this process's ISA is
    decided)."""
    code = (
        "import json, asymvq; from asymvq.bench import roof; "
        f"asymvq.set_num_threads({int(threads)}); print(json.dumps(roof()))"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=child_env(isa), capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"roof measurement under --isa {isa} failed: {proc.stderr.strip()[-500:]}")
    return {k: float(v) for k, v in json.loads(proc.stdout.strip().splitlines()[-1]).items()}


def child_isa_line(isa: Optional[str]) -> str:
    """What a child under ``--isa isa`` runs: asymvq's ISAs and PyTorch's (when installed)."""
    code = (
        "import asymvq, json\ni = asymvq.info()\nout = {'onednn': i['isa'], 'kernels': i['kernel_isa']}\n"
        "try:\n    import torch\n    out['torch'] = torch.backends.cpu.get_cpu_capability()\n"
        "except Exception:\n    pass\nprint(json.dumps(out))"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=child_env(isa), capture_output=True, text=True)
    try:
        d = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return f"ISA check failed: {proc.stderr.strip()[-300:]}"
    line = f"children run oneDNN at {d['onednn']}, asymvq's kernels at {d['kernels']}"
    return line + (f", torch at {d['torch']}" if "torch" in d else "")


def onednn_breakdown(call: Callable[[], Any]) -> Dict[str, List[float]]:
    """{kind: [count, ms]} from oneDNN's verbose log of one call (stdout redirected to a file)."""
    import ctypes

    lib = ctypes.CDLL("libdnnl.so.3")  # already loaded by asymvq: the same library
    sys.stdout.flush()
    saved = os.dup(1)
    with tempfile.TemporaryFile(mode="w+") as log:
        os.dup2(log.fileno(), 1)
        try:
            lib.dnnl_set_verbose(1)
            call()
            lib.dnnl_set_verbose(0)
        finally:
            os.dup2(saved, 1)
            os.close(saved)
        log.seek(0)
        lines = log.read().splitlines()
    out: Dict[str, List[float]] = {}
    for line in lines:
        fields = line.split(",")
        if len(fields) < 6 or not fields[0].endswith("_verbose") or fields[1] != "exec":
            continue
        prim, shape = fields[3], fields[-2]
        if prim == "convolution":
            kind = "conv"
        elif prim == "matmul":
            # batched (3-D) matmuls are the 16 GEMMs of a Winograd convolution
            kind = "conv" if len(shape.split(":")[0].split("x")) > 2 else "linear"
        elif prim == "gemm_api":  # the fp32 attention's tile products run through oneDNN's sgemm
            kind = "attention"
        else:
            kind = "other primitives"
        entry = out.setdefault(kind, [0, 0.0])
        entry[0] += 1
        entry[1] += float(fields[-1])
    return out


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, for every report (timings on a shared machine)."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())
