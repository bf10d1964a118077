"""Reading diffusers folders: ``save_pretrained`` layouts mapped onto asymvq's specs and original names.

A Stable Diffusion 1.x pipeline folder (``model_index.json``) holds ``unet/``, ``vae/``,
``text_encoder/`` (each ``config.json`` plus ``*.safetensors`` or ``*.bin``, possibly sharded with an
``*.index.json``), ``tokenizer/`` (``vocab.json`` + ``merges.txt``) and ``scheduler/``.  A VAE folder
alone (``AutoencoderKL`` or ``AsymmetricAutoencoderKL``) holds ``config.json`` and its weights.

Everything is mapped onto what asymvq already runs, without copying weights:

* each ``config.json`` becomes YAML in the original's format (:mod:`asymvq.config`, with its
  ``asymvq_*`` extensions for non-standard widths), parsed into the usual specs, so a converted file
  records it like any other config;
* each diffusers / transformers tensor name becomes its original checkpoint name (SPEC §1.3, §2.5,
  §3.5, §4.8, and the cross-references of §2.5 and §9); the VAE's mid-block attention weights,
  ``[C, C]`` linears in diffusers, are viewed as the original ``[C, C, 1, 1]`` convolutions;
* ``.bin`` files go through :mod:`asymvq.checkpoint`'s restricted unpickler (never ``torch.load``).

What asymvq does not run is refused with the setting that rules it out: other UNet architectures
(SD 2.x linear projections, SDXL's added embeddings, class conditioning...), text encoders other than
CLIP's with QuickGELU (SD 2.x's OpenCLIP), v-prediction or other schedules, LoRA / adapter folders,
and AsymmetricAutoencoderKL layouts that are none of the original base / 1.5x / 2x decoders (or
their tiny test stand-ins in ``configs/tiny``).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Union

import numpy as np
import yaml

from . import tables
from . import checkpoint, config
from .config import AutoencoderSpec, ConfigError, DiffusionSpec

__all__ = [
    "DiffusersError",
    "TensorSource",
    "DiffusersModel",
    "is_diffusers_folder",
    "read_pipeline",
    "read_vae",
    "read_tokenizer",
    "read_decoder",
    "pipeline_parts",
    "load_diffusers",
]

PathLike = Union[str, "os.PathLike[str]"]

SCALE_FACTOR = 0.18215
_VAE_CLASSES = ("AutoencoderKL", "AsymmetricAutoencoderKL")
_LORA_FILES = ("pytorch_lora_weights.safetensors", "pytorch_lora_weights.bin", "adapter_config.json",
               "adapter_model.safetensors", "adapter_model.bin")
_UNET_TARGET = "ldm.modules.diffusionmodules.openaimodel.UNetModel"
_CLIP_TARGET = "ldm.modules.encoders.modules.FrozenCLIPEmbedder"
_VIT_L = dict(vocab_size=49408, width=768, layers=12, heads=12, mlp=3072, max_positions=77, eps=1e-5)


class DiffusersError(ConfigError):
    """A diffusers folder is incomplete, unreadable, or holds a model asymvq does not run."""


@dataclass(frozen=True)
class TensorSource:
    """Where one tensor under its original name comes from: a file of the folder and a name in it."""

    checkpoint: checkpoint.Checkpoint
    name: str  # the diffusers / transformers name inside the file
    shape: tuple[int, ...]  # shape under the original name (same elements, same order)

    def array(self) -> np.ndarray:
        """The tensor as a read-only view into the mapped file, in its original shape."""
        return self.checkpoint.get(self.name).reshape(self.shape)


@dataclass(frozen=True)
class DiffusersModel:
    """One model read from a folder: its spec and its tensors under the original names."""

    path: Path
    spec: Union[DiffusionSpec, AutoencoderSpec]
    tensors: dict[str, TensorSource]

    def weights(self) -> dict[str, np.ndarray]:
        """name -> read-only array view (no copy)."""
        return {name: src.array() for name, src in self.tensors.items()}


# --------------------------------------------------------------------------------------------------
# Folders, configs and weight files


def is_diffusers_folder(path: PathLike) -> bool:
    """Whether ``path`` is a folder with ``model_index.json`` or a component ``config.json``."""
    p = Path(path)
    return p.is_dir() and ((p / "model_index.json").is_file() or (p / "config.json").is_file())


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DiffusersError(f"{path} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DiffusersError(f"{path}: not a readable JSON file: {exc}") from None
    if not isinstance(data, dict):
        raise DiffusersError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _refuse_lora(folder: Path) -> None:
    found = [name for name in _LORA_FILES if (folder / name).exists()]
    if found:
        raise DiffusersError(
            f"{folder} is a LoRA / adapter folder ({', '.join(found)}): asymvq runs whole models only; "
            "fuse the LoRA into its base model (diffusers' fuse_lora, then save_pretrained) and load that folder"
        )


def _weight_files(folder: Path, stems: tuple[str, ...], variant: Optional[str]) -> list[Path]:
    """The weight file(s) of a component: ``<stem>[.<variant>].safetensors`` / ``.bin`` or their shards."""
    _refuse_lora(folder)
    for stem in stems:
        base = f"{stem}.{variant}" if variant else stem
        for ext in ("safetensors", "bin"):
            single = folder / f"{base}.{ext}"
            if single.is_file():
                return [single]
            index = folder / f"{base}.{ext}.index.json"
            if index.is_file():
                weight_map = _read_json(index).get("weight_map")
                if not isinstance(weight_map, dict) or not weight_map:
                    raise DiffusersError(f"{index}: no weight_map")
                shards = sorted({str(v) for v in weight_map.values()})
                bad = [s for s in shards if Path(s).name != s or not (folder / s).is_file()]
                if bad:
                    raise DiffusersError(f"{index}: shard(s) {', '.join(bad)} missing from {folder}")
                return [folder / s for s in shards]
    present = sorted(p.name for p in folder.iterdir() if p.suffix in (".safetensors", ".bin")) \
        if folder.is_dir() else []
    wanted = " or ".join(f"{s}{'.' + variant if variant else ''}.safetensors/.bin" for s in stems)
    hint = f"; it has {', '.join(present)} (pass variant= for e.g. .fp16 files)" if present else ""
    raise DiffusersError(f"{folder}: no weights ({wanted}){hint}")


_Raw = dict[str, tuple[checkpoint.Checkpoint, str]]  # name in the folder -> (opened file, name in it)


def _open_weights(folder: Path, stems: tuple[str, ...], variant: Optional[str]) -> _Raw:
    """name -> (opened file, name) over every file (shard) of a component."""
    out: dict[str, tuple[checkpoint.Checkpoint, str]] = {}
    for path in _weight_files(folder, stems, variant):
        ckpt = checkpoint.open_checkpoint(path)
        for name in ckpt.keys():
            if name in out:
                raise DiffusersError(f"{folder}: tensor {name!r} is in two shards")
            out[name] = (ckpt, name)
    if any("lora" in name.lower() for name in out):
        raise DiffusersError(f"{folder} holds LoRA tensors: asymvq runs whole models only; fuse the LoRA first")
    return out


class _Cfg:
    """A component's config.json with checks that name the file and the key."""

    def __init__(self, folder: Path, expected: tuple[str, ...]) -> None:
        self.path = folder / "config.json"
        self.data = _read_json(self.path)
        self.cls = self.data.get("_class_name") or (self.data.get("architectures") or [None])[0]
        if self.cls is None and self.data.get("model_type") == "clip_text_model":
            self.cls = "CLIPTextModel"  # transformers configs saved without "architectures"
        if self.cls not in expected:
            raise DiffusersError(
                f"{self.path}: a {self.cls or 'model of unknown class'}; asymvq runs {' or '.join(expected)} here"
            )

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def error(self, key: str, message: str) -> DiffusersError:
        return DiffusersError(f"{self.path}: {key}: {message}")

    def require(self, key: str, allowed: tuple[Any, ...], why: str) -> None:
        """Refuse a setting asymvq does not implement (a missing key takes diffusers' default, allowed[0])."""
        value = self.data.get(key, allowed[0])
        if value not in allowed:
            raise self.error(key, f"{value!r} is not supported ({why}); asymvq runs {allowed[0]!r}")

    def integer(self, key: str, default: Any = ...) -> int:
        value = self.data.get(key, default)
        if value is ...:
            raise self.error(key, "missing")
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(key, f"expected an integer, got {value!r}")
        return value

    def int_list(self, key: str) -> list[int]:
        value = self.data.get(key)
        if not isinstance(value, list) or not value or any(isinstance(v, bool) or not isinstance(v, int)
                                                           for v in value):
            raise self.error(key, f"expected a list of integers, got {value!r}")
        return value

    def same_per_level(self, key: str, default: Any, levels: int) -> int:
        """An int, or a per-level list whose entries asymvq needs equal."""
        value = self.data.get(key, default)
        if isinstance(value, list):
            if len(set(value)) != 1:
                raise self.error(key, f"{value}: asymvq needs the same value on every level")
            value = value[0]
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(key, f"expected an integer, got {value!r}")
        return value


def _yaml(model: dict, source: str) -> config.Spec:
    text = yaml.safe_dump({"model": model}, sort_keys=False)
    return config.load_text(text, source=source)


def _autoencoder_yaml(model: dict, source: str) -> AutoencoderSpec:
    spec = _yaml(model, source)
    if not isinstance(spec, AutoencoderSpec):  # an autoencoder target always parses to one
        raise TypeError(f"{source}: {model['target']} is not an autoencoder")
    return spec


# --------------------------------------------------------------------------------------------------
# UNet2DConditionModel


# Settings of UNet2DConditionModel other than SD 1.x's; a missing key means diffusers' default (first).
_UNET_FIXED: dict[str, tuple[tuple[Any, ...], str]] = {
    "center_input_sample": ((False,), "SD 1.x feeds the latent as is"),
    "flip_sin_to_cos": ((True,), "SD 1.x's timestep embedding is cos first"),
    "freq_shift": ((0,), "SD 1.x's timestep embedding"),
    "mid_block_type": (("UNetMidBlock2DCrossAttn",), "SD 1.x's middle block"),
    "only_cross_attention": ((False,), "SD 1.x has self- and cross-attention"),
    "downsample_padding": ((1,), "SD 1.x's downsampling"),
    "mid_block_scale_factor": ((1, 1.0), "SD 1.x's middle block"),
    "act_fn": (("silu",), "SD 1.x's activation"),
    "norm_num_groups": ((32,), "GroupNorm with 32 groups"),
    "norm_eps": ((1e-5,), "SD 1.x's GroupNorm eps"),
    "encoder_hid_dim": ((None,), "no projection of the text embedding"),
    "encoder_hid_dim_type": ((None,), "no projection of the text embedding"),
    "dual_cross_attention": ((False,), "one cross-attention"),
    "use_linear_projection": ((False,), "SD 1.x's 1x1-convolution proj_in/proj_out (SD 2.x uses linears)"),
    "class_embed_type": ((None,), "no class conditioning"),
    "addition_embed_type": ((None,), "no added embeddings (SDXL)"),
    "num_class_embeds": ((None,), "no class conditioning"),
    "resnet_time_scale_shift": (("default",), "SD 1.x adds the time embedding"),
    "resnet_skip_time_act": ((False,), "SD 1.x's ResBlocks"),
    "resnet_out_scale_factor": ((1.0, 1), "SD 1.x's ResBlocks"),
    "time_embedding_type": (("positional",), "SD 1.x's sinusoidal timestep embedding"),
    "time_embedding_dim": ((None,), "SD 1.x's time embedding width (4 x block_out_channels[0])"),
    "time_embedding_act_fn": ((None,), "SD 1.x's time embedding"),
    "timestep_post_act": ((None,), "SD 1.x's time embedding"),
    "time_cond_proj_dim": ((None,), "no extra time condition"),
    "conv_in_kernel": ((3,), "SD 1.x's conv_in"),
    "conv_out_kernel": ((3,), "SD 1.x's conv_out"),
    "projection_class_embeddings_input_dim": ((None,), "no class conditioning"),
    "attention_type": (("default",), "plain attention"),
    "class_embeddings_concat": ((False,), "no class conditioning"),
    "mid_block_only_cross_attention": ((None, False), "SD 1.x's middle block"),
    "cross_attention_norm": ((None,), "no norm on the text embedding"),
    "addition_time_embed_dim": ((None,), "no added embeddings (SDXL)"),
    "reverse_transformer_layers_per_block": ((None,), "one transformer depth"),
    "dropout": ((0.0, 0), "inference"),
}
_UNET_FREE = {"in_channels", "out_channels", "down_block_types", "up_block_types", "block_out_channels",
              "layers_per_block", "cross_attention_dim", "attention_head_dim", "num_attention_heads",
              "transformer_layers_per_block", "sample_size", "upcast_attention",
              "addition_embed_type_num_heads"}  # the last is read only with an addition_embed_type

_RES = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1", "norm2": "out_layers.0",
        "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}


def _unet_params(cfg: _Cfg) -> dict[str, Any]:
    """The original ``unet_config.params`` for a UNet2DConditionModel config.json."""
    for key, (allowed, why) in _UNET_FIXED.items():
        cfg.require(key, allowed, why)
    unknown = sorted(k for k, v in cfg.data.items()
                     if not k.startswith("_") and k not in _UNET_FIXED and k not in _UNET_FREE and v is not None)
    if unknown:
        raise DiffusersError(f"{cfg.path}: setting(s) asymvq does not know: {', '.join(unknown)}")
    widths = cfg.int_list("block_out_channels")
    down = cfg.get("down_block_types")
    up = cfg.get("up_block_types")
    levels = len(widths)
    known_down = ("CrossAttnDownBlock2D", "DownBlock2D")
    if not isinstance(down, list) or len(down) != levels or any(t not in known_down for t in down):
        raise cfg.error("down_block_types", f"{down!r}: expected {levels} of {', '.join(known_down)}")
    mirror = [t.replace("Down", "Up") for t in reversed(down)]
    if up != mirror:
        raise cfg.error("up_block_types", f"{up!r}: asymvq's UNet mirrors the down blocks: {mirror}")
    mc = widths[0]
    if any(w % mc for w in widths):
        raise cfg.error("block_out_channels", f"{widths}: every width must be a multiple of the first")
    heads_value = cfg.get("num_attention_heads") or cfg.get("attention_head_dim", 8)
    heads = heads_value if isinstance(heads_value, list) else [heads_value] * levels
    if len(heads) != levels or any(isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in heads):
        raise cfg.error("attention_head_dim", f"{heads_value!r}: expected a head count or one per level")
    params: dict[str, Any] = {
        "in_channels": cfg.integer("in_channels"),
        "out_channels": cfg.integer("out_channels"),
        "model_channels": mc,
        "attention_resolutions": [2**i for i, t in reversed(list(enumerate(down))) if t == "CrossAttnDownBlock2D"],
        "num_res_blocks": cfg.same_per_level("layers_per_block", 2, levels),
        "channel_mult": [w // mc for w in widths],
    }
    if len(set(heads)) == 1:
        params["num_heads"] = heads[0]
    elif len({w // h for w, h in zip(widths, heads)}) == 1 and all(w % h == 0 for w, h in zip(widths, heads)):
        params["num_head_channels"] = widths[0] // heads[0]
    else:
        raise cfg.error("attention_head_dim", f"{heads}: neither one head count nor one head width for {widths}")
    cross = cfg.get("cross_attention_dim", 1280)
    if isinstance(cross, list):
        if len(set(cross)) != 1:
            raise cfg.error("cross_attention_dim", f"{cross}: asymvq needs one context width")
        cross = cross[0]
    params.update(
        use_spatial_transformer=True,
        transformer_depth=cfg.same_per_level("transformer_layers_per_block", 1, levels),
        context_dim=cross,
        legacy=False,
    )
    return params


def _unet_names(spec: config.UNetSpec) -> Callable[[str], Optional[str]]:
    """diffusers UNet name -> original name (under ``model.diffusion_model.``), None if unknown."""
    per_level = spec.num_res_blocks + 1
    attn = set(spec.attention_resolutions)
    fixed = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}

    def res(rest: str) -> Optional[str]:
        head, _, tail = rest.partition(".")
        return f"{_RES[head]}.{tail}" if head in _RES else None

    def convert(name: str) -> Optional[str]:
        for old, new in fixed.items():
            if name.startswith(old + "."):
                return new + name[len(old):]
        m = re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions|downsamplers)\.(\d+)\.(.+)", name)
        if m:
            level, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
            if kind == "downsamplers":
                block = 1 + level * per_level + spec.num_res_blocks
                ok = j == 0 and rest.startswith("conv.")
                return f"input_blocks.{block}.0.op.{rest[len('conv.'):]}" if ok else None
            block = 1 + level * per_level + j
            if kind == "resnets":
                r = res(rest)
                return f"input_blocks.{block}.0.{r}" if r else None
            return f"input_blocks.{block}.1.{rest}"
        m = re.fullmatch(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)", name)
        if m:
            if m[1] == "attentions":
                return f"middle_block.1.{m[3]}" if m[2] == "0" else None
            r = res(m[3])
            return f"middle_block.{2 * int(m[2])}.{r}" if r and m[2] in ("0", "1") else None
        m = re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions|upsamplers)\.(\d+)\.(.+)", name)
        if m:
            k, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
            level = len(spec.channel_mult) - 1 - k
            if kind == "upsamplers":
                sub = 2 if 2**level in attn else 1
                block = k * per_level + spec.num_res_blocks
                return f"output_blocks.{block}.{sub}.conv.{rest[len('conv.'):]}" if rest.startswith("conv.") else None
            if kind == "resnets":
                r = res(rest)
                return f"output_blocks.{k * per_level + j}.0.{r}" if r else None
            return f"output_blocks.{k * per_level + j}.1.{rest}"
        return None

    return convert


# --------------------------------------------------------------------------------------------------
# AutoencoderKL / AsymmetricAutoencoderKL


def _vae_names(levels: int) -> Callable[[str], Optional[str]]:
    """diffusers VAE name -> original name (without prefix), None if unknown."""
    attn = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out",
            "query": "q", "key": "k", "value": "v", "proj_attn": "proj_out"}  # current and pre-0.14 names

    def resnet(rest: str) -> Optional[str]:
        head, _, tail = rest.partition(".")
        if head in ("norm1", "conv1", "norm2", "conv2"):
            return rest
        return f"nin_shortcut.{tail}" if head == "conv_shortcut" else None

    def convert(name: str) -> Optional[str]:
        if name.startswith(("quant_conv.", "post_quant_conv.", "encoder.conv_in.", "encoder.conv_out.",
                            "decoder.conv_in.", "decoder.conv_out.")):
            return name
        m = re.fullmatch(r"(encoder|decoder)\.conv_norm_out\.(.+)", name)
        if m:
            return f"{m[1]}.norm_out.{m[2]}"
        m = re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.([01])\.(.+)", name)
        if m:
            r = resnet(m[3])
            return f"{m[1]}.mid.block_{int(m[2]) + 1}.{r}" if r else None
        m = re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)\.(weight|bias)", name)
        if m:
            return f"{m[1]}.mid.attn_1.{attn[m[2]]}.{m[3]}" if m[2] in attn else None
        m = re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", name)
        if m:
            r = resnet(m[3])
            return f"encoder.down.{m[1]}.block.{m[2]}.{r}" if r else None
        m = re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", name)
        if m:
            return f"encoder.down.{m[1]}.downsample.conv.{m[2]}"
        m = re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", name)
        if m:
            r = resnet(m[3])
            return f"decoder.up.{levels - 1 - int(m[1])}.block.{m[2]}.{r}" if r else None
        m = re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", name)
        if m:
            return f"decoder.up.{levels - 1 - int(m[1])}.upsample.conv.{m[2]}"
        m = re.fullmatch(r"decoder\.condition_encoder\.layers\.(\d+)\.(.+)", name)
        if m:
            return f"decoder.encoder.layers.{m[1]}.{m[2]}"
        return None

    return convert


def _vae_common(cfg: _Cfg) -> None:
    cfg.require("act_fn", ("silu",), "the KL autoencoders use SiLU")
    cfg.require("norm_num_groups", (32,), "GroupNorm with 32 groups")
    cfg.require("in_channels", (3,), "RGB images")
    cfg.require("out_channels", (3,), "RGB images")
    cfg.require("use_quant_conv", (True,), "SD's VAE has quant_conv")
    cfg.require("use_post_quant_conv", (True,), "SD's VAE has post_quant_conv")
    cfg.require("mid_block_add_attention", (True,), "SD's VAE has mid-block attention")
    cfg.require("shift_factor", (None,), "SD 1.x latents are only scaled")
    cfg.require("latents_mean", (None,), "SD 1.x latents are only scaled")
    cfg.require("latents_std", (None,), "SD 1.x latents are only scaled")
    factor = cfg.get("scaling_factor", SCALE_FACTOR)
    if factor != SCALE_FACTOR:
        raise cfg.error("scaling_factor", f"{factor}: asymvq's pipelines scale SD 1.x latents by {SCALE_FACTOR}")


def _blocks(cfg: _Cfg, key: str, kind: str, levels: int) -> None:
    value = cfg.get(key, [kind] * levels)
    if value != [kind] * levels:
        raise cfg.error(key, f"{value!r}: expected {levels} x {kind}")


def _ddconfig(widths: list[int], blocks: int, latent: int, cfg: _Cfg, key: str) -> dict[str, Any]:
    ch = widths[0]
    if any(w % ch for w in widths):
        raise cfg.error(key, f"{widths}: every width must be a multiple of the first")
    return {"double_z": True, "z_channels": latent, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": ch,
            "ch_mult": [w // ch for w in widths], "num_res_blocks": blocks, "attn_resolutions": [], "dropout": 0.0}


def _known_decoders() -> dict[tuple[tuple[int, ...], int], tuple[str, str]]:
    """(level widths, ResnetBlocks per level) -> (variant, shipped config name) of every asymmetric decoder."""
    out: dict[tuple[tuple[int, ...], int], tuple[str, str]] = {}
    for tiny in (False, True):
        for name in config.packaged_config_names(tiny):
            spec = config.load((config.packaged_tiny_config if tiny else config.packaged_config)(name))
            if isinstance(spec, AutoencoderSpec) and spec.decoder.conditional:
                d = spec.decoder
                out[(d.widths, d.blocks_per_level)] = (d.variant, f"{'tiny/' if tiny else ''}{name}")
    return out


_VARIANT_CLASS = {"base": "ldm.models.autoencoder", "large": "ldm.models.autoencoder_large",
                  "large2": "ldm.models.autoencoder_large2"}
_CLASS_DIMS = {"large": (192, 4), "large2": (256, 6)}


def _vae_spec(cfg: _Cfg, condition: bool) -> AutoencoderSpec:
    """The autoencoder spec of a VAE config.json: encoder from its down blocks, decoder from its up blocks."""
    _vae_common(cfg)
    latent = cfg.integer("latent_channels", 4)
    if cfg.cls == "AutoencoderKL":
        widths = cfg.int_list("block_out_channels")
        _blocks(cfg, "down_block_types", "DownEncoderBlock2D", len(widths))
        _blocks(cfg, "up_block_types", "UpDecoderBlock2D", len(widths))
        layers = cfg.integer("layers_per_block", 1)
        dd = _ddconfig(widths, layers, latent, cfg, "block_out_channels")
        target = "ldm.models.autoencoder.AutoencoderKL_wocondition"
        return _autoencoder_yaml({"target": target, "params": {"embed_dim": latent, "ddconfig": dd}},
                                 os.fspath(cfg.path))
    down = cfg.int_list("down_block_out_channels")
    up = cfg.int_list("up_block_out_channels")
    _blocks(cfg, "down_block_types", "DownEncoderBlock2D", len(down))
    _blocks(cfg, "up_block_types", "UpDecoderBlock2D", len(up))
    dd = _ddconfig(down, cfg.integer("layers_per_down_block", 1), latent, cfg, "down_block_out_channels")
    blocks = cfg.integer("layers_per_up_block", 1) + 1
    known = _known_decoders()
    found = known.get((tuple(up), blocks))
    if found is None:
        layouts = "; ".join(f"{name}: {list(w)} x {b}" for (w, b), (_, name) in known.items())
        raise DiffusersError(
            f"{cfg.path}: up_block_out_channels {up} with {blocks} ResNets per block (layers_per_up_block "
            f"{blocks - 1}) is none of the asymmetric decoders asymvq runs ({layouts})"
        )
    variant = found[0]
    if [w // up[0] for w in up] != dd["ch_mult"] or any(w % up[0] for w in up):
        raise cfg.error("up_block_out_channels",
                        f"{up}: the decoder's width ratios must be the encoder's {dd['ch_mult']}")
    params: dict[str, Any] = {"embed_dim": latent, "ddconfig": dd}
    default = _CLASS_DIMS.get(variant, (dd["ch"], dd["num_res_blocks"] + 1))
    if default != (up[0], blocks):
        params["asymvq_decoder"] = {"ch": up[0], "blocks_per_level": blocks}
    target = f"{_VARIANT_CLASS[variant]}.AutoencoderKL{'' if condition else '_wocondition'}"
    return _autoencoder_yaml({"target": target, "params": params}, os.fspath(cfg.path))


def _map(folder: Path, raw: _Raw, convert: Callable[[str], Optional[str]],
         prefix: str, table: Mapping[str, tuple[int, ...]], ignore: tuple[str, ...] = ()) -> dict[str, TensorSource]:
    """Rename every tensor of a component, then check them against the spec's table (all problems at once)."""
    out: dict[str, TensorSource] = {}
    problems: list[str] = []
    for name, (ckpt, source) in raw.items():
        if name.startswith(ignore):
            continue
        new = convert(name)
        if new is None:
            problems.append(f"unexpected: {name} (no such tensor in asymvq's model)")
            continue
        new = prefix + new
        if new in out:
            problems.append(f"unexpected: {name} (a second tensor for {new})")
            continue
        shape = tuple(ckpt.info(source).shape)
        want = table.get(new)
        if want is not None and len(shape) == 2 and want == shape + (1, 1):
            shape = want  # a VAE attention linear read as the original 1x1 convolution
        out[new] = TensorSource(ckpt, source, shape)
    views = {name: _ShapeOnly(src) for name, src in out.items()}
    try:
        tables.check(table, views, dtype_of=lambda v: v.dtype_name)
    except tables.WeightsError as exc:
        problems += exc.problems
    if problems:
        raise tables.WeightsError(problems, f"{folder} (names after mapping to the original checkpoint names)")
    return {name: out[name] for name in table}


class _ShapeOnly:
    """What :func:`asymvq.tables.check` needs of a tensor, without touching the data."""

    def __init__(self, src: TensorSource) -> None:
        self.shape = src.shape
        self.dtype_name = tables.dtype_name(src.checkpoint.get(src.name))


# --------------------------------------------------------------------------------------------------
# Public readers


def read_vae(path: PathLike, *, condition: bool = True, prefix: str = "", variant: Optional[str] = None,
             encoder: bool = True, decoder: bool = True) -> DiffusersModel:
    """An ``AutoencoderKL`` or ``AsymmetricAutoencoderKL`` folder (or a pipeline folder's ``vae/``).

    ``condition``: for an asymmetric decoder, whether the spec is the conditional one (inpainting) or the
    ``_wocondition`` one; SD's ``AutoencoderKL`` decoder is always without condition.  ``prefix`` goes in
    front of every original name (``first_stage_model.`` inside an SD model).  ``encoder`` / ``decoder``:
    which parts' tensors to take (the other part's tensors are skipped).
    """
    folder = Path(path)
    if (folder / "model_index.json").is_file():
        folder = folder / "vae"
    cfg = _Cfg(folder, _VAE_CLASSES)
    spec = _vae_spec(cfg, condition)
    table: dict[str, tuple[int, ...]] = {}
    if encoder:
        table.update(tables.vae_encoder_tensors(spec, prefix=prefix))
    if decoder:
        table.update(tables.decoder_tensors(spec, prefix=prefix))
    skip = tuple(p for p, keep in (("encoder.", encoder), ("quant_conv.", encoder), ("decoder.", decoder),
                                    ("post_quant_conv.", decoder)) if not keep)
    if decoder and not spec.decoder.conditional:
        skip += ("decoder.condition_encoder.",)  # carried by every asymmetric checkpoint, run only with condition
    raw = _open_weights(folder, ("diffusion_pytorch_model",), variant)
    tensors = _map(folder, raw, _vae_names(len(spec.decoder.widths)), prefix, table, skip)
    return DiffusersModel(folder, spec, tensors)


def read_tokenizer(folder: PathLike) -> tuple[Path, Path]:
    """(vocab.json, merges.txt) of a ``tokenizer/`` folder."""
    p = Path(folder)
    files = (p / "vocab.json", p / "merges.txt")
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise DiffusersError(f"{p}: the CLIP tokenizer needs vocab.json and merges.txt; missing {', '.join(missing)}")
    return files


def _text_model(folder: Path, variant: Optional[str]) -> tuple[dict[str, Any], _Raw]:
    cfg = _Cfg(folder, ("CLIPTextModel",))
    cfg.require("hidden_act", ("quick_gelu",), "SD 1.x's CLIP ViT-L/14 (SD 2.x's OpenCLIP uses GELU)")
    cfg.require("model_type", ("clip_text_model",), "a CLIP text model")
    text = {"vocab_size": cfg.integer("vocab_size"), "width": cfg.integer("hidden_size"),
            "layers": cfg.integer("num_hidden_layers"), "heads": cfg.integer("num_attention_heads"),
            "mlp": cfg.integer("intermediate_size"), "max_positions": cfg.integer("max_position_embeddings"),
            "eps": float(cfg.get("layer_norm_eps", 1e-5))}
    return text, _open_weights(folder, ("model", "pytorch_model"), variant)


def _scheduler(folder: Path) -> dict[str, Any]:
    path = folder / "scheduler" / "scheduler_config.json"
    if not path.is_file():
        return {"linear_start": 0.00085, "linear_end": 0.012, "timesteps": 1000}
    data = _read_json(path)
    checks = {"beta_schedule": ("scaled_linear", "SD 1.x's schedule (linear in sqrt(beta))"),
              "prediction_type": ("epsilon", "SD 1.x predicts the noise"),
              "trained_betas": (None, "betas computed from beta_start and beta_end"),
              "rescale_betas_zero_snr": (False, "SD 1.x's schedule")}
    for key, (want, why) in checks.items():
        if data.get(key, want) != want:
            raise DiffusersError(f"{path}: {key}: {data[key]!r} is not supported ({why}); asymvq runs {want!r}")
    return {"linear_start": float(data.get("beta_start", 0.00085)), "linear_end": float(data.get("beta_end", 0.012)),
            "timesteps": int(data.get("num_train_timesteps", 1000))}


def _check_index(folder: Path) -> dict:
    index = _read_json(folder / "model_index.json")
    extra = [k for k in ("text_encoder_2", "tokenizer_2", "image_encoder", "prior", "controlnet", "adapter")
             if index.get(k) and index.get(k) != [None, None]]
    if extra:
        raise DiffusersError(f"{folder}: a {index.get('_class_name', 'pipeline')} with {', '.join(extra)}: "
                             "asymvq runs Stable Diffusion 1.x pipelines only")
    for key in ("unet", "vae", "text_encoder", "tokenizer"):
        if not (folder / key).is_dir():
            raise DiffusersError(f"{folder}: no {key}/ folder (a Stable Diffusion pipeline has unet, vae, "
                                 "text_encoder and tokenizer)")
    return index


def read_pipeline(path: PathLike, *, variant: Optional[str] = None) -> DiffusersModel:
    """A Stable Diffusion 1.x pipeline folder -> the diffusion model (text encoder, UNet, first stage).

    The kind follows the UNet: 9 input channels (latent, mask, masked-image latent) is inpainting, 4 is
    text-to-image.  The first stage holds the VAE's encoder (used by inpainting only).
    """
    folder = Path(path)
    if not folder.is_dir():
        raise DiffusersError(f"{folder} is not a folder")
    _refuse_lora(folder)
    if not (folder / "model_index.json").is_file():
        hint = ""
        if (folder / "config.json").is_file():
            hint = f" (it holds one component, a {_read_json(folder / 'config.json').get('_class_name', '?')})"
        raise DiffusersError(f"{folder}: no model_index.json: not a diffusers pipeline folder{hint}")
    _check_index(folder)
    ucfg = _Cfg(folder / "unet", ("UNet2DConditionModel",))
    unet = _unet_params(ucfg)
    text, text_raw = _text_model(folder / "text_encoder", variant)
    vcfg = _Cfg(folder / "vae", _VAE_CLASSES)
    first = _vae_spec(vcfg, condition=False)
    latent = first.embed_dim
    kind = {2 * latent + 1: "inpaint", latent: "txt2img"}.get(unet["in_channels"])
    if kind is None:
        raise ucfg.error("in_channels", f"{unet['in_channels']}: asymvq runs {latent} (text-to-image) or "
                         f"{2 * latent + 1} (inpainting: latent, mask, masked-image latent) input channels")
    enc = first.encoder
    dd = {"double_z": True, "z_channels": enc.z_channels, "resolution": 256, "in_channels": enc.in_channels,
          "out_ch": 3, "ch": enc.ch, "ch_mult": list(enc.ch_mult), "num_res_blocks": enc.num_res_blocks,
          "attn_resolutions": [], "dropout": 0.0}
    cond: dict[str, Any] = {"target": _CLIP_TARGET}
    if text != _VIT_L:
        cond["params"] = {"asymvq_text_model": text}
    target = "LatentInpaintDiffusion" if kind == "inpaint" else "LatentDiffusion"
    model = {
        "target": f"ldm.models.diffusion.ddpm.{target}",
        "params": {
            **_scheduler(folder),
            "scale_factor": SCALE_FACTOR,
            "conditioning_key": "hybrid" if kind == "inpaint" else "crossattn",
            **({} if kind == "inpaint" else {"use_ema": False}),  # as the original YAMLs (no effect here)
            "unet_config": {"target": _UNET_TARGET, "params": unet},
            "first_stage_config": {"target": "ldm.models.autoencoder.AutoencoderKL",
                                   "params": {"embed_dim": latent, "ddconfig": dd}},
            "cond_stage_config": cond,
        },
    }
    spec = _yaml(model, f"{folder} (diffusers)")
    assert isinstance(spec, DiffusionSpec)
    tensors = _map(folder / "unet", _open_weights(folder / "unet", ("diffusion_pytorch_model",), variant),
                   _unet_names(spec.unet), tables.UNET_PREFIX, tables.unet_tensors(spec.unet))
    inner = "text_model."  # transformers < 5 nests the text tower under text_model., 5 does not
    tensors.update(_map(folder / "text_encoder", text_raw,
                        lambda n: n[len(inner):] if n.startswith(inner) else n,
                        tables.TEXT_PREFIX, tables.text_encoder_tensors(spec.text_encoder),
                        ignore=("embeddings.position_ids", inner + "embeddings.position_ids")))
    if kind == "inpaint":
        tensors.update(read_vae(folder / "vae", prefix=tables.FIRST_STAGE_PREFIX, variant=variant,
                                decoder=False).tensors)
    return DiffusersModel(folder, spec, tensors)


def vae_class(path: PathLike) -> str:
    """The ``_class_name`` of a VAE folder (or of a pipeline folder's ``vae/``)."""
    folder = Path(path)
    if (folder / "model_index.json").is_file():
        folder = folder / "vae"
    return str(_Cfg(folder, _VAE_CLASSES).cls)


def _tokenizer(folder: Path, vocab: Optional[PathLike]) -> Any:
    from ..tokenizer import CLIPTokenizer, find_vocab

    if vocab is not None:
        return CLIPTokenizer.from_file(find_vocab(vocab))
    return CLIPTokenizer.from_file(read_tokenizer(folder / "tokenizer"))


def read_decoder(source: PathLike, *, condition: bool, variant: Optional[str] = None
                 ) -> tuple[AutoencoderSpec, Mapping[str, Any]]:
    """(spec, weights under the original names) of a decoder from any source.

    ``source``: a VAE folder or a pipeline folder (its ``vae/``), a file written by ``python -m asymvq
    convert``, or a single-file original checkpoint (its config inferred, :mod:`asymvq.infer`).
    ``condition``: whether the decoder must merge an image and a mask (inpainting).
    """
    path = Path(source)
    if path.is_dir():
        if vae_class(path) == "AutoencoderKL" and condition:
            raise DiffusersError(
                f"{path} holds SD's AutoencoderKL, whose decoder has no condition: inpainting needs an asymmetric "
                "decoder; pass decoder= an AsymmetricAutoencoderKL folder or an asymmetric decoder checkpoint"
            )
        model = read_vae(path, condition=condition, variant=variant, encoder=False)
        assert isinstance(model.spec, AutoencoderSpec)
        return model.spec, model.weights()
    from . import convert, infer

    ckpt = checkpoint.open_checkpoint(path)
    if convert.KEY_VERSION in ckpt.metadata:
        meta = convert.read_metadata(path)
        spec = meta.spec if isinstance(meta.spec, AutoencoderSpec) else meta.decoder
        if spec is None:
            raise ConfigError(f"{path} is a converted {meta.kind} model without a decoder")
        if condition and not spec.decoder.conditional:
            raise ConfigError(f"{path} holds a decoder without condition; inpainting needs one with condition")
        return spec, ckpt.tensors()
    weights = ckpt.tensors()
    found = infer.infer_config(weights, "decoder" if condition else "decoder_wocondition", os.fspath(path),
                               announce=True)
    assert isinstance(found.spec, AutoencoderSpec)
    return found.spec, weights


@dataclass
class PipelineParts:
    """What a pipeline is built from, read from a diffusers folder (and a decoder source)."""

    spec: DiffusionSpec
    weights: dict[str, np.ndarray]
    decoder_spec: AutoencoderSpec
    decoder_weights: Mapping[str, Any]
    tokenizer: Any
    sources: dict[str, str]


def pipeline_parts(path: PathLike, *, kind: Optional[str] = None, decoder: Optional[PathLike] = None,
                   vocab: Optional[PathLike] = None, variant: Optional[str] = None) -> PipelineParts:
    """Read a pipeline folder; ``kind`` (``inpaint`` / ``txt2img`` / None for either) is checked.

    The decoder is ``decoder`` (see :func:`read_decoder`), else the folder's own VAE: an
    AsymmetricAutoencoderKL serves both kinds; SD's AutoencoderKL only text-to-image.
    """
    model = read_pipeline(path, variant=variant)
    spec = model.spec
    assert isinstance(spec, DiffusionSpec)
    if kind is not None and spec.kind != kind:
        have = "an inpainting (9-channel)" if spec.kind == "inpaint" else "a text-to-image (4-channel)"
        want = "an inpainting" if kind == "inpaint" else "a text-to-image"
        raise DiffusersError(f"{path} holds {have} model, not {want} one")
    condition = spec.kind == "inpaint"
    dspec, dweights = read_decoder(decoder if decoder is not None else path, condition=condition, variant=variant)
    tok = _tokenizer(Path(path), vocab)
    return PipelineParts(spec, model.weights(), dspec, dweights, tok,
                         {"diffusion": os.fspath(path), "decoder": os.fspath(decoder if decoder is not None else path)})


def load_diffusers(path: PathLike, decoder: Optional[PathLike] = None, *, vocab: Optional[PathLike] = None,
                   precision: str = "auto", variant: Optional[str] = None) -> Any:
    """Whatever a diffusers folder holds, ready to run.

    A pipeline folder (``model_index.json``) gives an :class:`~asymvq.InpaintPipeline` (9-channel UNet)
    or a :class:`~asymvq.Txt2ImgPipeline` (4-channel UNet), with ``decoder`` as in their
    ``from_diffusers``; an ``AutoencoderKL`` / ``AsymmetricAutoencoderKL`` folder gives an
    :class:`~asymvq.Autoencoder` (encoder and decoder).
    """
    folder = Path(path)
    if not folder.is_dir():
        raise DiffusersError(f"{folder} is not a folder (a diffusers save_pretrained folder was expected)")
    _refuse_lora(folder)
    if (folder / "model_index.json").is_file():
        from ..pipelines import InpaintPipeline, Txt2ImgPipeline

        p = pipeline_parts(folder, decoder=decoder, vocab=vocab, variant=variant)
        cls = InpaintPipeline if p.spec.kind == "inpaint" else Txt2ImgPipeline
        return cls._build(p.spec, p.decoder_spec, p.weights, p.decoder_weights, p.tokenizer, precision, p.sources,
                          p.spec, p.decoder_spec)
    if (folder / "config.json").is_file():
        cls_name = _read_json(folder / "config.json").get("_class_name")
        if cls_name in _VAE_CLASSES:
            if decoder is not None or vocab is not None:
                raise ValueError("decoder= and vocab= apply to pipeline folders, not to a VAE folder")
            from ..autoencoder import Autoencoder

            return Autoencoder.from_diffusers(folder, precision=precision, variant=variant)
        raise DiffusersError(f"{folder} holds one {cls_name or 'unknown'} component: asymvq loads whole SD 1.x "
                             f"pipeline folders (model_index.json) and {' / '.join(_VAE_CLASSES)} folders")
    raise DiffusersError(f"{folder}: neither model_index.json nor config.json: not a diffusers folder")
