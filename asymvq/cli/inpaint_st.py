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
* models are loaded once, not per image; every argument and every input file
  (headers: sizes, unreadable files) is checked before the models are loaded, then
  the pairs are loaded, run and written one at a time (memory does not grow with
  their number);
* images without a ``NAME_mask.png`` are skipped with one warning line (the
  original ignores them silently); a mask without its image is an error;
* ``--outdir`` may not be the ``--indir`` folder (the results, named like the
  inputs, would replace them); 16-bit PNGs are scaled to 8 bits, not clipped;
* the config paths fall back to the copies shipped with asymvq when the original
  relative paths do not exist; a config flag left out is inferred from its checkpoint's
  tensors (the choice is printed on stderr).

Extra flags: ``--precision fp32|bf16``, ``--round`` (round instead of truncating
to uint8), ``--report`` (preservation error and PSNR outside the mask per image),
``--vocab`` (CLIP vocabulary), ``--threads``, ``--rng``; the values the original
hard-codes, with its defaults: ``--prompt``, ``--steps`` (50), ``--scale`` (7.5),
``--eta`` (1.0; only with ddim), ``--seed`` (0); ``--negative-prompt`` (the
unconditional text, default ""), ``--sampler`` (ddim, the original's; plms,
dpmpp_2m, dpmpp_2m_karras, euler, euler_a: see the README's "Samplers").

Noise (``--rng``): the start code is ``numpy.random.RandomState(0)`` for every
image, as the original. ``--rng numpy`` (default): the posterior sample and the
DDIM noise from ``RandomState(1)`` and ``RandomState(2)`` per image. ``--rng
torch-cuda``: the original's streams: the DDIM noise from torch's CUDA generator
(emulated) at torch's default seed 67280421310721 (the original never seeds
torch), running on across the images of the run, and the posterior mean
(``--rng torch-cpu``: the same with torch's CPU generator) (the original's posterior sample comes from
a CPU generator in an unknowable state; its effect is tiny, see the README).
"""
from __future__ import annotations

import argparse
import glob
import os
import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from . import common as _cli
from ..io import config as config_mod
from ..image import load_pair, open_image, probe_pair
from ..sampler import SAMPLER_NAMES

PROMPT = "photograph of a beautiful empty scene, highest quality settings"


def parser() -> argparse.ArgumentParser:
    p = _cli.ArgumentParser(prog="python -m asymvq.inpaint_st", description=__doc__.split("\n\n")[0])
    # the original flags, with the original defaults
    p.add_argument("--ckpt", type=str, default="base.ckpt", help="asymmetric decoder checkpoint")
    p.add_argument("--outdir", type=str, default="/mnt/output/git_results", help="output folder")
    p.add_argument("--config", type=str, default="configs/autoencoder/autoencoder_kl_32x32x4.yaml",
                   help="decoder config (autoencoder_kl_32x32x4{,_large,_large2}.yaml; omitted: inferred from --ckpt); "
                        "SD's vanilla decoder: the diffusion config (with --ckpt the SD checkpoint)")
    p.add_argument("--indir", type=str, default="/mnt/output/my_dataset/val",
                   help="folder with NAME.png + NAME_mask.png pairs")
    p.add_argument("--config_d", type=str, default="configs/autoencoder/v1-inpainting-inference.yaml",
                   help="diffusion config; omitted: inferred from --ckpt_d")
    p.add_argument("--ckpt_d", type=str, default="/mnt/output/pre_models/sd-v1-5-inpainting.ckpt",
                   help="SD 1.5 inpainting checkpoint")
    # ours
    p.add_argument("--precision", type=str, default="fp32",
                   help="fp32, bf16 or auto (bf16 where the CPU has it natively; autocast = auto, full = fp32)")
    p.add_argument("--round", action="store_true", help="round to uint8 instead of truncating (the original truncates)")
    p.add_argument("--report", action="store_true", help="print the preservation error and PSNR outside the mask")
    p.add_argument("--vocab", type=str, default=None, help="CLIP BPE vocabulary (else ASYMVQ_CLIP_VOCAB / HF cache)")
    p.add_argument("--threads", type=int, default=None, help="compute threads (default: all cores)")
    p.add_argument("--prompt", type=str, default=PROMPT, help="the text (default: the original's fixed prompt)")
    p.add_argument("--negative-prompt", dest="negative_prompt", type=str, default="",
                   help="the unconditional text of classifier-free guidance (default: \"\", the original's)")
    p.add_argument("--sampler", type=str, default="ddim", choices=list(SAMPLER_NAMES),
                   help="denoising sampler (default: ddim, the original's)")
    p.add_argument("--steps", type=int, default=50, help="sampler steps (default: 50, the original's)")
    p.add_argument("--scale", type=float, default=7.5, help="guidance scale (default: 7.5, the original's)")
    p.add_argument("--eta", type=float, default=None,
                   help="DDIM eta (default: 1.0, the original's, with ddim; other samplers take only 0)")
    p.add_argument("--seed", type=int, default=0, help="start code seed (default: 0, the original's)")
    p.add_argument("--rng", type=str, default="numpy", choices=["numpy", "torch-cpu", "torch-cuda"],
                   help="DDIM noise source: numpy RandomState, or torch's CPU / CUDA (emulated, the original's) "
                   "generator at torch's default seed")
    return p


def find_pairs(indir: str) -> Tuple[List[Tuple[Path, Path]], List[Path]]:
    """``(pairs, skipped)``: every NAME_mask.png with its NAME.png, sorted like the original, and
    the images that have no mask (the original never looks at them). A mask without its image
    is an error."""
    if not os.path.isdir(indir):
        raise _cli.CLIError(f"--indir {indir} is not a directory")
    masks = sorted(glob.glob(os.path.join(indir, "*_mask.png")))
    images = sorted(p for p in glob.glob(os.path.join(indir, "*.png")) if not p.endswith("_mask.png"))
    if not masks:
        raise _cli.CLIError(f"--indir {indir} has no NAME.png + NAME_mask.png pairs")
    pairs = []
    for m in masks:
        img = m[: -len("_mask.png")] + ".png"  # suffix only (the original replaces any substring)
        if not os.path.isfile(img):
            raise _cli.CLIError(f"mask {m} has no image {os.path.basename(img)}")
        pairs.append((Path(img), Path(m)))
    with_mask = {str(i) for i, _ in pairs}
    skipped = [Path(img) for img in images if img not in with_mask]
    return pairs, skipped


def check_not_overwriting_inputs(indir: str, outdir: Path, pairs: Sequence[Tuple[Path, Path]]) -> None:
    """Outputs are ``OUTDIR/NAME.png``: with ``--outdir`` the same folder as ``--indir`` (or an
    output name that is a link to an input) they would replace the inputs, so this is refused."""
    if _cli.same_file(indir, outdir):
        raise _cli.CLIError(f"--outdir {outdir} is the --indir folder: the results would replace the input "
                            "images; choose another --outdir")
    if not outdir.is_dir():
        return  # nothing there yet, so nothing to overwrite
    inputs = {_cli.file_id(p) for pair in pairs for p in pair}
    clash = [str(outdir / img.name) for img, _ in pairs if _cli.file_id(outdir / img.name) in inputs - {None}]
    if clash:
        raise _cli.CLIError(f"output {_cli.listing(clash)} is one of the input files; choose another --outdir")


def check_sampler_args(args: argparse.Namespace, spec: Optional[config_mod.DiffusionSpec]) -> None:
    """--sampler / --steps / --eta / --scale / --seed as the pipeline will take them (CLIError otherwise)."""
    from ..sampler import sampler_from_name

    _cli.check_finite(args.scale, "--scale")
    _cli.check_seed(args.seed, maximum=_cli.SEED_MAX - 2)  # the posterior and step noise use seed + 1, seed + 2
    if args.sampler in ("ddim", "plms"):
        _cli.check_sampler(args.sampler, args.steps, args.eta, spec, "--steps", "--eta")
    try:
        sampler_from_name(args.sampler, args.steps, args.eta, spec)
    except ValueError as e:
        raise _cli.CLIError(f"--sampler {args.sampler} --steps {args.steps} --eta {args.eta}: {e}") from None


def main(argv: Optional[Sequence[str]] = None) -> int:
    return _cli.run_command(lambda: run(parser().parse_args(argv)))


def run(args: argparse.Namespace) -> int:
    import asymvq
    from ..metrics import preservation_error, psnr_outside_mask
    from ..pipelines import InpaintPipeline
    from ..rng import TORCH_DEFAULT_SEED, Generator

    try:  # one generator for the run: its stream runs on across the images, as the original's
        rng = "numpy" if args.rng == "numpy" else Generator(args.rng, TORCH_DEFAULT_SEED)
    except ValueError as e:
        raise _cli.CLIError(f"--rng {args.rng}: {e}") from None

    # 1. every argument and input file, before any model is loaded
    _cli.check_threads(args.threads)
    # A config left at its default is inferred from its checkpoint (the same file for the original
    # checkpoints; the right one for the 1.5x / 2x decoders and the tiny models).
    defaults = parser()
    config_d = None if args.config_d == defaults.get_default("config_d") else _cli.resolve_config(args.config_d)
    config = None if args.config == defaults.get_default("config") else _cli.resolve_config(args.config)
    spec_d = None
    if config_d is not None:
        spec_d = _cli.load_diffusion_config(config_d, "--config_d", "inpaint", "v1-inpainting-inference.yaml")
    if config is not None:
        if not isinstance(_cli.load_config(config, "--config"), (config_mod.AutoencoderSpec, config_mod.DiffusionSpec)):
            raise _cli.CLIError(f"--config {config} is not a decoder config (e.g. autoencoder_kl_32x32x4.yaml, "
                                "or the diffusion config for SD's vanilla decoder)")
    if args.eta is None:
        args.eta = 1.0 if args.sampler == "ddim" else 0.0
    check_sampler_args(args, spec_d)
    _cli.require_file(args.ckpt_d, "--ckpt_d checkpoint")
    _cli.require_file(args.ckpt, "--ckpt checkpoint")
    pairs, skipped = find_pairs(args.indir)
    check_not_overwriting_inputs(args.indir, Path(args.outdir), pairs)
    sizes = [probe_pair(img, msk) for img, msk in pairs]  # headers only: memory stays flat
    outdir = _cli.prepare_outdir(args.outdir)
    _cli.check_outputs(outdir / img.name for img, _ in pairs)
    if skipped:
        print(f"warning: skipping {len(skipped)} image(s) without a NAME_mask.png: "
              f"{_cli.listing([p.name for p in skipped])}", file=sys.stderr)
    if args.threads is not None:
        asymvq.set_num_threads(args.threads)

    # 2. the models, once
    # last of the checks: its "auto" line is printed only once everything else is known good
    precision = _cli.precision_arg(args.precision)
    pipe = InpaintPipeline.from_original(config_d, args.ckpt_d, config, args.ckpt, vocab=args.vocab,
                                         precision=precision)
    from tqdm.auto import tqdm

    # 3. one pair at a time: load, run, write, forget
    for (img, msk), (w, h) in tqdm(list(zip(pairs, sizes)), desc="images", unit="img"):
        t = time.perf_counter()
        x, m, _ = load_pair(img, msk)
        res = pipe(x, m, prompt=args.prompt, negative_prompt=args.negative_prompt, seed=args.seed,
                   scale=args.scale, steps=args.steps, eta=args.eta, sampler=args.sampler, round=args.round,
                   rng=rng)
        out = outdir / img.name
        _cli.save_png(res.images[0], out)
        extra = ""
        if args.report:
            orig = open_image(img).convert("RGB")
            orig = orig.resize((w, h)) if orig.size != (w, h) else orig
            pe = preservation_error(orig, res.images[0], m)
            ps = psnr_outside_mask(orig, res.images[0], m)
            extra = f", pre_error {pe * 1e5:.2f}e-5, PSNR outside mask {ps:.2f} dB"
        tqdm.write(_cli.summary(out.name, w, h, time.perf_counter() - t, args.steps, extra))
        del x, m, res
    return 0


if __name__ == "__main__":
    sys.exit(main())
