"""How well an inpainting keeps what it was asked to keep.

``preservation_error`` is the paper's *pre_error*: the mean squared error between
the original and the result over the pixels outside the mask (the known region),
with images scaled to [0, 1], averaged over those pixels and the 3 channels. The
paper reports 1082.8e-5 for SD's vanilla decoder and 2.1e-5 for the asymmetric
one. ``psnr_outside_mask`` is the same error as a PSNR in dB (peak 1.0).
"""
from __future__ import annotations

import math

import numpy as np

from .image import ImageLike, open_image


def _unit_rgb(x: ImageLike, what: str) -> np.ndarray:
    """[H, W, 3] float64 in [0, 1] from a PIL image, a path, uint8 HWC, or float
    [3, H, W] / [1, 3, H, W] in [-1, 1] (the pipelines' arrays)."""
    if isinstance(x, np.ndarray) and x.dtype != np.uint8:
        a = np.asarray(x, dtype=np.float64)
        if a.ndim == 4 and a.shape[0] == 1:
            a = a[0]
        if a.ndim != 3 or a.shape[0] != 3:
            raise ValueError(f"{what}: float arrays must be [3, H, W] or [1, 3, H, W] in [-1, 1], got {a.shape}")
        return np.clip((a.transpose(1, 2, 0) + 1.0) / 2.0, 0.0, 1.0)
    img = open_image(x, what).convert("RGB")
    return np.asarray(img, dtype=np.float64) / 255.0


def _known(mask: ImageLike) -> np.ndarray:
    """[H, W] bool, True where the mask keeps the original (mask < 0.5)."""
    if isinstance(mask, np.ndarray) and mask.dtype != np.uint8:
        m = np.asarray(mask, dtype=np.float64).squeeze()
        if m.ndim != 2:
            raise ValueError(f"mask must squeeze to [H, W], got {np.shape(mask)}")
        return m < 0.5
    m = np.asarray(open_image(mask, "mask").convert("L"), dtype=np.float64) / 255.0
    return m < 0.5


def preservation_error(original: ImageLike, result: ImageLike, mask: ImageLike) -> float:
    """Mean squared error in [0, 1] units over the pixels outside the mask."""
    a, b, keep = _unit_rgb(original, "original"), _unit_rgb(result, "result"), _known(mask)
    if a.shape != b.shape or a.shape[:2] != keep.shape:
        raise ValueError(f"sizes differ: original {a.shape[:2]}, result {b.shape[:2]}, mask {keep.shape}")
    if not keep.any():
        raise ValueError("the mask covers the whole image: nothing is preserved to measure")
    d = (a - b)[keep]
    return float(np.mean(d * d))


def psnr_outside_mask(original: ImageLike, result: ImageLike, mask: ImageLike) -> float:
    """PSNR in dB (peak 1.0) over the pixels outside the mask; inf if identical."""
    mse = preservation_error(original, result, mask)
    return math.inf if mse == 0 else 10.0 * math.log10(1.0 / mse)


__all__ = ["preservation_error", "psnr_outside_mask"]
