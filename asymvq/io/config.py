"""Model configs: the original YAML files parsed into typed, frozen specs.

The original repository builds its models from YAML configs (``model.target`` names a Python class,
``model.params`` its keyword arguments).  This module reads those files with ``yaml.safe_load`` (never
executing anything), maps each ``target`` to a model kind and returns plain frozen dataclasses whose
fields later become C structs:

* ``ldm.models.diffusion.ddpm.LatentInpaintDiffusion`` -> :class:`DiffusionSpec` ``kind="inpaint"``
  (9-channel UNet, ``hybrid`` conditioning);
* ``ldm.models.diffusion.ddpm.LatentDiffusion`` -> :class:`DiffusionSpec` ``kind="txt2img"``
  (4-channel UNet, ``crossattn`` conditioning);
* ``ldm.models.autoencoder{,_large,_large2}.AutoencoderKL`` -> :class:`AutoencoderSpec` whose decoder
  is the conditional asymmetric decoder base / 1.5x (``large``) / 2x (``large2``);
* ``...AutoencoderKL_wocondition`` -> the same decoders without condition (text-to-image).

The decoder class, not ``ddconfig``, decides the width and depth of the large decoders: ``large``
uses ``ch = 192`` and 4 ResnetBlocks per up level, ``large2`` ``ch = 256`` and 6, whatever
``ddconfig`` says; ``base`` uses ``ddconfig.ch`` and ``ddconfig.num_res_blocks + 1`` like SD's decoder.

The first stage of a diffusion config (``first_stage_config``) names the base autoencoder class, but
the SD checkpoints carry SD's vanilla VAE decoder (the base decoder's main path, without condition
encoder) and the pipelines never run it.  :attr:`DiffusionSpec.first_stage` therefore describes the
encoder that *is* used and a non-conditional base decoder.

Extensions (only for small test models; the original files contain none of them)
--------------------------------------------------------------------------------
``model.params.asymvq_decoder`` in an autoencoder config overrides the decoder dimensions that the
class would otherwise fix::

    asymvq_decoder:
      ch: 32                       # width of up level 0 (level widths = ch * ddconfig.ch_mult)
      blocks_per_level: 2          # ResnetBlocks per up level (the original: num_res_blocks + 1)
      cond_channels: [32, 64, 64]  # optional; must equal (W0, W1, W2), the condition-encoder widths

``cond_stage_config.params.asymvq_text_model`` in a diffusion config replaces CLIP ViT-L/14's text
tower (which ``FrozenCLIPEmbedder`` without params means) by a smaller one of the same architecture::

    asymvq_text_model: {vocab_size: 49408, width: 64, layers: 2, heads: 4, mlp: 128, max_positions: 77}

Both blocks accept exactly the keys shown (``asymvq_text_model`` also ``eps``); unknown keys are errors.
``configs/tiny/`` uses them.

Every problem raises :class:`ConfigError` naming the file and the key path.  Values quoted in its
message are cut to a short excerpt, and a file larger than :data:`MAX_CONFIG_BYTES` or whose aliases
expand to more than :data:`MAX_CONFIG_NODES` nodes is refused before it is used (a "billion laughs"
file of a few hundred bytes would otherwise expand to gigabytes when printed or walked).
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import os
import reprlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, TypeVar, Union

import yaml

from ..errors import Error

__all__ = [
    "ConfigError",
    "UNetSpec",
    "TextEncoderSpec",
    "EncoderSpec",
    "DecoderSpec",
    "AutoencoderSpec",
    "DiffusionSpec",
    "Spec",
    "load",
    "load_text",
    "packaged_config",
    "packaged_tiny_config",
    "packaged_config_names",
    "GROUPS",
]

#: GroupNorm group count used by every model here; every normalised width must be a multiple of it.
GROUPS = 32

#: The largest config text accepted; the original configs are about 3 KB.
MAX_CONFIG_BYTES = 1 << 20
#: The most nodes a config may have once its aliases are expanded; the originals have about 150.
MAX_CONFIG_NODES = 100_000

_UNET_TARGET = "ldm.modules.diffusionmodules.openaimodel.UNetModel"
_CLIP_TARGET = "ldm.modules.encoders.modules.FrozenCLIPEmbedder"
_CLIP_VERSION = "openai/clip-vit-large-patch14"
_DIFFUSION_TARGETS = {
    "ldm.models.diffusion.ddpm.LatentInpaintDiffusion": ("inpaint", "hybrid"),
    "ldm.models.diffusion.ddpm.LatentDiffusion": ("txt2img", "crossattn"),
}
# target -> (variant, conditional)
_AUTOENCODER_TARGETS = {
    "ldm.models.autoencoder.AutoencoderKL": ("base", True),
    "ldm.models.autoencoder.AutoencoderKL_wocondition": ("base", False),
    "ldm.models.autoencoder_large.AutoencoderKL": ("large", True),
    "ldm.models.autoencoder_large.AutoencoderKL_wocondition": ("large", False),
    "ldm.models.autoencoder_large2.AutoencoderKL": ("large2", True),
    "ldm.models.autoencoder_large2.AutoencoderKL_wocondition": ("large2", False),
}
# variant -> (ch, blocks per up level) fixed by the decoder class; None: taken from ddconfig.
_VARIANT_DIMS: dict[str, tuple[int, int] | None] = {"base": None, "large": (192, 4), "large2": (256, 6)}


class ConfigError(Error, ValueError):
    """A config file is unreadable, names an unknown model class, or has a missing/ill-typed field."""


# --------------------------------------------------------------------------------------------------
# Specs


@dataclass(frozen=True)
class UNetSpec:
    """``openaimodel.UNetModel`` with spatial transformers (SD 1.x layout)."""

    in_channels: int
    out_channels: int
    model_channels: int
    channel_mult: tuple[int, ...]
    num_res_blocks: int
    attention_resolutions: tuple[int, ...]
    num_heads: int
    num_head_channels: int  # -1: head count fixed (num_heads), head dim = width / num_heads
    transformer_depth: int
    context_dim: int

    @property
    def time_embed_dim(self) -> int:
        """Width of the timestep embedding MLP (4 x model_channels)."""
        return 4 * self.model_channels

    def heads(self, width: int) -> tuple[int, int]:
        """(head count, head dim) of a spatial transformer of ``width`` channels."""
        if self.num_head_channels == -1:
            return self.num_heads, width // self.num_heads
        return width // self.num_head_channels, self.num_head_channels


@dataclass(frozen=True)
class TextEncoderSpec:
    """CLIP text transformer (``FrozenCLIPEmbedder``); the defaults are ViT-L/14's."""

    vocab_size: int = 49408
    width: int = 768
    layers: int = 12
    heads: int = 12
    mlp: int = 3072
    max_positions: int = 77
    eps: float = 1e-5


@dataclass(frozen=True)
class EncoderSpec:
    """The KL VAE encoder (``model.Encoder``) plus ``quant_conv``."""

    in_channels: int
    ch: int
    ch_mult: tuple[int, ...]
    num_res_blocks: int
    z_channels: int
    double_z: bool

    @property
    def widths(self) -> tuple[int, ...]:
        """Output width of each down level."""
        return tuple(self.ch * m for m in self.ch_mult)


@dataclass(frozen=True)
class DecoderSpec:
    """A VAE decoder: SD's (``conditional=False``, base) or an asymmetric one.

    ``widths[L]`` is the width of up level ``L`` (level 0 = full resolution); ``cond_channels`` are the
    condition-encoder widths (c0, c1, c2) = (W0, W1, W2), present in the checkpoint whatever
    ``conditional`` says, used only when ``conditional``.
    """

    variant: Literal["base", "large", "large2"]
    ch: int
    ch_mult: tuple[int, ...]
    blocks_per_level: int
    z_channels: int
    out_channels: int
    conditional: bool
    cond_channels: tuple[int, int, int]

    @property
    def widths(self) -> tuple[int, ...]:
        """Width of each up level, level 0 first."""
        return tuple(self.ch * m for m in self.ch_mult)


@dataclass(frozen=True)
class AutoencoderSpec:
    """An ``AutoencoderKL`` config: encoder (unused by the pipelines), ``embed_dim`` and decoder."""

    target: str
    source: str = field(compare=False)  # provenance (file, or file:metadata key)
    embed_dim: int
    encoder: EncoderSpec
    decoder: DecoderSpec
    yaml_text: str = field(default="", repr=False, compare=False)


@dataclass(frozen=True)
class DiffusionSpec:
    """A latent diffusion config: UNet, CLIP text encoder, first stage and DDPM schedule."""

    target: str
    source: str = field(compare=False)  # provenance (file, or file:metadata key)
    kind: Literal["inpaint", "txt2img"]
    conditioning_key: str
    linear_start: float
    linear_end: float
    timesteps: int
    scale_factor: float
    use_ema: bool
    unet: UNetSpec
    text_encoder: TextEncoderSpec
    first_stage: AutoencoderSpec
    yaml_text: str = field(default="", repr=False, compare=False)


Spec = Union[DiffusionSpec, AutoencoderSpec]


# --------------------------------------------------------------------------------------------------
# Typed access to the YAML tree


class _Node:
    """A mapping in the YAML tree together with its key path, for error messages."""

    def __init__(self, data: Any, path: str, source: str) -> None:
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: {path or '<top level>'}: expected a mapping, got {_kind(data)}")
        self.data = data
        self.path = path
        self.source = source

    def _key(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def error(self, key: str, message: str) -> ConfigError:
        return ConfigError(f"{self.source}: {self._key(key)}: {message}")

    def has(self, key: str) -> bool:
        return key in self.data

    def node(self, key: str, default: Mapping[str, Any] | None = None) -> "_Node":
        if key not in self.data or self.data[key] is None:
            if default is None:
                raise self.error(key, "missing (expected a mapping)")
            return _Node(dict(default), self._key(key), self.source)
        value = self.data[key]
        if not isinstance(value, dict):
            raise self.error(key, f"expected a mapping, got {_kind(value)}")
        return _Node(value, self._key(key), self.source)

    def get(self, key: str, convert: Callable[[Any], _T], what: str, default: Any = ...) -> _T:
        if key not in self.data:
            if default is ...:
                raise self.error(key, f"missing (expected {what})")
            return default
        try:
            return convert(self.data[key])
        except (TypeError, ValueError):
            raise self.error(key, f"expected {what}, got {_excerpt(self.data[key])}") from None

    def integer(self, key: str, default: Any = ..., minimum: int | None = 1) -> int:
        what = "an integer" if minimum is None else f"an integer >= {minimum}"
        value = self.get(key, _as_int, what, default)
        if minimum is not None and value < minimum:
            raise self.error(key, f"expected {what}, got {_excerpt(value)}")
        return value

    def number(self, key: str, default: Any = ..., positive: bool = True) -> float:
        what = "a positive number" if positive else "a number"
        value = self.get(key, _as_float, what, default)
        if positive and not value > 0:
            raise self.error(key, f"expected {what}, got {_excerpt(value)}")
        return value

    def boolean(self, key: str, default: Any = ...) -> bool:
        return self.get(key, _as_bool, "true or false", default)

    def string(self, key: str, default: Any = ...) -> str:
        return self.get(key, _as_str, "a string", default)

    def int_list(self, key: str, default: Any = ..., minimum: int = 1, nonempty: bool = True) -> tuple[int, ...]:
        what = f"a {'non-empty ' if nonempty else ''}list of integers >= {minimum}"

        def convert(value: Any) -> tuple[int, ...]:
            if not isinstance(value, (list, tuple)) or (nonempty and not value):
                raise TypeError
            items = tuple(_as_int(v) for v in value)
            if any(v < minimum for v in items):
                raise ValueError
            return items

        return self.get(key, convert, what, default)

    def require(self, key: str, expected: Any, default: Any, why: str) -> None:
        """Reject a value other than ``expected`` for a setting this engine does not implement."""
        value = self.data.get(key, default)
        if value != expected:
            raise self.error(key, f"{_excerpt(value)} is not supported ({why}); expected {expected!r}")

    def only_keys(self, allowed: set[str]) -> None:
        unknown = sorted(set(map(str, self.data)) - allowed)
        if unknown:
            listed = ", ".join(k if len(k) <= 60 else k[:57] + "..." for k in unknown[:10])
            listed += f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
            raise ConfigError(
                f"{self.source}: {self.path}: unknown key(s) {listed}; allowed: {', '.join(sorted(allowed))}"
            )


_T = TypeVar("_T")


def _kind(value: Any) -> str:
    return "nothing" if value is None else f"{type(value).__name__} {_excerpt(value)}"


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxtuple, _REPR.maxdict, _REPR.maxset = 3, 4, 4, 4, 4
_REPR.maxstring, _REPR.maxother, _REPR.maxlong = 60, 60, 40


def _excerpt(value: Any, limit: int = 80) -> str:
    """A short repr of a value from the file, for messages: bounded work and length, whatever the value."""
    text = _REPR.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _as_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError
    return value


def _as_float(value: Any) -> float:
    # PyYAML (YAML 1.1) reads "1e-4" (no dot) as a string; OmegaConf, which the original uses, reads
    # it as a number.  Accept both.
    if isinstance(value, bool):
        raise TypeError
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        return float(value)
    raise TypeError


def _as_bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError
    return value


def _as_str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError
    return value


# --------------------------------------------------------------------------------------------------
# Parsers


def _target(node: _Node, known: Mapping[str, Any], what: str) -> str:
    target = node.string("target")
    if target not in known:
        raise node.error("target", f"unknown {what} class {_excerpt(target)}; known: {', '.join(sorted(known))}")
    return target


def _check_groups(node: _Node, key: str, widths: tuple[int, ...]) -> None:
    bad = [w for w in widths if w % GROUPS]
    if bad:
        raise node.error(key, f"widths {list(widths)} must all be multiples of {GROUPS} (GroupNorm groups)")


def _parse_unet(node: _Node) -> UNetSpec:
    _target(node, {_UNET_TARGET: None}, "UNet")
    p = node.node("params")
    p.require("use_spatial_transformer", True, False, "only the spatial-transformer UNet of SD 1.x")
    p.require("use_scale_shift_norm", False, False, "SD 1.x adds the time embedding")
    p.require("resblock_updown", False, False, "SD 1.x resamples with Downsample/Upsample")
    p.require("conv_resample", True, True, "SD 1.x resamples with convolutions")
    p.require("dims", 2, 2, "2-D images only")
    p.require("num_classes", None, None, "no class conditioning")
    p.require("dropout", 0, 0, "inference")
    spec = UNetSpec(
        in_channels=p.integer("in_channels"),
        out_channels=p.integer("out_channels"),
        model_channels=p.integer("model_channels"),
        channel_mult=p.int_list("channel_mult"),
        num_res_blocks=p.integer("num_res_blocks"),
        attention_resolutions=p.int_list("attention_resolutions", nonempty=False),
        num_heads=p.integer("num_heads", default=-1, minimum=-1),
        num_head_channels=p.integer("num_head_channels", default=-1, minimum=-1),
        transformer_depth=p.integer("transformer_depth", default=1),
        context_dim=p.integer("context_dim"),
    )
    widths = tuple(spec.model_channels * m for m in spec.channel_mult)
    _check_groups(p, "channel_mult", (spec.model_channels, *widths))
    if spec.num_heads == -1 and spec.num_head_channels == -1:
        raise p.error("num_heads", "either num_heads or num_head_channels must be set")
    if 0 in (spec.num_heads, spec.num_head_channels):
        raise p.error("num_heads", "num_heads and num_head_channels must be positive or -1")
    for width in widths:
        heads, dim = spec.heads(width)
        if heads * dim != width:
            raise p.error(
                "num_heads" if spec.num_head_channels == -1 else "num_head_channels",
                f"a width of {width} channels does not split into {heads} heads of {dim}",
            )
    return spec


def _parse_text_encoder(node: _Node) -> TextEncoderSpec:
    _target(node, {_CLIP_TARGET: None}, "text encoder")
    p = node.node("params", default={})
    p.require("version", _CLIP_VERSION, _CLIP_VERSION, "the text tower is CLIP ViT-L/14's")
    p.require("max_length", 77, 77, "prompts are 77 tokens")
    if not p.has("asymvq_text_model"):
        return TextEncoderSpec()
    t = p.node("asymvq_text_model")
    t.only_keys({f.name for f in dataclasses.fields(TextEncoderSpec)})
    default = TextEncoderSpec()
    spec = TextEncoderSpec(
        vocab_size=t.integer("vocab_size", default.vocab_size),
        width=t.integer("width", default.width),
        layers=t.integer("layers", default.layers),
        heads=t.integer("heads", default.heads),
        mlp=t.integer("mlp", default.mlp),
        max_positions=t.integer("max_positions", default.max_positions),
        eps=t.number("eps", default.eps),
    )
    if spec.width % spec.heads:
        raise t.error("heads", f"width {spec.width} does not split into {spec.heads} heads")
    if spec.vocab_size < default.vocab_size:
        raise t.error("vocab_size", f"the CLIP tokenizer emits ids up to {default.vocab_size - 1}")
    if spec.max_positions != 77:
        raise t.error("max_positions", "prompts are always 77 tokens; expected 77")
    return spec


def _parse_ddconfig(p: _Node) -> tuple[_Node, EncoderSpec]:
    dd = p.node("ddconfig")
    dd.require("attn_resolutions", [], [], "the KL autoencoders have attention only in the mid block")
    dd.require("dropout", 0, 0, "inference")
    dd.require("resamp_with_conv", True, True, "the KL autoencoders resample with convolutions")
    spec = EncoderSpec(
        in_channels=dd.integer("in_channels"),
        ch=dd.integer("ch"),
        ch_mult=dd.int_list("ch_mult"),
        num_res_blocks=dd.integer("num_res_blocks"),
        z_channels=dd.integer("z_channels"),
        double_z=dd.boolean("double_z", True),
    )
    _check_groups(dd, "ch_mult", (spec.ch, *spec.widths))
    if dd.integer("out_ch") != 3:
        raise dd.error("out_ch", "decoders produce RGB images; expected 3")
    if not spec.double_z:
        raise dd.error("double_z", "the KL encoder predicts mean and log-variance; expected true")
    return dd, spec


def _decoder(p: _Node, dd: _Node, enc: EncoderSpec, variant: str, conditional: bool, vanilla: bool) -> DecoderSpec:
    fixed = _VARIANT_DIMS[variant]
    if not vanilla and len(enc.ch_mult) < 3:
        raise dd.error("ch_mult", "the condition encoder needs at least 3 levels")
    ch, blocks = (enc.ch, enc.num_res_blocks + 1) if fixed is None or vanilla else fixed
    cond: tuple[int, ...] | None = None
    if p.has("asymvq_decoder"):
        if vanilla:
            raise p.error("asymvq_decoder", "not allowed in a diffusion model's first stage")
        o = p.node("asymvq_decoder")
        o.only_keys({"ch", "blocks_per_level", "cond_channels"})
        ch = o.integer("ch", ch)
        blocks = o.integer("blocks_per_level", blocks)
        cond = o.int_list("cond_channels", None)
        if ch % GROUPS:
            raise o.error("ch", f"{ch} is not a multiple of {GROUPS} (GroupNorm groups)")
    widths = tuple(ch * m for m in enc.ch_mult)
    derived = widths[:3]
    if not vanilla and widths[2] != widths[-1]:
        raise dd.error(
            "ch_mult",
            f"decoder widths {list(widths)}: the condition features F2..F4 (width {widths[2]}) merge into "
            f"levels whose width is {widths[-1]}; ch_mult[2] must equal ch_mult[-1]",
        )
    if cond is not None and cond != derived:
        raise p.node("asymvq_decoder").error(
            "cond_channels", f"{list(cond)} must equal the decoder level widths (W0, W1, W2) = {list(derived)}"
        )
    return DecoderSpec(
        variant=variant,  # type: ignore[arg-type]
        ch=ch,
        ch_mult=enc.ch_mult,
        blocks_per_level=blocks,
        z_channels=enc.z_channels,
        out_channels=3,
        conditional=conditional and not vanilla,
        cond_channels=(derived[0], derived[1], derived[2]),
    )


def _parse_autoencoder(model: _Node, yaml_text: str, vanilla: bool) -> AutoencoderSpec:
    target = _target(model, _AUTOENCODER_TARGETS, "autoencoder")
    variant, conditional = _AUTOENCODER_TARGETS[target]
    if vanilla and variant != "base":
        raise model.error(
            "target",
            f"{target!r}: a diffusion model's first stage must be the base autoencoder "
            "(SD checkpoints hold SD's VAE, whose shapes match only the base class)",
        )
    p = model.node("params")
    dd, enc = _parse_ddconfig(p)
    return AutoencoderSpec(
        target=target,
        source=model.source,
        embed_dim=p.integer("embed_dim"),
        encoder=enc,
        decoder=_decoder(p, dd, enc, variant, conditional, vanilla),
        yaml_text=yaml_text,
    )


def _parse_diffusion(model: _Node, yaml_text: str) -> DiffusionSpec:
    target = _target(model, _DIFFUSION_TARGETS, "diffusion model")
    kind, conditioning = _DIFFUSION_TARGETS[target]
    p = model.node("params")
    p.require("conditioning_key", conditioning, None, f"{target} is run with {conditioning!r} conditioning")
    p.require("parameterization", "eps", "eps", "SD 1.x predicts the noise")
    p.require("beta_schedule", "linear", "linear", "SD 1.x's schedule")
    p.require("num_timesteps_cond", 1, 1, "no conditioning-noise schedule")
    unet = _parse_unet(p.node("unet_config"))
    text = _parse_text_encoder(p.node("cond_stage_config"))
    first = _parse_autoencoder(p.node("first_stage_config"), "", vanilla=True)
    linear_start = p.number("linear_start", 1e-4)
    linear_end = p.number("linear_end", 2e-2)
    if not linear_start < linear_end < 1:
        raise p.error("linear_end", f"expected linear_start < linear_end < 1, got {linear_start}, {linear_end}")
    latent = first.embed_dim
    expected_in = 2 * latent + 1 if kind == "inpaint" else latent
    if unet.in_channels != expected_in:
        raise (
            p.node("unet_config")
            .node("params")
            .error(
                "in_channels",
                f"{unet.in_channels} does not fit {kind}: expected {expected_in} "
                + ("(latent, mask, masked-image latent)" if kind == "inpaint" else "(the latent)"),
            )
        )
    if unet.out_channels != latent:
        raise (
            p.node("unet_config")
            .node("params")
            .error("out_channels", f"{unet.out_channels}: the UNet predicts the noise of a {latent}-channel latent")
        )
    if unet.context_dim != text.width:
        raise (
            p.node("unet_config")
            .node("params")
            .error("context_dim", f"{unet.context_dim} differs from the text encoder width {text.width}")
        )
    return DiffusionSpec(
        target=target,
        source=model.source,
        kind=kind,  # type: ignore[arg-type]
        conditioning_key=conditioning,
        linear_start=linear_start,
        linear_end=linear_end,
        timesteps=p.integer("timesteps", 1000),
        scale_factor=p.number("scale_factor", 1.0),
        use_ema=p.boolean("use_ema", True),
        unet=unet,
        text_encoder=text,
        first_stage=first,
        yaml_text=yaml_text,
    )


# --------------------------------------------------------------------------------------------------
# Public API


def load_text(yaml_text: str, source: str = "<string>") -> Spec:
    """Parse config YAML text (e.g. re-read from a converted file's metadata).

    ``source`` names the origin in error messages.  Returns a :class:`DiffusionSpec` or an
    :class:`AutoencoderSpec`, as the top-level ``model.target`` decides.
    """
    if len(yaml_text) > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"{source}: {len(yaml_text)} characters is too large for a config "
            f"(at most {MAX_CONFIG_BYTES}; the original configs are about 3 KB)"
        )
    data = _safe_load(yaml_text, source)
    model = _Node(data, "", source).node("model")
    target = model.string("target")
    if target in _DIFFUSION_TARGETS:
        return _parse_diffusion(model, yaml_text)
    if target in _AUTOENCODER_TARGETS:
        return _parse_autoencoder(model, yaml_text, vanilla=False)
    known = sorted([*_DIFFUSION_TARGETS, *_AUTOENCODER_TARGETS])
    raise model.error("target", f"unknown model class {_excerpt(target)}; known: {', '.join(known)}")


def _safe_load(yaml_text: str, source: str) -> Any:
    """``yaml.safe_load``, refusing documents whose aliases expand beyond :data:`MAX_CONFIG_NODES`."""
    loader = yaml.SafeLoader(yaml_text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expansion(node, source)
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from None
    finally:
        loader.dispose()


def _check_expansion(root: yaml.Node, source: str) -> None:
    """Count the nodes of the document with every alias expanded, without expanding anything.

    An alias shares its anchor's node, so sizes are computed once per distinct node (iteratively,
    so deep nesting cannot overflow the stack); a node that contains itself is refused too.
    """
    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        children: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        if done:
            on_path.discard(key)
            sizes[key] = min(1 + sum(sizes[id(c)] for c in children), MAX_CONFIG_NODES + 1)
            continue
        if key in sizes:
            continue
        if key in on_path:
            raise ConfigError(
                f"{source}: an alias refers to a node that contains it (a recursive structure, which no config needs)"
            )
        on_path.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in children if id(c) not in sizes)
    if sizes[id(root)] > MAX_CONFIG_NODES:
        raise ConfigError(
            f"{source}: the YAML expands to more than {MAX_CONFIG_NODES} nodes once its "
            "aliases are resolved (an alias bomb?); configs have a few hundred"
        )


def load(path: str | os.PathLike[str]) -> Spec:
    """Read one config file (``yaml.safe_load``) and return its spec; see :func:`load_text`."""
    source = os.fspath(path)
    try:
        with open(source, encoding="utf-8") as f:
            text = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read config: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{source}: not a UTF-8 text file: {exc}") from None
    return load_text(text, source=source)


def _config_dir(tiny: bool) -> Path:
    package = "asymvq.configs.tiny" if tiny else "asymvq.configs"
    try:
        root = importlib.resources.files(package)
    except ModuleNotFoundError:
        # Source checkout without installation: the package data lives in <repo>/configs.
        root = Path(__file__).resolve().parents[2] / "configs"
        root = root / "tiny" if tiny else root
    return Path(str(root))


def packaged_config_names(tiny: bool = False) -> list[str]:
    """File names of the configs shipped with the package (the originals or the tiny ones)."""
    return sorted(p.name for p in _config_dir(tiny).glob("*.yaml"))


def _packaged(name: str, tiny: bool) -> Path:
    file = name if name.endswith(".yaml") else f"{name}.yaml"
    path = _config_dir(tiny) / file
    if not path.is_file():
        raise FileNotFoundError(
            f"no packaged {'tiny ' if tiny else ''}config {name!r}; available: {', '.join(packaged_config_names(tiny))}"
        )
    return path


def packaged_config(name: str) -> Path:
    """Path of a shipped original config, e.g. ``packaged_config("v1-inpainting-inference")``."""
    return _packaged(name, tiny=False)


def packaged_tiny_config(name: str) -> Path:
    """Path of a shipped tiny config (same file names as the originals, small widths)."""
    return _packaged(name, tiny=True)
