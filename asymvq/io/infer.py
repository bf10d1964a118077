"""Config inference: which model a single-file checkpoint holds, decided from its tensor names and shapes.

A checkpoint without its YAML (``from_original(config=None, ...)``, ``--config`` omitted on the command
lines and in ``python -m asymvq convert``) is matched against every config asymvq ships (the originals
and their tiny stand-ins, :func:`asymvq.config.packaged_config_names`) with the same check the loaders
use (:func:`asymvq.tables.check`: every required tensor present with its shape, nothing unknown under
the model's prefixes).  Exactly one config must fit:

* SD checkpoints: the UNet's ``input_blocks.0.0.weight`` tells the 9-channel inpainting model from the
  4-channel text-to-image one; widths and depths tell the real model from the tiny one;
* decoder checkpoints: the condition encoder ``decoder.encoder.layers.*`` and the up blocks tell the
  base / 1.5x / 2x asymmetric decoders apart; a checkpoint without a condition encoder holds SD's plain
  VAE decoder ("vanilla"), which runs only without condition (text-to-image).

The conditional and ``_wocondition`` configs of one size describe the same tensors, so the caller says
which it wants (``role``).  No fit, or several, raises :class:`InferenceError` naming what was found.
"""

from __future__ import annotations

import functools
import os
import re
import sys
from dataclasses import dataclass
from typing import Any, Literal, Mapping, Union

import yaml

from . import tables
from . import checkpoint, config
from .config import AutoencoderSpec, ConfigError, DiffusionSpec, Spec

__all__ = ["Role", "Inferred", "InferenceError", "infer_config", "describe_tensors", "VARIANT_LABELS"]

#: What the caller needs: a diffusion model of one kind, a decoder with or without condition, or any.
Role = Literal["inpaint", "txt2img", "diffusion", "decoder", "decoder_wocondition", "any"]

#: Human names of the decoder variants.
VARIANT_LABELS = {"base": "base", "large": "1.5x", "large2": "2x"}

WeightsLike = Union[str, "os.PathLike[str]", Mapping[str, Any]]


class InferenceError(ConfigError):
    """No shipped config, or more than one, describes a checkpoint's tensors."""


@dataclass(frozen=True)
class Inferred:
    """The config chosen for a checkpoint."""

    spec: Spec
    name: str  # shipped config file name, "tiny/" in front for the tiny stand-ins
    summary: str  # what the tensors showed, e.g. "9-channel inpainting UNet"

    def message(self, source: str) -> str:
        """The line printed when a config was inferred."""
        return f"asymvq: no config given for {source}: inferred {self.name} ({self.summary})"


@functools.lru_cache(maxsize=None)
def _shipped() -> tuple[tuple[str, Spec], ...]:
    out: list[tuple[str, Spec]] = []
    for tiny in (False, True):
        for name in config.packaged_config_names(tiny):
            path = (config.packaged_tiny_config if tiny else config.packaged_config)(name)
            out.append((f"tiny/{name}" if tiny else name, config.load(path)))
    # SD's own VAE decoder (a standalone VAE file) as a decoder without condition, where no shipped
    # decoder config already describes it (the real one is autoencoder_kl_woc_32x32x4.yaml's).
    for name, spec in list(out):
        if isinstance(spec, DiffusionSpec):
            vae = _sd_vae(spec.first_stage, name)
            if all(vae != other for _, other in out):
                out.append((f"SD's VAE of {name}", vae))
    return tuple(out)


def _sd_vae(first: AutoencoderSpec, name: str) -> AutoencoderSpec:
    """A diffusion config's first stage as a ``_wocondition`` autoencoder config (with its YAML text)."""
    e = first.encoder
    dd = {"double_z": True, "z_channels": e.z_channels, "resolution": 256, "in_channels": e.in_channels,
          "out_ch": 3, "ch": e.ch, "ch_mult": list(e.ch_mult), "num_res_blocks": e.num_res_blocks,
          "attn_resolutions": [], "dropout": 0.0}
    model = {"target": "ldm.models.autoencoder.AutoencoderKL_wocondition",
             "params": {"embed_dim": first.embed_dim, "ddconfig": dd}}
    spec = config.load_text(yaml.safe_dump({"model": model}, sort_keys=False), source=f"SD's VAE of {name}")
    assert isinstance(spec, AutoencoderSpec)
    return spec


def _wanted(spec: Spec, role: str) -> bool:
    if isinstance(spec, DiffusionSpec):
        return role in ("diffusion", "any") or role == spec.kind
    if role in ("decoder", "any"):
        return spec.decoder.conditional
    return role == "decoder_wocondition" and not spec.decoder.conditional


def _summary(spec: Spec, tensors: Mapping[str, Any]) -> str:
    if isinstance(spec, DiffusionSpec):
        u = spec.unet
        kind = "inpainting" if spec.kind == "inpaint" else "text-to-image"
        return f"{u.in_channels}-channel {kind} UNet, model_channels {u.model_channels}, context {u.context_dim}"
    d = spec.decoder
    if "decoder.encoder.layers.0.weight" not in tensors:
        return f"SD's VAE decoder without condition encoder, widths {list(d.widths)}"
    cond = "with condition" if d.conditional else "used without condition"
    return (
        f"asymmetric {VARIANT_LABELS[d.variant]} decoder {cond}, widths {list(d.widths)}, "
        f"{d.blocks_per_level} ResnetBlocks per level"
    )


def _fits(spec: Spec, tensors: Mapping[str, Any]) -> bool:
    try:
        tables.check(tables.requirements(spec), tensors)
    except tables.WeightsError:
        return False
    return True


def _shape(tensors: Mapping[str, Any], name: str) -> list[int] | None:
    a = tensors.get(name)
    return None if a is None else [int(n) for n in a.shape]


def describe_tensors(tensors: Mapping[str, Any]) -> str:
    """A short account of the model parts a state dict holds (for error messages)."""
    found = []
    unet = tables.UNET_PREFIX
    conv_in = _shape(tensors, unet + "input_blocks.0.0.weight")
    if conv_in is not None:
        context = next((_shape(tensors, n) for n in tensors if n.startswith(unet) and n.endswith("attn2.to_k.weight")),
                       None)
        blocks = {m.group(1) for n in tensors if (m := re.match(re.escape(unet) + r"input_blocks\.(\d+)\.", n))}
        found.append(
            f"a UNet with conv_in {conv_in} ({conv_in[1]} input channels, model_channels {conv_in[0]}), "
            f"{len(blocks)} input blocks, cross-attention context {context[1] if context else 'none'}"
        )
        if context and context[1] == 1024:
            found.append("(context 1024 is SD 2.x's OpenCLIP: asymvq runs SD 1.x only)")
    tok = _shape(tensors, tables.TEXT_PREFIX + "embeddings.token_embedding.weight")
    if tok is not None:
        pattern = re.escape(tables.TEXT_PREFIX) + r"encoder\.layers\.(\d+)\."
        layers = {m.group(1) for n in tensors if (m := re.match(pattern, n))}
        found.append(f"a CLIP text encoder of width {tok[1]} with {len(layers)} layers")
    if any(n.startswith("first_stage_model.encoder.") for n in tensors):
        found.append(f"a VAE encoder with conv_in {_shape(tensors, 'first_stage_model.encoder.conv_in.weight')}")
    dec_in = _shape(tensors, "decoder.conv_in.weight")
    if dec_in is not None:
        per_level: dict[str, set[str]] = {}
        for n in tensors:
            m = re.match(r"decoder\.up\.(\d+)\.block\.(\d+)\.", n)
            if m:
                per_level.setdefault(m.group(1), set()).add(m.group(2))
        block_counts = sorted({len(v) for v in per_level.values()})
        cond = _shape(tensors, "decoder.encoder.layers.0.weight")
        found.append(
            f"a VAE decoder with conv_in {dec_in} (top width {dec_in[0]}), {len(per_level)} up levels of "
            f"{'/'.join(map(str, block_counts)) or '?'} ResnetBlocks, "
            + (f"condition encoder layers.0 {cond}" if cond else "no condition encoder (SD's plain decoder)")
        )
    if any(".down_blocks." in n or n.startswith(("down_blocks.", "conv_in.", "text_model.")) for n in tensors):
        found.append("diffusers / transformers names (load the folder with from_diffusers instead)")
    if any("lora" in n.lower() for n in tensors):
        found.append("LoRA tensors (asymvq runs whole models only: merge the LoRA into its base model first)")
    if not found:
        sample = ", ".join(list(tensors)[:5])
        found.append(f"no part asymvq knows ({len(tensors)} tensors: {sample}{', ...' if len(tensors) > 5 else ''})")
    return "; ".join(found)


def _role_text(role: str) -> str:
    return {
        "inpaint": "an SD 1.x inpainting model (9-channel UNet)",
        "txt2img": "an SD 1.x text-to-image model (4-channel UNet)",
        "diffusion": "an SD 1.x model",
        "decoder": "an asymmetric decoder with condition encoder (base, 1.5x or 2x)",
        "decoder_wocondition": "a VAE decoder (asymmetric base, 1.5x, 2x, or SD's)",
        "any": "an SD 1.x model or a VAE decoder",
    }[role]


def infer_config(weights: WeightsLike, role: Role = "any", source: str | None = None,
                 announce: bool = False) -> Inferred:
    """The shipped config that describes ``weights`` (a checkpoint path or a dict name -> array).

    ``role`` restricts the candidates (see :data:`Role`); ``source`` names the checkpoint in messages.
    ``announce`` prints the choice as one line on stderr.  Raises :class:`InferenceError` when no config
    or several fit, naming what the tensors hold.
    """
    if role not in ("inpaint", "txt2img", "diffusion", "decoder", "decoder_wocondition", "any"):
        raise ValueError(f"role {role!r}: expected inpaint, txt2img, diffusion, decoder, decoder_wocondition or any")
    if isinstance(weights, Mapping):
        tensors = weights
        source = source or "the weights"
    else:
        source = source or os.fspath(weights)
        tensors = checkpoint.load(weights)
    fits = [(name, spec) for name, spec in _shipped() if _wanted(spec, role) and _fits(spec, tensors)]
    if not fits and role in ("decoder", "any"):
        # A decoder without condition encoder: SD's plain VAE decoder, which runs only without condition.
        plain = [(n, s) for n, s in _shipped() if _wanted(s, "decoder_wocondition") and _fits(s, tensors)]
        if plain and role == "decoder":
            raise InferenceError(
                f"{source} holds SD's plain VAE decoder (no condition encoder decoder.encoder.layers.*): "
                "inpainting needs an asymmetric decoder with condition (base, 1.5x or 2x); "
                "this decoder runs only without condition (text-to-image)"
            )
        fits = plain
    if not fits:
        raise InferenceError(
            f"{source}: no shipped config fits its tensors (looked for {_role_text(role)}); found "
            f"{describe_tensors(tensors)}. Pass the config explicitly if it is a model asymvq runs"
        )
    if len(fits) > 1:
        raise InferenceError(
            f"{source}: its tensors fit several configs ({', '.join(n for n, _ in fits)}); "
            "pass the config explicitly"
        )
    name, spec = fits[0]
    inferred = Inferred(spec, name, _summary(spec, tensors))
    if announce:
        print(inferred.message(source), file=sys.stderr)
    return inferred

