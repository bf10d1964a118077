"""Learned image-quality metrics for ``python -m asymvq compare``: LPIPS per image, FID per decoder.

Optional: they need ``torch`` and ``torchmetrics`` (``pip install "asymvq[quality]"``), never imported
unless ``--lpips`` / ``--fid`` is given. **Nothing is ever downloaded**: the networks come from files the
user supplies, as ``torch.export`` programs (``.pt2``: architecture and weights in one file), so no
library code that fetches pretrained weights runs, and torchvision is not needed at all.

Making the two files, once, on a machine with network access and the reference libraries
(``pip install lpips pytorch-fid torchvision``)::

    import torch, lpips
    from torch.export import Dim, export
    from pytorch_fid.inception import InceptionV3

    # LPIPS (Zhang et al. 2018), AlexNet variant, the paper's v0.1 linear layers; inputs in [-1, 1]
    net = lpips.LPIPS(net="alex").eval()
    a, b = torch.zeros(1, 3, 256, 256), torch.zeros(1, 3, 256, 256)  # two tensors: one passed twice ties the inputs
    h, w = Dim("h", min=64, max=4096), Dim("w", min=64, max=4096)
    torch.export.save(export(net, (a, b), dynamic_shapes=({2: h, 3: w}, {2: h, 3: w})), "lpips_alex.pt2")

    # FID's InceptionV3 (the TF-ported weights of pytorch-fid), 2048-d pool features; inputs in [0, 1]
    class Pool3(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()

        def forward(self, x):
            return self.net(x)[0].flatten(1)

    torch.export.save(export(Pool3(), (torch.zeros(1, 3, 299, 299),)), "fid_inception.pt2")

then ``python -m asymvq compare ... --lpips lpips_alex.pt2 --fid fid_inception.pt2``.

The contracts, checked when a file is loaded (a file that breaks them is refused with the reason):

* **LPIPS file**: called as ``net(a, b)`` with two float32 tensors [1, 3, H, W] in [-1, 1] (H, W the
  image's inpainting size, any multiple of 64), returns one distance (any shape of 1 element).
* **FID file**: called as ``net(x)`` with one float32 tensor [1, 3, 299, 299] in [0, 1] (the image
  resized bilinearly, ``align_corners=False``: pytorch-fid's own resize), returns [1, D] features.

What is compared (images are the 8-bit results, as written to disk, against the original resized to the
inpainting size, as :mod:`asymvq.metrics`):

* ``lpips``: LPIPS(original, result) over the whole image; the hole counts (there the decoder
  shows new content by design, so this mixes preservation with the hole's plausibility).
* ``lpips_known``: LPIPS(original, result with the hole's pixels replaced by the original's): only what
  the decoder changed *outside* the mask counts (the learned analogue of ``pre_error``; the features near
  the hole's border still see both sides).
* ``fid`` (per decoder, over the folder): the Fréchet distance between the features of the originals
  and of that decoder's results, computed by ``torchmetrics``' ``FrechetInceptionDistance``. It needs at
  least 2 images (else NaN); with fewer images than feature dimensions (2048) the covariances are
  singular and FID is biased: compare decoders on the same folder, not to published numbers.
"""

from __future__ import annotations

import base64
import math
import os
from typing import Any, Optional, Sequence

import numpy as np

from .errors import Error

#: The pip command that brings what this module needs.
INSTALL_HINT = 'pip install "asymvq[quality]"'
#: The FID network's input size (InceptionV3's).
FID_SIZE = 299
#: The smallest image the LPIPS probe uses (the inpainting sizes are multiples of 64).
PROBE_SIZE = 64


class QualityError(Error, ValueError):
    """A learned metric cannot run: its optional packages are missing or its network file is unusable."""


def _require(what: str) -> Any:
    """Imports torch (and torchmetrics for FID), or raises :class:`QualityError` naming the pip command."""
    missing = []
    try:
        import torch
    except ImportError:
        missing.append("torch")  # raised below, before torch is returned
    if what == "FID":
        try:
            import torchmetrics  # noqa: F401
        except ImportError:
            missing.append("torchmetrics")
    if missing:
        raise QualityError(f"{what} needs {' and '.join(missing)}, not installed: {INSTALL_HINT}")
    return torch


def _load_program(path: str, flag: str, what: str) -> Any:
    """The callable module of the ``torch.export`` program at ``path`` (loaded to the CPU)."""
    torch = _require(what)
    if not os.path.isfile(path):
        raise QualityError(f"{flag} {path}: file not found")
    try:
        return torch.export.load(path).module()
    except Exception as e:  # noqa: BLE001 - any failure to read it means a wrong or corrupt file
        raise QualityError(
            f"{flag} {path}: not a torch.export program (.pt2) of the {what} network "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); see "
            f"asymvq.quality's docs for how to make one"
        ) from None


def _tensor(img: np.ndarray, lo: float) -> Any:
    """uint8 [H, W, 3] -> float32 [1, 3, H, W] in [lo, 1]."""
    import torch

    a = np.asarray(img, dtype=np.float32).transpose(2, 0, 1)[None] / 255.0
    if lo == -1.0:
        a = a * 2.0 - 1.0
    return torch.from_numpy(np.ascontiguousarray(a))


class LPIPS:
    """LPIPS from a user-supplied ``torch.export`` program (see the module docs for its contract)."""

    def __init__(self, path: str, flag: str = "--lpips"):
        self.path = path
        self._net = _load_program(path, flag, "LPIPS")
        black = np.zeros((PROBE_SIZE, PROBE_SIZE, 3), np.uint8)
        ramp = np.broadcast_to(np.linspace(0, 255, PROBE_SIZE, dtype=np.uint8)[None, :, None], black.shape)
        try:
            same, other = self.distance(black, black), self.distance(black, np.ascontiguousarray(ramp))
        except Exception as e:  # noqa: BLE001
            raise QualityError(
                f"{flag} {path}: the network does not take two [1, 3, H, W] images in [-1, 1] "
                f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
            ) from None
        if not (math.isfinite(same) and math.isfinite(other)):
            raise QualityError(f"{flag} {path}: the network's distances are not finite ({same}, {other})")
        if other == same:
            raise QualityError(
                f"{flag} {path}: the network gives a black and a ramp image the distance of an image "
                f"to itself ({same}): were its two inputs exported from one tensor? (export with two)"
            )

    def distance(self, a: np.ndarray, b: np.ndarray) -> float:
        """LPIPS of two uint8 [H, W, 3] images of one size."""
        import torch

        if a.shape != b.shape:
            raise ValueError(f"LPIPS: sizes differ, {a.shape} and {b.shape}")
        with torch.no_grad():
            out = self._net(_tensor(a, -1.0), _tensor(b, -1.0))
        if out.numel() != 1:
            raise ValueError(f"LPIPS network {self.path} returned {tuple(out.shape)}, not one distance")
        return float(out.reshape(()).item())


def paste_hole(original: np.ndarray, result: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``result`` with the hole (mask >= 0.5) replaced by ``original``'s pixels: only the known region differs."""
    hole = np.asarray(mask, dtype=np.float32).squeeze() >= 0.5
    out = np.array(result, copy=True)
    out[hole] = np.asarray(original)[hole]
    return out


class FIDFeatures:
    """FID features from a user-supplied ``torch.export`` program (see the module docs for its contract)."""

    def __init__(self, path: str, flag: str = "--fid"):
        self.path = path
        _require("FID")  # torchmetrics too: the distance needs it later, say so before any work
        self._net = _load_program(path, flag, "FID")
        try:
            f = self.features(np.zeros((FID_SIZE, FID_SIZE, 3), np.uint8))
        except Exception as e:  # noqa: BLE001
            raise QualityError(
                f"{flag} {path}: the network does not take a [1, 3, {FID_SIZE}, {FID_SIZE}] image in "
                f"[0, 1] and return [1, D] features ({type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else ''})"
            ) from None
        if not np.isfinite(f).all():
            raise QualityError(f"{flag} {path}: the network's features of a black image are not finite")
        self.dim = int(f.size)

    def features(self, img: np.ndarray) -> np.ndarray:
        """float64 [D]: the features of one uint8 [H, W, 3] image resized to 299 x 299."""
        import torch
        import torch.nn.functional as F

        x = _tensor(img, 0.0)
        if x.shape[-2:] != (FID_SIZE, FID_SIZE):
            x = F.interpolate(x, size=(FID_SIZE, FID_SIZE), mode="bilinear", align_corners=False)
        with torch.no_grad():
            out = self._net(x)
        if out.dim() < 2 or out.shape[0] != 1:
            raise ValueError(f"FID network {self.path} returned {tuple(out.shape)}, not [1, D] features")
        return out.reshape(-1).double().numpy().copy()


def encode_features(f: np.ndarray) -> str:
    """Features as text for a JSON record (float64 bytes, base64: exact, compact)."""
    return base64.b64encode(np.ascontiguousarray(f, dtype="<f8").tobytes()).decode("ascii")


def decode_features(s: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(s), dtype="<f8").copy()


def frechet_distance(real: Sequence[np.ndarray], fake: Sequence[np.ndarray]) -> float:
    """FID between two sets of feature vectors (torchmetrics' estimator: unbiased covariances, the
    matrix square root through eigenvalues); NaN when either set has fewer than 2 vectors."""
    if len(real) < 2 or len(fake) < 2:
        return float("nan")
    _require("FID")
    import torch  # importable (_require checked); a typed module, so mypy sees _Given's base class
    from torchmetrics.image.fid import FrechetInceptionDistance

    dim = int(np.asarray(real[0]).size)

    class _Given(torch.nn.Module):
        """The features are computed already (on the workers): pass them through."""

        num_features = dim

        def forward(self, x):
            return x

    fid = FrechetInceptionDistance(feature=_Given(), normalize=True)
    fid.update(torch.from_numpy(np.stack(real).astype(np.float64)), real=True)
    fid.update(torch.from_numpy(np.stack(fake).astype(np.float64)), real=False)
    return float(fid.compute())


class QualityModels:
    """The learned-metric networks a worker holds (either may be None)."""

    def __init__(self, lpips: Optional[str], fid: Optional[str], threads: Optional[int] = None):
        if threads is not None and (lpips or fid):
            _require("LPIPS" if lpips else "FID").set_num_threads(threads)
        self.lpips = LPIPS(lpips) if lpips else None
        self.fid = FIDFeatures(fid) if fid else None


__all__ = [
    "LPIPS",
    "FIDFeatures",
    "QualityModels",
    "QualityError",
    "frechet_distance",
    "paste_hole",
    "encode_features",
    "decode_features",
    "INSTALL_HINT",
]
