"""How much does the posterior *sample* of the masked-image latent change inpainting, against its mean?

The original's inpaint_st draws that sample from torch's CPU generator in a state nobody can know
(model construction consumed an unknown amount of it), so ``--rng torch-cpu`` uses the mean. This
measures, per example image (``/work/shared/data/inpainting_examples``, prepared as inpaint_st does),
with the tiny random-weight models of ``asymvq.demo``:

* the posterior standard deviation ``exp(logvar / 2)`` (max and median),
* max |delta| of the scaled latent ``0.18215 * z`` fed to the UNet, sample vs mean,
* max |delta| of the uint8 image (and the share of values that differ), everything else equal
  (start code RandomState(0), the same torch-cpu DDIM noise, eta 1).

    PYTHONPATH=. python tools/posterior_sample_vs_mean.py [--steps 10] [--indir DIR]
"""

from __future__ import annotations

import argparse
import glob
import os

import numpy as np

from asymvq import demo
from asymvq.image import load_pair, to_uint8
from asymvq.rng import TORCH_DEFAULT_SEED, Generator

SCALE = 0.18215


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--indir", default="/work/shared/data/inpainting_examples")
    p.add_argument("--steps", type=int, default=10)
    args = p.parse_args()
    pipe, _ = demo.build_pipeline("fp32", 0)
    rows = []
    for mpath in sorted(glob.glob(os.path.join(args.indir, "*_mask.png"))):
        ipath = mpath[: -len("_mask.png")] + ".png"
        x, m, (w, h) = load_pair(ipath, mpath)
        masked = x * (m < 0.5).astype(np.float32)
        shape = (1, 4, h // 8, w // 8)
        mean = pipe.encoder.encode(masked)
        std = pipe.encoder.encode(masked, sample=True, noise=np.ones(shape, np.float32)) - mean
        eps = Generator("torch-cpu", TORCH_DEFAULT_SEED).randn(shape)  # a posterior draw like torch's
        d_lat = float(np.abs(SCALE * std * eps).max())
        g = Generator("torch-cpu", TORCH_DEFAULT_SEED)
        noise = np.stack([g.randn(shape) for _ in range(len(pipe._sampler("ddim", args.steps, 1.0).timesteps))])
        common = dict(steps=args.steps, eta=1.0, step_noise=noise, progress=False)
        a = pipe(x, m, rng="torch-cpu", **common)  # the posterior mean
        b = pipe(x, m, posterior_noise=eps, **common)  # a posterior sample
        du = np.abs(to_uint8(a.arrays).astype(int) - to_uint8(b.arrays).astype(int))
        rows.append(
            (
                os.path.basename(ipath),
                w,
                h,
                float(std.max()),
                float(np.median(std)),
                d_lat,
                int(du.max()),
                float((du > 0).mean() * 100),
            )
        )
        print(
            "%-32s %4dx%-4d std max %.3g median %.3g | latent max|d| %.3g | uint8 max|d| %d (%.2f %% differ)"
            % rows[-1],
            flush=True,
        )
    r = np.array([row[3:] for row in rows], dtype=float)
    print(
        f"over {len(rows)} images: std max {r[:, 0].max():.3g}, latent max|d| {r[:, 2].max():.3g}, "
        f"uint8 max|d| {int(r[:, 3].max())}, share differing up to {r[:, 4].max():.2f} %"
    )


if __name__ == "__main__":
    main()
