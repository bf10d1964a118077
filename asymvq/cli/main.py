"""``python -m asymvq <command>``: info (self-check), convert, and friends."""

from __future__ import annotations

import sys
from typing import Callable, Sequence


def _info(argv: Sequence[str]) -> int:
    """Prints versions and the CPU ISA, then runs a tiny self-check through oneDNN."""
    import numpy as np

    import asymvq
    from asymvq._core import ops

    inf = asymvq.info()
    print(f"asymvq {inf['version']}")
    bf16 = "native" if inf["bf16_native"] else "emulated" if inf["kernel_isa"] == "avx512" else "unavailable (fp32 only)"
    print(
        f"oneDNN {inf['onednn_version']} ({inf['onednn_hash'][:12]}), ISA {inf['isa']} (CPU {inf['cpu_isa']}), "
        f"asymvq kernels {inf['kernel_isa']}, bf16 {bf16}, "
        f"bf16 attention on {'AMX tiles' if inf['amx_attention'] else 'f32 sgemm'}"
    )
    print(f"threads {inf['num_threads']}")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 8, 16, 16), dtype=np.float32)
    w = rng.standard_normal((8, 8, 3, 3), dtype=np.float32)
    got = ops.conv2d(x, w, padding=1)
    # the same convolution by explicit sums, in float64
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    ref = np.zeros((1, 8, 16, 16))
    for i in range(3):
        for j in range(3):
            ref += np.einsum("oc,nchw->nohw", w[:, :, i, j], xp[:, :, i : i + 16, j : j + 16])
    err = float(np.abs(got - ref).max() / np.abs(ref).max())
    ok = err < 1e-5
    print(f"self-check: 3x3 convolution through oneDNN, relative error {err:.1e} ... {'ok' if ok else 'FAILED'}")
    return 0 if ok else 1


def _convert(argv: Sequence[str]) -> int:
    from asymvq.convert import main

    return int(main(list(argv)) or 0)


def _demo(argv: Sequence[str]) -> int:
    from asymvq.demo import main

    return int(main(list(argv)) or 0)


def _bench(argv: Sequence[str]) -> int:
    from asymvq.bench import main

    return int(main(list(argv)) or 0)


def _compare(argv: Sequence[str]) -> int:
    from asymvq.compare import main

    return int(main(list(argv)) or 0)


def _batch(argv: Sequence[str]) -> int:
    from asymvq.batch import main

    return int(main(list(argv)) or 0)


COMMANDS: dict[str, Callable[[Sequence[str]], int]] = {
    "info": _info,
    "demo": _demo,
    "convert": _convert,
    "bench": _bench,
    "compare": _compare,
    "batch": _batch,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print("usage: python -m asymvq {" + ",".join(COMMANDS) + "} [options]")
        print("  info      versions, CPU ISA, threads, and a oneDNN self-check")
        print("  demo      the inpainting pipeline on tiny random-weight models (seconds)")
        print("  convert   checkpoint(s) + config -> one .safetensors file (see --help)")
        print("  bench     benchmarks against PyTorch: ops, vae, text, unet (see --help)")
        print("  compare   one diffusion per image, decoded by several decoders; strips and metrics")
        print("  batch     inpaint_st / compare over a folder on a Dask cluster, resumable")
        return 0 if args else 2
    cmd = COMMANDS.get(args[0])
    if cmd is None:
        print(f"error: unknown command {args[0]!r}; choose from {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    return cmd(args[1:])


if __name__ == "__main__":
    sys.exit(main())
