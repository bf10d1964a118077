"""Random-weight checkpoints with exactly the real key names and shapes (tests and benchmarks only).

Five checkpoints, each full size (the shipped configs) or tiny (``configs/tiny``):

* ``sd15-inpaint``  -- like ``sd-v1-5-inpainting.ckpt``: CLIP text model (with the int64
  ``embeddings.position_ids`` buffer), 9-channel UNet, first stage (KL encoder, ``quant_conv``, SD's
  vanilla VAE decoder, ``post_quant_conv``), the twelve float32 DDPM schedule buffers (SPEC §5.1) and,
  with ``ema=True``, ``model_ema.*`` copies of the UNet (``model_ema.decay``, ``model_ema.num_updates``,
  ``model_ema.diffusion_model<key without dots>``);
* ``sd15-txt2img``  -- like ``v1-5-pruned-emaonly.ckpt``: the same with a 4-channel UNet;
* ``decoder-base``, ``decoder-large``, ``decoder-large2`` -- like the asymmetric-VQGAN Lightning
  checkpoints: ``state_dict`` with ``encoder.*``, ``quant_conv``, ``post_quant_conv``, ``decoder.*``
  (condition encoder and the dead ``decoder.up_layers.*`` included) and some ``loss.*`` junk, next to
  ``epoch``, ``global_step``, ``optimizer_states``, ``lr_schedulers``, ``callbacks`` (holding a
  ``pathlib`` path) and ``hyper_parameters`` (an ``argparse.Namespace``).  One file serves both the
  conditional and the ``_wocondition`` config of its size, as the real ones do.

Formats: ``.ckpt`` (``torch.save`` of the Lightning-style dict) or ``.safetensors`` (the flat state dict,
written tensor by tensor).  Weights are deterministic per (seed, tensor name): weights ~ N(0, 1/fan_in),
norm scales ~ U(0.9, 1.1), biases ~ N(0, 0.01^2), so activations stay finite through the deep nets.

Use from tests through the session fixture ``checkpoints`` (each file is generated once per session)::

    def test_something(checkpoints):
        path = checkpoints.get("decoder-base", tiny=True, fmt="ckpt")

or from the command line (benchmarks)::

    python -m tests.fixtures --out /tmp/ckpts --which sd15-inpaint,decoder-base --size full
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import pathlib
import struct
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest
import torch

from asymvq import config, tables
from asymvq.config import AutoencoderSpec, DiffusionSpec

__all__ = [
    "NAMES",
    "CONFIGS",
    "fixture_config",
    "fixture_spec",
    "state_dict_items",
    "schedule_buffers",
    "write_checkpoint",
    "CheckpointCache",
    "checkpoints",
]

#: Fixture name -> config file name (shipped original, or its tiny stand-in).
CONFIGS = {
    "sd15-inpaint": "v1-inpainting-inference.yaml",
    "sd15-txt2img": "v1-t2i-inference.yaml",
    "decoder-base": "autoencoder_kl_32x32x4.yaml",
    "decoder-large": "autoencoder_kl_32x32x4_large.yaml",
    "decoder-large2": "autoencoder_kl_32x32x4_large2.yaml",
}
NAMES = tuple(CONFIGS)

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_ST_DTYPES = {
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
}


def _check_name(which: str) -> None:
    if which not in CONFIGS:
        raise ValueError(f"unknown fixture {which!r}; expected one of {', '.join(NAMES)}")


def fixture_config(which: str, tiny: bool = True) -> Path:
    """The config file the fixture ``which`` is built from."""
    _check_name(which)
    return (config.packaged_tiny_config if tiny else config.packaged_config)(CONFIGS[which])


def fixture_spec(which: str, tiny: bool = True) -> config.Spec:
    """The parsed config of the fixture ``which``."""
    return config.load(fixture_config(which, tiny))


# --------------------------------------------------------------------------------------------------
# Tensor generation


def _generator(seed: int, name: str) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 0x9E3779B1 + zlib.crc32(name.encode())) % (1 << 62))


def random_tensor(name: str, shape: tuple[int, ...], seed: int = 0, dtype: str = "float32") -> torch.Tensor:
    """A numerically sane random weight for ``name`` (the same for a given seed and name)."""
    g = _generator(seed, name)
    t = torch.empty(shape, dtype=torch.float32)
    if name.endswith(".bias"):
        t.normal_(0.0, 0.01, generator=g)
    elif len(shape) <= 1:  # GroupNorm / LayerNorm scales (the only 1-D weights) and scalars
        t.uniform_(0.9, 1.1, generator=g)
    else:
        t.normal_(0.0, 1.0 / math.sqrt(math.prod(shape[1:])), generator=g)
    return t if dtype == "float32" else t.to(_DTYPES[dtype])


def schedule_buffers(spec: DiffusionSpec) -> dict[str, torch.Tensor]:
    """The DDPM buffers SD checkpoints store (SPEC §5.1): computed in float64, stored as float32."""
    betas = torch.linspace(spec.linear_start**0.5, spec.linear_end**0.5, spec.timesteps, dtype=torch.float64) ** 2
    alphas = 1.0 - betas
    ac = torch.cumprod(alphas, dim=0)
    ac_prev = torch.cat([torch.ones(1, dtype=torch.float64), ac[:-1]])
    posterior_variance = betas * (1.0 - ac_prev) / (1.0 - ac)
    values = {
        "betas": betas,
        "alphas_cumprod": ac,
        "alphas_cumprod_prev": ac_prev,
        "sqrt_alphas_cumprod": ac.sqrt(),
        "sqrt_one_minus_alphas_cumprod": (1.0 - ac).sqrt(),
        "log_one_minus_alphas_cumprod": (1.0 - ac).log(),
        "sqrt_recip_alphas_cumprod": (1.0 / ac).sqrt(),
        "sqrt_recipm1_alphas_cumprod": (1.0 / ac - 1.0).sqrt(),
        "posterior_variance": posterior_variance,
        "posterior_log_variance_clipped": posterior_variance.clamp(min=1e-20).log(),
        "posterior_mean_coef1": betas * ac_prev.sqrt() / (1.0 - ac),
        "posterior_mean_coef2": (1.0 - ac_prev) * alphas.sqrt() / (1.0 - ac),
    }
    assert tuple(values) == tables.schedule_buffer_names()
    return {name: v.to(torch.float32) for name, v in values.items()}


def _ema_name(name: str) -> str:
    # LitEma: "model." stripped, then every dot removed.
    return "model_ema." + name[len("model.") :].replace(".", "")


_LOSS_JUNK = {
    "loss.logvar": (),
    "loss.perceptual_loss.net.slice1.0.weight": (64, 3, 3, 3),
    "loss.perceptual_loss.net.slice1.0.bias": (64,),
    "loss.perceptual_loss.lin0.model.1.weight": (1, 64, 1, 1),
    "loss.discriminator.main.0.weight": (64, 3, 4, 4),
    "loss.discriminator.main.0.bias": (64,),
    "loss.discriminator.main.2.weight": (128, 64, 4, 4),
    "loss.discriminator.main.3.weight": (128,),
    "loss.discriminator.main.3.bias": (128,),
    "loss.discriminator.main.3.running_mean": (128,),
    "loss.discriminator.main.3.running_var": (128,),
}


def _table(which: str, tiny: bool, ema: bool) -> dict[str, tuple[int, ...]]:
    """Every random tensor of the fixture (buffers excluded), in checkpoint order."""
    spec = fixture_spec(which, tiny)
    if isinstance(spec, DiffusionSpec):
        unet = tables.unet_tensors(spec.unet)
        table = dict(unet)
        table.update(tables.vae_encoder_tensors(spec.first_stage))
        table.update(tables.decoder_tensors(spec.first_stage, prefix="first_stage_model."))
        table.update(tables.text_encoder_tensors(spec.text_encoder))
        if ema:
            table.update({_ema_name(name): shape for name, shape in unet.items()})
        return table
    assert isinstance(spec, AutoencoderSpec) and spec.decoder.conditional
    table = tables.vae_encoder_tensors(spec, prefix="")
    table.update(tables.decoder_tensors(spec))
    table.update(tables.up_layers_tensors(spec))
    table.update(_LOSS_JUNK)
    return table


def state_dict_items(
    which: str, *, tiny: bool = True, seed: int = 0, dtype: str = "float32", ema: bool = False
) -> Iterator[tuple[str, torch.Tensor]]:
    """The fixture's state dict, one (name, tensor) at a time, generated lazily."""
    _check_name(which)
    if dtype not in _DTYPES:
        raise ValueError(f"dtype {dtype!r}: expected one of {', '.join(_DTYPES)}")
    if ema and not which.startswith("sd15"):
        raise ValueError("ema=True applies to the SD checkpoints only")
    spec = fixture_spec(which, tiny)
    if isinstance(spec, DiffusionSpec):
        yield from schedule_buffers(spec).items()
    position_ids = tables.TEXT_PREFIX + "embeddings.position_embedding.weight"
    for name, shape in _table(which, tiny, ema).items():
        yield name, random_tensor(name, shape, seed, dtype)
        if name == position_ids:
            yield tables.TEXT_PREFIX + "embeddings.position_ids", torch.arange(shape[0], dtype=torch.int64)[None]
    if ema:
        yield "model_ema.decay", torch.tensor(0.9999, dtype=torch.float32)
        yield "model_ema.num_updates", torch.tensor(440000, dtype=torch.int32)


# --------------------------------------------------------------------------------------------------
# Writers


def _lightning_extras(state_dict: dict[str, torch.Tensor]) -> dict[str, object]:
    """Everything a PyTorch Lightning checkpoint holds besides the state dict (never needed)."""
    names = list(state_dict)[:2]
    return {
        "epoch": 7,
        "global_step": 123456,
        "pytorch-lightning_version": "1.4.2",
        "callbacks": {
            "ModelCheckpoint": {
                "monitor": None,
                "best_model_score": None,
                "dirpath": pathlib.PurePosixPath("/mnt/output/checkpoints"),
            }
        },
        "optimizer_states": [
            {
                "state": {i: {"step": 10, "exp_avg": torch.zeros(4), "exp_avg_sq": torch.ones(4)} for i in range(2)},
                "param_groups": [{"lr": 4.5e-6, "betas": (0.5, 0.9), "eps": 1e-8, "params": [0, 1]}],
            }
        ],
        "lr_schedulers": [{"last_epoch": 7, "_step_count": 8}],
        "hyper_parameters": argparse.Namespace(embed_dim=4, ckpt_path=None, parameter_names=names),
    }


def _write_ckpt(path: Path, items: Iterator[tuple[str, torch.Tensor]], lightning: bool) -> None:
    state_dict = collections.OrderedDict(items)
    obj: dict[str, object] = {"state_dict": state_dict}
    if lightning:
        obj.update(_lightning_extras(state_dict))
    else:
        obj["global_step"] = 440000
    torch.save(obj, path)


def _write_safetensors(path: Path, which: str, tiny: bool, seed: int, dtype: str, ema: bool) -> None:
    """Stream a .safetensors file: the header from the shapes first, then one tensor at a time."""
    header_entries: dict[str, object] = {}
    offset = 0
    for name, (st_dtype, shape, nbytes) in _layout(which, tiny, dtype, ema):
        header_entries[name] = {"dtype": st_dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    header_entries["__metadata__"] = {"format": "pt", "asymvq.fixture": which}
    header = json.dumps(header_entries, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header)))
        f.write(header)
        names = iter(header_entries)
        for name, t in state_dict_items(which, tiny=tiny, seed=seed, dtype=dtype, ema=ema):
            assert name == next(names)
            f.write(memoryview(t.contiguous().reshape(-1).view(torch.uint8).numpy()))


def _layout(which: str, tiny: bool, dtype: str, ema: bool) -> Iterator[tuple[str, tuple[str, tuple[int, ...], int]]]:
    """(name, (safetensors dtype, shape, nbytes)) of every tensor, in order, without generating data."""
    spec = fixture_spec(which, tiny)
    if isinstance(spec, DiffusionSpec):
        for name in tables.schedule_buffer_names():
            yield name, ("F32", (spec.timesteps,), 4 * spec.timesteps)
    weight = _DTYPES[dtype]
    size = torch.empty((), dtype=weight).element_size()
    position = tables.TEXT_PREFIX + "embeddings.position_embedding.weight"
    for name, shape in _table(which, tiny, ema).items():
        yield name, (_ST_DTYPES[weight], shape, size * math.prod(shape))
        if name == position:
            yield tables.TEXT_PREFIX + "embeddings.position_ids", ("I64", (1, shape[0]), 8 * shape[0])
    if ema:
        yield "model_ema.decay", ("F32", (), 4)
        yield "model_ema.num_updates", ("I32", (), 4)


def write_checkpoint(
    path: str | os.PathLike[str],
    which: str,
    *,
    tiny: bool = True,
    seed: int = 0,
    dtype: str = "float32",
    ema: bool = False,
) -> Path:
    """Write the fixture ``which`` to ``path``; the suffix (``.ckpt`` or ``.safetensors``) picks the format.

    The file is written under a temporary name and renamed when complete.
    """
    path = Path(path)
    if path.suffix not in (".ckpt", ".safetensors"):
        raise ValueError(f"{path}: the suffix must be .ckpt or .safetensors")
    tmp = path.with_name(path.name + ".partial")
    try:
        if path.suffix == ".ckpt":
            items = state_dict_items(which, tiny=tiny, seed=seed, dtype=dtype, ema=ema)
            _write_ckpt(tmp, items, lightning=which.startswith("decoder"))
        else:
            _write_safetensors(tmp, which, tiny, seed, dtype, ema)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


# --------------------------------------------------------------------------------------------------
# pytest integration


@dataclass
class CheckpointCache:
    """Generates each requested fixture file once, under ``root``."""

    root: Path

    def get(
        self,
        which: str,
        *,
        tiny: bool = True,
        fmt: str = "ckpt",
        seed: int = 0,
        dtype: str = "float32",
        ema: bool = False,
    ) -> Path:
        """Path of the fixture file, generated on first request."""
        size = "tiny" if tiny else "full"
        path = self.root / f"{which}-{size}-{dtype}-s{seed}{'-ema' if ema else ''}.{fmt}"
        if not path.exists():
            write_checkpoint(path, which, tiny=tiny, seed=seed, dtype=dtype, ema=ema)
        return path


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CheckpointCache]:
    """Session-wide cache of random-weight checkpoints (see :class:`CheckpointCache`).

    Full-size files (GBs each) are deleted at the end of the session; pytest keeps the rest.
    """
    cache = CheckpointCache(tmp_path_factory.mktemp("checkpoints"))
    yield cache
    for path in cache.root.glob("*-full-*"):
        path.unlink()


# --------------------------------------------------------------------------------------------------
# Command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.fixtures", description="Write random-weight checkpoints with the real key names."
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--which", default=",".join(NAMES), help=f"comma-separated subset of {','.join(NAMES)}")
    parser.add_argument("--size", choices=("tiny", "full"), default="tiny")
    parser.add_argument("--format", default="ckpt", help="ckpt, safetensors or ckpt,safetensors")
    parser.add_argument("--dtype", choices=tuple(_DTYPES), default="float32")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ema", action="store_true", help="add model_ema.* copies to the SD checkpoints")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    formats = [f.strip() for f in args.format.split(",") if f.strip()]
    for fmt in formats:
        if fmt not in ("ckpt", "safetensors"):
            parser.error(f"--format: unknown format {fmt!r}")
    for which in (w.strip() for w in args.which.split(",") if w.strip()):
        if which not in CONFIGS:
            parser.error(f"--which: unknown fixture {which!r}; expected some of {', '.join(NAMES)}")
        for fmt in formats:
            path = args.out / f"{which}-{args.size}.{fmt}"
            start = time.perf_counter()
            write_checkpoint(
                path,
                which,
                tiny=args.size == "tiny",
                seed=args.seed,
                dtype=args.dtype,
                ema=args.ema and which.startswith("sd15"),
            )
            print(f"{path}  {path.stat().st_size / 2**20:,.1f} MiB  {time.perf_counter() - start:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
