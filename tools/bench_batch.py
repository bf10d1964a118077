"""Throughput of ``asymvq.batch`` (issue 14's closing figures): in-process, 1 worker and 2 workers.

    python tools/bench_batch.py --pairs 12 --size 64 --steps 10                       # tiny random models
    python tools/bench_batch.py --ckpt-d SD.safetensors --decoder-ckpt BASE.safetensors \\
        --full --precision bf16 --pairs 2 --size 512 --steps 2                         # full size, short

Prints per configuration: wall seconds, cluster start, images/min, sampler seconds per step, the
fixed per-image cost (text, encode, decode), the images/min extrapolated to 50 steps, the peak RSS of
a worker and the scheduler's own overhead per task (no-op tasks).
"""
import argparse
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

from asymvq import config  # noqa: E402
from asymvq.batch import run_batch  # noqa: E402
from asymvq.compare import DecoderSpec, Job  # noqa: E402


def noop(i):
    return i


def scheduler_overhead(n=200):
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, host="127.0.0.1", dashboard_address=None) as c, \
            Client(c) as client:
        client.gather(client.map(noop, range(20), pure=False))
        t = time.perf_counter()
        client.gather([client.submit(noop, i, pure=False) for i in range(n)])
        return (time.perf_counter() - t) / n


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--pairs", type=int, default=12)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--precision", default="fp32")
    p.add_argument("--full", action="store_true", help="the shipped (full-size) configs")
    p.add_argument("--ckpt-d")
    p.add_argument("--decoder-ckpt")
    p.add_argument("--vocab", default=str(ROOT.parent / "shared" / "data" / "clip" / "bpe_simple_vocab_16e6.txt.gz"))
    p.add_argument("--configs", default="inproc,1x2,2x1")
    a = p.parse_args()
    cfg = config.packaged_config if a.full else config.packaged_tiny_config
    tmp = Path(tempfile.mkdtemp(prefix="bench-batch-"))
    if a.ckpt_d is None:
        from fixtures import write_checkpoint

        a.ckpt_d = str(write_checkpoint(tmp / "sd.ckpt", "sd15-inpaint", tiny=not a.full))
        a.decoder_ckpt = str(write_checkpoint(tmp / "base.ckpt", "decoder-base", tiny=not a.full))
    indir = tmp / "in"
    indir.mkdir()
    rng = np.random.default_rng(0)
    for i in range(a.pairs):
        Image.fromarray((rng.random((a.size, a.size, 3)) * 255).astype(np.uint8)).save(indir / f"p{i}.png")
        m = np.zeros((a.size, a.size), np.uint8)
        m[a.size // 4: 3 * a.size // 4, a.size // 4: 3 * a.size // 4] = 255
        Image.fromarray(m).save(indir / f"p{i}_mask.png")
    job = Job(config_d=str(cfg("v1-inpainting-inference")), ckpt_d=a.ckpt_d, mode="inpaint", vocab=a.vocab,
              decoders=(DecoderSpec("base", str(cfg("autoencoder_kl_32x32x4")), a.decoder_ckpt),),
              precision=a.precision, steps=a.steps)
    for c in a.configs.split(","):
        kw = {"cluster": False} if c == "inproc" else {"workers": int(c[0]), "threads": int(c[2])}
        res = run_batch(indir, tmp / f"out-{c}", job, progress=False, plot=False, **kw)
        t = [r["timings"] for r in res.done]
        per_step = statistics.mean(x["sample"] for x in t) / a.steps
        fixed = statistics.mean(x["text"] + x["encode"] + x["decode"] for x in t)
        workers = max(res.workers, 1)
        ext = 60.0 * workers / (fixed + 50 * per_step)
        print(f"{c:7s} {len(res.done)} pairs {a.size}px {a.steps} steps {a.precision}: wall {res.seconds:.1f} s "
              f"(cluster start {res.startup_seconds:.1f} s), {res.images_per_minute:.2f} img/min; "
              f"sample {per_step:.3f} s/step, fixed {fixed:.2f} s/img -> {ext:.3f} img/min at 50 steps "
              f"(ideal, {workers} in parallel); peak RSS/worker {res.peak_rss_mb:.0f} MiB", flush=True)
    if "2x1" in a.configs:
        print(f"scheduler overhead per no-op task (2 workers): {scheduler_overhead() * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
