"""PSNR and SSIM outside the mask (issue 14 §1), against scikit-image as an independent reference."""

import math

import numpy as np
import pytest
from PIL import Image
from skimage.metrics import structural_similarity

from asymvq.metrics import preservation_error, psnr_outside_mask, ssim_outside_mask


def _pair(seed=0, h=48, w=64):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    noise = rng.integers(-40, 41, (h, w, 3))
    b = np.clip(a.astype(int) + noise, 0, 255).astype(np.uint8)
    mask = np.zeros((h, w), dtype=np.uint8)
    mask[10:30, 20:50] = 255
    return a, b, mask


def _skimage_ssim_outside(a, b, mask):
    _, full = structural_similarity(
        a / 255.0,
        b / 255.0,
        channel_axis=2,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        data_range=1.0,
        full=True,
    )
    keep = mask < 128
    inner = np.zeros_like(keep)
    inner[5:-5, 5:-5] = True
    return full[keep & inner].mean()


def test_ssim_outside_mask_equals_scikit_image_map_averaged_over_known_pixels():
    a, b, mask = _pair()
    got = ssim_outside_mask(Image.fromarray(a), Image.fromarray(b), Image.fromarray(mask))
    assert got == pytest.approx(_skimage_ssim_outside(a, b, mask), rel=1e-10)


def test_ssim_outside_mask_with_empty_mask_equals_scikit_image_mean_ssim():
    a, b, _ = _pair(1)
    empty = np.zeros(a.shape[:2], dtype=np.uint8)
    ref = structural_similarity(
        a / 255.0,
        b / 255.0,
        channel_axis=2,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        data_range=1.0,
    )
    assert ssim_outside_mask(a, b, Image.fromarray(empty)) == pytest.approx(ref, rel=1e-10)


def test_ssim_outside_mask_is_one_for_identical_images():
    a, _, mask = _pair(2)
    assert ssim_outside_mask(a, a, Image.fromarray(mask)) == pytest.approx(1.0, abs=1e-12)


def test_ssim_and_psnr_ignore_what_happens_inside_the_hole():
    a, _, mask = _pair(3)
    b = a.copy()
    b[12:28, 25:45] = 0  # well inside the hole and more than the 5 px window radius from its edge
    assert psnr_outside_mask(a, b, Image.fromarray(mask)) == math.inf
    assert ssim_outside_mask(a, b, Image.fromarray(mask)) < 1.0  # windows straddling the edge see the hole
    far = np.zeros_like(mask)
    far[5:35, 15:55] = 255  # grow the hole by 5 px: no known window reaches the change any more
    assert ssim_outside_mask(a, b, Image.fromarray(far)) == pytest.approx(1.0, abs=1e-12)


def test_psnr_outside_mask_is_ten_log10_of_one_over_preservation_error():
    a, b, mask = _pair(4)
    m = Image.fromarray(mask)
    keep = mask < 128
    mse = np.mean(((a / 255.0 - b / 255.0) ** 2)[keep])
    assert preservation_error(a, b, m) == pytest.approx(mse, rel=1e-12)
    assert psnr_outside_mask(a, b, m) == pytest.approx(10 * math.log10(1 / mse), rel=1e-12)


def test_ssim_outside_mask_rejects_images_smaller_than_the_window():
    a = np.zeros((8, 8, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim_outside_mask(a, a, Image.fromarray(np.zeros((8, 8), dtype=np.uint8)))


def test_ssim_outside_mask_rejects_a_mask_covering_everything_but_the_border():
    a = np.zeros((32, 32, 3), dtype=np.uint8)
    m = np.full((32, 32), 255, dtype=np.uint8)
    m[:5] = 0
    with pytest.raises(ValueError, match="nothing is preserved"):
        ssim_outside_mask(a, a, Image.fromarray(m))
