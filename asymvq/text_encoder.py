"""The CLIP text encoder of Stable Diffusion 1.x: prompts -> conditioning ``[B, 77, 768]``.

:class:`TextEncoder` runs CLIP ViT-L/14's text transformer (SPEC §1.2) in asymvq's C core on the
weights of an SD checkpoint (``cond_stage_model.transformer.text_model.*``)::

    enc = TextEncoder.from_config("v1-inpainting-inference.yaml", "sd-v1-5-inpainting.ckpt")
    context = enc.encode(["", "a photo of a cat"])     # float32 [2, 77, 768]

The output is the final-layer-normed last hidden state of all 77 positions, exactly what
``FrozenCLIPEmbedder.encode`` returns. Prompts are tokenized by :class:`asymvq.tokenizer.CLIPTokenizer`
with the vocabulary found by :func:`asymvq.tokenizer.find_vocab` (or embedded in a converted file);
:meth:`TextEncoder.encode_ids` takes token ids directly and needs no vocabulary.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from . import _core, checkpoint, tables
from . import config as _config
from . import tokenizer as _tokenizer
from .config import DiffusionSpec, TextEncoderSpec
from .precision import resolve_precision
from .tokenizer import CLIPTokenizer

__all__ = ["TextEncoder"]

PathLike = Union[str, "os.PathLike[str]"]
ConfigLike = Union[PathLike, DiffusionSpec, TextEncoderSpec, Mapping[str, Any]]
WeightsLike = Union[PathLike, Mapping[str, Any]]
VocabLike = Union[PathLike, CLIPTokenizer, None]


def _text_spec(config: ConfigLike) -> TextEncoderSpec:
    """The text encoder hyper-parameters of ``config`` (see :meth:`TextEncoder.from_config`)."""
    if isinstance(config, TextEncoderSpec):
        return config
    if isinstance(config, DiffusionSpec):
        return config.text_encoder
    if isinstance(config, Mapping):
        known = {f.name for f in dataclasses.fields(TextEncoderSpec)}
        unknown = sorted(set(map(str, config)) - known)
        if unknown:
            raise ValueError(
                f"text encoder config: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(known))}"
            )
        spec = TextEncoderSpec(**dict(config))
        for name in known - {"eps"}:
            value = getattr(spec, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"text encoder config: {name} must be an integer >= 1, got {value!r}")
        if spec.width % spec.heads:
            raise ValueError(f"text encoder config: width {spec.width} does not split into {spec.heads} heads")
        if not (isinstance(spec.eps, (int, float)) and spec.eps > 0):
            raise ValueError(f"text encoder config: eps must be a positive number, got {spec.eps!r}")
        return spec
    if isinstance(config, (str, os.PathLike)):
        loaded = _config.load(config)
        if not isinstance(loaded, DiffusionSpec):
            raise ValueError(
                f"{os.fspath(config)} describes an autoencoder ({loaded.target}), not a diffusion model with a "
                "text encoder; pass a Stable Diffusion config such as v1-inpainting-inference.yaml"
            )
        return loaded.text_encoder
    raise TypeError(
        "config must be a diffusion config path, a DiffusionSpec, a TextEncoderSpec or a dict of "
        f"TextEncoderSpec fields, got {type(config).__name__}"
    )


def _dtype_name(array: Any) -> str:
    try:
        return {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}.get(
            checkpoint.dtype_of(array), str(array.dtype)
        )
    except checkpoint.CheckpointError:
        return str(array.dtype)


def _for_core(array: np.ndarray) -> np.ndarray:
    """The form the C core reads: C-contiguous float32, or bf16 bits as uint16 (no copy when possible)."""
    if _dtype_name(array) == "bfloat16":
        return np.ascontiguousarray(array)
    return np.ascontiguousarray(array, dtype=np.float32)


def _load_weights(weights: WeightsLike, spec: TextEncoderSpec) -> Tuple[Dict[str, np.ndarray], Optional[str]]:
    """(name -> array the C core can read, embedded tokenizer metadata or None).

    Every required tensor is checked first (:func:`asymvq.tables.check`): all missing, mis-shaped and
    wrongly typed tensors are reported in one :class:`asymvq.tables.WeightsError`.
    """
    table = tables.text_encoder_tensors(spec)
    embedded: Optional[str] = None
    if isinstance(weights, (str, os.PathLike)):
        ckpt = checkpoint.open_checkpoint(weights)
        source: Mapping[str, Any] = {name: ckpt.get(name) for name in table if name in ckpt}
        context = f"{os.fspath(weights)} (CLIP text encoder)"
        embedded = next((v for v in ckpt.metadata.values() if v.startswith(_tokenizer.METADATA_PREFIX)), None)
    elif isinstance(weights, Mapping):
        source = {name: np.asarray(weights[name]) for name in table if name in weights}
        context = "weights (CLIP text encoder)"
    else:
        raise TypeError(f"weights must be a checkpoint path or a dict of arrays, got {type(weights).__name__}")
    tables.check(table, source, dtype_of=_dtype_name, context=context)
    return {name: _for_core(array) for name, array in source.items()}, embedded


class TextEncoder:
    """CLIP ViT-L/14 text transformer (or a smaller one of the same architecture) in the C core.

    Build it with :meth:`from_config`. One plan per batch size is built on first use and cached (at
    most four, the least recently used freed first: the protocol of every model, see
    :mod:`asymvq.unet`); calls are thread-safe (runs on one encoder are serialised) and release the GIL.
    """

    def __init__(
        self,
        spec: TextEncoderSpec,
        weights: Mapping[str, np.ndarray],
        *,
        precision: str = "fp32",
        vocab: VocabLike = None,
        embedded_vocab: Optional[str] = None,
    ) -> None:
        """Use ``weights`` (checked arrays from :func:`_load_weights`) for a model described by ``spec``.

        Prefer :meth:`from_config`, which loads and checks the weights.
        """
        precision = resolve_precision(precision)
        self._spec = spec
        self._precision = precision
        arrays = dict(weights)
        self._core = tables.build_model(
            lambda: _core.TextEncoder(
                arrays,
                vocab_size=spec.vocab_size,
                width=spec.width,
                layers=spec.layers,
                heads=spec.heads,
                mlp=spec.mlp,
                max_positions=spec.max_positions,
                eps=float(spec.eps),
                precision=precision,
            ),
            arrays,
        )
        self._vocab = vocab
        self._embedded_vocab = embedded_vocab
        self._tokenizer: Optional[CLIPTokenizer] = vocab if isinstance(vocab, CLIPTokenizer) else None
        self._tokenizer_lock = threading.Lock()
        if vocab is not None and not isinstance(vocab, CLIPTokenizer):  # i.e. self._tokenizer is None
            _tokenizer.find_vocab(vocab)  # a given path that does not exist is an error now, not at encode()

    @classmethod
    def from_config(
        cls, config: ConfigLike, weights: WeightsLike, vocab: VocabLike = None, precision: str = "fp32"
    ) -> "TextEncoder":
        """Build the text encoder of a diffusion model.

        Args:
            config: a diffusion YAML path (the SD 1.x configs mean CLIP ViT-L/14: width 768, 12 layers,
                12 heads, MLP 3072; ``configs/tiny`` declare smaller ones), a parsed
                :class:`asymvq.config.DiffusionSpec`, a :class:`asymvq.config.TextEncoderSpec`, or a dict of
                its fields.
            weights: an SD checkpoint (``.ckpt``) or a converted ``.safetensors`` file, or a dict
                name -> array such as :func:`asymvq.checkpoint.load` returns. Only the tensors under
                ``cond_stage_model.transformer.text_model.`` are used; float16 ones are widened to float32.
            vocab: the CLIP vocabulary for :meth:`encode`: a path for :func:`asymvq.tokenizer.find_vocab`
                or a :class:`asymvq.tokenizer.CLIPTokenizer`. ``None``: the vocabulary embedded in a
                converted file, else ``ASYMVQ_CLIP_VOCAB``, else the local Hugging Face cache — looked up
                at the first :meth:`encode` (``encode_ids`` needs none).
            precision: ``"fp32"`` or ``"bf16"`` activations (the output is float32 either way), or ``"auto"``:
                bf16 where the CPU has it natively (see :mod:`asymvq.precision`).

        Raises:
            asymvq.config.ConfigError: the config file is unreadable or not a supported model.
            asymvq.tables.WeightsError: tensors missing, mis-shaped or of an unsupported dtype (all listed).
            asymvq.tokenizer.VocabNotFoundError: ``vocab`` names a path that does not exist.
            RuntimeError: bf16 on a CPU (or under an ISA cap) without AVX-512.
        """
        precision = resolve_precision(precision)
        spec = _text_spec(config)
        arrays, embedded = _load_weights(weights, spec)
        return cls(spec, arrays, precision=precision, vocab=vocab, embedded_vocab=embedded)

    # ------------------------------------------------------------------ properties

    @property
    def spec(self) -> TextEncoderSpec:
        """The hyper-parameters."""
        return self._spec

    @property
    def precision(self) -> str:
        """``"fp32"`` or ``"bf16"``: the activation precision."""
        return self._precision

    @property
    def num_parameters(self) -> int:
        """Parameters held (123,060,480 for ViT-L/14; ``position_ids`` is not a parameter)."""
        return int(self._core.num_parameters)

    @property
    def memory_bytes(self) -> int:
        """Activation memory (arena + scratchpad) of the cached plans."""
        return int(self._core.memory_bytes)

    @property
    def plans(self) -> list[dict[str, int]]:
        """The cached plans, least recently used first: ``batch``, ``tokens``, ``bytes``
        (= ``arena_bytes`` + ``scratch_bytes``), ``steps``."""
        return list(self._core.plans())

    def clear_plans(self) -> None:
        """Free the cached plans and their activation memory (rebuilt on the next call)."""
        self._core.clear_plans()

    @property
    def tokenizer(self) -> CLIPTokenizer:
        """The tokenizer :meth:`encode` uses, loaded on first access.

        Raises:
            asymvq.tokenizer.VocabNotFoundError: no vocabulary was given, embedded or found; the message
                lists every way to provide one.
        """
        with self._tokenizer_lock:
            if self._tokenizer is None:
                self._tokenizer = _tokenizer.load_tokenizer(self._vocab, self._embedded_vocab)  # type: ignore[arg-type]
            return self._tokenizer

    # ---------------------------------------------------------------------- compute

    def encode(self, prompts: Union[str, Sequence[str]]) -> np.ndarray:
        """Conditioning for one prompt or a sequence of prompts: float32 ``[B, 77, width]``.

        A bare string is a batch of one (``encode("")`` is SD's unconditional embedding).
        """
        return self.encode_ids(self.tokenizer(prompts))

    def encode_ids(self, ids: Any) -> np.ndarray:
        """Conditioning for token ids: integer array ``[B, 77]`` -> float32 ``[B, 77, width]``.

        Raises:
            TypeError: ``ids`` is not an integer array.
            ValueError: the shape is not ``[B, 77]`` with B >= 1, or an id is outside ``[0, vocab_size)``.
        """
        array = np.asarray(ids)
        if array.dtype.kind not in "iu":
            raise TypeError(f"ids must be integers (e.g. int64 from the tokenizer), got dtype {array.dtype}")
        length = self._spec.max_positions
        if array.ndim != 2 or array.shape[0] < 1 or array.shape[1] != length:
            raise ValueError(f"ids must have shape [batch, {length}] with batch >= 1, got {list(array.shape)}")
        return self._core.run(array)

    __call__ = encode

    def __repr__(self) -> str:
        s = self._spec
        return (
            f"TextEncoder(width={s.width}, layers={s.layers}, heads={s.heads}, mlp={s.mlp}, "
            f"vocab_size={s.vocab_size}, precision={self._precision!r}, parameters={self.num_parameters:,})"
        )
