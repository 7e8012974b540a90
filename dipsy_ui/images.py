"""Image reading and normalisation shared by the engine, the data layer and the UI.

Every image that enters DIPSY goes through :func:`read_image` (files and encoded bytes) or
:func:`fit_image` (images already in memory): an image over ``MAX_IMAGE_PIXELS`` is refused
before it is decoded (a decompression bomb), one with a side over ``MAX_IMAGE_SIDE`` is
downscaled, EXIF orientation is applied and :func:`to_rgb` makes it 8-bit RGB. So the pipeline,
the similarity step and the classifier all see the same pixels for the same file, and an image
within the limits keeps its decoded pixels exactly.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from .config import MAX_IMAGE_PIXELS, MAX_IMAGE_SIDE
from .errors import ImageReadError

# EXIF orientations that turn the stored image by 90 degrees (width and height swap).
_SWAPPING_ORIENTATIONS = frozenset({5, 6, 7, 8})


@dataclass(frozen=True)
class Decoded:
    """An imported image and its size before import downscaled it."""

    image: Image.Image  # upright 8-bit RGB, longest side at most MAX_IMAGE_SIDE
    original_size: tuple[int, int]  # upright (width, height) as stored

    @property
    def note(self) -> str | None:
        """``"6000x4000 downscaled to 2048x1365"`` when import shrank the image, else None."""
        if self.image.size == self.original_size:
            return None
        return f"{_size_text(self.original_size)} downscaled to {_size_text(self.image.size)}"


def to_rgb(image: Image.Image) -> Image.Image:
    """Return ``image`` as 8-bit RGB.

    Transparent pixels are composited on white (dropping the alpha channel would turn them
    black, which the diffusion model would read as content); 16/32-bit and float modes are
    rescaled to 8 bits by their value range rather than clipped; CMYK, palette and grayscale
    images are converted by PIL's colour rules.
    """
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        lo, hi = float(array.min()), float(array.max())
        scaled = (array - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(array)
        return Image.fromarray(scaled.round().astype(np.uint8), mode="L").convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def capped_size(size: tuple[int, int]) -> tuple[int, int]:
    """``size`` shrunk to a longest side of ``MAX_IMAGE_SIDE`` (aspect ratio kept), or as it is."""
    width, height = size
    scale = MAX_IMAGE_SIDE / max(width, height)
    if scale >= 1:
        return size
    return max(1, round(width * scale)), max(1, round(height * scale))


def check_pixel_count(size: tuple[int, int], source: str) -> None:
    """Raise :class:`ImageReadError` naming ``source`` and its size if it has too many pixels."""
    width, height = size
    if width * height > MAX_IMAGE_PIXELS:
        raise _too_large(source, f"{_size_text(size)} pixels", width * height)


def read_image(file: str | os.PathLike | bytes | IO[bytes], source: str | None = None) -> Decoded:
    """Decode a path, encoded bytes or a binary file as an upright RGB image within the limits.

    The pixel count is checked from the header, before anything is decoded; a JPEG over the
    side limit is decoded at a reduced scale. Raises :class:`ImageReadError` naming ``source``
    (default: the path) for anything that is not a readable image or is too large.
    """
    if source is None:
        source = str(file) if isinstance(file, str | os.PathLike) else "the image"
    if isinstance(file, bytes | bytearray | memoryview):
        file = io.BytesIO(file)
    with _read_errors(source), Image.open(file) as handle:
        check_pixel_count(handle.size, source)
        stored = handle.size
        target = capped_size(stored)
        if target != stored:
            # JPEG decodes at 1/2, 1/4 or 1/8 scale (never below the target) for a fraction of
            # the time and memory; other formats ignore the draft.
            handle.draft(None, target)
        handle.load()
        return _fit(handle, stored)


def fit_image(image: Image.Image, source: str) -> Decoded:
    """An in-memory image made upright, downscaled and RGB as :func:`read_image` makes a file;
    refused the same way when it has too many pixels. ``image`` itself is never modified."""
    with _read_errors(source):
        check_pixel_count(image.size, source)
        return _fit(image, image.size)


def open_image(path: str | Path) -> Image.Image:
    """Read ``path`` fully into memory as an upright RGB image, within the size limits.

    EXIF orientation is applied (phone photos are stored sideways). Raises
    :class:`ImageReadError` naming the file for anything that is not a readable image.
    """
    return read_image(path).image


def image_digest(image: Image.Image) -> str:
    """A content hash of the decoded pixels (mode and size included), used as a cache key."""
    digest = hashlib.sha256(f"{image.mode}:{image.size}".encode())
    digest.update(np.ascontiguousarray(np.asarray(image)).tobytes())
    return digest.hexdigest()


def save_png(image: Image.Image, path: str | Path, metadata: dict[str, str] | None = None) -> Path:
    """Write ``image`` as PNG atomically: a crash leaves either no file or the complete one.

    ``metadata`` goes into PNG text chunks (e.g. the settings that reproduce the image).
    """
    from PIL.PngImagePlugin import PngInfo

    from .files import write_atomic

    info = PngInfo()
    for key, value in (metadata or {}).items():
        info.add_text(key, value)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return write_atomic(path, buffer.getvalue())


def _fit(image: Image.Image, stored: tuple[int, int]) -> Decoded:
    """Upright, capped RGB from a loaded ``image`` whose file stores ``stored`` pixels (its own
    size may be smaller after a JPEG draft)."""
    swaps = image.getexif().get(ExifTags.Base.Orientation, 1) in _SWAPPING_ORIENTATIONS
    original = (stored[1], stored[0]) if swaps else stored
    # Transposing before resizing: TIFF keeps its orientation tag only on the file's own image.
    # exif_transpose returns a copy, so a caller's image is never modified.
    upright = ImageOps.exif_transpose(image)
    target = capped_size(original)
    if upright.size != target:
        if upright.mode in ("1", "P", "PA"):  # palette indices and 1-bit pixels cannot be averaged
            upright = to_rgb(upright)
        upright = upright.resize(target, Image.Resampling.LANCZOS)
    return Decoded(to_rgb(upright), original)


@contextlib.contextmanager
def _read_errors(source: str) -> Iterator[None]:
    """Turn PIL's and the OS's errors while reading ``source`` into :class:`ImageReadError`."""
    try:
        yield
    except ImageReadError:
        raise
    except Image.DecompressionBombError as error:
        # PIL refuses images over twice its own limit while reading the header, before
        # check_pixel_count sees them; only its message gives the pixel count.
        found = re.search(r"\((\d+) pixels\)", str(error))
        pixels = int(found[1]) if found else 2 * Image.MAX_IMAGE_PIXELS
        raise _too_large(source, f"{pixels} pixels" if found else "the image", pixels) from error
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ImageReadError(
            f"{source}: not a readable image ({type(error).__name__}: {_reason(error)})"
        ) from error


def _reason(error: Exception) -> str:
    """PIL's or the OS's message without what it says about where the file was: a quoted path or
    a file object's repr ("<_io.BytesIO object at 0x...>") would reach the page."""
    text = re.sub(r"\s*<[^<>]* at 0x[0-9a-fA-F]+>", "", str(error))
    text = re.sub(r"""\s*:?\s*(['"])(?:/|[A-Za-z]:\\|\\\\)[^'"]*\1""", "", text)
    return text.strip() or type(error).__name__


def _too_large(source: str, size: str, pixels: int) -> ImageReadError:
    return ImageReadError(
        f"{source}: {size} ({pixels / 1e6:.0f} MP) is over the {MAX_IMAGE_PIXELS / 1e6:.0f} MP limit "
        f"(a decompression bomb or an oversized scan); downscale it to at most {MAX_IMAGE_SIDE} px "
        "on its longest side and add it again"
    )


def _size_text(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"
