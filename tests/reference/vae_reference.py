"""Test-only PyTorch references for the KL autoencoder family (SPEC §3, §4).

Two independent references for ``asymvq.autoencoder``:

* modules written here from the SPEC text alone (:class:`KLAutoencoder`): the SD encoder, SD's vanilla
  decoder, the asymmetric decoders (condition encoder with the original's *shape-keyed* feature lookup,
  merges before every up level and after the last) and ``Decoder_wocondition`` (= no merges).  Their
  parameter names are the original checkpoint names, so a fixture state dict loads as is;
* diffusers' ``AutoencoderKL`` and ``AsymmetricAutoencoderKL`` (:func:`diffusers_autoencoder`), fed the
  same weights through :func:`to_diffusers` (original names -> diffusers names).

Everything runs in float32 on the CPU.
"""

from __future__ import annotations

import re
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from asymvq.config import AutoencoderSpec, DecoderSpec, EncoderSpec

GROUPS = 32
EPS = 1e-6


def _norm(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(GROUPS, c, eps=EPS)


# --------------------------------------------------------------------------------------------------
# Blocks (SPEC §3.2)


class ResnetBlock(nn.Module):
    """shortcut(x) + conv2(SiLU(GN(conv1(SiLU(GN(x))))))."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.norm1 = _norm(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = _norm(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (self.nin_shortcut(x) if self.nin_shortcut is not None else x) + h


class AttnBlock(nn.Module):
    """Single-head attention over the H*W tokens, 1x1-conv q/k/v/proj_out, scale 1/sqrt(C)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.norm = _norm(c)
        self.q = nn.Conv2d(c, c, 1)
        self.k = nn.Conv2d(c, c, 1)
        self.v = nn.Conv2d(c, c, 1)
        self.proj_out = nn.Conv2d(c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        n = self.norm(x)
        q = self.q(n).reshape(b, c, h * w).transpose(1, 2)  # [B, N, C]
        k = self.k(n).reshape(b, c, h * w)  # [B, C, N]
        v = self.v(n).reshape(b, c, h * w)  # [B, C, N]
        p = torch.softmax(torch.bmm(q, k) * (c**-0.5), dim=2)  # [B, Nq, Nk]
        o = torch.bmm(v, p.transpose(1, 2)).reshape(b, c, h, w)
        return x + self.proj_out(o)


class Downsample(nn.Module):
    """Zero-pad one column right and one row bottom, conv 3x3 stride 2 padding 0."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest x2, conv 3x3 padding 1."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Mid(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(c, c)
        self.attn_1 = AttnBlock(c)
        self.block_2 = ResnetBlock(c, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class Level(nn.Module):
    """One encoder/decoder level: ``block.{b}`` and an optional ``downsample`` / ``upsample``."""

    def __init__(self, cin: int, cout: int, blocks: int, resample: str | None) -> None:
        super().__init__()
        self.block = nn.ModuleList(ResnetBlock(cin if i == 0 else cout, cout) for i in range(blocks))
        if resample == "down":
            self.downsample = Downsample(cout)
        elif resample == "up":
            self.upsample = Upsample(cout)


# --------------------------------------------------------------------------------------------------
# Encoder (SPEC §3.3) and decoders (SPEC §4.3 - §4.6)


class Encoder(nn.Module):
    def __init__(self, spec: EncoderSpec) -> None:
        super().__init__()
        widths = spec.widths
        self.conv_in = nn.Conv2d(spec.in_channels, spec.ch, 3, padding=1)
        cin, levels = spec.ch, []
        for i, w in enumerate(widths):
            levels.append(Level(cin, w, spec.num_res_blocks, "down" if i != len(widths) - 1 else None))
            cin = w
        self.down = nn.ModuleList(levels)
        self.mid = Mid(cin)
        self.norm_out = _norm(cin)
        self.conv_out = nn.Conv2d(cin, 2 * spec.z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            for block in level.block:
                h = block(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class ConditionEncoder(nn.Module):
    """``decoder.encoder``: convs k3, k3, k4s2 x3 with ReLU between; records pre-ReLU outputs by shape."""

    def __init__(self, in_ch: int, c0: int, c1: int, c2: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            [
                nn.Conv2d(in_ch, c0, 3, padding=1),
                nn.Conv2d(c0, c1, 3, padding=1),
                nn.Conv2d(c1, c2, 4, stride=2, padding=1),
                nn.Conv2d(c2, c2, 4, stride=2, padding=1),
                nn.Conv2d(c2, c2, 4, stride=2, padding=1),
            ]
        )

    def forward(self, x: torch.Tensor) -> dict[tuple[int, ...], torch.Tensor]:
        features: dict[tuple[int, ...], torch.Tensor] = {}
        for layer in self.layers:
            x = layer(x)
            features[tuple(x.shape)] = x
            x = F.relu(x)
        return features


class Decoder(nn.Module):
    """SD's decoder (``cond_channels`` None) or an asymmetric one; merges only when image and mask are given."""

    def __init__(self, spec: DecoderSpec, with_condition_encoder: bool) -> None:
        super().__init__()
        w = spec.widths
        top = w[-1]
        self.conv_in = nn.Conv2d(spec.z_channels, top, 3, padding=1)
        self.mid = Mid(top)
        self.up = nn.ModuleList(
            Level(w[i + 1] if i + 1 < len(w) else top, w[i], spec.blocks_per_level, "up" if i != 0 else None)
            for i in range(len(w))
        )
        if with_condition_encoder:
            self.encoder = ConditionEncoder(spec.out_channels, *spec.cond_channels)
        self.norm_out = _norm(w[0])
        self.conv_out = nn.Conv2d(w[0], spec.out_channels, 3, padding=1)

    @staticmethod
    def _merge(h: torch.Tensor, features: dict[tuple[int, ...], torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        m = F.interpolate(mask, size=h.shape[-2:], mode="nearest")
        return h * m + features[tuple(h.shape)] * (1 - m)

    def forward(
        self, z: torch.Tensor, image: torch.Tensor | None = None, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        conditional = image is not None and mask is not None
        if conditional:
            features = self.encoder((1 - mask) * image)
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            if conditional:
                h = self._merge(h, features, mask)
            for block in level.block:
                h = block(h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        if conditional:
            h = h * mask + features[tuple(h.shape)] * (1 - mask)
        return self.conv_out(F.silu(self.norm_out(h)))


class KLAutoencoder(nn.Module):
    """``encoder`` + ``quant_conv`` and/or ``post_quant_conv`` + ``decoder``, original parameter names."""

    def __init__(
        self,
        spec: AutoencoderSpec,
        with_condition_encoder: bool | None = None,
        encoder: bool = True,
        decoder: bool = True,
    ) -> None:
        super().__init__()
        enc, dec = spec.encoder, spec.decoder
        if with_condition_encoder is None:
            with_condition_encoder = dec.conditional
        if encoder:
            self.encoder = Encoder(enc)
            self.quant_conv = nn.Conv2d(2 * enc.z_channels, 2 * spec.embed_dim, 1)
        if decoder:
            self.post_quant_conv = nn.Conv2d(spec.embed_dim, dec.z_channels, 1)
            self.decoder = Decoder(dec, with_condition_encoder)
        self.embed_dim = spec.embed_dim

    @torch.no_grad()
    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, logvar) with logvar clamped to [-30, 20] (SPEC §3.4)."""
        moments = self.quant_conv(self.encoder(x))
        mean, logvar = torch.chunk(moments, 2, dim=1)
        return mean, torch.clamp(logvar, -30.0, 20.0)

    @torch.no_grad()
    def decode(
        self, z: torch.Tensor, image: torch.Tensor | None = None, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(z), image, mask)


def reference_autoencoder(
    spec: AutoencoderSpec,
    state_dict: Mapping[str, torch.Tensor],
    prefix: str = "",
    encoder: bool = True,
    decoder: bool = True,
) -> KLAutoencoder:
    """The SPEC reference with ``state_dict``'s weights (keys under ``prefix``); every parameter must be there."""
    model = KLAutoencoder(spec, with_condition_encoder=spec.decoder.conditional, encoder=encoder, decoder=decoder)
    wanted = model.state_dict()
    tensors = {name: state_dict[prefix + name] for name in wanted if prefix + name in state_dict}
    missing = sorted(set(wanted) - set(tensors))
    if missing:
        raise KeyError(f"reference weights missing: {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    model.load_state_dict(tensors, strict=True)
    return model.eval()


# --------------------------------------------------------------------------------------------------
# diffusers


_RULES: list[tuple[str, str]] = [
    (r"^encoder\.down\.(\d+)\.block\.(\d+)\.", r"encoder.down_blocks.\1.resnets.\2."),
    (r"^encoder\.down\.(\d+)\.downsample\.", r"encoder.down_blocks.\1.downsamplers.0."),
    (r"^(encoder|decoder)\.mid\.block_1\.", r"\1.mid_block.resnets.0."),
    (r"^(encoder|decoder)\.mid\.block_2\.", r"\1.mid_block.resnets.1."),
    (r"^(encoder|decoder)\.mid\.attn_1\.norm\.", r"\1.mid_block.attentions.0.group_norm."),
    (r"^(encoder|decoder)\.mid\.attn_1\.q\.", r"\1.mid_block.attentions.0.to_q."),
    (r"^(encoder|decoder)\.mid\.attn_1\.k\.", r"\1.mid_block.attentions.0.to_k."),
    (r"^(encoder|decoder)\.mid\.attn_1\.v\.", r"\1.mid_block.attentions.0.to_v."),
    (r"^(encoder|decoder)\.mid\.attn_1\.proj_out\.", r"\1.mid_block.attentions.0.to_out.0."),
    (r"^(encoder|decoder)\.norm_out\.", r"\1.conv_norm_out."),
    (r"^decoder\.encoder\.layers\.", r"decoder.condition_encoder.layers."),
    (r"\.nin_shortcut\.", r".conv_shortcut."),
]
_UP = re.compile(r"^decoder\.up\.(\d+)\.(block\.(\d+)|upsample)\.(.*)$")
_DROPPED = ("decoder.up_layers.", "loss.")
_KEPT = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")


def to_diffusers(state_dict: Mapping[str, torch.Tensor], num_levels: int, prefix: str = "") -> dict[str, torch.Tensor]:
    """Original autoencoder keys (under ``prefix``) -> diffusers names; ``up_layers`` and ``loss`` dropped.

    diffusers numbers the decoder's up blocks from the lowest resolution (``up_blocks.0`` = ``up.{n-1}``)
    and stores the attention projections as ``[C, C]`` linears.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if not key.startswith(prefix):
            continue
        name = key[len(prefix) :]
        if name.startswith(_DROPPED) or not name.startswith(_KEPT):
            continue
        up = _UP.match(name)
        if up:
            level = num_levels - 1 - int(up.group(1))
            part = f"resnets.{up.group(3)}" if up.group(3) is not None else "upsamplers.0.conv"
            rest = up.group(4)
            if up.group(3) is None:
                rest = rest[len("conv.") :]
            name = f"decoder.up_blocks.{level}.{part}.{rest}"
        for pattern, repl in _RULES:
            name = re.sub(pattern, repl, name)
        if re.search(r"attentions\.0\.(to_q|to_k|to_v|to_out\.0)\.weight$", name):
            value = value.reshape(value.shape[0], value.shape[1])
        out[name] = value
    return out


def diffusers_autoencoder(
    spec: AutoencoderSpec,
    state_dict: Mapping[str, torch.Tensor],
    prefix: str = "",
    asymmetric: bool | None = None,
    parts: str = "both",
) -> torch.nn.Module:
    """diffusers' ``AsymmetricAutoencoderKL`` (asymmetric decoders) or ``AutoencoderKL`` (SD's VAE) with the weights.

    ``parts``: ``"both"``, or ``"encoder"`` / ``"decoder"`` to load only that part (the other stays on the
    meta device, unusable).
    """
    if asymmetric is None:
        asymmetric = spec.decoder.conditional
    # Built on the meta device (no random initialisation), then given the weights.
    with torch.device("meta"):
        model = _diffusers_model(spec, asymmetric)
    tensors = to_diffusers(state_dict, len(spec.decoder.widths), prefix)
    skip = {"both": (), "encoder": ("decoder.", "post_quant_conv."), "decoder": ("encoder.", "quant_conv.")}[parts]
    wanted = [k for k in model.state_dict() if not k.startswith(skip)]
    missing = sorted(set(wanted) - set(tensors))
    if missing:
        raise KeyError(f"diffusers weights missing after the key mapping: {missing[:5]}")
    model.load_state_dict({k: tensors[k] for k in wanted}, strict=parts == "both", assign=True)
    return model.eval()


def _diffusers_model(spec: AutoencoderSpec, asymmetric: bool) -> torch.nn.Module:
    from diffusers import AsymmetricAutoencoderKL, AutoencoderKL

    enc, dec = spec.encoder, spec.decoder
    n = len(enc.ch_mult)
    if asymmetric:
        model = AsymmetricAutoencoderKL(
            in_channels=enc.in_channels,
            out_channels=dec.out_channels,
            down_block_types=("DownEncoderBlock2D",) * n,
            down_block_out_channels=enc.widths,
            layers_per_down_block=enc.num_res_blocks,
            up_block_types=("UpDecoderBlock2D",) * len(dec.widths),
            up_block_out_channels=dec.widths,
            layers_per_up_block=dec.blocks_per_level - 1,
            latent_channels=spec.embed_dim,
            norm_num_groups=GROUPS,
        )
    else:
        if dec.widths != enc.widths or dec.blocks_per_level != enc.num_res_blocks + 1:
            raise ValueError("diffusers' AutoencoderKL shares widths and depth between encoder and decoder")
        model = AutoencoderKL(
            in_channels=enc.in_channels,
            out_channels=dec.out_channels,
            down_block_types=("DownEncoderBlock2D",) * n,
            up_block_types=("UpDecoderBlock2D",) * n,
            block_out_channels=enc.widths,
            layers_per_block=enc.num_res_blocks,
            latent_channels=spec.embed_dim,
            norm_num_groups=GROUPS,
        )
    return model


@torch.no_grad()
def diffusers_posterior(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    dist = model.encode(x).latent_dist
    return dist.mean, dist.logvar


@torch.no_grad()
def diffusers_decode(
    model: torch.nn.Module, z: torch.Tensor, image: torch.Tensor | None = None, mask: torch.Tensor | None = None
) -> torch.Tensor:
    if image is None:
        return model.decode(z).sample
    return model.decode(z, image=image, mask=mask).sample
