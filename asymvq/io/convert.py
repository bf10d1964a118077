"""One-step conversion of the original checkpoints to one self-describing ``.safetensors`` file.

``python -m asymvq convert [--config CFG] --ckpt CKPT [[--decoder-config CFG2] --decoder-ckpt CKPT2]
[--tokenizer VOCAB] [--dtype fp32|bf16|fp16] [--ema] -o OUT.safetensors``

``--ckpt`` / ``--decoder-ckpt`` may also be diffusers folders, and the configs may be omitted: they are
then read from the folder (:mod:`asymvq.diffusers_io`) or inferred from the checkpoint's tensors
(:mod:`asymvq.infer`);

* keeps exactly the tensors the models use (:func:`asymvq.tables.requirements`), under their original
  names; ``--ema`` takes the UNet from the ``model_ema.*`` copies instead (the reference scripts never
  do; the released single-copy checkpoints already hold EMA weights in ``model.diffusion_model.*``);
* reports what it dropped, grouped by prefix (``loss.*``, ``model_ema.*``, ``decoder.up_layers.*``...),
  and the non-tensor entries next to the state dict (``optimizer_states``, ``global_step``...);
* validates every name, shape and dtype before writing anything and reports all problems at once;
* converts dtypes (``--dtype``; by default each tensor keeps its stored dtype);
* streams: one tensor at a time is read (with plain reads, so the input's pages do not accumulate in
  the process), converted and written; the output goes to a hidden temporary name in the output's
  folder and is renamed only when complete and synced, so an interrupted conversion leaves no file.

Metadata of the output (all strings; :func:`read_metadata` parses them back):

==============================  ==========================================================================
``asymvq.format_version``       ``"1"`` (:data:`FORMAT_VERSION`)
``asymvq.kind``                 ``inpaint``, ``txt2img``, ``decoder`` or ``decoder_wocondition``
``asymvq.config``               YAML text of ``--config`` (re-read with :func:`asymvq.config.load_text`)
``asymvq.config.name``          its file name
``asymvq.decoder_config``       YAML text of ``--decoder-config`` (with ``--decoder-ckpt`` only)
``asymvq.decoder_config.name``  its file name
``asymvq.vocab.bpe``            the CLIP vocabulary (``--tokenizer``) in the form of
                                :meth:`asymvq.tokenizer.CLIPTokenizer.to_metadata`
``asymvq.ema``                  ``"true"`` when the UNet came from ``model_ema.*``
``format``                      ``"pt"`` (what other safetensors tools expect)
==============================  ==========================================================================
"""

from __future__ import annotations

import argparse
import io
import json
import os
import struct
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from . import tables
from .tables import WeightsError
from . import checkpoint, config
from .config import AutoencoderSpec, ConfigError, DiffusionSpec, Spec

__all__ = [
    "FORMAT_VERSION",
    "DTYPE_TAGS",
    "ConversionReport",
    "ConvertedMetadata",
    "convert",
    "read_metadata",
    "main",
]

#: Version of the converted file layout; bumped when names or metadata change meaning.
FORMAT_VERSION = "1"

#: ``--dtype`` choices -> safetensors dtype tags.
DTYPE_TAGS = {"fp32": "F32", "fp16": "F16", "bf16": "BF16"}

KEY_VERSION = "asymvq.format_version"
KEY_KIND = "asymvq.kind"
KEY_CONFIG = "asymvq.config"
KEY_CONFIG_NAME = "asymvq.config.name"
KEY_DECODER_CONFIG = "asymvq.decoder_config"
KEY_DECODER_CONFIG_NAME = "asymvq.decoder_config.name"
KEY_VOCAB = "asymvq.vocab.bpe"
KEY_EMA = "asymvq.ema"

_ITEMSIZE = {"F32": 4, "F16": 2, "BF16": 2}


# --------------------------------------------------------------------------------------------------
# Planning


@dataclass(frozen=True)
class _Entry:
    name: str  # name in the output (the original checkpoint name)
    source: int  # index into the opened sources
    source_name: str  # name in the source checkpoint (differs for EMA weights)
    shape: tuple[int, ...]
    source_tag: str
    tag: str  # output dtype tag

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * _ITEMSIZE[self.tag]


@dataclass
class ConversionReport:
    """What :func:`convert` did; ``dropped`` etc. are keyed by input file."""

    output: Path
    tensors: int
    bytes: int
    seconds: float
    dropped: dict[str, dict[str, int]] = field(default_factory=dict)  # file -> prefix group -> tensor count
    other_entries: dict[str, tuple[str, ...]] = field(default_factory=dict)  # file -> entries beside state_dict
    skipped: dict[str, dict[str, str]] = field(default_factory=dict)  # file -> state-dict entries not tensors

    def summary(self) -> str:
        """Human-readable lines for the command line."""
        lines = [f"wrote {self.output}: {self.tensors} tensors, {self.bytes / 2**20:,.1f} MiB in {self.seconds:.1f} s"]
        for path, groups in self.dropped.items():
            lines.append(f"dropped from {Path(path).name} (unused by the models):")
            lines += [
                f"  {group}: {count} tensor{'s' if count != 1 else ''}" for group, count in sorted(groups.items())
            ]
            if self.other_entries.get(path):
                lines.append(f"  entries beside the state dict: {', '.join(self.other_entries[path])}")
            if self.skipped.get(path):
                lines.append(f"  state-dict entries that are not tensors: {', '.join(sorted(self.skipped[path]))}")
        return "\n".join(lines)


def _ema_name(name: str) -> str:
    # The original LitEma names: "model." stripped, every remaining dot removed.
    return "model_ema." + name[len("model.") :].replace(".", "")


def _group(name: str, ignored: Sequence[str]) -> str:
    if name in tables.schedule_buffer_names():
        return "DDPM schedule buffers (betas, alphas_cumprod, ...)"
    for prefix in ignored:
        if name.startswith(prefix):
            return prefix + "*" if prefix.endswith(".") else prefix
    parts = name.split(".")
    return ".".join(parts[:2]) + ".*" if len(parts) > 2 else name


def _fitting_configs(spec: Spec, views: Mapping[str, Any]) -> list[str]:
    """Shipped configs of the same family as ``spec`` that these weights do satisfy."""
    fits = []
    for tiny in (False, True):
        for name in config.packaged_config_names(tiny):
            path = (config.packaged_tiny_config if tiny else config.packaged_config)(name)
            candidate = config.load(path)
            if type(candidate) is not type(spec) or candidate == spec:
                continue
            try:
                tables.check(tables.requirements(candidate), views)
            except WeightsError:
                continue
            fits.append(f"{'tiny/' if tiny else ''}{name}")
    return fits


def _plan_source(
    index: int, ckpt: checkpoint.Checkpoint, spec: Spec, tag: str | None, ema: bool
) -> tuple[list[_Entry], list[str], str, Counter[str]]:
    """Entries to copy from one checkpoint, the problems found, a hint, and the dropped groups."""
    req = tables.requirements(spec)
    source_of = {name: name for name in req.table}
    if ema:
        source_of.update({n: _ema_name(n) for n in req.table if n.startswith(tables.UNET_PREFIX)})
    views: dict[str, Any] = {name: ckpt.get(name) for name in ckpt.keys()}
    for target, source in source_of.items():
        if source != target:
            views.pop(target, None)
            if source in views:
                views[target] = views[source]
    problems: list[str] = []
    hint = ""
    try:
        tables.check(req, views)
    except WeightsError as exc:
        problems = [p + _ema_hint(p, source_of) for p in exc.problems]
        fits = _fitting_configs(spec, views)
        if fits:
            hint = f"hint: {Path(ckpt.path).name} fits the shipped config(s) {', '.join(fits)}"
    used = set(source_of.values())
    ignored = req.ignored + ((tables.UNET_PREFIX,) if ema else ())
    dropped = Counter(_group(n, ignored) for n in ckpt.keys() if n not in used)
    entries = []
    if not problems:
        for target, source in source_of.items():
            source_tag = ckpt.info(source).dtype
            entries.append(_Entry(target, index, source, req.table[target], source_tag, tag or source_tag))
    return entries, problems, hint, dropped


def _ema_hint(problem: str, source_of: Mapping[str, str]) -> str:
    if problem.startswith("missing: "):
        name = problem[len("missing: ") :].split(" ", 1)[0]
        if source_of.get(name, name) != name:
            return f" (looked for {source_of[name]})"
    return ""


# --------------------------------------------------------------------------------------------------
# Reading and converting one tensor


#: Elements converted and written at a time: bounds the memory a conversion needs beyond its output.
_CHUNK = 1 << 22


class _Reader:
    """Reads tensors with plain file reads so that the input's pages never pile up in this process."""

    def __init__(self, ckpt: checkpoint.Checkpoint) -> None:
        self.ckpt = ckpt
        self.file: io.BufferedReader = open(ckpt.path, "rb")

    def close(self) -> None:
        self.file.close()

    def chunks(self, name: str, size: int = _CHUNK) -> Iterator[np.ndarray]:
        """Tensor ``name`` flattened in C order, as in-memory pieces of at most ``size`` elements."""
        view = self.ckpt.get(name)
        base = view.base
        if not (isinstance(base, np.memmap) and view.flags.c_contiguous):
            flat = np.array(view).reshape(-1)  # strided view (rare in .ckpt files): copy via the mapping
            for start in range(0, flat.size, size):
                yield flat[start : start + size]
            return
        position = view.__array_interface__["data"][0] - base.__array_interface__["data"][0] + base.offset
        self.file.seek(position)
        for start in range(0, view.size, size):
            piece = np.empty(min(size, view.size - start), view.dtype)
            if self.file.readinto(piece.view(np.uint8).data) != piece.nbytes:
                raise checkpoint.CheckpointError(f"{self.ckpt.path}: tensor {name!r} is cut short (truncated file?)")
            yield piece


def _to_tag(array: np.ndarray, source_tag: str, tag: str, name: str) -> np.ndarray:
    """1-D ``array`` (dtype ``source_tag``) as contiguous data of dtype ``tag`` (bf16 as uint16 bits)."""
    if source_tag == tag:
        return array
    values = checkpoint.bf16_to_float32(array) if source_tag == "BF16" else array.astype(np.float32)
    if tag == "F32":
        return values
    if tag == "BF16":
        return checkpoint.float32_to_bf16(values)
    with np.errstate(over="ignore"):
        out = values.astype(np.float16)
    if not np.isfinite(out).all() and np.isfinite(values).all():
        big = float(np.abs(values).max())
        raise ValueError(f"tensor {name!r} does not fit float16 (largest magnitude {big:g} > 65504); use bf16")
    return out


# --------------------------------------------------------------------------------------------------
# Writing


def _header(entries: Sequence[_Entry], metadata: Mapping[str, str]) -> bytes:
    header: dict[str, Any] = {"__metadata__": dict(metadata)}
    position = 0
    for e in entries:
        header[e.name] = {"dtype": e.tag, "shape": list(e.shape), "data_offsets": [position, position + e.nbytes]}
        position += e.nbytes
    blob = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return struct.pack("<Q", len(blob) + (-len(blob) % 8)) + blob + b" " * (-len(blob) % 8)


def _same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist
        return False


def _temporary(output: Path) -> Path:
    return output.with_name(f".{output.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")


def _write(
    output: Path, entries: Sequence[_Entry], readers: Sequence[_Reader], metadata: Mapping[str, str], progress: bool
) -> int:
    from tqdm import tqdm

    total = sum(e.nbytes for e in entries)
    temp = _temporary(output)
    try:
        with (
            open(temp, "xb") as out,
            tqdm(
                total=total,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=output.name,
                disable=not progress,
                leave=False,
            ) as bar,
        ):
            out.write(_header(entries, metadata))
            for e in entries:
                for piece in readers[e.source].chunks(e.source_name):
                    data = _to_tag(piece, e.source_tag, e.tag, e.source_name)
                    out.write(data.view(np.uint8).data)
                    bar.update(data.nbytes)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, output)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return total


# --------------------------------------------------------------------------------------------------
# Public API


def convert(
    config_path: str | os.PathLike[str] | None,
    ckpt_path: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    decoder_config: str | os.PathLike[str] | None = None,
    decoder_ckpt: str | os.PathLike[str] | None = None,
    tokenizer: str | os.PathLike[str] | None = None,
    dtype: str | None = None,
    ema: bool = False,
    progress: bool = False,
) -> ConversionReport:
    """Convert ``ckpt_path`` (described by ``config_path``), plus optionally a decoder, to ``output``.

    ``config_path`` is a diffusion config (then ``decoder_config``/``decoder_ckpt`` may add an
    asymmetric decoder to the same file, and ``tokenizer`` may embed the CLIP vocabulary) or an
    autoencoder config (the decoder alone).  ``dtype`` is ``fp32``, ``fp16``, ``bf16`` or None (keep).

    Without a config (``config_path`` / ``decoder_config`` None), a checkpoint file's config is inferred
    from its tensors (:mod:`asymvq.infer`, announced on stderr) and a diffusers folder is read with
    :mod:`asymvq.diffusers_io`: a pipeline folder gives the diffusion model, its tokenizer and, unless
    ``decoder_ckpt`` is given, its VAE's decoder (an AsymmetricAutoencoderKL's; SD's AutoencoderKL
    decoder for text-to-image only); a VAE folder gives the decoder alone.

    Raises :class:`~asymvq.config.ConfigError`, :class:`~asymvq.checkpoint.CheckpointError`,
    :class:`~asymvq.tables.WeightsError` (every problem of every input at once) or ``ValueError`` for
    bad arguments; in every case no output file is left behind.
    """
    start = time.perf_counter()
    out = Path(output)
    if dtype is not None and dtype not in DTYPE_TAGS:
        raise ValueError(f"dtype {dtype!r}: expected one of {', '.join(DTYPE_TAGS)}")
    if decoder_config is not None and decoder_ckpt is None:
        raise ValueError("--decoder-config needs --decoder-ckpt")
    if out.suffix != ".safetensors":
        raise ValueError(f"{out}: the output must be a .safetensors file")
    if not out.parent.is_dir():
        raise ValueError(f"{out}: the folder {out.parent} does not exist")
    for flag, source in (("--ckpt", ckpt_path), ("--decoder-ckpt", decoder_ckpt), ("--config", config_path),
                         ("--decoder-config", decoder_config), ("--tokenizer", tokenizer)):
        if source is not None and _same_file(out, source):
            raise ValueError(f"{out} is the {flag} input: writing it would destroy the input (and whatever it "
                             "holds beyond the weights, e.g. an embedded decoder or vocabulary); choose another -o")

    main_input = _resolve(config_path, ckpt_path, "any")
    spec = main_input.spec
    inputs = [main_input]
    metadata = {
        "format": "pt",
        KEY_VERSION: FORMAT_VERSION,
        KEY_KIND: tables.kind_of(spec),
        KEY_CONFIG: spec.yaml_text,
        KEY_CONFIG_NAME: main_input.config_name,
    }
    if isinstance(spec, AutoencoderSpec):
        if decoder_ckpt is not None:
            raise ValueError(f"{main_input.label} already holds a decoder; --decoder-ckpt needs a diffusion model")
        if tokenizer is not None:
            raise ValueError("--tokenizer needs a diffusion config (a decoder has no text encoder)")
        if ema:
            raise ValueError("--ema applies to a diffusion model's UNet, not to a decoder")
    elif ema and main_input.sources is not None:
        raise ValueError("--ema applies to original checkpoints (model_ema.*), not to a diffusers folder")
    decoder_input = None
    if decoder_ckpt is not None:
        assert isinstance(spec, DiffusionSpec)
        decoder_input = _resolve(decoder_config, decoder_ckpt, "decoder" if spec.kind == "inpaint" else "anydecoder")
        if not isinstance(decoder_input.spec, AutoencoderSpec):
            raise ConfigError(
                f"{decoder_input.label}: expected an autoencoder (decoder), got {decoder_input.spec.target}"
            )
    elif isinstance(spec, DiffusionSpec) and main_input.folder is not None:
        decoder_input = _folder_decoder(main_input.folder, spec)
    if decoder_input is not None:
        inputs.append(decoder_input)
        metadata[KEY_DECODER_CONFIG] = decoder_input.spec.yaml_text
        metadata[KEY_DECODER_CONFIG_NAME] = decoder_input.config_name
    if tokenizer is not None:
        from ..tokenizer import CLIPTokenizer

        metadata[KEY_VOCAB] = CLIPTokenizer.from_file(tokenizer).to_metadata()
    elif isinstance(spec, DiffusionSpec) and main_input.folder is not None:
        vocab = _folder_vocab(main_input.folder)
        if vocab is not None:
            metadata[KEY_VOCAB] = vocab
    if ema:
        metadata[KEY_EMA] = "true"

    tag = DTYPE_TAGS[dtype] if dtype else None
    report = ConversionReport(out, 0, 0, 0.0)
    entries: list[_Entry] = []
    problems: list[str] = []
    hints: list[str] = []
    opened: list[checkpoint.Checkpoint] = []
    for item in inputs:
        if item.sources is not None:  # a diffusers folder: already renamed and checked
            entries += _plan_mapped(item.sources, item.spec, opened, tag)
            continue
        assert item.path is not None
        ckpt = checkpoint.open_checkpoint(item.path)
        opened.append(ckpt)
        index = len(opened) - 1
        use_ema = ema and isinstance(item.spec, DiffusionSpec)
        found, bad, hint, dropped = _plan_source(index, ckpt, item.spec, tag, use_ema)
        entries += found
        hints += [hint] if hint else []
        problems += [f"{Path(item.path).name}: {p}" if len(inputs) > 1 else p for p in bad]
        report.dropped[ckpt.path] = dict(dropped)
        report.other_entries[ckpt.path] = tuple(ckpt.other_entries)
        report.skipped[ckpt.path] = dict(ckpt.skipped)
    if problems:
        which = ", ".join(f"{i.label} against {Path(i.spec.source).name}" for i in inputs)
        raise WeightsError(problems, f"checking {which}", hint="\n".join(hints))
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        raise ValueError("the diffusion and decoder checkpoints both provide some tensors")

    # Largest items first keeps every tensor aligned to its item size; table order within a size.
    entries.sort(key=lambda e: -_ITEMSIZE[e.tag])
    readers = [_Reader(c) for c in opened]
    try:
        report.bytes = _write(out, entries, readers, metadata, progress)
    finally:
        for r in readers:
            r.close()
        for c in opened:
            c.close()
    report.tensors = len(entries)
    report.seconds = time.perf_counter() - start
    return report


@dataclass(frozen=True)
class _Input:
    """One model to convert: its spec and where its tensors are."""

    spec: Spec
    label: str  # the input as named in messages
    config_name: str  # for the metadata
    path: str | os.PathLike[str] | None = None  # an original checkpoint file ...
    sources: Mapping[str, Any] | None = None  # ... or original name -> diffusers_io.TensorSource
    folder: Path | None = None  # the diffusers pipeline folder, if any


def _resolve(config_path: str | os.PathLike[str] | None, ckpt: str | os.PathLike[str], role: str) -> _Input:
    """The spec and tensors of one input: a config + checkpoint, a checkpoint alone, or a diffusers folder.

    ``role``: ``any`` (main input), ``decoder`` (a conditional decoder for inpainting) or ``anydecoder``.
    """
    from . import diffusers_io, infer

    label = Path(ckpt).name
    if config_path is not None:
        return _Input(config.load(config_path), label, Path(config_path).name, path=ckpt)
    if Path(ckpt).is_dir():
        folder = Path(ckpt)
        if role == "any" and (folder / "model_index.json").is_file():
            model = diffusers_io.read_pipeline(folder)
            return _Input(model.spec, label, f"{folder.name} (diffusers)", sources=model.tensors, folder=folder)
        asymmetric = diffusers_io.vae_class(folder) == "AsymmetricAutoencoderKL"
        if role == "decoder" and not asymmetric:
            raise ConfigError(f"{folder} holds SD's AutoencoderKL, whose decoder has no condition: an inpainting "
                              "model needs an asymmetric decoder (AsymmetricAutoencoderKL)")
        model = diffusers_io.read_vae(folder, condition=asymmetric, encoder=False)
        vae = folder / "vae" if (folder / "model_index.json").is_file() else folder
        return _Input(model.spec, label, f"{vae.name} (diffusers)", sources=model.tensors)
    found = infer.infer_config(ckpt, "decoder" if role == "decoder" else "any", announce=True)
    if role == "anydecoder" and not isinstance(found.spec, AutoencoderSpec):
        raise ConfigError(f"{ckpt}: --decoder-ckpt holds {found.summary}, not a decoder")
    return _Input(found.spec, label, found.name, path=ckpt)


def _folder_decoder(folder: Path, spec: DiffusionSpec) -> _Input | None:
    """The decoder a pipeline folder's VAE provides for ``spec``'s kind, or None (SD's decoder, inpainting)."""
    from . import diffusers_io

    asymmetric = diffusers_io.vae_class(folder) == "AsymmetricAutoencoderKL"
    if not asymmetric and spec.kind == "inpaint":
        return None  # SD's decoder has no condition; the decoder comes with the pipeline at load time
    model = diffusers_io.read_vae(folder, condition=asymmetric, encoder=False)
    return _Input(model.spec, folder.name, "vae (diffusers)", sources=model.tensors)


def _folder_vocab(folder: Path) -> str | None:
    """The folder's CLIP tokenizer in metadata form, or None when it is not the standard vocabulary."""
    from ..tokenizer import CLIPTokenizer
    from . import diffusers_io

    try:
        return CLIPTokenizer.from_file(diffusers_io.read_tokenizer(folder / "tokenizer")).to_metadata()
    except ValueError:
        return None  # loading then needs a vocabulary (find_vocab), which says so


def _plan_mapped(sources: Mapping[str, Any], spec: Spec, opened: list[checkpoint.Checkpoint],
                 tag: str | None) -> list[_Entry]:
    """Entries for tensors already renamed and checked (diffusers folders); adds their files to ``opened``."""
    index = {id(c): i for i, c in enumerate(opened)}
    entries = []
    for name, shape in tables.requirements(spec).table.items():
        src = sources[name]
        if id(src.checkpoint) not in index:
            opened.append(src.checkpoint)
            index[id(src.checkpoint)] = len(opened) - 1
        source_tag = src.checkpoint.info(src.name).dtype
        entries.append(_Entry(name, index[id(src.checkpoint)], src.name, shape, source_tag, tag or source_tag))
    return entries


@dataclass(frozen=True)
class ConvertedMetadata:
    """The parsed metadata of a converted file."""

    format_version: str
    kind: str
    spec: Spec
    decoder: AutoencoderSpec | None
    vocab: str | None  # the CLIPTokenizer.to_metadata() string, if embedded
    ema: bool


def read_metadata(path: str | os.PathLike[str]) -> ConvertedMetadata:
    """Read and parse the metadata of a file written by :func:`convert` (header only, no weights)."""
    meta = checkpoint.safetensors_metadata(path)
    name = os.fspath(path)
    version = meta.get(KEY_VERSION)
    if version is None:
        raise ValueError(f"{name} was not written by `python -m asymvq convert` (no {KEY_VERSION} metadata)")
    if version != FORMAT_VERSION:
        raise ValueError(
            f"{name} has format version {version}; this asymvq reads version {FORMAT_VERSION}: convert the "
            "original checkpoint again"
        )
    for key in (KEY_KIND, KEY_CONFIG):
        if key not in meta:
            raise ValueError(f"{name}: metadata {key!r} is missing (corrupt file?)")
    spec = config.load_text(meta[KEY_CONFIG], source=f"{name}:{KEY_CONFIG}")
    decoder: AutoencoderSpec | None = None
    if KEY_DECODER_CONFIG in meta:
        parsed = config.load_text(meta[KEY_DECODER_CONFIG], source=f"{name}:{KEY_DECODER_CONFIG}")
        if not isinstance(parsed, AutoencoderSpec):
            raise ValueError(f"{name}: {KEY_DECODER_CONFIG} is not an autoencoder config")
        decoder = parsed
    return ConvertedMetadata(version, meta[KEY_KIND], spec, decoder, meta.get(KEY_VOCAB), meta.get(KEY_EMA) == "true")


# --------------------------------------------------------------------------------------------------
# Command line


def _parser() -> argparse.ArgumentParser:
    from .._cli import ArgumentParser

    p = ArgumentParser(
        prog="python -m asymvq convert",
        description="Convert original checkpoints (.ckpt or .safetensors) to one asymvq .safetensors file.",
    )
    p.add_argument(
        "--config",
        help="diffusion config (v1-*.yaml) or decoder config (autoencoder_*.yaml); omitted: inferred from "
        "the checkpoint's tensors, or read from a diffusers folder",
    )
    p.add_argument("--ckpt", required=True, help="checkpoint matching --config, or a diffusers folder")
    p.add_argument("--decoder-config", help="asymmetric decoder config to add to a diffusion model (omitted: inferred)")
    p.add_argument(
        "--decoder-ckpt", help="asymmetric decoder checkpoint (base / 1.5x / 2x) or AsymmetricAutoencoderKL folder"
    )
    p.add_argument(
        "--tokenizer", help="CLIP vocabulary to embed (bpe_simple_vocab_16e6.txt.gz, or vocab.json+merges.txt folder)"
    )
    p.add_argument("--dtype", choices=tuple(DTYPE_TAGS), help="convert every weight to this dtype (default: keep)")
    p.add_argument("--ema", action="store_true", help="take the UNet from the model_ema.* copies")
    p.add_argument("-o", "--output", required=True, help="output .safetensors file")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no report")
    return p


def main(argv: Iterable[str] | None = None) -> int:
    """``python -m asymvq convert ...``; returns the exit status: 0 done, 2 a bad argument or input
    (one ``error:`` line), 143 on SIGTERM (no file left behind); see :func:`asymvq._cli.run_command`."""
    from .. import _cli

    def run() -> int:
        parser = _parser()
        args = parser.parse_args(None if argv is None else list(argv))
        if args.decoder_config is not None and args.decoder_ckpt is None:
            parser.error("--decoder-config needs --decoder-ckpt")
        report = convert(
            args.config,
            args.ckpt,
            args.output,
            decoder_config=args.decoder_config,
            decoder_ckpt=args.decoder_ckpt,
            tokenizer=args.tokenizer,
            dtype=args.dtype,
            ema=args.ema,
            progress=not args.quiet and sys.stderr.isatty(),
        )
        if not args.quiet:
            print(report.summary())
        return 0

    return _cli.run_command(run)


if __name__ == "__main__":
    sys.exit(main())
