"""The KL autoencoders: SD's encoder, SD's decoder and the Asymmetric VQGAN decoders (C core).

:class:`Autoencoder` wraps one C model holding an encoder, a decoder or both (SPEC §3, §4):

* ``encode`` / ``posterior``: SD's KL encoder + ``quant_conv`` -> the posterior mean and log-variance
  (clamped to [-30, 20]); ``encode`` returns the mode, or a sample ``mean + exp(logvar / 2) * noise``.
* ``decode``: ``post_quant_conv`` + the decoder.  With the conditional asymmetric decoder
  (``autoencoder_kl_32x32x4{,_large,_large2}.yaml``), ``image`` and ``mask`` drive the condition
  encoder and the merges; the ``_wocondition`` decoders and SD's decoder take the latent only.

Conventions: arrays are NCHW float32; images in [-1, 1]; masks [B, 1, H, W] with values exactly 0 or 1,
**1 = the hole** (the region to repaint), as in the original; latents are *unscaled* (the pipelines
multiply by 0.18215 themselves).  H and W must be multiples of 8 (the latent is H/8 x W/8).

Non-finite inputs (NaN or Inf in the image, latent, mask or noise) raise ``ValueError``: a single one
spreads through every GroupNorm of the network, so the output would be all NaN.

Tiled decoding (``decode(..., tile=...)``) bounds the activation memory of large images: the latent is
cut into overlapping square tiles, each decoded alone (one plan serves every tile), and the tiles are
blended with weights that ramp linearly across each overlap.  The conditional branch is tiled the same
way: each tile gets the image and mask crop of its own pixels (8 x its latent window), so the mask's
nearest down-sampling picks the same samples as in the whole image.  Tiling is an approximation: the
mid-block attention and every GroupNorm see one tile instead of the whole image.

Banded decoding (``decode(..., banded=True)``, the default above :data:`BANDED_MIN_PIXELS` pixels) is
exact: the C decoder runs layer by layer over bands of image rows, each 3x3 conv reading its band plus
one row of halo, with every GroupNorm's statistics taken over the whole image first (two passes).  It
returns the whole decode's result up to float rounding (measured <= 3e-6 relative in fp32) while the
normalised, upsampled and condition tensors exist one band at a time; only each resnet block's input
and its first conv's output are held at full size.  The band height comes from a budget of
``AVQ_AE_BAND_BUDGET_BYTES`` (128 MiB) for one band's conv input and output, at least 16 rows;
``band_rows`` fixes it (tests).

Spilling (``decode(..., memory_budget=..., spill_dir=...)``, banded only) bounds what stays resident
beyond that: when the banded plan's activation arena exceeds ``memory_budget`` bytes (by default
:data:`SPILL_MIN_BYTES`), the arena is an unlinked temporary file in ``spill_dir`` (by default
``tempfile.gettempdir()``) mapped into the process, and each band loop drops the rows it is done with
from the process, so a few bands of each whole tensor are resident at a time while the rest lives in
the page cache, which the kernel writes to disk and reclaims as memory runs short.  The result is
bitwise the unspilled banded one (same kernels, same order).  The few passes that read a whole tensor
(GroupNorm statistics, the condition's F3 from F2) run with a thread that drops their pages behind
them every 2 ms.  The band scratch (up to 128 MiB, see above) stays resident.

Plans and threads follow the protocol of every model (see :mod:`asymvq.unet`): at most four plans
cached (one per task and image size), calls from several threads serialised.
"""

from __future__ import annotations

import errno
import os
import tempfile
from dataclasses import dataclass
from typing import Any, Literal, Mapping, Union

import numpy as np

from . import _core, checkpoint, tables
from . import config as _config
from .config import AutoencoderSpec, DiffusionSpec, Spec
from .precision import resolve_precision

__all__ = ["Autoencoder", "Parts", "FIRST_STAGE_PREFIX", "SPILL_MIN_BYTES"]

#: Key prefix of the first stage inside SD checkpoints.
FIRST_STAGE_PREFIX = "first_stage_model."

Parts = Literal["auto", "both", "encoder", "decoder"]
PathLike = Union[str, "os.PathLike[str]"]
ConfigLike = Union[PathLike, Spec, None]
WeightsLike = Union[PathLike, Mapping[str, Any]]


@dataclass(frozen=True)
class _Part:
    """One part of the model: the autoencoder spec that describes it and its key prefix."""

    spec: AutoencoderSpec
    prefix: str


def _candidates(config: ConfigLike, weights: WeightsLike) -> tuple[_Part | None, _Part | None]:
    """(encoder, decoder) the config (or a converted file's metadata) can describe."""
    if config is None:
        if isinstance(weights, Mapping):
            raise ValueError("config is None: weights must then be the path of a converted .safetensors file")
        from .convert import read_metadata

        meta = read_metadata(weights)
        if isinstance(meta.spec, DiffusionSpec):
            # The converter keeps the first-stage encoder of inpainting models and no SD decoder.
            enc = _Part(meta.spec.first_stage, FIRST_STAGE_PREFIX) if meta.spec.kind == "inpaint" else None
            dec = _Part(meta.decoder, "") if meta.decoder is not None else None
            return enc, dec
        return None, _Part(meta.spec, "")
    spec = config if isinstance(config, (AutoencoderSpec, DiffusionSpec)) else _config.load(config)
    if isinstance(spec, DiffusionSpec):
        # SD's first stage: the KL encoder and SD's vanilla decoder (SPEC §3.5, §4.3).
        part = _Part(spec.first_stage, FIRST_STAGE_PREFIX)
        return part, part
    return _Part(spec, ""), _Part(spec, "")


def _present(weights: Mapping[str, Any], prefix: str) -> bool:
    return any(name.startswith(prefix) for name in weights)


def _choose(
    parts: str, enc: _Part | None, dec: _Part | None, weights: Mapping[str, Any]
) -> tuple[_Part | None, _Part | None]:
    if parts not in ("auto", "both", "encoder", "decoder"):
        raise ValueError(f"parts must be 'auto', 'both', 'encoder' or 'decoder', got {parts!r}")
    if parts == "auto":
        use_enc = enc is not None and _present(weights, enc.prefix + "encoder.")
        use_dec = dec is not None and _present(weights, dec.prefix + "decoder.")
        if use_enc or use_dec:
            return (enc if use_enc else None), (dec if use_dec else None)
        parts = "both" if enc is not None and dec is not None else ("encoder" if enc is not None else "decoder")
    want_enc, want_dec = parts in ("both", "encoder"), parts in ("both", "decoder")
    if want_enc and enc is None:
        raise ValueError("this config / converted file describes no encoder (a converted decoder file has none)")
    if want_dec and dec is None:
        raise ValueError("this config / converted file describes no decoder")
    return (enc if want_enc else None), (dec if want_dec else None)


def _weight_array(value: Any) -> Any:
    """A C-contiguous, aligned array the C loader accepts (float32, or bf16 bits as uint16)."""
    a = np.asarray(value)
    if a.dtype.kind == "f" and a.dtype != np.float32:
        return np.require(a, dtype=np.float32, requirements=["C", "A"])  # float16 / float64 widened
    if a.dtype == np.float32 or (a.dtype.kind == "u" and a.dtype.itemsize == 2):
        return np.require(a, requirements=["C", "A"])
    return a  # the C loader names the bad dtype


def _needed(enc: _Part | None, dec: _Part | None) -> list[str]:
    names: list[str] = []
    if enc is not None:
        names += tables.vae_encoder_tensors(enc.spec, prefix=enc.prefix)
    if dec is not None:
        names += tables.decoder_tensors(dec.spec, prefix=dec.prefix)
    return names


def _encoder_config(part: _Part) -> dict[str, Any]:
    e = part.spec.encoder
    return {
        "in_channels": e.in_channels,
        "ch": e.ch,
        "ch_mult": list(e.ch_mult),
        "num_res_blocks": e.num_res_blocks,
        "z_channels": e.z_channels,
        "embed_dim": part.spec.embed_dim,
        "prefix": part.prefix,
    }


def _decoder_config(part: _Part) -> dict[str, Any]:
    d = part.spec.decoder
    return {
        "embed_dim": part.spec.embed_dim,
        "z_channels": d.z_channels,
        "widths": list(d.widths),
        "blocks_per_level": d.blocks_per_level,
        "out_channels": d.out_channels,
        "conditional": d.conditional,
        "cond_channels": list(d.cond_channels),
        "prefix": part.prefix,
    }


# --------------------------------------------------------------------------------------------------
# Input checks


def _finite(a: np.ndarray, name: str) -> None:
    if not np.isfinite(a).all():
        bad = int(a.size - np.count_nonzero(np.isfinite(a)))
        raise ValueError(f"{name} contains {bad} NaN or Inf value(s); inputs must be finite")


def _float32(x: Any, name: str) -> np.ndarray:
    """``x`` as a C-contiguous float32 array (shapes are the binding's to check)."""
    a = np.asarray(x)
    if a.dtype.kind not in "fiub":
        raise TypeError(f"{name} must be a numeric array, got dtype {a.dtype}")
    return np.ascontiguousarray(a, dtype=np.float32)


# --------------------------------------------------------------------------------------------------
# Tiling


def _starts(n: int, tile: int, overlap: int) -> list[int]:
    """Tile starts covering [0, n) with tiles of ``tile`` (the last one flush with the end)."""
    if n <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, n - tile, stride))
    return starts + [n - tile]


def _ramp(starts: list[int], index: int, size: int, scale: int) -> np.ndarray:
    """Blend weights of one tile along one axis (image pixels): linear ramps across its overlaps."""
    w = np.ones(size * scale, dtype=np.float64)
    s = starts[index]
    if index > 0:
        ov = (starts[index - 1] + size - s) * scale
        w[:ov] = np.minimum(w[:ov], (np.arange(ov) + 0.5) / ov)
    if index + 1 < len(starts):
        ov = (s + size - starts[index + 1]) * scale
        w[size * scale - ov :] = np.minimum(w[size * scale - ov :], (ov - np.arange(ov) - 0.5) / ov)
    return w


#: ``decode(banded=None)`` decodes in row bands above this many image pixels (H x W).  Chosen from
#: measurements (README, "Large images"): at 512 x 512 a banded run is as fast as a whole one within
#: the noise and holds less (0.54 vs 0.89 GiB of arena, base decoder, fp32; 0.58 vs 0.95 GiB with the
#: 2x decoder in bf16, which keeps a whole inpainting within the memory targets of issue 17), so the
#: pipelines' usual 512 x 512 is banded, at the cost of a plan that builds a few seconds slower; the
#: memory saved grows with the image (2.2 vs 3.5 GiB at 1024 x 1024).
BANDED_MIN_PIXELS = 256 * 256

#: ``decode(memory_budget=None)`` spills a banded decode's arena to a file above this many bytes
#: (4 GiB): the base decoder at 2048 x 2048 in bf16 (4.3 GiB of arena) and anything larger; below it
#: the arena stays in memory, where it is as fast and costs no disk traffic (README, "Decode sizes
#: and memory").
SPILL_MIN_BYTES = 4 << 30


def _in_memory_fs(path: str) -> bool:
    """True when ``path`` is on tmpfs / ramfs (Linux ``/proc/self/mounts``): spilling there bounds nothing."""
    try:
        with open("/proc/self/mounts", encoding="utf-8", errors="replace") as f:
            mounts = [line.split()[1:3] for line in f if len(line.split()) >= 3]
    except OSError:
        return False
    real = os.path.realpath(path)
    best, fstype = "", ""
    for point, kind in mounts:
        point = point.replace("\\040", " ")
        if (real == point or real.startswith(point.rstrip("/") + "/")) and len(point) >= len(best):
            best, fstype = point, kind
    return fstype in ("tmpfs", "ramfs")


def _spill_dir(spill_dir: Any) -> str:
    """The checked directory ``spill_dir`` names (``OSError`` subclasses name the problem)."""
    try:
        path = os.fspath(spill_dir)
    except TypeError:
        raise ValueError(f"spill_dir must be a path (str or os.PathLike), got {spill_dir!r}") from None
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if not os.path.exists(path):
        raise FileNotFoundError(errno.ENOENT, "spill_dir does not exist", path)
    if not os.path.isdir(path):
        raise NotADirectoryError(errno.ENOTDIR, "spill_dir is not a directory", path)
    if not os.access(path, os.W_OK | os.X_OK):
        raise PermissionError(errno.EACCES, "spill_dir is not writable", path)
    return path


class Autoencoder:
    """SD's KL encoder and an SD / asymmetric decoder on the C core (see the module docs).

    Build with :meth:`from_config`.  Thread-safe: calls on one object are serialised.
    """

    def __init__(
        self,
        encoder: _Part | None,
        decoder: _Part | None,
        weights: Mapping[str, Any],
        precision: str = "fp32",
    ) -> None:
        if encoder is None and decoder is None:
            raise ValueError("an Autoencoder needs an encoder, a decoder or both")
        precision = resolve_precision(precision)
        needed = {name: _weight_array(weights[name]) for name in _needed(encoder, decoder) if name in weights}
        self._core = tables.build_model(
            lambda: _core.Autoencoder(
                needed,
                encoder=_encoder_config(encoder) if encoder is not None else None,
                decoder=_decoder_config(decoder) if decoder is not None else None,
                precision=precision,
            ),
            needed,
        )
        self._encoder = encoder
        self._decoder = decoder

    @classmethod
    def from_config(
        cls,
        config: ConfigLike,
        weights: WeightsLike,
        precision: str = "fp32",
        parts: Parts = "auto",
    ) -> "Autoencoder":
        """Build from an original config and checkpoint, or from a converted file.

        ``config``: an autoencoder YAML (keys ``encoder.*``, ``quant_conv.*``, ``decoder.*``,
        ``post_quant_conv.*``), a diffusion YAML (its first stage, keys under ``first_stage_model.``;
        the decoder is then SD's vanilla decoder), a parsed :mod:`asymvq.config` spec, or None when
        ``weights`` is a file written by ``python -m asymvq convert`` (its metadata holds the config;
        an inpainting file gives SD's encoder and, with ``--decoder-config``, the asymmetric decoder).
        ``weights``: a ``.ckpt`` / ``.safetensors`` path or a dict name -> array (float32, float16 or
        bf16 bits). ``precision``: ``"fp32"``, ``"bf16"`` (weights and activations) or ``"auto"`` (bf16
        where the CPU has it natively, see :mod:`asymvq.precision`; bf16 without AVX-512 is a RuntimeError).
        ``parts``: ``"both"``, ``"encoder"``, ``"decoder"``, or ``"auto"``: the parts whose tensors the
        weights contain (both when they contain neither, so that the error lists what is missing).

        Missing or mis-shaped tensors raise ``ValueError`` listing every problem at once.
        """
        precision = resolve_precision(precision)  # before any file is read
        enc, dec = _candidates(config, weights)
        tensors = checkpoint.load(weights) if not isinstance(weights, Mapping) else weights
        enc, dec = _choose(parts, enc, dec, tensors)
        return cls(enc, dec, tensors, precision)

    # ---- diffusers folders (asymvq.diffusers_io) ----

    @classmethod
    def from_diffusers(
        cls,
        path: PathLike,
        precision: str = "fp32",
        parts: Parts = "both",
        condition: bool = True,
        variant: str | None = None,
    ) -> "Autoencoder":
        """Build from a diffusers ``AutoencoderKL`` or ``AsymmetricAutoencoderKL`` folder (``config.json``
        and ``diffusion_pytorch_model.safetensors`` / ``.bin``), or a pipeline folder's ``vae/``.

        ``AutoencoderKL``: SD's encoder and SD's decoder (no condition).  ``AsymmetricAutoencoderKL``:
        SD's encoder and the asymmetric decoder its config describes (base, 1.5x or 2x; other layouts are
        refused), with condition unless ``condition=False``.  ``parts``: ``"both"``, ``"encoder"`` or
        ``"decoder"``.  ``variant`` picks weight files such as ``*.fp16.safetensors``.
        """
        from .diffusers_io import read_vae

        if parts not in ("both", "encoder", "decoder"):
            raise ValueError(f"parts must be 'both', 'encoder' or 'decoder', got {parts!r}")
        model = read_vae(
            path, condition=condition, variant=variant, encoder=parts != "decoder", decoder=parts != "encoder"
        )
        assert isinstance(model.spec, AutoencoderSpec)
        return cls.from_config(model.spec, model.weights(), precision, parts)

    # ---- properties ------------------------------------------------------------------------------

    @property
    def precision(self) -> str:
        """``"fp32"`` or ``"bf16"``."""
        return str(self._core.precision)

    @property
    def has_encoder(self) -> bool:
        return self._encoder is not None

    @property
    def has_decoder(self) -> bool:
        return self._decoder is not None

    @property
    def conditional(self) -> bool:
        """Whether the decoder takes ``image`` and ``mask`` (the asymmetric decoders with condition)."""
        return self._decoder is not None and self._decoder.spec.decoder.conditional

    @property
    def encoder_spec(self) -> AutoencoderSpec | None:
        return self._encoder.spec if self._encoder is not None else None

    @property
    def decoder_spec(self) -> AutoencoderSpec | None:
        return self._decoder.spec if self._decoder is not None else None

    @property
    def latent_channels(self) -> int:
        part = self._encoder or self._decoder
        assert part is not None
        return part.spec.embed_dim

    @property
    def size_multiple(self) -> int:
        """Image size / latent size (8 for every SD 1.x autoencoder): image sizes are multiples of it."""
        part = self._decoder or self._encoder
        assert part is not None
        return 2 ** (len(part.spec.encoder.ch_mult) - 1)

    @property
    def factor(self) -> int:
        """:attr:`size_multiple` (the image / latent scale factor), by its older name."""
        return self.size_multiple

    @property
    def num_parameters(self) -> int:
        """Parameters of the loaded parts (the dead ``up_layers`` and unused condition encoders excluded)."""
        return int(self._core.num_parameters)

    @property
    def memory_bytes(self) -> int:
        """Activation memory (arena + scratchpad) of the cached plans."""
        return int(self._core.memory_bytes)

    @property
    def plans(self) -> list[dict[str, Any]]:
        """The cached plans, least recently used first: ``task`` (``"encode"``, ``"decode"`` or
        ``"decode_cond"``), ``batch``, ``height``, ``width`` (of the image), ``bytes``
        (= ``arena_bytes`` + ``scratch_bytes``), ``steps``."""
        return list(self._core.plans())

    def clear_plans(self) -> None:
        """Free the cached plans and their activation memory (rebuilt on the next call)."""
        self._core.clear_plans()

    def __repr__(self) -> str:
        parts = []
        if self._encoder is not None:
            parts.append("encoder")
        if self._decoder is not None:
            d = self._decoder.spec.decoder
            kind = "SD" if self._decoder.prefix == FIRST_STAGE_PREFIX else d.variant
            parts.append(f"decoder={kind}{'' if d.conditional else ' (no condition)'}")
        return f"Autoencoder({', '.join(parts)}, precision={self.precision!r}, parameters={self.num_parameters:,})"

    # ---- encoder ---------------------------------------------------------------------------------

    def _image_for_encoder(self, image: Any) -> np.ndarray:
        if self._encoder is None:
            raise ValueError("this Autoencoder has no encoder (build it with parts='encoder' or 'both')")
        x = _float32(image, "image")
        self._core.check_encode(x)  # the contract (shape, size multiple) is the binding's
        _finite(x, "image")
        return x

    def posterior(self, image: Any) -> tuple[np.ndarray, np.ndarray]:
        """(mean, logvar) of the posterior for ``image`` [B, 3, H, W] in [-1, 1]; logvar clamped to [-30, 20]."""
        mean, logvar = self._core.encode(self._image_for_encoder(image))
        return mean, logvar

    def encode(
        self, image: Any, sample: bool = False, noise: Any = None, seed: int | None = None, rng: Any = "numpy"
    ) -> np.ndarray:
        """The (unscaled) latent of ``image`` [B, 3, H, W]: [B, 4, H/8, W/8].

        ``sample=False``: the posterior mode (its mean).  ``sample=True``: ``mean + exp(logvar / 2) * noise``
        (what the original's ``get_first_stage_encoding`` uses before the 0.18215 scale), with ``noise``
        given (the latent's shape) or drawn from ``rng`` (:mod:`asymvq.rng`): ``"numpy"`` (the default:
        ``numpy.random.RandomState(seed).standard_normal``), ``"torch-cpu"`` with ``seed`` (the original's
        ``torch.randn(mean.shape)`` on a CPU generator seeded so), or an :class:`asymvq.rng.Generator`
        (one draw of the latent's shape; ``seed`` not given).
        """
        x = self._image_for_encoder(image)
        if not sample:
            if noise is not None or seed is not None:
                raise ValueError("noise and seed apply only with sample=True")
            return self._core.encode(x)[0]
        f = 2 ** (len(self._encoder.spec.encoder.ch_mult) - 1)  # type: ignore[union-attr]
        shape = (x.shape[0], self.latent_channels, x.shape[2] // f, x.shape[3] // f)
        if noise is None:
            from .rng import as_generator

            if isinstance(rng, str) and rng == "numpy":
                noise = np.random.RandomState(seed).standard_normal(shape).astype(np.float32)
            else:
                noise = as_generator(rng, seed).randn(shape)
        elif seed is not None or not (isinstance(rng, str) and rng == "numpy"):
            raise ValueError("give noise, or seed / rng to draw it, not both")
        n = _float32(noise, "noise")
        self._core.check_encode(x, n)
        _finite(n, "noise")
        return self._core.encode(x, n)[2]

    # ---- decoder ---------------------------------------------------------------------------------

    def decode(
        self,
        latent: Any,
        image: Any = None,
        mask: Any = None,
        tile: int | None = None,
        overlap: int | None = None,
        banded: bool | None = None,
        band_rows: int | None = None,
        memory_budget: int | None = None,
        spill_dir: str | os.PathLike[str] | None = None,
    ) -> np.ndarray:
        """The image [B, 3, H, W] (about [-1, 1]) for an unscaled ``latent`` [B, 4, H/8, W/8].

        Conditional decoder: pass ``image`` [B, 3, H, W] (the full, unmasked image) and ``mask``
        [B, 1, H, W] (1 = hole) together, or neither (then no merge happens, which equals an all-ones
        mask).  Decoders without condition take neither.  ``tile`` (image pixels, a multiple of 8)
        decodes in overlapping tiles of at most ``tile`` x ``tile`` pixels; ``overlap`` (image pixels,
        default ``tile // 4`` rounded down to a multiple of 8) is how much neighbouring tiles share.

        ``banded``: True decodes exactly in row bands (the same result as the whole decode up to
        float rounding, in bounded memory; see the module docstring), False the whole image at once,
        None (default) banded when H x W > :data:`BANDED_MIN_PIXELS` and no ``tile`` is given.
        ``band_rows`` (>= 1, banded only) fixes the rows per band at every resolution instead of the
        memory budget's choice.  ``banded=True`` with ``tile`` is a ``ValueError``: they are two
        different ways of bounding memory, the banded one exact.

        ``memory_budget`` (bytes, >= 1): the activation memory the banded decode may keep resident;
        an arena larger than that is an unlinked file in ``spill_dir`` (default
        ``tempfile.gettempdir()``) whose pages are dropped from the process once the bands are done
        with them (module docstring: "Spilling"), with a result bitwise equal to the unspilled one.
        None (default): spill above :data:`SPILL_MIN_BYTES`, into ``spill_dir`` or the temporary
        directory unless that is in memory (tmpfs); with neither option given, a temporary directory
        where no spill file can be made (full, not writable) leaves the arena in memory.  Either
        option implies the banded decode: with ``banded=False`` or ``tile`` it is a ``ValueError``.
        A ``spill_dir`` that is missing, not a directory or not writable raises the matching
        ``OSError``; one in memory (tmpfs) or without room for the arena a ``ValueError`` naming it
        and the size.
        """
        if self._decoder is None:
            raise ValueError("this Autoencoder has no decoder (build it with parts='decoder' or 'both')")
        f = 2 ** (len(self._decoder.spec.decoder.widths) - 1)
        z = _float32(latent, "latent")
        img = None if image is None else _float32(image, "image")
        msk = None if mask is None else _float32(mask, "mask")
        # The contract (shapes, image and mask together, a decoder with condition) is the binding's;
        # what follows is this class's policy: finite values, a binary mask, tiling.
        self._core.check_decode(z, img, msk)
        for name, a in (("latent", z), ("image", img), ("mask", msk)):
            if a is not None:
                _finite(a, name)
        if msk is not None and not np.all((msk == 0) | (msk == 1)):
            raise ValueError("mask values must be exactly 0 or 1 (1 = hole); binarise it first, e.g. mask >= 0.5")
        if banded is not None and not isinstance(banded, (bool, np.bool_)):
            raise ValueError(f"banded must be True, False or None, got {banded!r}")
        if banded and tile is not None:
            raise ValueError(
                "banded=True and tile= cannot be combined: the banded decode is exact and needs no tiles "
                "(pass one of them)"
            )
        if band_rows is not None:
            if isinstance(band_rows, bool) or not isinstance(band_rows, (int, np.integer)) or band_rows < 1:
                raise ValueError(f"band_rows must be an integer >= 1, got {band_rows!r}")
            if banded is False or tile is not None:
                raise ValueError("band_rows applies to the banded decode only (banded=True or None, no tile)")
            banded = True
        if memory_budget is not None or spill_dir is not None:
            if memory_budget is not None and (
                isinstance(memory_budget, bool) or not isinstance(memory_budget, (int, np.integer)) or memory_budget < 1
            ):
                raise ValueError(f"memory_budget must be a number of bytes >= 1, got {memory_budget!r}")
            if banded is False or tile is not None:
                what = "memory_budget" if memory_budget is not None else "spill_dir"
                raise ValueError(
                    f"{what} applies to the banded decode only (banded=True or None, no tile): it spills the "
                    "banded decode's arena, which it reads a few rows at a time; the whole and the tiled decodes "
                    "read every activation at once"
                )
            banded = True
        spill = None if spill_dir is None else _spill_dir(spill_dir)
        if tile is not None:
            return self._decode_tiled(z, img, msk, f, tile, overlap)
        if banded is None:
            banded = z.shape[2] * z.shape[3] * f * f > BANDED_MIN_PIXELS
        if banded:
            # the automatic spilling (no option given) is skipped where the temporary directory is in
            # memory, and a spill file that cannot be made there (full, unwritable) leaves the arena in
            # memory as before; an explicit budget or directory must be kept (C raises naming why)
            automatic = memory_budget is None and spill is None
            if spill is None:
                tmp = tempfile.gettempdir()
                spill = tmp if memory_budget is not None or not _in_memory_fs(tmp) else None
            budget = int(memory_budget) if memory_budget is not None else SPILL_MIN_BYTES
            return self._core.decode(
                z,
                img,
                msk,
                banded=True,
                band_rows=int(band_rows or 0),
                spill_dir=spill,
                memory_budget=budget if spill is not None else 0,
                spill_optional=automatic and spill is not None,
            )
        return self._core.decode(z, img, msk)

    def _decode_tiled(
        self, z: np.ndarray, img: np.ndarray | None, msk: np.ndarray | None, f: int, tile: int, overlap: int | None
    ) -> np.ndarray:
        if isinstance(tile, bool) or not isinstance(tile, (int, np.integer)) or tile < 2 * f or tile % f:
            raise ValueError(
                f"tile must be an integer number of pixels, a multiple of {f} and >= {2 * f}; got {tile!r}"
            )
        if overlap is None:
            overlap = (tile // 4) // f * f
        integer = isinstance(overlap, (int, np.integer)) and not isinstance(overlap, bool)
        if not integer or overlap % f or not 0 <= overlap < tile:
            raise ValueError(f"overlap must be a multiple of {f} in [0, tile), got {overlap!r}")
        t, o = tile // f, overlap // f
        B, _, h, w = z.shape
        th, tw = min(t, h), min(t, w)
        ys, xs = _starts(h, th, o), _starts(w, tw, o)
        out_ch = self._decoder.spec.decoder.out_channels  # type: ignore[union-attr]
        acc = np.zeros((B, out_ch, h * f, w * f), dtype=np.float64)
        total = np.zeros((h * f, w * f), dtype=np.float64)
        for i, y0 in enumerate(ys):
            wy = _ramp(ys, i, th, f)
            for j, x0 in enumerate(xs):
                wx = _ramp(xs, j, tw, f)
                zt = np.ascontiguousarray(z[:, :, y0 : y0 + th, x0 : x0 + tw])
                py, px = slice(y0 * f, (y0 + th) * f), slice(x0 * f, (x0 + tw) * f)
                if img is not None and msk is not None:
                    part = self._core.decode(
                        zt, np.ascontiguousarray(img[:, :, py, px]), np.ascontiguousarray(msk[:, :, py, px])
                    )
                else:
                    part = self._core.decode(zt)
                weight = np.outer(wy, wx)
                acc[:, :, py, px] += part * weight
                total[py, px] += weight
        return (acc / total).astype(np.float32)
