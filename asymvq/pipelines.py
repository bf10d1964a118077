"""Pipelines: the original scripts' computations as reusable objects.

:class:`InpaintPipeline` is ``inpaint_st.py`` (SPEC §0.1, §7.1): CLIP text
conditioning, the masked image encoded by SD's KL encoder, DDIM with eta 1 and
classifier-free guidance on the 9-channel UNet, then the asymmetric decoder
that merges the known pixels back in. :class:`Txt2ImgPipeline` is
``txt2img.py``: the 4-channel UNet, DDIM or PLMS, and the decoder without
condition.

Weights are loaded once (memory-mapped, no copy) and plans are built on the
first call for a given size and reused afterwards.

Noise streams (all reproducible from ``seed``):

* start code x_T: ``numpy.random.RandomState(seed).randn(...)`` cast to float32,
  exactly as ``inpaint_st.py`` (txt2img's original draws it from torch's CUDA
  generator, which cannot be reproduced; we use the same numpy rule);
* the posterior sample of the masked-image latent: ``RandomState(seed + 1)``;
* the per-step DDIM noise when eta > 0: the sampler's generator seeded with
  ``seed + 2``.

Each can also be passed in as arrays (``x_T=``, ``posterior_noise=``,
``step_noise=``), which is how parity tests inject a reference's noise.

Thread-safety: a pipeline may be called from several threads, but calls on one
pipeline are serialised by a lock (plans are not reentrant); use one pipeline
per thread for parallel work (weights memory-mapped from the same file are
shared by the OS page cache).
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import numpy as np
from PIL import Image

from . import checkpoint, config as config_mod
from .image import ImageLike, load_pair, to_pil, to_uint8

PathLike = Union[str, os.PathLike]

SCALE_FACTOR = 0.18215
INPAINT_PROMPT = "photograph of a beautiful empty scene, highest quality settings"
TXT2IMG_PROMPT = "a painting of a virus monster playing guitar"

StepCallback = Callable[[int, int, Optional[np.ndarray]], Any]


@dataclass
class PipelineResult:
    """What a pipeline call returns."""

    images: list  # PIL images
    arrays: np.ndarray  # float32 [N, 3, H, W] in [-1, 1], the decoder output
    latents: np.ndarray  # float32 [N, 4, H/8, W/8], the sampler output (scaled)
    seconds: float = 0.0
    steps: int = 0
    timings: dict = field(default_factory=dict)

    @property
    def uint8(self) -> np.ndarray:
        """[N, H, W, 3] uint8, truncated like the original."""
        return to_uint8(self.arrays)


def _nearest_resize(mask: np.ndarray, h: int, w: int) -> np.ndarray:
    """PyTorch's F.interpolate(mode="nearest") index rule (float32 scale)."""
    H, W = mask.shape[-2:]
    sy, sx = np.float32(H) / np.float32(h), np.float32(W) / np.float32(w)
    iy = np.minimum(np.floor(np.arange(h, dtype=np.float32) * sy).astype(np.int64), H - 1)
    ix = np.minimum(np.floor(np.arange(w, dtype=np.float32) * sx).astype(np.int64), W - 1)
    return np.ascontiguousarray(mask[..., iy[:, None], ix[None, :]])


def _randn(seed: int, shape: Sequence[int]) -> np.ndarray:
    return np.random.RandomState(seed).randn(*shape).astype(np.float32)


def _load_weights(path_or_dict: Union[PathLike, Mapping[str, np.ndarray]]) -> Mapping[str, np.ndarray]:
    if isinstance(path_or_dict, Mapping):
        return path_or_dict
    return checkpoint.load(path_or_dict)


class _Progress:
    """A tqdm bar over sampler steps that forwards to a user callback."""

    def __init__(self, total: int, desc: str, enabled: bool, user: Optional[StepCallback]):
        self.user = user
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="step", leave=False)

    def __call__(self, i: int, t: int, x: Optional[np.ndarray] = None) -> Any:
        if self.bar is not None:
            self.bar.update(1)
        if self.user is not None:
            return self.user(i, t, x)
        return None

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class _Base:
    _lock: threading.Lock

    def _sampler(self, kind: str, steps: int, eta: float):
        from .sampler import Sampler

        key = (kind, steps, float(eta))
        s = self._samplers.get(key)
        if s is None:
            s = Sampler(kind=kind, steps=steps, eta=eta, config=self.diffusion_spec)
            self._samplers[key] = s
        return s

    def _denoise(self, x_T, c, uc, scale, sampler, steps, eta, seed, step_noise, progress, callback,
                 c_concat=None) -> np.ndarray:
        """The sampler loop with a progress bar; step noise from ``step_noise`` or ``seed + 2``."""
        smp = self._sampler(sampler, steps, eta)
        bar = _Progress(len(smp.timesteps), "denoise", progress, callback)
        try:
            return smp.sample(self.unet, x_T, c, uc, scale, c_concat=c_concat, noise=step_noise,
                              seed=None if step_noise is not None or eta == 0 else seed + 2, callback=bar)
        finally:
            bar.close()

    def _encode_text(self, prompts: Sequence[str]) -> np.ndarray:
        ids = self.tokenizer(list(prompts))
        return self.text_encoder.encode_ids(ids)


class InpaintPipeline(_Base):
    """inpaint_st.py as an object: ``pipe(image, mask)`` -> :class:`PipelineResult`."""

    def __init__(self, *, diffusion_spec, decoder_spec, text_encoder, unet, encoder, decoder, tokenizer,
                 precision: str, sources: Mapping[str, str]):
        self.diffusion_spec = diffusion_spec
        self.decoder_spec = decoder_spec
        self.text_encoder = text_encoder
        self.unet = unet
        self.encoder = encoder
        self.decoder = decoder
        self.tokenizer = tokenizer
        self.precision = precision
        self.sources = dict(sources)
        self._samplers: dict = {}
        self._lock = threading.Lock()

    @classmethod
    def from_original(cls, config_d: PathLike, ckpt_d: PathLike, config: PathLike, ckpt: PathLike, *,
                      vocab: Optional[PathLike] = None, precision: str = "fp32") -> "InpaintPipeline":
        """From the original files, as inpaint_st's ``--config_d --ckpt_d --config --ckpt``:
        the SD inpainting config/checkpoint and the decoder config/checkpoint: an asymmetric decoder, or
        SD's vanilla decoder (``config`` = the diffusion config or a standard ``AutoencoderKL`` config
        with SD's VAE weights; see :func:`inpaint_decoder_spec`)."""
        from .tokenizer import CLIPTokenizer, find_vocab

        spec_d = config_mod.load(config_d)
        if not isinstance(spec_d, config_mod.DiffusionSpec) or spec_d.kind != "inpaint":
            raise config_mod.ConfigError(f"{config_d}: --config_d must be an inpainting diffusion config "
                                         "(LatentInpaintDiffusion), e.g. v1-inpainting-inference.yaml")
        tok = CLIPTokenizer.from_file(find_vocab(vocab))
        wd = _load_weights(ckpt_d)
        same = not isinstance(ckpt, Mapping) and not isinstance(ckpt_d, Mapping) and \
            os.path.abspath(ckpt) == os.path.abspath(ckpt_d)
        wc = wd if same else _load_weights(ckpt)  # the vanilla decoder often lives in the SD checkpoint
        spec_c = inpaint_decoder_spec(config_mod.load(config), wc, config)
        return cls._build(spec_d, spec_c, wd, wc, tok, precision,
                          {"diffusion": os.fspath(ckpt_d), "decoder": os.fspath(ckpt)}, config_d, spec_c)

    @classmethod
    def from_file(cls, path: PathLike, *, decoder: Optional[PathLike] = None, vocab: Optional[PathLike] = None,
                  precision: str = "fp32") -> "InpaintPipeline":
        """From a file written by ``python -m asymvq convert`` holding the SD inpainting model
        and (with ``--decoder-config/--decoder-ckpt``) the decoder; or the decoder in its
        own converted file ``decoder=``."""
        spec_d, spec_c, wd, wc, tok, src = _from_converted(path, decoder, vocab)
        if spec_d.kind != "inpaint":
            raise config_mod.ConfigError(f"{path} holds a {spec_d.kind} model, not an inpainting one")
        return cls._build(spec_d, spec_c, wd, wc, tok, precision, src, spec_d, spec_c)

    @classmethod
    def _build(cls, spec_d, spec_c, wd, wc, tok, precision, sources, cfg_d, cfg_c) -> "InpaintPipeline":
        from .autoencoder import Autoencoder
        from .text_encoder import TextEncoder
        from .unet import UNet

        te = TextEncoder.from_config(cfg_d, wd, precision=precision)
        un = UNet.from_config(cfg_d, wd, precision=precision)
        enc = Autoencoder.from_config(cfg_d, wd, precision=precision)
        dec = Autoencoder.from_config(cfg_c, wc, precision=precision, parts="decoder")
        if isinstance(spec_c, config_mod.DiffusionSpec):  # SD's vanilla decoder, first stage of that config
            spec_c = spec_c.first_stage
        return cls(diffusion_spec=spec_d, decoder_spec=spec_c, text_encoder=te, unet=un, encoder=enc, decoder=dec,
                   tokenizer=tok, precision=precision, sources=sources)

    def __repr__(self) -> str:
        d = self.decoder_spec.decoder
        return (f"InpaintPipeline(unet={self.unet!r}, decoder={d.variant}{'' if d.conditional else ' (no condition)'}"
                f" ch={d.ch} "
                f"blocks/level={d.blocks_per_level}, precision={self.precision!r}, "
                f"diffusion={self.sources.get('diffusion')!r}, decoder_weights={self.sources.get('decoder')!r})")

    def __call__(self, image: Union[ImageLike, np.ndarray], mask: Union[ImageLike, np.ndarray], *,
                 prompt: str = INPAINT_PROMPT, negative_prompt: str = "", seed: int = 0, scale: float = 7.5,
                 steps: int = 50, eta: float = 1.0, sampler: str = "ddim", x_T: Optional[np.ndarray] = None,
                 posterior_noise: Optional[np.ndarray] = None, step_noise: Optional[np.ndarray] = None,
                 resize: bool = True, round: bool = False, progress: bool = True,
                 callback: Optional[StepCallback] = None) -> PipelineResult:
        """Inpaints ``image`` where ``mask`` is white (1).

        ``image``/``mask``: paths, PIL images, uint8 arrays, or float arrays already
        prepared ([1, 3, H, W] in [-1, 1] and [1, 1, H, W] in {0, 1}). PIL/paths are
        resized as inpaint_st does (≤ 640 px, multiples of 64; the mask too).
        """
        t0 = time.perf_counter()
        img, msk = self._prepare(image, mask, resize)
        H, W = img.shape[-2:]
        h, w = H // 8, W // 8
        timings = {}
        with self._lock:
            t = time.perf_counter()
            c = self._encode_text([prompt])
            uc = self._encode_text([negative_prompt])
            timings["text"] = time.perf_counter() - t

            t = time.perf_counter()
            masked = img * (msk < 0.5).astype(np.float32)
            eps_post = posterior_noise if posterior_noise is not None else _randn(seed + 1, (1, 4, h, w))
            z_mi = SCALE_FACTOR * self.encoder.encode(masked, sample=True, noise=eps_post)
            c_cat = np.concatenate([_nearest_resize(msk, h, w), z_mi], axis=1).astype(np.float32)
            timings["encode"] = time.perf_counter() - t

            x_T = x_T if x_T is not None else _randn(seed, (1, 4, h, w))
            t = time.perf_counter()
            x0 = self._denoise(x_T, c, uc, scale, sampler, steps, eta, seed, step_noise, progress, callback,
                               c_concat=c_cat)
            timings["sample"] = time.perf_counter() - t

            t = time.perf_counter()
            if self.decoder.conditional:
                out = self.decoder.decode(x0 / SCALE_FACTOR, image=img, mask=msk)
            else:  # SD's vanilla decoder (or one without condition): the latent alone, nothing merged back
                out = self.decoder.decode(x0 / SCALE_FACTOR)
            timings["decode"] = time.perf_counter() - t
        return PipelineResult(to_pil(out, round=round), out, x0, time.perf_counter() - t0, steps, timings)

    @staticmethod
    def _prepare(image, mask, resize: bool):
        if isinstance(image, np.ndarray) and image.dtype == np.float32:
            img = np.ascontiguousarray(image, dtype=np.float32)
            msk = np.ascontiguousarray(mask, dtype=np.float32)
            if img.ndim != 4 or img.shape[:2] != (1, 3):
                raise ValueError(f"image array must be [1, 3, H, W] float32 in [-1, 1], got {img.shape}")
            if msk.shape != (1, 1) + img.shape[2:]:
                raise ValueError(f"mask array must be [1, 1, {img.shape[2]}, {img.shape[3]}], got {msk.shape}")
        else:
            img, msk, _ = load_pair(image, mask, resize=resize)
        H, W = img.shape[-2:]
        if H % 64 or W % 64:
            raise ValueError(f"image size {W}x{H} must be a multiple of 64 (the UNet needs latents divisible by 8)")
        return img, msk


class Txt2ImgPipeline(_Base):
    """txt2img.py as an object: ``pipe(prompt)`` -> :class:`PipelineResult`."""

    def __init__(self, *, diffusion_spec, decoder_spec, text_encoder, unet, decoder, tokenizer, precision: str,
                 sources: Mapping[str, str]):
        self.diffusion_spec = diffusion_spec
        self.decoder_spec = decoder_spec
        self.text_encoder = text_encoder
        self.unet = unet
        self.decoder = decoder
        self.tokenizer = tokenizer
        self.precision = precision
        self.sources = dict(sources)
        self._samplers: dict = {}
        self._lock = threading.Lock()

    @classmethod
    def from_original(cls, config_c: PathLike, ckpt_c: PathLike, config: PathLike, ckpt: PathLike, *,
                      vocab: Optional[PathLike] = None, precision: str = "fp32") -> "Txt2ImgPipeline":
        """From the original files, as txt2img's ``--config_c --ckpt_c --config --ckpt``."""
        from .tokenizer import CLIPTokenizer, find_vocab

        spec_c = config_mod.load(config_c)
        spec_d = config_mod.load(config)
        if not isinstance(spec_d, config_mod.DiffusionSpec) or spec_d.kind != "txt2img":
            raise config_mod.ConfigError(f"{config}: --config must be a text-to-image diffusion config "
                                         "(LatentDiffusion), e.g. v1-t2i-inference.yaml")
        if not isinstance(spec_c, config_mod.AutoencoderSpec):
            raise config_mod.ConfigError(f"{config_c}: --config_c must be an autoencoder config "
                                         "(autoencoder_kl_woc_32x32x4*.yaml)")
        tok = CLIPTokenizer.from_file(find_vocab(vocab))
        return cls._build(spec_d, spec_c, _load_weights(ckpt), _load_weights(ckpt_c), tok, precision,
                          {"diffusion": os.fspath(ckpt), "decoder": os.fspath(ckpt_c)}, config, config_c)

    @classmethod
    def from_file(cls, path: PathLike, *, decoder: Optional[PathLike] = None, vocab: Optional[PathLike] = None,
                  precision: str = "fp32") -> "Txt2ImgPipeline":
        """From a converted file (see :meth:`InpaintPipeline.from_file`)."""
        spec_d, spec_c, wd, wc, tok, src = _from_converted(path, decoder, vocab)
        if spec_d.kind != "txt2img":
            raise config_mod.ConfigError(f"{path} holds a {spec_d.kind} model, not a text-to-image one")
        return cls._build(spec_d, spec_c, wd, wc, tok, precision, src, spec_d, spec_c)

    @classmethod
    def _build(cls, spec_d, spec_c, wd, wc, tok, precision, sources, cfg_d, cfg_c) -> "Txt2ImgPipeline":
        from .autoencoder import Autoencoder
        from .text_encoder import TextEncoder
        from .unet import UNet

        te = TextEncoder.from_config(cfg_d, wd, precision=precision)
        un = UNet.from_config(cfg_d, wd, precision=precision)
        dec = Autoencoder.from_config(cfg_c, wc, precision=precision)
        return cls(diffusion_spec=spec_d, decoder_spec=spec_c, text_encoder=te, unet=un, decoder=dec, tokenizer=tok,
                   precision=precision, sources=sources)

    def __repr__(self) -> str:
        d = self.decoder_spec.decoder
        return (f"Txt2ImgPipeline(unet={self.unet!r}, decoder={d.variant} ch={d.ch}, precision={self.precision!r}, "
                f"diffusion={self.sources.get('diffusion')!r}, decoder_weights={self.sources.get('decoder')!r})")

    def __call__(self, prompt: Union[str, Sequence[str]] = TXT2IMG_PROMPT, *, n_samples: int = 1, height: int = 512,
                 width: int = 512, seed: int = 42, scale: float = 7.5, steps: int = 50, eta: float = 0.0,
                 sampler: str = "ddim", negative_prompt: str = "", x_T: Optional[np.ndarray] = None,
                 step_noise: Optional[np.ndarray] = None, round: bool = False, progress: bool = True,
                 callback: Optional[StepCallback] = None) -> PipelineResult:
        """Generates ``n_samples`` images for ``prompt`` (one prompt repeated, or one per sample)."""
        if height % 64 or width % 64 or height < 64 or width < 64:
            raise ValueError(f"height and width must be positive multiples of 64, got {height}x{width}")
        if n_samples < 1:
            raise ValueError(f"n_samples must be >= 1, got {n_samples}")
        prompts = [prompt] * n_samples if isinstance(prompt, str) else list(prompt)
        if len(prompts) != n_samples:
            raise ValueError(f"got {len(prompts)} prompts for n_samples={n_samples}")
        if sampler == "plms" and eta != 0:
            raise ValueError("PLMS is deterministic: eta must be 0")
        t0 = time.perf_counter()
        h, w = height // 8, width // 8
        timings = {}
        with self._lock:
            t = time.perf_counter()
            c = self._encode_text(prompts)
            uc = self._encode_text([negative_prompt] * n_samples)
            timings["text"] = time.perf_counter() - t
            x_T = x_T if x_T is not None else _randn(seed, (n_samples, 4, h, w))
            t = time.perf_counter()
            x0 = self._denoise(x_T, c, uc, scale, sampler, steps, eta, seed, step_noise, progress, callback)
            timings["sample"] = time.perf_counter() - t
            t = time.perf_counter()
            out = self.decoder.decode(x0 / SCALE_FACTOR)
            timings["decode"] = time.perf_counter() - t
        return PipelineResult(to_pil(out, round=round), out, x0, time.perf_counter() - t0, steps, timings)


def inpaint_decoder_spec(spec: config_mod.Spec, weights: Mapping[str, Any], source: Any = "--config"
                         ) -> config_mod.Spec:
    """The decoder an :class:`InpaintPipeline` runs for the config ``spec`` and its checkpoint ``weights``.

    * an asymmetric config with condition (``autoencoder_kl_32x32x4*.yaml``) and its checkpoint: that
      decoder, which merges the known pixels back in;
    * a diffusion config (e.g. ``v1-inpainting-inference.yaml`` with the SD checkpoint): returned as is;
      the pipeline then runs its first stage's decoder, SD's vanilla decoder, on the latent alone;
    * ``ldm.models.autoencoder.AutoencoderKL`` (the standard VAE config) with a checkpoint holding no
      condition encoder (``decoder.encoder.*``), i.e. SD's VAE: the same config as a decoder without
      condition, so SD's vanilla decoder;
    * a ``_wocondition`` config: that decoder without condition.
    """
    if isinstance(spec, config_mod.DiffusionSpec):
        return spec
    if not isinstance(spec, config_mod.AutoencoderSpec):
        raise config_mod.ConfigError(f"{source}: not an autoencoder or diffusion config")
    d = spec.decoder
    if d.conditional and d.variant == "base" and not any(k.startswith("decoder.encoder.") for k in weights):
        import dataclasses

        return dataclasses.replace(spec, decoder=dataclasses.replace(d, conditional=False))
    return spec


def _from_converted(path: PathLike, decoder: Optional[PathLike], vocab: Optional[PathLike]):
    from .convert import read_metadata
    from .tokenizer import CLIPTokenizer, find_vocab

    meta = read_metadata(path)
    if not isinstance(meta.spec, config_mod.DiffusionSpec):
        raise config_mod.ConfigError(f"{path} holds an autoencoder, not a diffusion model")
    wd = checkpoint.load(path)
    if decoder is not None:
        dmeta = read_metadata(decoder)
        if not isinstance(dmeta.spec, config_mod.AutoencoderSpec):
            raise config_mod.ConfigError(f"{decoder} does not hold an autoencoder")
        spec_c, wc = dmeta.spec, checkpoint.load(decoder)
    elif meta.decoder is not None:
        spec_c, wc = meta.decoder, wd
    else:
        raise config_mod.ConfigError(f"{path} has no decoder: convert with --decoder-config/--decoder-ckpt, "
                                     "or pass decoder=<converted decoder file>")
    if vocab is not None or meta.vocab is None:
        tok = CLIPTokenizer.from_file(find_vocab(vocab))
    else:
        tok = CLIPTokenizer.from_metadata(meta.vocab)
    return meta.spec, spec_c, wd, wc, tok, {"diffusion": os.fspath(path), "decoder": os.fspath(decoder or path)}
