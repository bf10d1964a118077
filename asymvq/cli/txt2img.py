"""Drop-in for the research code's ``txt2img.py``.

Same flags and defaults (SPEC §7.2)::

    python -m asymvq.txt2img --prompt "a painting of a virus monster playing guitar" \
        --config_c autoencoder_kl_woc_32x32x4.yaml --ckpt_c base.ckpt \
        --config v1-t2i-inference.yaml --ckpt v1-5-pruned-emaonly.ckpt --outdir OUT

With the original's flags it writes what the original writes: ``OUT/0.png`` and
nothing more (the original parses ``--n_iter 2`` but runs one iteration, and
saves the first sample). Where asymvq goes beyond the original: ``--n_iter N``
given explicitly runs N iterations; ``--n_samples > 1`` and ``--from-file``
work; every sample is written, ``OUT/0.png``, ``OUT/1.png`` ... (unless
``--skip_save``), and ``OUT/grid.png`` (rows of ``--n_rows`` images, default
``--n_samples``) when more than one image was made, unless ``--skip_grid``.
``--config`` / ``--config_c`` left out are inferred from their checkpoints'
tensors (the choice is printed on stderr).

Differences from the original, on purpose: it runs on a CPU (the original
hard-codes CUDA); ``--n_iter``, ``--n_samples > 1``, ``--from-file``,
``--skip_grid`` / ``--skip_save`` and ``--n_rows`` work as above (the original
parses them and ignores them or breaks); ``--precision autocast`` (and ``auto``)
means bf16 where the CPU has native bf16, else fp32, and ``full`` fp32.
``--laion400m`` (the old LDM model) is not supported. Beyond the original:
``--sampler`` (ddim, the default, or plms as ``--plms``; dpmpp_2m,
dpmpp_2m_karras, euler, euler_a: see the README's "Samplers") and
``--negative-prompt`` (the unconditional text instead of "").

Noise (``--rng``): one generator seeded with ``--seed`` gives every draw in the
original's order: the start code of each sample call (``--fixed_code``: once,
before the first iteration), then one noise per DDIM step when ``--ddim_eta >
0``, running on across prompts and ``--n_iter`` iterations. ``--rng numpy``
(default) is ``numpy.random.RandomState(--seed)``; ``--rng torch-cuda`` is the
original's own stream (torch's CUDA generator after ``seed_everything(--seed)``,
emulated: within a few 1e-6 of the GPU's values); ``--rng torch-cpu`` is torch's
CPU generator seeded the same way (bit-exact).
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from typing import List, Optional, Sequence

from PIL import Image

from . import common as _cli
from ..sampler import SAMPLER_NAMES, sampler_from_name


class _Default(int):
    """An int default that can be told apart from the same value given on the command line."""


#: The original's ``--n_iter`` default: parsed, but the original runs one iteration.
ORIGINAL_N_ITER = _Default(2)


def iterations(args: argparse.Namespace) -> int:
    """Iterations to run: 1 with the original's default (as the original), else ``--n_iter``."""
    return 1 if args.n_iter is ORIGINAL_N_ITER else args.n_iter


def parser() -> argparse.ArgumentParser:
    beyond = __doc__.split("\n\n", 3)[3].replace("``", "")  # where asymvq goes beyond the original
    p = _cli.ArgumentParser(prog="python -m asymvq.txt2img", description=__doc__.split("\n\n")[0], epilog=beyond,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompt", type=str, nargs="?", default="a painting of a virus monster playing guitar")
    p.add_argument("--outdir", type=str, nargs="?", default="/mnt/output/git_results")
    p.add_argument("--config_c", type=str, default="configs/autoencoder/autoencoder_kl_woc_32x32x4.yaml")
    p.add_argument("--ckpt_c", type=str, default="base.ckpt")
    p.add_argument("--skip_grid", action="store_true")
    p.add_argument("--skip_save", action="store_true")
    p.add_argument("--ddim_steps", type=int, default=50)
    p.add_argument("--plms", action="store_true")
    p.add_argument("--sampler", type=str, default="ddim", choices=list(SAMPLER_NAMES),
                   help="denoising sampler (default: ddim, or plms with --plms: the original's); --ddim_eta "
                   "applies to ddim only")
    p.add_argument("--negative-prompt", dest="negative_prompt", type=str, default="",
                   help="the unconditional text of classifier-free guidance (default: \"\", the original's)")
    p.add_argument("--laion400m", action="store_true")
    p.add_argument("--fixed_code", action="store_true")
    p.add_argument("--ddim_eta", type=float, default=0.0)
    p.add_argument("--n_iter", type=int, default=ORIGINAL_N_ITER,
                   help="iterations; the original parses the default 2 but runs once, and so does asymvq unless "
                        "--n_iter is given")
    p.add_argument("--H", type=int, default=512)
    p.add_argument("--W", type=int, default=512)
    p.add_argument("--C", type=int, default=4)
    p.add_argument("--f", type=int, default=8)
    p.add_argument("--n_samples", type=int, default=1)
    p.add_argument("--n_rows", type=int, default=0)
    p.add_argument("--scale", type=float, default=7.5)
    p.add_argument("--from-file", type=str, dest="from_file", default=None)
    p.add_argument("--config", type=str, default="configs/autoencoder/v1-t2i-inference.yaml")
    p.add_argument("--ckpt", type=str, default="/mnt/output/pre_models/v1-5-pruned-emaonly.ckpt")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--precision", type=str, default="autocast", choices=["full", "autocast", "auto", "fp32", "bf16"])
    # ours
    p.add_argument("--round", action="store_true", help="round to uint8 instead of truncating")
    p.add_argument("--vocab", type=str, default=None, help="CLIP BPE vocabulary (else ASYMVQ_CLIP_VOCAB / HF cache)")
    p.add_argument("--threads", type=int, default=None, help="compute threads (default: all cores)")
    p.add_argument("--rng", type=str, default="numpy", choices=["numpy", "torch-cpu", "torch-cuda"],
                   help="noise source seeded by --seed: numpy RandomState, torch's CPU generator, or torch's "
                   "CUDA generator (the original's; emulated on the CPU)")
    return p


def read_prompts(args: argparse.Namespace) -> List[str]:
    if args.from_file is None:
        return [args.prompt]
    try:
        with open(args.from_file, encoding="utf-8") as f:
            prompts = [line.strip() for line in f if line.strip()]
    except OSError as e:
        raise _cli.CLIError(f"--from-file {args.from_file}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise _cli.CLIError(f"--from-file {args.from_file} is not UTF-8 text (byte {e.start}: "
                            f"{e.object[e.start:e.start + 1]!r})") from None
    if not prompts:
        raise _cli.CLIError(f"--from-file {args.from_file} has no prompts")
    return prompts


def make_grid(images: List[Image.Image], per_row: int) -> Image.Image:
    w, h = images[0].size
    rows = math.ceil(len(images) / per_row)
    grid = Image.new("RGB", (w * per_row, h * rows))
    for i, im in enumerate(images):
        grid.paste(im, ((i % per_row) * w, (i // per_row) * h))
    return grid


def validate(args: argparse.Namespace) -> None:
    if args.laion400m:
        raise _cli.CLIError("--laion400m selects the old LDM text-to-image model, which asymvq does not support")
    if args.C != 4:
        raise _cli.CLIError(f"--C must be 4 (the SD v1 latent channels), got {args.C}")
    if args.f != 8:
        raise _cli.CLIError(f"--f must be 8 (the SD v1 downsampling factor), got {args.f}")
    if args.H % 64 or args.W % 64 or args.H < 64 or args.W < 64:
        raise _cli.CLIError(f"--H and --W must be positive multiples of 64, got {args.H}x{args.W}")
    if args.plms and args.ddim_eta != 0:
        raise _cli.CLIError("--plms needs --ddim_eta 0 (PLMS is deterministic)")
    if args.plms and args.sampler not in ("ddim", "plms"):
        raise _cli.CLIError(f"--plms and --sampler {args.sampler} contradict each other: give one of them")
    for flag in ("ddim_steps", "n_iter", "n_samples"):
        if getattr(args, flag) < 1:
            raise _cli.CLIError(f"--{flag} must be >= 1")
    if args.n_rows < 0:
        raise _cli.CLIError("--n_rows must be >= 0")
    _cli.check_finite(args.scale, "--scale")
    _cli.check_seed(args.seed)
    _cli.check_threads(args.threads)


def main(argv: Optional[Sequence[str]] = None) -> int:
    return _cli.run_command(lambda: run(parser().parse_args(argv)))


def output_names(args: argparse.Namespace, n_prompts: int) -> List[str]:
    """The files this run writes, in order."""
    count = iterations(args) * n_prompts * args.n_samples
    names = [] if args.skip_save else [f"{i}.png" for i in range(count)]
    return names + (["grid.png"] if not args.skip_grid and count > 1 else [])


def run(args: argparse.Namespace) -> int:
    import asymvq
    from ..pipelines import Txt2ImgPipeline

    # every argument and file before any model is loaded
    validate(args)
    from ..rng import Generator

    try:
        gen = Generator(args.rng, args.seed)
    except ValueError as e:
        raise _cli.CLIError(f"--rng {args.rng} --seed {args.seed}: {e}") from None
    prompts = read_prompts(args)
    # A config left at its default is inferred from its checkpoint (see inpaint_st).
    defaults = parser()
    config = None if args.config == defaults.get_default("config") else _cli.resolve_config(args.config)
    config_c = None if args.config_c == defaults.get_default("config_c") else _cli.resolve_config(args.config_c)
    spec = None
    if config is not None:
        spec = _cli.load_diffusion_config(config, "--config", "txt2img", "v1-t2i-inference.yaml")
    if config_c is not None:
        _cli.load_decoder_config(config_c, "--config_c", "autoencoder_kl_woc_32x32x4.yaml")
    sampler = "plms" if args.plms else args.sampler
    if sampler in ("ddim", "plms"):
        _cli.check_sampler(sampler, args.ddim_steps, args.ddim_eta, spec, "--ddim_steps", "--ddim_eta")
    try:
        sampler_from_name(sampler, args.ddim_steps, args.ddim_eta, spec)
    except ValueError as e:
        raise _cli.CLIError(f"--sampler {sampler} --ddim_steps {args.ddim_steps} --ddim_eta {args.ddim_eta}: {e}") \
            from None
    _cli.require_file(args.ckpt, "--ckpt checkpoint")
    _cli.require_file(args.ckpt_c, "--ckpt_c checkpoint")
    outdir = _cli.prepare_outdir(args.outdir)
    _cli.check_outputs(outdir / name for name in output_names(args, len(prompts)))
    if args.threads is not None:
        asymvq.set_num_threads(args.threads)
    # last of the checks: its "auto" line is printed only once everything else is known good
    precision = _cli.precision_arg(args.precision)
    pipe = Txt2ImgPipeline.from_original(config_c, args.ckpt_c, config, args.ckpt, vocab=args.vocab,
                                         precision=precision)
    from tqdm.auto import tqdm

    n, h, w = args.n_samples, args.H // 8, args.W // 8
    # --fixed_code draws the start code once, before sampling; otherwise each call draws its own
    code = gen.randn((n, 4, h, w)) if args.fixed_code else None
    images: List[Image.Image] = []
    count = 0
    grid = "grid.png" in output_names(args, len(prompts))
    for it in tqdm(range(iterations(args)), desc="iterations", unit="it"):
        for prompt in prompts:
            t = time.perf_counter()
            res = pipe(prompt, n_samples=n, height=args.H, width=args.W, scale=args.scale, steps=args.ddim_steps,
                       eta=args.ddim_eta, sampler=sampler, negative_prompt=args.negative_prompt, x_T=code,
                       round=args.round, rng=gen)
            for im in res.images:
                if not args.skip_save:
                    _cli.save_png(im, outdir / f"{count}.png")
                if grid:
                    images.append(im)  # only the grid needs them all
                count += 1
            tqdm.write(_cli.summary(f"{prompt[:40]!r} x{n}", args.W, args.H, time.perf_counter() - t,
                                    args.ddim_steps))
    if grid:
        per_row = args.n_rows if args.n_rows > 0 else n
        _cli.save_png(make_grid(images, per_row), outdir / "grid.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
