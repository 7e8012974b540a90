"""Reproducibility of generated images: the generation environment recorded with every image
(device and its model, dtype, CPU vector instruction set, thread count, library versions), and
the comparison of a regenerated image with the stored one (:class:`RegenerationReport`)."""

from __future__ import annotations

import contextlib
import math
import platform
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .models import dtype_name

# A regenerated 8-bit image is the same image up to numerics when its PSNR against the stored one
# is at least 40 dB: an RMS difference of at most 2.55 levels (1 %), about what JPEG at quality 95
# leaves and below what the eye sees, while two unrelated images are typically 10-20 dB apart.
# PSNR rather than the largest difference: a sampler amplifies rounding unevenly, so a few pixels
# can move by many levels in an image that is otherwise the same.
TOLERANCE_PSNR_DB = 40.0


def _versions() -> dict[str, str]:
    import diffusers
    import transformers

    from . import __version__

    return {
        "dipsy_ui": __version__,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
    }


def _cpu_model() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what the platform module knows."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def generation_environment(device: torch.device, dtype: torch.dtype) -> dict:
    """What decides the last bits of an image besides its settings and weights: the device and its
    model (GPU name or CPU model), the dtype, the CPU's vector instruction set as ATen uses it, the
    number of CPU threads and the library versions (see :mod:`dipsy_ui.manifest`)."""
    return {
        "generator_device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_model(),
        "dtype": dtype_name(dtype),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "versions": _versions(),
    }


def compare_pixels(stored: np.ndarray, regenerated: np.ndarray) -> tuple[int, float]:
    """Largest absolute difference (8-bit levels) and PSNR in dB (infinite when equal) of two
    uint8 images of the same shape."""
    if stored.shape != regenerated.shape:
        raise ValueError(f"images of different shapes: {stored.shape} and {regenerated.shape}")
    difference = stored.astype(np.float64) - regenerated.astype(np.float64)
    mse = float(np.mean(difference**2))
    return int(np.abs(difference).max()), math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


@dataclass(frozen=True)
class RegenerationReport:
    """How a regenerated image compares with the stored one (:meth:`dipsy_ui.generate.GenerationJob.regenerate`)."""

    verdict: str  # "identical", "within tolerance" (PSNR >= TOLERANCE_PSNR_DB) or "different"
    max_abs_diff: int  # largest difference of one pixel channel, in 8-bit levels
    psnr: float  # dB; inf when identical
    differing_env: dict[str, tuple]  # field -> (recorded, now); recorded None: the record predates it
    image: Image.Image  # the regenerated image

    @classmethod
    def judge(cls, stored: Image.Image, image: Image.Image, differing_env: dict) -> RegenerationReport:
        """Compare the regenerated ``image`` with the ``stored`` one and give the verdict."""
        max_abs_diff, psnr = compare_pixels(np.asarray(stored.convert("RGB")), np.asarray(image))
        if max_abs_diff == 0:
            verdict = "identical"
        elif psnr >= TOLERANCE_PSNR_DB:
            verdict = "within tolerance"
        else:
            verdict = "different"
        return cls(verdict, max_abs_diff, psnr, differing_env, image)

    @property
    def cause(self) -> str:
        """Why the image is not identical (empty when it is): the likely cause, in words."""
        if self.verdict == "identical":
            return ""
        if not self.differing_env:
            return (
                "the recorded environment is the same, so the stored file was changed, the weights "
                "behind the same model sources changed, or a kernel is not deterministic"
            )
        named = ", ".join(
            f"{field} {'unknown' if then is None else then} -> {now}"
            for field, (then, now) in self.differing_env.items()
        )
        if self.verdict == "within tolerance":
            return f"rounding differs with the environment ({named})"
        return (
            f"the environment differs ({named}) and the rounding differences grew over the "
            "denoising steps; the same environment and batch give identical images"
        )

    def summary(self) -> str:
        """One line: the verdict, the size of the difference and its likely cause."""
        if self.verdict == "identical":
            return "identical to the stored image"
        return (
            f"{self.verdict} of the stored image (largest difference {self.max_abs_diff}/255, "
            f"PSNR {self.psnr:.1f} dB; tolerance: PSNR >= {TOLERANCE_PSNR_DB:g} dB): {self.cause}"
        )
