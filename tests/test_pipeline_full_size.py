"""The inpainting pipeline with full-size random weights at 512x512 completes (slow; runs in CI)."""
import time
from pathlib import Path

import numpy as np
import pytest


from asymvq import config, demo
from asymvq.pipelines import InpaintPipeline

VOCAB = Path(__file__).resolve().parents[2] / "shared" / "data" / "clip" / "bpe_simple_vocab_16e6.txt.gz"


@pytest.mark.slow
def test_full_size_inpainting_at_512_completes_a_few_steps(checkpoints):  # noqa: F811
    ckpt_d = checkpoints.get("sd15-inpaint", tiny=False, fmt="safetensors")
    ckpt = checkpoints.get("decoder-base", tiny=False, fmt="safetensors")
    t0 = time.perf_counter()
    pipe = InpaintPipeline.from_original(config.packaged_config("v1-inpainting-inference"), ckpt_d,
                                         config.packaged_config("autoencoder_kl_32x32x4"), ckpt, vocab=VOCAB)
    stamps = []
    image, mask = demo.demo_inputs(512)
    res = pipe(image, mask, steps=4, progress=False, callback=lambda i, t, x: stamps.append(time.perf_counter()))
    steady = (stamps[-1] - stamps[0]) / (len(stamps) - 1)
    print(f"full size 512x512 fp32: load {time.perf_counter() - t0 - res.seconds:.1f} s, first step (plan build) "
          f"{stamps[0] - t0:.1f} s from load, steady {steady:.2f} s/step, timings {res.timings}")
    assert res.images[0].size == (512, 512)
    assert np.isfinite(res.arrays).all()
    assert len(stamps) == 4
