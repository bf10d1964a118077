"""Image and mask I/O with the original scripts' conventions (SPEC §8).

Images are RGB, normalised to ``[-1, 1]`` float32 NCHW; masks are ``{0, 1}``
float32 ``[1, 1, H, W]`` with 1 = the hole to repaint (white in the mask file).
Outputs go back to uint8 by truncation, as ``inpaint_st.py`` does (``round=True``
rounds instead, as diffusers does).

16-bit greyscale files (PNG ``I;16``) are scaled to 8 bits (``round(v / 257)``), so a mask
is a hole where ``v / 65535 >= 0.5``; Pillow's own conversion would clip them (any value
above 255 white). 16-bit RGB(A) PNGs are reduced to 8 bits by Pillow when opened.
"""

from __future__ import annotations

import os
from typing import Tuple, Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import Error

ImageLike = Union[str, os.PathLike, Image.Image, np.ndarray]

MAX_SIZE = 640
MULTIPLE = 64

__all__ = [
    "ImageLike",
    "MAX_SIZE",
    "MULTIPLE",
    "ImageError",
    "open_image",
    "to_8bit",
    "probe_image",
    "probe_pair",
    "inpaint_size",
    "image_to_array",
    "mask_to_array",
    "load_pair",
    "to_uint8",
    "to_pil",
]


class ImageError(Error, ValueError):
    """An image or mask that cannot be used, with the file named."""


def open_image(src: ImageLike, what: str = "image") -> Image.Image:
    """A PIL image from a path, a PIL image or a uint8 HWC / HW array."""
    if isinstance(src, Image.Image):
        return to_8bit(src)
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
    except Image.DecompressionBombError as e:
        raise ImageError(f"{what} {path} is too large to open safely: {e}") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ImageError(f"{what} {path} is not a readable image: {e}") from None
    return to_8bit(img)


_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")


def to_8bit(img: Image.Image) -> Image.Image:
    """16-bit greyscale -> 8-bit ``L`` by ``round(v * 255 / 65535)`` (Pillow's ``convert("L")``
    clips at 255 instead, turning a near-black 16-bit mask into a full hole). A PNG opened as
    32-bit ``I`` (16-bit greyscale in some Pillow versions) is read the same way. Other images
    are returned as they are."""
    sixteen = img.mode in _SIXTEEN_BIT or (img.mode == "I" and img.format == "PNG")
    if not sixteen:
        return img
    a = np.asarray(img).astype(np.int64)
    if a.min() < 0 or a.max() > 65535:
        raise ImageError(f"{img.mode} image values {a.min()}..{a.max()} are outside the 16-bit range")
    return Image.fromarray(((a * 255 + 32767) // 65535).astype(np.uint8), "L")


def probe_image(path: "os.PathLike[str] | str", what: str = "image") -> Tuple[int, int]:
    """Checks a file without decoding its pixels (header, and for PNG every chunk's checksum, so a
    truncated file is found) and returns its size; memory does not depend on the image."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ImageError(f"{what} file not found: {path}")
    try:
        with Image.open(path) as img:
            size = img.size
            img.verify()
    except Image.DecompressionBombError as e:
        raise ImageError(f"{what} {path} is too large to open safely: {e}") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ImageError(f"{what} {path} is not a readable image: {e}") from None
    return size


def probe_pair(image: "os.PathLike[str] | str", mask: "os.PathLike[str] | str") -> Tuple[int, int]:
    """What :func:`load_pair` would check, from the headers only; returns the working size (W, H)."""
    iw, ih = probe_image(image, "image")
    mw, mh = probe_image(mask, "mask")
    if (iw, ih) != (mw, mh):
        raise ImageError(f"mask {os.fspath(mask)}: size {mw}x{mh} differs from image size {iw}x{ih}")
    try:
        return inpaint_size(iw, ih)
    except ImageError as e:
        raise ImageError(f"{os.fspath(image)}: {e}") from None


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


def load_pair(
    image: ImageLike, mask: ImageLike, size: Tuple[int, int] | None = None, resize: bool = True
) -> Tuple[np.ndarray, np.ndarray, Tuple[int, int]]:
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
        msk = msk.convert("L").resize((w, h), Image.Resampling.NEAREST)
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
