"""Image reading and normalisation shared by the engine, the data layer and the UI.

Every image that enters DIPSY goes through :func:`to_rgb`, so the pipeline, the similarity step
and the classifier all see the same pixels for the same file.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageReadError


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


def open_image(path: str | Path) -> Image.Image:
    """Read ``path`` fully into memory as an upright RGB image.

    EXIF orientation is applied (phone photos are stored sideways). Raises
    :class:`ImageReadError` naming the file for anything that is not a readable image.
    """
    path = Path(path)
    try:
        with Image.open(path) as handle:
            handle.load()
            image = ImageOps.exif_transpose(handle) or handle
            return to_rgb(image.copy())
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ImageReadError(f"{path}: not a readable image ({error.__class__.__name__}: {error})") from error


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
