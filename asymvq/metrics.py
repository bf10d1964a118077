"""How well an inpainting keeps what it was asked to keep (the paper's table, per image).

All three metrics compare the *original* image with the *result* on the **known region**: the pixels
where the mask is below 0.5 (mask = white where the model repaints, read as grey / 255, at the result's
resolution, i.e. after inpaint_st's resize).  Images are 8-bit RGB scaled to [0, 1] (``value / 255``;
the pipelines' float arrays in [-1, 1] are mapped by ``(x + 1) / 2`` and clipped), computed in float64.

* :func:`preservation_error` is the paper's *pre_error*: the mean of the squared differences
  ``(original - result) ** 2`` over every known pixel and each of the 3 channels (a mean squared error,
  squared L2 norm divided by ``3 * known pixels``).  The paper reports 1082.8e-5 for SD's vanilla decoder
  and 2.1e-5 for the asymmetric one.
* :func:`psnr_outside_mask` is the same error as a PSNR in dB with peak 1.0: ``10 log10(1 / MSE)``.
* :func:`ssim_outside_mask` is SSIM (Wang et al. 2004; Gaussian window sigma 1.5 truncated to 11 x 11,
  K1 = 0.01, K2 = 0.03, data range 1, population covariances) computed per channel over the *whole*
  image (windows near the hole see masked pixels too, as a viewer does), then averaged over the known
  pixels at least 5 pixels away from the image border, and over the 3 channels.  This is
  ``skimage.metrics.structural_similarity(..., gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=1, full=True)``'s map averaged over the known pixels.
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
    """Mean squared error over the known pixels (mask < 0.5) and the 3 channels, images in [0, 1].

    ``original``, ``result``: PIL images, paths, uint8 [H, W, 3] arrays, or float [1, 3, H, W] / [3, H, W]
    arrays in [-1, 1]; ``mask``: the same forms (grey, white = hole) or a float array in {0, 1}.
    Raises ``ValueError`` when the sizes differ or the mask covers the whole image.
    """
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


_SSIM_SIGMA, _SSIM_RADIUS, _SSIM_K1, _SSIM_K2 = 1.5, 5, 0.01, 0.03


def _gauss_filter(x: np.ndarray) -> np.ndarray:
    """Separable Gaussian blur of [H, W, C] with half-sample symmetric edges (scipy's ``reflect``)."""
    r = _SSIM_RADIUS
    t = np.arange(-r, r + 1, dtype=np.float64)
    k = np.exp(-0.5 * (t / _SSIM_SIGMA) ** 2)
    k /= k.sum()
    p = np.pad(x, ((r, r), (0, 0), (0, 0)), mode="symmetric")
    y = sum(k[i] * p[i : i + x.shape[0]] for i in range(2 * r + 1))
    p = np.pad(y, ((0, 0), (r, r), (0, 0)), mode="symmetric")
    return sum(k[i] * p[:, i : i + x.shape[1]] for i in range(2 * r + 1))


def ssim_map(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The SSIM map [H, W, C] of two float images [H, W, C] in [0, 1] (see the module docs)."""
    c1, c2 = _SSIM_K1**2, _SSIM_K2**2
    ux, uy = _gauss_filter(a), _gauss_filter(b)
    vx = _gauss_filter(a * a) - ux * ux
    vy = _gauss_filter(b * b) - uy * uy
    vxy = _gauss_filter(a * b) - ux * uy
    return ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))


def ssim_outside_mask(original: ImageLike, result: ImageLike, mask: ImageLike) -> float:
    """SSIM averaged over the known pixels (mask < 0.5) at least 5 px from the border, and the channels.

    Inputs as :func:`preservation_error`. 1.0 for identical images. Raises ``ValueError`` when the
    sizes differ, the image is smaller than 11 x 11, or no known pixel lies 5 px inside the border.
    """
    a, b, keep = _unit_rgb(original, "original"), _unit_rgb(result, "result"), _known(mask)
    if a.shape != b.shape or a.shape[:2] != keep.shape:
        raise ValueError(f"sizes differ: original {a.shape[:2]}, result {b.shape[:2]}, mask {keep.shape}")
    r = _SSIM_RADIUS
    if min(keep.shape) < 2 * r + 1:
        raise ValueError(f"SSIM needs images of at least {2 * r + 1}x{2 * r + 1} pixels, got {keep.shape}")
    inner = np.zeros_like(keep)
    inner[r:-r, r:-r] = True
    sel = keep & inner
    if not sel.any():
        raise ValueError("the mask covers the whole image (away from the border): nothing is preserved to measure")
    return float(ssim_map(a, b)[sel].mean())


__all__ = ["preservation_error", "psnr_outside_mask", "ssim_outside_mask", "ssim_map"]
