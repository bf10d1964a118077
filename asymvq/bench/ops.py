"""``python -m asymvq.bench ops`` and ``roof``: every op at the layer shapes SD v1 really uses.

    python -m asymvq.bench ops [--precision fp32,bf16] [--filter TEXT] [--repeat N] [--threads N]
                               [--no-torch] [--no-roof]
    python -m asymvq.bench roof

``ops`` times every op of ``asymvq._core.ops`` against PyTorch in one process with the same
number of threads, and prints both times, the ratio asymvq / torch (below 1 means asymvq is
faster) and the rate achieved (GFLOP/s for convolutions, matmuls and attention; GB/s of
tensor traffic for the memory-bound ops). asymvq's time is the op alone, from a plan built
once and replayed (``ops.timeit``): that is how models run it. torch's time is one eager
call, as the reference implementation runs; for convolutions the faster of NCHW and
channels-last inputs. Each side keeps its best of ``--repeat`` runs, in two alternating
rounds so that noise from other processes hits both alike.

``roof()`` measures the machine's achievable fp32 and bf16 GFLOP/s with a large GEMM
through asymvq's own ops; the model benchmarks report their achieved GFLOP/s against it.

PyTorch is a test-only dependency: only the ``ops`` subcommand imports it, and only when run.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

import asymvq
from asymvq._core import ops

from .harness import parse_precisions

__all__ = ["ROOF_SHAPE", "OpCase", "OpTiming", "time_case", "roof", "ops_main", "roof_main"]

#: The roof GEMM, (rows, in features, out features): [8192, 2048] x [2048, 2048]^T = 69 GFLOP:
#: on an idle 2-core AMX machine it reached 300 fp32 / 1740 bf16 GFLOP/s where [8192, 1024]
#: x [1024, 1024]^T gave 223 / 756, so the smaller one understated the roof. Large enough that
#: threading and edge overheads vanish in both precisions, short enough to
#: be repeated often (the best run is kept: other processes only ever slow it). It runs as
#: ``ops.linear`` (weights packed once into oneDNN's blocked layout, as every model layer
#: does); a plain row-major matmul whose row stride is a multiple of 4 KiB (3072^2 floats,
#: say) loses half its speed to cache-set conflicts and would understate the roof.
ROOF_SHAPE = (8192, 2048, 2048)

Arrays = Tuple[np.ndarray, ...]


@dataclass(frozen=True)
class OpCase:
    """One op at one SD v1 shape.

    ``make`` returns the float32 arrays and the keyword arguments of ``ops.<op>``; ``torch``
    maps (torch module, torch.nn.functional, the same arrays as tensors of the precision's dtype)
    to a zero-argument callable computing the same result eagerly. ``flop`` is the
    multiply-add work (2 per MAC); 0 marks a memory-bound op, rated in GB/s instead.
    """

    label: str
    op: str
    make: Callable[[np.random.Generator], Tuple[Arrays, Dict[str, Any]]]
    torch: Callable[[Any, Any, Sequence[Any]], Callable[[], Any]]
    flop: float = 0.0
    conv: bool = False
    keep_f32: Tuple[int, ...] = ()  # arrays torch keeps in float32 (timesteps)
    kw_arrays: Tuple[str, ...] = ()  # the last arrays go to ops.<op> by these keywords


def _randn(rng: np.random.Generator, *shape: int, scale: float = 1.0) -> np.ndarray:
    return (rng.standard_normal(shape, dtype=np.float32) * np.float32(scale)).astype(np.float32)


def _conv(
    label: str,
    n: int,
    ci: int,
    co: int,
    h: int,
    k: int,
    stride: int = 1,
    pad: Tuple[int, int, int, int] = (1, 1, 1, 1),
    act: Optional[str] = None,
    residual: bool = False,
    algorithm: Optional[str] = None,
) -> OpCase:
    """A square conv with bias; ``pad`` is (top, left, bottom, right); ``algorithm`` forces
    ``ops.conv2d``'s (default: its own choice, as the models run)."""
    oh = (h + pad[0] + pad[2] - k) // stride + 1

    def make(rng: np.random.Generator) -> Tuple[Arrays, Dict[str, Any]]:
        arrays: List[np.ndarray] = [
            _randn(rng, n, ci, h, h),
            _randn(rng, co, ci, k, k, scale=(ci * k * k) ** -0.5),
            _randn(rng, co, scale=0.1),
        ]
        kw: Dict[str, Any] = {"stride": stride, "padding": pad, "activation": act}
        if algorithm is not None:
            kw["algorithm"] = algorithm
        if residual:
            arrays.append(_randn(rng, n, co, oh, oh))
        return tuple(arrays), kw

    def torch_fn(torch: Any, F: Any, t: Sequence[Any]) -> Callable[[], Any]:
        x, w, b = t[0], t[1], t[2]
        symmetric = pad[0] == pad[2] and pad[1] == pad[3]

        def run() -> Any:
            xi = x if symmetric else F.pad(x, (pad[1], pad[3], pad[0], pad[2]))
            y = F.conv2d(xi, w, b, stride=stride, padding=(pad[0], pad[1]) if symmetric else 0)
            if act == "silu":
                y = F.silu(y)
            elif act == "relu":
                y = F.relu(y)
            return y + t[3] if residual else y

        return run

    flop = 2.0 * n * co * ci * k * k * oh * oh
    return OpCase(label, "conv2d", make, torch_fn, flop, conv=True, kw_arrays=("residual",) if residual else ())


def _linear(
    label: str,
    shape: Tuple[int, ...],
    k: int,
    n_out: int,
    act: Optional[str] = None,
    mul: bool = False,
    add: bool = False,
) -> OpCase:
    rows = int(np.prod(shape))
    out_shape = shape + (n_out,)

    def make(rng: np.random.Generator) -> Tuple[Arrays, Dict[str, Any]]:
        arrays = [_randn(rng, *shape, k), _randn(rng, n_out, k, scale=k**-0.5), _randn(rng, n_out, scale=0.1)]
        if mul:
            arrays.append(_randn(rng, *out_shape))
        if add:
            arrays.append(_randn(rng, *out_shape))
        kw: Dict[str, Any] = {"activation": act}
        return tuple(arrays), kw

    def torch_fn(torch: Any, F: Any, t: Sequence[Any]) -> Callable[[], Any]:
        acts = {None: lambda y: y, "gelu": F.gelu, "quick_gelu": lambda y: y * torch.sigmoid(1.702 * y)}

        def run() -> Any:
            y = acts[act](F.linear(t[0], t[1], t[2]))
            i = 3
            if mul:
                y = y * t[i]
                i += 1
            if add:
                y = y + t[i]
            return y

        return run

    names = (("mul",) if mul else ()) + (("add",) if add else ())
    return OpCase(label, "linear", make, torch_fn, 2.0 * rows * k * n_out, kw_arrays=names)


def _linear_geglu(label: str, rows: int, k: int, f: int) -> OpCase:
    """``ops.linear_geglu``: value * gelu(gate) from one [2F, K] weight (ff.net.0.proj)."""

    def make(rng: np.random.Generator) -> Tuple[Arrays, Dict[str, Any]]:
        return (_randn(rng, rows, k), _randn(rng, 2 * f, k, scale=k**-0.5), _randn(rng, 2 * f, scale=0.1)), {}

    def torch_fn(torch: Any, F: Any, t: Sequence[Any]) -> Callable[[], Any]:
        def run() -> Any:
            a, g = F.linear(t[0], t[1], t[2]).chunk(2, dim=-1)
            return a * F.gelu(g)

        return run

    return OpCase(label, "linear_geglu", make, torch_fn, 2.0 * rows * k * 2 * f)


def _attention(label: str, b: int, n: int, m: int, c: int, heads: int, causal: bool = False) -> OpCase:
    def make(rng: np.random.Generator) -> Tuple[Arrays, Dict[str, Any]]:
        return (_randn(rng, b, n, c), _randn(rng, b, m, c), _randn(rng, b, m, c)), {"heads": heads, "causal": causal}

    def torch_fn(torch: Any, F: Any, t: Sequence[Any]) -> Callable[[], Any]:
        d = c // heads

        def run() -> Any:
            q, k, v = (a.view(b, -1, heads, d).transpose(1, 2) for a in t)
            o = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
            return o.transpose(1, 2).reshape(b, n, c)

        return run

    return OpCase(label, "attention", make, torch_fn, 4.0 * b * n * m * c)


def _group_norm(label: str, shape: Tuple[int, ...], eps: float, silu: bool) -> OpCase:
    def make(rng: np.random.Generator) -> Tuple[Arrays, Dict[str, Any]]:
        c = shape[1]
        return (_randn(rng, *shape), 1 + _randn(rng, c, scale=0.1), _randn(rng, c, scale=0.1)), {
            "groups": 32,
            "eps": eps,
            "silu": silu,
        }

    def torch_fn(torch: Any, F: Any, t: Sequence[Any]) -> Callable[[], Any]:
        def run() -> Any:
            y = F.group_norm(t[0], 32, t[1], t[2], eps)
            return F.silu(y) if silu else y

        return run

    return OpCase(label, "group_norm", make, torch_fn)


def _unary(
    label: str, op: str, shape: Tuple[int, ...], torch_of: Callable[[Any, Any], Callable[[Any], Any]], **kw: Any
) -> OpCase:
    def make(rng: np.random.Generator) -> Tuple[Arrays, Dict[str, Any]]:
        return (_randn(rng, *shape),), dict(kw)

    def torch_fn(torch: Any, F: Any, t: Sequence[Any]) -> Callable[[], Any]:
        f = torch_of(torch, F)
        return lambda: f(t[0])

    return OpCase(label, op, make, torch_fn)


def _binary(
    label: str,
    op: str,
    a: Tuple[int, ...],
    b: Tuple[int, ...],
    torch_of: Callable[[Any, Any], Callable[[Any, Any], Any]],
) -> OpCase:
    def make(rng: np.random.Generator) -> Tuple[Arrays, Dict[str, Any]]:
        return (_randn(rng, *a), _randn(rng, *b)), {}

    def torch_fn(torch: Any, F: Any, t: Sequence[Any]) -> Callable[[], Any]:
        f = torch_of(torch, F)
        return lambda: f(t[0], t[1])

    return OpCase(label, op, make, torch_fn)


def _cases() -> List[OpCase]:
    """The op list: UNet at a 64x64 latent, batch 2 (one guided step); CLIP text encoder on
    2 x 77 tokens; VAE and asymmetric decoder at 512 x 512, batch 1."""

    def layer_norm(label: str, shape: Tuple[int, ...]) -> OpCase:
        def make(rng: np.random.Generator) -> Tuple[Arrays, Dict[str, Any]]:
            c = shape[-1]
            return (_randn(rng, *shape), 1 + _randn(rng, c, scale=0.1), _randn(rng, c, scale=0.1)), {"eps": 1e-5}

        return OpCase(
            label, "layer_norm", make, lambda torch, F, t: lambda: F.layer_norm(t[0], (shape[-1],), t[1], t[2], 1e-5)
        )

    def blend(label: str, shape: Tuple[int, ...]) -> OpCase:
        def make(rng: np.random.Generator) -> Tuple[Arrays, Dict[str, Any]]:
            mask = (rng.random((shape[0], 1) + shape[2:]) > 0.5).astype(np.float32)
            return (_randn(rng, *shape), _randn(rng, *shape), mask), {}

        return OpCase(label, "blend", make, lambda torch, F, t: lambda: t[0] * t[2] + t[1] * (1 - t[2]))

    def resize(label: str, shape: Tuple[int, ...], size: Tuple[int, int]) -> OpCase:
        def make(rng: np.random.Generator) -> Tuple[Arrays, Dict[str, Any]]:
            return (_randn(rng, *shape),), {"size": size}

        return OpCase(
            label, "resize_nearest", make, lambda torch, F, t: lambda: F.interpolate(t[0], size=size, mode="nearest")
        )

    def matmul(label: str, b: int, m: int, k: int, n: int) -> OpCase:
        def make(rng: np.random.Generator) -> Tuple[Arrays, Dict[str, Any]]:
            return (_randn(rng, b, m, k), _randn(rng, b, k, n)), {}

        return OpCase(label, "matmul", make, lambda torch, F, t: lambda: torch.bmm(t[0], t[1]), 2.0 * b * m * n * k)

    def temb(label: str, b: int, dim: int) -> OpCase:
        def make(rng: np.random.Generator) -> Tuple[Arrays, Dict[str, Any]]:
            return (rng.integers(0, 1000, b).astype(np.float32),), {"dim": dim}

        def torch_fn(torch: Any, F: Any, t: Sequence[Any]) -> Callable[[], Any]:
            import math

            half = dim // 2

            def run() -> Any:
                freqs = torch.exp(-math.log(10000) * torch.arange(0, half, dtype=torch.float32) / half)
                args = t[0][:, None].float() * freqs[None]
                return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)

            return run

        return OpCase(label, "timestep_embedding", make, torch_fn, keep_f32=(0,))

    silu = lambda torch, F: F.silu  # noqa: E731
    return [
        # UNet, 64x64 latent, batch 2
        _conv("unet conv_in 3x3 9->320 @64 b2", 2, 9, 320, 64, 3),
        _conv("unet conv 3x3 320->320 @64 b2", 2, 320, 320, 64, 3),
        _conv("unet conv 3x3 320->320 @64 b2 +res", 2, 320, 320, 64, 3, residual=True),
        _conv("unet down 3x3 s2 320 @64->32 b2", 2, 320, 320, 64, 3, stride=2),
        _conv("unet conv 3x3 640->640 @32 b2", 2, 640, 640, 32, 3),
        _conv("unet conv 3x3 1280->1280 @16 b2", 2, 1280, 1280, 16, 3),
        _conv("unet conv 3x3 1280->1280 @8 b2", 2, 1280, 1280, 8, 3),
        # the same convs forced direct: what Winograd (taken by "auto" for these) saves
        _conv("direct: unet conv 3x3 320->320 @64 b2", 2, 320, 320, 64, 3, algorithm="direct"),
        _conv("direct: unet conv 3x3 1280->1280 @16 b2", 2, 1280, 1280, 16, 3, algorithm="direct"),
        _conv("unet skip 1x1 960->640 @32 b2", 2, 960, 640, 32, 1, pad=(0, 0, 0, 0)),
        _linear("unet q/k/v 320->320 x8192", (2, 4096), 320, 320),
        _linear("unet geglu 320->1280 gelu*mul x8192", (2, 4096), 320, 1280, act="gelu", mul=True),
        _linear("unet geglu value 320->1280 x8192", (2, 4096), 320, 1280),
        _linear_geglu("unet geglu fused 320->2x1280 x8192", 8192, 320, 1280),
        _linear_geglu("unet geglu fused 1280->2x5120 x512", 512, 1280, 5120),
        _linear("unet ff out 1280->320 +add x8192", (2, 4096), 1280, 320, add=True),
        _linear("unet k/v 768->320 x154", (2, 77), 768, 320),
        _attention("unet self-attn 4096 tok 8x40 b2", 2, 4096, 4096, 320, 8),
        _attention("unet cross-attn 4096x77 8x40 b2", 2, 4096, 77, 320, 8),
        _attention("unet self-attn 1024 tok 8x80 b2", 2, 1024, 1024, 640, 8),
        matmul("matmul [16,1024,80]x[16,80,1024]", 16, 1024, 80, 1024),
        _unary("softmax [16,4096,77]", "softmax", (16, 4096, 77), lambda torch, F: lambda x: torch.softmax(x, -1)),
        _group_norm("unet group_norm+silu 2x320x64x64", (2, 320, 64, 64), 1e-5, True),
        _group_norm("unet group_norm+silu 2x1280x8x8", (2, 1280, 8, 8), 1e-5, True),
        layer_norm("unet layer_norm [2,4096,320]", (2, 4096, 320)),
        _unary(
            "unet geglu [2,4096,2560]",
            "geglu",
            (2, 4096, 2560),
            lambda torch, F: lambda x: (lambda a, g: a * F.gelu(g))(*x.chunk(2, dim=-1)),
        ),
        _unary("gelu [2,4096,1280]", "activation", (2, 4096, 1280), lambda torch, F: F.gelu, kind="gelu"),
        _unary("silu [2,320,64,64]", "activation", (2, 320, 64, 64), silu, kind="silu"),
        _binary(
            "unet add temb 2x320x64x64 + [2,320,1,1]",
            "add",
            (2, 320, 64, 64),
            (2, 320, 1, 1),
            lambda torch, F: lambda a, b: a + b,
        ),
        _binary(
            "unet skip concat 320+320 @64 b2",
            "concat",
            (2, 320, 64, 64),
            (2, 320, 64, 64),
            lambda torch, F: lambda a, b: torch.cat([a, b], dim=1),
        ),
        _unary(
            "unet upsample2x 2x1280x16x16",
            "upsample2x",
            (2, 1280, 16, 16),
            lambda torch, F: lambda x: F.interpolate(x, scale_factor=2.0, mode="nearest"),
        ),
        temb("unet timestep_embedding 2x320", 2, 320),
        # CLIP text encoder, 2 x 77 tokens
        _linear("text mlp 768->3072 quick_gelu x154", (2, 77), 768, 3072, act="quick_gelu"),
        _attention("text causal attn 77 tok 12x64 b2", 2, 77, 77, 768, 12, causal=True),
        layer_norm("text layer_norm [2,77,768]", (2, 77, 768)),
        # VAE encoder / decoder, asymmetric decoder, 512 x 512
        _conv("vae conv 3x3 512->512 @64", 1, 512, 512, 64, 3),
        _conv("vae conv 3x3 256->256 @256", 1, 256, 256, 256, 3),
        _conv("vae conv 3x3 128->128 @512", 1, 128, 128, 512, 3),
        _conv("direct: vae conv 3x3 512->512 @64", 1, 512, 512, 64, 3, algorithm="direct"),
        _conv("direct: vae conv 3x3 256->256 @256", 1, 256, 256, 256, 3, algorithm="direct"),
        _conv("vae down 3x3 s2 pad(0,0,1,1) 128 @512->256", 1, 128, 128, 512, 3, stride=2, pad=(0, 0, 1, 1)),
        _conv("cond enc 4x4 s2 p1 512->512 @128->64 relu", 1, 512, 512, 128, 4, stride=2, act="relu"),
        _attention("vae mid attn 4096 tok 1x512", 1, 4096, 4096, 512, 1),
        _group_norm("vae group_norm+silu 1x512x64x64", (1, 512, 64, 64), 1e-6, True),
        _group_norm("vae group_norm+silu 1x128x512x512", (1, 128, 512, 512), 1e-6, True),
        _unary(
            "vae upsample2x 1x512x128x128",
            "upsample2x",
            (1, 512, 128, 128),
            lambda torch, F: lambda x: F.interpolate(x, scale_factor=2.0, mode="nearest"),
        ),
        blend("asym merge blend 1x128x512x512", (1, 128, 512, 512)),
        resize("mask resize 512->64", (1, 1, 512, 512), (64, 64)),
    ]


# ---- timing -------------------------------------------------------------------------------


def _time_torch(fn: Callable[[], Any], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _bytes(arrays: Arrays, out_elems: int, precision: str) -> float:
    item = 4 if precision == "fp32" else 2
    return float(sum(a.size for a in arrays) + out_elems) * item


@dataclass
class OpTiming:
    """One row of the ``ops`` benchmark."""

    label: str
    precision: str
    asymvq_s: float
    torch_s: Optional[float]
    flop: float
    bytes: float

    @property
    def ratio(self) -> Optional[float]:
        return None if self.torch_s is None else self.asymvq_s / self.torch_s

    def rate(self) -> str:
        if self.flop:
            return f"{self.flop / self.asymvq_s / 1e9:8.1f} GFLOP/s"
        return f"{self.bytes / self.asymvq_s / 1e9:8.1f} GB/s   "


def time_case(case: OpCase, precision: str, repeat: int, torch: Any = None, rounds: int = 2, seed: int = 0) -> OpTiming:
    """Times ``case`` in ``precision`` through asymvq (and torch, when given)."""
    rng = np.random.default_rng(seed)
    arrays, kw = case.make(rng)
    kw = dict(kw, precision=precision)
    npos = len(arrays) - len(case.kw_arrays)
    pos = arrays[:npos]
    kw.update(zip(case.kw_arrays, arrays[npos:]))
    out = getattr(ops, case.op)(*pos, **kw)  # also checks the call is valid
    t_ours, t_torch = float("inf"), float("inf")
    torch_fns: List[Callable[[], Any]] = []
    if torch is not None:
        import torch.nn.functional as F

        dtype = torch.float32 if precision == "fp32" else torch.bfloat16
        tensors = [
            torch.from_numpy(a) if i in case.keep_f32 else torch.from_numpy(a).to(dtype) for i, a in enumerate(arrays)
        ]
        torch_fns.append(case.torch(torch, F, tensors))
        if case.conv:
            cl = [t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t for t in tensors]
            torch_fns.append(case.torch(torch, F, cl))
        with torch.inference_mode():
            for f in torch_fns:
                f()  # warm-up: torch creates its primitives on the first call
    for _ in range(rounds):
        t_ours = min(t_ours, ops.timeit(case.op, *pos, repeat=repeat, **kw))
        if torch is not None:
            with torch.inference_mode():
                for f in torch_fns:
                    t_torch = min(t_torch, _time_torch(f, repeat))
    return OpTiming(
        case.label,
        precision,
        t_ours,
        t_torch if torch is not None else None,
        case.flop,
        _bytes(arrays, out.size, precision),
    )


@functools.lru_cache(maxsize=None)
def _roof(threads: int, shape: Tuple[int, int, int], repeat: int) -> Tuple[float, float]:
    rows, k, n = shape
    rng = np.random.default_rng(0)
    x = _randn(rng, rows, k)
    w = _randn(rng, n, k, scale=k**-0.5)
    flop = 2.0 * rows * k * n
    fp32 = flop / ops.timeit("linear", x, w, repeat=repeat, precision="fp32") / 1e9
    if asymvq.info()["kernel_isa"] != "avx512":  # no bf16 below AVX-512 (by the CPU or the ISA cap)
        return fp32, float("nan")
    bf16 = flop / ops.timeit("linear", x, w, repeat=4 * repeat, precision="bf16") / 1e9
    return fp32, bf16


def roof(shape: Tuple[int, int, int] = ROOF_SHAPE, repeat: int = 10) -> Dict[str, float]:
    """The machine's achievable GFLOP/s: ``{"fp32": ..., "bf16": ...}`` (bf16 NaN below AVX-512).

    Measured once per thread count and shape (then cached) as the best of ``repeat`` runs
    (4x as many in bf16) of a large GEMM through ``asymvq._core.ops.linear`` on oneDNN:
    ``[rows, k] x [n, k]^T`` with ``shape = (rows, k, n)``, in fp32 and in bf16 (bf16 operands,
    fp32 accumulation: AMX or AVX512-BF16 where the CPU has them). Takes a few seconds.
    """
    fp32, bf16 = _roof(asymvq.get_num_threads(), tuple(int(v) for v in shape), int(repeat))
    return {"fp32": fp32, "bf16": bf16}


# ---- command line ------------------------------------------------------------------------


def _roof_label() -> str:
    rows, k, n = ROOF_SHAPE
    return f"linear [{rows}, {k}] x [{n}, {k}]^T"


def _fmt_ms(s: Optional[float]) -> str:
    return "       -" if s is None else f"{s * 1e3:8.2f}"


def ops_main(argv: Sequence[str]) -> int:
    """Times every op at the SD v1 shapes against torch with the same threads."""
    p = argparse.ArgumentParser(prog="python -m asymvq.bench ops", description=ops_main.__doc__)
    p.add_argument("--precision", default="fp32,bf16", help="comma-separated: fp32, bf16 (default both)")
    p.add_argument("--filter", default="", help="only ops whose label contains this text")
    p.add_argument("--repeat", type=int, default=5, help="runs per measurement (best kept; default 5)")
    p.add_argument("--threads", type=int, default=None, help="threads for asymvq and torch (default: asymvq's)")
    p.add_argument("--no-torch", action="store_true", help="time asymvq only")
    p.add_argument("--no-roof", action="store_true", help="skip the roof measurement at the end")
    args = p.parse_args(list(argv))
    precisions = parse_precisions(p, args.precision)
    if "bf16" in precisions and asymvq.info()["kernel_isa"] != "avx512":
        print(f"bf16 needs AVX-512 (oneDNN runs at {asymvq.info()['isa']} here): timing fp32 only")
        precisions = [s for s in precisions if s != "bf16"]
    if args.threads is not None:
        asymvq.set_num_threads(args.threads)
    threads = asymvq.get_num_threads()
    torch: Any = None
    if not args.no_torch:
        try:
            torch = importlib.import_module("torch")
        except ImportError:
            print(
                "torch is not installed (it is a test extra: pip install 'asymvq[test]'); "
                "use --no-torch to time asymvq alone",
                file=sys.stderr,
            )
            return 2
        torch.set_num_threads(threads)
    cases = [c for c in _cases() if args.filter in c.label]
    if not cases:
        print(f"no op matches --filter {args.filter!r}", file=sys.stderr)
        return 2
    info = asymvq.info()
    print(
        f"asymvq {info['version']}, oneDNN {info['onednn_version']}, ISA {info['isa']}, {threads} threads"
        + (f", torch {torch.__version__}" if torch is not None else "")
    )
    head = f"{'op':46s} {'prec':4s} {'asymvq ms':>9s} {'torch ms':>9s} {'ratio':>6s}  rate (asymvq)"
    print(head)
    print("-" * len(head))
    rows: List[OpTiming] = []
    for case in cases:
        for prec in precisions:
            r = time_case(case, prec, args.repeat, torch)
            rows.append(r)
            ratio = "     -" if r.ratio is None else f"{r.ratio:6.2f}"
            print(
                f"{r.label:46s} {prec:4s} {_fmt_ms(r.asymvq_s):>9s} {_fmt_ms(r.torch_s):>9s} {ratio}  {r.rate()}",
                flush=True,
            )
    if not args.no_roof:
        rf = roof()
        print(f"\nroof ({_roof_label()}): fp32 {rf['fp32']:.0f} GFLOP/s, bf16 {rf['bf16']:.0f} GFLOP/s")
    _summary(rows)
    return 0


def _summary(rows: List[OpTiming]) -> None:
    """The figures issue 2 asks for, when their rows were measured."""
    by = {(r.label, r.precision): r for r in rows}
    conv = "unet conv 3x3 320->320 @64 b2"
    attn = "unet self-attn 4096 tok 8x40 b2"
    lines = []
    r = by.get((conv, "fp32"))
    if r and r.ratio is not None:
        lines.append(f"3x3 conv 320->320 @64x64 fp32: {r.ratio:.2f}x torch's time (target <= 1.0)")
    r = by.get((attn, "fp32"))
    if r and r.ratio is not None:
        lines.append(f"attention 4096 tokens fp32: {r.ratio:.2f}x torch's time (target <= 1.0)")
    f32, b16 = by.get((conv, "fp32")), by.get((conv, "bf16"))
    if f32 and b16:
        lines.append(f"bf16 conv 320->320 @64x64: {f32.asymvq_s / b16.asymvq_s:.2f}x faster than fp32 (target >= 1.6)")
    if lines:
        print("\n".join(["", "targets:"] + ["  " + s for s in lines]))


def roof_main(argv: Sequence[str]) -> int:
    """Prints the achievable fp32 / bf16 GFLOP/s of this machine."""
    p = argparse.ArgumentParser(
        prog="python -m asymvq.bench roof", description="Achievable fp32 / bf16 GFLOP/s of this machine (large GEMM)."
    )
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(list(argv))
    if args.threads is not None:
        asymvq.set_num_threads(args.threads)
    rf = roof()
    print(
        f"{asymvq.get_num_threads()} threads, {_roof_label()}: fp32 {rf['fp32']:.0f} GFLOP/s, "
        f"bf16 {rf['bf16']:.0f} GFLOP/s"
    )
    return 0
