"""Required-tensor tables: every weight name and shape a model needs, derived from its spec.

The tables come from the C models themselves (each built against a recording weight source, which
hands out no memory), so the names and shapes checked here are exactly those the C loaders look up.
Names are the original checkpoint names (SPEC §1.3, §2.5, §3.5, §4.8); the order is the order in which
the original modules register their parameters.  The converter, the C binding and the tests all use
these tables, and :func:`check` reports every mismatch between a table and a state dict at once.

Each table is an ordered ``dict`` name -> shape tuple.  A :class:`Requirements` bundles a table with the
prefixes it owns (a key under an owned prefix that is neither required nor known-unused means the
config does not describe the weights) and the known-unused prefixes (:func:`ignored_prefixes`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Literal, Mapping

import numpy as np

from .. import _core
from ..errors import Error
from . import checkpoint
from .config import AutoencoderSpec, DiffusionSpec, Spec, TextEncoderSpec, UNetSpec

__all__ = [
    "Shape",
    "Table",
    "Kind",
    "WeightsError",
    "Requirements",
    "unet_tensors",
    "text_encoder_tensors",
    "vae_encoder_tensors",
    "decoder_tensors",
    "cond_encoder_tensors",
    "up_layers_tensors",
    "schedule_buffer_names",
    "kind_of",
    "ignored_prefixes",
    "owned_prefixes",
    "requirements",
    "check",
    "dtype_name",
    "build_model",
    "WEIGHT_DTYPES",
    "count_parameters",
    "iter_tables",
]

Shape = tuple[int, ...]
Table = dict[str, Shape]
Kind = Literal["inpaint", "txt2img", "decoder", "decoder_wocondition"]

UNET_PREFIX = "model.diffusion_model."
TEXT_PREFIX = "cond_stage_model.transformer.text_model."
FIRST_STAGE_PREFIX = "first_stage_model."

#: Weight dtypes the models accept (names as in safetensors: F32, F16, BF16).
WEIGHT_DTYPES = ("float32", "float16", "bfloat16")

_SCHEDULE_BUFFERS = (
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
)


def schedule_buffer_names() -> tuple[str, ...]:
    """Top-level DDPM schedule buffers of SD checkpoints (recomputed from the config, never loaded)."""
    return _SCHEDULE_BUFFERS


class WeightsError(Error, ValueError):
    """Weights do not match what the config describes; the message lists every problem."""

    def __init__(self, problems: list[str], context: str = "", hint: str = "") -> None:
        self.problems = list(problems)
        head = f"{context}: " if context else ""
        kinds: dict[str, int] = {}
        for p in self.problems:
            kind = p.split(": ", 2)[-2] if ": " in p else p
            kinds[kind] = kinds.get(kind, 0) + 1
        counts = ", ".join(f"{n} {k}" for k, n in kinds.items())
        tail = f"\n{hint}" if hint else ""
        super().__init__(
            f"{head}{len(self.problems)} problem(s) with the weights ({counts}):\n  "
            + "\n  ".join(self.problems)
            + tail
        )


# --------------------------------------------------------------------------------------------------
# Per-model tables: what each C model looks up while it is built (its loader is the one description of
# the topology; ``_core.*_tensors`` build the model against a source that records the lookups and hands
# out no memory).  This module adds only policy: prefixes, the known-unused tensors, checks, messages.


def _table(entries: Iterable[tuple[str, Shape]], prefix: str, c_prefix: str) -> Table:
    """The C model's list as a table, its ``c_prefix`` replaced by ``prefix``."""
    return {prefix + name[len(c_prefix) :]: tuple(shape) for name, shape in entries}


def unet_tensors(spec: UNetSpec, prefix: str = UNET_PREFIX) -> Table:
    """Every weight of ``openaimodel.UNetModel`` (SPEC §2.5: 686 tensors for SD 1.x)."""
    from ..unet import _c_config  # the spec -> C config mapping the model is built with

    return _table(_core.unet_tensors(**_c_config(spec)), prefix, UNET_PREFIX)


def text_encoder_tensors(spec: TextEncoderSpec, prefix: str = TEXT_PREFIX) -> Table:
    """Every weight of the CLIP text transformer (SPEC §1.3: 196 for ViT-L/14; ``position_ids`` excluded)."""
    entries = _core.text_encoder_tensors(
        vocab_size=spec.vocab_size,
        width=spec.width,
        layers=spec.layers,
        heads=spec.heads,
        mlp=spec.mlp,
        max_positions=spec.max_positions,
    )
    return _table(entries, prefix, TEXT_PREFIX)


def vae_encoder_tensors(spec: AutoencoderSpec, prefix: str = FIRST_STAGE_PREFIX) -> Table:
    """The KL encoder and ``quant_conv`` (SPEC §3.5: 106 + 2 tensors for SD's VAE)."""
    from ..autoencoder import _encoder_config, _Part

    return _table(_core.vae_encoder_tensors(**_encoder_config(_Part(spec, prefix))), "", "")


def _decoder_entries(spec: AutoencoderSpec, prefix: str, conditional: bool) -> Table:
    from ..autoencoder import _decoder_config, _Part

    kwargs = _decoder_config(_Part(spec, prefix))
    kwargs["conditional"] = conditional
    return _table(_core.decoder_tensors(**kwargs), "", "")


def cond_encoder_tensors(spec: AutoencoderSpec, prefix: str = "") -> Table:
    """The condition encoder ``decoder.encoder.layers.0..4`` (SPEC §4.4), in every asymmetric checkpoint."""
    table = _decoder_entries(spec, prefix, conditional=True)
    return {name: shape for name, shape in table.items() if name.startswith(prefix + "decoder.encoder.")}


def up_layers_tensors(spec: AutoencoderSpec, prefix: str = "") -> Table:
    """The dead ``decoder.up_layers.*`` ConvTranspose weights ([in, out, 4, 4], SPEC §4.7): never loaded.

    The C decoder has no such module, so this known-unused checkpoint content is described here.
    """
    w = spec.decoder.widths
    table: Table = {}
    for i, (cin, cout) in enumerate([(w[3], w[3]), (2 * w[2], w[2]), (w[2], w[1]), (w[1], w[0])]):
        table[f"{prefix}decoder.up_layers.{i}.deconv.weight"] = (cin, cout, 4, 4)
        table[f"{prefix}decoder.up_layers.{i}.deconv.bias"] = (cout,)
    return table


def decoder_tensors(spec: AutoencoderSpec, prefix: str = "") -> Table:
    """``post_quant_conv`` and the decoder the spec runs (SPEC §4.8).

    The condition encoder is included only for a conditional decoder: ``_wocondition`` checkpoints
    carry it too but never run it.  ``up_layers`` are never included.
    """
    return _decoder_entries(spec, prefix, spec.decoder.conditional)


# --------------------------------------------------------------------------------------------------
# Requirements per model kind


def kind_of(spec: Spec) -> Kind:
    """The model kind a spec describes."""
    if isinstance(spec, DiffusionSpec):
        return spec.kind
    return "decoder" if spec.decoder.conditional else "decoder_wocondition"


def ignored_prefixes(kind: Kind) -> tuple[str, ...]:
    """Name prefixes (or whole names) present in the original checkpoints of ``kind`` and never used."""
    if kind in ("inpaint", "txt2img"):
        unused_first_stage = (
            ("first_stage_model.",)
            if kind == "txt2img"
            else (
                "first_stage_model.decoder.",
                "first_stage_model.post_quant_conv.",
            )
        )
        return (
            *unused_first_stage,
            TEXT_PREFIX + "embeddings.position_ids",
            "model_ema.",
            *_SCHEDULE_BUFFERS,
        )
    if kind in ("decoder", "decoder_wocondition"):
        unused_cond = ("decoder.encoder.",) if kind == "decoder_wocondition" else ()
        return ("decoder.up_layers.", *unused_cond, "loss.", "encoder.", "quant_conv.")
    raise ValueError(f"unknown model kind {kind!r}; expected inpaint, txt2img, decoder or decoder_wocondition")


def owned_prefixes(kind: Kind) -> tuple[str, ...]:
    """Prefixes whose every key must be either required or known-unused for ``kind``."""
    if kind in ("inpaint", "txt2img"):
        return (UNET_PREFIX, "cond_stage_model.", FIRST_STAGE_PREFIX)
    if kind in ("decoder", "decoder_wocondition"):
        return ("decoder.", "post_quant_conv.")
    raise ValueError(f"unknown model kind {kind!r}; expected inpaint, txt2img, decoder or decoder_wocondition")


@dataclass(frozen=True)
class Requirements:
    """What a model needs from a state dict: the table, the owned and the known-unused prefixes."""

    kind: Kind
    table: Table
    owned: tuple[str, ...]
    ignored: tuple[str, ...]

    def is_ignored(self, name: str) -> bool:
        """Whether ``name`` is a known-unused key of this kind of checkpoint."""
        return name.startswith(self.ignored)

    def is_owned(self, name: str) -> bool:
        """Whether ``name`` lies under a prefix this model owns."""
        return name.startswith(self.owned)


def requirements(spec: Spec) -> Requirements:
    """The tensors a spec's model needs, with its owned and ignored prefixes."""
    kind = kind_of(spec)
    if isinstance(spec, DiffusionSpec):
        table = text_encoder_tensors(spec.text_encoder)
        table.update(unet_tensors(spec.unet))
        if spec.kind == "inpaint":
            table.update(vae_encoder_tensors(spec.first_stage))
    else:
        table = decoder_tensors(spec)
    return Requirements(kind, table, owned_prefixes(kind), ignored_prefixes(kind))


# --------------------------------------------------------------------------------------------------
# Checking a state dict


_DTYPE_NAMES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
}


def dtype_name(array: Any, dtype_of: Callable[[Any], str] | None = None) -> str:
    """The element type name of ``array``: ``float32``, ``float16``, ``bfloat16``, ``int64``...

    bf16 arrays as :mod:`asymvq.checkpoint` returns them (uint16 bits of dtype ``checkpoint.BF16``)
    are ``bfloat16``; ``dtype_of`` overrides the resolution for other carriers.
    """
    if dtype_of is not None:
        return dtype_of(array)
    try:
        return _DTYPE_NAMES[checkpoint.dtype_of(array)]
    except checkpoint.CheckpointError:
        return np.dtype(array.dtype).name


def check(
    table: Mapping[str, Shape] | Requirements,
    tensors: Mapping[str, Any],
    *,
    dtype_of: Callable[[Any], str] | None = None,
    context: str = "",
) -> None:
    """Raise :class:`WeightsError` listing every problem of ``tensors`` against ``table``.

    Problems: a required tensor missing; a key under an owned prefix that the model neither needs nor
    knowingly ignores (only with a :class:`Requirements`); a wrong shape; a dtype other than
    float32/float16/bfloat16.  Keys outside the owned prefixes are not checked.  ``dtype_of`` maps an
    array to its true dtype name (see :func:`dtype_name`); ``context`` prefixes the message.
    """
    req: Requirements | None
    shapes: Mapping[str, Shape]
    if isinstance(table, Requirements):
        req, shapes = table, table.table
    else:
        req, shapes = None, table
    problems: list[str] = []
    missing = [name for name in shapes if name not in tensors]
    for name in missing:
        problems.append(f"missing: {name} (expected shape {list(shapes[name])})")
    if req is not None:
        for name in tensors:
            if name not in shapes and req.is_owned(name) and not req.is_ignored(name):
                problems.append(f"unexpected: {name} (the config's {req.kind} model has no such tensor)")
    for name, shape in shapes.items():
        if name not in tensors:
            continue
        array = tensors[name]
        got = tuple(int(n) for n in array.shape)
        if got != tuple(shape):
            problems.append(f"wrong shape: {name} is {list(got)}, expected {list(shape)}")
        dtype = dtype_name(array, dtype_of)
        if dtype not in WEIGHT_DTYPES:
            problems.append(f"wrong dtype: {name} is {dtype}, expected one of {', '.join(WEIGHT_DTYPES)}")
    if problems:
        raise WeightsError(problems, context)


def count_parameters(table: Mapping[str, Shape]) -> int:
    """Total number of elements in a table."""
    return sum(int(np.prod(shape, dtype=np.int64)) for shape in table.values())


def iter_tables(spec: Spec) -> Iterable[tuple[str, Table]]:
    """The per-component tables of ``spec``'s model, named (for reports)."""
    if isinstance(spec, DiffusionSpec):
        yield "text_encoder", text_encoder_tensors(spec.text_encoder)
        yield "unet", unet_tensors(spec.unet)
        if spec.kind == "inpaint":
            yield "vae_encoder", vae_encoder_tensors(spec.first_stage)
    else:
        yield "decoder", decoder_tensors(spec)


def _mapped_file(array: Any) -> str | None:
    """The file an array is a view into (through a :class:`numpy.memmap`), else None."""
    a, depth = array, 0
    while isinstance(a, np.ndarray) and depth < 64:
        if isinstance(a, np.memmap):
            name = getattr(a, "filename", None)
            return str(name) if name else None
        a, depth = a.base, depth + 1
    return None


def build_model(make: Callable[[], Any], arrays: Mapping[str, Any], source: Any = None) -> Any:
    """``make()`` (a C model built from ``arrays``), with its weight problems (missing or mis-shaped
    tensors, NaN/Inf values found while the weights are copied) prefixed by the file they come from:
    ``source`` when it is a path, else the file the arrays are memory-mapped from, when there is one."""
    try:
        return make()
    except ValueError as e:
        if isinstance(source, (str, os.PathLike)):
            where: str | None = os.fspath(source)
        else:
            where = next((f for f in map(_mapped_file, arrays.values()) if f is not None), None)
        if where is None or str(e).startswith(where):
            raise
        raise ValueError(f"{where}: {e}") from e
