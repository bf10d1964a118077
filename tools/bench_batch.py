"""Throughput of ``asymvq.batch`` (issue 14's closing figures): in-process, 1 worker x 2 threads and
2 workers x 1 thread, on the same pairs.

    python tools/bench_batch.py --pairs 12 --size 64 --steps 10                 # tiny random models (seconds)
    python tools/bench_batch.py --full-size --precision bf16 --pairs 4 --steps 2   # full-size random weights

``--full-size`` uses the shipped (full-size) configs at 512 x 512 (``--size`` changes it), with random
full-size checkpoints written to a temporary folder (several GB, removed at the end) unless
``--ckpt-d`` / ``--decoder-ckpt`` name real ones. Run it on an otherwise idle machine: the load is printed
beside every figure, and a configuration whose workers would not fit in the available memory is skipped.

Per configuration it prints: the wall time and the cluster start; images/min over the whole run
(model loading included, as a user sees it) and in steady state (per pair, models loaded); the
sampler's seconds per step and the fixed per-image cost (text, encode, decode); the images/min
extrapolated to 50 steps; the **scheduler overhead per pair** (the time a worker was not inside a
task: ``(wall - cluster start) x workers / pairs - mean task time``, so it includes any imbalance);
the largest **peak resident memory of a worker** (in-process: of this process); and the load average
(1 min) before and after. Finally the overhead of a no-op Dask task (2 workers), for scale.
"""
import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from asymvq import batch, config  # noqa: E402
from asymvq.batch import run_batch, worker_memory_bytes  # noqa: E402
from asymvq.compare import DecoderSpec, Job  # noqa: E402


def timed_task(job, image, mask, outdir):
    """:func:`asymvq.batch.run_pair_task`, also timing the task and the worker's model build (0 once cached)."""
    t0 = time.perf_counter()
    batch._models(job)
    t1 = time.perf_counter()
    rec = dict(batch.run_pair_task(job, image, mask, outdir))
    rec["bench_model_s"] = t1 - t0
    rec["bench_task_s"] = time.perf_counter() - t0
    return rec


def noop(i):
    return i


def scheduler_overhead(n=200):
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, host="127.0.0.1", dashboard_address="127.0.0.1:0",
                      silence_logs=40) as c, Client(c) as client:
        client.gather(client.map(noop, range(20), pure=False))
        t = time.perf_counter()
        client.gather([client.submit(noop, i, pure=False) for i in range(n)])
        return (time.perf_counter() - t) / n


def load() -> str:
    return "load {:.2f}".format(os.getloadavg()[0])


def available_bytes() -> int:
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        return 1 << 62


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pairs", type=int, default=12)
    p.add_argument("--size", type=int, default=None, help="pair size in pixels (default 64; full size: 512)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--full-size", "--full", dest="full", action="store_true",
                   help="the shipped full-size configs (random weights unless --ckpt-d/--decoder-ckpt)")
    p.add_argument("--ckpt-d")
    p.add_argument("--decoder-ckpt")
    p.add_argument("--vocab", default=str(ROOT.parent / "shared" / "data" / "clip" / "bpe_simple_vocab_16e6.txt.gz"))
    p.add_argument("--configs", default="inproc,1x2,2x1",
                   help="comma-separated: inproc (this process, all cores) or WxT (W workers x T threads)")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (outputs, random checkpoints)")
    a = p.parse_args()
    if (a.ckpt_d is None) != (a.decoder_ckpt is None):
        p.error("give both --ckpt-d and --decoder-ckpt, or neither (random weights)")
    size = a.size or (512 if a.full else 64)
    cfg = config.packaged_config if a.full else config.packaged_tiny_config
    cores = len(os.sched_getaffinity(0))
    tmp = Path(tempfile.mkdtemp(prefix="bench-batch-"))
    print(f"{cores} cores; {a.pairs} pairs {size}px, {a.steps} steps, {a.precision}, "
          f"{'full-size' if a.full else 'tiny'} models; {load()}", flush=True)
    try:
        if a.ckpt_d is None:
            from fixtures import write_checkpoint

            t = time.perf_counter()
            a.ckpt_d = str(write_checkpoint(tmp / "sd.ckpt", "sd15-inpaint", tiny=not a.full))
            a.decoder_ckpt = str(write_checkpoint(tmp / "base.ckpt", "decoder-base", tiny=not a.full))
            print(f"random checkpoints written in {time.perf_counter() - t:.1f} s", flush=True)
        indir = tmp / "in"
        indir.mkdir()
        rng = np.random.default_rng(0)
        for i in range(a.pairs):
            Image.fromarray((rng.random((size, size, 3)) * 255).astype(np.uint8)).save(indir / f"p{i}.png")
            m = np.zeros((size, size), np.uint8)
            m[size // 4: 3 * size // 4, size // 4: 3 * size // 4] = 255
            Image.fromarray(m).save(indir / f"p{i}_mask.png")
        job = Job(config_d=str(cfg("v1-inpainting-inference")), ckpt_d=a.ckpt_d, mode="inpaint", vocab=a.vocab,
                  decoders=(DecoderSpec("base", str(cfg("autoencoder_kl_32x32x4")), a.decoder_ckpt),),
                  precision=a.precision, steps=a.steps)
        for c in a.configs.split(","):
            run_config(c, job, indir, tmp, a, size, cores)
        if any(c != "inproc" for c in a.configs.split(",")):
            print(f"scheduler overhead per no-op task (2 workers): {scheduler_overhead() * 1e3:.1f} ms; {load()}")
    finally:
        if a.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def run_config(c, job, indir, tmp, a, size, cores):
    if c == "inproc":
        kw, workers = {"cluster": False, "threads": cores}, 1
    else:
        workers, threads = (int(x) for x in c.split("x"))
        kw = {"workers": workers, "threads": threads}
        need = workers * worker_memory_bytes(job, size * size)
        if need > available_bytes():
            print(f"{c:7s} skipped: {workers} workers need about {need / 2**30:.1f} GiB, "
                  f"{available_bytes() / 2**30:.1f} GiB available", flush=True)
            return
    before = load()
    res = run_batch(indir, tmp / f"out-{c}", job, progress=False, plot=False, task=timed_task, **kw)
    after = load()
    batch._CACHE.clear()  # the in-process run's models: free them before the workers load theirs
    if not res.done:
        print(f"{c:7s} no pair completed: {res.failures[:1]}", flush=True)
        return
    t = [r["timings"] for r in res.done]
    per_step = statistics.mean(x["sample"] for x in t) / a.steps
    fixed = statistics.mean(x["text"] + x["encode"] + x["decode"] for x in t)
    task_s = statistics.mean(r["bench_task_s"] for r in res.done)
    steady_s = statistics.mean(r["bench_task_s"] - r["bench_model_s"] for r in res.done)
    model_s = max(r["bench_model_s"] for r in res.done)
    busy = res.seconds - res.startup_seconds
    overhead = busy * workers / len(res.done) - task_s
    ext = 60.0 * workers / (fixed + 50 * per_step)
    print(f"{c:7s} {len(res.done)} pairs: wall {res.seconds:.1f} s (cluster start {res.startup_seconds:.1f} s, "
          f"model load {model_s:.1f} s/worker); {res.images_per_minute:.2f} img/min overall, "
          f"{60.0 * workers / steady_s:.2f} img/min steady; sample {per_step:.3f} s/step, fixed {fixed:.2f} s/img "
          f"-> {ext:.3f} img/min at 50 steps ({workers} in parallel); scheduler overhead {overhead * 1e3:.0f} ms/pair; "
          f"peak RSS/worker {res.peak_rss_mb:.0f} MiB; {before} -> {after}", flush=True)
    if res.failures:
        print(f"        {len(res.failures)} failed, e.g. {res.failures[0]['error']}", flush=True)


if __name__ == "__main__":
    main()
