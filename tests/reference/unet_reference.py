"""Test-only PyTorch reference for the UNet: diffusers' ``UNet2DConditionModel`` built from a
:class:`asymvq.config.UNetSpec`, loaded with ldm-layout weights through our own key conversion
(SPEC §2.5's cross-reference, generalised to any number of levels and ResBlocks per level).

The conversion is written here rather than taken from diffusers so that the test does not depend on a
converter that diffusers may move or drop; only renaming happens, every tensor is used exactly once
(``load_state_dict(strict=True)`` proves the mapping is complete).
"""

from __future__ import annotations

import math
import re
import zlib
from typing import Iterable, Mapping

import numpy as np
import torch
from diffusers import UNet2DConditionModel

from asymvq.config import UNetSpec
from asymvq.tables import UNET_PREFIX, unet_tensors

__all__ = ["diffusers_config", "ldm_to_diffusers", "build_reference", "random_unet_weights"]

_RESBLOCK = {
    "in_layers.0": "norm1",
    "in_layers.2": "conv1",
    "emb_layers.1": "time_emb_proj",
    "out_layers.0": "norm2",
    "out_layers.3": "conv2",
    "skip_connection": "conv_shortcut",
}


def _attention_levels(spec: UNetSpec) -> list[bool]:
    """Whether each level (downsample factor 2**level) has spatial transformers."""
    return [2**level in spec.attention_resolutions for level in range(len(spec.channel_mult))]


def diffusers_config(spec: UNetSpec) -> dict:
    """``UNet2DConditionModel`` keyword arguments equivalent to ``spec`` (SD v1: flip_sin_to_cos, shift 0)."""
    attn = _attention_levels(spec)
    widths = [spec.model_channels * m for m in spec.channel_mult]
    if spec.num_head_channels == -1:
        heads: int | tuple[int, ...] = spec.num_heads
    else:
        heads = tuple(w // spec.num_head_channels for w in widths)
    return dict(
        sample_size=None,
        in_channels=spec.in_channels,
        out_channels=spec.out_channels,
        down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attn),
        up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
        mid_block_type="UNetMidBlock2DCrossAttn",
        block_out_channels=tuple(widths),
        layers_per_block=spec.num_res_blocks,
        transformer_layers_per_block=spec.transformer_depth,
        cross_attention_dim=spec.context_dim,
        attention_head_dim=heads,
        norm_num_groups=32,
        norm_eps=1e-5,
        act_fn="silu",
        flip_sin_to_cos=True,
        freq_shift=0,
        use_linear_projection=False,
        center_input_sample=False,
    )


def _resblock_suffix(rest: str) -> str:
    for old, new in _RESBLOCK.items():
        if rest.startswith(old + "."):
            return new + rest[len(old) :]
    raise KeyError(rest)


def _convert_key(name: str, spec: UNetSpec) -> str:
    """One ldm key (without the ``model.diffusion_model.`` prefix) -> its diffusers name."""
    per_level = spec.num_res_blocks + 1
    levels = len(spec.channel_mult)
    fixed = {
        "time_embed.0": "time_embedding.linear_1",
        "time_embed.2": "time_embedding.linear_2",
        "input_blocks.0.0": "conv_in",
        "out.0": "conv_norm_out",
        "out.2": "conv_out",
    }
    for old, new in fixed.items():
        if name.startswith(old + "."):
            return new + name[len(old) :]
    m = re.match(r"input_blocks\.(\d+)\.(\d+)\.(.*)", name)
    if m:
        i, sub, rest = int(m[1]), int(m[2]), m[3]
        level, j = divmod(i - 1, per_level)
        if j == spec.num_res_blocks:  # the level's Downsample
            assert sub == 0 and rest.startswith("op.")
            return f"down_blocks.{level}.downsamplers.0.conv.{rest[3:]}"
        if sub == 0:
            return f"down_blocks.{level}.resnets.{j}.{_resblock_suffix(rest)}"
        return f"down_blocks.{level}.attentions.{j}.{rest}"
    m = re.match(r"middle_block\.(\d)\.(.*)", name)
    if m:
        sub, rest = int(m[1]), m[2]
        if sub == 1:
            return f"mid_block.attentions.0.{rest}"
        return f"mid_block.resnets.{sub // 2}.{_resblock_suffix(rest)}"
    m = re.match(r"output_blocks\.(\d+)\.(\d+)\.(.*)", name)
    if m:
        i, sub, rest = int(m[1]), int(m[2]), m[3]
        k, j = divmod(i, per_level)
        if rest.startswith("conv."):  # the level's Upsample (after the resblock and any transformer)
            return f"up_blocks.{k}.upsamplers.0.conv.{rest[5:]}"
        if sub == 0:
            return f"up_blocks.{k}.resnets.{j}.{_resblock_suffix(rest)}"
        assert k < levels
        return f"up_blocks.{k}.attentions.{j}.{rest}"
    raise KeyError(f"no diffusers name for UNet key {name!r}")


def ldm_to_diffusers(state: Mapping[str, np.ndarray], spec: UNetSpec) -> dict[str, torch.Tensor]:
    """Rename the ``model.diffusion_model.*`` arrays of ``state`` to diffusers' names (as tensors)."""
    out: dict[str, torch.Tensor] = {}
    for name, array in state.items():
        if not name.startswith(UNET_PREFIX):
            continue
        new = _convert_key(name[len(UNET_PREFIX) :], spec)
        assert new not in out, f"two keys map to {new}"
        out[new] = torch.from_numpy(np.asarray(array, dtype=np.float32))
    return out


def random_unet_weights(spec: UNetSpec, seed: int = 0, only: Iterable[str] | None = None) -> dict[str, np.ndarray]:
    """Numerically sane random ldm-layout UNet weights, float32, deterministic per (seed, name).

    Uniform with the spread of tests/fixtures.py's normals: weights std 1/sqrt(fan_in), norm scales in
    [0.9, 1.1], biases std 0.01 (uniform draws are 3x faster than normal ones at 860 M parameters).
    ``only`` restricts the result to these names.
    """
    out: dict[str, np.ndarray] = {}
    wanted = None if only is None else set(only)
    for name, shape in unet_tensors(spec).items():
        if wanted is not None and name not in wanted:
            continue
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        a = rng.random(shape, dtype=np.float32)  # [0, 1)
        if name.endswith(".bias"):
            lo, hi = -0.01 * math.sqrt(3.0), 0.01 * math.sqrt(3.0)
        elif len(shape) == 1:
            lo, hi = 0.9, 1.1
        else:
            bound = math.sqrt(3.0 / math.prod(shape[1:]))
            lo, hi = -bound, bound
        a *= np.float32(hi - lo)
        a += np.float32(lo)
        out[name] = a
    return out


def build_reference(spec: UNetSpec, state: Mapping[str, np.ndarray]) -> UNet2DConditionModel:
    """diffusers' UNet in fp32 eval mode holding ``state`` (ldm names, float32), every tensor used.

    The parameters share memory with the arrays of ``state`` (no copy).
    """
    with torch.device("meta"):  # no random init: every parameter comes from `state`
        model = UNet2DConditionModel(**diffusers_config(spec))
    model.load_state_dict(ldm_to_diffusers(state, spec), strict=True, assign=True)
    return model.eval()


def reference_eps(model: UNet2DConditionModel, x: np.ndarray, t: np.ndarray, context: np.ndarray) -> np.ndarray:
    """eps = model(x, t, context) in fp32 as a NumPy array."""
    with torch.no_grad():
        out = model(torch.from_numpy(x), torch.from_numpy(t), encoder_hidden_states=torch.from_numpy(context))
    return out.sample.numpy()
