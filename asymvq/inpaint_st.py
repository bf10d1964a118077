"""Drop-in for the research code's ``inpaint_st.py``.

Same flags and defaults (SPEC §7.1)::

    python -m asymvq.inpaint_st --indir DIR --outdir OUT \
        --config_d v1-inpainting-inference.yaml --ckpt_d sd-v1-5-inpainting.ckpt \
        --config autoencoder_kl_32x32x4.yaml --ckpt base.ckpt

For every ``NAME_mask.png`` in ``--indir`` (sorted) it inpaints ``NAME.png`` with
the fixed prompt, seed 0, 50 DDIM steps, eta 1.0, guidance 7.5, and writes
``OUT/NAME.png``. Differences from the original, on purpose:

* the mask is resized with the image (nearest, then the 0.5 threshold): the
  original crashes on any image it has to resize;
* models are loaded once, not per image; everything is checked before the first
  image is generated (missing masks, sizes, unreadable files, writable outdir);
* the config paths fall back to the copies shipped with asymvq when the original
  relative paths do not exist.

Extra flags: ``--precision fp32|bf16``, ``--round`` (round instead of truncating
to uint8), ``--report`` (preservation error and PSNR outside the mask per image),
``--vocab`` (CLIP vocabulary), ``--threads``.
"""
from __future__ import annotations

import argparse
import glob
import os
import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from . import _cli
from .image import ImageError, load_pair, open_image

PROMPT = "photograph of a beautiful empty scene, highest quality settings"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m asymvq.inpaint_st", description=__doc__.split("\n\n")[0])
    # the original flags, with the original defaults
    p.add_argument("--ckpt", type=str, default="base.ckpt", help="asymmetric decoder checkpoint")
    p.add_argument("--outdir", type=str, default="/mnt/output/git_results", help="output folder")
    p.add_argument("--config", type=str, default="configs/autoencoder/autoencoder_kl_32x32x4.yaml",
                   help="decoder config (autoencoder_kl_32x32x4{,_large,_large2}.yaml); SD's vanilla decoder: "
                        "the diffusion config (with --ckpt the SD checkpoint)")
    p.add_argument("--indir", type=str, default="/mnt/output/my_dataset/val",
                   help="folder with NAME.png + NAME_mask.png pairs")
    p.add_argument("--config_d", type=str, default="configs/autoencoder/v1-inpainting-inference.yaml",
                   help="diffusion config")
    p.add_argument("--ckpt_d", type=str, default="/mnt/output/pre_models/sd-v1-5-inpainting.ckpt",
                   help="SD 1.5 inpainting checkpoint")
    # ours
    p.add_argument("--precision", type=str, default="fp32", help="fp32 or bf16 (autocast = bf16, full = fp32)")
    p.add_argument("--round", action="store_true", help="round to uint8 instead of truncating (the original truncates)")
    p.add_argument("--report", action="store_true", help="print the preservation error and PSNR outside the mask")
    p.add_argument("--vocab", type=str, default=None, help="CLIP BPE vocabulary (else ASYMVQ_CLIP_VOCAB / HF cache)")
    p.add_argument("--threads", type=int, default=None, help="compute threads (default: all cores)")
    p.add_argument("--steps", type=int, default=50, help=argparse.SUPPRESS)  # for quick checks; original: 50
    return p


def find_pairs(indir: str) -> List[Tuple[Path, Path]]:
    """(image, mask) pairs: every NAME_mask.png with its NAME.png, sorted like the original;
    an image without a mask, or a mask without an image, is an error."""
    if not os.path.isdir(indir):
        raise _cli.CLIError(f"--indir {indir} is not a directory")
    masks = sorted(glob.glob(os.path.join(indir, "*_mask.png")))
    images = sorted(p for p in glob.glob(os.path.join(indir, "*.png")) if not p.endswith("_mask.png"))
    if not masks and not images:
        raise _cli.CLIError(f"--indir {indir} has no NAME.png + NAME_mask.png pairs")
    pairs = []
    for m in masks:
        img = m[: -len("_mask.png")] + ".png"  # suffix only (the original replaces any substring)
        if not os.path.isfile(img):
            raise _cli.CLIError(f"mask {m} has no image {os.path.basename(img)}")
        pairs.append((Path(img), Path(m)))
    with_mask = {str(i) for i, _ in pairs}
    for img in images:
        if img not in with_mask:
            raise _cli.CLIError(f"image {img} has no mask {os.path.basename(img)[:-4]}_mask.png")
    return pairs


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parser().parse_args(argv)
    try:
        return run(args)
    except _cli.CLIError as e:
        return _cli.fail(str(e))
    except ImageError as e:
        return _cli.fail(str(e))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def run(args: argparse.Namespace) -> int:
    import asymvq
    from .checkpoint import CheckpointError
    from .config import ConfigError
    from .metrics import preservation_error, psnr_outside_mask
    from .pipelines import InpaintPipeline

    precision = _cli.precision_arg(args.precision)
    if args.threads is not None:
        asymvq.set_num_threads(args.threads)
    config_d, config = _cli.resolve_config(args.config_d), _cli.resolve_config(args.config)
    _cli.require_file(args.ckpt_d, "--ckpt_d checkpoint")
    _cli.require_file(args.ckpt, "--ckpt checkpoint")
    pairs = find_pairs(args.indir)
    inputs = []
    for img, msk in pairs:  # validate everything before the first image is generated
        x, m, size = load_pair(img, msk)
        inputs.append((img, msk, x, m, size))
    outdir = _cli.prepare_outdir(args.outdir)
    try:
        pipe = InpaintPipeline.from_original(config_d, args.ckpt_d, config, args.ckpt, vocab=args.vocab,
                                             precision=precision)
    except (CheckpointError, ConfigError, ValueError, FileNotFoundError) as e:
        raise _cli.CLIError(str(e)) from None
    from tqdm.auto import tqdm

    for img, msk, x, m, (w, h) in tqdm(inputs, desc="images", unit="img"):
        t = time.perf_counter()
        res = pipe(x, m, prompt=PROMPT, seed=0, scale=7.5, steps=args.steps, eta=1.0, round=args.round)
        out = outdir / img.name
        _cli.save_png(res.images[0], out)
        extra = ""
        if args.report:
            orig = open_image(img).convert("RGB").resize((w, h)) if open_image(img).size != (w, h) else open_image(img)
            pe = preservation_error(orig, res.images[0], m)
            ps = psnr_outside_mask(orig, res.images[0], m)
            extra = f", pre_error {pe * 1e5:.2f}e-5, PSNR outside mask {ps:.2f} dB"
        tqdm.write(_cli.summary(out.name, w, h, time.perf_counter() - t, args.steps, extra))
    return 0


if __name__ == "__main__":
    sys.exit(main())
