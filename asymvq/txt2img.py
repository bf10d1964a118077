"""Drop-in for the research code's ``txt2img.py``.

Same flags and defaults (SPEC §7.2)::

    python -m asymvq.txt2img --prompt "a painting of a virus monster playing guitar" \
        --config_c autoencoder_kl_woc_32x32x4.yaml --ckpt_c base.ckpt \
        --config v1-t2i-inference.yaml --ckpt v1-5-pruned-emaonly.ckpt --outdir OUT

Writes ``OUT/0.png`` for the first sample, as the original does, then
``OUT/1.png`` ... for every further sample (``--n_samples`` per iteration,
``--n_iter`` iterations) unless ``--skip_save``, and ``OUT/grid.png`` (rows of
``--n_rows`` images, default ``--n_samples``) when there is more than one image,
unless ``--skip_grid``. ``--config`` / ``--config_c`` left out are inferred from their
checkpoints' tensors (the choice is printed on stderr).

Differences from the original, on purpose: it runs on a CPU (the original
hard-codes CUDA); ``--n_iter``, ``--n_samples > 1``, ``--from-file``,
``--skip_grid`` / ``--skip_save`` and ``--n_rows`` work (the original parses
them and ignores them or breaks); the start code comes from
``numpy.random.RandomState(--seed)`` (the original uses torch's CUDA generator,
which cannot be reproduced elsewhere) — ``--fixed_code`` reuses the first
iteration's start code for every iteration; ``--precision autocast`` means bf16
and ``full`` fp32. ``--laion400m`` (the old LDM model) is not supported.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from typing import List, Optional, Sequence

import numpy as np
from PIL import Image

from . import _cli


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m asymvq.txt2img", description=__doc__.split("\n\n")[0])
    p.add_argument("--prompt", type=str, nargs="?", default="a painting of a virus monster playing guitar")
    p.add_argument("--outdir", type=str, nargs="?", default="/mnt/output/git_results")
    p.add_argument("--config_c", type=str, default="configs/autoencoder/autoencoder_kl_woc_32x32x4.yaml")
    p.add_argument("--ckpt_c", type=str, default="base.ckpt")
    p.add_argument("--skip_grid", action="store_true")
    p.add_argument("--skip_save", action="store_true")
    p.add_argument("--ddim_steps", type=int, default=50)
    p.add_argument("--plms", action="store_true")
    p.add_argument("--laion400m", action="store_true")
    p.add_argument("--fixed_code", action="store_true")
    p.add_argument("--ddim_eta", type=float, default=0.0)
    p.add_argument("--n_iter", type=int, default=2)
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
    p.add_argument("--precision", type=str, default="autocast", choices=["full", "autocast", "fp32", "bf16"])
    # ours
    p.add_argument("--round", action="store_true", help="round to uint8 instead of truncating")
    p.add_argument("--vocab", type=str, default=None, help="CLIP BPE vocabulary (else ASYMVQ_CLIP_VOCAB / HF cache)")
    p.add_argument("--threads", type=int, default=None, help="compute threads (default: all cores)")
    return p


def read_prompts(args: argparse.Namespace) -> List[str]:
    if args.from_file is None:
        return [args.prompt]
    try:
        with open(args.from_file, encoding="utf-8") as f:
            prompts = [line.strip() for line in f if line.strip()]
    except OSError as e:
        raise _cli.CLIError(f"--from-file {args.from_file}: {e.strerror or e}") from None
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
    for flag in ("ddim_steps", "n_iter", "n_samples"):
        if getattr(args, flag) < 1:
            raise _cli.CLIError(f"--{flag} must be >= 1")
    if args.n_rows < 0:
        raise _cli.CLIError("--n_rows must be >= 0")


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parser().parse_args(argv)
    try:
        return run(args)
    except _cli.CLIError as e:
        return _cli.fail(str(e))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def run(args: argparse.Namespace) -> int:
    import asymvq
    from .checkpoint import CheckpointError
    from .config import ConfigError
    from .pipelines import Txt2ImgPipeline

    validate(args)
    precision = _cli.precision_arg(args.precision)
    if args.threads is not None:
        asymvq.set_num_threads(args.threads)
    prompts = read_prompts(args)
    # A config left at its default is inferred from its checkpoint (see inpaint_st).
    defaults = parser()
    config = None if args.config == defaults.get_default("config") else _cli.resolve_config(args.config)
    config_c = None if args.config_c == defaults.get_default("config_c") else _cli.resolve_config(args.config_c)
    _cli.require_file(args.ckpt, "--ckpt checkpoint")
    _cli.require_file(args.ckpt_c, "--ckpt_c checkpoint")
    outdir = _cli.prepare_outdir(args.outdir)
    try:
        pipe = Txt2ImgPipeline.from_original(config_c, args.ckpt_c, config, args.ckpt, vocab=args.vocab,
                                             precision=precision)
    except (CheckpointError, ConfigError, ValueError, FileNotFoundError) as e:
        raise _cli.CLIError(str(e)) from None
    from tqdm.auto import tqdm

    n, h, w = args.n_samples, args.H // 8, args.W // 8
    rng = np.random.RandomState(args.seed)
    first_code = rng.randn(n, 4, h, w).astype(np.float32)
    images: List[Image.Image] = []
    count = 0
    sampler = "plms" if args.plms else "ddim"
    for it in tqdm(range(args.n_iter), desc="iterations", unit="it"):
        code = first_code if (it == 0 or args.fixed_code) else rng.randn(n, 4, h, w).astype(np.float32)
        for prompt in prompts:
            t = time.perf_counter()
            res = pipe(prompt, n_samples=n, height=args.H, width=args.W, scale=args.scale, steps=args.ddim_steps,
                       eta=args.ddim_eta, sampler=sampler, x_T=code, round=args.round)
            for im in res.images:
                if not args.skip_save:
                    _cli.save_png(im, outdir / f"{count}.png")
                images.append(im)
                count += 1
            tqdm.write(_cli.summary(f"{prompt[:40]!r} x{n}", args.W, args.H, time.perf_counter() - t,
                                    args.ddim_steps))
    if not args.skip_grid and len(images) > 1:
        per_row = args.n_rows if args.n_rows > 0 else n
        _cli.save_png(make_grid(images, per_row), outdir / "grid.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
