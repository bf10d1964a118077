"""The ``python -m asymvq.bench`` command line: one subcommand per benchmark module."""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Dict, Optional, Sequence

from .harness import ISA_ENV, roof_in_child
from .ops import ops_main, roof_main

__all__ = ["main", "MODEL_BENCHES", "USAGE"]

#: Subcommand -> the module whose ``run(argv)`` it is; imported only when asked for.
MODEL_BENCHES: Dict[str, str] = {
    "vae": "asymvq.bench.vae",
    "text": "asymvq.bench.text",
    "unet": "asymvq.bench.unet",
    "inprocess": "asymvq.bench.inprocess",
    "pipeline": "asymvq.bench.pipeline",
    "peers": "asymvq.bench.peers",
}


def _model_main(name: str, argv: Sequence[str]) -> int:
    module = MODEL_BENCHES[name]
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name != module:
            raise
        print(f"the {name} benchmark is not available: module {module} is missing from this install", file=sys.stderr)
        return 2
    return int(mod.run(list(argv)) or 0)


def _isa_main(argv: Sequence[str]) -> int:
    """Issue 12's AVX2 comparison in one command: the UNet forward (64x64 latent, batch 2) and the base
    decoder at 512x512, fp32, against PyTorch, every child capped by ``--isa`` (see ``ISA_ENV``)."""
    p = argparse.ArgumentParser(prog="python -m asymvq.bench isa", description=_isa_main.__doc__)
    p.add_argument("--isa", default="avx2", choices=sorted(ISA_ENV), help="the cap (default avx2)")
    p.add_argument("--threads", type=int, default=2, help="threads for every engine (default 2)")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds, best kept (default 2)")
    p.add_argument("--config", help="diffusion YAML for the UNet (default: the packaged v1-t2i-inference.yaml)")
    args = p.parse_args(list(argv))
    from . import unet, vae

    common = ["--isa", args.isa, "--threads", str(args.threads), "--rounds", str(args.rounds), "--no-breakdown"]
    rf = roof_in_child(args.isa, args.threads)
    roof_arg = ["--roof", f"{rf['fp32']:.1f}"]
    print(f"== UNet forward, {args.isa} cap ==", flush=True)
    rc = unet.run(common + roof_arg + (["--config", args.config] if args.config else []))
    print(f"\n== base decoder at 512x512, {args.isa} cap ==", flush=True)
    return rc or vae.run(common + roof_arg + ["--models", "base"])


USAGE = """usage: python -m asymvq.bench {ops,roof,vae,text,unet,inprocess,isa,pipeline,peers} [options]

  ops        every op at the SD v1 shapes: asymvq vs torch, ratio, GFLOP/s (needs torch)
  roof       the machine's achievable fp32 / bf16 GFLOP/s (large GEMM)
  vae        VAE / asymmetric decoder benchmark (asymvq.bench.vae)
  text       text encoder benchmark (asymvq.bench.text)
  unet       UNet benchmark (asymvq.bench.unet)
  inprocess  asymvq with torch imported in the same process, before or after (asymvq.bench.inprocess)
  isa        UNet and base decoder fp32 vs torch with both capped to AVX2 (issue 12), one command
  pipeline   one whole 512x512 inpainting and one txt2img: per-stage times, peak RSS, totals
  peers      the UNet and the decoders in OpenVINO and ONNX Runtime, when installed (asymvq[peers])
"""


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``python -m asymvq.bench``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE, end="")
        return 0 if args else 2
    cmd, rest = args[0], args[1:]
    if cmd == "ops":
        return ops_main(rest)
    if cmd == "roof":
        return roof_main(rest)
    if cmd == "isa":
        return _isa_main(rest)
    if cmd in MODEL_BENCHES:
        return _model_main(cmd, rest)
    print(f"unknown benchmark {cmd!r}\n{USAGE}", end="", file=sys.stderr)
    return 2
