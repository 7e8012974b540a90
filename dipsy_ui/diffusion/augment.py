"""Adapter-input augmentation (the authors' code release, REFERENCE section 2).

Applied to the positive and the negative image before the image encoder, so that many images
generated from the same few-shot example do not all copy its framing. Every random draw comes
from the row's ``torch.Generator``, which makes the augmentation part of the per-image seed.
"""

from __future__ import annotations

import math

import torch
from PIL import Image

MAX_ROTATION_DEGREES = 20.0


def _uniform(generator: torch.Generator | None, low: float, high: float) -> float:
    device = generator.device if generator is not None else "cpu"
    return low + (high - low) * float(torch.rand((), generator=generator, device=device))


def augment_adapter_image(image: Image.Image, generator: torch.Generator | None) -> Image.Image:
    """Random flip (p=0.5), random square crop, rotation in [-20, 20] degrees, then a centre
    crop of side ``side / sqrt(2)``, which removes the corners a rotation leaves empty."""
    if _uniform(generator, 0.0, 1.0) < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    width, height = image.size
    side = min(width, height)
    if width != height:
        left = min(int(_uniform(generator, 0.0, 1.0) * (width - side + 1)), width - side)
        top = min(int(_uniform(generator, 0.0, 1.0) * (height - side + 1)), height - side)
        image = image.crop((left, top, left + side, top + side))
    angle = _uniform(generator, -MAX_ROTATION_DEGREES, MAX_ROTATION_DEGREES)
    image = image.rotate(angle, resample=Image.Resampling.BICUBIC)
    crop = max(1, int(side / math.sqrt(2)))
    offset = (side - crop) // 2
    return image.crop((offset, offset, offset + crop, offset + crop))
