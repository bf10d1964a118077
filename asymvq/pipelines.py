"""Pipelines: the original scripts' computations as reusable objects.

:class:`InpaintPipeline` is ``inpaint_st.py`` (SPEC §0.1, §7.1): CLIP text
conditioning, the masked image encoded by SD's KL encoder, DDIM with eta 1 and
classifier-free guidance on the 9-channel UNet, then the asymmetric decoder
that merges the known pixels back in. :class:`Txt2ImgPipeline` is
``txt2img.py``: the 4-channel UNet, DDIM or PLMS, and the decoder without
condition.

Weights are copied into each model once (the checkpoint's memory map is closed
when the pipeline is built) and plans are built on the first call for a given
size and reused afterwards.

Memory: each model's plan holds an activation arena and a oneDNN scratchpad
(for a 512 x 512 image the 2x decoder's alone is GBs in fp32). The stages run
one after the other, so by default a stage hands its model's arena back when
it is over (``release_between_stages``): a call then peaks at the packed
weights plus the largest stage, not plus the sum of all of them; the next call
allocates the arenas again (the plans themselves are kept). :meth:`memory`
reports the weights and every plan's arena and scratchpad.

Noise streams, chosen by ``rng=`` (:mod:`asymvq.rng`):

* ``rng="numpy"`` (the default), all reproducible from ``seed``: start code
  x_T ``numpy.random.RandomState(seed).randn(...)`` cast to float32 (exactly as
  ``inpaint_st.py``); the posterior sample of the masked-image latent
  ``RandomState(seed + 1)``; the per-step DDIM noise (eta > 0) the stream of
  ``RandomState(seed + 2)``.
* ``rng="torch-cuda"`` / ``"torch-cpu"`` (or an :class:`asymvq.rng.Generator`,
  whose stream then continues across calls): the original's draw order on that
  torch generator (``"torch-cuda"`` is the original's own, emulated).
  txt2img: ``seed_everything(seed)`` then x_T ``randn([n, 4, h, w])`` and, with
  eta > 0, one ``randn([n, 4, h, w])`` per step after it, all on one generator
  seeded with ``seed`` (the original's CUDA generator; ``"torch-cpu"`` is
  torch's CPU generator standing in for it). inpaint_st: x_T stays
  ``RandomState(seed)`` (the original's numpy start code), the DDIM noise comes
  from a torch generator at torch's default seed 67280421310721 (the original
  never seeds torch) and the posterior is its mean (the original's sample comes
  from a CPU generator whose state nobody can know; its standard deviation is
  tiny, see the README).

Each can also be passed in as arrays (``x_T=``, ``posterior_noise=``,
``step_noise=``), which is how parity tests inject a reference's noise.

Thread-safety: a pipeline may be called from several threads, but calls on one
pipeline are serialised by a lock (plans are not reentrant); use one pipeline
per thread for parallel work (each holds its own copy of the weights).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional, Sequence, Union

import numpy as np

from . import checkpoint, tables
from . import config as config_mod
from .image import ImageLike, load_pair, to_pil, to_uint8
from .precision import resolve_precision
from .rng import TORCH_DEFAULT_SEED, Generator, RngLike, check_kind

if TYPE_CHECKING:
    from .sampler import Sampler
    from .text_encoder import TextEncoder
    from .tokenizer import CLIPTokenizer
    from .unet import UNet

PathLike = Union[str, os.PathLike]

__all__ = [
    "InpaintPipeline",
    "Txt2ImgPipeline",
    "PipelineResult",
    "inpaint_decoder_spec",
    "SCALE_FACTOR",
    "INPAINT_PROMPT",
]

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


@contextlib.contextmanager
def _weights_of(source: Optional[str]):
    """Prefixes a weights problem with the file it is in (the models only know the tensors)."""
    try:
        yield
    except tables.WeightsError as e:
        if source and e.args and not str(e.args[0]).startswith(f"{source}: "):
            e.args = (f"{source}: {e.args[0]}",) + e.args[1:]
        raise


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


def _release(model: Any) -> None:
    """Frees ``model``'s plan arenas and scratchpads (the plans stay) and trims the heap."""
    model._core.release_memory()


class _Base:
    #: Free each model's activation arena and scratchpad when its stage of a call is over (the
    #: peak is then the weights plus the largest stage); False keeps them for the next call.
    release_between_stages: bool = True

    # set by each pipeline's __init__
    diffusion_spec: config_mod.DiffusionSpec
    unet: UNet
    text_encoder: TextEncoder
    tokenizer: CLIPTokenizer
    _samplers: dict[tuple[str, int, float], Sampler]
    _lock: threading.Lock

    def _sampler(self, kind: str, steps: int, eta: float):
        from .sampler import sampler_from_name

        key = (kind, steps, float(eta))
        s = self._samplers.get(key)
        if s is None:
            s = sampler_from_name(kind, steps, eta, config=self.diffusion_spec)
            self._samplers[key] = s
        return s

    def _denoise(
        self,
        x_T,
        c,
        uc,
        scale,
        sampler,
        steps,
        eta,
        seed,
        step_noise,
        progress,
        callback,
        c_concat=None,
        gen: Optional[Generator] = None,
    ) -> np.ndarray:
        """The sampler loop with a progress bar; step noise (DDIM eta > 0, euler_a) from
        ``step_noise``, else ``gen``, else the numpy stream of ``seed + 2``."""
        smp = self._sampler(sampler, steps, eta)
        bar = _Progress(len(smp.timesteps), "denoise", progress, callback)
        try:
            if step_noise is not None or not smp.needs_noise:
                return smp.sample(self.unet, x_T, c, uc, scale, c_concat=c_concat, noise=step_noise, callback=bar)
            if gen is not None:
                return smp.sample(self.unet, x_T, c, uc, scale, c_concat=c_concat, rng=gen, callback=bar)
            return smp.sample(self.unet, x_T, c, uc, scale, c_concat=c_concat, seed=seed + 2, callback=bar)
        finally:
            bar.close()

    @classmethod
    def _from_parts(cls, p: Any, precision: str) -> Any:
        """A pipeline from :func:`asymvq.diffusers_io.pipeline_parts`'s result (both ``from_diffusers``)."""
        spec, dec = p.spec, p.decoder_spec
        return cls._build(spec, dec, p.weights, p.decoder_weights, p.tokenizer, precision, p.sources, spec, dec)

    @classmethod
    def _build(cls, spec_d, spec_c, wd, wc, tok, precision, sources, cfg_d, cfg_c) -> Any:
        """Each pipeline's models from specs and weights (overridden by both pipelines)."""
        raise NotImplementedError

    def _models(self) -> dict[str, Any]:
        names = ("text_encoder", "unet", "encoder", "decoder")
        return {n: getattr(self, n) for n in names if getattr(self, n, None) is not None}

    def _stage_done(self, *models: Any) -> None:
        if self.release_between_stages:
            for m in models:
                _release(m)

    def release_memory(self) -> None:
        """Frees every model's plan arenas and scratchpads now (the plans stay; the next call
        allocates them again) and hands the allocator's free memory back to the system."""
        for m in self._models().values():
            _release(m)

    def memory(self) -> dict[str, Any]:
        """Where this pipeline's memory is, in bytes: per model (``text_encoder``, ``unet``,
        ``encoder`` for inpainting, ``decoder``) its cached ``plans`` (each with ``arena_bytes``,
        ``scratch_bytes`` and ``resident``: held now) and ``resident_bytes`` (what they hold now);
        and ``weight_bytes`` / ``plan_bytes``: the owned and packed weights (Winograd copies
        included) and the resident arenas + scratchpads of every model in the process."""
        from . import _core

        out: dict[str, Any] = {
            n: {"plans": m.plans, "resident_bytes": m.memory_bytes} for n, m in self._models().items()
        }
        out.update(_core.Model.process_memory())
        return out

    def _encode_text(self, prompts: Sequence[str]) -> np.ndarray:
        ids = self.tokenizer(list(prompts))
        return self.text_encoder.encode_ids(ids)


class InpaintPipeline(_Base):
    """inpaint_st.py as an object: ``pipe(image, mask)`` -> :class:`PipelineResult`."""

    def __init__(
        self,
        *,
        diffusion_spec,
        decoder_spec,
        text_encoder,
        unet,
        encoder,
        decoder,
        tokenizer,
        precision: str,
        sources: Mapping[str, str],
    ):
        self.diffusion_spec = diffusion_spec
        self.decoder_spec = decoder_spec
        self.text_encoder = text_encoder
        self.unet = unet
        self.encoder = encoder
        self.decoder = decoder
        self.tokenizer = tokenizer
        self.precision = precision
        self.sources = dict(sources)
        self._samplers = {}
        self._lock = threading.Lock()

    @classmethod
    def from_original(
        cls,
        config_d: Optional[PathLike],
        ckpt_d: PathLike,
        config: Optional[PathLike],
        ckpt: PathLike,
        *,
        vocab: Optional[PathLike] = None,
        precision: str = "auto",
    ) -> "InpaintPipeline":
        """From the original files, as inpaint_st's ``--config_d --ckpt_d --config --ckpt``:
        the SD inpainting config/checkpoint and the decoder config/checkpoint: an asymmetric decoder, or
        SD's vanilla decoder (``config`` = the diffusion config or a standard ``AutoencoderKL`` config
        with SD's VAE weights; see :func:`inpaint_decoder_spec`).

        A config given as None is inferred from its checkpoint's tensors (:mod:`asymvq.infer`; the
        choice is printed on stderr). ``precision``: ``"auto"`` (bf16 where the CPU has it natively, else
        fp32; one line on stderr says which), ``"fp32"`` or ``"bf16"`` (see :mod:`asymvq.precision`)."""
        from .tokenizer import CLIPTokenizer, find_vocab

        precision = resolve_precision(precision)

        spec_d = config_mod.load(config_d) if config_d is not None else None
        if spec_d is not None and (not isinstance(spec_d, config_mod.DiffusionSpec) or spec_d.kind != "inpaint"):
            raise config_mod.ConfigError(
                f"{config_d}: --config_d must be an inpainting diffusion config "
                "(LatentInpaintDiffusion), e.g. v1-inpainting-inference.yaml"
            )
        spec_c = config_mod.load(config) if config is not None else None
        tok = CLIPTokenizer.from_file(find_vocab(vocab))
        wd = _load_weights(ckpt_d)
        same = (
            not isinstance(ckpt, Mapping)
            and not isinstance(ckpt_d, Mapping)
            and os.path.abspath(ckpt) == os.path.abspath(ckpt_d)
        )
        wc = wd if same else _load_weights(ckpt)  # the vanilla decoder often lives in the SD checkpoint
        spec_d = spec_d or _inferred(wd, "inpaint", ckpt_d)
        spec_c = inpaint_decoder_spec(spec_c, wc, config) if spec_c is not None else _inferred(wc, "decoder", ckpt)
        return cls._build(
            spec_d,
            spec_c,
            wd,
            wc,
            tok,
            precision,
            {"diffusion": os.fspath(ckpt_d), "decoder": os.fspath(ckpt)},
            spec_d,
            spec_c,
        )

    @classmethod
    def from_file(
        cls,
        path: PathLike,
        *,
        decoder: Optional[PathLike] = None,
        vocab: Optional[PathLike] = None,
        precision: str = "auto",
    ) -> "InpaintPipeline":
        """From a file written by ``python -m asymvq convert`` holding the SD inpainting model
        and (with ``--decoder-config/--decoder-ckpt``) the decoder; or the decoder in its
        own converted file ``decoder=``. ``precision`` as in :meth:`from_original`."""
        precision = resolve_precision(precision)
        spec_d, spec_c, wd, wc, tok, src = _from_converted(path, decoder, vocab)
        if spec_d.kind != "inpaint":
            raise config_mod.ConfigError(f"{path} holds a {spec_d.kind} model, not an inpainting one")
        return cls._build(spec_d, spec_c, wd, wc, tok, precision, src, spec_d, spec_c)

    # ---- diffusers folders (asymvq.diffusers_io) ----

    @classmethod
    def from_diffusers(
        cls,
        path: PathLike,
        decoder: Optional[PathLike] = None,
        *,
        vocab: Optional[PathLike] = None,
        precision: str = "auto",
        variant: Optional[str] = None,
    ) -> "InpaintPipeline":
        """From a diffusers SD 1.x inpainting folder (``model_index.json``, ``unet/`` with 9 input channels,
        ``vae/``, ``text_encoder/``, ``tokenizer/``).

        ``decoder``: the asymmetric decoder: an ``AsymmetricAutoencoderKL`` folder, a single-file decoder
        checkpoint (config inferred) or a converted decoder file; None uses the folder's ``vae/``, which
        must then be an AsymmetricAutoencoderKL.  ``vocab`` overrides the folder's tokenizer files;
        ``variant`` picks weight files such as ``*.fp16.safetensors``.
        """
        from .diffusers_io import pipeline_parts

        return cls._from_parts(
            pipeline_parts(path, kind="inpaint", decoder=decoder, vocab=vocab, variant=variant), precision
        )

    @classmethod
    def _build(cls, spec_d, spec_c, wd, wc, tok, precision, sources, cfg_d, cfg_c) -> "InpaintPipeline":
        from .autoencoder import Autoencoder
        from .text_encoder import TextEncoder
        from .unet import UNet

        precision = resolve_precision(precision)  # once, so "auto" is announced once
        with _weights_of(sources.get("diffusion")):
            te = TextEncoder.from_config(cfg_d, wd, precision=precision)
            un = UNet.from_config(cfg_d, wd, precision=precision)
            enc = Autoencoder.from_config(cfg_d, wd, precision=precision)
        with _weights_of(sources.get("decoder")):
            dec = Autoencoder.from_config(cfg_c, wc, precision=precision, parts="decoder")
        if isinstance(spec_c, config_mod.DiffusionSpec):  # SD's vanilla decoder, first stage of that config
            spec_c = spec_c.first_stage
        return cls(
            diffusion_spec=spec_d,
            decoder_spec=spec_c,
            text_encoder=te,
            unet=un,
            encoder=enc,
            decoder=dec,
            tokenizer=tok,
            precision=precision,
            sources=sources,
        )

    def __repr__(self) -> str:
        d = self.decoder_spec.decoder
        return (
            f"InpaintPipeline(unet={self.unet!r}, decoder={d.variant}{'' if d.conditional else ' (no condition)'}"
            f" ch={d.ch} "
            f"blocks/level={d.blocks_per_level}, precision={self.precision!r}, "
            f"diffusion={self.sources.get('diffusion')!r}, decoder_weights={self.sources.get('decoder')!r})"
        )

    def __call__(
        self,
        image: Union[ImageLike, np.ndarray],
        mask: Union[ImageLike, np.ndarray],
        *,
        prompt: str = INPAINT_PROMPT,
        negative_prompt: str = "",
        seed: int = 0,
        scale: float = 7.5,
        steps: int = 50,
        eta: Optional[float] = None,
        sampler: str = "ddim",
        x_T: Optional[np.ndarray] = None,
        posterior_noise: Optional[np.ndarray] = None,
        step_noise: Optional[np.ndarray] = None,
        resize: bool = True,
        round: bool = False,
        progress: bool = True,
        callback: Optional[StepCallback] = None,
        rng: RngLike = "numpy",
    ) -> PipelineResult:
        """Inpaints ``image`` where ``mask`` is white (1).

        ``image``/``mask``: paths, PIL images, uint8 arrays, or float arrays already
        prepared ([1, 3, H, W] in [-1, 1] and [1, 1, H, W] in {0, 1}). PIL/paths are
        resized as inpaint_st does (≤ 640 px, multiples of 64; the mask too).

        ``sampler``: one of :data:`asymvq.sampler.SAMPLER_NAMES` (default the original's ``"ddim"``);
        ``eta`` defaults to the original's 1.0 with ddim and 0 otherwise (only ddim takes another).
        ``negative_prompt``: the unconditional text of classifier-free guidance (the original's ``""``).

        Noise, as the original draws it (see the module doc): the start code is always
        ``numpy.random.RandomState(seed)``. ``rng="numpy"``: the posterior sample from
        ``RandomState(seed + 1)`` and the DDIM noise from ``RandomState(seed + 2)``.
        ``rng="torch-cuda"`` (the original's) or ``"torch-cpu"``: the posterior mean, and the DDIM noise
        (one ``[1, 4, h, w]`` draw per step) from a torch generator at torch's default seed 67280421310721,
        as the original, which never seeds torch; pass an :class:`asymvq.rng.Generator`
        instead to choose that generator and let its stream run on across calls (the
        original's runs on across the images of one run).
        """
        gen: Optional[Generator] = None
        if isinstance(rng, Generator):
            gen = rng
        elif check_kind(rng) != "numpy":
            gen = Generator(rng, TORCH_DEFAULT_SEED)
        if eta is None:
            eta = 1.0 if sampler == "ddim" else 0.0
        self._sampler(sampler, steps, eta)  # bad sampler arguments fail before any work
        t0 = time.perf_counter()
        img, msk = self._prepare(image, mask, resize)
        H, W = img.shape[-2:]
        h, w = H // 8, W // 8
        timings = {}
        with self._lock:
            t = time.perf_counter()
            c = self._encode_text([prompt])
            uc = self._encode_text([negative_prompt])
            self._stage_done(self.text_encoder)
            timings["text"] = time.perf_counter() - t

            t = time.perf_counter()
            masked = img * (msk < 0.5).astype(np.float32)
            if posterior_noise is None and gen is not None:
                z_mi = SCALE_FACTOR * self.encoder.encode(masked)  # the posterior mean
            else:
                eps_post = posterior_noise if posterior_noise is not None else _randn(seed + 1, (1, 4, h, w))
                z_mi = SCALE_FACTOR * self.encoder.encode(masked, sample=True, noise=eps_post)
            c_cat = np.concatenate([_nearest_resize(msk, h, w), z_mi], axis=1).astype(np.float32)
            del masked
            self._stage_done(self.encoder)
            timings["encode"] = time.perf_counter() - t

            x_T = x_T if x_T is not None else _randn(seed, (1, 4, h, w))
            t = time.perf_counter()
            x0 = self._denoise(
                x_T, c, uc, scale, sampler, steps, eta, seed, step_noise, progress, callback, c_concat=c_cat, gen=gen
            )
            self._stage_done(self.unet)
            timings["sample"] = time.perf_counter() - t

            t = time.perf_counter()
            if self.decoder.conditional:
                out = self.decoder.decode(x0 / SCALE_FACTOR, image=img, mask=msk)
            else:  # SD's vanilla decoder (or one without condition): the latent alone, nothing merged back
                out = self.decoder.decode(x0 / SCALE_FACTOR)
            self._stage_done(self.decoder)
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
            # checked here, not by the decoder after the whole sampling loop
            if not np.isfinite(img).all():
                raise ValueError("image array has NaN or Inf values")
            if not np.isin(msk, (0.0, 1.0)).all():
                raise ValueError(
                    "mask array values must be exactly 0 or 1 (1 = hole); binarise it first, "
                    "e.g. (mask >= 0.5).astype(np.float32)"
                )
        else:
            img, msk, _ = load_pair(image, mask, resize=resize)
        H, W = img.shape[-2:]
        if H % 64 or W % 64:
            raise ValueError(f"image size {W}x{H} must be a multiple of 64 (the UNet needs latents divisible by 8)")
        return img, msk


class Txt2ImgPipeline(_Base):
    """txt2img.py as an object: ``pipe(prompt)`` -> :class:`PipelineResult`."""

    def __init__(
        self,
        *,
        diffusion_spec,
        decoder_spec,
        text_encoder,
        unet,
        decoder,
        tokenizer,
        precision: str,
        sources: Mapping[str, str],
    ):
        self.diffusion_spec = diffusion_spec
        self.decoder_spec = decoder_spec
        self.text_encoder = text_encoder
        self.unet = unet
        self.decoder = decoder
        self.tokenizer = tokenizer
        self.precision = precision
        self.sources = dict(sources)
        self._samplers = {}
        self._lock = threading.Lock()

    @classmethod
    def from_original(
        cls,
        config_c: Optional[PathLike],
        ckpt_c: PathLike,
        config: Optional[PathLike],
        ckpt: PathLike,
        *,
        vocab: Optional[PathLike] = None,
        precision: str = "auto",
    ) -> "Txt2ImgPipeline":
        """From the original files, as txt2img's ``--config_c --ckpt_c --config --ckpt``; a config given
        as None is inferred from its checkpoint's tensors (the choice is printed on stderr); ``precision``
        as in :meth:`InpaintPipeline.from_original`."""
        from .tokenizer import CLIPTokenizer, find_vocab

        precision = resolve_precision(precision)

        spec_c = config_mod.load(config_c) if config_c is not None else None
        spec_d = config_mod.load(config) if config is not None else None
        if spec_d is not None and (not isinstance(spec_d, config_mod.DiffusionSpec) or spec_d.kind != "txt2img"):
            raise config_mod.ConfigError(
                f"{config}: --config must be a text-to-image diffusion config "
                "(LatentDiffusion), e.g. v1-t2i-inference.yaml"
            )
        if spec_c is not None and not isinstance(spec_c, config_mod.AutoencoderSpec):
            raise config_mod.ConfigError(
                f"{config_c}: --config_c must be an autoencoder config (autoencoder_kl_woc_32x32x4*.yaml)"
            )
        tok = CLIPTokenizer.from_file(find_vocab(vocab))
        wd, wc = _load_weights(ckpt), _load_weights(ckpt_c)
        spec_d = spec_d or _inferred(wd, "txt2img", ckpt)
        spec_c = spec_c or _inferred(wc, "decoder_wocondition", ckpt_c)
        return cls._build(
            spec_d,
            spec_c,
            wd,
            wc,
            tok,
            precision,
            {"diffusion": os.fspath(ckpt), "decoder": os.fspath(ckpt_c)},
            spec_d,
            spec_c,
        )

    @classmethod
    def from_file(
        cls,
        path: PathLike,
        *,
        decoder: Optional[PathLike] = None,
        vocab: Optional[PathLike] = None,
        precision: str = "auto",
    ) -> "Txt2ImgPipeline":
        """From a converted file (see :meth:`InpaintPipeline.from_file`)."""
        precision = resolve_precision(precision)
        spec_d, spec_c, wd, wc, tok, src = _from_converted(path, decoder, vocab)
        if spec_d.kind != "txt2img":
            raise config_mod.ConfigError(f"{path} holds a {spec_d.kind} model, not a text-to-image one")
        return cls._build(spec_d, spec_c, wd, wc, tok, precision, src, spec_d, spec_c)

    # ---- diffusers folders (asymvq.diffusers_io) ----

    @classmethod
    def from_diffusers(
        cls,
        path: PathLike,
        decoder: Optional[PathLike] = None,
        *,
        vocab: Optional[PathLike] = None,
        precision: str = "auto",
        variant: Optional[str] = None,
    ) -> "Txt2ImgPipeline":
        """From a diffusers SD 1.x text-to-image folder (``unet/`` with 4 input channels).

        ``decoder``: as in :meth:`InpaintPipeline.from_diffusers`, used without condition; None uses the
        folder's ``vae/`` (SD's AutoencoderKL decoder, or an AsymmetricAutoencoderKL's).
        """
        from .diffusers_io import pipeline_parts

        return cls._from_parts(
            pipeline_parts(path, kind="txt2img", decoder=decoder, vocab=vocab, variant=variant), precision
        )

    @classmethod
    def _build(cls, spec_d, spec_c, wd, wc, tok, precision, sources, cfg_d, cfg_c) -> "Txt2ImgPipeline":
        from .autoencoder import Autoencoder
        from .text_encoder import TextEncoder
        from .unet import UNet

        precision = resolve_precision(precision)  # once, so "auto" is announced once
        with _weights_of(sources.get("diffusion")):
            te = TextEncoder.from_config(cfg_d, wd, precision=precision)
            un = UNet.from_config(cfg_d, wd, precision=precision)
        with _weights_of(sources.get("decoder")):
            dec = Autoencoder.from_config(cfg_c, wc, precision=precision)
        return cls(
            diffusion_spec=spec_d,
            decoder_spec=spec_c,
            text_encoder=te,
            unet=un,
            decoder=dec,
            tokenizer=tok,
            precision=precision,
            sources=sources,
        )

    def __repr__(self) -> str:
        d = self.decoder_spec.decoder
        return (
            f"Txt2ImgPipeline(unet={self.unet!r}, decoder={d.variant} ch={d.ch}, precision={self.precision!r}, "
            f"diffusion={self.sources.get('diffusion')!r}, decoder_weights={self.sources.get('decoder')!r})"
        )

    def __call__(
        self,
        prompt: Union[str, Sequence[str]] = TXT2IMG_PROMPT,
        *,
        n_samples: int = 1,
        height: int = 512,
        width: int = 512,
        seed: int = 42,
        scale: float = 7.5,
        steps: int = 50,
        eta: float = 0.0,
        sampler: str = "ddim",
        negative_prompt: str = "",
        x_T: Optional[np.ndarray] = None,
        step_noise: Optional[np.ndarray] = None,
        round: bool = False,
        progress: bool = True,
        callback: Optional[StepCallback] = None,
        rng: RngLike = "numpy",
    ) -> PipelineResult:
        """Generates ``n_samples`` images for ``prompt`` (one prompt repeated, or one per sample).

        Noise: ``rng="numpy"``: x_T ``numpy.random.RandomState(seed).randn(n_samples, 4, h, w)``, DDIM
        noise (eta > 0) from ``RandomState(seed + 2)``. ``rng="torch-cuda"`` (the original's) or
        ``"torch-cpu"``: the original's order on one
        generator seeded with ``seed`` (``seed_everything``): x_T ``randn([n_samples, 4, h, w])`` (unless
        ``x_T`` is given, as ``--fixed_code`` draws it beforehand), then one ``randn([n_samples, 4, h, w])``
        per DDIM step. An :class:`asymvq.rng.Generator` works the same from its current state (``seed``
        is not used) and runs on, as the original's generator does across ``--n_iter`` iterations.

        ``sampler``: one of :data:`asymvq.sampler.SAMPLER_NAMES` (default the original's ``"ddim"``;
        ``eta`` only with ddim); euler_a's per-step noise comes from the same stream as DDIM's.
        ``negative_prompt``: the unconditional text of classifier-free guidance (the original's ``""``).
        """
        gen: Optional[Generator] = None
        if isinstance(rng, Generator):
            gen = rng
        elif check_kind(rng) != "numpy":
            gen = Generator(rng, seed)
        if height % 64 or width % 64 or height < 64 or width < 64:
            raise ValueError(f"height and width must be positive multiples of 64, got {height}x{width}")
        if n_samples < 1:
            raise ValueError(f"n_samples must be >= 1, got {n_samples}")
        prompts = [prompt] * n_samples if isinstance(prompt, str) else list(prompt)
        if len(prompts) != n_samples:
            raise ValueError(f"got {len(prompts)} prompts for n_samples={n_samples}")
        if sampler == "plms" and eta != 0:
            raise ValueError("PLMS is deterministic: eta must be 0")
        self._sampler(sampler, steps, eta)  # bad sampler arguments fail before any work
        t0 = time.perf_counter()
        h, w = height // 8, width // 8
        timings = {}
        with self._lock:
            t = time.perf_counter()
            c = self._encode_text(prompts)
            uc = self._encode_text([negative_prompt] * n_samples)
            self._stage_done(self.text_encoder)
            timings["text"] = time.perf_counter() - t
            if x_T is None:
                x_T = gen.randn((n_samples, 4, h, w)) if gen is not None else _randn(seed, (n_samples, 4, h, w))
            t = time.perf_counter()
            x0 = self._denoise(x_T, c, uc, scale, sampler, steps, eta, seed, step_noise, progress, callback, gen=gen)
            self._stage_done(self.unet)
            timings["sample"] = time.perf_counter() - t
            t = time.perf_counter()
            out = self.decoder.decode(x0 / SCALE_FACTOR)
            self._stage_done(self.decoder)
            timings["decode"] = time.perf_counter() - t
        return PipelineResult(to_pil(out, round=round), out, x0, time.perf_counter() - t0, steps, timings)


def inpaint_decoder_spec(
    spec: config_mod.Spec, weights: Mapping[str, Any], source: Any = "--config"
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
        raise config_mod.ConfigError(
            f"{path} has no decoder: convert with --decoder-config/--decoder-ckpt, "
            "or pass decoder=<converted decoder file>"
        )
    if vocab is not None or meta.vocab is None:
        tok = CLIPTokenizer.from_file(find_vocab(vocab))
    else:
        tok = CLIPTokenizer.from_metadata(meta.vocab)
    return meta.spec, spec_c, wd, wc, tok, {"diffusion": os.fspath(path), "decoder": os.fspath(decoder or path)}


def _inferred(weights: Mapping[str, np.ndarray], role: str, ckpt: Union[PathLike, Mapping[str, np.ndarray]]):
    """The shipped config that fits ``weights`` (a config given as None), announced on stderr."""
    from .infer import infer_config

    source = "the weights" if isinstance(ckpt, Mapping) else os.fspath(ckpt)
    return infer_config(weights, role, source, announce=True).spec  # type: ignore[arg-type]
