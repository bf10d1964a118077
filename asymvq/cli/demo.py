"""``python -m asymvq demo``: the whole inpainting pipeline, anywhere, in seconds.

It runs exactly the code path of ``inpaint_st`` — CLIP text encoder, KL encoder
of the masked image, 50 DDIM steps with eta 1 and guidance 7.5 on the
9-channel UNet, the asymmetric decoder — on the *tiny* configs shipped in
``asymvq/configs/tiny`` with **seeded random weights** and a generated image and
mask. The picture it paints is noise-like: the weights are random. What it
shows is that the engine runs, how long each stage takes, and that the known
region is preserved by the asymmetric decoder (its preservation error is
printed).

No CLIP vocabulary ships with asymvq: the demo uses the real one when it can
find it (``ASYMVQ_CLIP_VOCAB``, the Hugging Face cache), else a synthetic
byte-pair vocabulary of the same size.
"""
from __future__ import annotations

import sys
import time
from typing import Dict, Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw

from . import common as _cli
from ..io import config as config_mod
from ..io import tables

REAL_COMMAND = (
    "python -m asymvq.inpaint_st --indir DIR_WITH_NAME.png_AND_NAME_mask.png --outdir OUT \\\n"
    "    --config_d v1-inpainting-inference.yaml --ckpt_d sd-v1-5-inpainting.ckpt \\\n"
    "    --config autoencoder_kl_32x32x4.yaml --ckpt base.ckpt --vocab bpe_simple_vocab_16e6.txt.gz"
)


def random_weights(spec, seed: int, table: Optional[Dict[str, tuple]] = None) -> Dict[str, np.ndarray]:
    """Seeded random float32 weights for every tensor the spec's model needs (or every
    entry of ``table``), scaled so activations stay O(1) through deep stacks
    (std 1/sqrt(fan_in); norms near 1)."""
    rng = np.random.default_rng(seed)
    out: Dict[str, np.ndarray] = {}
    table = tables.requirements(spec).table if table is None else table
    for name, shape in table.items():
        if len(shape) >= 2:
            fan_in = int(np.prod(shape[1:]))
            std = 0.02 if "embedding" in name else 1.0 / np.sqrt(fan_in)
            a = rng.standard_normal(shape, dtype=np.float32) * np.float32(std)
        elif "norm" in name and name.endswith("weight"):
            a = (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        else:
            a = (0.02 * rng.standard_normal(shape)).astype(np.float32)
        out[name] = a
    return out


def random_first_stage_weights(spec_d, seed: int) -> Dict[str, np.ndarray]:
    """Random weights of a diffusion spec's first stage: SD's encoder and its vanilla decoder."""
    t = dict(tables.vae_encoder_tensors(spec_d.first_stage))
    t.update(tables.decoder_tensors(spec_d.first_stage, prefix=tables.FIRST_STAGE_PREFIX))
    return random_weights(spec_d, seed, t)


def synthetic_merges(n: int = 48894):
    """A byte-pair vocabulary of CLIP's shape (48,894 merges, 49,408 ids) that is not CLIP's:
    every pair of two single bytes, in a fixed order."""
    from ..tokenizer import _BYTE_CHARS  # the byte -> character table CLIP uses

    chars = list(_BYTE_CHARS)
    merges = []
    for a in chars:
        for b in chars:
            merges.append((a, b))
            if len(merges) == n:
                return merges
    return merges


def demo_tokenizer():
    from ..tokenizer import CLIPTokenizer, VocabNotFoundError, find_vocab

    try:
        return CLIPTokenizer.from_file(find_vocab(None)), "the CLIP vocabulary"
    except (VocabNotFoundError, FileNotFoundError, ValueError):
        return CLIPTokenizer(synthetic_merges()), "a synthetic vocabulary (no CLIP vocabulary found)"


def demo_inputs(size: int = 256):
    """A generated picture (gradient, disc, bars) and a mask over its middle."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    rgb = np.stack([x, y, 1 - x * y], -1) * 200 + 30
    img = Image.fromarray(rgb.astype(np.uint8))
    d = ImageDraw.Draw(img)
    d.ellipse([size * 0.55, size * 0.1, size * 0.9, size * 0.45], fill=(230, 200, 40))
    for i in range(0, size, size // 8):
        d.rectangle([i, size * 0.8, i + size // 16, size * 0.95], fill=(40, 60, 120))
    mask = Image.new("L", (size, size), 0)
    ImageDraw.Draw(mask).rectangle([size * 0.3, size * 0.3, size * 0.7, size * 0.7], fill=255)
    return img, mask


def build_pipeline(precision: str = "fp32", seed: int = 0):
    from ..pipelines import InpaintPipeline

    cfg_d = config_mod.packaged_tiny_config("v1-inpainting-inference")
    cfg_c = config_mod.packaged_tiny_config("autoencoder_kl_32x32x4")
    spec_d, spec_c = config_mod.load(cfg_d), config_mod.load(cfg_c)
    wd, wc = random_weights(spec_d, seed), random_weights(spec_c, seed + 1)
    tok, vocab_note = demo_tokenizer()
    pipe = InpaintPipeline._build(spec_d, spec_c, wd, wc, tok, precision,
                                  {"diffusion": "random (tiny)", "decoder": "random (tiny)"}, cfg_d, cfg_c)
    return pipe, vocab_note


def build_txt2img_pipeline(precision: str = "fp32", seed: int = 0):
    """The txt2img pipeline on the tiny configs with seeded random weights."""
    from ..pipelines import Txt2ImgPipeline

    cfg_d = config_mod.packaged_tiny_config("v1-t2i-inference")
    cfg_c = config_mod.packaged_tiny_config("autoencoder_kl_woc_32x32x4")
    spec_d, spec_c = config_mod.load(cfg_d), config_mod.load(cfg_c)
    wd, wc = random_weights(spec_d, seed), random_weights(spec_c, seed + 1)
    tok, vocab_note = demo_tokenizer()
    pipe = Txt2ImgPipeline._build(spec_d, spec_c, wd, wc, tok, precision,
                                  {"diffusion": "random (tiny)", "decoder": "random (tiny)"}, cfg_d, cfg_c)
    return pipe, vocab_note


def main(argv: Optional[Sequence[str]] = None) -> int:
    return _cli.run_command(lambda: run(argv))


def run(argv: Optional[Sequence[str]] = None) -> int:
    p = _cli.ArgumentParser(prog="python -m asymvq demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--outdir", default="asymvq-demo", help="where to write result.png and side_by_side.png")
    p.add_argument("--size", type=int, default=256, help="image side in pixels (multiple of 64)")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps (inpaint_st uses 50)")
    p.add_argument("--precision", default="fp32", type=_cli.precision_type, metavar="{fp32,bf16,auto}")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rng", default="numpy", choices=["numpy", "torch-cpu", "torch-cuda"],
                   help="noise source; with torch-cpu every stream follows --seed (a torch CPU generator)")
    args = p.parse_args(argv)
    if args.size % 64 or args.size < 64:
        raise _cli.CLIError(f"--size must be a positive multiple of 64, got {args.size}")
    _cli.check_sampler("ddim", args.steps, 1.0, None, "--steps")
    _cli.check_seed(args.seed, maximum=_cli.SEED_MAX - 2)  # the noise streams use seed + 1 and seed + 2
    from ..rng import Generator

    try:
        rng = "numpy" if args.rng == "numpy" else Generator(args.rng, args.seed)
    except ValueError as e:
        raise _cli.CLIError(f"--rng {args.rng}: {e}") from None
    from ..metrics import preservation_error, psnr_outside_mask

    out = _cli.prepare_outdir(args.outdir)
    _cli.check_outputs([out / "result.png", out / "side_by_side.png"])
    print("asymvq demo: the inpainting pipeline of inpaint_st on TINY models with RANDOM weights.")
    print("The result is not a meaningful picture; it shows the engine end to end.\n")
    t = time.perf_counter()
    pipe, vocab_note = build_pipeline(args.precision, args.seed)
    t_load = time.perf_counter() - t
    img, mask = demo_inputs(args.size)
    res = pipe(img, mask, seed=args.seed, steps=args.steps, progress=True, rng=rng)
    _cli.save_png(res.images[0], out / "result.png")
    side = Image.new("RGB", (args.size * 3, args.size))
    side.paste(img, (0, 0))
    side.paste(mask.convert("RGB"), (args.size, 0))
    side.paste(res.images[0], (2 * args.size, 0))
    _cli.save_png(side, out / "side_by_side.png")
    pe = preservation_error(img, res.images[0], mask)
    ps = psnr_outside_mask(img, res.images[0], mask)
    tm = res.timings
    print(f"models (tiny, random, {args.precision}): built in {t_load:.2f} s; tokenizer: {vocab_note}")
    print(f"image {args.size}x{args.size}, {args.steps} DDIM steps: total {res.seconds:.2f} s "
          f"(text {tm['text']:.2f} s, encode {tm['encode']:.2f} s, sampling {tm['sample']:.2f} s "
          f"= {tm['sample'] / max(args.steps, 1) * 1000:.1f} ms/step, decode {tm['decode']:.2f} s)")
    print(f"preservation outside the mask: pre_error {pe * 1e5:.3f}e-5, PSNR {ps:.1f} dB")
    print(f"wrote {out / 'result.png'} and {out / 'side_by_side.png'} (input | mask | result)")
    print("\nThe weights were random. With the real checkpoints, run:\n" + REAL_COMMAND)
    return 0


if __name__ == "__main__":
    sys.exit(main())
