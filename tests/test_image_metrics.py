"""Image/mask conventions of inpaint_st (SPEC §8) and the preservation metric."""

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from asymvq import image as im
from asymvq.metrics import preservation_error, psnr_outside_mask

EXAMPLES = Path(__file__).resolve().parents[2] / "shared" / "data" / "inpainting_examples"


def test_inpaint_size_caps_longest_side_then_rounds_down_to_64():
    assert im.inpaint_size(1024, 768) == (640, 448)
    assert im.inpaint_size(512, 512) == (512, 512)
    assert im.inpaint_size(700, 300) == (640, 256)
    assert im.inpaint_size(130, 200) == (128, 192)


def test_inpaint_size_rejects_images_smaller_than_64():
    with pytest.raises(im.ImageError, match="too small"):
        im.inpaint_size(60, 500)


def test_image_normalised_to_minus_one_one_nchw():
    a = np.array([[[0, 255, 127]]], dtype=np.uint8)
    x = im.image_to_array(Image.fromarray(a))
    assert x.shape == (1, 3, 1, 1) and x.dtype == np.float32
    np.testing.assert_allclose(x[0, :, 0, 0], [-1.0, 1.0, 127 / 127.5 - 1], rtol=0, atol=1e-7)


def test_rgba_alpha_is_dropped_not_composited():
    a = np.array([[[10, 20, 30, 0]]], dtype=np.uint8)
    x = im.image_to_array(Image.fromarray(a, "RGBA"))
    np.testing.assert_allclose(x[0, :, 0, 0], np.array([10, 20, 30]) / 127.5 - 1, atol=1e-7)


def test_mask_is_one_exactly_where_gray_is_at_least_128():
    g = np.array([[0, 127, 128, 255]], dtype=np.uint8)
    m = im.mask_to_array(Image.fromarray(g, "L"))
    assert m.shape == (1, 1, 1, 4)
    np.testing.assert_array_equal(m[0, 0, 0], [0, 0, 1, 1])


def test_load_pair_resizes_the_mask_too_and_keeps_it_binary(tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (700, 900, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    mk = np.zeros((700, 900), np.uint8)
    mk[100:300, 200:500] = 255
    Image.fromarray(mk).save(tmp_path / "a_mask.png")
    x, m, (w, h) = im.load_pair(tmp_path / "a.png", tmp_path / "a_mask.png")
    assert (w, h) == (640, 448)
    assert x.shape == (1, 3, 448, 640) and m.shape == (1, 1, 448, 640)
    assert set(np.unique(m)) == {0.0, 1.0}


def test_load_pair_rejects_mask_of_another_size(tmp_path):
    Image.new("RGB", (128, 128)).save(tmp_path / "a.png")
    Image.new("L", (64, 128)).save(tmp_path / "a_mask.png")
    with pytest.raises(im.ImageError, match="mask size 64x128 differs"):
        im.load_pair(tmp_path / "a.png", tmp_path / "a_mask.png")


def test_non_image_file_gives_a_clear_error(tmp_path):
    p = tmp_path / "x.png"
    p.write_text("not a png")
    with pytest.raises(im.ImageError, match="not a readable image"):
        im.open_image(p)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(im.ImageError, match="not found"):
        im.open_image(tmp_path / "nope.png")


def test_to_uint8_truncates_like_the_original_and_rounds_on_request():
    x = np.full((1, 3, 1, 1), (200.7 / 255) * 2 - 1, np.float32)
    assert im.to_uint8(x)[0, 0, 0, 0] == 200
    assert im.to_uint8(x, round=True)[0, 0, 0, 0] == 201
    assert im.to_uint8(np.full((1, 3, 1, 1), 5.0, np.float32))[0, 0, 0, 0] == 255


def test_shipped_examples_load_at_their_inpaint_size():
    masks = sorted(EXAMPLES.glob("*_mask.png"))
    assert len(masks) == 8
    for mp in masks[:2]:
        x, m, (w, h) = im.load_pair(str(mp).replace("_mask.png", ".png"), mp)
        assert w % 64 == 0 and h % 64 == 0 and max(w, h) <= 640


def test_preservation_error_ignores_the_hole():
    a = np.zeros((8, 8, 3), np.uint8)
    b = a.copy()
    b[:4] = 255  # changed only inside the hole
    mask = np.zeros((8, 8), np.float32)
    mask[:4] = 1
    assert preservation_error(a, b, mask) == 0.0
    assert psnr_outside_mask(a, b, mask) == math.inf


def test_preservation_error_is_mse_in_unit_range_outside_the_mask():
    a = np.zeros((4, 4, 3), np.uint8)
    b = np.full((4, 4, 3), 51, np.uint8)  # 0.2 everywhere
    mask = np.zeros((4, 4), np.float32)
    mask[0] = 1
    assert preservation_error(a, b, mask) == pytest.approx(0.04)
    assert psnr_outside_mask(a, b, mask) == pytest.approx(10 * math.log10(1 / 0.04))


def test_preservation_error_accepts_pipeline_arrays_in_minus_one_one():
    x = np.zeros((1, 3, 4, 4), np.float32)
    y = np.full((1, 3, 4, 4), -1.0, np.float32)  # 0.5 vs 0.0 in unit range
    assert preservation_error(x, y, np.zeros((1, 1, 4, 4), np.float32)) == pytest.approx(0.25)


def test_preservation_error_rejects_a_full_mask():
    a = np.zeros((4, 4, 3), np.uint8)
    with pytest.raises(ValueError, match="nothing is preserved"):
        preservation_error(a, a, np.ones((4, 4), np.float32))


# 16-bit files (issue 11 item 10): scaled to 8 bits, not clipped


def save_16bit_gray(path, values):
    Image.fromarray(np.asarray(values, dtype=np.uint16)).save(path)
    assert Image.open(path).mode.startswith("I")  # really a 16-bit PNG


def test_near_black_16bit_mask_stays_known_region(tmp_path):
    # 1000/65535 is near black: Pillow's own convert("L") clips it to 255, a full hole
    save_16bit_gray(tmp_path / "m.png", np.full((8, 8), 1000))
    m = im.mask_to_array(im.open_image(tmp_path / "m.png"))
    assert m.sum() == 0


def test_16bit_mask_threshold_is_half_of_the_16bit_range(tmp_path):
    save_16bit_gray(tmp_path / "m.png", [[0, 32767, 32768, 65535]])
    m = im.mask_to_array(im.open_image(tmp_path / "m.png"))
    np.testing.assert_array_equal(m[0, 0, 0], [0, 0, 1, 1])


def test_16bit_gray_image_is_scaled_to_8_bits(tmp_path):
    save_16bit_gray(tmp_path / "a.png", [[0, 257, 32896, 65535]])
    x = im.image_to_array(im.open_image(tmp_path / "a.png"))
    np.testing.assert_allclose(x[0, :, 0, :], np.tile(np.array([0, 1, 128, 255]) / 127.5 - 1, (3, 1)), atol=1e-7)


def save_16bit_rgb(path, rgb):
    """A 16-bit RGB PNG, encoded by hand (Pillow does not write them)."""
    import struct
    import zlib

    a = np.asarray(rgb, dtype=">u2")
    h, w, _ = a.shape
    raw = b"".join(b"\0" + a[y].tobytes() for y in range(h))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def test_16bit_rgb_image_keeps_its_colours(tmp_path):
    v = np.array([[[0, 1000, 65535], [51400, 25700, 12850]]])
    save_16bit_rgb(tmp_path / "a.png", v)
    x = im.image_to_array(im.open_image(tmp_path / "a.png"))
    got = (x[0].transpose(1, 2, 0) + 1) * 127.5  # [H, W, 3]
    np.testing.assert_allclose(got, np.round(v / 257), atol=1.0 + 1e-4)  # Pillow keeps the high byte


def test_probe_pair_reads_headers_only_and_finds_size_mismatch(tmp_path):
    Image.new("RGB", (128, 64)).save(tmp_path / "a.png")
    save_16bit_gray(tmp_path / "a_mask.png", np.zeros((64, 128)))
    assert im.probe_pair(tmp_path / "a.png", tmp_path / "a_mask.png") == (128, 64)
    Image.new("L", (64, 64)).save(tmp_path / "a_mask.png")
    with pytest.raises(im.ImageError, match="differs from image size"):
        im.probe_pair(tmp_path / "a.png", tmp_path / "a_mask.png")
