"""Image and mask I/O with the original scripts' conventions (SPEC §8).

Images are RGB, normalised to ``[-1, 1]`` float32 NCHW; masks are ``{0, 1}``
float32 ``[1, 1, H, W]`` with 1 = the hole to repaint (white in the mask file).
Outputs go back to uint8 by truncation, as ``inpaint_st.py`` does (``round=True``
rounds instead, as diffusers does).
"""
from __future__ import annotations

import os
from typing import Tuple, Union

import numpy as np
from PIL import Image, UnidentifiedImageError

ImageLike = Union[str, os.PathLike, Image.Image, np.ndarray]

MAX_SIZE = 640
MULTIPLE = 64


class ImageError(ValueError):
    """An image or mask that cannot be used, with the file named."""


def open_image(src: ImageLike, what: str = "image") -> Image.Image:
    """A PIL image from a path, a PIL image or a uint8 HWC / HW array."""
    if isinstance(src, Image.Image):
        return src
    if isinstance(src, np.ndarray):
        if src.dtype != np.uint8 or src.ndim not in (2, 3):
            raise ImageError(f"{what}: arrays must be uint8 HxW or HxWxC, got {src.dtype} {src.shape}")
        return Image.fromarray(src)
    path = os.fspath(src)
    if not os.path.isfile(path):
        raise ImageError(f"{what} file not found: {path}")
    try:
        img = Image.open(path)
        img.load()
    except (UnidentifiedImageError, OSError) as e:
        raise ImageError(f"{what} {path} is not a readable image: {e}") from None
    return img


def inpaint_size(width: int, height: int, max_size: int = MAX_SIZE, multiple: int = MULTIPLE) -> Tuple[int, int]:
    """The size inpaint_st works at: longest side capped at 640 (int truncation), then
    each side rounded down to a multiple of 64. Example: 1024x768 -> 640x448."""
    w, h = width, height
    if max(w, h) > max_size:
        f = max_size / max(w, h)
        w, h = int(f * w), int(f * h)
    w, h = w - w % multiple, h - h % multiple
    if w < multiple or h < multiple:
        raise ImageError(f"image of {width}x{height} is too small: both sides must be at least {multiple} px")
    return w, h


def image_to_array(img: Image.Image) -> np.ndarray:
    """RGB (alpha dropped, palettes applied) -> float32 [1, 3, H, W] in [-1, 1]."""
    u8 = np.asarray(img.convert("RGB"), dtype=np.uint8)
    return (u8.astype(np.float32) / 127.5 - 1.0).transpose(2, 0, 1)[None].copy()


def mask_to_array(mask: Image.Image) -> np.ndarray:
    """Luma (ITU-R 601, Pillow's) -> {0, 1} float32 [1, 1, H, W]; 1 iff gray >= 128."""
    g = np.asarray(mask.convert("L"), dtype=np.float32) / 255.0
    return (g >= 0.5).astype(np.float32)[None, None]


def load_pair(image: ImageLike, mask: ImageLike, size: Tuple[int, int] | None = None,
              resize: bool = True) -> Tuple[np.ndarray, np.ndarray, Tuple[int, int]]:
    """Image and mask as the inpainting pipeline consumes them.

    The image is resized with PIL's default filter (bicubic) to the inpaint_st size
    (or ``size``); unlike the original script, the mask is resized too (nearest, then
    the 0.5 threshold), so inputs that need resizing work. Returns
    ``(image [1,3,H,W], mask [1,1,H,W], (W, H))``.
    """
    img = open_image(image, "image")
    msk = open_image(mask, "mask")
    if img.size != msk.size:
        raise ImageError(f"mask size {msk.size[0]}x{msk.size[1]} differs from image size {img.size[0]}x{img.size[1]}")
    w, h = size if size is not None else (inpaint_size(*img.size) if resize else img.size)
    if w % 8 or h % 8:
        raise ImageError(f"size {w}x{h} must be a multiple of 8 (64 for the UNet)")
    if (w, h) != img.size:
        img = img.convert("RGB").resize((w, h))
        msk = msk.convert("L").resize((w, h), Image.NEAREST)
    return image_to_array(img), mask_to_array(msk), (w, h)


def to_uint8(x: np.ndarray, round: bool = False) -> np.ndarray:
    """[N, 3, H, W] in [-1, 1] -> uint8 [N, H, W, 3]: clamp((x + 1) / 2, 0, 1) * 255,
    truncated like the original (or rounded)."""
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"expected images [N, 3, H, W], got {x.shape}")
    v = np.clip((x.astype(np.float32) + 1.0) / 2.0, 0.0, 1.0) * np.float32(255.0)
    v = np.floor(v + 0.5) if round else v
    return v.astype(np.uint8).transpose(0, 2, 3, 1)


def to_pil(x: np.ndarray, round: bool = False) -> list[Image.Image]:
    """[N, 3, H, W] in [-1, 1] -> PIL images."""
    return [Image.fromarray(a) for a in to_uint8(x, round=round)]
