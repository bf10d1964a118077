"""Compare decoders on the same latents: ``python -m asymvq compare`` (issue 14 §1).

The diffusion runs **once** per image (inpaint_st's computation: fixed prompt, seed 0, DDIM eta 1,
guidance 7.5) and every decoder decodes the same final latent::

    python -m asymvq compare --indir D --outdir O \\
        --config_d v1-inpainting-inference.yaml --ckpt_d sd-v1-5-inpainting.ckpt \\
        --decoder vanilla \\
        --decoder base=autoencoder_kl_32x32x4.yaml:base.ckpt \\
        --decoder large2=autoencoder_kl_32x32x4_large2.yaml:large2.ckpt

``vanilla`` is SD's own decoder (the first stage of ``--config_d`` with ``--ckpt_d``); ``NAME=CONFIG:CKPT``
any decoder :class:`~asymvq.pipelines.InpaintPipeline` accepts. Written under ``O``:

* ``O/NAME/IMG.png``: decoder NAME's image for the pair IMG.png + IMG_mask.png;
* ``O/strips/IMG.png``: original | masked input | one column per decoder, the hole outlined in red;
* ``O/metrics.csv`` (one row per image and decoder), ``O/summary.csv`` (mean and std per decoder),
  ``O/metrics.json`` (both), ``O/metrics.png`` (each metric per decoder with std error bars; needs
  matplotlib, ``pip install "asymvq[plot]"``), ``O/failures.csv`` (pairs that could not be processed).

Metrics (see :mod:`asymvq.metrics`): ``pre_error`` (MSE outside the mask, images in [0, 1]),
``psnr`` and ``ssim`` outside the mask, each against the original resized to the inpainting size.
Std is the population standard deviation over the images (ddof = 0).

Optional learned metrics (:mod:`asymvq.quality`, ``pip install "asymvq[quality]"``; the networks are files
the user supplies, nothing is downloaded): ``--lpips NET.pt2`` adds ``lpips`` (whole image) and
``lpips_known`` (outside the mask: the hole pasted back from the original) per image; ``--fid NET.pt2``
adds ``fid`` per decoder (the folder's results against the originals) to summary.csv, metrics.json and
the plot. Each pair's record keeps its FID features, so a resumed run's FID covers every pair.

The per-pair work (:func:`process_pair`) is what :mod:`asymvq.batch` distributes; this command runs it
in this process (``python -m asymvq batch`` spreads the same work over a Dask cluster).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

from . import _cli

__all__ = [
    "Job",
    "DecoderSpec",
    "Models",
    "process_pair",
    "find_pairs",
    "summarize",
    "write_tables",
    "plot_summary",
    "make_strip",
    "main",
]

PROMPT = "photograph of a beautiful empty scene, highest quality settings"
METRICS = ("pre_error", "psnr", "ssim")
#: Per-image learned metrics, with ``--lpips`` (:mod:`asymvq.quality`).
LPIPS_METRICS = ("lpips", "lpips_known")
RECORDS_DIR = ".asymvq-records"
STRIPS_DIR = "strips"


@dataclass(frozen=True)
class DecoderSpec:
    """One decoder to compare: ``name`` and its config/checkpoint (``vanilla``: SD's own, both None)."""

    name: str
    config: Optional[str] = None
    ckpt: Optional[str] = None


def parse_decoder(value: str) -> DecoderSpec:
    """``vanilla`` or ``NAME=CONFIG:CKPT`` (the CKPT may itself contain ':'; CONFIG may not)."""
    if value == "vanilla":
        return DecoderSpec("vanilla")
    name, eq, rest = value.partition("=")
    config, colon, ckpt = rest.partition(":")
    if not eq or not colon or not name or not config or not ckpt:
        raise _cli.CLIError(f"--decoder {value!r}: expected 'vanilla' or NAME=CONFIG:CKPT")
    if name in (STRIPS_DIR, RECORDS_DIR) or "/" in name or name.startswith("."):
        raise _cli.CLIError(f"--decoder {value!r}: the name {name!r} is reserved or not a plain folder name")
    return DecoderSpec(name, config, ckpt)


@dataclass(frozen=True)
class Job:
    """What to do with every pair; picklable, the same on every worker.

    ``mode``: ``"inpaint"`` (one decoder, ``O/IMG.png``, as inpaint_st) or ``"compare"`` (every decoder,
    ``O/NAME/IMG.png`` and a strip). ``threads``: asymvq compute threads per pipeline (None: leave as is).
    ``lpips`` / ``fid``: the learned metrics' network files (:mod:`asymvq.quality`; None: not measured).
    """

    config_d: str
    ckpt_d: str
    decoders: Tuple[DecoderSpec, ...]
    mode: str = "compare"
    vocab: Optional[str] = None
    precision: str = "fp32"
    steps: int = 50
    round: bool = False
    threads: Optional[int] = None
    lpips: Optional[str] = None
    fid: Optional[str] = None

    def __post_init__(self) -> None:
        if self.mode not in ("inpaint", "compare"):
            raise ValueError(f"mode must be 'inpaint' or 'compare', got {self.mode!r}")
        if not self.decoders:
            raise ValueError("at least one decoder is needed")
        if self.mode == "inpaint" and len(self.decoders) != 1:
            raise ValueError("mode 'inpaint' runs exactly one decoder")
        names = [d.name for d in self.decoders]
        if len(set(names)) != len(names):
            raise ValueError(f"decoder names must be unique, got {names}")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")

    @property
    def model_key(self) -> str:
        """Identifies the models a worker must hold: files (path, size, mtime), decoders, precision."""
        parts = [self.precision, self.vocab or ""]
        files = [self.config_d, self.ckpt_d] + [x for d in self.decoders for x in (d.name, d.config, d.ckpt)]
        for p in files + [self.lpips, self.fid]:
            if p is None:
                parts.append("-")
                continue
            try:
                st = os.stat(p)
                parts.append(f"{os.path.abspath(p)}:{st.st_size}:{st.st_mtime_ns}")
            except OSError:
                parts.append(os.path.abspath(p))
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]

    @property
    def metric_names(self) -> Tuple[str, ...]:
        """The per-image metrics this job measures (``metrics.csv``'s columns after image and decoder)."""
        return METRICS + (LPIPS_METRICS if self.lpips else ())

    def output_paths(self, name: str) -> List[str]:
        """Paths, relative to the output folder, that a complete pair ``name`` (e.g. ``cat.png``) has."""
        if self.mode == "inpaint":
            return [name]
        return [f"{d.name}/{name}" for d in self.decoders] + [f"{STRIPS_DIR}/{name}"]


class Models:
    """The diffusion pipeline (with the first decoder) and the other decoders, built once."""

    def __init__(self, job: Job):
        from . import checkpoint
        from . import config as config_mod
        from .autoencoder import Autoencoder
        from .pipelines import InpaintPipeline, inpaint_decoder_spec

        def files(d: DecoderSpec) -> Tuple[str, str]:
            return (job.config_d, job.ckpt_d) if d.config is None else (d.config, d.ckpt)  # type: ignore[return-value]

        first = job.decoders[0]
        cfg, ckpt = files(first)
        self.pipe = InpaintPipeline.from_original(
            job.config_d, job.ckpt_d, cfg, ckpt, vocab=job.vocab, precision=job.precision
        )
        self.decoders: Dict[str, Any] = {first.name: self.pipe.decoder}
        for d in job.decoders[1:]:
            cfg, ckpt = files(d)
            w = checkpoint.load(ckpt)  # memory-mapped: the SD checkpoint again costs no copy
            spec = inpaint_decoder_spec(config_mod.load(cfg), w, cfg)
            self.decoders[d.name] = Autoencoder.from_config(spec, w, precision=job.precision, parts="decoder")
        self.quality = None
        if job.lpips or job.fid:
            from .quality import QualityModels

            self.quality = QualityModels(job.lpips, job.fid, threads=job.threads)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_atomic(path: Path, data: bytes) -> None:
    """Writes to a temporary name in the same folder and renames (no half file is ever visible)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _png_bytes(img: Image.Image) -> bytes:
    import io

    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def mask_outline(mask: np.ndarray) -> np.ndarray:
    """[H, W] bool: the hole's pixels (mask >= 0.5) that touch a known pixel (4-neighbourhood)."""
    m = np.asarray(mask, dtype=np.float32).squeeze() >= 0.5
    p = np.pad(m, 1, mode="edge")
    inner = p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return m & ~inner


def make_strip(original: np.ndarray, mask: np.ndarray, images: Sequence[Tuple[str, np.ndarray]]) -> Image.Image:
    """original | masked input | each (label, image), uint8 [H, W, 3]; the hole outlined in red, labels on top."""
    H, W = original.shape[:2]
    hole = np.asarray(mask, dtype=np.float32).squeeze() >= 0.5
    edge = mask_outline(mask)
    masked = original.copy()
    masked[hole] = 127
    cols = [("original", original), ("masked", masked)] + list(images)
    label_h = 14
    strip = Image.new("RGB", (W * len(cols), H + label_h), (255, 255, 255))
    draw = ImageDraw.Draw(strip)
    for i, (label, a) in enumerate(cols):
        a = a.copy()
        a[edge] = (255, 0, 0)
        strip.paste(Image.fromarray(a), (i * W, label_h))
        draw.text((i * W + 2, 1), label, fill=(0, 0, 0))
    return strip


def _measure(original: np.ndarray, result: np.ndarray, mask: np.ndarray) -> Dict[str, float]:
    from .metrics import preservation_error, psnr_outside_mask, ssim_outside_mask

    m = np.asarray(mask, dtype=np.float32).squeeze()
    return {
        "pre_error": preservation_error(original, result, m),
        "psnr": psnr_outside_mask(original, result, m),
        "ssim": ssim_outside_mask(original, result, m),
    }


def record_path(outdir: Path, name: str) -> Path:
    return outdir / RECORDS_DIR / f"{name}.json"


def input_stamp(image: str, mask: str) -> List[Any]:
    """What identifies a pair's inputs on disk: path, size and mtime of the image and the mask."""
    out: List[Any] = []
    for p in (image, mask):
        st = os.stat(p)
        out.append([os.path.abspath(p), st.st_size, st.st_mtime_ns])
    return out


def is_complete(job: Job, outdir: Path, image: str, mask: str) -> Optional[dict]:
    """The pair's record if it was made by this job from these inputs (unchanged since) and its outputs
    all exist with the recorded sizes and sha256, else None (the pair must be computed again)."""
    name = os.path.basename(image)
    rp = record_path(outdir, name)
    try:
        rec = json.loads(rp.read_text())
        stamp = input_stamp(image, mask)
    except (OSError, ValueError):
        return None
    if (
        rec.get("model_key") != job.model_key
        or rec.get("steps") != job.steps
        or rec.get("round") != job.round
        or rec.get("mode") != job.mode
        or rec.get("inputs") != stamp
        or sorted(rec.get("outputs", {})) != sorted(job.output_paths(name))
    ):
        return None
    for rel, (size, digest) in rec["outputs"].items():
        p = outdir / rel
        try:
            if p.stat().st_size != size or _sha256(p) != digest:
                return None
        except OSError:
            return None
    return rec


def process_pair(models: Models, job: Job, image: str, mask: str, outdir: str) -> dict:
    """Inpaints one pair and writes its outputs, then its record (the completeness marker), atomically.

    Returns the record: ``name``, ``outputs`` {relative path: [size, sha256]}, ``metrics``
    {decoder: {metric: value}}, ``seconds``, ``model_key``, ``steps``, ``peak_rss_mb``. Raises on a bad pair.
    """
    import asymvq

    from .image import load_pair, to_pil, to_uint8
    from .pipelines import SCALE_FACTOR

    if job.threads is not None:
        asymvq.set_num_threads(job.threads)
    t0 = time.perf_counter()
    out = Path(outdir)
    name = os.path.basename(image)
    stamp = input_stamp(image, mask)
    x, m, _ = load_pair(image, mask)
    res = models.pipe(x, m, prompt=PROMPT, seed=0, scale=7.5, steps=job.steps, eta=1.0, round=job.round, progress=False)
    original = np.rint((x[0].transpose(1, 2, 0) + 1.0) * 127.5).clip(0, 255).astype(np.uint8)
    results: List[Tuple[str, np.ndarray]] = []
    t_dec = time.perf_counter()
    for i, d in enumerate(job.decoders):
        if i == 0:
            arr = res.arrays
        else:
            dec = models.decoders[d.name]
            z = res.latents / SCALE_FACTOR
            arr = dec.decode(z, image=x, mask=m) if dec.conditional else dec.decode(z)
        results.append((d.name, to_uint8(arr, round=job.round)[0]))
    files: Dict[str, bytes] = {}
    if job.mode == "inpaint":
        files[name] = _png_bytes(to_pil(res.arrays, round=job.round)[0])
    else:
        for d, (_, a) in zip(job.decoders, results):
            files[f"{d.name}/{name}"] = _png_bytes(Image.fromarray(a))
        files[f"{STRIPS_DIR}/{name}"] = _png_bytes(make_strip(original, m, results))
    outputs = {}
    for rel, data in files.items():
        _write_atomic(out / rel, data)
        outputs[rel] = [len(data), hashlib.sha256(data).hexdigest()]
    metrics = {d: _measure(original, a, m) for d, a in results}
    features = None
    q = models.quality
    if q is not None and q.lpips is not None:
        from .quality import paste_hole

        for label, a in results:
            metrics[label]["lpips"] = q.lpips.distance(original, a)
            metrics[label]["lpips_known"] = q.lpips.distance(original, paste_hole(original, a, m))
    if q is not None and q.fid is not None:
        from .quality import encode_features

        features = {"original": encode_features(q.fid.features(original))}
        features.update({d: encode_features(q.fid.features(a)) for d, a in results})
    rec = {
        "name": name,
        "image": str(image),
        "mask": str(mask),
        "outputs": outputs,
        "metrics": metrics,
        "seconds": time.perf_counter() - t0,
        "model_key": job.model_key,
        "steps": job.steps,
        "round": job.round,
        "mode": job.mode,
        "inputs": stamp,
        "timings": {**res.timings, "decoders": time.perf_counter() - t_dec},
        "peak_rss_mb": _peak_rss_mb(),
        "pid": os.getpid(),
    }
    if features is not None:
        rec["fid_features"] = features  # float64, base64: the folder's FID is computed from them (write_tables)
    _write_atomic(record_path(out, name), json.dumps(rec, indent=1).encode())
    return rec


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


# ---- tables ------------------------------------------------------------------------------------------------


def metric_rows(records: Sequence[dict], metrics: Sequence[str] = METRICS) -> List[dict]:
    """One row per (image, decoder), sorted by image then the decoder's order in the records."""
    rows = []
    for rec in sorted(records, key=lambda r: r["name"]):
        for dec, m in rec["metrics"].items():
            rows.append({"image": rec["name"], "decoder": dec, **{k: m.get(k, float("nan")) for k in metrics}})
    return rows


def folder_fid(records: Sequence[dict], decoders: Sequence[str]) -> Dict[str, float]:
    """Per decoder: FID between the originals' and the decoder's features over all ``records``
    (:func:`asymvq.quality.frechet_distance`; NaN with fewer than 2 images)."""
    from .quality import decode_features, frechet_distance

    recs = [r for r in records if "fid_features" in r]
    real = [decode_features(r["fid_features"]["original"]) for r in recs]
    return {d: frechet_distance(real, [decode_features(r["fid_features"][d]) for r in recs]) for d in decoders}


def summarize(
    rows: Sequence[dict],
    decoders: Sequence[str],
    metrics: Sequence[str] = METRICS,
    fid: Optional[Dict[str, float]] = None,
) -> List[dict]:
    """Per decoder: n, mean / std (population) of each metric over the images (inf PSNRs excluded), and
    the folder's ``fid`` when given."""
    out = []
    for d in decoders:
        sel = [r for r in rows if r["decoder"] == d]
        row: Dict[str, Any] = {"decoder": d, "n": len(sel)}
        for k in metrics:
            v = np.array([r[k] for r in sel if math.isfinite(r[k])], dtype=np.float64)
            row[f"{k}_mean"] = float(v.mean()) if v.size else float("nan")
            row[f"{k}_std"] = float(v.std()) if v.size else float("nan")
        if fid is not None:
            row["fid"] = fid[d]
        out.append(row)
    return out


def _write_csv(path: Path, rows: Sequence[dict], columns: Sequence[str]) -> None:
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({c: r.get(c, "") for c in columns})
    _write_atomic(path, buf.getvalue().encode())


def write_tables(
    outdir: Path, job: Job, records: Sequence[dict], failures: Sequence[dict], plot: bool = True
) -> Dict[str, Path]:
    """metrics.csv, summary.csv, metrics.json, failures.csv and (matplotlib permitting) metrics.png."""
    names = [d.name for d in job.decoders]
    metrics = job.metric_names
    rows = metric_rows(records, metrics)
    fid = folder_fid(records, names) if job.fid else None
    summary = summarize(rows, names, metrics, fid)
    paths = {
        "metrics": outdir / "metrics.csv",
        "summary": outdir / "summary.csv",
        "json": outdir / "metrics.json",
        "failures": outdir / "failures.csv",
    }
    _write_csv(paths["metrics"], rows, ["image", "decoder", *metrics])
    _write_csv(
        paths["summary"],
        summary,
        ["decoder", "n"]
        + [f"{k}_{s}" for k in metrics for s in ("mean", "std")]
        + (["fid"] if fid is not None else []),
    )
    _write_csv(paths["failures"], failures, ["image", "mask", "error"])
    doc = {
        "decoders": [asdict(d) for d in job.decoders],
        "steps": job.steps,
        "precision": job.precision,
        "quality": {"lpips": job.lpips, "fid": job.fid},
        "rows": rows,
        "summary": summary,
        "failures": list(failures),
    }
    _write_atomic(paths["json"], json.dumps(doc, indent=1, default=str).encode())
    if plot:
        p = plot_summary(summary, outdir / "metrics.png", metrics)
        if p is not None:
            paths["plot"] = p
    return paths


def plot_summary(summary: Sequence[dict], path: Path, metrics: Sequence[str] = METRICS) -> Optional[Path]:
    """Each metric per decoder with std error bars, and the folder's FID when the summary has it (the
    paper's table as a figure); None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    labels = {
        "pre_error": "pre_error (MSE outside mask, x1e-5)",
        "psnr": "PSNR outside mask (dB)",
        "ssim": "SSIM outside mask",
        "lpips": "LPIPS (whole image)",
        "lpips_known": "LPIPS outside mask (hole pasted back)",
        "fid": "FID vs the originals (folder)",
    }
    panels = list(metrics) + (["fid"] if summary and "fid" in summary[0] else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2), squeeze=False)
    names = [s["decoder"] for s in summary]
    for ax, k in zip(axes[0], panels):
        scale = 1e5 if k == "pre_error" else 1.0
        if k == "fid":  # one value per decoder: no spread to show
            ax.bar(names, [s["fid"] for s in summary], color="#dd8452")
        else:
            ax.bar(
                names,
                [s[f"{k}_mean"] * scale for s in summary],
                yerr=[s[f"{k}_std"] * scale for s in summary],
                capsize=4,
                color="#4c72b0",
            )
        ax.set_title(labels[k], fontsize=9)
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.part.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    return path


# ---- command line ------------------------------------------------------------------------------------------


def add_model_args(p: argparse.ArgumentParser) -> None:
    """The flags ``compare`` and ``batch`` share."""
    p.add_argument("--indir", type=str, default=None, help="folder with NAME.png + NAME_mask.png pairs")
    p.add_argument(
        "--list",
        type=str,
        default=None,
        dest="list_file",
        help="text file of pairs, one 'IMAGE MASK' per line (relative to the file's folder)",
    )
    p.add_argument("--outdir", type=str, required=True, help="output folder")
    p.add_argument(
        "--config_d",
        type=str,
        default="configs/autoencoder/v1-inpainting-inference.yaml",
        help="diffusion config (inpainting)",
    )
    p.add_argument("--ckpt_d", type=str, required=True, help="SD 1.5 inpainting checkpoint")
    p.add_argument(
        "--decoder",
        action="append",
        default=[],
        metavar="vanilla|NAME=CONFIG:CKPT",
        help="a decoder to compare (repeat); vanilla = SD's own decoder from --ckpt_d",
    )
    p.add_argument(
        "--precision",
        type=str,
        default="fp32",
        help="fp32, bf16 or auto (bf16 where the CPU has it natively; autocast = auto, full = fp32)",
    )
    p.add_argument("--round", action="store_true", help="round to uint8 instead of truncating")
    p.add_argument("--vocab", type=str, default=None, help="CLIP BPE vocabulary (else ASYMVQ_CLIP_VOCAB / HF cache)")
    p.add_argument("--threads", type=int, default=None, help="asymvq compute threads per pipeline")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps (the original: 50)")
    p.add_argument("--no-plot", action="store_true", help="do not draw metrics.png")
    p.add_argument(
        "--lpips",
        type=str,
        default=None,
        metavar="NET.pt2",
        help="also measure LPIPS per image with this torch.export LPIPS network (never downloaded; "
        'see asymvq.quality; needs pip install "asymvq[quality]")',
    )
    p.add_argument(
        "--fid",
        type=str,
        default=None,
        metavar="NET.pt2",
        help="also measure FID per decoder against the originals with this torch.export InceptionV3 "
        'feature network (never downloaded; see asymvq.quality; needs pip install "asymvq[quality]")',
    )


def parser() -> argparse.ArgumentParser:
    p = _cli.ArgumentParser(prog="python -m asymvq compare", description=__doc__.split("\n\n")[0])
    add_model_args(p)
    return p


def find_pairs(indir: Optional[str], list_file: Optional[str]) -> List[Tuple[Path, Path]]:
    """Pairs from ``--indir`` (inpaint_st's rule) or ``--list`` (exactly one of them); names must be unique."""
    from .inpaint_st import find_pairs as folder_pairs

    if (indir is None) == (list_file is None):
        raise _cli.CLIError("give exactly one of --indir and --list")
    if indir is not None:
        pairs, skipped = folder_pairs(indir)
        if skipped:  # as inpaint_st: images without a mask are skipped, with one warning line
            print(
                f"warning: skipping {len(skipped)} image(s) without a NAME_mask.png: "
                f"{_cli.listing([p.name for p in skipped])}",
                file=sys.stderr,
            )
        return pairs
    assert list_file is not None  # exactly one of the two is given (checked above)
    base = Path(list_file).parent
    try:
        lines = Path(list_file).read_text().splitlines()
    except OSError as e:
        raise _cli.CLIError(f"--list {list_file}: {e.strerror or e}") from None
    pairs, seen = [], set()
    for i, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2:
            raise _cli.CLIError(f"--list {list_file}:{i}: expected 'IMAGE MASK', got {line!r}")
        img, msk = (Path(q) if os.path.isabs(q) else base / q for q in parts)
        if img.name in seen:
            raise _cli.CLIError(f"--list {list_file}:{i}: image name {img.name} appears twice (outputs would clash)")
        seen.add(img.name)
        pairs.append((img, msk))
    if not pairs:
        raise _cli.CLIError(f"--list {list_file} names no pairs")
    return pairs


def job_from_args(args: argparse.Namespace, mode: str) -> Job:
    """Checks the model flags and builds the :class:`Job` (raises ``CLIError``)."""
    precision = _cli.precision_arg(args.precision)
    config_d = _cli.resolve_config(args.config_d)
    _cli.require_file(args.ckpt_d, "--ckpt_d checkpoint")
    if args.steps < 1:
        raise _cli.CLIError(f"--steps must be >= 1, got {args.steps}")
    if args.threads is not None and args.threads < 1:
        raise _cli.CLIError(f"--threads must be >= 1, got {args.threads}")
    decs = [parse_decoder(v) for v in args.decoder] or [DecoderSpec("vanilla")]
    checked = []
    for d in decs:
        if d.config is not None:
            assert d.ckpt is not None  # parse_decoder gives both or neither
            d = DecoderSpec(
                d.name, _cli.resolve_config(d.config), _cli.require_file(d.ckpt, f"--decoder {d.name} checkpoint")
            )
        checked.append(d)
    if args.lpips or args.fid:  # the network files are checked here, before any diffusion runs
        from .quality import QualityError, QualityModels

        try:
            QualityModels(args.lpips, args.fid)
        except QualityError as e:
            raise _cli.CLIError(str(e)) from None
    try:
        return Job(
            config_d=config_d,
            ckpt_d=args.ckpt_d,
            decoders=tuple(checked),
            mode=mode,
            vocab=args.vocab,
            precision=precision,
            steps=args.steps,
            round=args.round,
            threads=args.threads,
            lpips=_abs(args.lpips),
            fid=_abs(args.fid),
        )
    except ValueError as e:
        raise _cli.CLIError(str(e)) from None


def _abs(path: Optional[str]) -> Optional[str]:
    return None if path is None else os.path.abspath(path)


def main(argv: Optional[Sequence[str]] = None) -> int:
    return _cli.run_command(lambda: run(parser().parse_args(argv)))


def run(args: argparse.Namespace) -> int:
    """The command's body (errors become exit codes in :func:`asymvq._cli.run_command`)."""
    from .batch import run_batch

    job = job_from_args(args, "compare")
    pairs = find_pairs(args.indir, args.list_file)
    res = run_batch(pairs, args.outdir, job, cluster=False, plot=not args.no_plot)
    print(res.report())
    return 0 if not res.failures else 1


if __name__ == "__main__":
    sys.exit(main())
