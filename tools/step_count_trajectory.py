"""Trajectory effect of the step count (issue 15): on random weights image quality means nothing, so
this measures how far few-step samplers land from a fine-step reference of the same ODE.

    python tools/step_count_trajectory.py                 # tiny txt2img UNet, 16x16 latent, CFG 7.5

Runs the tiny C UNet (configs/tiny, random weights, seed 3) from one start code and prints, for each
sampler, the distance of its x_0 to the reference: relative L2 (||x - ref|| / ||ref||) and max |x - ref|.
The reference is DDIM (eta 0) at the finest step count the original's discretisation can run
(``--ref-steps``, default 500: 1000 steps would put its last timestep at T, which the original and
asymvq refuse), plus, for comparison, Euler at ``--ref-steps`` steps (the same probability-flow ODE
reached through another discretisation), so the reference's own uncertainty is visible.
"""
import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from asymvq import config  # noqa: E402
from asymvq.sampler import Sampler, randn  # noqa: E402
from asymvq.unet import UNet  # noqa: E402
from reference.unet_reference import random_unet_weights  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=16, help="latent height and width (multiple of 8)")
    p.add_argument("--scale", type=float, default=7.5)
    p.add_argument("--ref-steps", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    spec = config.load(config.packaged_tiny_config("v1-t2i-inference.yaml")).unet
    unet = UNet.from_config(spec, random_unet_weights(spec, seed=3))
    hw = args.size
    x_T = randn(args.seed, (1, 4, hw, hw))
    c = randn(args.seed + 1, (1, 77, spec.context_dim))
    uc = randn(args.seed + 2, (1, 77, spec.context_dim))

    def run(kind: str, steps: int, **kw) -> np.ndarray:
        return Sampler(kind, steps, **kw).sample(unet, x_T, c, uc, args.scale).astype(np.float64)

    ref = run("ddim", args.ref_steps)
    rows = [
        (f"euler {args.ref_steps} (second reference)", run("euler", args.ref_steps)),
        ("ddim 50", run("ddim", 50)),
        ("ddim 20", run("ddim", 20)),
        ("dpmpp_2m 20", run("dpmpp_2m", 20)),
        ("dpmpp_2m 20 karras", run("dpmpp_2m", 20, karras=True)),
        ("dpmpp_2m 50", run("dpmpp_2m", 50)),
        ("euler 20", run("euler", 20)),
    ]
    print(f"tiny txt2img UNet, latent {hw}x{hw}, scale {args.scale}; reference: ddim {args.ref_steps} steps "
          f"(eta 0), |ref| = {np.linalg.norm(ref):.4g}")
    print(f"{'sampler':34s} {'rel L2 to ref':>14s} {'max abs':>10s}")
    for name, x in rows:
        print(f"{name:34s} {np.linalg.norm(x - ref) / np.linalg.norm(ref):14.4e} {np.abs(x - ref).max():10.4e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
